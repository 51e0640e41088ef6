//! The agent's view: listing by deadline, marking threads, stats, digests
//! and the Telegram sink, through the real binary.

mod common;

use std::time::Duration;

use common::{deliver_mail, wait_until, TestApp, WebhookReceiver};

fn mail(id: &str, from: &str, to: &str, subject: &str, hours_ago: i64, extra: &str) -> String {
    let date = (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc2822();
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{id}@t.example>\r\n{extra}\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello ({id})\r\n"
    )
}

/// A shop mailbox: one answered conversation (3 h to answer), one answered
/// late (30 h), one awaiting for 2 h, one awaiting for 23.5 h.
fn shop(app_dir: &std::path::Path) -> std::path::PathBuf {
    let root = app_dir.join("mail");
    let inbox = root.clone();
    let sent = root.join(".Sent");
    let me = "help@shop.example";
    deliver_mail(
        &inbox,
        &mail("a1", "Ana <ana@example.pt>", me, "Pedido 1", 50, ""),
    );
    deliver_mail(
        &sent,
        &mail(
            "a2",
            me,
            "ana@example.pt",
            "Re: Pedido 1",
            47,
            "In-Reply-To: <a1@t.example>\r\nReferences: <a1@t.example>\r\n",
        ),
    );
    deliver_mail(
        &inbox,
        &mail("b1", "Bob <bob@example.com>", me, "Late one", 70, ""),
    );
    deliver_mail(
        &sent,
        &mail(
            "b2",
            me,
            "bob@example.com",
            "Re: Late one",
            40,
            "In-Reply-To: <b1@t.example>\r\nReferences: <b1@t.example>\r\n",
        ),
    );
    deliver_mail(
        &inbox,
        &mail("c1", "Cleo <cleo@example.fr>", me, "Question", 2, ""),
    );
    deliver_mail(
        &inbox,
        &mail("d1", "Dan <dan@example.de>", me, "Urgent", 23, ""),
    );
    root
}

fn config(mail: &std::path::Path, extra: &str) -> String {
    format!(
        "[[instances]]\nname = \"shop\"\ntype = \"maildir\"\nschedule = \"* * * * * *\"\n[instances.maildir]\npath = \"{}\"\nown_addresses = [\"help@shop.example\"]\n\n{extra}",
        mail.display()
    )
}

