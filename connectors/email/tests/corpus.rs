//! The fixture corpus through `parse_mail`: charsets, transfer encodings,
//! HTML-only mail, attachments, bounces, auto-replies, garbage.

use chrono::{TimeZone, Utc};
use hourglass_connector::{Direction, Message};
use hourglass_email::{parse_mail, ParseContext};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn own() -> Vec<String> {
    vec!["seller@shop.example".to_owned()]
}

fn parse_in(name: &str, folder: &str) -> Message {
    let own = own();
    let ctx = ParseContext {
        folder,
        uid: Some(7),
        internal_date: Some(Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap()),
        is_sent_folder: folder == "Sent",
        own_addresses: &own,
        now: Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(),
    };
    parse_mail(&fixture(name), &ctx).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str) -> Message {
    parse_in(name, "INBOX")
}

#[test]
fn charsets_and_transfer_encodings_decode_to_the_same_text_a_reader_sees() {
    let cases = [
        (
            "ro_utf8_qp.eml",
            "Comandă întârziată",
            "Puteți să verificați, vă rog?",
            "Ioana Popescu",
        ),
        (
            "fr_latin1_8bit.eml",
            "Commande non reçue",
            "où elle en est",
            "Chloé Martin",
        ),
        (
            "ro_latin2_b64.eml",
            "Produs deteriorat",
            "trimiteţi un înlocuitor",
            "Andrei Ştefănescu",
        ),
        (
            "de_latin9_qp.eml",
            "Rücksendung",
            "49,90 € bezahlt, aber die Größe",
            "Jürgen Weiß",
        ),
        (
            "pl_cp1250_b64.eml",
            "Zwrot produktu świętego",
            "czy mogę zwrócić",
            "Marta Nowak",
        ),
        (
            "fr_cp1252_qp.eml",
            "Échange taille",
            "Le cœur du problème : la « taille M »",
            "Élodie Lefèvre",
        ),
    ];
    for (name, subject, text, author) in cases {
        let m = parse(name);
        assert_eq!(m.subject.as_deref(), Some(subject), "{name}");
        assert!(m.text.contains(text), "{name}: {:?}", m.text);
        assert_eq!(m.author.as_deref(), Some(author), "{name}");
        assert_eq!(m.direction, Direction::Inbound, "{name}");
        assert!(!m.automatic, "{name}");
        assert!(m.html.is_none(), "{name}");
    }
}

#[test]
fn inbound_mail_names_the_customer_and_keeps_what_a_reply_needs() {
    let m = parse("ro_utf8_qp.eml");
    assert_eq!(m.external_id, "CAF7x1-ro-0001@mail.example.ro");
    let c = m.customer.as_ref().unwrap();
    assert_eq!(c.channel, "email");
    assert_eq!(c.handle, "ioana.popescu@example.ro");
    assert_eq!(c.display_name.as_deref(), Some("Ioana Popescu"));
    // The handle is lowercased to identify the customer; replies go to
    // the address as written.
    assert_eq!(m.reply_to.as_deref(), Some("Ioana.Popescu@example.ro"));
    assert_eq!(
        m.sent_at,
        Utc.with_ymd_and_hms(2026, 11, 20, 7, 14, 3).unwrap()
    );
    assert_eq!(m.meta["message_id"], "CAF7x1-ro-0001@mail.example.ro");
    assert_eq!(m.meta["folder"], "INBOX");
    assert_eq!(m.meta["uid"], 7);
    assert_eq!(m.meta["from"], "ioana.popescu@example.ro");
}

