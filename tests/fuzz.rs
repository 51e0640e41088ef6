//! Property-based fuzzing (issue #15) of everything hourglass reads from
//! outside: mail (MIME trees and raw bytes) through the e-mail normalizer
//! and the Amazon relay-mail normalizer, order ids and subjects, every
//! webhook request (verification and body) and API payload the connectors
//! parse, and the config loader.
//!
//! Each property: no panic, no hang (each case runs on a worker thread
//! that must finish within [`HANG_LIMIT`]), bounded memory (the bytes a
//! case holds at its peak, counted by this binary's allocator, stay under
//! [`memory_bound`] of its input). Inputs are generated structurally
//! (MIME trees with random charsets, transfer encodings and nesting; JSON
//! payloads mutated from the platforms' documented shapes; the example
//! config mutated line by line) and as raw bytes.
//!
//! CI runs a fixed number of cases per property ([`DEFAULT_CASES`]); a
//! long run raises it: `PROPTEST_CASES=100000 cargo test --test fuzz`.
//! A failure prints the shrunk input; add it to the named regression
//! tests at the end of this file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use hourglass_connector::{Connector, WebhookRequest};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use serde_json::{json, Value};

// ---------------------------------------------------------------- limits

/// Cases per property unless `PROPTEST_CASES` says otherwise: the whole
/// file stays within about a minute on CI.
const DEFAULT_CASES: u32 = 256;

/// A case that runs longer than this is a hang. Generous: a debug build on
/// a busy machine; the inputs are capped at [`MAX_INPUT`].
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// The largest generated input, in bytes.
const MAX_INPUT: usize = 64 * 1024;

/// The most a case may hold at once: a fixed allowance (parser tables,
/// regexes compiled on first use) plus a multiple of the input.
fn memory_bound(input_len: usize) -> usize {
    8 * 1024 * 1024 + 64 * input_len
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------- memory accounting

/// Counts the bytes each thread holds, and the peak since the last reset.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` on a worker thread: panics (failing the case, with its input)
/// when it panics, runs past [`HANG_LIMIT`] or holds more than
/// [`memory_bound`] of `input_len` at once.
fn guarded<T: Send + 'static>(
    what: &str,
    input_len: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    // Panics print their message and place, no backtrace: resolving one
    // (RUST_BACKTRACE=1 in CI) reads the debug info, tens of megabytes
    // that would count against the case that panicked.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            eprintln!("thread '{}' {info}", thread.name().unwrap_or("?"));
        }))
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("fuzz {what}"))
        .spawn(move || {
            let base = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(base));
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let peak = PEAK.with(Cell::get) - base;
            let _ = tx.send((out, peak));
        })
        .expect("spawn a fuzz worker");
    match rx.recv_timeout(HANG_LIMIT) {
        Ok((Ok(out), peak)) => {
            let bound = memory_bound(input_len);
            assert!(
                peak <= bound as isize,
                "{what}: held {peak} bytes at once for a {input_len}-byte input (bound {bound})"
            );
            out
        }
        Ok((Err(panic), _)) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{what} panicked: {why}")
        }
        Err(_) => panic!("{what} did not finish within {HANG_LIMIT:?}: a hang"),
    }
}

// ------------------------------------------------------------ encoders

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.push_str("\r\n");
        }
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for j in 0..4 {
            if j <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * j)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn quoted_printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut line = 0;
    for &b in bytes {
        let piece = if b == b'\n' {
            line = 0;
            out.push_str("\r\n");
            continue;
        } else if (33..=126).contains(&b) && b != b'=' || b == b' ' {
            (b as char).to_string()
        } else {
            format!("={b:02X}")
        };
        if line + piece.len() > 75 {
            out.push_str("=\r\n");
            line = 0;
        }
        line += piece.len();
        out.push_str(&piece);
    }
    out
}

// ------------------------------------------------------- MIME strategies

const CHARSETS: [&str; 12] = [
    "utf-8",
    "iso-8859-1",
    "windows-1252",
    "iso-8859-2",
    "windows-1250",
    "koi8-r",
    "shift_jis",
    "gb2312",
    "utf-16",
    "x-unknown-charset",
    "",
    "\"utf-8\"; format=flowed",
];

const ENCODINGS: [&str; 6] = [
    "7bit",
    "8bit",
    "quoted-printable",
    "base64",
    "binary",
    "x-uuencode",
];