#[test]
fn threads_filters_marks_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let mail = shop(dir.path());
    let app = TestApp::new(None, &config(&mail, ""));
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["messages"], 6, "{sync}");

    let awaiting = app.json(&["threads", "--status", "awaiting", "--json"]);
    let subjects: Vec<_> = awaiting
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["subject"].clone())
        .collect();
    assert_eq!(subjects, ["Urgent", "Question"], "sorted by deadline");
    let soon = app.json(&["threads", "--due-within", "2h", "--json"]);
    assert_eq!(soon.as_array().unwrap().len(), 1);
    assert_eq!(soon[0]["customer"], "Dan");
    assert!(
        soon[0]["due_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC"
    );
    let answered = app.json(&["threads", "--status", "answered", "--json"]);
    assert_eq!(answered.as_array().unwrap().len(), 2);
    assert!(answered[0]["due_at"].is_null());
    let none = app.json(&["threads", "--channel", "amazon", "--json"]);
    assert!(none.as_array().unwrap().is_empty());

    // The human table shows time left.
    let out = app.run(&["threads"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("left") && table.contains("Dan"), "{table}");

    // Marks: snooze, then no response needed, each with who and when.
    let dan = soon[0]["id"].as_i64().unwrap().to_string();
    let out = app.run(&["mark", &dan, "--snooze", "2h", "--actor", "ines"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snoozed = app.json(&["threads", "--status", "snoozed", "--json"]);
    assert_eq!(snoozed[0]["customer"], "Dan");
    let out = app.run(&["mark", &dan, "--no-response-needed", "--actor", "ines"]);
    assert!(out.status.success());
    let show = app.json(&["show", &dan, "--json"]);
    assert_eq!(show["status"], "no_response_needed");
    assert!(show["due_at"].is_null());
    let audit: Vec<_> = show["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["actor"].clone(), a["action"].clone()))
        .collect();
    assert_eq!(
        audit,
        [
            ("ines".into(), "snooze".into()),
            ("ines".into(), "no_response_needed".into())
        ]
    );
    assert_eq!(show["messages"][0]["direction"], "inbound");
    assert_eq!(show["messages"][0]["author"], "Dan");

    // Stats: 4 conversations, 2 answered (3 h and 30 h), 1 late; Dan's
    // is still within its window, Cleo's too.
    let stats = app.json(&["stats", "--since", "7d", "--json"]);
    let email = &stats["per_channel"]["email"];
    assert_eq!(email["conversations"], 4, "{stats}");
    assert_eq!(email["answered"], 2);
    assert_eq!(email["breached"], 1);
    assert_eq!(email["breach_rate"], 0.5);
    assert_eq!(email["first_response_median_s"], 3 * 3600);
    assert_eq!(email["first_response_p90_s"], 30 * 3600);
}

#[test]
fn digests_arrive_on_their_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let mail = shop(dir.path());
    let hooks = WebhookReceiver::start();
    let app = TestApp::new(
        None,
        &config(
            &mail,
            &format!(
                "[clock]\nthresholds = []\n\n[[alerts.sinks]]\nname = \"team\"\ntype = \"webhook\"\nurl = \"{}\"\nformat = \"slack\"\n\n\
                 [[alerts.routes]]\nsinks = []\n\n\
                 [[alerts.digests]]\nname = \"Every 3 s\"\nschedule = \"*/3 * * * * *\"\nsinks = [\"team\"]\ndue_within = \"6h\"\n",
                hooks.url("/digest")
            ),
        ),
    );
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(20), || {
        hooks
            .received()
            .iter()
            .any(|r| r.json()["text"].as_str().unwrap_or("").contains("Dan"))
    })
    .unwrap_or_else(|_| panic!("no digest; log:\n{}", daemon.log()));
    let digest = hooks
        .received()
        .into_iter()
        .rev()
        .find(|r| r.json()["text"].as_str().unwrap_or("").contains("Dan"))
        .unwrap();
    let text = digest.json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("Every 3 s: 1 due within 6h, 0 breached"),
        "{text}"
    );
    assert!(
        !text.contains("Cleo"),
        "Cleo is due in 22 h, outside the digest's 6 h: {text}"
    );
    daemon.stop_cleanly();
}

#[test]
fn telegram_sink_posts_to_the_bot_api() {
    let api = WebhookReceiver::start();
    let mut app = TestApp::new(
        None,
        &format!(
            "[[alerts.sinks]]\nname = \"tg\"\ntype = \"telegram\"\nbot_token = \"env:HG_TG_TOKEN\"\nchat_id = \"-100777\"\napi_url = \"{}\"\n",
            api.url("")
        ),
    );
    app.env
        .push(("HG_TG_TOKEN".into(), "123456:SECRET-bot-token".into()));
    let out = app.run(&["alerts", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.trim(), "tg: ok");
    let got = api.received();
    assert_eq!(got[0].path, "/bot123456:SECRET-bot-token/sendMessage");
    assert_eq!(got[0].json()["chat_id"], "-100777");
    assert!(got[0].json()["text"]
        .as_str()
        .unwrap()
        .contains("Test alert"));

    // Down: the error names the sink, never the token in the URL.
    let mut down = TestApp::new(
        None,
        "[[alerts.sinks]]\nname = \"tg\"\ntype = \"telegram\"\nbot_token = \"env:HG_TG_TOKEN\"\nchat_id = \"1\"\napi_url = \"http://127.0.0.1:1\"\n",
    );
    down.env
        .push(("HG_TG_TOKEN".into(), "123456:SECRET-bot-token".into()));
    let out = down.run(&["alerts", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.starts_with("tg: failed: telegram:"), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");
}

#[test]
fn unreadable_mail_is_quarantined_with_its_raw_bytes_and_the_rest_is_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let mail = shop(dir.path());
    let garbage = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/email/tests/fixtures/malformed.eml"
    ))
    .unwrap();
    std::fs::write(mail.join("new").join("broken.eml"), &garbage).unwrap();
    let app = TestApp::new(None, &config(&mail, ""));
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");
    assert_eq!(sync[0]["messages"], 6, "the good mail is all there: {sync}");

    let items = app.json(&["quarantine", "--json"]);
    assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
    assert_eq!(items[0]["instance"], "shop");
    assert!(
        items[0]["source"].as_str().unwrap().starts_with("INBOX"),
        "{items}"
    );
    assert!(!items[0]["error"].as_str().unwrap().is_empty());
    let out = app.run(&["quarantine", "--raw", &items[0]["id"].to_string()]);
    assert!(out.status.success());
    assert_eq!(out.stdout, garbage, "the raw bytes, exactly");
    // Read once: the next pass does not quarantine it again.
    app.json(&["sync", "--once", "--json"]);
    assert_eq!(
        app.json(&["quarantine", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
