//! Several daemons on one PostgreSQL store: the instances are shared
//! through leases, a daemon that dies or hangs loses its instances to the
//! others, and nothing is stored, sent or alerted twice. SQLite stays one
//! daemon per file.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{wait_until, Daemon, TestApp, WebhookReceiver};
use hourglass_testsupport::mockplatform::MockPlatform;
use serde_json::Value;
use sqlx::Row;

const INSTANCES: usize = 20;
/// `[daemon] lease`: short, so that takeovers happen within the test.
const LEASE: Duration = Duration::from_secs(2);

fn config(mock: &MockPlatform, hooks: &WebhookReceiver) -> String {
    let mut text = format!(
        r#"[clock]
window = "6s"
thresholds = ["3s"]

[daemon]
lease = "{lease}s"
min_backoff = "200ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[outbox]
lease = "2s"
poll_interval = "100ms"

[[alerts.sinks]]
name = "agents"
type = "webhook"
url = "{hook}"
format = "json"

[[alerts.routes]]
sinks = ["agents"]
"#,
        lease = LEASE.as_secs(),
        hook = hooks.url("/agents"),
    );
    for i in 0..INSTANCES {
        text.push_str(&format!(
            r#"
[[instances]]
name = "shop-{i:02}"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "amazon"
per_poll = 1
threads = 2
api_url = "{url}"
"#,
            url = mock.url()
        ));
    }
    text
}

/// `status --json`.
fn status(app: &TestApp) -> Value {
    app.json(&["status", "--json"])
}

fn daemon_entry(status: &Value, pid: u32) -> Option<Value> {
    status["daemons"]
        .as_array()?
        .iter()
        .find(|d| d["pid"] == pid)
        .cloned()
}

/// Each instance's last poll, from `connectors list --json`.
fn last_polls(app: &TestApp) -> HashMap<String, Option<DateTime<Utc>>> {
    app.json(&["connectors", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["last_poll_at"]
                    .as_str()
                    .map(|t| t.parse::<DateTime<Utc>>().unwrap()),
            )
        })
        .collect()
}

/// Waits until every instance was polled after `since`; returns how long
/// that took from `started`.
fn wait_all_polled_after(app: &TestApp, since: DateTime<Utc>, started: Instant) -> Duration {
    wait_until(Duration::from_secs(60), || {
        let polls = last_polls(app);
        polls.len() == INSTANCES && polls.values().all(|p| p.is_some_and(|p| p > since))
    })
    .unwrap_or_else(|_| panic!("not every instance was polled again: {:?}", last_polls(app)));
    started.elapsed()
}

fn queue_replies(app: &TestApp, threads: &[i64], round: usize, queued: &mut Vec<(i64, String)>) {
    for (n, id) in threads
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 4 == round % 4)
    {
        let v = app.json(&[
            "reply",
            &id.to_string(),
            "--body",
            &format!("Round {round}, reply {n}: on its way."),
            "--json",
        ]);
        queued.push((*id, v["id"].as_str().unwrap().to_owned()));
    }
}

