//! `MaildirConnector` on a real Maildir (and aiosmtpd for replies).

use std::collections::BTreeSet;
use std::time::Duration;

use hourglass_connector::testkit::conformance;
use hourglass_connector::{Connector, Cursors, Direction, OutgoingReply, SentCheck};
use hourglass_email::maildir::deliver;
use hourglass_email::{MaildirConfig, MaildirConnector, SmtpConfig, TlsMode};
use hourglass_testsupport::smtp::SmtpSink;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn config(root: &std::path::Path) -> MaildirConfig {
    MaildirConfig {
        path: root.to_path_buf(),
        folders: None,
        sent_folder: None,
        own_addresses: vec!["seller@shop.example".into()],
        fetch_batch: 2,
    }
}

fn seed(root: &std::path::Path) {
    for name in [
        "ro_utf8_qp.eml",
        "fr_latin1_8bit.eml",
        "en_html_only.eml",
        "malformed.eml",
    ] {
        deliver(root, &fixture(name)).unwrap();
    }
    deliver(&root.join(".Sent"), &fixture("seller_reply.eml")).unwrap();
}

#[tokio::test]
async fn maildir_reads_inbox_and_sent_once_each_even_when_files_move_to_cur() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    seed(root);
    let conn = MaildirConnector::new("local", config(root), None).unwrap();
    assert_eq!(conn.folders(), ["INBOX", "Sent"]);
    conn.health_check().await.unwrap();

    let mut cursors = Cursors::new();
    let mut ids = Vec::new();
    let mut quarantined = 0;
    loop {
        let b = conn.poll(&cursors).await.unwrap();
        ids.extend(
            b.messages
                .iter()
                .map(|m| (m.external_id.clone(), m.direction)),
        );
        quarantined += b.quarantined.len();
        cursors.extend(b.cursors);
        if !b.more {
            break;
        }
    }
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(quarantined, 1);
    assert!(ids.contains(&("seller-reply-0001@shop.example".into(), Direction::Outbound)));

    // A mail client reads a message: new/X becomes cur/X:2,S.
    let new_dir = root.join("new");
    for e in std::fs::read_dir(&new_dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        std::fs::rename(e.path(), root.join("cur").join(format!("{name}:2,S"))).unwrap();
    }
    let again = conn.poll(&cursors).await.unwrap();
    assert!(again.messages.is_empty(), "{:?}", again.messages);

    // File times are coarse: deliver once a fresh file is dated after every
    // file read so far, or the new mail could sort before the cursor.
    let newest = ["new", "cur"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().modified().unwrap())
        .max()
        .unwrap();
    let probe = root.join("tmp").join("clock-probe");
    loop {
        std::fs::write(&probe, b"").unwrap();
        if std::fs::metadata(&probe).unwrap().modified().unwrap() > newest {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::fs::remove_file(&probe).unwrap();
    deliver(root, &fixture("pl_cp1250_b64.eml")).unwrap();
    let next = conn.poll(&cursors).await.unwrap();
    let new_ids: BTreeSet<_> = next
        .messages
        .iter()
        .map(|m| m.external_id.as_str())
        .collect();
    assert_eq!(new_ids, BTreeSet::from(["pl-cp1250-0001@example.pl"]));
}

#[tokio::test]
async fn maildir_connector_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let conn = MaildirConnector::new("local", config(dir.path()), None).unwrap();
    let report = conformance(&conn)
        .await
        .unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(report.messages, 4);
    assert_eq!(report.quarantined, 1);
}

#[tokio::test]
async fn a_maildir_reply_is_sent_and_filed_in_dot_sent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    deliver(root, &fixture("ro_utf8_qp.eml")).unwrap();
    let sink = SmtpSink::start().unwrap();
    let smtp = SmtpConfig {
        host: sink.host().into(),
        port: sink.port(),
        tls: TlsMode::None,
        username: None,
        password: None,
        from: "seller@shop.example".into(),
        ca_file: None,
    };
    let conn = MaildirConnector::new("local", config(root), Some(smtp)).unwrap();
    let b = conn.poll(&Cursors::new()).await.unwrap();
    let inbound = &b.messages[0];
    let reply = OutgoingReply {
        outbox_id: "9".into(),
        thread_key: inbound.thread_key.clone(),
        to: inbound.reply_to.clone().unwrap(),
        subject: inbound.subject.clone(),
        text: "Mulțumim!".into(),
        in_reply_to_meta: inbound.meta.clone(),
        order_id: None,
    };
    assert_eq!(
        conn.check_sent(&reply).await.unwrap(),
        SentCheck::CannotTell
    );
    assert!(conn.marks_send_start());
    let sent = conn.send_reply(&reply).await.unwrap();
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).unwrap().len(), 1);
    assert!(
        matches!(conn.check_sent(&reply).await.unwrap(), SentCheck::Sent(s) if s.external_id == sent.external_id)
    );

    // Sent now exists and is read: the copy is the outbound message.
    assert_eq!(conn.folders(), ["INBOX", "Sent"]);
    let b = conn.poll(&Cursors::new()).await.unwrap();
    let copy = b
        .messages
        .iter()
        .find(|m| m.external_id == sent.external_id)
        .unwrap();
    assert_eq!(copy.direction, Direction::Outbound);
    assert_eq!(copy.thread_key, inbound.thread_key);
}

#[tokio::test]
async fn smtp_auth_uses_the_configured_login_and_a_refused_one_is_an_auth_error() {
    let sink = SmtpSink::start_with_auth("shop", "smtp-pass").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    deliver(root, &fixture("ro_utf8_qp.eml")).unwrap();
    let secret = root.join("smtp-secret");
    let with_password = |pw: &str| {
        std::fs::write(&secret, pw).unwrap();
        let smtp = SmtpConfig {
            host: sink.host().into(),
            port: sink.port(),
            tls: TlsMode::None,
            username: Some("shop".into()),
            password: Some(hourglass_connector::secret::SecretRef::File(
                secret.display().to_string(),
            )),
            from: "seller@shop.example".into(),
            ca_file: None,
        };
        MaildirConnector::new("local", config(root), Some(smtp)).unwrap()
    };
    let conn = with_password("smtp-pass");
    let inbound = conn.poll(&Cursors::new()).await.unwrap().messages.remove(0);
    let reply = OutgoingReply {
        outbox_id: "auth-1".into(),
        thread_key: inbound.thread_key.clone(),
        to: inbound.reply_to.clone().unwrap(),
        subject: inbound.subject.clone(),
        text: "Mulțumim!".into(),
        in_reply_to_meta: inbound.meta.clone(),
        order_id: None,
    };
    conn.send_reply(&reply)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.logs()));
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).unwrap().len(), 1);

    let wrong = with_password("wrong-hunter2");
    let err = wrong.send_reply(&reply).await.unwrap_err();
    assert_eq!(err.kind(), "auth", "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = wrong.health_check().await.unwrap_err();
    assert_eq!(err.kind(), "auth", "{err}");
}
