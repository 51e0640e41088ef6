//! Amazon's relay mail, as parsed by the e-mail connector, to Amazon
//! messages: the buyer behind the relay address, the marketplace, the
//! order, the buyer's own text, and Amazon's notices on the right thread.
//! Pure functions, each with a table test.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use hourglass_connector::html::preformatted_html_to_text;
use hourglass_connector::{extract_order_id, CustomerIdentity, Direction, Message};
use hourglass_email::normalize::address_of;
use regex::Regex;
use serde_json::Value;

/// Amazon's marketplace domains (the part after `amazon.`).
pub const MARKETPLACE_TLDS: &[&str] = &[
    "com", "ca", "com.mx", "com.br", "co.uk", "de", "fr", "it", "es", "nl", "se", "pl", "com.tr",
    "ae", "sa", "in", "co.jp", "sg", "com.au", "com.be", "eg",
];

fn regex(cell: &'static OnceLock<Option<Regex>>, pattern: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(pattern).ok()).as_ref()
}

/// The marketplace (`amazon.de`) of an address or host on an Amazon
/// domain: `x@marketplace.amazon.de`, `donotreply@amazon.co.uk`.
pub fn marketplace_of(address_or_host: &str) -> Option<String> {
    let host = address_or_host
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(address_or_host)
        .trim()
        .trim_end_matches('>')
        .to_ascii_lowercase();
    let idx = host.rfind("amazon.")?;
    if idx > 0 && !host[..idx].ends_with('.') {
        return None; // notamazon.de
    }
    let tld = &host[idx + "amazon.".len()..];
    MARKETPLACE_TLDS
        .contains(&tld)
        .then(|| format!("amazon.{tld}"))
}

/// A buyer's relay address: `<alias>@marketplace.amazon.<tld>`.
pub fn is_relay_address(address: &str) -> bool {
    let a = address.trim().to_ascii_lowercase();
    match a.rsplit_once('@') {
        Some((local, host)) => {
            !local.is_empty()
                && host.starts_with("marketplace.amazon.")
                && marketplace_of(host).is_some()
        }
        None => false,
    }
}

/// The buyer's identity: the relay address without its per-case
/// `+suffix`, lowercased.
pub fn relay_handle(address: &str) -> String {
    let a = address_of(address);
    match a.rsplit_once('@') {
        Some((local, host)) => {
            let local = local.split('+').next().unwrap_or(local);
            format!("{local}@{host}")
        }
        None => a,
    }
}

/// The buyer's name from the relay's display name:
/// `Ana Souza - Amazon Marketplace` → `Ana Souza`.
pub fn buyer_name(display: &str) -> Option<String> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = regex(
        &RE,
        r"(?i)\s*[-–—]\s*(?:amazon\s+marketplace(?:\s+japan)?|marketplace\s+amazon|amazon\s+マーケットプレイス|amazon\s+mercado|amazon)\s*$",
    );
    let d = display.trim().trim_matches('"').trim();
    let name = match re {
        Some(re) => re.replace(d, "").into_owned(),
        None => d.to_owned(),
    };
    let name = name.trim();
    (!name.is_empty() && !name.eq_ignore_ascii_case("amazon marketplace")).then(|| name.to_owned())
}

/// The buyer's text between Amazon's `Begin message` / `End message`
/// markers.
pub fn between_markers(text: &str) -> Option<String> {
    // Two searches without captures: the regex crate finds those with its
    // fast engines, where one lazy capture across the whole mail does not.
    static BEGIN: OnceLock<Option<Regex>> = OnceLock::new();
    static END: OnceLock<Option<Regex>> = OnceLock::new();
    let begin = regex(&BEGIN, r"(?i)-{3,}\s*begin message\s*-{3,}")?.find(text)?;
    let rest = &text[begin.end()..];
    let end = regex(&END, r"(?i)-{3,}\s*end message\s*-{3,}")?.find(rest)?;
    let body = rest[..end.start()].trim();
    (!body.is_empty()).then(|| body.to_owned())
}

