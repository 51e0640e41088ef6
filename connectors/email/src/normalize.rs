//! Raw RFC 5322 mail to the normalized [`Message`]: MIME decoding, the
//! direction, the thread key, the plausible date. Pure functions only, so
//! every decision has a table test; IMAP and Maildir both feed this.

use std::borrow::Cow;
use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};
use hourglass_connector::{Attachment, CustomerIdentity, Direction, Message};
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use regex::Regex;
use serde_json::json;
use sha2::{Digest, Sha256};

/// What the parser needs to know besides the bytes.
#[derive(Debug, Clone)]
pub struct ParseContext<'a> {
    /// The folder the mail was read from (`INBOX`, `Sent`).
    pub folder: &'a str,
    /// The IMAP UID, when read over IMAP.
    pub uid: Option<u32>,
    /// The server's arrival time (IMAP INTERNALDATE, the Maildir file's
    /// mtime): the fallback when the Date header is implausible.
    pub internal_date: Option<DateTime<Utc>>,
    /// Mail in the sent folder is the seller's, whoever it claims to be from.
    pub is_sent_folder: bool,
    /// The seller's own addresses, lowercased: mail from them is outbound.
    pub own_addresses: &'a [String],
    /// The current time, for the plausibility of the Date header.
    pub now: DateTime<Utc>,
}

/// Why a mail could not be read. Goes to the quarantine with the raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    pub reason: String,
}

fn parse_error(reason: impl Into<String>) -> ParseError {
    ParseError {
        reason: reason.into(),
    }
}

/// Parses one raw mail into a normalized message.
///
/// A mail that makes the MIME parser panic is a [`ParseError`] (the mail
/// goes to the quarantine with its raw bytes), not a dead ingest task:
/// mail-parser 0.11 asserts on some nestings of `message/rfc822` inside a
/// multipart (found by tests/fuzz.rs), a `debug_assert!` that a debug
/// build turns into a panic.
pub fn parse_mail(raw: &[u8], ctx: &ParseContext<'_>) -> Result<Message, ParseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse_mail_unguarded(raw, ctx)
    }))
    .unwrap_or_else(|_| {
        Err(parse_error(
            "the MIME parser failed on this mail's structure (nested parts it cannot follow)",
        ))
    })
}

