//! HTML to readable plain text, in one pass over the markup: no DOM, no
//! layout. What an agent needs from an HTML mail or message is its words
//! in reading order with the structure that carries meaning: paragraphs,
//! line breaks, list items, table rows as lines, quotes, and where links
//! go. That is all this keeps:
//!
//! - block elements (`p`, `div`, headings, `table`, `tr`, `li`, ...) start
//!   a new line, paragraphs and headings a new paragraph; `<br>` breaks
//!   the line; at most one blank line in a row;
//! - list items start with `* ` (`1. ` in an ordered list), indented by
//!   nesting; table cells of a row are joined by ` | `; lines inside a
//!   `<blockquote>` start with `> `;
//! - links are footnotes: `[text][1]` in the text, `[1]: url` at the end
//!   (not for in-page anchors, `javascript:`, or a link whose text is its
//!   address); an image shows its `alt` text;
//! - `<head>`, `<style>`, `<script>`, `<title>`, comments and the like
//!   are dropped; whitespace is collapsed (`&nbsp;` too) except in
//!   `<pre>`; character references are decoded with the HTML5 table.
//!
//! Malformed markup never fails: a `<` that starts no tag is text, a tag
//! or comment cut off by the end of the input is dropped, end tags that
//! close nothing are ignored. The output is at most a small multiple of
//! the input, whatever the nesting.
//!
//! It replaced `html2text`, which built a DOM and laid the text out in
//! columns (tables drawn with box characters, padded to a width of 1,000)
//! at ~0.3 ms per mail, most of the ingest's normalization time.

/// How deep list indentation and quote markers go; deeper nesting (only
/// ever seen in garbage) is shown at this depth, which keeps the output
/// linear in the input.
const MAX_DEPTH: usize = 8;

/// HTML to readable text (see the module documentation).
pub fn html_to_text(html: &str) -> String {
    Converter::new(html.len(), false).run(html)
}

/// The content of a `<pre>` element (without the `<pre>` tags) as text:
/// line breaks and spaces as written, tags dropped, character references
/// decoded.
pub fn preformatted_html_to_text(html: &str) -> String {
    Converter::new(html.len(), true).run(html)
}

/// The elements the converter treats specially; everything else is
/// inline and only its text counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// A paragraph-like block: a blank line before and after.
    Paragraph,
    /// Another block: a line break before and after.
    Block,
    Br,
    Pre,
    Blockquote,
    Ul,
    Ol,
    Li,
    Table,
    Tr,
    Cell,
    A,
    Img,
    Other,
}

fn tag_of(name: &str) -> Tag {
    let mut buf = [0u8; 10];
    let Some(lower) = buf.get_mut(..name.len()) else {
        return Tag::Other;
    };
    lower.copy_from_slice(name.as_bytes());
    lower.make_ascii_lowercase();
    match &*lower {
        b"p" | b"h1" | b"h2" | b"h3" | b"h4" | b"h5" | b"h6" | b"hr" => Tag::Paragraph,
        b"div" | b"dl" | b"dt" | b"dd" | b"form" | b"fieldset" | b"legend" | b"header"
        | b"footer" | b"section" | b"article" | b"aside" | b"nav" | b"main" | b"figure"
        | b"figcaption" | b"address" | b"center" | b"details" | b"summary" | b"caption"
        | b"body" | b"html" | b"option" => Tag::Block,
        b"br" => Tag::Br,
        b"pre" | b"listing" => Tag::Pre,
        b"blockquote" => Tag::Blockquote,
        b"ul" | b"menu" | b"dir" => Tag::Ul,
        b"ol" => Tag::Ol,
        b"li" => Tag::Li,
        b"table" => Tag::Table,
        b"tr" => Tag::Tr,
        b"td" | b"th" => Tag::Cell,
        b"a" => Tag::A,
        b"img" => Tag::Img,
        _ => Tag::Other,
    }
}

/// Elements whose content the HTML parser reads as raw text up to the end
/// tag (so a `<` inside them is no tag), none of it shown. (The rest of
/// `<head>` is `<meta>` and `<link>`; text there is shown, as browsers
/// move it to the body.)
fn is_raw_text(name: &str) -> bool {
    [
        "style", "script", "title", "textarea", "xmp", "iframe", "noembed", "noframes",
    ]
    .iter()
    .any(|r| r.eq_ignore_ascii_case(name))
}