/// The buyer's text in newer HTML mail: the content of its one `<pre>`.
pub fn single_pre(html: &str) -> Option<String> {
    let (content, end) = next_pre(html, 0)?;
    if next_pre(html, end).is_some() {
        return None;
    }
    // Through the HTML converter for the entities, line breaks as written.
    let text = preformatted_html_to_text(&html[content]);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The next `<pre ...>content</pre >` at or after `from` (any case): the
/// content's range and where the element ends. A plain search, as a
/// regex with a lazy capture across the whole mail runs the slowest of
/// the regex crate's engines.
fn next_pre(html: &str, from: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let mut at = from;
    loop {
        let open = at + html.get(at..)?.find('<')?;
        at = open + 1;
        let name = html.get(open + 1..open + 4)?;
        let after = html[open + 4..].chars().next();
        // `<pre` as a whole word: not `<prefix>`.
        if !name.eq_ignore_ascii_case("pre")
            || after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let start = open + 4 + html[open + 4..].find('>')? + 1;
        let mut search = start;
        while let Some(p) = html.get(search..)?.find("</") {
            let close = search + p;
            search = close + 2;
            if !html
                .get(close + 2..close + 5)
                .is_some_and(|n| n.eq_ignore_ascii_case("pre"))
            {
                continue;
            }
            let rest = html[close + 5..].trim_start();
            if rest.starts_with('>') {
                let end = html.len() - rest.len() + 1;
                return Some((start..close, end));
            }
        }
        return None;
    }
}

/// Amazon's id of a buyer message: `[commMgrTok:<ID>]`.
pub fn comm_mgr_token(text: &str) -> Option<String> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = regex(&RE, r"\[commMgrTok:([A-Za-z0-9_-]+)\]")?;
    Some(re.captures(text)?.get(1)?.as_str().to_owned())
}

/// The id in Amazon's "no response needed" link
/// (`no-response-needed.html?msg=<ID>`), which lets the seller close a
/// buyer message in Seller Central without answering.
pub fn no_response_needed_id(text: &str) -> Option<String> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = regex(
        &RE,
        r"no-response-needed\.html\?(?:[^\s\x22'<>]*&(?:amp;)?)?msg=([A-Za-z0-9_-]+)",
    )?;
    Some(re.captures(text)?.get(1)?.as_str().to_owned())
}

/// The thread of a buyer: `<relay handle>#<order id>`, or the handle
/// alone for questions outside an order.
pub fn thread_key(handle: &str, order_id: Option<&str>) -> String {
    match order_id {
        Some(o) => format!("{handle}#{o}"),
        None => handle.to_owned(),
    }
}

/// The language a marketplace's buyers usually write.
pub fn marketplace_language(marketplace: &str) -> Option<&'static str> {
    Some(match marketplace.trim_start_matches("amazon.") {
        "com" | "ca" | "co.uk" | "in" | "sg" | "com.au" | "ae" => "en",
        "de" => "de",
        "fr" => "fr",
        "it" => "it",
        "es" | "com.mx" => "es",
        "com.br" => "pt",
        "nl" => "nl",
        "se" => "sv",
        "pl" => "pl",
        "com.tr" => "tr",
        "co.jp" => "ja",
        "sa" | "eg" => "ar",
        _ => return None,
    })
}

/// FNV-1a: the index's keys are a few bytes long, where SipHash's setup
/// costs more than the lookup.
#[derive(Default)]
struct Fnv(u64);

// One bit per language in the index.
const _: () = assert!(STOPWORDS.len() <= 8);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