fn parse_mail_unguarded(raw: &[u8], ctx: &ParseContext<'_>) -> Result<Message, ParseError> {
    let readable = headers_as_utf8(raw);
    let mut mail = MessageParser::default()
        .parse(readable.as_ref())
        .ok_or_else(|| parse_error("not an e-mail: no header block found"))?;

    let message_id = mail.message_id().map(str::to_owned);
    let from = first_addr(mail.from());
    // mail-parser accepts almost anything as a header block; a mail with
    // none of the headers every MTA adds is garbage, not a message.
    if from.is_none() && message_id.is_none() && mail.date().is_none() {
        return Err(parse_error(
            "not an e-mail: no From, Message-ID or Date header",
        ));
    }

    let to: Vec<(Option<String>, String)> = all_addrs(mail.to());
    let subject = mail.subject().map(|s| s.trim().to_owned());
    let references = id_list(mail.references());
    let in_reply_to = id_list(mail.in_reply_to()).into_iter().next();

    let from_addr = from.as_ref().map(|(_, a)| a.clone());
    let content_type = mail
        .content_type()
        .map(|ct| {
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_report = content_type == "multipart/report";
    let reply_to_addr = first_addr(mail.reply_to());
    let direction = classify_direction(&DirectionInput {
        from: from_addr.as_deref(),
        reply_to: reply_to_addr.as_ref().map(|(_, a)| a.as_str()),
        is_report,
        is_sent_folder: ctx.is_sent_folder,
        own_addresses: ctx.own_addresses,
    });
    let automatic = is_automatic(|name| header_text(&mail, name));

    // The counterpart: the customer for inbound mail (where replies go,
    // which for a contact form is the Reply-To, not the form's sender), the
    // first recipient of the seller's own mail.
    let counterpart: Option<(Option<String>, String)> = match direction {
        Direction::Outbound => to.first().cloned(),
        Direction::Inbound => reply_to_addr
            .clone()
            .map(|(name, addr)| {
                (
                    name.or_else(|| from.as_ref().and_then(|(n, _)| n.clone())),
                    addr,
                )
            })
            .or_else(|| from.clone()),
        Direction::System => from.clone(),
    };
    if direction == Direction::Inbound && counterpart.is_none() {
        return Err(parse_error("inbound mail without a From address"));
    }

    let attachments = attachments(&mail);

    let header_date = mail
        .date()
        .filter(|d| d.is_valid())
        .and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single());
    let sent_at = choose_sent_at(header_date, ctx.internal_date, ctx.now);

    let root = thread_root(&references, in_reply_to.as_deref(), message_id.as_deref());
    // A bounce concerns the mail it returns: thread it with that mail.
    // Other mail may carry one too (a platform's notice); it goes to
    // `meta` for the platform connector to use.
    let original = embedded_original(&mail);
    // Last: the bodies are moved out of the parsed mail.
    let (text, html) = bodies(&mut mail);
    let thread_key = match original.as_ref().filter(|_| direction == Direction::System) {
        Some(o) => thread_key(
            o.to.as_deref().unwrap_or_default(),
            o.subject.as_deref().unwrap_or_default(),
            o.message_id.as_deref(),
        ),
        None => thread_key(
            counterpart
                .as_ref()
                .map(|(_, a)| a.as_str())
                .unwrap_or_default(),
            subject.as_deref().unwrap_or_default(),
            root.as_deref(),
        ),
    };

    let external_id = external_id(message_id.as_deref(), raw);
    let mut m = Message::new(external_id, thread_key, direction, sent_at, text);
    m.automatic = automatic;
    m.author = from
        .as_ref()
        .map(|(n, a)| n.clone().unwrap_or_else(|| a.clone()));
    m.customer = match direction {
        Direction::System => None,
        _ => counterpart.as_ref().map(|(name, addr)| CustomerIdentity {
            channel: "email".to_owned(),
            handle: addr.clone(),
            display_name: name.clone(),
            email: Some(addr.clone()),
        }),
    };
    m.subject = subject.clone();
    m.html = html;
    m.attachments = attachments;
    // The sender's own declaration (RFC 3282), when there is one.
    m.language = header_text(&mail, "Content-Language")
        .and_then(|v| v.split(',').next().map(|t| t.trim().to_owned()))
        .filter(|t| !t.is_empty() && t.len() <= 35);
    m.order_id = subject
        .as_deref()
        .and_then(hourglass_connector::extract_order_id)
        .or_else(|| hourglass_connector::extract_order_id(&m.text));
    // Replies go to the address exactly as written: some relays (Amazon's)
    // are picky, and the local part of an address is case-sensitive.
    m.reply_to = exact_addr(mail.reply_to()).or_else(|| exact_addr(mail.from()));
    m.meta = json!({
        "message_id": message_id,
        "references": references,
        "in_reply_to": in_reply_to,
        "thread_root": root,
        "folder": ctx.folder,
        "uid": ctx.uid,
        "from": from_addr,
        "from_name": from.as_ref().and_then(|(n, _)| n.clone()),
        "to": to.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
        "subject": subject,
        "original_message_id": original.as_ref().and_then(|o| o.message_id.clone()),
        "original_to": original.as_ref().and_then(|o| o.to.clone()),
        "original_subject": original.as_ref().and_then(|o| o.subject.clone()),
    });
    Ok(m)
}

/// The inputs of [`classify_direction`].
#[derive(Debug, Clone, Copy)]
pub struct DirectionInput<'a> {
    /// The From address, lowercased.
    pub from: Option<&'a str>,
    /// The Reply-To address, lowercased.
    pub reply_to: Option<&'a str>,
    /// The mail is a `multipart/report` (a DSN or MDN).
    pub is_report: bool,
    pub is_sent_folder: bool,
    pub own_addresses: &'a [String],
}

