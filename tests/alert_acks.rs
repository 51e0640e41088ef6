//! Acknowledged alerts and quiet hours, through the real daemon: a thread
//! an agent takes does not escalate at its breach; a threshold alert in a
//! route's quiet hours is held in the store (across a SIGKILL) and arrives
//! in one summary when they end, while a breach does not wait.

mod common;

use std::time::Duration;

use chrono::{Timelike, Utc};
use common::{deliver_mail, wait_until, TestApp, WebhookReceiver};

fn buyer_mail(n: u32, name: &str, seconds_ago: i64) -> String {
    let date = (Utc::now() - chrono::Duration::seconds(seconds_ago)).to_rfc2822();
    format!(
        "From: \"{name} - Amazon Marketplace\" <buyer{n}@marketplace.amazon.de>\r\n\
         To: seller@shop.example\r\n\
         Subject: Inquiry from Amazon customer {name} (Order: 302-765432{n}-1234567)\r\n\
         Date: {date}\r\n\
         Message-ID: <ack-test-{n}@email.amazonses.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         ------------- Begin message -------------\r\n\r\n\
         Where is my parcel?\r\n\r\n\
         ------------- End message -------------\r\n"
    )
}

fn maildir(app_dir: &std::path::Path) -> std::path::PathBuf {
    let mail = app_dir.join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
        std::fs::create_dir_all(mail.join(sub)).unwrap();
    }
    mail
}

fn instance(mail: &std::path::Path) -> String {
    format!(
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
path = "{}"
own_addresses = ["seller@shop.example"]
"#,
        mail.display()
    )
}

#[test]
fn a_taken_thread_does_not_escalate_at_its_breach() {
    let hooks = WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = maildir(dir.path());
    // The 1 h point has passed; the breach comes in 30 s.
    deliver_mail(&mail, &buyer_mail(1, "Jana Novak", 24 * 3600 - 30));
    let app = TestApp::new(
        None,
        &format!(
            r#"{}
[http]
public_url = "https://hg.example.com"

[[alerts.sinks]]
name = "agents"
type = "webhook"
url = "{}"

[[alerts.sinks]]
name = "managers"
type = "webhook"
url = "{}"

[[alerts.routes]]
sinks = ["agents"]

[[alerts.routes]]
thresholds = ["breach"]
sinks = ["managers"]
"#,
            instance(&mail),
            hooks.url("/agents"),
            hooks.url("/managers"),
        ),
    );
    let to = |path: &str| {
        hooks
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.json())
            .collect::<Vec<_>>()
    };
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(20), || !to("/agents").is_empty())
        .unwrap_or_else(|_| panic!("no 1 h alert; log:\n{}", daemon.log()));
    let alert = to("/agents")[0].clone();
    assert_eq!(alert["threshold"], "1h");
    let id = alert["thread_id"].as_i64().unwrap();
    assert_eq!(
        alert["link"],
        format!("https://hg.example.com/threads/{id}?ack=1"),
        "the alert leads to the thread in the web inbox"
    );

    // Ana takes it from the command line; Bruno, later, sees she has it.
    let taken = app.json(&["ack", &id.to_string(), "--as", "ana", "--json"]);
    assert_eq!(taken["taken_by"], "ana");
    let out = app.run(&["ack", &id.to_string(), "--as", "bruno"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("was taken already by ana"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let shown = app.json(&["show", &id.to_string(), "--json"]);
    assert_eq!(shown["taken_by"], "ana", "{shown}");
    let listed = app.json(&["threads", "--json"]);
    assert_eq!(listed[0]["taken_by"], "ana", "{listed}");

    // The breach point comes and passes: recorded, sent to nobody.
    daemon.wait_for_log(
        "Alert not sent: the thread is taken.",
        Duration::from_secs(60),
    );
    daemon.stop_cleanly();
    assert!(
        to("/managers").is_empty(),
        "escalated: {:?}",
        to("/managers")
    );
    let thresholds: Vec<_> = to("/agents")
        .iter()
        .map(|a| a["threshold"].clone())
        .collect();
    assert_eq!(thresholds, ["1h"]);
    let shown = app.json(&["show", &id.to_string(), "--json"]);
    assert_eq!(shown["status"], "breached", "{shown}");

    // A thread that is not awaiting cannot be taken: a clear error.
    let out = app.run(&["ack", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Thread 999 not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Held deliveries in the store.
fn held_rows(app: &TestApp) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM alerts WHERE held_until IS NOT NULL AND state = 'queued'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    })
}

#[test]
fn quiet_hours_hold_threshold_alerts_for_one_summary_but_not_a_breach() {
    let hooks = WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = maildir(dir.path());
    deliver_mail(&mail, &buyer_mail(1, "Anna Lind", 23 * 3600 + 1800));
    deliver_mail(&mail, &buyer_mail(2, "Boris Petrov", 23 * 3600 + 2400));
    deliver_mail(&mail, &buyer_mail(3, "Chloe Martin", 25 * 3600));
    // Quiet hours (UTC) that began an hour ago and end in 45 s: the
    // clock cannot be moved, so the span is placed around now. The pure
    // table in src/alerts/quiet.rs covers 02:00 to 07:00 in Berlin.
    let now = Utc::now();
    let start = now - chrono::Duration::hours(1);
    let end = now + chrono::Duration::seconds(45);
    let hms =
        |t: chrono::DateTime<Utc>| format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let app = TestApp::new(
        None,
        &format!(
            r#"{}
[[alerts.sinks]]
name = "agents"
type = "webhook"
url = "{}"

[[alerts.routes]]
sinks = ["agents"]
quiet = "{}-{}"
timezone = "UTC"
except = ["breach"]
"#,
            instance(&mail),
            hooks.url("/agents"),
            hms(start),
            hms(end),
        ),
    );
    let got = || {
        hooks
            .received()
            .into_iter()
            .map(|r| r.json())
            .collect::<Vec<_>>()
    };
    let mut daemon = app.spawn_daemon();

    // The breach pages at once.
    wait_until(Duration::from_secs(20), || !got().is_empty())
        .unwrap_or_else(|_| panic!("no breach alert; log:\n{}", daemon.log()));
    let first = got();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["threshold"], "breach");
    assert_eq!(first[0]["customer"], "Chloe Martin");
    // The two 1 h alerts wait in the store, and survive a crash.
    wait_until(Duration::from_secs(10), || held_rows(&app) == 2)
        .unwrap_or_else(|_| panic!("not held; log:\n{}", daemon.log()));
    daemon.signal("KILL");
    daemon.wait_exit(Duration::from_secs(10));
    assert!(Utc::now() < end, "quiet hours ended before the check");
    assert_eq!(got().len(), 1, "a held alert went out during quiet hours");
    let mut daemon = app.spawn_daemon();

    // Quiet hours end: one summary with both.
    wait_until(Duration::from_secs(90), || got().len() >= 2)
        .unwrap_or_else(|_| panic!("no summary; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
    let all = got();
    assert_eq!(all.len(), 2, "{all:?}");
    let summary = &all[1];
    assert_eq!(summary["kind"], "summary", "{summary}");
    assert_eq!(summary["count"], 2);
    let text = summary["text"].as_str().unwrap();
    assert!(
        text.starts_with("Quiet hours ended: 2 alerts held"),
        "{text}"
    );
    assert!(
        text.contains("Anna Lind") && text.contains("Boris Petrov"),
        "{text}"
    );
    assert!(!text.contains("Chloe Martin"), "{text}");
    assert!(Utc::now() >= end);
    assert_eq!(held_rows(&app), 0);
}
