//! The silent-channel watchdog through the real daemon: of two instances
//! with four weeks of history, the one that stopped delivering alerts the
//! admin once, with what to check; the one in its usual lull does not.

mod common;

use std::time::Duration;

use chrono::{Datelike, TimeZone, Timelike, Utc};
use common::{wait_until, TestApp, WebhookReceiver};
use hourglass::store::{IngestStore, InstanceStore};
use hourglass_connector::{Batch, Direction, Message};

fn hour_of_week(t: chrono::DateTime<Utc>) -> i64 {
    i64::from(t.weekday().num_days_from_monday()) * 24 + i64::from(t.hour())
}

/// Hourly buyer messages over the last 29 days, leaving out the hours for
/// which `skip` says so.
fn history(skip: impl Fn(chrono::DateTime<Utc>) -> bool) -> Batch {
    let now = Utc::now();
    let mut batch = Batch::default();
    let first = now.timestamp() / 3600 - 29 * 24;
    for h in first..now.timestamp() / 3600 {
        let at = Utc.timestamp_opt(h * 3600 + 600, 0).unwrap();
        if at > now || skip(at) {
            continue;
        }
        batch.messages.push(Message::new(
            format!("m{h}"),
            format!("buyer-{}", h % 7),
            Direction::Inbound,
            at,
            "Where is my parcel?",
        ));
    }
    batch
}

#[test]
fn a_channel_that_stops_alerts_once_and_a_usual_lull_does_not() {
    let hooks = WebhookReceiver::start();
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[[instances]]
name = "stopped"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "amazon"
per_poll = 0

[[instances]]
name = "lull"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "amazon"
per_poll = 0

[[instances]]
name = "fresh"
type = "simulated"
schedule = "* * * * * *"
expect_within = "2h"
[instances.simulated]
channel = "ebay"
per_poll = 0

[alerts.watchdog]
expected_messages = 4.0
check_every = "3s"

[[alerts.sinks]]
name = "admin"
type = "webhook"
url = "{}"

[[alerts.routes]]
thresholds = ["silence"]
sinks = ["admin"]
"#,
            hooks.url("/admin")
        ),
    );
    app.env.push((
        "RUST_LOG".into(),
        "info,hourglass::alerts::silence=debug".into(),
    ));

    // Seed the store: "stopped" got a message every hour until 6 hours
    // ago; "lull" gets one every hour except in the hours of the week
    // from 10 hours ago to 2 hours ahead (its weekend, as it were), and
    // it is now 10 hours into that lull; "fresh" is two days old and
    // was last written to 3 hours ago, beyond its `expect_within`.
    let now = Utc::now();
    let stopped = history(|at| at > now - chrono::Duration::hours(6));
    let lull_start = hour_of_week(now - chrono::Duration::hours(10));
    let in_lull = |at: chrono::DateTime<Utc>| (hour_of_week(at) - lull_start).rem_euclid(168) < 12;
    let lull = history(in_lull);
    let fresh =
        history(|at| at < now - chrono::Duration::days(2) || at > now - chrono::Duration::hours(3));
    let config = hourglass::config::Config::load(&app.config).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        for (name, channel, batch) in [
            ("stopped", "amazon", &stopped),
            ("lull", "amazon", &lull),
            ("fresh", "ebay", &fresh),
        ] {
            store
                .register_instance(name, "simulated", channel)
                .await
                .unwrap();
            let clocking = hourglass::daemon::clocking_for(&config, name, channel);
            store.ingest(name, batch, &clocking).await.unwrap();
        }
    });

    let alerts = || {
        hooks
            .received()
            .into_iter()
            .map(|r| r.json())
            .collect::<Vec<_>>()
    };
    let daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(30), || alerts().len() >= 2)
        .unwrap_or_else(|_| panic!("no silence alerts; log:\n{}", daemon.log()));
    // More passes: still one alert per silence, none for the lull.
    let passes = daemon.log().matches("Watchdog pass done.").count();
    daemon.wait_for_log_count("Watchdog pass done.", passes + 3, Duration::from_secs(30));
    let mut got = alerts();
    got.sort_by_key(|a| a["instance"].as_str().unwrap().to_owned());
    let names: Vec<_> = got.iter().map(|a| a["instance"].clone()).collect();
    assert_eq!(names, ["fresh", "stopped"], "{got:?}");

    let stopped = &got[1];
    assert_eq!(stopped["kind"], "silence");
    // The last message came between 6 and 7 hours ago.
    let silent_for = stopped["silent_for"].as_str().unwrap();
    assert!(silent_for.starts_with("6h"), "{stopped}");
    // At least the configured level; how far above depends on the
    // minute of the hour the test runs in.
    assert!(
        stopped["expected_messages"].as_f64().unwrap() >= 4.0,
        "{stopped}"
    );
    assert!(
        stopped["polls"].as_str().unwrap().contains("polls succeed"),
        "{stopped}"
    );
    let text = stopped["text"].as_str().unwrap();
    assert!(
        text.starts_with("Silent: stopped (simulated) has received nothing for 6h"),
        "{text}"
    );
    assert!(text.contains("What to check:"), "{text}");
    let fresh = &got[0];
    assert!(
        fresh["usual"]
            .as_str()
            .unwrap()
            .contains("every 2h (expect_within)"),
        "{fresh}"
    );
    assert!(
        fresh["expected_messages"].is_null(),
        "no rhythm yet: {fresh}"
    );
}