/// Bounces and delivery reports are `system`; the seller's own mail
/// (the sent folder, or From one of the seller's addresses) is `outbound`,
/// except a contact form's mail, sent from the shop's own address with the
/// customer in Reply-To; everything else is `inbound`.
pub fn classify_direction(input: &DirectionInput<'_>) -> Direction {
    let local = input
        .from
        .and_then(|f| f.split('@').next())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if input.is_report || local == "mailer-daemon" || local == "postmaster" {
        return Direction::System;
    }
    if input.is_sent_folder {
        return Direction::Outbound;
    }
    let own = |a: &str| {
        input
            .own_addresses
            .iter()
            .any(|o| o.eq_ignore_ascii_case(a))
    };
    match (input.from, input.reply_to) {
        (Some(f), Some(r)) if own(f) && !own(r) => Direction::Inbound,
        (Some(f), _) if own(f) => Direction::Outbound,
        _ => Direction::Inbound,
    }
}

/// Whether the headers mark an automatic message (RFC 3834
/// `Auto-Submitted`, and the older conventions of vacation responders).
pub fn is_automatic(header: impl Fn(&str) -> Option<String>) -> bool {
    if let Some(v) = header("Auto-Submitted") {
        if !v.trim().eq_ignore_ascii_case("no") {
            return true;
        }
    }
    if header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || header("X-Autogenerated").is_some()
    {
        return true;
    }
    if let Some(p) = header("Precedence") {
        let p = p.trim().to_ascii_lowercase();
        if matches!(p.as_str(), "auto_reply" | "bulk" | "junk") {
            return true;
        }
    }
    // Microsoft Exchange's out-of-office replies carry neither of the
    // above, only this.
    header("X-MS-Exchange-Generated-Message-Source").is_some_and(|v| v.contains("Mailbox Rules"))
}

/// The platform time of a mail: the Date header when it is plausible (not
/// more than a day ahead, not before 1990, as broken clients and spam
/// produce both), else the server's arrival time, else now.
pub fn choose_sent_at(
    header: Option<DateTime<Utc>>,
    internal: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    // 1990-01-01T00:00:00Z
    const FLOOR: i64 = 631_152_000;
    let plausible =
        |d: &DateTime<Utc>| *d <= now + chrono::Duration::days(1) && d.timestamp() >= FLOOR;
    header
        .filter(plausible)
        .or(internal.filter(plausible))
        .unwrap_or(now)
}

/// The subject without reply and forward prefixes in the languages our
/// sellers' customers write (`Re:`, `Fwd:`, `AW:`, `WG:`, `Réf. :`,
/// `Odp:`, `RE[2]:` ...), whitespace collapsed, lowercased.
pub fn normalize_subject(subject: &str) -> String {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(
            r"(?i)^\s*(?:\[[^\]]*\]\s*)?(?:re|fwd?|aw|wg|sv|vs|antw|antwort|réf|ref|rif|tr|odp|enc|res|rv|r|ynt|fs|vb)\s*(?:\[\d+\]|\(\d+\))?\s*\.?\s*[:：]\s*",
        )
        .ok()
    });
    let mut s = subject.trim();
    if let Some(re) = re {
        // The pattern is anchored: each match is a prefix to cut off.
        while let Some(m) = re.find(s).filter(|m| m.end() > 0) {
            s = &s[m.end()..];
        }
    }
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_ascii() {
        out.make_ascii_lowercase();
        out
    } else {
        out.to_lowercase()
    }
}

/// The root of the References / In-Reply-To chain, else the mail's own id.
pub fn thread_root(
    references: &[String],
    in_reply_to: Option<&str>,
    message_id: Option<&str>,
) -> Option<String> {
    references
        .first()
        .map(String::as_str)
        .or(in_reply_to)
        .or(message_id)
        .map(str::to_owned)
}

