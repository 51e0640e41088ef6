//! Amazon relay mail and notices through the e-mail parser and the Amazon
//! normalization, as `poll` does it.

use chrono::{TimeZone, Utc};
use hourglass_amazon::normalize::normalize;
use hourglass_connector::{Direction, Message};
use hourglass_email::{parse_mail, ParseContext};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse_in(name: &str, folder: &str) -> Message {
    let own = vec![
        "verkauf@shop.example".to_owned(),
        "sales@shop.example".to_owned(),
    ];
    let ctx = ParseContext {
        folder,
        uid: Some(1),
        internal_date: None,
        is_sent_folder: folder == "Sent",
        own_addresses: &own,
        now: Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(),
    };
    normalize(parse_mail(&fixture(name), &ctx).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn parse(name: &str) -> Message {
    parse_in(name, "INBOX")
}

#[test]
fn relay_mail_from_four_marketplaces_becomes_buyer_messages() {
    struct Want {
        file: &'static str,
        marketplace: &'static str,
        buyer: &'static str,
        handle: &'static str,
        order: Option<&'static str>,
        language: &'static str,
        text_starts: &'static str,
        token: Option<&'static str>,
    }
    let cases = [
        Want {
            file: "br_pt_utf8_qp.eml",
            marketplace: "amazon.com.br",
            buyer: "Ana Souza",
            handle: "8kq2m4xv0zt1abc@marketplace.amazon.com.br",
            order: Some("701-1234567-1234567"),
            language: "pt",
            text_starts: "Olá, o meu pedido ainda não chegou",
            token: Some("A2BR3SOUZA77"),
        },
        Want {
            file: "de_de_latin1_qp.eml",
            marketplace: "amazon.de",
            buyer: "Jürgen Weiß",
            handle: "q7w8e9r0t1y2uio@marketplace.amazon.de",
            order: Some("302-7654321-1234567"),
            language: "de",
            text_starts: "Hallo, die Schuhe sind zu klein.",
            token: Some("DE9WEISS4411"),
        },
        Want {
            file: "fr_fr_html_pre.eml",
            marketplace: "amazon.fr",
            buyer: "Chloé Martin",
            handle: "z3x4c5v6b7n8m9a@marketplace.amazon.fr",
            order: Some("171-1112223-3334445"),
            language: "fr",
            text_starts:
                "Bonjour,\nla housse de couette est arrivée déchirée. Pouvez-vous m'envoyer",
            token: Some("FR1CHLOE2233"),
        },
        Want {
            file: "uk_en_product_inquiry.eml",
            marketplace: "amazon.co.uk",
            buyer: "Emily Clark",
            handle: "m1n2b3v4c5x6z7l@marketplace.amazon.co.uk",
            order: None,
            language: "en",
            text_starts: "Hi, does this kettle work with 110 V?",
            token: Some("UK7CLARK9911"),
        },
        Want {
            file: "de_ro_cp1250_b64.eml",
            marketplace: "amazon.de",
            buyer: "Ioana Popescu",
            handle: "r5t6y7u8i9o0pqw@marketplace.amazon.de",
            order: Some("305-1010101-2020202"),
            language: "ro",
            text_starts: "Bună ziua, am primit produsul deteriorat şi aş vrea",
            token: Some("RO5POPESCU66"),
        },
        Want {
            file: "es_es_malformed_subject.eml",
            marketplace: "amazon.es",
            buyer: "Luis Garcia",
            handle: "p0o9i8u7y6t5rew@marketplace.amazon.es",
            order: Some("403-2223334-4445556"),
            language: "es",
            text_starts: "Hola, ¿cuándo llegará mi pedido?",
            token: None,
        },
    ];
    for w in cases {
        let m = parse(w.file);
        let f = w.file;
        assert_eq!(m.direction, Direction::Inbound, "{f}");
        assert_eq!(m.marketplace.as_deref(), Some(w.marketplace), "{f}");
        assert_eq!(m.author.as_deref(), Some(w.buyer), "{f}");
        let c = m.customer.as_ref().unwrap();
        assert_eq!(c.channel, "amazon", "{f}");
        assert_eq!(c.handle, w.handle, "{f}");
        assert_eq!(c.display_name.as_deref(), Some(w.buyer), "{f}");
        assert_eq!(m.order_id.as_deref(), w.order, "{f}");
        let key = match w.order {
            Some(o) => format!("{}#{o}", w.handle),
            None => w.handle.to_owned(),
        };
        assert_eq!(m.thread_key, key, "{f}");
        assert_eq!(m.language.as_deref(), Some(w.language), "{f}");
        assert!(m.text.starts_with(w.text_starts), "{f}: {:?}", m.text);
        // Amazon's frame around the buyer's words is gone.
        assert!(
            !m.text.contains("Begin message") && !m.text.contains("commMgrTok"),
            "{f}: {:?}",
            m.text
        );
        if w.file == "br_pt_utf8_qp.eml" || w.file == "fr_fr_html_pre.eml" {
            assert!(m.meta["no_response_needed_msg"].is_string(), "{f}");
        }
        match w.token {
            Some(t) => {
                assert_eq!(m.external_id, format!("commMgrTok:{t}"), "{f}");
                assert_eq!(m.meta["comm_mgr_tok"], t, "{f}");
            }
            None => assert_eq!(m.external_id, "0100018f-es-0001@email.amazonses.com"),
        }
    }
}

#[test]
fn replies_go_to_the_exact_relay_address_and_the_suffix_does_not_split_the_buyer() {
    let fr = parse("fr_fr_html_pre.eml");
    assert_eq!(
        fr.reply_to.as_deref(),
        Some("Z3x4c5v6b7n8m9a+A1B2C3D4@marketplace.amazon.fr")
    );
    assert!(fr.html.as_deref().unwrap().contains("<pre"));

    let first = parse("de_de_latin1_qp.eml");
    let second = parse("de_de_second_case_suffix.eml");
    assert_eq!(
        first.customer.as_ref().unwrap().handle,
        second.customer.as_ref().unwrap().handle
    );
    // Another order is another thread with the same buyer.
    assert_ne!(first.thread_key, second.thread_key);
    assert_eq!(
        second.reply_to.as_deref(),
        Some("Q7W8E9R0T1Y2UIO+case2@marketplace.amazon.de")
    );
}

#[test]
fn attachments_of_relay_mail_are_kept() {
    let m = parse("uk_en_product_inquiry.eml");
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].filename.as_deref(), Some("label.png"));
    assert_eq!(m.attachments[0].size, 70);
}

