//! Deadline alerts end to end: a real SMTP server (aiosmtpd) and a local
//! webhook receiver get each alert exactly once, across a SIGKILL.

mod common;

use std::time::Duration;

use common::{deliver_mail, wait_until, TestApp, WebhookReceiver};
use hmac::{Hmac, Mac};
use hourglass_testsupport::smtp::SmtpSink;
use sha2::Sha256;

const HOOK_SECRET: &str = "hook-secret-for-tests";

fn buyer_mail(seconds_ago: i64) -> String {
    let date = (chrono::Utc::now() - chrono::Duration::seconds(seconds_ago)).to_rfc2822();
    format!(
        "From: \"Jürgen Weiß - Amazon Marketplace\" <q7w8e9r0@marketplace.amazon.de>\r\n\
         To: seller@shop.example\r\n\
         Subject: Anfrage von Amazon-Kunde Jürgen Weiß (Bestellung: 302-7654321-1234567)\r\n\
         Date: {date}\r\n\
         Message-ID: <alert-test-1@email.amazonses.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         ------------- Begin message -------------\r\n\r\n\
         Hallo, wo bleibt meine Bestellung?\r\n\r\n\
         ------------- End message -------------\r\n"
    )
}

/// The signature a receiver expects: HMAC(secret, timestamp + "." + body).
fn verify(r: &common::Received) -> bool {
    let Some(timestamp) = r.header("X-Hourglass-Timestamp") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    r.header("X-Hourglass-Signature") == Some(expected.as_str())
}

#[test]
fn alerts_reach_every_sink_exactly_once_across_a_crash_and_the_breach_escalates() {
    let smtp = SmtpSink::start().unwrap();
    let hooks = WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    // 23 h 59 min 20 s old: the 1 h point has passed, the breach is 40 s away.
    deliver_mail(&mail, &buyer_mail(24 * 3600 - 40));
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }

    let mut app = TestApp::new(
        None,
        &format!(
            r#"[clock]
window = "24h"
thresholds = ["1h"]

[daemon]
shutdown_timeout = "3s"

[[instances]]
name = "amazon-de"
type = "amazon"
schedule = "* * * * * *"
[instances.maildir]
path = "{mail}"
own_addresses = ["seller@shop.example"]

[[alerts.sinks]]
name = "agents-mail"
type = "email"
to = ["agents@shop.example"]
smtp = {{ host = "127.0.0.1", port = {smtp_port}, tls = "none", from = "hourglass@shop.example" }}

[[alerts.sinks]]
name = "agents-hook"
type = "webhook"
url = "{agents}"
format = "json"
secret = "env:HG_HOOK_SECRET"

[[alerts.sinks]]
name = "managers"
type = "webhook"
url = "{managers}"
format = "slack"

[[alerts.routes]]
sinks = ["agents-mail", "agents-hook"]

[[alerts.routes]]
thresholds = ["breach"]
sinks = ["managers"]
"#,
            mail = mail.display(),
            smtp_port = smtp.port(),
            agents = hooks.url("/agents"),
            managers = hooks.url("/managers"),
        ),
    );
    app.env.push(("HG_HOOK_SECRET".into(), HOOK_SECRET.into()));

    let to = |path: &str| {
        hooks
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect::<Vec<_>>()
    };

    // The 1 h alert reaches both agent sinks.
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(30), || !to("/agents").is_empty())
        .unwrap_or_else(|_| panic!("no webhook alert; log:\n{}", daemon.log()));
    smtp.wait_for(1, Duration::from_secs(30)).unwrap();
    let first = &to("/agents")[0];
    assert_eq!(first.json()["threshold"], "1h");
    assert_eq!(first.json()["customer"], "Jürgen Weiß");
    assert_eq!(first.json()["order_id"], "302-7654321-1234567");
    assert!(verify(first), "signature does not verify: {first:?}");
    let mail_text = String::from_utf8_lossy(&smtp.messages().unwrap()[0]).into_owned();
    assert!(mail_text.contains("Subject: [hourglass]"), "{mail_text}");
    assert!(mail_text.contains("302-7654321-1234567"), "{mail_text}");

    // Killed outright and restarted: nothing fires twice.
    daemon.signal("KILL");
    daemon.wait_exit(Duration::from_secs(10));
    let mut daemon = app.spawn_daemon();

    // At 24 h the breach fires, to the agents and, escalated, the managers.
    // The restarted engine's first pass comes before the breach's: a 1 h
    // alert fired again would be among what has arrived by then.
    wait_until(Duration::from_secs(60), || !to("/managers").is_empty())
        .unwrap_or_else(|_| panic!("no breach escalation; log:\n{}", daemon.log()));
    let breach_to_agents = || {
        to("/agents")
            .iter()
            .any(|r| r.json()["threshold"] == "breach")
    };
    wait_until(Duration::from_secs(20), breach_to_agents)
        .unwrap_or_else(|_| panic!("no breach to the agents; log:\n{}", daemon.log()));
    smtp.wait_for(2, Duration::from_secs(20)).unwrap();
    // Stopped: deliveries in flight end, nothing more can arrive.
    daemon.stop_cleanly();

    let agents = to("/agents");
    let thresholds: Vec<_> = agents
        .iter()
        .map(|r| r.json()["threshold"].clone())
        .collect();
    assert_eq!(
        thresholds,
        ["1h", "breach"],
        "each alert once, none again after the restart"
    );
    assert!(agents.iter().all(verify));
    // Two alerts, two idempotency keys.
    let keys: Vec<_> = agents
        .iter()
        .map(|r| r.header("X-Hourglass-Delivery").unwrap().to_owned())
        .collect();
    assert_ne!(keys[0], keys[1], "{keys:?}");
    let managers = to("/managers");
    assert_eq!(managers.len(), 1, "escalated only at the breach");
    let text = managers[0].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("Deadline missed: Jürgen Weiß on amazon"),
        "{text}"
    );
    assert_eq!(smtp.messages().unwrap().len(), 2);
}

