//! X direct messages through the real daemon, against the mock X API
//! (testsupport::x): X cannot be reached from here.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, TestApp};
use hourglass_testsupport::x::{conversation_id, MockX, SELLER_ID};
use serde_json::Value;

const REFRESH: &str = "xrt-configured-by-the-seller";
const KEY: &str = "a store key only this test knows";
const WAIT: Duration = Duration::from_secs(20);

const MIA: &str = "1700000000000000042";
const LEO: &str = "1400000000000000007";

/// A config polling every second (X's default is every 5 minutes).
fn app_with(mock: &MockX, extra: &str) -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[daemon]
min_backoff = "200ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[outbox]
lease = "2s"
poll_interval = "100ms"

[[instances]]
name = "shop-x"
type = "x"
schedule = "* * * * * *"
[instances.x]
api_url = "{url}"
token_url = "{url}/2/oauth2/token"
client_id = "aGVsbG8tY2xpZW50LWlk"
refresh_token = "env:HG_X_REFRESH"
user_id = "{SELLER_ID}"
{extra}
"#,
            url = mock.url()
        ),
    );
    // The store key goes in front of everything: `[store]` is the first table.
    let text = std::fs::read_to_string(&app.config).unwrap();
    let text = text.replacen(
        "[store]\n",
        "[store]\nsecret_key = \"env:HG_STORE_KEY\"\n",
        1,
    );
    std::fs::write(&app.config, text).unwrap();
    app.env.push(("HG_X_REFRESH".into(), REFRESH.into()));
    app.env.push(("HG_STORE_KEY".into(), KEY.into()));
    app
}

fn app(mock: &MockX) -> TestApp {
    app_with(mock, "")
}

fn threads(app: &TestApp) -> Vec<Value> {
    app.json(&["threads", "--json"]).as_array().unwrap().clone()
}

fn thread_of(app: &TestApp, customer: &str) -> Option<Value> {
    threads(app).into_iter().find(|t| t["customer"] == customer)
}

fn show(app: &TestApp, id: i64) -> Value {
    app.json(&["show", &id.to_string(), "--json"])
}