/// One open link.
struct Link {
    href: String,
    /// Where its text starts in the output, once it has some.
    start: Option<usize>,
}

struct Converter {
    out: String,
    /// Line breaks owed before the next text (2 = a blank line).
    pending_break: usize,
    /// Whitespace seen since the last text: one space before the next.
    pending_space: bool,
    /// A table cell started since the last text: ` | ` before the next.
    pending_cell: bool,
    /// The output ends a line (or is empty): the next text starts one.
    at_line_start: bool,
    /// Inside `<pre>`: whitespace as written.
    pre: usize,
    /// Inside `<blockquote>`: lines start with `> `.
    quote: usize,
    /// Open lists: `None` for bullets, `Some(n)` numbered.
    lists: Vec<Option<u32>>,
    /// Open tables: whether the current row has had a cell.
    tables: Vec<bool>,
    link: Option<Link>,
    footnotes: Vec<String>,
}

impl Converter {
    fn new(input_len: usize, pre: bool) -> Converter {
        Converter {
            out: String::with_capacity(input_len / 2),
            pending_break: 0,
            pending_space: false,
            pending_cell: false,
            at_line_start: true,
            pre: usize::from(pre),
            quote: 0,
            lists: Vec::new(),
            tables: Vec::new(),
            link: None,
            footnotes: Vec::new(),
        }
    }

    fn run(mut self, html: &str) -> String {
        let bytes = html.as_bytes();
        let mut i = 0;
        let mut text_start = 0;
        while i < bytes.len() {
            if bytes[i] != b'<' {
                i += 1;
                continue;
            }
            let markup = parse_markup(html, i);
            if matches!(markup, Markup::Text) {
                i += 1;
                continue;
            }
            self.text(&html[text_start..i]);
            i = match markup {
                Markup::Text => i + 1,
                Markup::Skip(end) => end,
                Markup::Start { name, end, attrs } => self.start_tag(html, name, attrs, end),
                Markup::End { name, end } => {
                    self.end_tag(name);
                    end
                }
            };
            text_start = i;
        }
        self.text(&html[text_start.min(html.len())..]);
        self.finish()
    }