#[test]
fn the_customers_mail_the_sellers_reply_and_a_header_dropping_reply_share_a_thread() {
    let first = parse("ro_utf8_qp.eml");
    let reply = parse_in("seller_reply.eml", "Sent");
    let again = parse("ro_reply_no_refs.eml");
    assert_eq!(reply.direction, Direction::Outbound);
    assert_eq!(
        reply.customer.as_ref().unwrap().handle,
        "ioana.popescu@example.ro"
    );
    assert_eq!(first.thread_key, reply.thread_key);
    assert_eq!(first.thread_key, again.thread_key);
    assert_eq!(reply.meta["in_reply_to"], "CAF7x1-ro-0001@mail.example.ro");
    assert_eq!(reply.meta["thread_root"], "CAF7x1-ro-0001@mail.example.ro");

    // From the seller's address, the seller's mail is outbound in any folder.
    let in_inbox = parse("seller_reply.eml");
    assert_eq!(in_inbox.direction, Direction::Outbound);
}

#[test]
fn html_only_mail_becomes_readable_text_and_keeps_the_html() {
    let m = parse("en_html_only.eml");
    assert!(
        m.text
            .contains("The blue kettle I ordered arrived without a lid."),
        "{}",
        m.text
    );
    assert!(m.text.contains("Order placed: 10 November"), "{}", m.text);
    assert!(
        !m.text.contains("<p>") && !m.text.contains("color: red"),
        "{}",
        m.text
    );
    assert!(m.html.as_deref().unwrap().contains("<b>blue kettle</b>"));
}

#[test]
fn attachments_come_with_metadata_and_bytes() {
    let m = parse("en_attachments.eml");
    assert!(
        m.text
            .starts_with("Hello, photos and the invoice are attached."),
        "{}",
        m.text
    );
    assert!(m.html.as_deref().unwrap().contains("<b>crushed</b>"));
    let names: Vec<_> = m
        .attachments
        .iter()
        .map(|a| a.filename.clone().unwrap())
        .collect();
    assert_eq!(names, ["damage.png", "invoice.pdf"]);
    assert_eq!(m.attachments[0].content_type, "image/png");
    assert_eq!(m.attachments[0].size, 70);
    assert!(m.attachments[1]
        .data
        .as_ref()
        .unwrap()
        .starts_with(b"%PDF-1.4"));
    assert_eq!(m.attachments[1].size, 45);
}

#[test]
fn a_bounce_is_system_and_lands_on_the_thread_of_the_returned_mail() {
    let bounce = parse("dsn_bounce.eml");
    assert_eq!(bounce.direction, Direction::System);
    assert!(bounce.customer.is_none());
    assert!(bounce.text.contains("550 5.1.1"), "{}", bounce.text);
    assert_eq!(
        bounce.meta["original_message_id"],
        "reply-0001@hourglass.shop.example"
    );
    assert_eq!(bounce.thread_key, parse("ro_utf8_qp.eml").thread_key);
}

#[test]
fn auto_replies_are_automatic() {
    let m = parse("auto_reply.eml");
    assert!(m.automatic);
    assert_eq!(m.language.as_deref(), Some("it-IT"));
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.meta["thread_root"], "it-attach-0001@example.it");
}

#[test]
fn an_implausible_date_header_gives_way_to_the_arrival_time() {
    let m = parse("future_date.eml");
    assert_eq!(
        m.sent_at,
        Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap()
    );
}

#[test]
fn garbage_is_refused_with_a_reason() {
    let own = own();
    let ctx = ParseContext {
        folder: "INBOX",
        uid: None,
        internal_date: None,
        is_sent_folder: false,
        own_addresses: &own,
        now: Utc::now(),
    };
    let err = parse_mail(&fixture("malformed.eml"), &ctx).unwrap_err();
    assert!(err.reason.contains("not an e-mail"), "{err}");
    assert!(parse_mail(b"", &ctx).is_err());
}

#[test]
fn a_contact_form_sent_from_the_shops_address_is_the_customers_message() {
    let m = parse("contact_form.eml");
    assert_eq!(m.direction, Direction::Inbound);
    let c = m.customer.as_ref().unwrap();
    assert_eq!(c.handle, "ana.souza@example.com.br");
    assert_eq!(c.display_name.as_deref(), Some("Ana Souza"));
    assert_eq!(m.reply_to.as_deref(), Some("ana.souza@example.com.br"));
}
