//! Resources running out or going away (issue #15, part 3): PostgreSQL
//! restarted under the daemon, SQLite on a full disk, a 60 MB message and
//! one with 5,000 attachments, and the wall clock jumping.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, TestApp};
use hourglass_testsupport::postgres::Postgres;

const WAIT: Duration = Duration::from_secs(60);

fn query_i64(app: &TestApp, sql: &str) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
    })
}

fn external_ids(app: &TestApp) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar::<_, String>(
            "SELECT external_id FROM messages WHERE direction = 'inbound' ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    })
}

fn inbound(app: &TestApp) -> i64 {
    query_i64(
        app,
        "SELECT COUNT(*) FROM messages WHERE direction = 'inbound'",
    )
}

/// The JSON log lines at WARN or ERROR from line `from` on.
fn problems(daemon: &Daemon, from: usize) -> Vec<String> {
    daemon
        .log()
        .lines()
        .skip(from)
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["level"] == "WARN" || v["level"] == "ERROR")
                .unwrap_or(true)
        })
        .map(str::to_owned)
        .collect()
}

/// Every simulated message `sim-0` .. `sim-{n-1}` stored exactly once.
fn assert_contiguous(ids: &[String]) {
    let mut seen: Vec<u64> = ids
        .iter()
        .map(|id| id.strip_prefix("sim-").unwrap().parse().unwrap())
        .collect();
    seen.sort_unstable();
    let expected: Vec<u64> = (0..seen.len() as u64).collect();
    assert_eq!(seen, expected, "a message lost or stored twice");
}

fn reply_and_wait_sent(app: &TestApp, daemon: &Daemon, body: &str) {
    let threads = app.json(&["threads", "--json"]);
    let thread = threads.as_array().unwrap()[0]["id"].to_string();
    let queued = app.json(&["reply", &thread, "--body", body, "--json"]);
    assert_eq!(queued["state"], "queued", "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_until(WAIT, || {
        app.json(&["show", &thread, "--json"])["outbox"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == id.as_str() && o["state"] == "sent")
    })
    .unwrap_or_else(|_| panic!("reply {id} never sent; log:\n{}", daemon.log()));
}

#[test]
fn postgres_restarted_mid_run_the_daemon_reconnects_and_loses_nothing() {
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("restart").unwrap();
    let app = TestApp::new(
        Some(&url),
        r#"[daemon]
min_backoff = "100ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[[instances]]
name = "shop"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "ebay"
per_poll = 1
threads = 3
"#,
    );
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    wait_until(WAIT, || inbound(&app) >= 3)
        .unwrap_or_else(|_| panic!("no ingest; log:\n{}", daemon.log()));
    reply_and_wait_sent(&app, &daemon, "Before the restart.");
    assert_eq!(problems(&daemon, 0), Vec::<String>::new());

    // The operator restarts PostgreSQL: while it is down the daemon says
    // so, and keeps running.
    let before = inbound(&app);
    let lines_before = daemon.log().lines().count();
    pg.stop().unwrap();
    wait_until(WAIT, || problems(&daemon, lines_before).len() >= 2)
        .unwrap_or_else(|_| panic!("the outage went unnoticed; log:\n{}", daemon.log()));
    assert!(daemon.is_running(), "exited; log:\n{}", daemon.log());
    pg.restart().unwrap();

    // Back: ingest and the outbox go on, and from the first message
    // stored after the restart on, no more warnings.
    wait_until(WAIT, || inbound(&app) > before)
        .unwrap_or_else(|_| panic!("no ingest after the restart; log:\n{}", daemon.log()));
    let lines_back = daemon.log().lines().count();
    let back = inbound(&app);
    wait_until(WAIT, || inbound(&app) >= back + 3)
        .unwrap_or_else(|_| panic!("ingest stalled; log:\n{}", daemon.log()));
    reply_and_wait_sent(&app, &daemon, "After the restart.");
    assert!(daemon.is_running(), "exited; log:\n{}", daemon.log());
    daemon.stop_cleanly();
    assert_eq!(
        problems(&daemon, lines_back),
        Vec::<String>::new(),
        "warnings after the store came back"
    );
    assert_contiguous(&external_ids(&app));
}