    /// Text between tags: character references decoded, whitespace
    /// collapsed outside `<pre>`.
    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let bytes = s.as_bytes();
        let mut run = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let special = match b {
                b'&' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => true,
                // U+00A0 NO-BREAK SPACE: a space like any other here.
                0xc2 => bytes.get(i + 1) == Some(&0xa0),
                _ => false,
            };
            if !special {
                i += 1;
                continue;
            }
            self.word(&s[run..i]);
            if b == b'&' {
                match decode_reference(&s[i + 1..], false) {
                    Some((decoded, len)) => {
                        for c in decoded.into_iter().flatten() {
                            self.char(c);
                        }
                        i += 1 + len;
                    }
                    None => {
                        self.word("&");
                        i += 1;
                    }
                }
            } else if b == 0xc2 {
                self.char('\u{a0}');
                i += 2;
            } else if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                // CR LF is one line break (HTML normalizes it before
                // parsing): the LF does it.
                i += 1;
            } else {
                self.char(char::from(b));
                i += 1;
            }
            run = i;
        }
        self.word(&s[run..]);
    }

    fn char(&mut self, c: char) {
        if c.is_ascii_whitespace() || c == '\u{a0}' {
            if self.pre > 0 {
                match c {
                    '\n' | '\r' => self.pre_newline(),
                    '\u{a0}' => self.word(" "),
                    c => {
                        let mut buf = [0u8; 4];
                        self.word(c.encode_utf8(&mut buf));
                    }
                }
            } else {
                self.pending_space = true;
            }
        } else {
            let mut buf = [0u8; 4];
            self.word(c.encode_utf8(&mut buf));
        }
    }

    /// A line break inside `<pre>`, as written.
    fn pre_newline(&mut self) {
        self.flush_pending();
        self.out.push('\n');
        self.at_line_start = true;
    }

    /// Text without whitespace or references (or whitespace inside
    /// `<pre>`).
    fn word(&mut self, w: &str) {
        if w.is_empty() {
            return;
        }
        self.flush_pending();
        if self.at_line_start {
            for _ in 0..self.quote.min(MAX_DEPTH) {
                self.out.push_str("> ");
            }
            self.at_line_start = false;
        }
        if let Some(link) = &mut self.link {
            if link.start.is_none() {
                link.start = Some(self.out.len());
            }
        }
        self.out.push_str(w);
    }

    /// Writes the breaks, cell separator or space owed before new text.
    fn flush_pending(&mut self) {
        if self.out.is_empty() {
            // Nothing before the first text.
        } else if self.pending_break > 0 {
            let have = self.out.len() - self.out.trim_end_matches('\n').len();
            for _ in have..self.pending_break.min(2) {
                self.out.push('\n');
            }
            if have < self.pending_break {
                self.at_line_start = true;
            }
        } else if self.pending_cell && !self.at_line_start {
            self.out.push_str(" | ");
        } else if self.pending_space && !self.at_line_start {
            self.out.push(' ');
        }
        self.pending_break = 0;
        self.pending_cell = false;
        self.pending_space = false;
    }

    fn line_break(&mut self, n: usize) {
        self.pending_break = self.pending_break.max(n);
    }

    fn start_tag(&mut self, html: &str, name: &str, attrs: Attrs, end: usize) -> usize {
        let tag = tag_of(name);
        if is_raw_text(name) {
            // Never shown: skip to the end tag (or the end of the input).
            return raw_text_end(html, end, name);
        }
        match tag {
            Tag::Paragraph => self.line_break(2),
            Tag::Block => self.line_break(1),
            Tag::Br => self.pending_break = (self.pending_break + 1).min(2),
            Tag::Pre => {
                self.line_break(2);
                self.pre += 1;
                // A line break right after <pre> is not content.
                let rest = &html.as_bytes()[end.min(html.len())..];
                if rest.starts_with(b"\r\n") {
                    return end + 2;
                }
                if rest.starts_with(b"\n") || rest.starts_with(b"\r") {
                    return end + 1;
                }
            }
            Tag::Blockquote => {
                self.line_break(2);
                self.quote += 1;
            }
            Tag::Ul | Tag::Ol => {
                self.line_break(1);
                self.lists.push((tag == Tag::Ol).then_some(0));
            }
            Tag::Li => {
                self.line_break(1);
                let depth = self.lists.len().clamp(1, MAX_DEPTH);
                let bullet = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n = n.saturating_add(1);
                        format!("{n}.")
                    }
                    _ => "*".to_owned(),
                };
                self.word(&"  ".repeat(depth - 1));
                self.word(&bullet);
                self.pending_space = true;
            }
            Tag::Table => {
                self.line_break(1);
                self.tables.push(false);
            }
            Tag::Tr => {
                self.line_break(1);
                if let Some(had_cell) = self.tables.last_mut() {
                    *had_cell = false;
                }
            }
            Tag::Cell => match self.tables.last_mut() {
                Some(had_cell) if *had_cell => self.pending_cell = true,
                Some(had_cell) => *had_cell = true,
                None => self.pending_space = true,
            },
            Tag::A => {
                self.close_link();
                let href = attrs.href.map(attr_value).unwrap_or_default();
                self.link = Some(Link { href, start: None });
            }
            Tag::Img => {
                let alt = attrs.alt.map(attr_value).unwrap_or_default();
                let alt = alt.trim();
                if !alt.is_empty() {
                    // A linked image is the link's text; another shows
                    // that there is one.
                    let bracket = self.link.is_none();
                    if bracket {
                        self.word("[");
                    }
                    for (n, w) in alt.split_whitespace().enumerate() {
                        self.pending_space = n > 0;
                        self.word(w);
                    }
                    if bracket {
                        self.word("]");
                    }
                }
            }
            Tag::Other => {}
        }
        end
    }

    fn end_tag(&mut self, name: &str) {
        match tag_of(name) {
            Tag::Paragraph => self.line_break(2),
            Tag::Block | Tag::Li | Tag::Tr => self.line_break(1),
            Tag::Br => self.pending_break = (self.pending_break + 1).min(2),
            // End tags that close nothing are ignored, as browsers do.
            Tag::Pre if self.pre > 0 => {
                self.pre -= 1;
                self.line_break(2);
            }
            Tag::Blockquote if self.quote > 0 => {
                self.quote -= 1;
                self.line_break(2);
            }
            Tag::Ul | Tag::Ol if self.lists.pop().is_some() => self.line_break(1),
            Tag::Table if self.tables.pop().is_some() => self.line_break(1),
            Tag::A => self.close_link(),
            _ => {}
        }
    }

    /// Ends the open link: its text becomes `[text][n]` with the address
    /// as footnote `n`.
    fn close_link(&mut self) {
        let Some(Link {
            href,
            start: Some(start),
        }) = self.link.take()
        else {
            return;
        };
        let href = href.trim();
        let text = self.out[start..].trim_end();
        let lower = href.get(..11).unwrap_or(href).to_ascii_lowercase();
        let shown = href.is_empty()
            || href.starts_with('#')
            || lower.starts_with("javascript:")
            || text == href
            || href.strip_prefix("mailto:") == Some(text);
        if shown {
            return;
        }
        self.out.insert(start, '[');
        self.footnotes.push(href.to_owned());
        self.out.push_str(&format!("][{}]", self.footnotes.len()));
    }

    fn finish(mut self) -> String {
        self.close_link();
        let mut out = self.out;
        out.truncate(out.trim_end().len());
        // Only a <pre> can start with whitespace.
        let lead = out.len() - out.trim_start().len();
        out.drain(..lead);
        if !self.footnotes.is_empty() {
            out.push('\n');
            for (n, href) in self.footnotes.iter().enumerate() {
                out.push_str(&format!("\n[{}]: {href}", n + 1));
            }
        }
        out
    }
}

