//! `EmailConnector` against real IMAP servers, Dovecot and Cyrus (and
//! aiosmtpd for replies): each test body runs once per server.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hourglass_connector::secret::SecretRef;
use hourglass_connector::testkit::conformance;
use hourglass_connector::{Connector, Cursors, Direction, OutgoingReply, SentCheck, SentReply};
use hourglass_email::{EmailConnector, ImapAuth, ImapConfig, SmtpConfig, TlsMode};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::imap::{ImapServer, ServerKind};
use hourglass_testsupport::smtp::SmtpSink;
use serde_json::json;

const PASSWORD_VAR: &str = "HG_TEST_IMAP_PASSWORD";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs each named `async fn(ImapServer)` as two tests, `NAME::dovecot`
/// and `NAME::cyrus`.
macro_rules! on_both_servers {
    ($($body:ident),* $(,)?) => { $(
        mod $body {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dovecot() {
                super::$body(ImapServer::start(ServerKind::Dovecot).unwrap()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cyrus() {
                super::$body(ImapServer::start(ServerKind::Cyrus).unwrap()).await
            }
        }
    )* };
}

on_both_servers!(
    first_sync_reads_every_folder_in_batches_and_then_only_new_mail,
    idle_wakes_up_when_mail_arrives,
    mail_expunged_before_it_was_read_does_not_keep_idle_awake,
    a_restarted_server_is_reconnected_on_the_next_poll,
    a_poll_cancelled_mid_fetch_leaves_no_half_read_session_behind,
    a_wrong_password_is_an_auth_error_without_the_password,
    authenticate_plain_works_too,
    email_connector_passes_the_conformance_suite,
    a_reply_goes_out_threaded_is_filed_in_sent_and_is_found_by_check_sent,
    a_reply_after_a_server_restart_is_still_filed_in_sent,
    a_missing_folder_is_an_error_for_that_folder_only,
    a_non_ascii_folder_name_from_the_config_is_read,
    idle_comes_back_after_the_server_restarts,
);

/// Like `on_both_servers!`, on servers whose `\Sent` folder has the
/// localized name a French mail client gives it.
macro_rules! on_both_servers_with_sent {
    ($($body:ident),* $(,)?) => { $(
        mod $body {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dovecot() {
                let s = ImapServer::start_with_sent(ServerKind::Dovecot, LOCALIZED_SENT).unwrap();
                super::$body(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cyrus() {
                let s = ImapServer::start_with_sent(ServerKind::Cyrus, LOCALIZED_SENT).unwrap();
                super::$body(s).await
            }
        }
    )* };
}

const LOCALIZED_SENT: &str = "Éléments envoyés";

on_both_servers_with_sent!(a_localized_sent_folder_is_found_by_special_use);

fn imap_config(d: &ImapServer) -> ImapConfig {
    // Every test uses the same value, so parallel tests may all set it.
    std::env::set_var(PASSWORD_VAR, d.password());
    ImapConfig {
        host: d.host().to_owned(),
        port: d.port(),
        tls: TlsMode::None,
        username: d.user().to_owned(),
        password: Some(SecretRef::Env(PASSWORD_VAR.to_owned())),
        auth: ImapAuth::Login,
        folders: vec!["INBOX".to_owned()],
        sent_folder: Some(d.sent_folder()),
        idle: true,
        fetch_batch: 200,
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
        from: "Shop <seller@shop.example>".to_owned(),
        ca_file: None,
    }
}

/// Looks `reply` up in the sent folder as a process that did not send it
/// would (the sender knows it was sent anyway), until the copy filed in
/// the background is there.
async fn wait_until_filed(
    cfg: ImapConfig,
    sink: &SmtpSink,
    reply: &OutgoingReply,
) -> Result<SentReply, String> {
    let fresh = EmailConnector::new("fresh", cfg, Some(smtp_config(sink))).unwrap();
    let start = Instant::now();
    loop {
        match fresh.check_sent(reply).await {
            Ok(SentCheck::Sent(s)) => return Ok(s),
            other if start.elapsed() > Duration::from_secs(20) => return Err(format!("{other:?}")),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A reply SMTP took is sent, whatever happens to its copy: the sent
/// folder's server here takes connections and never answers, as a hung
/// server does. The send returns at once (the daemon records it within
/// its send window), and a lookup says sent instead of "not there, send
/// again".
#[tokio::test]
async fn a_reply_smtp_took_is_sent_even_when_its_copy_cannot_be_filed() {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hung.incoming().take(8) {
            conns.push(c);
        }
        conns.len()
    });
    let sink = SmtpSink::start().unwrap();
    let cfg = ImapConfig {
        host: "127.0.0.1".to_owned(),
        port,
        tls: TlsMode::None,
        username: "alice".to_owned(),
        password: None,
        auth: ImapAuth::Login,
        folders: vec!["INBOX".to_owned()],
        sent_folder: Some("Sent".to_owned()),
        idle: false,
        fetch_batch: 200,
        accept_invalid_certs: false,
        ca_file: None,
    };
    let conn = EmailConnector::new("mail", cfg, Some(smtp_config(&sink))).unwrap();
    let reply = OutgoingReply {
        outbox_id: "outbox-hung".into(),
        thread_key: "ioana@example.ro".into(),
        to: "Ioana.Popescu@example.ro".into(),
        subject: Some("Comandă".into()),
        text: "Coletul a plecat.".into(),
        in_reply_to_meta: json!({}),
        order_id: None,
    };
    // The outbox's send window with its default lease is 54 s; an IMAP
    // connect alone may take 30 s before it gives up.
    let sent = tokio::time::timeout(Duration::from_secs(20), conn.send_reply(&reply))
        .await
        .expect("the send waited on the sent folder")
        .unwrap();
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).unwrap().len(), 1);
    match conn.check_sent(&reply).await.unwrap() {
        SentCheck::Sent(s) => assert_eq!(s.external_id, sent.external_id),
        other => panic!("a reply SMTP took would be sent again: {other:?}"),
    }
    drop(conn);
    drop(held);
}

/// Not an e-mail, yet a message both servers take: Cyrus refuses an APPEND
/// whose first line is no header ("Message contains invalid header").
const GARBAGE: &[u8] = b"X-Junk: y\r\n\r\nthis is not a mail at all\r\n";

fn seed(d: &ImapServer) {
    for name in [
        "ro_utf8_qp.eml",
        "fr_latin1_8bit.eml",
        "de_latin9_qp.eml",
        "en_html_only.eml",
        "en_attachments.eml",
    ] {
        d.append("INBOX", &fixture(name)).unwrap();
    }
    d.append(&d.sent_folder(), &fixture("seller_reply.eml"))
        .unwrap();
}

/// Polls until the connector says there is no more; returns every message
/// id and the final cursors.
async fn drain(conn: &EmailConnector, mut cursors: Cursors) -> (Vec<String>, Cursors, usize) {
    let mut ids = Vec::new();
    let mut polls = 0;
    loop {
        let batch = conn.poll(&cursors).await.unwrap();
        polls += 1;
        ids.extend(batch.messages.iter().map(|m| m.external_id.clone()));
        cursors.extend(batch.cursors);
        if !batch.more {
            return (ids, cursors, polls);
        }
        assert!(polls < 100, "poll never finished");
    }
}

async fn first_sync_reads_every_folder_in_batches_and_then_only_new_mail(d: ImapServer) {
    seed(&d);
    d.append("INBOX", GARBAGE).unwrap();
    let mut cfg = imap_config(&d);
    cfg.fetch_batch = 2;
    let conn = EmailConnector::new("mail", cfg, None).unwrap();

    let first = conn.poll(&Cursors::new()).await.unwrap();
    assert!(
        first.more,
        "6 INBOX messages in batches of 2 must leave more"
    );
    assert_eq!(first.messages.len(), 3, "2 from INBOX, 1 from Sent");
    let sent: Vec<_> = first
        .messages
        .iter()
        .filter(|m| m.meta["folder"] == d.sent_folder().as_str())
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].direction, Direction::Outbound);

    let mut cursors = Cursors::new();
    cursors.extend(first.cursors);
    let mut quarantined = Vec::new();
    let mut ids: Vec<String> = first
        .messages
        .iter()
        .map(|m| m.external_id.clone())
        .collect();
    loop {
        let b = conn.poll(&cursors).await.unwrap();
        ids.extend(b.messages.iter().map(|m| m.external_id.clone()));
        quarantined.extend(b.quarantined);
        cursors.extend(b.cursors);
        if !b.more {
            break;
        }
    }
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert_eq!(unique.len(), 6, "a message came twice: {ids:?}");
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0].error.contains("not an e-mail"),
        "{:?}",
        quarantined[0].error
    );
    assert_eq!(quarantined[0].raw, GARBAGE);
    assert!(quarantined[0].source.contains("INBOX"));

    // Nothing new: nothing returned, even though `UID n:*` matches the
    // newest message.
    let again = conn.poll(&cursors).await.unwrap();
    assert!(again.messages.is_empty() && again.quarantined.is_empty());
    assert!(!again.more);

    d.append("INBOX", &fixture("pl_cp1250_b64.eml")).unwrap();
    let next = conn.poll(&cursors).await.unwrap();
    let new_ids: Vec<_> = next
        .messages
        .iter()
        .map(|m| m.external_id.as_str())
        .collect();
    assert_eq!(new_ids, ["pl-cp1250-0001@example.pl"]);
    assert_eq!(next.messages[0].meta["uid"], 7);
    cursors.extend(next.cursors);

    // A Date header in 2099 gives way to the server's INTERNALDATE.
    d.append("INBOX", &fixture("future_date.eml")).unwrap();
    let next = conn.poll(&cursors).await.unwrap();
    let age = chrono::Utc::now() - next.messages[0].sent_at;
    assert!(
        age.num_seconds().abs() < 120,
        "{}",
        next.messages[0].sent_at
    );
}