#[test]
fn three_daemons_share_postgres_through_kill_and_stop() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("scaleout").unwrap();
    let mock = MockPlatform::start(None).unwrap();
    let hooks = WebhookReceiver::start();
    let app = TestApp::new(Some(&url), &config(&mock, &hooks));
    let mut daemons: Vec<Daemon> = (0..3).map(|_| app.spawn_daemon()).collect();
    for d in &daemons {
        d.wait_for_log("hourglass is running.", Duration::from_secs(30));
    }

    // Every instance leased, a third each (7, 7, 6).
    wait_until(Duration::from_secs(60), || {
        let s = status(&app);
        let mut counts: Vec<usize> = daemons
            .iter()
            .filter_map(|d| daemon_entry(&s, d.child.id()))
            .map(|d| d["leases"].as_array().unwrap().len())
            .collect();
        counts.sort();
        counts == [6, 7, 7]
    })
    .unwrap_or_else(|_| panic!("leases never spread evenly: {}", status(&app)));

    // Threads exist on every instance; replies start flowing.
    wait_until(Duration::from_secs(60), || {
        app.json(&["threads", "--json"]).as_array().unwrap().len() == INSTANCES * 2
    })
    .unwrap_or_else(|_| panic!("threads missing: {}", app.json(&["threads", "--json"])));
    let threads: Vec<i64> = app
        .json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    let mut queued = Vec::new();
    queue_replies(&app, &threads, 0, &mut queued);

    // kill -9 one daemon: its instances are polled again by the others.
    let killed_pid = daemons[0].child.id();
    daemons[0].signal("KILL");
    let killed_at = Utc::now();
    let took = wait_all_polled_after(&app, killed_at, Instant::now());
    eprintln!("after kill -9: every instance polled again within {took:?} (lease {LEASE:?})");
    queue_replies(&app, &threads, 1, &mut queued);

    // SIGSTOP another for twice the lease: it hangs with its leases.
    let stopped_pid = daemons[1].child.id();
    daemons[1].signal("STOP");
    let stopped_at = Utc::now();
    let stop_started = Instant::now();
    let took = wait_all_polled_after(&app, stopped_at, stop_started);
    eprintln!("after SIGSTOP: every instance polled again within {took:?} (lease {LEASE:?})");
    queue_replies(&app, &threads, 2, &mut queued);
    // The scenario, not a wait for a condition: it stays stopped for twice
    // the lease in all.
    std::thread::sleep((2 * LEASE).saturating_sub(stop_started.elapsed()));
    daemons[1].signal("CONT");
    queue_replies(&app, &threads, 3, &mut queued);

    // The hung daemon learns that it lost its leases and commits nothing
    // under them; then the two live daemons share the instances again.
    daemons[1].wait_for_log(
        "Another daemon took this instance over",
        Duration::from_secs(30),
    );
    wait_until(Duration::from_secs(60), || {
        let s = status(&app);
        let counts: Vec<usize> = [&daemons[1], &daemons[2]]
            .iter()
            .filter_map(|d| daemon_entry(&s, d.child.id()))
            .filter(|d| d["alive"] == true)
            .map(|d| d["leases"].as_array().unwrap().len())
            .collect();
        counts == [10, 10]
    })
    .unwrap_or_else(|_| panic!("leases never moved back: {}", status(&app)));
    let s = status(&app);
    let killed = daemon_entry(&s, killed_pid).expect("the killed daemon is listed");
    assert_eq!(killed["alive"], false, "{s}");
    assert_eq!(killed["leases"], serde_json::json!([]), "{s}");
    let leases = s["leases"].as_array().unwrap();
    assert_eq!(leases.len(), INSTANCES, "{s}");
    assert!(leases.iter().all(|l| l["held"] == true), "{s}");
    assert!(
        daemon_entry(&s, stopped_pid).unwrap()["heartbeat_at"].is_string(),
        "{s}"
    );

    // Every reply sent once, in the order written per thread.
    let keys: HashSet<&str> = queued.iter().map(|(_, id)| id.as_str()).collect();
    wait_until(Duration::from_secs(60), || {
        let sent = mock.counts_by_key();
        keys.iter().all(|k| sent.contains_key(*k))
    })
    .unwrap_or_else(|_| panic!("not every reply was sent: {:?}", mock.counts_by_key()));

    // Every instance keeps being polled after the turmoil.
    let settled = Utc::now();
    wait_all_polled_after(&app, settled, Instant::now());
    for d in &mut daemons[1..] {
        d.stop_cleanly();
    }
    // Both leavers gave their leases back.
    let s = status(&app);
    assert!(
        s["leases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["held"] == false),
        "{s}"
    );

    assert_eq!(mock.duplicates(), 0, "a reply was sent twice");
    let accepted = mock.accepted();
    assert_eq!(accepted.len(), queued.len());
    let order_of = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
    let mut by_to: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for a in &accepted {
        by_to.entry(a.to.clone()).or_default().push(a.key.as_str());
    }
    let mut by_thread: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (t, id) in &queued {
        by_thread.entry(*t).or_default().push(id.as_str());
    }
    let mut sent_orders: Vec<Vec<String>> = by_to.into_values().map(order_of).collect();
    let mut queued_orders: Vec<Vec<String>> = by_thread.into_values().map(order_of).collect();
    sent_orders.sort();
    queued_orders.sort();
    assert_eq!(
        sent_orders, queued_orders,
        "a thread's replies left out of order"
    );

    // No alert twice: one per thread, cycle and threshold.
    let alerts = hooks.received();
    assert!(!alerts.is_empty(), "no alert fired at all");
    let mut seen = HashSet::new();
    for a in &alerts {
        let v = a.json();
        let key = (
            v["thread_id"].as_i64().unwrap(),
            v["awaiting_since"].to_string(),
            v["threshold"].to_string(),
        );
        assert!(seen.insert(key.clone()), "alert fired twice: {key:?}");
    }

    // No message lost or stored twice: each instance has exactly the
    // simulated messages up to its cursor.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = hourglass::store::SqlStore::connect(&url, None, 1)
            .await
            .unwrap();
        let cursors: HashMap<String, i64> = sqlx::query("SELECT instance, value FROM cursors")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let v: String = r.get("value");
                (r.get("instance"), v.parse().unwrap())
            })
            .collect();
        assert_eq!(cursors.len(), INSTANCES);
        let rows =
            sqlx::query("SELECT instance, external_id FROM messages WHERE direction = 'inbound'")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let mut stored: HashMap<String, Vec<String>> = HashMap::new();
        for r in &rows {
            stored
                .entry(r.get("instance"))
                .or_default()
                .push(r.get("external_id"));
        }
        for (instance, cursor) in &cursors {
            let mut got = stored.remove(instance).unwrap_or_default();
            got.sort();
            let mut want: Vec<String> = (0..*cursor).map(|i| format!("sim-{i}")).collect();
            want.sort();
            assert_eq!(got, want, "{instance}: messages lost or stored twice");
        }
        store.close().await;
    });
}

#[test]
fn a_second_daemon_on_one_sqlite_file_is_refused() {
    let app = TestApp::new(
        None,
        "[[instances]]\nname = \"shop\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n",
    );
    let mut first = app.spawn_daemon();
    first.wait_for_log("hourglass is running.", Duration::from_secs(30));

    let second = app.run(&["run"]);
    assert_eq!(
        second.status.code(),
        Some(1),
        "the second daemon must not run"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("Another hourglass daemon is already running on the SQLite store")
            && err.contains("hourglass.db.lock"),
        "{err}"
    );

    // Commands still work beside the running daemon.
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["instance"], "shop", "{sync}");
    // The lone daemon holds its instance's lease.
    wait_until(Duration::from_secs(30), || {
        daemon_entry(&status(&app), first.child.id())
            .is_some_and(|d| d["alive"] == true && d["leases"] == serde_json::json!(["shop"]))
    })
    .unwrap_or_else(|_| panic!("{}", status(&app)));

    first.stop_cleanly();
    // Once it has stopped, a daemon starts again on the same file.
    let mut again = app.spawn_daemon();
    again.wait_for_log("hourglass is running.", Duration::from_secs(30));
    again.stop_cleanly();
}