/// The attributes the converter reads.
#[derive(Debug, Default, Clone, Copy)]
struct Attrs<'a> {
    href: Option<&'a str>,
    alt: Option<&'a str>,
}

/// What a `<` starts.
enum Markup<'a> {
    /// Nothing: the `<` is text.
    Text,
    /// A comment, doctype or the like, ending before this index.
    Skip(usize),
    Start {
        name: &'a str,
        attrs: Attrs<'a>,
        end: usize,
    },
    End {
        name: &'a str,
        end: usize,
    },
}

/// Reads the markup starting at `html[at] == '<'`, as the HTML5
/// tokenizer does: a tag cut off by the end of the input, or a comment
/// without its end, runs to the end.
fn parse_markup(html: &str, at: usize) -> Markup<'_> {
    let bytes = html.as_bytes();
    let len = bytes.len();
    let next = bytes.get(at + 1).copied();
    match next {
        Some(b) if b.is_ascii_alphabetic() => {
            let name_end = name_end(bytes, at + 1);
            match attributes(html, name_end) {
                Some((attrs, end)) => Markup::Start {
                    name: &html[at + 1..name_end],
                    attrs,
                    end,
                },
                None => Markup::Skip(len),
            }
        }
        Some(b'/') => match bytes.get(at + 2).copied() {
            Some(b) if b.is_ascii_alphabetic() => {
                let name_end = name_end(bytes, at + 2);
                match attributes(html, name_end) {
                    Some((_, end)) => Markup::End {
                        name: &html[at + 2..name_end],
                        end,
                    },
                    None => Markup::Skip(len),
                }
            }
            Some(b'>') => Markup::Skip(at + 3),
            None => Markup::Text,
            // A bogus comment, up to the next `>`.
            Some(_) => Markup::Skip(find_from(html, at + 2, ">").map_or(len, |p| p + 1)),
        },
        Some(b'!') => {
            if html[at + 2..].starts_with("--") {
                let body = at + 4;
                // `<!-->` and `<!--->` are empty comments.
                if html[body..].starts_with('>') {
                    return Markup::Skip(body + 1);
                }
                if html[body..].starts_with("->") {
                    return Markup::Skip(body + 2);
                }
                let end = [("-->", 3), ("--!>", 4)]
                    .iter()
                    .filter_map(|(close, n)| find_from(html, body, close).map(|p| p + n))
                    .min();
                Markup::Skip(end.unwrap_or(len))
            } else {
                Markup::Skip(find_from(html, at + 2, ">").map_or(len, |p| p + 1))
            }
        }
        Some(b'?') => Markup::Skip(find_from(html, at + 2, ">").map_or(len, |p| p + 1)),
        _ => Markup::Text,
    }
}