/// The thread key of an e-mail conversation.
///
/// The References root alone is not stable without state: a customer's
/// first mail carries no references (its key would be its own Message-ID)
/// while a client that drops headers starts a new root with every reply.
/// The counterpart plus the normalized subject is the same for the
/// customer's mail and the seller's reply from the Sent folder, whatever
/// headers survive, so it is the key; the root is only used when there is
/// no subject to go by (and kept in `meta.thread_root`).
pub fn thread_key(counterpart: &str, subject: &str, root: Option<&str>) -> String {
    let subject = normalize_subject(subject);
    let counterpart = counterpart.trim().to_lowercase();
    if subject.is_empty() {
        if let Some(root) = root {
            return format!("email:{counterpart}:<{root}>");
        }
    }
    format!("email:{counterpart}:{subject}")
}

/// The id a mail is ingested under: its Message-ID, which survives a
/// UIDVALIDITY change and copies between folders; a hash of the bytes when
/// it has none.
pub fn external_id(message_id: Option<&str>, raw: &[u8]) -> String {
    match message_id.map(str::trim).filter(|m| !m.is_empty()) {
        Some(id) => id.to_owned(),
        None => {
            let digest = Sha256::digest(raw);
            format!("sha256:{}", hex::encode(&digest[..16]))
        }
    }
}

/// HTML to readable text: paragraphs and lists kept, links as footnotes
/// (shared by every connector, see [`hourglass_connector::html`]).
pub use hourglass_connector::html_to_text;

/// `Name <addr@host>` or `addr@host` to the lowercased address.
pub fn address_of(s: &str) -> String {
    let s = s.trim();
    let addr = match (s.rfind('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    addr.trim().to_lowercase()
}

fn exact_addr(a: Option<&Address<'_>>) -> Option<String> {
    a?.iter()
        .filter_map(|addr| addr.address())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

fn first_addr(a: Option<&Address<'_>>) -> Option<(Option<String>, String)> {
    all_addrs(a).into_iter().next()
}

fn all_addrs(a: Option<&Address<'_>>) -> Vec<(Option<String>, String)> {
    let Some(a) = a else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|addr| {
            let address = addr.address()?.trim().to_lowercase();
            if address.is_empty() {
                return None;
            }
            let name = addr
                .name()
                .map(|n| n.trim().trim_matches('"').trim().to_owned())
                .filter(|n| !n.is_empty());
            Some((name, address))
        })
        .collect()
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.trim().to_owned()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.trim().to_owned()).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect()
}

fn header_text(mail: &mail_parser::Message<'_>, name: &str) -> Option<String> {
    mail.header_raw(name).map(|v| v.trim().to_owned())
}

/// The plain text (decoded text/plain parts, else the HTML converted) and
/// the original HTML when there was some. The parts' decoded text is
/// moved out of `mail`, not copied: a mail's bodies are most of its
/// bytes.
fn bodies(mail: &mut mail_parser::Message<'_>) -> (String, Option<String>) {
    let mut take = |ids: &[u32], html: bool| -> Vec<String> {
        let mut found = Vec::new();
        for &id in ids {
            let Some(part) = mail.parts.get_mut(id as usize) else {
                continue;
            };
            match &mut part.body {
                PartType::Text(t) if !html => found.push(std::mem::take(t).into_owned()),
                PartType::Html(h) if html => found.push(std::mem::take(h).into_owned()),
                _ => {}
            }
        }
        found
    };
    let text_ids = std::mem::take(&mut mail.text_body);
    let html_ids = std::mem::take(&mut mail.html_body);
    let mut plain = take(&text_ids, false);
    let html = take(&html_ids, true);
    mail.text_body = text_ids;
    mail.html_body = html_ids;
    plain.retain(|t| !t.trim().is_empty());
    for t in &mut plain {
        t.truncate(t.trim_end().len());
    }
    let html = join(html, "\n");
    let text = match join(plain, "\n\n") {
        Some(text) => text,
        None => html.as_deref().map(html_to_text).unwrap_or_default(),
    };
    (text, html)
}

/// The parts joined, without a copy when there is one.
fn join(mut parts: Vec<String>, separator: &str) -> Option<String> {
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(parts.join(separator)),
    }
}