/// Alert deliveries in the store (queued or sent).
fn alert_rows(app: &TestApp) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM alerts")
            .fetch_one(store.pool())
            .await
            .unwrap()
    })
}

#[test]
fn alerts_test_reports_each_sink() {
    let hooks = WebhookReceiver::start();
    let app = TestApp::new(
        None,
        &format!(
            r#"[[alerts.sinks]]
name = "good"
type = "webhook"
url = "{}"
format = "teams"

[[alerts.sinks]]
name = "down"
type = "webhook"
url = "http://127.0.0.1:1/nothing-listens-here"
"#,
            hooks.url("/teams")
        ),
    );
    let out = app.run(&["alerts", "test", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing sink fails the command"
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results[0]["sink"], "good");
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[1]["sink"], "down");
    assert_eq!(results[1]["ok"], false);
    let got = hooks.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["@type"], "MessageCard");
}

#[test]
fn demo_runs_from_a_fresh_machine_and_shows_alerts() {
    let out = std::process::Command::new(common::BIN)
        .args(["demo", "--for", "40s"])
        .env_remove("HOURGLASS_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The deadline table, ordered by deadline, breached first.
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Deadlines:"))
        .collect();
    assert!(
        table[2].contains("breached") && table[2].contains("Lucía Fernández"),
        "{stdout}"
    );
    assert!(stdout.contains("Jürgen Weiß") && stdout.contains("Ioana Popescu"));
    assert!(stdout.contains("answered") && stdout.contains("Emily Clark"));
    // Alerts reached the capture, signed, including the 1 h alert that
    // comes about 30 s in.
    let alerts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("[signature ok]"))
        .collect();
    assert!(alerts.len() >= 5, "{stdout}");
    assert!(alerts
        .iter()
        .any(|l| l.contains("Deadline missed: Lucía Fernández")));
    assert_eq!(
        alerts.iter().filter(|l| l.contains("Ana Souza")).count(),
        2,
        "{stdout}"
    );
    assert!(!stdout.contains("BAD SIGNATURE"));
}