/// Text as it turns up in customer mail: any language, control
/// characters, Amazon's markers, HTML.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,200}",
        ".{0,200}",
        Just("------------- Begin message -------------\n\nWo ist meine Bestellung 302-1234567-1234567?\n\n------------- End message -------------\n[commMgrTok:A1B2C3]".to_owned()),
        Just("<html><body><pre>Hola, ¿dónde está mi pedido?</pre><a href=\"https://sellercentral.amazon.es/messaging/no-response-needed.html?msg=XYZ\">x</a></body></html>".to_owned()),
        "[<>&;=\"'/a-z ]{0,120}",
    ]
}

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,80}",
        (prop::sample::select(&CHARSETS[..]), "[BbQq]", "[^?\r\n]{0,40}")
            .prop_map(|(c, e, t)| format!("=?{c}?{e}?{t}?=")),
        "Re: (Re: |AW: |Fwd: |RE:|Odp: ){0,4}[a-zA-Z0-9 ]{0,30}",
        "Inquiry from Amazon customer [A-Za-z ]{0,20} \\(Order: [0-9]{3}-[0-9]{7}-[0-9]{7}\\)",
        "(Anfrage|Demande|Consulta|Richiesta) [^\r\n()]{0,20}\\((Bestellung|Commande|Pedido): [0-9-]{0,22}\\)?",
    ]
}

#[derive(Debug, Clone)]
enum Part {
    Leaf {
        content_type: &'static str,
        charset: &'static str,
        encoding: &'static str,
        filename: Option<String>,
        body: Vec<u8>,
    },
    Multipart {
        subtype: &'static str,
        boundary: String,
        parts: Vec<Part>,
    },
    Message(Box<Part>),
}

fn leaf() -> impl Strategy<Value = Part> {
    (
        prop::sample::select(vec![
            "text/plain",
            "text/html",
            "application/octet-stream",
            "image/png",
            "text/x-weird",
            "",
        ]),
        prop::sample::select(&CHARSETS[..]),
        prop::sample::select(&ENCODINGS[..]),
        prop::option::of("[^\"\r\n]{0,30}"),
        prop_oneof![
            text().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..512)
        ],
    )
        .prop_map(
            |(content_type, charset, encoding, filename, body)| Part::Leaf {
                content_type,
                charset,
                encoding,
                filename,
                body,
            },
        )
}

fn mime_tree() -> impl Strategy<Value = Part> {
    leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec!["mixed", "alternative", "related", "digest", "report"]),
                prop_oneof!["[a-zA-Z0-9'()+_,./:=?-]{1,40}", Just(String::new())],
                prop::collection::vec(inner.clone(), 0..6),
            )
                .prop_map(|(subtype, boundary, parts)| Part::Multipart {
                    subtype,
                    boundary,
                    parts,
                }),
            inner.prop_map(|p| Part::Message(Box::new(p))),
        ]
    })
}

fn render_part(part: &Part, out: &mut Vec<u8>) {
    match part {
        Part::Leaf {
            content_type,
            charset,
            encoding,
            filename,
            body,
        } => {
            out.extend_from_slice(
                format!("Content-Type: {content_type}; charset={charset}").as_bytes(),
            );
            if let Some(name) = filename {
                out.extend_from_slice(
                    format!(
                        "; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\""
                    )
                    .as_bytes(),
                );
            }
            out.extend_from_slice(
                format!("\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n").as_bytes(),
            );
            match *encoding {
                "base64" => out.extend_from_slice(base64(body).as_bytes()),
                "quoted-printable" => out.extend_from_slice(quoted_printable(body).as_bytes()),
                _ => out.extend_from_slice(body),
            }
            out.extend_from_slice(b"\r\n");
        }
        Part::Multipart {
            subtype,
            boundary,
            parts,
        } => {
            out.extend_from_slice(
                format!("Content-Type: multipart/{subtype}; boundary=\"{boundary}\"\r\n\r\npreamble\r\n").as_bytes(),
            );
            for p in parts {
                out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                render_part(p, out);
            }
            out.extend_from_slice(format!("--{boundary}--\r\nepilogue\r\n").as_bytes());
        }
        Part::Message(inner) => {
            out.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\nFrom: inner@example.com\r\nSubject: inner\r\nMessage-ID: <inner@x>\r\n");
            render_part(inner, out);
        }
    }
}

#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: String,
    subject: String,
    date: String,
    message_id: String,
    references: String,
    extra: Vec<(String, String)>,
    body: Part,
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.+_-]{1,20}@[a-z0-9.-]{1,20}",
        "\"[^\"\r\n]{0,20} - Amazon Marketplace\" <[a-z0-9]{4,16}(\\+[a-z0-9]{1,8})?@marketplace\\.amazon\\.(de|com|co\\.uk|fr|es|it|com\\.br|co\\.jp)>",
        "[^\r\n]{0,40}",
        Just("undisclosed-recipients:;".to_owned()),
    ]
}

fn mail() -> impl Strategy<Value = Mail> {
    (
        address(),
        address(),
        header_text(),
        prop_oneof![
            (0i64..4_000_000_000).prop_map(|s| Utc
                .timestamp_opt(s, 0)
                .single()
                .map(|d| d.to_rfc2822())
                .unwrap_or_default()),
            "[^\r\n]{0,40}",
        ],
        "<[^<>\r\n]{0,40}>|[^\r\n]{0,20}",
        "(<[a-z0-9.@-]{1,20}> ?){0,5}",
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "Auto-Submitted",
                    "Precedence",
                    "In-Reply-To",
                    "X-Autoreply",
                    "Reply-To",
                    "Content-Language",
                    "X-Weird\u{1}",
                ]),
                "[^\r\n]{0,30}",
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
            0..4,
        ),
        mime_tree(),
    )
        .prop_map(
            |(from, to, subject, date, message_id, references, extra, body)| Mail {
                from,
                to,
                subject,
                date,
                message_id,
                references,
                extra,
                body,
            },
        )
}

