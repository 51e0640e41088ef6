//! Webhook intake through the real daemon, with the simulated connector in
//! webhook mode (HMAC-signed deliveries, a Meta-style handshake): forged
//! requests are refused and leave nothing, verified ones are durable
//! before the 200, and a kill -9 after the 200 loses nothing. Also
//! `/metrics` (checked by `promtool`) and its token.

mod common;

use std::time::Duration;

use common::http::{
    assert_error, base_url, client, get, post, token_env, AGENT, HTTP_CONFIG, METRICS,
};
use common::{wait_until, TestApp};
use hourglass_simulated::simulated_signature;
use serde_json::{json, Value};

const SECRET: &str = "whsec-test-7d1f";

fn app(extra: &str) -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            r#"
[[instances]]
name = "shop-chat"
type = "simulated"
schedule = "0 0 1 1 *"
[instances.simulated]
channel = "messenger"
per_poll = 0
webhook_secret = "env:TEST_WEBHOOK_SECRET"

[log]
level = "info,tower_http=debug"
{HTTP_CONFIG}{extra}"#
        ),
    );
    app.env = token_env();
    app.env.push(("TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    app
}

fn delivery(id: &str, buyer: &str, text: &str, hours_ago: i64) -> Vec<u8> {
    let sent_at = (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc3339();
    serde_json::to_vec(&json!({"messages": [
        {"id": id, "buyer": buyer, "name": format!("Buyer {buyer}"), "text": text, "sent_at": sent_at}
    ]}))
    .unwrap()
}

/// POSTs a body to the instance's webhook, signed with `secret`.
fn push(base: &str, body: &[u8], secret: Option<&str>) -> (u16, String) {
    let mut req = client()
        .post(format!("{base}/webhooks/shop-chat"))
        .body(body.to_vec());
    if let Some(s) = secret {
        req = req.header(
            "X-Simulated-Signature",
            format!("sha256={}", simulated_signature(s.as_bytes(), body)),
        );
    }
    let resp = req.send().unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

/// Counts in the daemon's store, read directly.
fn stored(app: &TestApp) -> (i64, i64, i64) {
    let url = format!("sqlite://{}/hourglass.db", app.path().display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = hourglass::store::SqlStore::connect(&url, None, 1)
            .await
            .unwrap();
        let one = |sql: &'static str| {
            let store = &store;
            async move {
                let row = sqlx_count(store, sql).await;
                row
            }
        };
        let events = one("SELECT COUNT(*) FROM webhook_events").await;
        let pending = one("SELECT COUNT(*) FROM webhook_events WHERE processed_at IS NULL").await;
        let messages = one("SELECT COUNT(*) FROM messages").await;
        store.close().await;
        (events, pending, messages)
    })
}

async fn sqlx_count(store: &hourglass::store::SqlStore, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

fn threads(base: &str) -> Vec<Value> {
    get(base, "/api/v1/threads", Some(AGENT))
        .1
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn forged_webhooks_leave_nothing_and_verified_ones_become_threads() {
    let app = app("");
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);

    // The subscription handshake echoes the challenge only with the right token.
    let hs = client().get(format!("{base}/webhooks/shop-chat?hub.mode=subscribe&hub.verify_token={SECRET}&hub.challenge=c-123")).send().unwrap();
    assert_eq!(hs.status().as_u16(), 200);
    assert_eq!(hs.text().unwrap(), "c-123");
    let bad = client().get(format!("{base}/webhooks/shop-chat?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=c-123")).send().unwrap();
    assert_eq!(bad.status().as_u16(), 401);

    // Forged: unsigned, signed with another secret, body changed after signing.
    let body = delivery("m-1", "nora", "Is my parcel on its way?", 1);
    assert_eq!(push(&base, &body, None).0, 401);
    assert_eq!(push(&base, &body, Some("not-the-secret")).0, 401);
    let sig = simulated_signature(SECRET.as_bytes(), &body);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let resp = client()
        .post(format!("{base}/webhooks/shop-chat"))
        .header("X-Simulated-Signature", format!("sha256={sig}"))
        .body(tampered)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(stored(&app), (0, 0, 0), "a forged request left a trace");
    assert!(daemon.log().contains("Refused a webhook request"));

    // Verified: durable when the 200 comes, then a thread.
    let (status, _) = push(&base, &body, Some(SECRET));
    assert_eq!(status, 200);
    assert_eq!(
        stored(&app).0,
        1,
        "the delivery was not stored before the 200"
    );
    wait_until(Duration::from_secs(10), || threads(&base).len() == 1)
        .expect("the pushed message never became a thread");
    let t = &threads(&base)[0];
    assert_eq!(t["customer"], "Buyer nora");
    assert_eq!(t["channel"], "messenger");
    assert_eq!(t["status"], "awaiting");

    // A redelivery adds nothing.
    assert_eq!(push(&base, &body, Some(SECRET)).0, 200);
    assert_eq!(stored(&app), (1, 0, 1));

    // An unreadable (but signed) delivery is quarantined with its bytes.
    assert_eq!(push(&base, b"{\"messages\": 42}", Some(SECRET)).0, 200);
    wait_until(Duration::from_secs(10), || {
        app.json(&["quarantine", "--json"])
            .as_array()
            .is_some_and(|q| q.len() == 1)
    })
    .expect("never quarantined");

    // Bodies over [http] max_body_bytes are refused before anything else.
    let huge = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(push(&base, &huge, Some(SECRET)).0, 413);

    // Unknown instance.
    assert_eq!(
        client()
            .post(format!("{base}/webhooks/nope"))
            .body("x")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    // Messenger's 24 h window: a reply to a customer who wrote 30 h ago is refused up front.
    assert_eq!(
        push(&base, &delivery("m-2", "olga", "Hello?", 30), Some(SECRET)).0,
        200
    );
    wait_until(Duration::from_secs(10), || threads(&base).len() == 2).unwrap();
    let olga = threads(&base)
        .into_iter()
        .find(|t| t["customer"] == "Buyer olga")
        .unwrap();
    let refused = post(
        &base,
        &format!("/api/v1/threads/{}/reply", olga["id"]),
        Some(AGENT),
        &[],
        &json!({"body": "Sorry for the wait"}),
    );
    assert_error(&refused, 422, "refused", "reply window closed");
    let show = get(
        &base,
        &format!("/api/v1/threads/{}", olga["id"]),
        Some(AGENT),
    )
    .1;
    assert_eq!(
        show["outbox"].as_array().unwrap().len(),
        0,
        "a refused reply was queued"
    );

    // Metrics: on loopback without a token; promtool accepts them.
    let (status, _) = get(&base, "/metrics", None);
    assert_eq!(status, 200);
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    promtool(&text);
    assert!(
        text.contains(r#"hourglass_threads{channel="messenger",status="awaiting"} 1"#)
            && text.contains(r#"hourglass_threads{channel="messenger",status="breached"} 1"#)
            && text.contains(r#"hourglass_threads{channel="messenger",status="snoozed"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"hourglass_webhook_requests_total{instance="shop-chat",outcome="rejected"} 4"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"hourglass_webhook_requests_total{instance="shop-chat",outcome="duplicate"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"hourglass_quarantined_items{instance="shop-chat"} 1"#),
        "{text}"
    );
    assert!(text.contains("hourglass_poll_duration_seconds"), "{text}");

    // Requests are logged, without the handshake's verify token or any
    // bearer token.
    let log = daemon.log();
    assert!(log.contains("/webhooks/shop-chat"), "{log}");
    assert!(
        !log.contains(SECRET) && !log.contains(AGENT),
        "a secret reached the log"
    );
    daemon.stop_cleanly();
}

fn promtool(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed: apt-get install prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_can_require_a_token() {
    let app = app("metrics_require_token = true\n");
    // `metrics_require_token` belongs to [http]: put it there.
    let text = std::fs::read_to_string(&app.config).unwrap();
    let text = text
        .replace("metrics_require_token = true\n", "")
        .replace("[http]\n", "[http]\nmetrics_require_token = true\n");
    std::fs::write(&app.config, text).unwrap();
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    assert_error(&get(&base, "/metrics", None), 401, "unauthorized", "Bearer");
    assert_error(
        &get(&base, "/metrics", Some(AGENT)),
        403,
        "forbidden",
        "metrics",
    );
    let resp = client()
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    promtool(&resp.text().unwrap());
    daemon.stop_cleanly();
}

/// The platform got its 200, then the daemon died (kill -9) before or
/// while processing: every acknowledged delivery is a message after the
/// restart, none twice.
#[test]
fn kill_9_after_the_200_loses_nothing() {
    let app = app("");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut caught_pending = false;
    for round in 0..5 {
        let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
        let base = base_url(&daemon);
        for i in 0..40 {
            let id = format!("r{round}-{i}");
            let body = delivery(&id, &format!("b{}", i % 7), "where is it?", 1);
            let (status, _) = push(&base, &body, Some(SECRET));
            assert_eq!(status, 200);
            acknowledged.push(id);
        }
        daemon.signal("KILL");
        daemon.wait_exit(Duration::from_secs(10));
        let (events, pending, _) = stored(&app);
        assert_eq!(
            events as usize,
            acknowledged.len(),
            "an acknowledged delivery is not in the store"
        );
        caught_pending |= pending > 0;
    }
    // Restart: everything acknowledged becomes a message, exactly once.
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    wait_until(Duration::from_secs(30), || stored(&app).1 == 0)
        .expect("deliveries left unprocessed");
    let (_, _, messages) = stored(&app);
    assert_eq!(messages as usize, acknowledged.len());
    let total: i64 = threads(&base)
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum();
    assert_eq!(total as usize, acknowledged.len());
    assert!(
        caught_pending,
        "no kill landed between a 200 and its processing; the test proved nothing"
    );
    daemon.stop_cleanly();
}