fn attachments(mail: &mail_parser::Message<'_>) -> Vec<Attachment> {
    mail.attachments()
        .map(|part| {
            let data = part.contents().to_vec();
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_owned())
                .to_ascii_lowercase();
            Attachment {
                filename: part.attachment_name().map(str::to_owned),
                content_type,
                size: data.len() as u64,
                data: Some(data),
            }
        })
        .collect()
}

/// The headers of the mail a bounce returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginalHeaders {
    pub message_id: Option<String>,
    /// The first recipient, lowercased.
    pub to: Option<String>,
    pub subject: Option<String>,
}

/// Finds the returned mail in a bounce: a `message/rfc822` part, or the
/// `text/rfc822-headers` part of a DSN (RFC 3462).
pub fn embedded_original(mail: &mail_parser::Message<'_>) -> Option<OriginalHeaders> {
    for part in &mail.parts {
        let ct = part
            .content_type()
            .map(|ct| {
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase()
            })
            .unwrap_or_default();
        let headers = match &part.body {
            PartType::Message(inner) => Some(headers_of(inner)),
            _ if ct == "text/rfc822-headers" || ct == "message/rfc822-headers" => {
                let bytes = part.contents();
                MessageParser::default()
                    .parse_headers(bytes)
                    .map(|inner| headers_of(&inner))
            }
            _ => None,
        };
        if let Some(h) = headers.filter(|h| h.message_id.is_some() || h.to.is_some()) {
            return Some(h);
        }
    }
    None
}

fn headers_of(inner: &mail_parser::Message<'_>) -> OriginalHeaders {
    OriginalHeaders {
        message_id: inner.message_id().map(str::to_owned),
        to: first_addr(inner.to()).map(|(_, a)| a),
        subject: inner.subject().map(|s| s.trim().to_owned()),
    }
}

/// The mail with header lines that are not UTF-8 (raw 8-bit bytes, as
/// old mail clients send a display name or a subject against RFC 5322)
/// decoded with the charset the mail declares, else as Windows-1252, the
/// superset of ISO-8859-1 those clients wrote in practice. UTF-8 lines
/// (RFC 6532) and the body stay as they are: the body is decoded by its
/// own Content-Type. Without this the parser shows U+FFFD for every such
/// byte; a mail is never quarantined for it.
pub fn headers_as_utf8(raw: &[u8]) -> Cow<'_, [u8]> {
    let end = header_end(raw);
    let header = &raw[..end];
    if std::str::from_utf8(header).is_ok() {
        return Cow::Borrowed(raw);
    }
    let declared = declared_charset(header).or_else(|| declared_charset(raw));
    let decoder = declared
        .filter(|c| !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8"))
        .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()))
        .or_else(|| mail_parser::decoders::charsets::map::charset_decoder(b"windows-1252"));
    let Some(decoder) = decoder else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8);
    for line in header.split_inclusive(|b| *b == b'\n') {
        if std::str::from_utf8(line).is_ok() {
            out.extend_from_slice(line);
        } else {
            out.extend_from_slice(decoder(line).as_bytes());
        }
    }
    out.extend_from_slice(&raw[end..]);
    Cow::Owned(out)
}

/// Where the header block ends (its blank line included in the rest).
fn header_end(raw: &[u8]) -> usize {
    // The LF of the first empty line (LF or CR LF).
    let blank = |at: usize| match raw.get(at) {
        Some(b'\n') => Some(at),
        Some(b'\r') if raw.get(at + 1) == Some(&b'\n') => Some(at + 1),
        _ => None,
    };
    blank(0)
        .or_else(|| memchr::memchr_iter(b'\n', raw).find_map(|nl| blank(nl + 1)))
        .unwrap_or(raw.len())
}