fn render_mail(m: &Mail) -> Vec<u8> {
    let mut out = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: {}\r\nReferences: {}\r\nMIME-Version: 1.0\r\n",
        m.from, m.to, m.subject, m.date, m.message_id, m.references
    )
    .into_bytes();
    for (k, v) in &m.extra {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    render_part(&m.body, &mut out);
    out.truncate(MAX_INPUT);
    out
}

/// Damage done to a rendered input: cut it short, overwrite or insert
/// bytes.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    prop::collection::vec(
        prop_oneof![
            any::<prop::sample::Index>().prop_map(Damage::Truncate),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
            (
                any::<prop::sample::Index>(),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..16),
                    Just(b"\r\n\r\n".to_vec()),
                    Just(b"\"}]".to_vec()),
                    Just(b"=?utf-8?B?".to_vec()),
                ]
            )
                .prop_map(|(i, b)| Damage::Insert(i, b)),
        ],
        0..4,
    )
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        if bytes.is_empty() {
            break;
        }
        match d {
            Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Damage::Flip(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Damage::Insert(i, b) => {
                let at = i.index(bytes.len());
                bytes.splice(at..at, b.iter().copied());
            }
        }
    }
    bytes.truncate(MAX_INPUT);
    bytes
}

// ----------------------------------------------------------- mail runs

fn parse_both(raw: Vec<u8>) {
    let len = raw.len();
    guarded("parse_mail", len, move || {
        let own = vec!["seller@shop.example".to_owned()];
        for folder in ["INBOX", "Sent"] {
            let ctx = hourglass_email::ParseContext {
                folder,
                uid: Some(7),
                internal_date: Utc.timestamp_opt(1_700_000_000, 0).single(),
                is_sent_folder: folder == "Sent",
                own_addresses: &own,
                now: Utc::now(),
            };
            if let Ok(m) = hourglass_email::parse_mail(&raw, &ctx) {
                // The relay-mail normalizer runs on what the e-mail parser
                // made of an Amazon mailbox.
                let m = hourglass_amazon::normalize::normalize(m);
                if let Some(order) = &m.order_id {
                    assert!(is_order_id(order), "order id {order:?}");
                }
            }
        }
    });
}

fn is_order_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| {
            if i == 3 || i == 11 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mime_trees_parse_without_panic(m in mail(), d in damage()) {
        parse_both(apply(render_mail(&m), &d));
    }

    #[test]
    fn raw_bytes_parse_without_panic(raw in prop::collection::vec(any::<u8>(), 0..4096)) {
        parse_both(raw);
    }

    #[test]
    fn headers_only_and_odd_line_ends_parse(raw in "([A-Za-z-]{0,12}:[^\n]{0,60}(\r\n|\n|\r)[ \t]?){0,30}(\r\n)?[^\0]{0,200}") {
        parse_both(raw.into_bytes());
    }
}

// ------------------------------------------- order ids and subjects

proptest! {
    #![proptest_config(config())]

    #[test]
    fn order_ids_are_found_only_as_they_are(
        text in prop_oneof![
            "\\PC{0,300}",
            "[0-9 -]{0,60}",
            "[^0-9]{0,20}[0-9]{3}-[0-9]{7}-[0-9]{7}[^0-9]{0,20}",
        ]
    ) {
        let t = text.clone();
        let found = guarded("extract_order_id", text.len(), move || {
            hourglass_connector::extract_order_id(&t)
        });
        if let Some(id) = found {
            prop_assert!(is_order_id(&id), "{id:?}");
            prop_assert!(text.contains(&id));
        }
    }

    #[test]
    fn subjects_normalize(subject in prop_oneof![header_text(), "\\PC{0,300}"]) {
        let s = subject.clone();
        guarded("subjects", subject.len(), move || {
            let n = hourglass_email::normalize::normalize_subject(&s);
            let _ = hourglass_email::normalize::thread_key("a@b", &s, None);
            let _ = hourglass_connector::reply_subject(&s);
            let _ = hourglass_amazon::normalize::delivery_failure(&s, &s);
            let _ = hourglass_amazon::normalize::buyer_name(&s);
            let _ = hourglass_amazon::normalize::between_markers(&s);
            let _ = hourglass_amazon::normalize::single_pre(&s);
            let _ = hourglass_amazon::normalize::comm_mgr_token(&s);
            let _ = hourglass_amazon::normalize::no_response_needed_id(&s);
            let _ = hourglass_amazon::normalize::mentioned_relay(&s);
            let _ = hourglass_amazon::normalize::relay_handle(&s);
            let _ = hourglass_amazon::normalize::marketplace_of(&s);
            let _ = hourglass_amazon::normalize::detect_language(&s, Some("amazon.de"));
            let _ = hourglass_email::normalize::address_of(&s);
            let _ = hourglass_email::normalize::html_to_text(&s);
            n
        });
    }
}