fn find_from(html: &str, from: usize, needle: &str) -> Option<usize> {
    html.get(from..)?.find(needle).map(|p| p + from)
}

/// Where a tag name starting at `from` ends.
fn name_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'/' | b'>'))
        .map_or(bytes.len(), |p| p + from)
}

/// Reads the attributes from after the tag name to the `>`: the ones the
/// converter uses, and the index after the `>`. `None` when the input
/// ends first.
fn attributes(html: &str, from: usize) -> Option<(Attrs<'_>, usize)> {
    let bytes = html.as_bytes();
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c');
    let mut attrs = Attrs::default();
    let mut i = from;
    loop {
        while i < bytes.len() && (ws(bytes[i]) || bytes[i] == b'/') {
            i += 1;
        }
        if *bytes.get(i)? == b'>' {
            return Some((attrs, i + 1));
        }
        // The name: a leading `=` belongs to it.
        let name_start = i;
        i += 1;
        while i < bytes.len() && !ws(bytes[i]) && !matches!(bytes[i], b'/' | b'>' | b'=') {
            i += 1;
        }
        let name = &html[name_start..i];
        while i < bytes.len() && ws(bytes[i]) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while i < bytes.len() && ws(bytes[i]) {
            i += 1;
        }
        let value = match bytes.get(i)? {
            q @ (b'"' | b'\'') => {
                let close = html[i + 1..].find(char::from(*q))? + i + 1;
                let v = &html[i + 1..close];
                i = close + 1;
                v
            }
            b'>' => "",
            _ => {
                let start = i;
                while i < bytes.len() && !ws(bytes[i]) && bytes[i] != b'>' {
                    i += 1;
                }
                &html[start..i]
            }
        };
        if name.eq_ignore_ascii_case("href") {
            attrs.href = Some(value);
        } else if name.eq_ignore_ascii_case("alt") {
            attrs.alt = Some(value);
        }
    }
}

/// Where the raw text of element `name`, whose start tag ends at `from`,
/// ends: at its end tag, else at the end of the input.
fn raw_text_end(html: &str, from: usize, name: &str) -> usize {
    let bytes = html.as_bytes();
    let mut at = from;
    while let Some(p) = find_from(html, at, "</") {
        let name_at = p + 2;
        let candidate = bytes.get(name_at..name_at + name.len());
        let follows = bytes.get(name_at + name.len()).copied();
        if candidate.is_some_and(|c| c.eq_ignore_ascii_case(name.as_bytes()))
            && matches!(
                follows,
                None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'/' | b'>')
            )
        {
            return p;
        }
        at = name_at;
    }
    html.len()
}