/// The first `charset=` parameter in `bytes` (a Content-Type's).
fn declared_charset(bytes: &[u8]) -> Option<String> {
    let lower = bytes.to_ascii_lowercase();
    let at = lower.windows(8).position(|w| w == b"charset=")? + 8;
    let value: String = bytes[at..]
        .iter()
        .skip_while(|b| **b == b'"')
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        .map(|b| char::from(*b))
        .collect();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_8bit_headers_are_read_with_the_declared_charset_or_windows_1252() {
        let latin1 = b"From: \"J\xfcrgen Wei\xdf\" <j@example.de>\r\nSubject: Gr\xfc\xdfe\r\n\
            Content-Type: text/plain; charset=\"ISO-8859-1\"\r\n\r\nK\xf6rper\r\n";
        let out = headers_as_utf8(latin1);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("From: \"Jürgen Weiß\" <j@example.de>\r\nSubject: Grüße\r\n"),
            "{text}"
        );
        // The body is left to its Content-Type.
        assert!(out.ends_with(b"\r\n\r\nK\xf6rper\r\n"));
        // ISO-8859-2 declared: the same byte is another letter.
        let latin2 = b"From: \"Ma\xb3gorzata\" <m@example.pl>\r\nContent-Type: text/plain; charset=iso-8859-2\r\n\r\nx";
        assert!(String::from_utf8_lossy(&headers_as_utf8(latin2)).contains("Małgorzata"));
        // Nothing declared (or UTF-8 declared but not true): Windows-1252.
        let none = b"From: =?utf-8?q?x?= \"Ren\xe9\" <r@example.fr>\r\n\r\n";
        assert!(String::from_utf8_lossy(&headers_as_utf8(none)).contains("\"René\""));
        let lying =
            b"From: \"Ren\xe9\" <r@example.fr>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
        assert!(String::from_utf8_lossy(&headers_as_utf8(lying)).contains("\"René\""));
        // UTF-8 headers (RFC 6532) are untouched, byte for byte.
        let utf8 = "From: \"Jürgen\" <j@example.de>\r\n\r\n\u{fc}".as_bytes();
        assert!(matches!(headers_as_utf8(utf8), Cow::Borrowed(_)));
    }

    #[test]
    fn the_header_block_ends_at_the_first_empty_line() {
        let cases: &[(&[u8], usize)] = &[
            (b"A: b\r\n\r\nbody", 7),
            (b"A: b\n\nbody", 5),
            (b"A: b\r\n c\r\n\r\n\r\nbody", 11),
            (b"\r\nbody", 1),
            (b"\nbody", 0),
            (b"A: b\r\n", 6),
            (b"A: b", 4),
            (b"", 0),
        ];
        for (raw, want) in cases {
            assert_eq!(header_end(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn subjects_lose_reply_prefixes_in_many_languages() {
        let cases = [
            ("Re: Order question", "order question"),
            ("RE: RE: Order question", "order question"),
            ("Fwd: Re: Order  question ", "order question"),
            ("AW: WG: Lieferung", "lieferung"),
            ("Réf. : Commande", "commande"),
            ("RE[2]: Status", "status"),
            ("Odp: Zwrot", "zwrot"),
            ("SV: Retur", "retur"),
            ("Re : Question", "question"),
            ("Reservation", "reservation"),
            ("Rechnung: 42", "rechnung: 42"),
            ("  Re:  Re:   ", ""),
            ("Re: ÉTÉ  Ärger", "été ärger"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_subject(input), want, "{input:?}");
        }
    }

    #[test]
    fn direction_rules() {
        let own = vec!["seller@shop.example".to_owned()];
        let d = |from: Option<&str>, is_report: bool, is_sent_folder: bool| {
            classify_direction(&DirectionInput {
                from,
                reply_to: None,
                is_report,
                is_sent_folder,
                own_addresses: &own,
            })
        };
        assert_eq!(d(Some("ana@example.com"), false, false), Direction::Inbound);
        assert_eq!(
            d(Some("SELLER@shop.example"), false, false),
            Direction::Outbound
        );
        assert_eq!(d(Some("ana@example.com"), false, true), Direction::Outbound);
        assert_eq!(
            d(Some("MAILER-DAEMON@mx.example"), false, false),
            Direction::System
        );
        assert_eq!(
            d(Some("postmaster@mx.example"), false, true),
            Direction::System
        );
        assert_eq!(d(Some("ana@example.com"), true, false), Direction::System);
        assert_eq!(d(None, false, false), Direction::Inbound);
        let form = |reply_to: &str| {
            classify_direction(&DirectionInput {
                from: Some("seller@shop.example"),
                reply_to: Some(reply_to),
                is_report: false,
                is_sent_folder: false,
                own_addresses: &own,
            })
        };
        assert_eq!(form("ana@example.com"), Direction::Inbound);
        assert_eq!(form("seller@shop.example"), Direction::Outbound);
    }

    #[test]
    fn automatic_markers() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("Auto-Submitted", "auto-replied")], true),
            (&[("Auto-Submitted", "no")], false),
            (&[("Auto-Submitted", " No ")], false),
            (&[("X-Autoreply", "yes")], true),
            (&[("Precedence", "bulk")], true),
            (&[("Precedence", "auto_reply")], true),
            (&[("Precedence", "list")], false),
            (&[], false),
        ];
        for (headers, want) in cases {
            let got = is_automatic(|name| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| (*v).to_owned())
            });
            assert_eq!(got, *want, "{headers:?}");
        }
    }

    #[test]
    fn sent_at_prefers_a_plausible_date_header() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let internal = Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap();
        let header = Utc.with_ymd_and_hms(2026, 11, 23, 10, 59, 0).unwrap();
        let future = Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap();
        let ancient = Utc.with_ymd_and_hms(1980, 1, 1, 0, 0, 0).unwrap();
        let slightly_ahead = now + chrono::Duration::hours(3);
        let cases = [
            (Some(header), Some(internal), header),
            (Some(future), Some(internal), internal),
            (Some(ancient), Some(internal), internal),
            (Some(slightly_ahead), Some(internal), slightly_ahead),
            (None, Some(internal), internal),
            (None, None, now),
            (Some(future), None, now),
        ];
        for (h, i, want) in cases {
            assert_eq!(choose_sent_at(h, i, now), want, "{h:?} {i:?}");
        }
    }

    #[test]
    fn thread_keys_join_both_directions_and_fall_back_to_the_root() {
        assert_eq!(
            thread_key(
                "Ana@Example.com",
                "Re: AW: Where is my parcel?",
                Some("a@x")
            ),
            thread_key("ana@example.com", "Where is my  parcel?", None)
        );
        assert_eq!(
            thread_key("ana@example.com", "", Some("a@x")),
            "email:ana@example.com:<a@x>"
        );
        assert_eq!(
            thread_root(&["r1@x".into(), "r2@x".into()], Some("r2@x"), Some("me@x")),
            Some("r1@x".into())
        );
        assert_eq!(
            thread_root(&[], Some("p@x"), Some("me@x")),
            Some("p@x".into())
        );
        assert_eq!(thread_root(&[], None, Some("me@x")), Some("me@x".into()));
    }

    #[test]
    fn addresses_and_ids() {
        assert_eq!(
            address_of("Shop <Seller@Shop.example>"),
            "seller@shop.example"
        );
        assert_eq!(address_of(" seller@shop.example "), "seller@shop.example");
        assert_eq!(external_id(Some("abc@x"), b"raw"), "abc@x");
        let h = external_id(None, b"raw");
        assert!(h.starts_with("sha256:") && h.len() == 7 + 32, "{h}");
        assert_eq!(h, external_id(Some("  "), b"raw"));
    }
}