// ------------------------------------------------------- JSON mutation

/// A JSON value where a payload field is expected: every type, the edges
/// of numbers, strings that look like ids or times, and deep nesting.
fn wild_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            json!(""),
            json!("0"),
            json!("-1"),
            json!("18446744073709551616"),
            json!("2024-02-30T25:61:61Z"),
            json!("2024-05-01T10:00:00.000Z"),
            json!("9999-12-31T23:59:59Z"),
            json!(i64::MIN),
            json!(1e308),
        ]),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to a payload: at the place `at` picks among its nodes,
/// replace the value, drop the key, or add a key.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, Value),
    Remove(prop::sample::Index),
    Add(prop::sample::Index, String, Value),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<prop::sample::Index>(), wild_json()).prop_map(|(i, v)| Edit::Replace(i, v)),
            any::<prop::sample::Index>().prop_map(Edit::Remove),
            (any::<prop::sample::Index>(), "[a-z_]{1,12}", wild_json())
                .prop_map(|(i, k, v)| Edit::Add(i, k, v)),
        ],
        0..6,
    )
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth_node(v: &mut Value, n: &mut usize) -> Option<*mut Value> {
    if *n == 0 {
        return Some(v as *mut Value);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|c| nth_node(c, n)),
        Value::Object(o) => o.values_mut().find_map(|c| nth_node(c, n)),
        _ => None,
    }
}

fn edit(mut v: Value, edits: &[Edit]) -> Value {
    for e in edits {
        let total = count_nodes(&v);
        let (i, op) = match e {
            Edit::Replace(i, _) | Edit::Remove(i) | Edit::Add(i, _, _) => (i.index(total), e),
        };
        let mut n = i;
        let Some(node) = nth_node(&mut v, &mut n) else {
            continue;
        };
        // SAFETY: the pointer is into `v`, which nothing else borrows here.
        let node = unsafe { &mut *node };
        match op {
            Edit::Replace(_, new) => *node = new.clone(),
            Edit::Remove(_) => match node {
                Value::Object(o) => {
                    if let Some(k) = o.keys().next().cloned() {
                        o.remove(&k);
                    }
                }
                Value::Array(a) => {
                    a.pop();
                }
                _ => *node = Value::Null,
            },
            Edit::Add(_, k, new) => match node {
                Value::Object(o) => {
                    o.insert(k.clone(), new.clone());
                }
                Value::Array(a) => a.push(new.clone()),
                _ => {}
            },
        }
    }
    v
}

/// A payload to feed a parser: a seed edited structurally, then maybe
/// damaged as bytes.
fn payload(seeds: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        edits(),
        prop::option::weighted(0.3, damage()),
    )
        .prop_map(|(seed, edits, damage)| {
            let bytes = serde_json::to_vec(&edit(seed, &edits)).unwrap_or_default();
            match damage {
                Some(d) => apply(bytes, &d),
                None => bytes,
            }
        })
}

// --------------------------------------------------------------- seeds

fn at() -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_714_557_600, 0)
        .single()
        .unwrap_or_default()
}

fn meta_seeds() -> Vec<Value> {
    use hourglass_testsupport::meta::*;
    vec![
        page_delivery(
            "page",
            "104857600000001",
            vec![vec![
                customer_text(
                    "104857600000001",
                    "psid-1",
                    "m_1",
                    "Hallo, wo ist mein Paket?",
                    at(),
                ),
                page_echo("104857600000001", "psid-1", "m_2", "Unterwegs!", at()),
            ]],
        ),
        page_delivery(
            "instagram",
            "17841400000000001",
            vec![vec![customer_text(
                "17841400000000001",
                "igsid-1",
                "m_3",
                "hi",
                at(),
            )]],
        ),
        whatsapp_delivery(
            "109876543210987",
            &[("4915112345678", "Ana Souza")],
            vec![whatsapp_text("4915112345678", "wamid.1", "Olá", at())],
            vec![
                whatsapp_status(
                    "wamid.0",
                    "4915112345678",
                    "failed",
                    Some((131047, "Re-engagement message", "more than 24 hours")),
                ),
                whatsapp_status("wamid.2", "4915112345678", "delivered", None),
            ],
        ),
    ]
}

fn telegram_seeds() -> Vec<Value> {
    let message = json!({
        "message_id": 17,
        "from": {"id": 5551234, "is_bot": false, "first_name": "Ioana", "last_name": "Popescu", "username": "ioana", "language_code": "ro"},
        "chat": {"id": 5551234, "type": "private", "first_name": "Ioana"},
        "date": 1714557600,
        "text": "Bună ziua, comanda mea?",
        "entities": [{"type": "bold", "offset": 0, "length": 4}]
    });
    vec![
        json!({"update_id": 900001, "message": message.clone()}),
        json!({"update_id": 900002, "edited_message": message.clone()}),
        json!({"update_id": 900003, "business_message": {
            "business_connection_id": "bc-1", "message_id": 3,
            "from": {"id": 77, "is_bot": false, "first_name": "Ana"},
            "chat": {"id": 77, "type": "private"}, "date": 1714557600,
            "caption": "photo", "photo": [{"file_id": "f1", "file_unique_id": "u1", "width": 90, "height": 90, "file_size": 1000}]
        }}),
        json!({"update_id": 900004, "my_chat_member": {"chat": {"id": 1}}}),
        json!({"ok": true, "result": [{"update_id": 1, "message": message}]}),
    ]
}

