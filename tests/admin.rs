//! The admin's tools: `check-config --online` against real servers,
//! `accept_invalid_certs` refused off loopback, `backup` of a SQLite store
//! while the daemon writes to it, and `migrate --to` into a real
//! PostgreSQL.

mod common;

use std::time::Duration;

use common::{wait_until, TestApp, WebhookReceiver};
use hourglass_testsupport::dovecot::{Dovecot, DovecotOptions};
use serde_json::Value;
use sqlx::{Connection, Row};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An e-mail instance on the test Dovecot over IMAPS.
fn email_instance(name: &str, d: &Dovecot, password_env: &str, ca_file: Option<&str>) -> String {
    format!(
        r#"
[[instances]]
name = "{name}"
type = "email"
schedule = "0 0 1 1 *"
[instances.imap]
host = "localhost"
port = {port}
tls = "implicit"
username = "{user}"
password = "env:{password_env}"
idle = false
{ca}
"#,
        port = d.imaps_port().unwrap(),
        user = d.user(),
        ca = ca_file
            .map(|f| format!("ca_file = \"{f}\""))
            .unwrap_or_default(),
    )
}

#[test]
fn check_config_online_tries_every_instance_and_sink() {
    let d = Dovecot::start_with(DovecotOptions {
        tls: true,
        ..DovecotOptions::default()
    })
    .unwrap();
    let hooks = WebhookReceiver::start();
    let ca = d.ca_file().unwrap().display().to_string();
    let body = format!(
        "{}{}{}\n[[alerts.sinks]]\nname = \"agents\"\ntype = \"webhook\"\nurl = \"{}\"\nformat = \"json\"\n",
        email_instance("shop-mail", &d, "SHOP_PW", Some(&ca)),
        email_instance("old-mail", &d, "OLD_PW", Some(&ca)),
        email_instance("no-ca", &d, "SHOP_PW", None),
        hooks.url("/agents"),
    );
    let mut app = TestApp::new(None, &body);
    app.env = vec![
        ("SHOP_PW".into(), d.password().into()),
        ("OLD_PW".into(), "a-stale-password".into()),
    ];

    let out = app.run(&["check-config", "--online"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line for {needle}:\n{text}"))
            .to_owned()
    };
    assert!(line("store ").starts_with("OK"), "{text}");
    // The private CA in ca_file makes the TLS handshake pass.
    assert!(line("instance shop-mail").starts_with("OK"), "{text}");
    // A wrong password is a login failure, not a TLS one.
    let old = line("instance old-mail");
    assert!(old.starts_with("FAIL") && old.contains("auth"), "{text}");
    // Without ca_file the public roots refuse the private CA.
    let no_ca = line("instance no-ca");
    assert!(no_ca.starts_with("FAIL") && no_ca.contains("TLS"), "{text}");
    assert!(line("sink agents").starts_with("OK"), "{text}");
    assert!(!text.contains("a-stale-password"), "{text}");
    // The sink got one test alert; nothing else was sent anywhere.
    let got = hooks.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].json()["kind"], "test");

    // --json: the same items for scripts.
    let out = app.run(&["check-config", "--online", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = |kind: &str, name: &str| -> Value {
        items
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == kind && i["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {name} in {items}"))
    };
    assert_eq!(item("instance", "shop-mail")["ok"], true);
    assert_eq!(item("instance", "old-mail")["ok"], false);
    assert_eq!(item("instance", "old-mail")["error_kind"], "auth");
    assert_eq!(item("sink", "agents")["ok"], true);

    // Only working items: exit 0.
    let fine = TestApp::new(None, &email_instance("shop-mail", &d, "SHOP_PW", Some(&ca)));
    let mut fine = fine;
    fine.env = vec![("SHOP_PW".into(), d.password().into())];
    let out = fine.run(&["check-config", "--online"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn accept_invalid_certs_is_refused_for_a_remote_host() {
    let body = r#"
[[instances]]
name = "shop-mail"
type = "email"
[instances.imap]
host = "imap.example.com"
username = "shop"
accept_invalid_certs = true
"#;
    let app = TestApp::new(None, body);
    let out = app.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let config = app.config.display().to_string();
    // The line of `accept_invalid_certs` (the config starts with [store]).
    let line = std::fs::read_to_string(&app.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("accept_invalid_certs"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("{config}:{line}:1: ")),
        "expected {config}:{line}:1 in: {err}"
    );
    assert!(err.contains("ca_file"), "{err}");

    // On loopback it stays allowed (tests against local servers).
    let app = TestApp::new(None, &body.replace("imap.example.com", "127.0.0.1"));
    let out = app.run(&["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A simulated seller whose buyers write every second; replies alert the
/// agents' webhook one second after each buyer message.
fn busy_seller(hooks: &WebhookReceiver) -> String {
    format!(
        r#"[clock]
window = "1h"
thresholds = ["3599s"]

[outbox]
poll_interval = "100ms"

[[alerts.sinks]]
name = "agents"
type = "webhook"
url = "{hook}"
format = "json"

[[alerts.routes]]
sinks = ["agents"]

[[instances]]
name = "shop"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "amazon"
per_poll = 3
threads = 8
"#,
        hook = hooks.url("/agents")
    )
}

fn thread_count(app: &TestApp) -> usize {
    app.json(&["threads", "--json"]).as_array().unwrap().len()
}

fn message_count(app: &TestApp) -> i64 {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}

#[test]
fn backup_copies_a_store_the_daemon_is_writing() {
    let hooks = WebhookReceiver::start();
    let app = TestApp::new(None, &busy_seller(&hooks));
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(60), || message_count(&app) >= 6)
        .unwrap_or_else(|_| panic!("nothing ingested:\n{}", daemon.log()));

    let copy = app.path().join("backup").join("hourglass-copy.db");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let out = app.run(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Backed up"), "{}", stdout(&out));
    assert!(daemon.is_running(), "the daemon kept running");
    let at_backup = message_count(&app);

    // The daemon goes on writing; the copy is a store of its own.
    wait_until(Duration::from_secs(60), || {
        message_count(&app) > at_backup + 3
    })
    .unwrap_or_else(|_| panic!("the daemon stopped ingesting:\n{}", daemon.log()));
    daemon.stop_cleanly();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let integrity: String = rt.block_on(async {
        let url = format!("sqlite://{}?mode=ro", copy.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(integrity, "ok");
    let restored = TestApp::new(Some(&format!("sqlite://{}", copy.display())), "");
    let copied = message_count(&restored);
    assert!(copied >= 6, "{copied} messages in the copy");
    assert!(copied <= message_count(&app));
    assert!(thread_count(&restored) > 0);

    // Never over an existing file.
    let out = app.run(&["backup", copy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

/// `threads --json` without what depends on the moment it is asked.
fn threads_snapshot(app: &TestApp) -> Value {
    let mut v = app.json(&["threads", "--json"]);
    for t in v.as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("time_left_ms");
    }
    v
}

fn show_snapshot(app: &TestApp, id: i64) -> Value {
    let mut v = app.json(&["show", &id.to_string(), "--json"]);
    v.as_object_mut().unwrap().remove("time_left_ms");
    if let Some(t) = v.get_mut("thread").and_then(Value::as_object_mut) {
        t.remove("time_left_ms");
    }
    v
}

const TABLES: &[&str] = &[
    "instances",
    "cursors",
    "customers",
    "identities",
    "threads",
    "messages",
    "attachments",
    "quarantine",
    "outbox",
    "alerts",
    "audit",
    "webhook_events",
    "idempotency_keys",
    "digest_runs",
    "digest_deliveries",
];

async fn row_counts(conn: &mut sqlx::AnyConnection) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for t in TABLES {
        let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {t}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        out.push(((*t).to_owned(), n));
    }
    out
}

#[test]
fn migrate_to_postgres_copies_the_whole_store() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let target = pg.create_database("grown").unwrap();
    let hooks = WebhookReceiver::start();
    // A mailbox with one unreadable mail: quarantine holds its raw bytes.
    let mail_dir = tempfile::tempdir().unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail_dir.path().join(sub)).unwrap();
    }
    let garbage = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/email/tests/fixtures/malformed.eml"
    ))
    .unwrap();
    std::fs::write(mail_dir.path().join("new").join("broken.eml"), &garbage).unwrap();
    let config = format!(
        "{}
[[instances]]
name = \"mailbox\"
type = \"maildir\"
schedule = \"* * * * * *\"
[instances.maildir]
path = \"{}\"
",
        busy_seller(&hooks),
        mail_dir.path().display()
    );
    let sqlite = TestApp::new(None, &config);
    let mut daemon = sqlite.spawn_daemon();
    wait_until(Duration::from_secs(60), || thread_count(&sqlite) >= 8)
        .unwrap_or_else(|_| panic!("threads missing:\n{}", daemon.log()));
    let ids: Vec<i64> = sqlite
        .json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    for id in &ids[..3] {
        sqlite.json(&[
            "reply",
            &id.to_string(),
            "--body",
            "Your parcel left today.",
            "--json",
        ]);
    }
    wait_until(Duration::from_secs(60), || hooks.received().len() >= 3)
        .unwrap_or_else(|_| panic!("no alerts:\n{}", daemon.log()));
    wait_until(Duration::from_secs(60), || {
        !sqlite
            .json(&["quarantine", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    })
    .unwrap_or_else(|_| panic!("nothing quarantined:\n{}", daemon.log()));

    // While the daemon runs, the copy is refused and the target untouched.
    let out = sqlite.run(&["migrate", "--to", &target]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("systemctl stop hourglass"),
        "{}",
        stderr(&out)
    );
    daemon.stop_cleanly();

    let out = sqlite.run(&["migrate", "--to", &target, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let copied = |table: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .map(|t| t["rows"].as_i64().unwrap())
            .unwrap_or(-1)
    };
    assert!(copied("outbox") >= 3, "{report}");
    assert!(copied("alerts") >= 3, "{report}");
    assert!(copied("cursors") >= 1, "{report}");
    assert_eq!(copied("quarantine"), 1, "{report}");

    // Every table holds the same rows on both.
    let rt = tokio::runtime::Runtime::new().unwrap();
    sqlx::any::install_default_drivers();
    let sqlite_url = format!("sqlite://{}/hourglass.db", sqlite.path().display());
    let (before, after) = rt.block_on(async {
        let mut a = sqlx::AnyConnection::connect(&sqlite_url).await.unwrap();
        let mut b = sqlx::AnyConnection::connect(&target).await.unwrap();
        (row_counts(&mut a).await, row_counts(&mut b).await)
    });
    assert_eq!(before, after);

    // What the agents see is the same: the list and every conversation.
    let postgres = TestApp::new(Some(&target), &config);
    assert_eq!(threads_snapshot(&sqlite), threads_snapshot(&postgres));
    for id in &ids {
        assert_eq!(show_snapshot(&sqlite, *id), show_snapshot(&postgres, *id));
    }
    let quarantined = postgres.json(&["quarantine", "--json"]);
    assert_eq!(sqlite.json(&["quarantine", "--json"]), quarantined);
    let raw = postgres.run(&["quarantine", "--raw", &quarantined[0]["id"].to_string()]);
    assert_eq!(raw.stdout, garbage, "the raw bytes survive the move");

    // The PostgreSQL store takes new rows after the copied ones.
    let v = postgres.json(&[
        "reply",
        &ids[3].to_string(),
        "--body",
        "A second parcel is on its way.",
        "--json",
    ]);
    assert!(v["id"].is_string(), "{v}");
    let shown = show_snapshot(&postgres, ids[3]);
    assert!(shown.to_string().contains("A second parcel"), "{shown}");

    // A second run would mix two stores: refused.
    let out = sqlite.run(&["migrate", "--to", &target]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // backup is for SQLite; PostgreSQL has pg_dump.
    let out = postgres.run(&["backup", postgres.path().join("x.db").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pg_dump"), "{}", stderr(&out));
}