/// An attribute value with its character references decoded.
fn attr_value(raw: &str) -> String {
    if !raw.contains('&') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        match decode_reference(&rest[p + 1..], true) {
            Some((decoded, len)) => {
                out.extend(decoded.into_iter().flatten());
                rest = &rest[p + 1 + len..];
            }
            None => {
                out.push('&');
                rest = &rest[p + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the character reference after a `&` (`amp;`, `#39;`,
/// `#x27;`, the legacy `eacute` without `;`): its characters and how
/// many bytes it took. `None` when there is none and the `&` is text.
fn decode_reference(s: &str, in_attribute: bool) -> Option<([Option<char>; 2], usize)> {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'#') {
        let hex = matches!(bytes.get(1), Some(b'x' | b'X'));
        let digits_at = if hex { 2 } else { 1 };
        let radix = if hex { 16 } else { 10 };
        let digits = bytes[digits_at..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit() && (hex || b.is_ascii_digit()))
            .count();
        if digits == 0 {
            return None;
        }
        let mut value: u32 = 0;
        for b in &bytes[digits_at..digits_at + digits] {
            let d = char::from(*b).to_digit(radix).unwrap_or(0);
            value = value.saturating_mul(radix).saturating_add(d).min(0x11_0000);
        }
        let mut len = digits_at + digits;
        if bytes.get(len) == Some(&b';') {
            len += 1;
        }
        let c = match value {
            0x80..=0x9f => web_atoms::C1_REPLACEMENTS
                .get((value - 0x80) as usize)
                .copied()
                .flatten()
                .or_else(|| char::from_u32(value)),
            0 => None,
            v => char::from_u32(v),
        };
        return Some(([Some(c.unwrap_or('\u{fffd}')), None], len));
    }
    // The longest name in the table, as the HTML5 tokenizer reads it: the
    // table holds every prefix of every name (with `(0, 0)` for those
    // that are no entity).
    let mut best: Option<((u32, u32), usize)> = None;
    let mut len = 0;
    while len < bytes.len() && len < 40 {
        len += 1;
        let Some(key) = s.get(..len) else { break };
        match web_atoms::NAMED_ENTITIES.get(key) {
            None => break,
            Some(&(0, 0)) => {}
            Some(&cps) => best = Some((cps, len)),
        }
    }
    let ((first, second), len) = best?;
    if in_attribute && !s[..len].ends_with(';') {
        // `?a=1&copy=2` in a URL is no reference.
        let next = bytes.get(len).copied();
        if next.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'=') {
            return None;
        }
    }
    let second = (second != 0).then(|| char::from_u32(second)).flatten();
    Some(([char::from_u32(first), second], len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_breaks_and_inline_markup() {
        let html = "<html><head><style>p {color: red}</style></head><body>\n<p>Hi there,</p>\n\
            <p>The <b>blue kettle</b> I ordered arrived <i>without a lid</i>.</p>\n\
            <p>Could you send one?<br>Thanks, Emily</p>\n</body></html>\n";
        assert_eq!(
            html_to_text(html),
            "Hi there,\n\nThe blue kettle I ordered arrived without a lid.\n\n\
             Could you send one?\nThanks, Emily"
        );
    }

    /// A shop's shipping mail as mail tools write them: layout tables,
    /// CSS and script in the head, a conditional comment, a logo, an
    /// order table, a button, lists, a quote, a footer full of entities.
    const MARKETING: &str = r##"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<title>Your order has shipped</title>
<style type="text/css">
  body { margin:0; } .btn a { color:#fff !important; } @media (max-width:600px) { .col { width:100% } }
</style>
<!--[if mso]><style>td {font-family: Arial}</style><![endif]-->
<script>var tracking = "<b>not shown</b>";</script>
</head>
<body style="margin:0">
<table width="100%" cellpadding="0" cellspacing="0" border="0"><tr><td align="center">
  <table width="600">
    <tr><td><a href="https://shop.example/?utm_source=mail&amp;utm_medium=email"><img src="logo.png" alt="Kettle &amp; Co" width="120"></a></td>
        <td align="right"><a href="https://shop.example/account">My account</a></td></tr>
    <tr><td colspan="2"><h1>Good news, Ana!</h1>
      <p>Your order <strong>#302-1234567-7654321</strong> is on its way.&nbsp;&nbsp;It should arrive by <em>Friday,&nbsp;27&nbsp;November</em>.</p>
      <p>Questions? Write to <a href="mailto:help@shop.example">help@shop.example</a> &mdash; we&rsquo;re happy to help.</p>
    </td></tr>
    <tr><th>Item</th><th>Qty</th><th>Price</th></tr>
    <tr><td>Blue kettle 1.7&nbsp;l</td><td>1</td><td>&euro;29.99</td></tr>
    <tr><td>Descaler</td><td>2</td><td>&#8364;4.50</td></tr>
    <tr><td>&nbsp;</td><td>Total</td><td>&#x20AC;38.99</td></tr>
  </table>
  <table><tr><td class="btn"><a href="https://shop.example/track?id=1&amp;x=2" style="color:#fff">Track your parcel</a></td></tr></table>
  <ul>
    <li>Free returns for 30 days</li>
    <li>Need help? <a href="#faq">See the FAQ</a></li>
    <li>Two ways:<ol><li>online</li><li>by phone</li></ol></li>
  </ul>
  <blockquote>On Monday you wrote:<br>Where is my parcel?<br>Thanks</blockquote>
  <hr>
  <p style="font-size:11px">You receive this mail because you ordered at shop.example. <a href="https://shop.example/unsubscribe?u=1&copy=2">Unsubscribe</a> &middot; <a href="javascript:void(0)">Preferences</a><br>
  Kettle &amp; Co GmbH, Hauptstra&szlig;e 1, 10115 Berlin &lt;Germany&gt; &copy; 2026, a&b AT&T</p>
</td></tr></table>
<pre>
  line one
    indented &lt;two&gt;
</pre>
</body>
</html>
"##;

    #[test]
    fn a_marketing_mail_reads_as_text() {
        let want = "[Kettle & Co][1] | [My account][2]

Good news, Ana!

Your order #302-1234567-7654321 is on its way. It should arrive by Friday, 27 November.

Questions? Write to help@shop.example \u{2014} we\u{2019}re happy to help.

Item | Qty | Price
Blue kettle 1.7 l | 1 | \u{20ac}29.99
Descaler | 2 | \u{20ac}4.50
Total | \u{20ac}38.99
[Track your parcel][3]
* Free returns for 30 days
* Need help? See the FAQ
* Two ways:
  1. online
  2. by phone

> On Monday you wrote:
> Where is my parcel?
> Thanks

You receive this mail because you ordered at shop.example. [Unsubscribe][4] \u{b7} Preferences
Kettle & Co GmbH, Hauptstra\u{df}e 1, 10115 Berlin <Germany> \u{a9} 2026, a&b AT&T

  line one
    indented <two>

[1]: https://shop.example/?utm_source=mail&utm_medium=email
[2]: https://shop.example/account
[3]: https://shop.example/track?id=1&x=2
[4]: https://shop.example/unsubscribe?u=1&copy=2";
        assert_eq!(html_to_text(MARKETING), want);
    }

    #[test]
    fn amazons_relay_html_reads_as_text() {
        let html = "<html><head><meta charset=\"utf-8\"><style>.x{color:#111}</style></head><body>\n\
            <table><tr><td><img src=\"https://m.media-amazon.com/images/logo.png\" alt=\"Amazon\"></td></tr>\n\
            <tr><td>Commande : 171-1112223-3334445</td></tr>\n\
            <tr><td><pre style=\"white-space: pre-wrap\">Bonjour,\nc&#39;est cass&eacute;.\n\nMerci</pre></td></tr>\n\
            <tr><td><a href=\"https://sellercentral.amazon.fr/messaging/no-response-needed.html?msg=FR1\">Aucune r\u{e9}ponse n\u{e9}cessaire</a></td></tr>\n\
            <tr><td style=\"color:#fff\">[commMgrTok:FR1]</td></tr>\n</table></body></html>\n";
        assert_eq!(
            html_to_text(html),
            "[Amazon]\nCommande : 171-1112223-3334445\n\nBonjour,\nc'est cass\u{e9}.\n\nMerci\n\n\
             [Aucune r\u{e9}ponse n\u{e9}cessaire][1]\n[commMgrTok:FR1]\n\n\
             [1]: https://sellercentral.amazon.fr/messaging/no-response-needed.html?msg=FR1"
        );
        assert_eq!(
            preformatted_html_to_text("\r\n  Bonjour,\r\n<b>c&#39;est</b>  cass&eacute;.\n"),
            "Bonjour,\nc'est  cass\u{e9}."
        );
    }

    #[test]
    fn character_references() {
        let cases = [
            (
                "&amp; &lt; &gt; &quot; &apos; &#39; &#x27; &#X27;",
                "& < > \" ' ' ' '",
            ),
            (
                "caf&eacute; caf&eacute caf&Eacute;",
                "caf\u{e9} caf\u{e9} caf\u{c9}",
            ),
            ("a&nbsp;&nbsp;b&#160;c", "a b c"),
            ("&euro; &#128; &#x80;", "\u{20ac} \u{20ac} \u{20ac}"),
            ("&#0; &#xD800; &#99999999999;", "\u{fffd} \u{fffd} \u{fffd}"),
            ("&NotEqualTilde; &fjlig;", "\u{2242}\u{338} fj"),
            ("&unknown; & &; &#; &#x; &", "&unknown; & &; &#; &#x; &"),
            ("&notin; &notit; AT&T", "\u{2209} \u{ac}it; AT&T"),
        ];
        for (html, want) in cases {
            assert_eq!(html_to_text(html), want, "{html}");
        }
        // In an address, `&copy=` is a parameter, not ©.
        let html = "<a href=\"/u?a=1&copy=2&amp;b=3&eacute;\">x</a>";
        assert_eq!(html_to_text(html), "[x][1]\n\n[1]: /u?a=1&copy=2&b=3\u{e9}");
    }

    #[test]
    fn links_are_footnotes_unless_they_add_nothing() {
        let cases = [
            (
                "<a href='https://x.example/a'>A</a> <a href=https://x.example/b>B</a>",
                "[A][1] [B][2]\n\n[1]: https://x.example/a\n[2]: https://x.example/b",
            ),
            ("<a href='#top'>Top</a>", "Top"),
            ("<a href='JavaScript:go()'>Go</a>", "Go"),
            (
                "<a href='https://x.example'>https://x.example</a>",
                "https://x.example",
            ),
            (
                "<a href='mailto:a@x.example'>a@x.example</a>",
                "a@x.example",
            ),
            ("<a name='anchor'>Here</a>", "Here"),
            (
                "<a href='https://x.example'><img src=p.png></a>after",
                "after",
            ),
            (
                "<a href='/1'>one <a href='/2'>two</a>",
                "[one][1] [two][2]\n\n[1]: /1\n[2]: /2",
            ),
            ("<a href='/1'>never closed", "[never closed][1]\n\n[1]: /1"),
            ("<img alt='Logo'> <img alt=''> <img src=x.png>", "[Logo]"),
        ];
        for (html, want) in cases {
            assert_eq!(html_to_text(html), want, "{html}");
        }
    }

    #[test]
    fn what_is_never_shown() {
        let cases = [
            ("<style>p{}</style>a<STYLE type=x>b</Style >c", "ac"),
            ("<script>if (a<b) document.write('</p>x')</script>y", "y"),
            ("<script>never closed <p>x</p>", ""),
            ("<title>T</title><p>body</p>", "body"),
            ("a<!-- comment <p>x</p> -->b<!---->c<!-->d<!--->e", "abcde"),
            ("a<!-- never closed", "a"),
            ("<!DOCTYPE html><?xml version='1.0'?>a<![CDATA[x]]>b", "ab"),
            ("a</>b</ not a tag>c", "abc"),
            (
                "<head><meta charset=utf-8>stray</head><body>x</body>",
                "stray\nx",
            ),
        ];
        for (html, want) in cases {
            assert_eq!(html_to_text(html), want, "{html}");
        }
    }

    #[test]
    fn malformed_markup_is_read_as_a_browser_would() {
        let cases = [
            ("1 < 2 and 3 <4 or a<", "1 < 2 and 3 <4 or a<"),
            ("a <b", "a"),
            ("<p class='x>y'>z</p>", "z"),
            ("<p class=\"never closed>z</p>", ""),
            (
                "<div>a</span></li></ul></table></blockquote></pre>b",
                "a\nb",
            ),
            ("<p>a<p>b<br><br><br><br>c", "a\n\nb\n\nc"),
            ("<td>a</td><td>b</td>", "a b"),
            ("\u{a0}<p>\u{a0}</p> x \u{fffd}", "x \u{fffd}"),
            ("<ul><li></li><li>b</ul>", "*\n* b"),
        ];
        for (html, want) in cases {
            assert_eq!(html_to_text(html), want, "{html}");
        }
        // Every cut of a real mail still converts.
        for (i, _) in MARKETING.char_indices() {
            let _ = html_to_text(&MARKETING[..i]);
            let _ = html_to_text(&MARKETING[i..]);
            let _ = preformatted_html_to_text(&MARKETING[i..]);
        }
    }

    #[test]
    fn deep_nesting_stays_linear() {
        let html = "<blockquote><ul><li>x".repeat(20_000);
        let text = html_to_text(&html);
        assert!(
            text.len() < 2 * html.len(),
            "{} from {}",
            text.len(),
            html.len()
        );
        assert!(
            text.ends_with("> > > > > > > >               * x"),
            "{}",
            &text[text.len() - 60..]
        );
    }
}