fn x_seeds() -> Vec<Value> {
    vec![json!({
        "data": [
            {"id": "1790000000000000001", "event_type": "MessageCreate", "text": "Hi, where is my order?",
             "created_at": "2024-05-01T10:00:00.000Z", "dm_conversation_id": "111-222",
             "sender_id": "222", "participant_ids": ["111", "222"]},
            {"id": "1790000000000000002", "event_type": "MessageCreate", "text": "On its way",
             "created_at": "2024-05-01T10:05:00.000Z", "dm_conversation_id": "111-222",
             "sender_id": "111", "attachments": {"media_keys": ["3_1"]}},
            {"id": "1790000000000000003", "event_type": "ParticipantsJoin",
             "created_at": "2024-05-01T10:06:00.000Z", "dm_conversation_id": "111-222", "sender_id": "222"}
        ],
        "includes": {"users": [{"id": "222", "name": "Emily Clark", "username": "emily"}]},
        "meta": {"result_count": 3, "next_token": "abc"}
    })]
}

fn ebay_seeds() -> Vec<Value> {
    vec![
        json!({
            "conversationTitle": "About item 1234",
            "messages": [
                {"messageId": "m1", "createdDate": "2024-05-01T10:00:00.000Z", "messageBody": "Is this still available?",
                 "senderUsername": "buyer_1", "recipientUsername": "shop", "subject": "Question", "readStatus": false,
                 "messageMedia": [{"mediaName": "a.jpg", "mediaType": "IMAGE", "mediaUrl": "https://i.ebayimg.com/a.jpg"}]},
                {"messageId": "m2", "createdDate": "2024-05-01T11:00:00.000Z", "messageBody": "<p>Yes &amp; ships <b>today</b></p>",
                 "senderUsername": "shop", "recipientUsername": "buyer_1"}
            ],
            "next": null
        }),
        json!({
            "conversations": [
                {"conversationId": "c1", "conversationTitle": "t", "referenceId": "1234", "referenceType": "LISTING",
                 "latestMessage": {"createdDate": "2024-05-01T11:00:00.000Z"}}
            ],
            "next": "https://api.ebay.com/commerce/message/v1/conversation?offset=50", "total": 51
        }),
    ]
}

fn sp_api_seeds() -> Vec<Value> {
    vec![json!({
        "payload": {
            "AmazonOrderId": "302-1234567-1234567", "OrderStatus": "Shipped",
            "PurchaseDate": "2024-05-01T10:00:00Z", "LatestShipDate": "2024-05-02T10:00:00Z",
            "FulfillmentChannel": "AFN", "MarketplaceId": "A1PA6795UKMFR9",
            "OrderTotal": {"Amount": "19.99", "CurrencyCode": "EUR"}
        }
    })]
}

fn simulated_seeds() -> Vec<Value> {
    vec![
        json!({"messages": [{"id": "p1", "buyer": "b1", "name": "Ana", "text": "hi", "sent_at": "2024-05-01T10:00:00Z"}]}),
    ]
}

// ------------------------------------------------- API payload parsers