const STOPWORDS: &[(&str, &[&str])] = &[
    (
        "pt",
        &[
            "o", "os", "um", "uma", "não", "meu", "minha", "pedido", "obrigado", "obrigada", "olá",
            "por", "favor", "você", "vocês", "ainda", "chegou", "podem", "é", "está", "com",
            "para", "mas",
        ],
    ),
    (
        "ro",
        &[
            "și",
            "şi",
            "nu",
            "este",
            "pentru",
            "am",
            "că",
            "cu",
            "să",
            "vă",
            "mă",
            "bună",
            "ziua",
            "produsul",
            "comanda",
            "mulțumesc",
            "mulţumesc",
            "rog",
            "îmi",
            "aș",
            "aş",
            "sunt",
            "care",
            "pe",
        ],
    ),
    (
        "de",
        &[
            "der",
            "die",
            "das",
            "und",
            "ist",
            "ich",
            "nicht",
            "sie",
            "mit",
            "ein",
            "eine",
            "hallo",
            "bitte",
            "danke",
            "meine",
            "wie",
            "wo",
            "bestellung",
            "zu",
            "möchte",
            "grüße",
            "auf",
        ],
    ),
    (
        "fr",
        &[
            "le", "la", "les", "et", "est", "je", "pas", "vous", "un", "une", "bonjour", "merci",
            "pour", "ma", "mon", "commande", "avec", "des", "pouvez", "où", "reçu",
        ],
    ),
    (
        "en",
        &[
            "the", "and", "is", "i", "not", "you", "my", "order", "hi", "hello", "please",
            "thanks", "thank", "with", "does", "this", "it", "to", "of", "can", "where",
        ],
    ),
    (
        "es",
        &[
            "el", "la", "los", "las", "y", "es", "no", "mi", "pedido", "hola", "gracias", "por",
            "favor", "para", "con", "cuándo", "llegará", "lo", "necesito", "que", "una",
        ],
    ),
    (
        "it",
        &[
            "il",
            "lo",
            "la",
            "gli",
            "e",
            "è",
            "non",
            "mio",
            "ordine",
            "ciao",
            "buongiorno",
            "grazie",
            "per",
            "con",
            "che",
            "ho",
            "avete",
            "ricevuto",
            "una",
            "sono",
        ],
    ),
];

/// The language of a buyer's text: the language whose common words it
/// uses most, when that is clear; else the marketplace's.
pub fn detect_language(text: &str, marketplace: Option<&str>) -> Option<String> {
    // Each common word, with the languages it belongs to (a bit each):
    // one lookup per word of the text instead of a scan of every list.
    // Words longer than the longest common word are not looked up.
    type Index = HashMap<&'static str, u8, BuildHasherDefault<Fnv>>;
    static INDEX: OnceLock<(Index, usize)> = OnceLock::new();
    let (index, longest) = INDEX.get_or_init(|| {
        let mut index = Index::default();
        let mut longest = 0;
        for (lang, (_, list)) in STOPWORDS.iter().enumerate() {
            for word in *list {
                *index.entry(*word).or_default() |= 1 << lang;
                longest = longest.max(word.chars().count());
            }
        }
        (index, longest)
    });
    let mut hits = [0usize; STOPWORDS.len()];
    // Letters only one of these languages uses settle close calls.
    let mut letters = [("ro", 0usize), ("pt", 0), ("de", 0), ("es", 0)];
    let mut lower = String::new();
    let mut count_word = |word: &str| {
        // Lowercasing never makes a word shorter in characters.
        if word.len() > *longest && word.chars().count() > *longest {
            return;
        }
        // Most words are lower case already: no copy for those.
        let key = if word.is_ascii() {
            if word.bytes().any(|b| b.is_ascii_uppercase()) {
                lower.clear();
                lower.push_str(word);
                lower.make_ascii_lowercase();
                lower.as_str()
            } else {
                word
            }
        } else if word.chars().any(char::is_uppercase) {
            lower.clear();
            lower.extend(word.chars().flat_map(char::to_lowercase));
            lower.as_str()
        } else {
            word
        };
        let langs = index.get(key).copied().unwrap_or_default();
        for (lang, hit) in hits.iter_mut().enumerate() {
            *hit += usize::from(langs & (1 << lang) != 0);
        }
    };
    // Words are runs of alphanumeric characters. One pass over the bytes:
    // only non-ASCII characters are decoded (and checked for the letters).
    let bytes = text.as_bytes();
    let mut word_start = None;
    let mut i = 0;
    while i < bytes.len() {
        let (len, in_word) = if bytes[i].is_ascii() {
            (1, bytes[i].is_ascii_alphanumeric())
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            let slot = match c {
                'ș' | 'ț' | 'ş' | 'ţ' | 'ă' => Some(0),
                'ã' | 'õ' => Some(1),
                'ß' | 'ä' | 'ö' | 'ü' => Some(2),
                'ñ' | '¿' | '¡' => Some(3),
                _ => None,
            };
            if let Some(slot) = slot {
                letters[slot].1 += 1;
            }
            (c.len_utf8(), c.is_alphanumeric())
        };
        match (in_word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(start)) => {
                count_word(&text[start..i]);
                word_start = None;
            }
            _ => {}
        }
        i += len;
    }
    if let Some(start) = word_start {
        count_word(&text[start..]);
    }
    let mut scores: Vec<(&str, usize)> = STOPWORDS
        .iter()
        .zip(hits)
        .map(|((lang, _), hits)| (*lang, hits))
        .collect();
    for (lang, n) in letters {
        if let Some(s) = scores.iter_mut().find(|(l, _)| *l == lang) {
            s.1 += n.min(3);
        }
    }
    scores.sort_by_key(|s| std::cmp::Reverse(s.1));
    let default = marketplace
        .and_then(marketplace_language)
        .map(str::to_owned);
    match (scores.first(), scores.get(1)) {
        (Some((lang, best)), Some((_, second))) if *best >= 3 && *best > second + 1 => {
            Some((*lang).to_owned())
        }
        _ => default,
    }
}

