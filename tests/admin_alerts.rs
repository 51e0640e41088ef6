//! The admin's alert when a platform refuses an instance's credentials
//! (`ConnectorError::Auth`, whatever the platform): one alert per episode
//! through the configured sinks, not one per retry, not again after a
//! restart, again after the instance recovered and failed anew. The
//! instance is retried with backoff; the others go on.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, TestApp, WebhookReceiver};

const WAIT: Duration = Duration::from_secs(30);

fn config(hooks: &WebhookReceiver, broken_fails: bool) -> String {
    let fail = if broken_fails {
        "fail = \"auth\"\n"
    } else {
        ""
    };
    format!(
        r#"[daemon]
min_backoff = "100ms"
max_backoff = "300ms"
shutdown_timeout = "5s"
# On PostgreSQL the restarted daemon waits out the killed one's lease.
lease = "2s"

[[instances]]
name = "healthy"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "amazon"
per_poll = 1

[[instances]]
name = "broken"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "ebay"
{fail}
[[alerts.sinks]]
name = "admin"
type = "webhook"
url = "{admin}"
format = "json"

[[alerts.sinks]]
name = "managers"
type = "webhook"
url = "{managers}"
format = "slack"

[[alerts.routes]]
thresholds = ["auth"]
sinks = ["admin"]

[[alerts.routes]]
thresholds = ["breach"]
sinks = ["managers"]
"#,
        admin = hooks.url("/admin"),
        managers = hooks.url("/managers"),
    )
}

fn auth_alerts(hooks: &WebhookReceiver) -> Vec<serde_json::Value> {
    hooks
        .received()
        .into_iter()
        .filter(|r| r.path == "/admin")
        .map(|r| r.json())
        .collect()
}

fn instance(app: &TestApp, name: &str) -> serde_json::Value {
    let list = app.json(&["connectors", "list", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no instance {name} in {list}"))
}

/// Waits until this daemon has retried the refused instance `more` more
/// times (each retry after the alert logs that it was alerted already).
fn retried(daemon: &Daemon, more: usize) {
    const RETRY: &str = "Credentials still refused";
    let seen = daemon.log().matches(RETRY).count();
    daemon.wait_for_log_count(RETRY, seen + more, WAIT);
}

fn messages_of(app: &TestApp, name: &str) -> i64 {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["instance"] == name)
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}

fn set_config(app: &TestApp, url: &str, hooks: &WebhookReceiver, broken_fails: bool) {
    std::fs::write(
        &app.config,
        format!(
            "[store]\nurl = \"{url}\"\n\n{}",
            config(hooks, broken_fails)
        ),
    )
    .unwrap();
}

#[test]
fn refused_credentials_alert_the_admin_once_per_episode_on_sqlite() {
    refused_credentials_alert_the_admin_once_per_episode(None);
}

#[test]
fn refused_credentials_alert_the_admin_once_per_episode_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("admin_alerts").unwrap();
    refused_credentials_alert_the_admin_once_per_episode(Some(url));
}

fn refused_credentials_alert_the_admin_once_per_episode(store_url: Option<String>) {
    let hooks = WebhookReceiver::start();
    let app = TestApp::new(store_url.as_deref(), &config(&hooks, true));
    let url =
        store_url.unwrap_or_else(|| format!("sqlite://{}/hourglass.db", app.path().display()));

    // Refused on every poll: one alert, however often it is retried, and
    // the healthy instance goes on.
    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || !auth_alerts(&hooks).is_empty())
        .unwrap_or_else(|_| panic!("no admin alert; log:\n{}", daemon.log()));
    retried(&daemon, 3);
    let healthy = messages_of(&app, "healthy");
    wait_until(WAIT, || messages_of(&app, "healthy") > healthy)
        .unwrap_or_else(|_| panic!("the healthy instance stopped; log:\n{}", daemon.log()));
    let alerts = auth_alerts(&hooks);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["kind"], "auth");
    assert_eq!(alert["instance"], "broken");
    assert_eq!(alert["type"], "simulated");
    assert_eq!(
        alert["error"],
        "Authentication failed: simulated credentials refused"
    );
    assert!(
        alert["action"]
            .as_str()
            .unwrap()
            .contains("Renew the credentials of instance broken"),
        "{alert}"
    );
    assert!(
        hooks.received().iter().all(|r| r.path == "/admin"),
        "only the route with thresholds = [\"auth\"] gets it"
    );
    let broken = instance(&app, "broken");
    assert_eq!(broken["state"], "auth_failed", "{broken}");
    assert!(broken["auth_alerted_at"].is_string(), "{broken}");
    let listed = String::from_utf8(app.run(&["connectors", "list"]).stdout).unwrap();
    assert!(listed.contains("[admin alerted "), "{listed}");
    let status = String::from_utf8(app.run(&["status"]).stdout).unwrap();
    assert!(
        status.contains("Credentials refused: broken (admin alerted "),
        "{status}"
    );

    // A crash and a restart: the episode goes on, no second alert.
    daemon.signal("KILL");
    daemon.wait_exit(WAIT);
    let mut daemon = app.spawn_daemon();
    retried(&daemon, 3);
    assert_eq!(auth_alerts(&hooks).len(), 1, "re-alerted after a restart");

    // Fixed: the instance recovers (same daemon, a reload) ...
    set_config(&app, &url, &hooks, false);
    daemon.signal("HUP");
    wait_until(WAIT, || {
        let b = instance(&app, "broken");
        b["state"] == "ok" && b["auth_alerted_at"].is_null()
    })
    .unwrap_or_else(|_| panic!("never recovered; log:\n{}", daemon.log()));
    // ... and a new refusal is a new episode: one more alert.
    set_config(&app, &url, &hooks, true);
    daemon.signal("HUP");
    wait_until(WAIT, || auth_alerts(&hooks).len() >= 2)
        .unwrap_or_else(|_| panic!("no alert for the new episode; log:\n{}", daemon.log()));
    retried(&daemon, 3);
    assert_eq!(auth_alerts(&hooks).len(), 2);
    daemon.stop_cleanly();
}