#[test]
fn a_bounced_reply_is_an_error_on_the_thread_and_one_alert() {
    let hooks = WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/amazon/tests/fixtures"
    );
    // The buyer's message, then Amazon's notice that our reply bounced.
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(sub)).unwrap();
    }
    std::fs::copy(
        format!("{fixtures}/de_de_latin1_qp.eml"),
        mail.join("new").join("buyer.eml"),
    )
    .unwrap();
    let app = TestApp::new(
        None,
        &format!(
            "[[instances]]\nname = \"amazon-de\"\ntype = \"amazon\"\nschedule = \"* * * * * *\"\n\
             [instances.maildir]\npath = \"{}\"\nown_addresses = [\"verkauf@shop.example\"]\n\n\
             [[alerts.sinks]]\nname = \"agents\"\ntype = \"webhook\"\nurl = \"{}\"\n\n\
             [[alerts.routes]]\nthresholds = [\"error\"]\nsinks = [\"agents\"]\n",
            mail.display(),
            hooks.url("/agents")
        ),
    );
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(20));
    std::fs::copy(
        format!("{fixtures}/de_delivery_failure.eml"),
        mail.join("new").join("bounce.eml"),
    )
    .unwrap();
    wait_until(Duration::from_secs(30), || !hooks.received().is_empty())
        .unwrap_or_else(|_| panic!("no error alert; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
    // Another full pass of the alert engine: a restarted daemon's engine
    // finishes its first pass before it looks at a stop.
    let mut daemon = app.spawn_daemon();
    daemon.stop_cleanly();

    let got = hooks.received();
    assert_eq!(got.len(), 1, "one alert per error");
    assert_eq!(alert_rows(&app), 1, "one alert per error");
    let alert = got[0].json();
    assert_eq!(alert["kind"], "error");
    assert_eq!(alert["order_id"], "302-7654321-1234567");
    assert!(
        alert["error"]
            .as_str()
            .unwrap()
            .starts_with("A reply bounced"),
        "{alert}"
    );
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .starts_with("Reply failed: Jürgen Weiß on amazon"),
        "{alert}"
    );

    // The error shows on the thread, and the notice did not stop the clock.
    let threads = app.json(&["threads", "--json"]);
    let thread = threads
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["order_id"] == "302-7654321-1234567")
        .unwrap();
    assert!(
        thread["last_error"]
            .as_str()
            .unwrap()
            .contains("externen Link"),
        "{thread}"
    );
    assert_ne!(thread["status"], "answered");
}

/// Digest deliveries in the store: (state, attempts) of each.
fn digest_rows(app: &TestApp) -> Vec<(String, i64)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_as::<_, (String, i64)>(
            "SELECT state, attempts FROM digest_deliveries ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    })
}

#[test]
fn a_digest_is_queued_durably_and_sent_once_after_a_crash_across_two_daemons() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("digests").unwrap();
    // The sink's port, with nothing listening yet: the sink is down.
    let port = hourglass_testsupport::net::free_port();
    // One run a day, two seconds from now (a daemon that starts after it
    // still sends it: a missed run less than an hour old is caught up).
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let schedule = at.format("%S %M %H * * *").to_string();
    let app = TestApp::new(
        Some(&url),
        &format!(
            r#"[daemon]
shutdown_timeout = "3s"
lease = "2s"

[[alerts.sinks]]
name = "team"
type = "webhook"
url = "http://127.0.0.1:{port}/digest"
format = "json"

[[alerts.routes]]
sinks = []

[[alerts.digests]]
name = "daily"
schedule = "{schedule}"
sinks = ["team"]
due_within = "6h"
"#
        ),
    );

    // The run comes, its delivery fails and is queued for a retry; then
    // the daemon dies.
    let mut first = app.spawn_daemon();
    wait_until(Duration::from_secs(30), || {
        digest_rows(&app) == [("queued".to_owned(), 1)]
    })
    .unwrap_or_else(|_| {
        panic!(
            "no failed digest delivery queued for a retry: {:?}; log:\n{}",
            digest_rows(&app),
            first.log()
        )
    });
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    // The sink is back, two daemons share the store: the digest arrives,
    // once.
    let hooks = WebhookReceiver::start_on(port);
    let mut a = app.spawn_daemon();
    let mut b = app.spawn_daemon();
    wait_until(Duration::from_secs(60), || {
        digest_rows(&app).iter().all(|(state, _)| state == "sent")
    })
    .unwrap_or_else(|_| {
        panic!(
            "the digest was not retried: {:?}; logs:\n{}\n{}",
            digest_rows(&app),
            a.log(),
            b.log()
        )
    });
    a.stop_cleanly();
    b.stop_cleanly();
    let received = hooks.received();
    assert_eq!(received.len(), 1, "one digest: {received:?}");
    let digest = received[0].json();
    assert_eq!(digest["kind"], "digest");
    assert_eq!(digest["digest"], "daily");
    assert_eq!(digest_rows(&app).len(), 1, "one run, one sink");
}

/// The Python function in README ("Verifying webhook alerts"), as written.
fn readme_verify_example() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("<!-- verify-webhook-example -->\n```python\n")
        .expect("README has the marked Python example");
    let code = &readme[start..];
    let code = &code[code.find("```python\n").unwrap() + "```python\n".len()..];
    code[..code.find("```").unwrap()].to_owned()
}

/// A delivery as a receiver sees it: headers, body, and how far its clock
/// is ahead of the sender's, in seconds.
type Case = (Vec<(String, String)>, Vec<u8>, i64);

/// Runs the README's `verify` on each case with python3; returns its
/// answers.
fn python_verify(cases: &[Case]) -> Vec<bool> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.py");
    let harness = r#"