/// Why Amazon did not deliver the seller's message, when this is such a
/// notice.
pub fn delivery_failure(subject: &str, text: &str) -> Option<String> {
    static SUBJ: OnceLock<Option<Regex>> = OnceLock::new();
    let subj = regex(
        &SUBJ,
        r"(?i)delivery failure|message delivery failure|could not be delivered|konnte nicht zugestellt werden|nicht zugestellt|échec de (la )?(remise|livraison)|n'a pas pu être (remis|distribué)|mancata consegna|no se ha podido entregar|error de entrega|falha na entrega|não pôde ser entregue",
    )?;
    let hit = subj.is_match(subject) || subj.is_match(text);
    if !hit {
        return None;
    }
    static REASON: OnceLock<Option<Regex>> = OnceLock::new();
    let reason = regex(
        &REASON,
        r"(?im)^\s*(?:reason|grund|raison|motivo|motivo da falha)\s*:\s*(.+)$",
    );
    let found = reason
        .and_then(|r| r.captures(text))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().trim().to_owned());
    Some(found.unwrap_or_else(|| subject.trim().to_owned()))
}

/// The first relay address a text mentions (a notice about a message to
/// a buyer).
pub fn mentioned_relay(text: &str) -> Option<String> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = regex(&RE, r"[A-Za-z0-9._%+-]+@marketplace\.amazon\.[a-z.]+[a-z]")?;
    re.find_iter(text)
        .map(|m| m.as_str().to_owned())
        .find(|a| is_relay_address(a))
}