/// Dovecot only: it renumbers a folder when its index is removed; Cyrus
/// keeps UIDVALIDITY in its mailbox list, out of a test's reach.
#[tokio::test]
async fn a_new_uidvalidity_resyncs_under_the_same_external_ids() {
    let mut d = ImapServer::Dovecot(Dovecot::start().unwrap());
    seed(&d);
    let conn = EmailConnector::new("mail", imap_config(&d), None).unwrap();
    let (before, cursors, _) = drain(&conn, Cursors::new()).await;
    let old_validity = d.uidvalidity("INBOX").unwrap();

    let ImapServer::Dovecot(dovecot) = &mut d else {
        unreachable!()
    };
    dovecot.bump_uidvalidity().unwrap();
    assert_ne!(d.uidvalidity("INBOX").unwrap(), old_validity);

    // The cached session died with the server: the poll reconnects.
    let batch = conn
        .poll(&cursors)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let after: BTreeSet<_> = batch
        .messages
        .iter()
        .map(|m| m.external_id.clone())
        .collect();
    assert_eq!(after, before.into_iter().collect::<BTreeSet<_>>());
    let inbox = batch.cursors.get("INBOX").unwrap();
    assert!(!inbox.starts_with(&format!("{old_validity}:")), "{inbox}");
}

