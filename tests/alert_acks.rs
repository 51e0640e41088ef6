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
    // Whole seconds, as the spec below writes it.
    let end = (now + chrono::Duration::seconds(45))
        .with_nanosecond(0)
        .unwrap();
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

#[test]
fn the_telegram_alert_has_a_take_button_that_takes_the_thread() {
    let bot = hourglass_testsupport::telegram::MockBotApi::start("123:alert-bot").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mail = maildir(dir.path());
    deliver_mail(&mail, &buyer_mail(1, "Jana Novak", 23 * 3600 + 1800));
    let mut app = TestApp::new(
        None,
        &format!(
            r#"{}
[[alerts.sinks]]
name = "agents"
type = "telegram"
bot_token = "env:HG_ALERT_BOT"
chat_id = "-1001234567890"
api_url = "{}"
"#,
            instance(&mail),
            bot.url(),
        ),
    );
    app.env
        .push(("HG_ALERT_BOT".into(), "123:alert-bot".into()));
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(20), || !bot.sent().is_empty())
        .unwrap_or_else(|_| panic!("no Telegram alert; log:\n{}", daemon.log()));
    let alert = bot.sent()[0].clone();
    assert_eq!(alert.chat_id, -1001234567890);
    assert!(alert.text.contains("Jana Novak"), "{}", alert.text);
    let button = &alert.reply_markup.expect("an inline keyboard")["inline_keyboard"][0][0];
    assert_eq!(button["text"], "Take this thread");
    let data = button["callback_data"].as_str().unwrap().to_owned();
    let id = data.strip_prefix("take:").unwrap().to_owned();

    // A press from another chat is refused; one in the agents' chat takes it.
    bot.push_callback(-42, (77, "Mallory", "mallory"), alert.message_id, &data);
    bot.push_callback(-1001234567890, (5, "Ana", "ana_s"), alert.message_id, &data);
    wait_until(Duration::from_secs(20), || bot.answered().len() == 2)
        .unwrap_or_else(|_| panic!("presses not answered; log:\n{}", daemon.log()));
    let answers: Vec<String> = bot
        .answered()
        .into_iter()
        .map(|a| a.text.unwrap_or_default())
        .collect();
    assert!(
        answers[0].contains("only works in the agents' alert chat"),
        "{answers:?}"
    );
    assert!(
        answers[1].contains(&format!("Thread #{id} is yours, ana_s")),
        "{answers:?}"
    );
    daemon.stop_cleanly();
    let shown = app.json(&["show", &id, "--json"]);
    assert_eq!(shown["taken_by"], "ana_s", "{shown}");
}

#[test]
fn the_api_takes_a_thread_with_the_cli_shape() {
    use common::http::{assert_error, base_url, post, token_env, ADMIN, AGENT, HTTP_CONFIG};
    let dir = tempfile::tempdir().unwrap();
    let mail = maildir(dir.path());
    deliver_mail(&mail, &buyer_mail(1, "Jana Novak", 3600));
    let mut app = TestApp::new(None, &format!("{}{HTTP_CONFIG}", instance(&mail)));
    app.env.extend(token_env());
    let daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    wait_until(Duration::from_secs(20), || {
        app.json(&["threads", "--json"])
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .unwrap_or_else(|_| panic!("no thread; log:\n{}", daemon.log()));
    let id = app.json(&["threads", "--json"])[0]["id"].as_i64().unwrap();

    let path = format!("/api/v1/threads/{id}/ack");
    let (status, body) = post(&base, &path, Some(AGENT), &[], &serde_json::json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["taken_by"], "ana");
    assert_eq!(body["id"], id);
    // The same shape as the CLI's.
    let cli = app.json(&["threads", "--json"])[0].clone();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&body), keys(&cli));
    // The admin, later, sees who has it.
    let (status, body) = post(&base, &path, Some(ADMIN), &[], &serde_json::json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["taken_by"], "ana");
    let missing = post(
        &base,
        "/api/v1/threads/999/ack",
        Some(AGENT),
        &[],
        &serde_json::json!({}),
    );
    assert_error(&missing, 404, "not_found", "thread 999");
    let anonymous = post(&base, &path, None, &[], &serde_json::json!({}));
    assert_eq!(anonymous.0, 401);
}