fn texts(app: &TestApp, customer: &str) -> Vec<String> {
    let Some(t) = thread_of(app, customer) else {
        return Vec::new();
    };
    show(app, t["id"].as_i64().unwrap())["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

fn connector(app: &TestApp) -> Value {
    app.json(&["connectors", "list", "--json"])[0].clone()
}

fn wait_texts(app: &TestApp, daemon: &Daemon, customer: &str, n: usize) {
    wait_until(WAIT, || texts(app, customer).len() >= n).unwrap_or_else(|_| {
        panic!(
            "{customer}: {:?}, wanted {n}; log:\n{}",
            texts(app, customer),
            daemon.log()
        )
    });
}

#[test]
fn paging_across_three_pages_stops_at_the_stored_event() {
    let mock = MockX::start(REFRESH).unwrap();
    for i in 1..=5 {
        mock.push_dm(MIA, "Mia Chen", &format!("Question {i}"));
    }
    mock.push_seller_dm(MIA, "Answered from the X app");
    let app = app_with(&mock, "page_size = 2");
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Mia Chen", 6);

    // Six events at two a page: three pages, each asked for once.
    let first = mock.dm_event_calls();
    assert_eq!(first.len(), 3, "{first:#?}");
    assert!(!first[0].query.contains_key("pagination_token"));
    assert!(first[1].query.contains_key("pagination_token"));
    assert!(first[2].query.contains_key("pagination_token"));
    assert_eq!(first[0].query["event_types"], "MessageCreate");
    assert_eq!(first[0].query["max_results"], "2");
    let read: usize = first.iter().map(|c| c.returned.len()).sum();
    assert_eq!(read, 6, "no event read twice");

    let t = thread_of(&app, "Mia Chen").unwrap();
    assert_eq!(t["channel"], "x");
    assert_eq!(
        t["status"], "answered",
        "the seller's DM from X is outbound"
    );
    let detail = show(&app, t["id"].as_i64().unwrap());
    let messages = detail["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6);
    let from_x = messages
        .iter()
        .find(|m| m["text"] == "Answered from the X app")
        .unwrap();
    assert_eq!(from_x["direction"], "outbound");
    assert!(messages
        .iter()
        .filter(|m| m["text"] != "Answered from the X app")
        .all(|m| m["direction"] == "inbound"));

    // One new question: the next poll reads one page and stops at the
    // newest stored event, every later poll reads the same one page.
    let before = mock.dm_event_calls().len();
    mock.push_dm(MIA, "Mia Chen", "One more thing");
    wait_texts(&app, &daemon, "Mia Chen", 7);
    wait_until(WAIT, || mock.dm_event_calls().len() >= before + 2).unwrap();
    daemon.stop_cleanly();
    let later = &mock.dm_event_calls()[before..];
    for c in later {
        assert!(
            !c.query.contains_key("pagination_token"),
            "read past the stored event: {c:#?}"
        );
    }
    assert_eq!(thread_of(&app, "Mia Chen").unwrap()["status"], "awaiting");
    assert_eq!(texts(&app, "Mia Chen").len(), 7, "each event once");
}

#[test]
fn the_rotated_refresh_token_survives_a_restart() {
    let mock = MockX::start(REFRESH).unwrap();
    mock.push_dm(LEO, "Leo Park", "Is the blue one back?");
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Leo Park", 1);
    daemon.stop_cleanly();
    assert_eq!(mock.refreshes(), 1);
    let rotated = mock.current_refresh_token();
    assert_ne!(rotated, REFRESH);
    let log = daemon.log();
    assert!(
        !log.contains(&rotated) && !log.contains(REFRESH),
        "a token leaked:\n{log}"
    );
    // Kept sealed: the store file never holds the token itself.
    let db = std::fs::read(app.path().join("hourglass.db")).unwrap();
    let plain = rotated.as_bytes();
    assert!(
        !db.windows(plain.len()).any(|w| w == plain),
        "the refresh token is stored in clear"
    );

    // The access token has expired meanwhile, and the configured refresh
    // token is dead: only the kept one can renew it.
    mock.expire_access_tokens();
    mock.push_dm(LEO, "Leo Park", "Hello?");
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Leo Park", 2);
    daemon.stop_cleanly();
    assert_eq!(mock.refreshes(), 2);
    assert_eq!(connector(&app)["state"], "ok");

    // The same store opened with another key cannot use it, and says so.
    let mut other = app_with(&mock, "");
    other.config = app.config.clone();
    other.env.retain(|(k, _)| k != "HG_STORE_KEY");
    other
        .env
        .push(("HG_STORE_KEY".into(), "another key".into()));
    mock.expire_access_tokens();
    let out = other.run(&["sync", "--once", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = v[0]["error"].as_str().unwrap();
    assert!(error.contains("secret_key"), "{v}");
    assert_eq!(
        mock.refreshes(),
        2,
        "nothing was spent on a key that cannot work"
    );
}

#[test]
fn without_a_store_key_the_configured_token_is_never_spent() {
    let mock = MockX::start(REFRESH).unwrap();
    let app = app(&mock);
    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        text.replace("secret_key = \"env:HG_STORE_KEY\"\n", ""),
    )
    .unwrap();
    let out = app.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hourglass.toml:"), "{err}");
    assert!(err.contains("[store] secret_key"), "{err}");
    assert_eq!(mock.refreshes(), 0);
}

#[test]
fn the_read_budget_stops_polling_and_alerts_once() {
    let mock = MockX::start(REFRESH).unwrap();
    for i in 1..=5 {
        mock.push_dm(MIA, "Mia Chen", &format!("Message {i}"));
    }
    let app = app_with(&mock, "daily_read_budget = 3\npage_size = 2");
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("read budget for today is spent", WAIT);
    // Two pages: two events, then only the one the budget had left.
    let calls = mock.dm_event_calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[1].query["max_results"], "1");
    assert_eq!(texts(&app, "Mia Chen").len(), 3);

    // Polls go on (the instance is not failed) without reading.
    let seen = connector(&app)["last_poll_at"].clone();
    wait_until(WAIT, || connector(&app)["last_poll_at"] != seen).unwrap();
    let seen = connector(&app)["last_poll_at"].clone();
    wait_until(WAIT, || connector(&app)["last_poll_at"] != seen).unwrap();
    let c = connector(&app);
    assert_eq!(c["state"], "ok", "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .unwrap()
            .contains("daily_read_budget of 3"),
        "{c}"
    );
    assert_eq!(c["usage"]["events"], 3, "{c}");
    assert_eq!(c["usage"]["calls"], 2, "{c}");
    assert_eq!(mock.dm_event_calls().len(), 2, "read past the budget");
    daemon.stop_cleanly();
    let log = daemon.log();
    assert_eq!(
        log.matches("read budget for today is spent").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("read budget for today is nearly spent").count(),
        1,
        "{log}"
    );

    // A restart neither reads nor alerts again the same day.
    let mut daemon = app.spawn_daemon();
    let seen = connector(&app)["last_poll_at"].clone();
    wait_until(WAIT, || connector(&app)["last_poll_at"] != seen).unwrap();
    daemon.stop_cleanly();
    assert!(!daemon.log().contains("read budget for today is spent"));
    assert_eq!(mock.dm_event_calls().len(), 2);

    let text = app.run(&["connectors", "list"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("2 calls, 3 events read of a budget of 3"),
        "{text}"
    );
}

#[test]
fn a_429_waits_until_the_reset_time() {
    let mock = MockX::start(REFRESH).unwrap();
    mock.throttle_next(3);
    mock.push_dm(LEO, "Leo Park", "Anyone there?");
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Leo Park", 1);
    daemon.stop_cleanly();
    let calls = mock.dm_event_calls();
    assert_eq!(calls[0].status, 429);
    let reset_ms = calls[0].reset * 1000;
    assert_eq!(calls[1].status, 200);
    assert!(
        calls[1].at_ms >= reset_ms,
        "asked again {} ms before x-rate-limit-reset",
        reset_ms - calls[1].at_ms
    );
}

#[test]
fn an_empty_rate_limit_bucket_is_not_called_until_its_reset() {
    let mock = MockX::start(REFRESH).unwrap();
    mock.set_remaining(0, 3);
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || mock.dm_event_calls().len() >= 2)
        .unwrap_or_else(|_| panic!("no second poll; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
    let calls = mock.dm_event_calls();
    let reset_ms = calls[0].reset * 1000;
    assert!(
        calls[1].at_ms >= reset_ms,
        "called {} ms before the announced reset",
        reset_ms - calls[1].at_ms
    );
    assert!(
        calls.iter().all(|c| c.status == 200),
        "X never had to say 429"
    );
}

#[test]
fn a_malformed_page_is_retried_and_nothing_is_lost() {
    let mock = MockX::start(REFRESH).unwrap();
    mock.push_dm(MIA, "Mia Chen", "Hi");
    mock.garbage(1);
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Mia Chen", 1);
    daemon.stop_cleanly();
    assert!(
        daemon.log().contains("not the documented JSON"),
        "{}",
        daemon.log()
    );
    assert_eq!(texts(&app, "Mia Chen"), vec!["Hi".to_owned()]);
}

#[test]
fn a_reply_is_sent_to_the_conversation_and_long_ones_are_refused() {
    let mock = MockX::start(REFRESH).unwrap();
    mock.push_dm(LEO, "Leo Park", "Do you ship to Norway?");
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Leo Park", 1);
    let id = thread_of(&app, "Leo Park").unwrap()["id"].as_i64().unwrap();

    let long = "x".repeat(10_001);
    let out = app.run(&["reply", &id.to_string(), "--body", &long]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10000"), "{err}");

    let r = app.json(&[
        "reply",
        &id.to_string(),
        "--body",
        "Yes, in 3 days.",
        "--json",
    ]);
    let rid = r["id"].as_str().unwrap().to_owned();
    wait_until(WAIT, || {
        show(&app, id)["outbox"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == rid.as_str() && o["state"] == "sent")
    })
    .unwrap_or_else(|_| panic!("reply not sent; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
    let sent = mock.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].conversation, conversation_id(LEO, SELLER_ID));
    assert_eq!(sent[0].text, "Yes, in 3 days.");
    assert_eq!(thread_of(&app, "Leo Park").unwrap()["status"], "answered");
}

#[test]
fn a_second_process_on_the_store_does_not_lock_the_daemon_out() {
    let mock = MockX::start(REFRESH).unwrap();
    mock.push_dm(LEO, "Leo Park", "First");
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    wait_texts(&app, &daemon, "Leo Park", 1);
    // `sync --once` renews with the kept token, and X rotates it again:
    // the token the daemon holds in memory is now spent.
    let out = app.run(&["sync", "--once", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mock.refreshes(), 2);
    mock.expire_access_tokens();
    mock.push_dm(LEO, "Leo Park", "Second");
    wait_texts(&app, &daemon, "Leo Park", 2);
    daemon.stop_cleanly();
    assert_eq!(mock.refreshes(), 3);
    assert_eq!(connector(&app)["state"], "ok");
}