import base64
import json
import sys

answers = []
for case in json.load(sys.stdin):
    real_time = time.time
    time.time = lambda: real_time() + case["offset"]
    answers.append(verify(b"hook-secret-for-tests", dict(case["headers"]),
                          base64.b64decode(case["body"])))
    time.time = real_time
print(json.dumps(answers))
"#;
    std::fs::write(&script, readme_verify_example() + harness).unwrap();
    let input = serde_json::Value::Array(
        cases
            .iter()
            .map(|(headers, body, offset)| {
                serde_json::json!({
                    "headers": headers,
                    "body": base64_encode(body),
                    "offset": offset,
                })
            })
            .collect(),
    );
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the README example");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the README example failed to run");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_readme_example_verifies_a_real_delivery_and_refuses_forgeries_and_replays() {
    let hooks = WebhookReceiver::start();
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[[alerts.sinks]]
name = "signed"
type = "webhook"
url = "{}"
secret = "env:HG_HOOK_SECRET"
"#,
            hooks.url("/signed")
        ),
    );
    app.env.push(("HG_HOOK_SECRET".into(), HOOK_SECRET.into()));
    let out = app.run(&["alerts", "test"]);
    assert!(out.status.success(), "{out:?}");
    let got = hooks.received();
    assert_eq!(got.len(), 1);
    let real = &got[0];
    assert!(real.header("X-Hourglass-Delivery").is_some(), "{real:?}");

    let headers = real.headers.clone();
    let with = |name: &str, value: &str| {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
            .cloned()
            .collect();
        h.push((name.to_owned(), value.to_owned()));
        h
    };
    // The headers as a receiver's framework names them.
    let canonical = |h: Vec<(String, String)>| {
        h.into_iter()
            .map(|(k, v)| {
                let k = match k.to_ascii_lowercase().as_str() {
                    "x-hourglass-timestamp" => "X-Hourglass-Timestamp".to_owned(),
                    "x-hourglass-signature" => "X-Hourglass-Signature".to_owned(),
                    _ => k,
                };
                (k, v)
            })
            .collect::<Vec<_>>()
    };
    let timestamp: i64 = real
        .header("X-Hourglass-Timestamp")
        .unwrap()
        .parse()
        .unwrap();
    let mut tampered = real.body.clone();
    tampered.extend_from_slice(b" ");
    let answers = python_verify(&[
        (canonical(headers.clone()), real.body.clone(), 0),
        // The same delivery replayed ten minutes later.
        (canonical(headers.clone()), real.body.clone(), 600),
        // The body changed on the way.
        (canonical(headers.clone()), tampered, 0),
        // A fresh timestamp pasted onto the old signature.
        (
            canonical(with("X-Hourglass-Timestamp", &(timestamp + 5).to_string())),
            real.body.clone(),
            0,
        ),
        // Unsigned.
        (
            canonical(with("X-Hourglass-Signature", "")),
            real.body.clone(),
            0,
        ),
    ]);
    assert_eq!(answers, [true, false, false, false, false]);
}

#[test]
fn a_retried_delivery_keeps_its_key_and_is_signed_anew() {
    // The sink answers 503 (Retry-After: 1) to the first attempt.
    let hooks = WebhookReceiver::start_failing_first(1);
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    // 23 h 30 min old: the 1 h point has passed.
    deliver_mail(&mail, &buyer_mail(23 * 3600 + 1800));
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[clock]
window = "24h"
thresholds = ["1h"]

[[instances]]
name = "amazon-de"
type = "amazon"
schedule = "* * * * * *"
[instances.maildir]
path = "{mail}"
own_addresses = ["seller@shop.example"]

[[alerts.sinks]]
name = "hook"
type = "webhook"
url = "{url}"
secret = "env:HG_HOOK_SECRET"
"#,
            mail = mail.display(),
            url = hooks.url("/hook"),
        ),
    );
    app.env.push(("HG_HOOK_SECRET".into(), HOOK_SECRET.into()));
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(60), || hooks.received().len() >= 2)
        .unwrap_or_else(|_| panic!("no retry; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
    let got = hooks.received();
    assert_eq!(got.len(), 2, "one failed attempt, one retry: {got:?}");
    let key = |r: &common::Received| r.header("X-Hourglass-Delivery").map(str::to_owned);
    assert!(key(&got[0]).is_some());
    assert_eq!(key(&got[0]), key(&got[1]), "the retry carries the same key");
    assert!(got.iter().all(verify), "each attempt is signed: {got:?}");
}
