//! `AmazonConnector` over a real Dovecot and a real Maildir, replying
//! through aiosmtpd.

use std::time::Duration;

use hourglass_amazon::AmazonConnector;
use hourglass_connector::secret::SecretRef;
use hourglass_connector::testkit::conformance;
use hourglass_connector::{Connector, Cursors, Direction, Message, OutgoingReply, SentCheck};
use hourglass_email::maildir::deliver;
use hourglass_email::{ImapAuth, ImapConfig, MaildirConfig, SmtpConfig, TlsMode};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::smtp::SmtpSink;

const PASSWORD_VAR: &str = "HG_TEST_AMAZON_IMAP_PASSWORD";

const BUYER_MAIL: &[&str] = &[
    "br_pt_utf8_qp.eml",
    "de_de_latin1_qp.eml",
    "fr_fr_html_pre.eml",
    "uk_en_product_inquiry.eml",
    "de_ro_cp1250_b64.eml",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn imap_config(d: &Dovecot) -> ImapConfig {
    std::env::set_var(PASSWORD_VAR, d.password());
    ImapConfig {
        host: d.host().to_owned(),
        port: d.port(),
        tls: TlsMode::None,
        username: d.user().to_owned(),
        password: Some(SecretRef::Env(PASSWORD_VAR.to_owned())),
        auth: ImapAuth::Login,
        // The DESIGN example's shape: Sent listed, no `sent_folder`.
        folders: vec!["INBOX".to_owned(), "Sent".to_owned()],
        sent_folder: None,
        idle: true,
        fetch_batch: 3,
        ca_file: None,
        accept_invalid_certs: false,
    }
}

fn smtp_config(sink: &SmtpSink) -> SmtpConfig {
    SmtpConfig {
        host: sink.host().to_owned(),
        port: sink.port(),
        tls: TlsMode::None,
        username: None,
        password: None,
        from: "verkauf@shop.example".to_owned(),
        ca_file: None,
    }
}

async fn drain(conn: &AmazonConnector) -> (Vec<Message>, Cursors) {
    let mut cursors = Cursors::new();
    let mut all = Vec::new();
    for _ in 0..50 {
        let b = conn.poll(&cursors).await.unwrap();
        all.extend(b.messages);
        cursors.extend(b.cursors);
        if !b.more {
            break;
        }
    }
    (all, cursors)
}

#[tokio::test]
async fn amazon_over_imap_passes_the_conformance_suite() {
    let d = Dovecot::start().unwrap();
    for f in BUYER_MAIL {
        d.append("INBOX", &fixture(f)).unwrap();
    }
    d.append("INBOX", &fixture("de_delivery_failure.eml"))
        .unwrap();
    d.append("Sent", &fixture("de_seller_reply_sent.eml"))
        .unwrap();
    let conn = AmazonConnector::with_imap("amazon-eu", imap_config(&d), None).unwrap();
    assert_eq!(conn.kind(), "amazon");
    assert_eq!(conn.channel(), "amazon");
    let report = conformance(&conn)
        .await
        .unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(report.messages, 7);

    let (all, _) = drain(&conn).await;
    let de: Vec<_> = all
        .iter()
        .filter(|m| m.thread_key == "q7w8e9r0t1y2uio@marketplace.amazon.de#302-7654321-1234567")
        .map(|m| m.direction)
        .collect();
    assert_eq!(de.len(), 3, "buyer, seller reply, delivery failure: {de:?}");
    assert!(de.contains(&Direction::Inbound));
    assert!(de.contains(&Direction::Outbound));
    assert!(de.contains(&Direction::System));
}

#[tokio::test]
async fn amazon_over_maildir_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    for f in BUYER_MAIL {
        deliver(dir.path(), &fixture(f)).unwrap();
    }
    let cfg = MaildirConfig {
        path: dir.path().to_path_buf(),
        folders: None,
        sent_folder: None,
        own_addresses: vec!["verkauf@shop.example".into()],
        fetch_batch: 2,
    };
    let conn = AmazonConnector::with_maildir("amazon-eu", cfg, None).unwrap();
    let report = conformance(&conn)
        .await
        .unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(report.messages, 5);
}

