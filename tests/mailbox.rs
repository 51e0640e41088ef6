//! The daemon on a real mailbox: Dovecot (and Cyrus) hold Amazon relay
//! mail; the CLI and the daemon turn it into threads with deadlines.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{wait_until, TestApp};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::imap::{ImapServer, ServerKind};
use hourglass_testsupport::smtp::SmtpSink;

fn relay(
    id: &str,
    buyer: &str,
    alias: &str,
    tld: &str,
    subject: &str,
    body: &str,
    at: DateTime<Utc>,
) -> Vec<u8> {
    format!(
        "From: \"{buyer} - Amazon Marketplace\" <{alias}@marketplace.amazon.{tld}>\r\n\
         To: seller@shop.example\r\nSubject: {subject}\r\nDate: {}\r\n\
         Message-ID: <{id}@email.amazonses.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         ------------- Begin message -------------\r\n\r\n{body}\r\n\r\n\
         ------------- End message -------------\r\n\r\n[commMgrTok:{id}]\r\n",
        at.to_rfc2822()
    )
    .into_bytes()
}

/// Runs each named `fn(ImapServer)` as two tests, `NAME::dovecot` and
/// `NAME::cyrus`.
macro_rules! on_both_servers {
    ($($body:ident),* $(,)?) => { $(
        mod $body {
            use super::*;
            #[test]
            fn dovecot() {
                super::$body(ImapServer::start(ServerKind::Dovecot).unwrap())
            }
            #[test]
            fn cyrus() {
                super::$body(ImapServer::start(ServerKind::Cyrus).unwrap())
            }
        }
    )* };
}

on_both_servers!(
    mail_arriving_while_the_daemon_idles_is_stored_without_waiting_for_the_schedule,
    mail_after_a_server_restart_arrives_by_idle_again,
    a_missing_folder_is_shown_in_connectors_list_while_the_others_are_read,
    mail_in_any_watched_folder_arrives_by_idle,
    a_raw_latin1_display_name_is_read_with_its_charset,
    answered_and_expunged_elsewhere_are_seen_by_modseq,
);

fn app_for(dovecot: &ImapServer, schedule: &str) -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            "[[instances]]\nname = \"amazon-eu\"\ntype = \"amazon\"\nschedule = \"{schedule}\"\n\
             [instances.imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\n\
             password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"INBOX\", \"Sent\"]\n",
            dovecot.port(),
            dovecot.user()
        ),
    );
    app.env
        .push(("HG_IMAP_PASSWORD".into(), dovecot.password().into()));
    app
}

fn total_messages(app: &TestApp) -> i64 {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}