fn check_batch(b: &hourglass_connector::Batch) {
    for m in &b.messages {
        assert!(!m.external_id.is_empty(), "a message without an id: {m:?}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn meta_deliveries_parse(body in payload(meta_seeds())) {
        let len = body.len();
        guarded("meta parse_delivery", len, move || {
            for kind in [
                hourglass_meta::Kind::Messenger,
                hourglass_meta::Kind::Instagram,
                hourglass_meta::Kind::WhatsApp,
            ] {
                for own in ["104857600000001", "17841400000000001", "109876543210987"] {
                    if let Ok(b) = hourglass_meta::parse_delivery(kind, own, &body) {
                        check_batch(&b);
                    }
                }
            }
        });
    }

    #[test]
    fn telegram_updates_parse(body in payload(telegram_seeds())) {
        let len = body.len();
        guarded("telegram updates", len, move || {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                let _ = hourglass_telegram::normalize(&v);
                let _ = hourglass_telegram::read_updates(&v);
                if let Some(r) = v.get("result") {
                    let _ = hourglass_telegram::read_updates(r);
                }
                let _ = hourglass_telegram::read_updates(&Value::Array(vec![v]));
            }
        });
    }

    #[test]
    fn x_dm_event_pages_parse(body in payload(x_seeds())) {
        let len = body.len();
        guarded("x dm_events", len, move || {
            if let Ok(page) = serde_json::from_slice::<hourglass_x::Page>(&body) {
                let read = hourglass_x::read_page(&page, "111", None);
                let _ = hourglass_x::read_page(&page, "222", Some("1790000000000000002"));
                drop(read);
            }
        });
    }

    #[test]
    fn x_ids_compare(a in "[0-9]{0,30}|\\PC{0,10}", b in "[0-9]{0,30}|\\PC{0,10}") {
        use std::cmp::Ordering;
        let ab = hourglass_x::cmp_ids(&a, &b);
        let ba = hourglass_x::cmp_ids(&b, &a);
        prop_assert_eq!(ab, ba.reverse());
        prop_assert_eq!(hourglass_x::cmp_ids(&a, &a), Ordering::Equal);
    }

    #[test]
    fn ebay_pages_parse(body in payload(ebay_seeds())) {
        use hourglass_ebay::normalize::*;
        let len = body.len();
        guarded("ebay pages", len, move || {
            if let Ok(page) = serde_json::from_slice::<ConversationsPage>(&body) {
                for c in page.conversations {
                    let _ = serde_json::from_value::<ConversationDetail>(c);
                }
            }
            if let Ok(page) = serde_json::from_slice::<MessagesPage>(&body) {
                let messages: Vec<MessageDetail> = page
                    .messages
                    .into_iter()
                    .filter_map(|m| serde_json::from_value(m).ok())
                    .collect();
                let seen = participants(&messages);
                let seller = infer_seller([&seen, &seen]);
                let buyer = other_party(&messages, seller.as_deref());
                for kind in ConversationType::ALL {
                    let conv = Conversation {
                        id: "c1",
                        kind,
                        title: page.conversation_title.as_deref(),
                        reference_type: Some("LISTING"),
                        reference_id: Some("1234"),
                        seller: seller.as_deref(),
                        marketplace: "EBAY_US",
                    };
                    for m in &messages {
                        let _ = normalize(&conv, buyer.as_deref(), m);
                    }
                }
            }
            let _ = serde_json::from_slice::<SendMessageResponse>(&body);
        });
    }

    #[test]
    fn sp_api_orders_summarize(body in payload(sp_api_seeds())) {
        let len = body.len();
        guarded("sp-api summarize", len, move || {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                let _ = hourglass_amazon::sp_api::summarize(&v);
            }
        });
    }
}

// ------------------------------------------------------------ webhooks

/// The connectors that take webhooks, built from a config as the daemon
/// builds them (secrets in files).
struct Hooks {
    _dir: tempfile::TempDir,
    connectors: Vec<(String, Arc<dyn Connector>)>,
}

const HOOK_SECRET: &str = "fuzz-hook-secret";

fn hooks() -> &'static Hooks {
    static HOOKS: std::sync::OnceLock<Hooks> = std::sync::OnceLock::new();
    HOOKS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, HOOK_SECRET).expect("write the secret");
        let s = format!("file:{}", secret.display());
        let path = dir.path().join("hourglass.toml");
        std::fs::write(
            &path,
            format!(
                r#"[store]
url = "sqlite://{db}"

[[instances]]
name = "fb"
type = "messenger"
[instances.meta]
api_url = "http://127.0.0.1:9"
app_secret = "{s}"
verify_token = "{s}"
access_token = "{s}"
page_id = "104857600000001"

[[instances]]
name = "ig"
type = "instagram"
[instances.meta]
api_url = "http://127.0.0.1:9"
app_secret = "{s}"
verify_token = "{s}"
access_token = "{s}"
page_id = "17841400000000001"

[[instances]]
name = "wa"
type = "whatsapp"
[instances.meta]
api_url = "http://127.0.0.1:9"
app_secret = "{s}"
verify_token = "{s}"
access_token = "{s}"
phone_number_id = "109876543210987"

[[instances]]
name = "tg"
type = "telegram"
[instances.telegram]
api_url = "http://127.0.0.1:9"
bot_token = "{s}"
mode = "webhook"
webhook_secret = "{s}"

[[instances]]
name = "sim"
type = "simulated"
[instances.simulated]
webhook_secret = "{s}"
"#,
                db = dir.path().join("db.sqlite").display()
            ),
        )
        .expect("write the config");
        let config = hourglass::config::Config::load(&path)
            .unwrap_or_else(|e| panic!("the fuzz config does not load: {e}"));
        let connectors = config
            .instances
            .iter()
            .map(|i| {
                let c = i
                    .build_connector()
                    .unwrap_or_else(|e| panic!("{}: {e}", i.name()));
                assert!(c.accepts_webhooks(), "{} takes webhooks", i.name());
                (i.name().to_owned(), c)
            })
            .collect();
        Hooks {
            _dir: dir,
            connectors,
        }
    })
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Debug, Clone)]
struct Pushed {
    method: &'static str,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// Sign the body correctly (else the headers stand as generated).
    sign: bool,
    body: Vec<u8>,
}