async fn idle_wakes_up_when_mail_arrives(d: ImapServer) {
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let conn = EmailConnector::new("mail", imap_config(&d), None).unwrap();
    let (_, cursors, _) = drain(&conn, Cursors::new()).await;

    // Nothing new: the wait runs into its timeout.
    let start = Instant::now();
    let changed = conn
        .wait_for_change(&cursors, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!changed);
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert!(conn.capabilities().push);

    let start = Instant::now();
    let (changed, ()) = tokio::join!(
        conn.wait_for_change(&cursors, Duration::from_secs(60)),
        async {
            // Once the wait is in IDLE (this task runs it: poll, not block).
            let idle_by = Instant::now() + Duration::from_secs(30);
            while !d.has_idle_session() {
                assert!(Instant::now() < idle_by, "the wait never entered IDLE");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::task::block_in_place(|| d.append("INBOX", &fixture("fr_latin1_8bit.eml")))
                .unwrap();
        }
    );
    assert!(changed.unwrap());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // Mail that arrived while nobody waited is reported at once.
    d.append("INBOX", &fixture("de_latin9_qp.eml")).unwrap();
    let start = Instant::now();
    assert!(conn
        .wait_for_change(&cursors, Duration::from_secs(30))
        .await
        .unwrap());
    assert!(start.elapsed() < Duration::from_secs(2));
}

async fn mail_expunged_before_it_was_read_does_not_keep_idle_awake(d: ImapServer) {
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let conn = EmailConnector::new("mail", imap_config(&d), None).unwrap();
    let (_, cursors, _) = drain(&conn, Cursors::new()).await;

    // UID 2 comes and goes between two polls.
    d.append("INBOX", &fixture("fr_latin1_8bit.eml")).unwrap();
    d.expunge("INBOX", 2).unwrap();
    let b = conn.poll(&cursors).await.unwrap();
    assert!(b.messages.is_empty());
    let mut cursors = cursors;
    cursors.extend(b.cursors);
    // `uidvalidity:lastuid[:modseq]`: UID 2 is stepped over.
    assert_eq!(cursors["INBOX"].split(':').nth(1), Some("2"), "{cursors:?}");

    let changed = conn
        .wait_for_change(&cursors, Duration::from_millis(800))
        .await
        .unwrap();
    assert!(
        !changed,
        "IDLE reported a change for a message that is gone"
    );
}

async fn a_restarted_server_is_reconnected_on_the_next_poll(mut d: ImapServer) {
    seed(&d);
    let mut cfg = imap_config(&d);
    cfg.fetch_batch = 2;
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let first = conn.poll(&Cursors::new()).await.unwrap();
    assert!(first.more);
    let mut cursors = Cursors::new();
    cursors.extend(first.cursors);

    d.restart().unwrap();

    let mut errors = Vec::new();
    let mut ids: Vec<String> = first
        .messages
        .iter()
        .map(|m| m.external_id.clone())
        .collect();
    for _ in 0..20 {
        match conn.poll(&cursors).await {
            Ok(b) => {
                ids.extend(b.messages.iter().map(|m| m.external_id.clone()));
                cursors.extend(b.cursors);
                if !b.more {
                    break;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    // The cached session died with the server; the poll reconnects on its
    // own instead of failing once.
    assert!(errors.is_empty(), "{errors:?}");
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(unique.len(), 6);
}

async fn a_poll_cancelled_mid_fetch_leaves_no_half_read_session_behind(d: ImapServer) {
    let raw = String::from_utf8(fixture("en_html_only.eml")).unwrap();
    let n = d
        .deliver_many(
            "INBOX",
            (0..1500).map(|i| {
                raw.replacen("Message-ID: <", &format!("Message-ID: <{i}."), 1)
                    .into_bytes()
            }),
        )
        .unwrap();
    let mut cfg = imap_config(&d);
    cfg.fetch_batch = 1500;
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    // Warm the cached session, then cancel a poll while it fetches.
    conn.health_check().await.unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(30), conn.poll(&Cursors::new())).await;
    assert!(
        cancelled.is_err(),
        "the poll finished before it could be cancelled"
    );

    let (ids, _, _) = drain(&conn, Cursors::new()).await;
    assert_eq!(ids.len(), n);
}

async fn a_wrong_password_is_an_auth_error_without_the_password(d: ImapServer) {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong-hunter2").unwrap();
    let mut cfg = imap_config(&d);
    cfg.password = Some(SecretRef::File(pw.display().to_string()));
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let err = conn.poll(&Cursors::new()).await.unwrap_err();
    assert_eq!(err.kind(), "auth", "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = conn.health_check().await.unwrap_err();
    assert_eq!(err.kind(), "auth", "{err}");
}

async fn authenticate_plain_works_too(d: ImapServer) {
    seed(&d);
    let mut cfg = imap_config(&d);
    cfg.auth = ImapAuth::Plain;
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let (ids, _, _) = drain(&conn, Cursors::new()).await;
    assert_eq!(ids.len(), 6);
}

async fn email_connector_passes_the_conformance_suite(d: ImapServer) {
    seed(&d);
    d.append("INBOX", GARBAGE).unwrap();
    let mut cfg = imap_config(&d);
    cfg.fetch_batch = 2;
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let report = conformance(&conn)
        .await
        .unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(report.messages, 6);
    assert_eq!(report.quarantined, 1);
    assert!(report.polls >= 3);
}

async fn a_reply_goes_out_threaded_is_filed_in_sent_and_is_found_by_check_sent(d: ImapServer) {
    let sink = SmtpSink::start().unwrap();
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let conn = EmailConnector::new("mail", imap_config(&d), Some(smtp_config(&sink))).unwrap();
    conn.health_check().await.unwrap();
    let (_, cursors, _) = drain(&conn, Cursors::new()).await;
    let batch = conn.poll(&Cursors::new()).await.unwrap();
    let inbound = batch
        .messages
        .iter()
        .find(|m| m.direction == Direction::Inbound)
        .unwrap();

    let reply = OutgoingReply {
        outbox_id: "outbox-17".into(),
        thread_key: inbound.thread_key.clone(),
        to: inbound.reply_to.clone().unwrap(),
        subject: inbound.subject.clone(),
        text: "Bună ziua, coletul a plecat ieri.".into(),
        in_reply_to_meta: inbound.meta.clone(),
        order_id: None,
    };
    assert_eq!(
        conn.check_sent(&reply).await.unwrap(),
        SentCheck::CannotTell
    );
    assert!(conn.marks_send_start());
    let sent = conn.send_reply(&reply).await.unwrap();
    assert_eq!(sent.external_id, "outbox-17@hourglass.shop.example");

    let received = sink.wait_for(1, Duration::from_secs(10)).unwrap();
    let raw = String::from_utf8_lossy(&received[0]).into_owned();
    assert!(
        raw.contains("Message-ID: <outbox-17@hourglass.shop.example>"),
        "{raw}"
    );
    assert!(
        raw.contains("In-Reply-To: <CAF7x1-ro-0001@mail.example.ro>"),
        "{raw}"
    );
    assert!(
        raw.contains("References: <CAF7x1-ro-0001@mail.example.ro>"),
        "{raw}"
    );
    assert!(raw.contains("X-RcptTo: Ioana.Popescu@example.ro"), "{raw}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&received[0])
        .unwrap();
    assert_eq!(parsed.subject(), Some("Re: Comandă întârziată"));

    match conn.check_sent(&reply).await.unwrap() {
        SentCheck::Sent(s) => assert_eq!(s.external_id, sent.external_id),
        other => panic!("{other:?}"),
    }
    // Filed in the background: found there by a process that did not send it.
    let filed = wait_until_filed(imap_config(&d), &sink, &reply).await;
    assert_eq!(filed.unwrap().external_id, sent.external_id);

    // The copy in Sent comes back as the same outbound message, on the
    // customer's thread.
    let next = conn.poll(&cursors).await.unwrap();
    assert_eq!(next.messages.len(), 1);
    let copy = &next.messages[0];
    assert_eq!(copy.external_id, sent.external_id);
    assert_eq!(copy.direction, Direction::Outbound);
    assert_eq!(copy.thread_key, inbound.thread_key);
    assert_eq!(copy.meta["folder"], d.sent_folder().as_str());

    let other = OutgoingReply {
        outbox_id: "outbox-18".into(),
        ..reply
    };
    assert_eq!(
        conn.check_sent(&other).await.unwrap(),
        SentCheck::CannotTell
    );
    let _ = json!({});
}

async fn a_reply_after_a_server_restart_is_still_filed_in_sent(mut d: ImapServer) {
    let sink = SmtpSink::start().unwrap();
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let conn = EmailConnector::new("mail", imap_config(&d), Some(smtp_config(&sink))).unwrap();
    let batch = conn.poll(&Cursors::new()).await.unwrap();
    let inbound = batch.messages[0].clone();

    // The cached session dies with the server.
    d.restart().unwrap();

    let reply = OutgoingReply {
        outbox_id: "after-restart".into(),
        thread_key: inbound.thread_key.clone(),
        to: inbound.reply_to.clone().unwrap(),
        subject: inbound.subject.clone(),
        text: "Coletul a plecat.".into(),
        in_reply_to_meta: inbound.meta.clone(),
        order_id: None,
    };
    let sent = conn.send_reply(&reply).await.unwrap();
    sink.wait_for(1, Duration::from_secs(10)).unwrap();
    match wait_until_filed(imap_config(&d), &sink, &reply).await {
        Ok(s) => assert_eq!(s.external_id, sent.external_id),
        Err(other) => panic!("the copy did not reach Sent: {other}"),
    }
}

async fn a_missing_folder_is_an_error_for_that_folder_only(d: ImapServer) {
    seed(&d);
    let mut cfg = imap_config(&d);
    cfg.folders = vec!["INBOX".into(), "Commandes".into()];
    cfg.sent_folder = None;
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let (ids, cursors, _) = drain(&conn, Cursors::new()).await;
    // INBOX (5) and the server's \Sent (1) are read all the same.
    assert_eq!(ids.len(), 6, "{ids:?}");
    let problem = conn
        .partial_failure()
        .expect("the missing folder is reported");
    assert!(
        problem.contains("\"Commandes\" does not exist"),
        "{problem}"
    );
    assert!(!cursors.contains_key("Commandes"), "{cursors:?}");
    let err = conn.health_check().await.unwrap_err();
    assert!(err.to_string().contains("Commandes"), "{err}");

    // Created later: read from the next poll on, and no longer an error.
    let wire = d.folder("Commandes");
    d.create_folder(&wire, None).unwrap();
    d.append(&wire, &fixture("pl_cp1250_b64.eml")).unwrap();
    let batch = conn.poll(&cursors).await.unwrap();
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(batch.messages[0].meta["folder"], "Commandes");
    assert_eq!(conn.partial_failure(), None);

    // Only missing folders: that is the poll's error, in the server's
    // terms, not Rust's.
    let mut cfg = imap_config(&d);
    cfg.folders = vec!["Nope".into()];
    cfg.sent_folder = Some("Nope either".into());
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let err = conn.poll(&Cursors::new()).await.unwrap_err();
    assert!(err.to_string().contains("\"Nope\" does not exist"), "{err}");
    assert!(!err.to_string().contains("Some("), "{err}");
}

async fn a_non_ascii_folder_name_from_the_config_is_read(d: ImapServer) {
    // As the seller's mail client shows it; on the wire it is
    // `R&APw-ckfragen` (Dovecot) or `INBOX.R&APw-ckfragen` (Cyrus).
    let name = "Rückfragen/Größen";
    let wire = d.folder(name);
    assert!(wire.contains("R&APw-ckfragen"), "{wire}");
    d.create_folder(&d.folder("Rückfragen"), None).unwrap();
    d.create_folder(&wire, None).unwrap();
    d.append(&wire, &fixture("de_latin9_qp.eml")).unwrap();
    let mut cfg = imap_config(&d);
    cfg.folders = vec!["INBOX".into(), name.into()];
    let conn = EmailConnector::new("mail", cfg, None).unwrap();
    let (ids, cursors, _) = drain(&conn, Cursors::new()).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(cursors.contains_key(name), "{cursors:?}");
    assert_eq!(conn.partial_failure(), None);
}

async fn a_localized_sent_folder_is_found_by_special_use(d: ImapServer) {
    let sent = d.folder(LOCALIZED_SENT);
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    d.append(&sent, &fixture("seller_reply.eml")).unwrap();
    // Only INBOX configured, no sent_folder: the server says which is Sent.
    let mut cfg = imap_config(&d);
    cfg.sent_folder = None;
    // No [smtp], so the seller's address is not known: the folder alone
    // makes the reply outbound.
    let conn = EmailConnector::new("mail", cfg.clone(), None).unwrap();
    let batch = conn.poll(&Cursors::new()).await.unwrap();
    assert_eq!(batch.messages.len(), 2);
    let reply = batch
        .messages
        .iter()
        .find(|m| m.meta["folder"] != "INBOX")
        .unwrap();
    assert_eq!(reply.direction, Direction::Outbound, "{:?}", reply.meta);
    assert!(
        reply.meta["folder"]
            .as_str()
            .unwrap()
            .ends_with(LOCALIZED_SENT),
        "{:?}",
        reply.meta
    );

    // Replies hourglass sends are filed there too, and found there.
    let sink = SmtpSink::start().unwrap();
    let conn = EmailConnector::new("mail", cfg.clone(), Some(smtp_config(&sink))).unwrap();
    let inbound = batch
        .messages
        .iter()
        .find(|m| m.direction == Direction::Inbound)
        .unwrap();
    let out = OutgoingReply {
        outbox_id: "outbox-fr".into(),
        thread_key: inbound.thread_key.clone(),
        to: inbound.reply_to.clone().unwrap(),
        subject: inbound.subject.clone(),
        text: "Merci !".into(),
        in_reply_to_meta: inbound.meta.clone(),
        order_id: None,
    };
    let sent_reply = conn.send_reply(&out).await.unwrap();
    match wait_until_filed(cfg, &sink, &out).await {
        Ok(s) => assert_eq!(s.external_id, sent_reply.external_id),
        Err(other) => panic!("the copy is not in {LOCALIZED_SENT}: {other}"),
    }
}

async fn idle_comes_back_after_the_server_restarts(mut d: ImapServer) {
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let conn = EmailConnector::new("mail", imap_config(&d), None).unwrap();
    let (_, cursors, _) = drain(&conn, Cursors::new()).await;

    // The server restarts under a waiting IDLE: the wait reconnects and
    // reports a change (mail may have come while it was down) instead of
    // sleeping out its timeout.
    let (changed, ()) = tokio::join!(
        conn.wait_for_change(&cursors, Duration::from_secs(600)),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::task::block_in_place(|| d.restart()).unwrap();
        }
    );
    assert!(changed.unwrap_or_else(|e| panic!("{e}\n{}", d.logs())));

    // IDLE is back on the new connection: the next mail wakes it.
    let (changed, ()) = tokio::join!(
        conn.wait_for_change(&cursors, Duration::from_secs(600)),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::task::block_in_place(|| d.append("INBOX", &fixture("fr_latin1_8bit.eml")))
                .unwrap();
        }
    );
    assert!(changed.unwrap());
    let batch = conn.poll(&cursors).await.unwrap();
    assert_eq!(batch.messages.len(), 1);
}