#[test]
fn relay_mail_from_three_marketplaces_becomes_one_thread_per_buyer_and_order() {
    let mut dovecot = ImapServer::Dovecot(Dovecot::start().unwrap());
    let at = |h: i64| (Utc::now() - chrono::Duration::hours(h)).with_timezone(&Utc);
    let (t_de, t_br, t_fr) = (at(3), at(5), at(7));
    for raw in [
        relay("de-1", "Jürgen Weiß", "q7w8e9r0", "de", "Anfrage von Amazon-Kunde Jürgen Weiß (Bestellung: 302-7654321-1234567)", "Hallo, die Schuhe sind zu klein.", t_de),
        relay("de-2", "Jürgen Weiß", "q7w8e9r0", "de", "Anfrage von Amazon-Kunde Jürgen Weiß (Bestellung: 302-7654321-1234567)", "Und die Farbe stimmt auch nicht.", at(1)),
        relay("de-3", "Jürgen Weiß", "q7w8e9r0+case2", "de", "Anfrage von Amazon-Kunde Jürgen Weiß (Bestellung: 302-0000000-7777777)", "Eine andere Bestellung.", at(2)),
        relay("br-1", "Ana Souza", "a1b2c3", "com.br", "Pergunta do cliente da Amazon Ana Souza (Pedido: 701-2345678-3456789)", "Olá, o meu pedido ainda não chegou.", t_br),
        relay("fr-1", "Chloé Martin", "zz9chloe", "fr", "Demande de renseignements de la part du client Amazon Chloé Martin (Commande : 171-9876543-2109876)", "Bonjour, puis-je changer l'adresse ?", t_fr),
    ] {
        dovecot.append("INBOX", &raw).unwrap();
    }
    let app = app_for(&dovecot, "*/2 * * * *");

    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");
    assert_eq!(sync[0]["messages"], 5, "{sync}");

    let threads = app.json(&["threads", "--json"]);
    let threads = threads.as_array().unwrap();
    assert_eq!(
        threads.len(),
        4,
        "one thread per buyer and order: {threads:?}"
    );
    let find = |order: &str| {
        threads
            .iter()
            .find(|t| t["order_id"] == order)
            .unwrap_or_else(|| panic!("no thread for {order}"))
    };
    let de = find("302-7654321-1234567");
    assert_eq!(de["customer"], "Jürgen Weiß");
    assert_eq!(de["marketplace"], "amazon.de");
    assert_eq!(de["channel"], "amazon");
    assert_eq!(de["status"], "awaiting");
    assert_eq!(de["message_count"], 2);
    let due = |t: &serde_json::Value| {
        DateTime::parse_from_rfc3339(t["due_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    // Due 24 h after the first unanswered buyer message (Date has whole seconds).
    let secs = |t: DateTime<Utc>| t.timestamp();
    assert_eq!(secs(due(de)), secs(t_de + chrono::Duration::hours(24)));
    let br = find("701-2345678-3456789");
    assert_eq!(
        (br["customer"].as_str(), br["marketplace"].as_str()),
        (Some("Ana Souza"), Some("amazon.com.br"))
    );
    assert_eq!(secs(due(br)), secs(t_br + chrono::Duration::hours(24)));
    let fr = find("171-9876543-2109876");
    assert_eq!(
        (fr["customer"].as_str(), fr["marketplace"].as_str()),
        (Some("Chloé Martin"), Some("amazon.fr"))
    );
    assert_eq!(secs(due(fr)), secs(t_fr + chrono::Duration::hours(24)));
    // The same buyer's other order (through a +suffixed alias) is its own thread.
    assert_eq!(find("302-0000000-7777777")["customer"], "Jürgen Weiß");
    // Sorted by deadline.
    let order: Vec<_> = threads
        .iter()
        .map(|t| t["order_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order[0], "171-9876543-2109876");

    // Again: nothing new, nothing twice.
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["messages"], 0, "{sync}");
    assert_eq!(total_messages(&app), 5);

    // The server renumbers everything (UIDVALIDITY changes): re-read, no duplicates.
    let before = dovecot.uidvalidity("INBOX").unwrap();
    let ImapServer::Dovecot(d) = &mut dovecot else {
        unreachable!()
    };
    d.bump_uidvalidity().unwrap();
    assert_ne!(dovecot.uidvalidity("INBOX").unwrap(), before);
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");
    assert_eq!(sync[0]["messages"], 0, "{sync}");
    assert_eq!(total_messages(&app), 5);
    assert_eq!(
        app.json(&["threads", "--json"]).as_array().unwrap().len(),
        4
    );
}

fn mail_arriving_while_the_daemon_idles_is_stored_without_waiting_for_the_schedule(
    dovecot: ImapServer,
) {
    dovecot
        .append(
            "INBOX",
            &relay(
                "first",
                "Ana Souza",
                "a1b2c3",
                "com.br",
                "Pergunta (Pedido: 701-2345678-3456789)",
                "Olá!",
                Utc::now(),
            ),
        )
        .unwrap();
    // Polls only at start and then once a year: anything else came by IDLE.
    let app = app_for(&dovecot, "0 0 0 1 1 *");
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(30));
    daemon.wait_for_log("with IMAP IDLE", Duration::from_secs(30));

    let appended = Instant::now();
    dovecot
        .append(
            "INBOX",
            &relay(
                "second",
                "Chloé Martin",
                "zz9chloe",
                "fr",
                "Question (Commande : 171-9876543-2109876)",
                "Bonjour !",
                Utc::now(),
            ),
        )
        .unwrap();
    wait_until(Duration::from_secs(30), || total_messages(&app) == 2)
        .unwrap_or_else(|_| panic!("the new mail never arrived; log:\n{}", daemon.log()));
    // Reported, not asserted: DESIGN's target is 2 s.
    println!(
        "push latency: {} ms (including a CLI round trip)",
        appended.elapsed().as_millis()
    );
    daemon.stop_cleanly();
}

#[test]
fn a_reply_reaches_the_buyer_by_smtp_once_and_is_filed_in_sent_once() {
    let server = ImapServer::Dovecot(Dovecot::start().unwrap());
    let ImapServer::Dovecot(dovecot) = &server else {
        unreachable!()
    };
    let smtp = SmtpSink::start().unwrap();
    dovecot
        .append(
            "INBOX",
            &relay(
                "ro-1",
                "Ioana Popescu",
                "ioana7+k2",
                "de",
                "Anfrage von Amazon-Kunde Ioana Popescu (Bestellung: 302-1111111-2222222)",
                "Bună ziua, coletul a sosit deteriorat.",
                Utc::now() - chrono::Duration::hours(2),
            ),
        )
        .unwrap();
    let app = app_for(&server, "* * * * * *");
    std::fs::write(
        &app.config,
        std::fs::read_to_string(&app.config).unwrap()
            + &format!(
                "sent_folder = \"Sent\"\n[instances.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"seller@shop.example\"\n",
                smtp.port()
            ),
    )
    .unwrap();
    app.json(&["sync", "--once", "--json"]);
    let thread = app.json(&["threads", "--json"])[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();

    let queued = app.json(&[
        "reply",
        &thread,
        "--body",
        "Bună ziua, trimitem azi un colet nou. Mulțumim!",
        "--json",
    ]);
    let id = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.json(&["show", &thread, "--json"])["status"],
        "awaiting",
        "queued is not sent"
    );

    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(30), || {
        app.json(&["show", &thread, "--json"])["outbox"][0]["state"] == "sent"
    })
    .unwrap_or_else(|_| panic!("reply not sent; log:\n{}", daemon.log()));

    // The buyer's relay address, exactly as received (with its +suffix),
    // threaded on the buyer's message.
    let received = smtp.wait_for(1, Duration::from_secs(10)).unwrap();
    let mail = String::from_utf8_lossy(&received[0]).into_owned();
    assert!(mail.contains("ioana7+k2@marketplace.amazon.de"), "{mail}");
    assert!(
        mail.contains("In-Reply-To: <ro-1@email.amazonses.com>"),
        "{mail}"
    );
    assert!(mail.contains(&format!("Message-ID: <{id}@")), "{mail}");

    // The Sent copy is polled back and recognised as the same message: it
    // is the reply, not a second outbound message.
    let sent_dir = dovecot.maildir().join(".Sent");
    let filed = || -> usize {
        ["cur", "new"]
            .iter()
            .map(|d| {
                std::fs::read_dir(sent_dir.join(d))
                    .map(|r| r.count())
                    .unwrap_or(0)
            })
            .sum()
    };
    wait_until(Duration::from_secs(30), || filed() >= 1)
        .unwrap_or_else(|_| panic!("no copy in Sent; log:\n{}", daemon.log()));
    // Two polls after the copy was filed (one a second), the daemon has
    // read it.
    let polls = |app: &TestApp| -> String {
        app.json(&["connectors", "list", "--json"])[0]["last_poll_at"].to_string()
    };
    for _ in 0..2 {
        let before = polls(&app);
        wait_until(Duration::from_secs(30), || polls(&app) != before)
            .unwrap_or_else(|_| panic!("no further poll; log:\n{}", daemon.log()));
    }
    daemon.stop_cleanly();
    let show = app.json(&["show", &thread, "--json"]);
    assert_eq!(show["status"], "answered");
    assert_eq!(show["message_count"], 2, "{show}");
    let out: Vec<_> = show["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .collect();
    assert_eq!(out.len(), 1);
    assert!(
        out[0]["text"].as_str().unwrap().contains("Mulțumim"),
        "diacritics intact: {}",
        out[0]["text"]
    );
    assert_eq!(filed(), 1, "exactly one copy in Sent");
    assert_eq!(smtp.messages().unwrap().len(), 1, "exactly one delivery");
}

fn mail_after_a_server_restart_arrives_by_idle_again(mut server: ImapServer) {
    let at = Utc::now();
    server
        .append(
            "INBOX",
            &relay(
                "first",
                "Ana Souza",
                "a1b2c3",
                "com.br",
                "Pergunta (Pedido: 701-2345678-3456789)",
                "Olá!",
                at,
            ),
        )
        .unwrap();
    // Polls only at start and then once a year: anything else came by IDLE.
    let app = app_for(&server, "0 0 0 1 1 *");
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(30));
    daemon.wait_for_log("with IMAP IDLE", Duration::from_secs(30));

    // The server restarts under the waiting daemon; mail comes right after.
    server.restart().unwrap();
    let restarted = Instant::now();
    server
        .append(
            "INBOX",
            &relay(
                "second",
                "Chloé Martin",
                "zz9chloe",
                "fr",
                "Question (Commande : 171-9876543-2109876)",
                "Bonjour !",
                Utc::now(),
            ),
        )
        .unwrap();
    wait_until(Duration::from_secs(5), || total_messages(&app) == 2).unwrap_or_else(|_| {
        panic!(
            "no new mail within 5 s of the restart; log:\n{}\nserver:\n{}",
            daemon.log(),
            server.logs()
        )
    });
    println!(
        "after restart: {} ms (including a CLI round trip)",
        restarted.elapsed().as_millis()
    );
    daemon.stop_cleanly();
}

fn a_missing_folder_is_shown_in_connectors_list_while_the_others_are_read(server: ImapServer) {
    server
        .append(
            "INBOX",
            &relay(
                "first",
                "Ana Souza",
                "a1b2c3",
                "com.br",
                "Pergunta (Pedido: 701-2345678-3456789)",
                "Olá!",
                Utc::now(),
            ),
        )
        .unwrap();
    let app = app_for(&server, "*/5 * * * *");
    // "Sent" exists (as INBOX.Sent on Cyrus); "Commandes" does not.
    let config = std::fs::read_to_string(&app.config).unwrap().replace(
        "folders = [\"INBOX\", \"Sent\"]",
        "folders = [\"INBOX\", \"Sent\", \"Commandes\"]",
    );
    std::fs::write(&app.config, config).unwrap();

    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");
    assert_eq!(sync[0]["messages"], 1, "{sync}");
    let list = app.json(&["connectors", "list", "--json"]);
    let error = list[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("\"Commandes\" does not exist"), "{list}");
    assert_eq!(list[0]["state"], "ok", "{list}");

    // The daemon reads the others too, and says so once in its log.
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Cannot read this folder", Duration::from_secs(30));
    daemon.stop_cleanly();
    assert_eq!(daemon.log().matches("Cannot read this folder").count(), 1);
    assert_eq!(total_messages(&app), 1);
}

fn mail_in_any_watched_folder_arrives_by_idle(server: ImapServer) {
    server
        .create_folder(&server.folder("Commandes"), None)
        .unwrap();
    server
        .append(
            "INBOX",
            &relay(
                "first",
                "Ana Souza",
                "a1b2c3",
                "com.br",
                "Pergunta (Pedido: 701-2345678-3456789)",
                "Olá!",
                Utc::now(),
            ),
        )
        .unwrap();
    let app = app_for(&server, "0 0 0 1 1 *");
    let config = std::fs::read_to_string(&app.config).unwrap().replace(
        "folders = [\"INBOX\", \"Sent\"]",
        "folders = [\"INBOX\", \"Sent\", \"Commandes\"]",
    );
    std::fs::write(&app.config, config).unwrap();
    // Polls only at start and then once a year: anything else came by IDLE.
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(30));
    // One IDLE connection per folder.
    daemon.wait_for_log_count("with IMAP IDLE", 3, Duration::from_secs(30));
    let before = daemon.log().matches("with IMAP IDLE").count();

    // The third folder, then the sent folder: neither is the first.
    let appended = Instant::now();
    server
        .append(
            &server.folder("Commandes"),
            &relay(
                "second",
                "Chloé Martin",
                "zz9chloe",
                "fr",
                "Question (Commande : 171-9876543-2109876)",
                "Bonjour !",
                Utc::now(),
            ),
        )
        .unwrap();
    wait_until(Duration::from_secs(30), || total_messages(&app) == 2)
        .unwrap_or_else(|_| panic!("mail in Commandes never arrived; log:\n{}", daemon.log()));
    println!(
        "push latency, third folder: {} ms (including a CLI round trip)",
        appended.elapsed().as_millis()
    );
    // Every folder idles again after the poll.
    daemon.wait_for_log_count("with IMAP IDLE", before + 3, Duration::from_secs(30));
    let appended = Instant::now();
    server
        .append(
            &server.sent_folder(),
            b"From: seller@shop.example\r\nTo: zz9chloe@marketplace.amazon.fr\r\n\
              Subject: Re: Question (Commande : 171-9876543-2109876)\r\n\
              Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <answer-1@shop.example>\r\n\
              \r\nBonjour, c'est parti.\r\n",
        )
        .unwrap();
    wait_until(Duration::from_secs(30), || total_messages(&app) == 3)
        .unwrap_or_else(|_| panic!("mail in Sent never arrived; log:\n{}", daemon.log()));
    println!(
        "push latency, sent folder: {} ms (including a CLI round trip)",
        appended.elapsed().as_millis()
    );
    daemon.stop_cleanly();
    assert!(
        !daemon.log().contains("polled on schedule"),
        "{}",
        daemon.log()
    );
}

fn a_raw_latin1_display_name_is_read_with_its_charset(server: ImapServer) {
    // As an old mail client sends it: ISO-8859-1 bytes in the header,
    // not RFC 2047 encoded words. Cyrus keeps them (munge8bit: no).
    let mut raw = Vec::new();
    raw.extend_from_slice(b"From: \"J\xfcrgen Wei\xdf\" <juergen@example.de>\r\n");
    raw.extend_from_slice(b"To: seller@shop.example\r\nSubject: Gr\xf6\xdfe falsch\r\n");
    raw.extend_from_slice(format!("Date: {}\r\n", Utc::now().to_rfc2822()).as_bytes());
    raw.extend_from_slice(b"Message-ID: <latin1-1@example.de>\r\nMIME-Version: 1.0\r\n");
    raw.extend_from_slice(b"Content-Type: text/plain; charset=ISO-8859-1\r\n");
    raw.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n\r\n");
    raw.extend_from_slice(b"Die Schuhe sind zu gro\xdf.\r\n");
    server.append("INBOX", &raw).unwrap();
    let mut app = TestApp::new(
        None,
        &format!(
            "[[instances]]\nname = \"shop\"\ntype = \"email\"\nschedule = \"*/5 * * * *\"\n\
             [instances.imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\n\
             password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"INBOX\"]\n",
            server.port(),
            server.user()
        ),
    );
    app.env
        .push(("HG_IMAP_PASSWORD".into(), server.password().into()));

    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");
    assert_eq!(sync[0]["messages"], 1, "not quarantined: {sync}");
    let threads = app.json(&["threads", "--json"]);
    assert_eq!(threads[0]["customer"], "Jürgen Weiß", "{threads}");
    assert_eq!(threads[0]["subject"], "Größe falsch", "{threads}");
    let id = threads[0]["id"].as_i64().unwrap().to_string();
    let show = app.json(&["show", &id, "--json"]);
    assert!(
        show["messages"][0]["text"]
            .as_str()
            .unwrap()
            .contains("zu groß."),
        "{show}"
    );
}

fn answered_and_expunged_elsewhere_are_seen_by_modseq(server: ImapServer) {
    let at = Utc::now() - chrono::Duration::hours(2);
    for (id, buyer, alias, order) in [
        ("q-1", "Ana Souza", "a1b2c3", "701-2345678-3456789"),
        ("q-2", "Chloé Martin", "zz9chloe", "171-9876543-2109876"),
    ] {
        server
            .append(
                "INBOX",
                &relay(
                    id,
                    buyer,
                    alias,
                    "fr",
                    &format!("Question (Commande : {order})"),
                    "Bonjour !",
                    at,
                ),
            )
            .unwrap();
    }
    let app = app_for(&server, "*/5 * * * *");
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["messages"], 2, "{sync}");
    let status = |order: &str| -> String {
        let mut threads = app.json(&["threads", "--json"]);
        let answered = app.json(&["threads", "--status", "answered", "--json"]);
        let all = threads.as_array_mut().unwrap();
        all.extend(answered.as_array().unwrap().iter().cloned());
        all.iter()
            .find(|t| t["order_id"] == order)
            .unwrap_or_else(|| panic!("no thread {order}: {all:?}"))["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(status("701-2345678-3456789"), "awaiting");

    // The seller answers Ana from another mail client, which flags her
    // message \Answered; Chloé's message is deleted there.
    server.store_flag("INBOX", 1, '+', "\\Answered").unwrap();
    server.expunge("INBOX", 2).unwrap();
    let out = app.run(&["sync", "--once", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("deleted on the server"), "{log}");
    assert_eq!(status("701-2345678-3456789"), "answered");
    // Chloé's thread is untouched: still waiting, its message kept.
    assert_eq!(status("171-9876543-2109876"), "awaiting");
    assert_eq!(total_messages(&app), 3, "two messages and the hint");

    // Seen again (another flag change on the same message): no second hint.
    server.store_flag("INBOX", 1, '+', "\\Seen").unwrap();
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");
    assert_eq!(total_messages(&app), 3);
}

/// After a crash mid-send, SMTP cannot prove a reply absent: the Sent copy
/// is filed after the send. A reply whose send had started is left
/// `uncertain` for a human, never resent; one that was only claimed when
/// the daemon died never reached SMTP and is sent, once.
#[test]
fn a_reply_interrupted_after_its_send_started_is_uncertain_not_sent_twice() {
    let server = ImapServer::Dovecot(Dovecot::start().unwrap());
    let ImapServer::Dovecot(dovecot) = &server else {
        unreachable!()
    };
    let smtp = SmtpSink::start().unwrap();
    for (id, buyer, alias) in [("b-1", "Ana", "ana1+x"), ("b-2", "Bruno", "bruno2+y")] {
        dovecot
            .append(
                "INBOX",
                &relay(
                    id,
                    buyer,
                    alias,
                    "de",
                    &format!("Anfrage von Amazon-Kunde {buyer}"),
                    "Wo ist mein Paket?",
                    Utc::now() - chrono::Duration::hours(1),
                ),
            )
            .unwrap();
    }
    let app = app_for(&server, "* * * * * *");
    std::fs::write(
        &app.config,
        std::fs::read_to_string(&app.config).unwrap()
            + &format!(
                "sent_folder = \"Sent\"\n[instances.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"seller@shop.example\"\n",
                smtp.port()
            ),
    )
    .unwrap();
    app.json(&["sync", "--once", "--json"]);
    let threads: Vec<String> = app
        .json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap().to_string())
        .collect();
    assert_eq!(threads.len(), 2);
    let reply = |thread: &str| -> String {
        app.json(&["reply", thread, "--body", "Heute verschickt.", "--json"])["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (started, claimed) = (reply(&threads[0]), reply(&threads[1]));

    // As a daemon killed mid-work leaves them: both claimed, with a lease
    // that has run out; the first had started its send.
    let store_only = app.dir.path().join("store.toml");
    std::fs::write(
        &store_only,
        format!(
            "[store]\nurl = \"sqlite://{}/hourglass.db\"\n",
            app.dir.path().display()
        ),
    )
    .unwrap();
    let config = hourglass::config::Config::load(&store_only).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        let past = (Utc::now() - chrono::Duration::minutes(5)).timestamp_millis();
        for (id, mark) in [(&started, Some(past)), (&claimed, None)] {
            sqlx::query(
                "UPDATE outbox SET state = 'sending', claimed_by = 'killed', claimed_until = $1,
                    attempts = 1, send_started_at = $2 WHERE id = $3",
            )
            .bind(past)
            .bind(mark)
            .bind(id.as_str())
            .execute(store.pool())
            .await
            .unwrap();
        }
    });

    let mut daemon = app.spawn_daemon();
    let state = |thread: &str| app.json(&["show", thread, "--json"])["outbox"][0].clone();
    wait_until(Duration::from_secs(30), || {
        state(&threads[0])["state"] == "uncertain" && state(&threads[1])["state"] == "sent"
    })
    .unwrap_or_else(|_| {
        panic!(
            "expected uncertain and sent: {} / {}; log:\n{}",
            state(&threads[0]),
            state(&threads[1]),
            daemon.log()
        )
    });
    daemon.stop_cleanly();
    let reason = state(&threads[0])["error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(reason.contains("cannot tell"), "{reason}");
    let mails = smtp.messages().unwrap();
    assert_eq!(mails.len(), 1, "only the reply that never reached SMTP");
    let mail = String::from_utf8_lossy(&mails[0]).into_owned();
    assert!(mail.contains(&format!("Message-ID: <{claimed}@")), "{mail}");
    assert!(!mail.contains(&started), "{mail}");
}