fn pushed() -> impl Strategy<Value = Pushed> {
    let mut seeds = meta_seeds();
    seeds.extend(telegram_seeds());
    seeds.extend(simulated_seeds());
    (
        prop::sample::select(vec!["POST", "GET", "PUT", ""]),
        prop::collection::vec(
            (
                prop::sample::select(vec!["hub.mode", "hub.verify_token", "hub.challenge", "x"]),
                prop_oneof![
                    Just("subscribe".to_owned()),
                    Just(HOOK_SECRET.to_owned()),
                    "\\PC{0,20}"
                ],
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
            0..5,
        ),
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "x-hub-signature-256",
                    "x-telegram-bot-api-secret-token",
                    "x-simulated-signature",
                    "content-type",
                ]),
                prop_oneof![
                    Just(HOOK_SECRET.to_owned()),
                    "sha256=[0-9a-f]{0,70}",
                    "sha256=\\PC{0,10}",
                    "\\PC{0,30}",
                ],
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
            0..4,
        ),
        any::<bool>(),
        payload(seeds),
    )
        .prop_map(|(method, query, headers, sign, body)| Pushed {
            method,
            query,
            headers,
            sign,
            body,
        })
}

proptest! {
    #![proptest_config(config())]

    /// The generic intake (`/webhooks/{instance}`): each connector verifies
    /// the request, then (as the processor does later) parses the body.
    /// A request without the secret is never accepted.
    #[test]
    fn webhook_requests_are_verified_and_parsed(p in pushed()) {
        let len = p.body.len();
        guarded("webhooks", len, move || {
            for (name, connector) in &hooks().connectors {
                let mut headers = p.headers.clone();
                if p.sign {
                    let sig = format!("sha256={}", hmac_hex(HOOK_SECRET.as_bytes(), &p.body));
                    headers.push(("x-hub-signature-256".into(), sig.clone()));
                    headers.push(("x-simulated-signature".into(), sig));
                    headers.push(("x-telegram-bot-api-secret-token".into(), HOOK_SECRET.into()));
                }
                let request = WebhookRequest {
                    method: p.method,
                    query: &p.query,
                    headers: &headers,
                    body: &p.body,
                };
                let verdict = connector.verify_webhook(&request);
                let holds_secret = headers.iter().any(|(_, v)| v.contains(HOOK_SECRET))
                    || p.query.iter().any(|(_, v)| v == HOOK_SECRET)
                    || headers.iter().any(|(_, v)| {
                        *v == format!("sha256={}", hmac_hex(HOOK_SECRET.as_bytes(), &p.body))
                    });
                if let Ok(v) = &verdict {
                    let accepted = matches!(v, hourglass_connector::WebhookVerdict::Accept)
                        || matches!(v, hourglass_connector::WebhookVerdict::Respond { status: 200, .. });
                    assert!(
                        !accepted || holds_secret,
                        "{name} accepted a request without the secret: {v:?}"
                    );
                }
                if let Ok(b) = connector.parse_webhook(&p.body) {
                    check_batch(&b);
                }
            }
        });
    }
}

// --------------------------------------------------------- config loader

/// One change to a config file, line by line.
#[derive(Debug, Clone)]
enum LineEdit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    /// The value after `=` on that line.
    Value(prop::sample::Index, String),
    Insert(prop::sample::Index, String),
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("\"0s\"".to_owned()),
        Just("\"9999999999h\"".to_owned()),
        Just("\"* * *\"".to_owned()),
        Just("\"env:\"".to_owned()),
        Just("\"file:/nonexistent\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[\"6h\", \"-1h\", \"x\"]".to_owned()),
        Just("\"postgres://\"".to_owned()),
        Just("\"ftp://[::1\"".to_owned()),
        "\"\\PC{0,20}\"",
        "[^\n]{0,20}",
    ]
}

fn line_edits() -> impl Strategy<Value = Vec<LineEdit>> {
    prop::collection::vec(
        prop_oneof![
            any::<prop::sample::Index>().prop_map(LineEdit::Delete),
            any::<prop::sample::Index>().prop_map(LineEdit::Duplicate),
            (any::<prop::sample::Index>(), any::<prop::sample::Index>())
                .prop_map(|(a, b)| LineEdit::Swap(a, b)),
            (any::<prop::sample::Index>(), toml_value()).prop_map(|(i, v)| LineEdit::Value(i, v)),
            (
                any::<prop::sample::Index>(),
                prop_oneof![
                    Just("[[instances]]".to_owned()),
                    Just("[[alerts.sinks]]".to_owned()),
                    Just("name = \"amazon-eu\"".to_owned()),
                    Just("type = \"nonsense\"".to_owned()),
                    "[^\n]{0,30}",
                ]
            )
                .prop_map(|(i, s)| LineEdit::Insert(i, s)),
        ],
        1..8,
    )
}