#[test]
fn the_sellers_reply_from_sent_is_outbound_on_the_buyers_thread() {
    let buyer = parse("de_de_latin1_qp.eml");
    let reply = parse_in("de_seller_reply_sent.eml", "Sent");
    assert_eq!(reply.direction, Direction::Outbound);
    assert_eq!(reply.thread_key, buyer.thread_key);
    assert_eq!(
        reply.customer.as_ref().unwrap().handle,
        buyer.customer.as_ref().unwrap().handle
    );
    assert_eq!(reply.marketplace.as_deref(), Some("amazon.de"));
    assert_eq!(reply.external_id, "seller-de-0001@shop.example");
}

#[test]
fn a_delivery_failure_is_a_system_message_on_the_thread_it_concerns() {
    let buyer = parse("de_de_latin1_qp.eml");
    let failure = parse("de_delivery_failure.eml");
    assert_eq!(failure.direction, Direction::System);
    assert!(failure.customer.is_none());
    assert_eq!(failure.thread_key, buyer.thread_key);
    assert_eq!(
        failure.meta["delivery_failure"],
        "Ihre Nachricht enthält einen externen Link. Nachrichten an Käufer dürfen keine Links zu externen Websites enthalten."
    );
    assert!(failure.text.contains("externen Link"));

    let uk_buyer = parse("uk_en_product_inquiry.eml");
    let uk_failure = parse("uk_delivery_failure_rfc822.eml");
    assert_eq!(uk_failure.direction, Direction::System);
    assert_eq!(uk_failure.thread_key, uk_buyer.thread_key);
    assert_eq!(
        uk_failure.meta["delivery_failure"],
        "Attachments of this file type are not accepted."
    );
}

#[test]
fn order_notifications_are_system_messages_keyed_by_order() {
    let m = parse("de_order_notification.eml");
    assert_eq!(m.direction, Direction::System);
    assert!(m.automatic);
    assert_eq!(m.order_id.as_deref(), Some("302-5555555-6666666"));
    assert_eq!(m.thread_key, "amazon-order:302-5555555-6666666");
    assert_eq!(m.marketplace.as_deref(), Some("amazon.de"));
}