#[tokio::test]
async fn a_reply_reaches_the_exact_relay_address_and_comes_back_from_sent_on_the_thread() {
    let d = Dovecot::start().unwrap();
    let sink = SmtpSink::start().unwrap();
    d.append("INBOX", &fixture("fr_fr_html_pre.eml")).unwrap();
    let conn =
        AmazonConnector::with_imap("amazon-eu", imap_config(&d), Some(smtp_config(&sink))).unwrap();
    let (all, cursors) = drain(&conn).await;
    let buyer = &all[0];

    let reply = OutgoingReply {
        outbox_id: "amz-1".into(),
        thread_key: buyer.thread_key.clone(),
        to: buyer.reply_to.clone().unwrap(),
        subject: buyer.subject.clone(),
        text: "Bonjour Chloé, nous vous envoyons une nouvelle housse aujourd'hui.".into(),
        in_reply_to_meta: buyer.meta.clone(),
        order_id: buyer.order_id.clone(),
    };
    let sent = conn.send_reply(&reply).await.unwrap();
    let received = sink.wait_for(1, Duration::from_secs(10)).unwrap();
    let raw = String::from_utf8_lossy(&received[0]).into_owned();
    assert!(
        raw.contains("X-RcptTo: Z3x4c5v6b7n8m9a+A1B2C3D4@marketplace.amazon.fr"),
        "{raw}"
    );
    assert!(
        raw.contains("In-Reply-To: <0100018f-fr-0001@email.amazonses.com>"),
        "{raw}"
    );
    assert!(matches!(
        conn.check_sent(&reply).await.unwrap(),
        SentCheck::Sent(_)
    ));

    // The copy is filed in the background once SMTP took the reply.
    let started = std::time::Instant::now();
    let next = loop {
        let next = conn.poll(&cursors).await.unwrap();
        if !next.messages.is_empty() || started.elapsed() > Duration::from_secs(20) {
            break next;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(next.messages.len(), 1);
    let copy = &next.messages[0];
    assert_eq!(copy.external_id, sent.external_id);
    assert_eq!(copy.direction, Direction::Outbound);
    assert_eq!(copy.thread_key, buyer.thread_key);
}

#[tokio::test]
async fn a_reply_with_a_link_is_refused_before_anything_is_sent() {
    let d = Dovecot::start().unwrap();
    let sink = SmtpSink::start().unwrap();
    d.append("INBOX", &fixture("de_de_latin1_qp.eml")).unwrap();
    let conn =
        AmazonConnector::with_imap("amazon-eu", imap_config(&d), Some(smtp_config(&sink))).unwrap();
    let (all, cursors) = drain(&conn).await;
    let buyer = &all[0];
    let reply = OutgoingReply {
        outbox_id: "amz-2".into(),
        thread_key: buyer.thread_key.clone(),
        to: buyer.reply_to.clone().unwrap(),
        subject: buyer.subject.clone(),
        text: "Das Rücksendeetikett finden Sie unter https://shop.example/retoure".into(),
        in_reply_to_meta: buyer.meta.clone(),
        order_id: buyer.order_id.clone(),
    };
    let err = conn.send_reply(&reply).await.unwrap_err();
    assert_eq!(err.kind(), "refused");
    assert!(err.to_string().contains("links"), "{err}");

    // Nothing went out (the refusal came before any connection), nothing
    // was filed. (The lookup cannot prove a mail absent: it answers
    // CannotTell, and the daemon asks only after a send had started.)
    assert!(sink.messages().unwrap().is_empty());
    assert_eq!(
        conn.check_sent(&reply).await.unwrap(),
        SentCheck::CannotTell
    );
    assert!(conn.marks_send_start());
    assert!(conn.poll(&cursors).await.unwrap().messages.is_empty());
}