fn edit_lines(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            LineEdit::Delete(i) => {
                lines.remove(i.index(n));
            }
            LineEdit::Duplicate(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            LineEdit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            LineEdit::Value(i, v) => {
                let l = &mut lines[i.index(n)];
                if let Some((k, _)) = l.split_once('=') {
                    *l = format!("{k}= {v}");
                }
            }
            LineEdit::Insert(i, s) => lines.insert(i.index(n), s.clone()),
        }
    }
    lines.join("\n")
}

fn check_config(text: String, connector_file: Option<String>) {
    let len = text.len() + connector_file.as_ref().map_or(0, String::len);
    guarded("Config::load", len, move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hourglass.toml");
        std::fs::write(&path, &text).expect("write");
        if let Some(extra) = &connector_file {
            let d = dir.path().join("connectors.d");
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("x.toml"), extra).expect("write");
        }
        if let Err(diags) = hourglass::config::Config::load(&path) {
            assert!(!diags.0.is_empty(), "an error without a diagnostic");
            for d in &diags.0 {
                let lines = match d.file.file_name().and_then(|n| n.to_str()) {
                    Some("hourglass.toml") => text.lines().count(),
                    _ => connector_file.as_deref().unwrap_or("").lines().count(),
                };
                assert!(d.line >= 1 && d.col >= 1, "{d}");
                assert!(d.line <= lines + 1, "{d}: past the end ({lines} lines)");
                assert!(!d.message.is_empty(), "{d}");
            }
        }
    });
}

const EXAMPLE: &str = include_str!("../config/hourglass.example.toml");

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_example_config_mutated_loads_or_says_where(edits in line_edits()) {
        check_config(edit_lines(EXAMPLE, &edits), None);
    }

    #[test]
    fn connector_files_mutated_load_or_say_where(
        edits in line_edits(),
        base in prop::sample::select(vec![
            "name = \"shop-bot\"\ntype = \"telegram\"\n[telegram]\nbot_token = \"env:T\"\nmode = \"poll\"\n",
            "name = \"ebay-us\"\ntype = \"ebay\"\n[ebay]\nclient_id = \"x\"\nclient_secret = \"env:S\"\nrefresh_token = \"env:R\"\n",
            "name = \"mail\"\ntype = \"email\"\n[imap]\nhost = \"127.0.0.1\"\nport = 993\nusername = \"a\"\npassword = \"env:P\"\n",
        ]),
    ) {
        check_config("[store]\nurl = \"sqlite::memory:\"\n".to_owned(), Some(edit_lines(base, &edits)));
    }

    #[test]
    fn raw_config_text_loads_or_says_where(text in prop_oneof!["\\PC{0,400}", "[\\[\\]a-z=\"., \n{}]{0,400}"]) {
        check_config(text, None);
    }
}

// ------------------------------------------------ named regressions
//
// Inputs the properties above found, kept as plain tests with the exact
// input (the shrunk case proptest printed).

#[test]
#[should_panic(expected = "held")]
fn the_guard_counts_what_a_case_holds() {
    guarded("a greedy parser", 10, || vec![0u8; 64 * 1024 * 1024].len());
}

#[test]
#[should_panic(expected = "a parser panicked: boom")]
fn the_guard_reports_a_panic() {
    guarded("a parser", 10, || panic!("boom"));
}

/// mime_trees_parse_without_panic: a message/rfc822 part holding another,
/// inside a multipart, made mail-parser's debug assertion panic in the
/// ingest task. Now the mail is quarantined (debug) or read (release).
#[test]
fn regression_nested_rfc822_inside_multipart_is_not_a_panic() {
    let raw = b"From: -@a\r\nTo: a@a\r\nSubject: \r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\n\
Message-ID: <>\r\nReferences: \r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"A\"\r\n\r\npreamble\r\n--A\r\n\
Content-Type: message/rfc822\r\n\r\nFrom: inner@example.com\r\nSubject: inner\r\nMessage-ID: <inner@x>\r\n\
Content-Type: message/rfc822\r\n\r\nFrom: inner@example.com\r\nSubject: inner\r\nMessage-ID: <inner@x>\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\r\n--A--\r\nepilogue\r\n"
        .to_vec();
    let own = vec!["seller@shop.example".to_owned()];
    let ctx = hourglass_email::ParseContext {
        folder: "INBOX",
        uid: None,
        internal_date: None,
        is_sent_folder: false,
        own_addresses: &own,
        now: Utc::now(),
    };
    match hourglass_email::parse_mail(&raw, &ctx) {
        Ok(m) => assert!(!m.external_id.is_empty()),
        Err(e) => assert!(e.reason.contains("MIME parser"), "{e}"),
    }
}

/// the_example_config_mutated_loads_or_says_where: a file starting with a
/// bare carriage return got a diagnostic with no message at all.
#[test]
fn regression_a_bare_carriage_return_is_named_in_the_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hourglass.toml");
    std::fs::write(&path, "\ra\n[store]\n").unwrap();
    let diags = hourglass::config::Config::load(&path).unwrap_err();
    assert_eq!(diags.0.len(), 1);
    let d = &diags.0[0];
    assert_eq!((d.line, d.col), (1, 1));
    assert!(d.message.contains("U+000D"), "{d}");
}