fn meta_str(meta: &Value, key: &str) -> Option<String> {
    meta.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

fn set_meta(m: &mut Message, key: &str, value: Value) {
    if !m.meta.is_object() {
        m.meta = Value::Object(serde_json::Map::new());
    }
    if let Some(obj) = m.meta.as_object_mut() {
        obj.insert(key.to_owned(), value);
    }
}

/// Turns an e-mail connector message into an Amazon message.
pub fn normalize(mut m: Message) -> Message {
    let from = meta_str(&m.meta, "from").unwrap_or_default();
    let from_name = meta_str(&m.meta, "from_name");
    let first_to = m
        .meta
        .get("to")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_owned);
    let subject = m.subject.clone().unwrap_or_default();
    // The text as parsed, moved out: it is put back unless replaced.
    let original_text = std::mem::take(&mut m.text);
    let mut text: Option<String> = None;
    let token =
        comm_mgr_token(&original_text).or_else(|| m.html.as_deref().and_then(comm_mgr_token));

    if is_relay_address(&from) && m.direction != Direction::Outbound {
        // A buyer's message through the relay.
        let handle = relay_handle(&from);
        let marketplace = marketplace_of(&from);
        let body = between_markers(&original_text)
            .or_else(|| m.html.as_deref().and_then(single_pre))
            .unwrap_or_else(|| original_text.trim().to_owned());
        let order = extract_order_id(&subject).or_else(|| extract_order_id(&original_text));
        let buyer = from_name.as_deref().and_then(buyer_name);
        m.language = detect_language(&body, marketplace.as_deref());
        text = Some(body);
        m.thread_key = thread_key(&handle, order.as_deref());
        m.order_id = order;
        m.marketplace = marketplace;
        m.author = buyer.clone().or(m.author);
        m.customer = Some(CustomerIdentity {
            channel: "amazon".to_owned(),
            handle,
            display_name: buyer,
            email: None,
        });
        // The relay takes replies only at the exact address received.
        let exact = m.reply_to.clone().filter(|r| is_relay_address(r));
        m.reply_to = exact.or(Some(from.clone()));
        if let Some(t) = &token {
            // Amazon may mail the same buyer message twice; its token is
            // the message's identity.
            m.external_id = format!("commMgrTok:{t}");
        }
    } else if m.direction == Direction::Outbound
        && first_to.as_deref().is_some_and(is_relay_address)
    {
        // The seller's reply to a buyer, found in the sent folder.
        let to = first_to.unwrap_or_default();
        let handle = relay_handle(&to);
        let order = extract_order_id(&subject).or_else(|| extract_order_id(&original_text));
        m.thread_key = thread_key(&handle, order.as_deref());
        m.order_id = order;
        m.marketplace = marketplace_of(&to);
        m.customer = Some(CustomerIdentity {
            channel: "amazon".to_owned(),
            handle,
            display_name: None,
            email: None,
        });
        m.reply_to = Some(to);
    } else if marketplace_of(&from).is_some() {
        // Amazon's own notices: never a buyer, never a clock.
        m.direction = Direction::System;
        m.customer = None;
        m.marketplace = marketplace_of(&from);
        let original_to = meta_str(&m.meta, "original_to");
        let original_subject = meta_str(&m.meta, "original_subject").unwrap_or_default();
        let relay = original_to
            .filter(|a| is_relay_address(a))
            .or_else(|| mentioned_relay(&original_text));
        let order = extract_order_id(&original_subject)
            .or_else(|| extract_order_id(&subject))
            .or_else(|| extract_order_id(&original_text));
        m.thread_key = match (&relay, &order) {
            (Some(r), _) => thread_key(&relay_handle(r), order.as_deref()),
            (None, Some(o)) => format!("amazon-order:{o}"),
            (None, None) => format!("amazon-notices:{from}"),
        };
        m.order_id = order;
        if let Some(reason) = delivery_failure(&subject, &original_text) {
            set_meta(&mut m, "delivery_failure", Value::String(reason.clone()));
            if !original_text.contains(&reason) {
                text = Some(format!("Delivery failure: {reason}\n\n{original_text}"));
            }
        }
    }
    if let Some(t) = token {
        set_meta(&mut m, "comm_mgr_tok", Value::String(t));
    }
    let no_response = no_response_needed_id(&original_text)
        .or_else(|| m.html.as_deref().and_then(no_response_needed_id));
    if let Some(id) = no_response {
        set_meta(&mut m, "no_response_needed_msg", Value::String(id));
    }
    m.text = text.unwrap_or(original_text);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marketplaces_from_domains() {
        let cases = [
            ("abc@marketplace.amazon.com.br", Some("amazon.com.br")),
            ("abc@marketplace.amazon.de", Some("amazon.de")),
            ("abc@marketplace.amazon.co.uk", Some("amazon.co.uk")),
            ("abc@marketplace.amazon.com", Some("amazon.com")),
            ("abc@marketplace.amazon.co.jp", Some("amazon.co.jp")),
            ("abc@marketplace.amazon.com.mx", Some("amazon.com.mx")),
            ("abc@marketplace.amazon.com.be", Some("amazon.com.be")),
            ("donotreply@amazon.fr", Some("amazon.fr")),
            ("seller-notification@amazon.eg", Some("amazon.eg")),
            ("abc@marketplace.amazon.ro", None),
            ("x@notamazon.de", None),
            ("x@example.com", None),
        ];
        for (input, want) in cases {
            assert_eq!(marketplace_of(input).as_deref(), want, "{input}");
        }
        assert!(is_relay_address("ABC+x@Marketplace.Amazon.de"));
        assert!(!is_relay_address("donotreply@amazon.de"));
        assert!(!is_relay_address("@marketplace.amazon.de"));
    }

    #[test]
    fn buyer_names_lose_the_marketplace_suffix() {
        let cases = [
            ("Ana Souza - Amazon Marketplace", Some("Ana Souza")),
            ("\"Jürgen Weiß - Amazon Marketplace\"", Some("Jürgen Weiß")),
            ("Chloé Martin – Amazon Marketplace", Some("Chloé Martin")),
            (
                "Taro Yamada - Amazon Marketplace Japan",
                Some("Taro Yamada"),
            ),
            ("Emily Clark - amazon marketplace", Some("Emily Clark")),
            ("Luis Garcia", Some("Luis Garcia")),
            ("Amazon Marketplace", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(buyer_name(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn relay_suffixes_are_stripped_for_the_identity() {
        let cases = [
            (
                "Z3x4c5v6b7n8m9a+A1B2C3D4@marketplace.amazon.fr",
                "z3x4c5v6b7n8m9a@marketplace.amazon.fr",
            ),
            (
                "q7w8e9r0t1y2uio@marketplace.amazon.de",
                "q7w8e9r0t1y2uio@marketplace.amazon.de",
            ),
            (
                "Buyer <Q7W8+case2@marketplace.amazon.de>",
                "q7w8@marketplace.amazon.de",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(relay_handle(input), want, "{input}");
        }
    }

    #[test]
    fn the_buyers_text_is_cut_out_of_amazons_frame() {
        let text = "Order: 1\n\n------------- Begin message -------------\n\nHello,\nwhere is it?\n\n------------- End message -------------\n\nReply to this mail.";
        assert_eq!(
            between_markers(text).as_deref(),
            Some("Hello,\nwhere is it?")
        );
        assert_eq!(
            between_markers("---- BEGIN MESSAGE ----\nx\n---- END MESSAGE ----").as_deref(),
            Some("x")
        );
        assert_eq!(between_markers("no markers"), None);
        assert_eq!(
            between_markers("--- Begin message ---\n\n--- End message ---"),
            None
        );

        let html = "<td><pre style=\"x\">Bonjour,\nc&#39;est cass&eacute;.</pre></td>";
        assert_eq!(single_pre(html).as_deref(), Some("Bonjour,\nc'est cassé."));
        assert_eq!(single_pre("<pre>a</pre><pre>b</pre>"), None);
        assert_eq!(single_pre("<p>none</p>"), None);
        let cases = [
            ("<PRE class=x>Hi\n  there</Pre\n>", Some("Hi\n  there")),
            ("<prefix>no</prefix><pre>yes</pre>", Some("yes")),
            ("<pre>a</pre><PRE >b</pre>", None),
            ("<pre>a</prefix></pre>", Some("a")),
            ("<pre>never closed", None),
            ("<pre never closed", None),
            ("<pre>  </pre>", None),
            ("<pre>x<pre>y</pre>", Some("x\n\ny")),
            ("<pr", None),
            ("<pre>é</pre \u{a0}>", Some("é")),
        ];
        for (html, want) in cases {
            assert_eq!(single_pre(html).as_deref(), want, "{html}");
        }
    }

    #[test]
    fn no_response_needed_links() {
        let cases = [
            ("https://sellercentral.amazon.de/messaging/no-response-needed.html?msg=A2BR3SOUZA77", Some("A2BR3SOUZA77")),
            ("<a href=\"https://sellercentral.amazon.fr/messaging/no-response-needed.html?lang=fr&amp;msg=FR1\">", Some("FR1")),
            ("no link here", None),
        ];
        for (text, want) in cases {
            assert_eq!(no_response_needed_id(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn tokens_orders_and_thread_keys() {
        assert_eq!(
            comm_mgr_token("x\n[commMgrTok:A2BR3SOUZA77]\n").as_deref(),
            Some("A2BR3SOUZA77")
        );
        assert_eq!(comm_mgr_token("[commMgrTok:]"), None);
        assert_eq!(
            thread_key("a@marketplace.amazon.de", Some("302-7654321-1234567")),
            "a@marketplace.amazon.de#302-7654321-1234567"
        );
        assert_eq!(
            thread_key("a@marketplace.amazon.de", None),
            "a@marketplace.amazon.de"
        );
        assert_eq!(
            extract_order_id("Consulta do cliente (Pedido: 701-1234567-1234567)").as_deref(),
            Some("701-1234567-1234567")
        );
        assert_eq!(
            mentioned_relay("Ihre Nachricht an q7w8@marketplace.amazon.de konnte nicht").as_deref(),
            Some("q7w8@marketplace.amazon.de")
        );
    }

    #[test]
    fn languages_from_words_then_marketplace() {
        let cases = [
            ("Olá, o meu pedido ainda não chegou. Podem verificar, por favor? Obrigada.", Some("amazon.com.br"), Some("pt")),
            ("Bună ziua, am primit produsul deteriorat şi aş vrea să îl returnez. Vă rog", Some("amazon.de"), Some("ro")),
            ("Hallo, die Schuhe sind zu klein. Ich möchte sie umtauschen.", Some("amazon.de"), Some("de")),
            ("Bonjour, la housse est arrivée déchirée. Pouvez-vous m'envoyer un remplacement ? Merci", Some("amazon.fr"), Some("fr")),
            ("Hi, does this kettle work with 110 V? I'd like to take it to Canada.", Some("amazon.co.uk"), Some("en")),
            ("Hola, ¿cuándo llegará mi pedido? Lo necesito para el sábado. Gracias.", Some("amazon.es"), Some("es")),
            ("Buongiorno, non ho ricevuto il mio ordine. Grazie", Some("amazon.it"), Some("it")),
            ("OK", Some("amazon.fr"), Some("fr")),
            ("OK", None, None),
        ];
        for (text, market, want) in cases {
            assert_eq!(detect_language(text, market).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn delivery_failures_and_their_reasons() {
        assert_eq!(
            delivery_failure(
                "Ihre Nachricht konnte nicht zugestellt werden",
                "Grund: Externer Link.\n"
            )
            .as_deref(),
            Some("Externer Link.")
        );
        assert_eq!(
            delivery_failure(
                "Message delivery failure",
                "We could not...\nReason: Attachments of this file type are not accepted."
            )
            .as_deref(),
            Some("Attachments of this file type are not accepted.")
        );
        assert_eq!(
            delivery_failure("Delivery failure", "no reason line").as_deref(),
            Some("Delivery failure")
        );
        assert_eq!(delivery_failure("Sold, ship now", "Order 1"), None);
    }
}
