//! The daemon as an admin runs it: the real binary, a config file on disk,
//! signals from outside.

mod common;

use std::time::Duration;

use common::{wait_until, TestApp};

fn two_instances(fail: &str) -> String {
    format!(
        r#"[daemon]
min_backoff = "200ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[[instances]]
name = "healthy"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "amazon"
per_poll = 2

[[instances]]
name = "broken"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "ebay"
fail = "{fail}"
"#
    )
}

fn message_total(app: &TestApp) -> i64 {
    let threads = app.json(&["threads", "--json"]);
    threads
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}

fn instance<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no instance {name} in {list}"))
}

fn failing_instance_backs_off_while_the_healthy_one_keeps_ingesting(app: &TestApp) {
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(20));
    let first = message_total(app);
    wait_until(Duration::from_secs(20), || message_total(app) > first + 4)
        .unwrap_or_else(|_| panic!("healthy instance stopped ingesting; log:\n{}", daemon.log()));
    wait_until(Duration::from_secs(20), || {
        let list = app.json(&["connectors", "list", "--json"]);
        instance(&list, "broken")["failures"].as_i64().unwrap() >= 3
    })
    .unwrap_or_else(|_| {
        panic!(
            "broken instance never failed 3 times; log:\n{}",
            daemon.log()
        )
    });

    let list = app.json(&["connectors", "list", "--json"]);
    let broken = instance(&list, "broken");
    assert_eq!(broken["state"], "backoff", "{broken}");
    assert_eq!(broken["last_error_kind"], "transient", "{broken}");
    assert!(broken["next_poll_at"].is_string(), "{broken}");
    let healthy = instance(&list, "healthy");
    assert_eq!(healthy["state"], "ok", "{healthy}");
    assert_eq!(healthy["failures"], 0);
    let log = daemon.log();
    assert!(log.contains("backing off"), "{log}");
    assert!(log.contains("broken"), "{log}");

    // Only the healthy instance's threads exist.
    let threads = app.json(&["threads", "--json"]);
    assert!(threads
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["instance"] == "healthy" && t["channel"] == "amazon"));

    daemon.stop_cleanly();
}

#[test]
fn one_failing_instance_does_not_hold_back_the_others_on_sqlite() {
    let app = TestApp::new(None, &two_instances("transient"));
    failing_instance_backs_off_while_the_healthy_one_keeps_ingesting(&app);
}

#[test]
fn one_failing_instance_does_not_hold_back_the_others_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("daemon").unwrap();
    let app = TestApp::new(Some(&url), &two_instances("transient"));
    failing_instance_backs_off_while_the_healthy_one_keeps_ingesting(&app);
}

#[test]
fn auth_failure_is_retried_with_backoff_and_shown_as_auth_failed() {
    let app = TestApp::new(None, &two_instances("auth"));
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Credentials refused", Duration::from_secs(20));
    let list = app.json(&["connectors", "list", "--json"]);
    assert_eq!(instance(&list, "broken")["state"], "auth_failed");
    // Retried (a renewed secret behind the same reference is picked up),
    // while the healthy instance goes on.
    let ingests = daemon.log().matches("Ingested new messages").count();
    wait_until(Duration::from_secs(20), || {
        let list = app.json(&["connectors", "list", "--json"]);
        instance(&list, "broken")["failures"].as_i64().unwrap() >= 3
    })
    .unwrap_or_else(|_| panic!("auth failure not retried; log:\n{}", daemon.log()));
    daemon.wait_for_log_count(
        "Ingested new messages",
        ingests + 2,
        Duration::from_secs(20),
    );
    let list = app.json(&["connectors", "list", "--json"]);
    let broken = instance(&list, "broken");
    assert_eq!(broken["state"], "auth_failed", "{broken}");
    assert_eq!(broken["last_error_kind"], "auth", "{broken}");
    daemon.signal("INT");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn unknown_key_is_reported_with_its_line_and_exit_code_2() {
    // The store section written by the harness takes lines 1-3.
    let app = TestApp::new(
        None,
        "[clock]\nwindow = \"24h\"\nthresholds = [\"1h\"]\n\n[[instances]]\nname = \"sim\"\ntype = \"simulated\"\nschedule = \"*/2 * * * *\"\ncolour = \"red\"\n",
    );
    let text = std::fs::read_to_string(&app.config).unwrap();
    assert_eq!(
        text.lines().nth(11),
        Some("colour = \"red\""),
        "test setup: key on line 12"
    );
    let out = app.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:12:1: unknown field `colour`", app.config.display());
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn secrets_never_show_up_in_any_output() {
    const SECRET: &str = "s3cr3t-Vault-Value-981";
    let app = {
        let mut app = TestApp::new(
            None,
            "[[alerts.sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret = \"env:HG_TEST_TOKEN\"\n\n[[instances]]\nname = \"sim\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n",
        );
        app.env.push(("HG_TEST_TOKEN".into(), SECRET.into()));
        app
    };
    let mut outputs = Vec::new();
    for args in [
        vec!["check-config"],
        vec!["sync", "--once", "--json"],
        vec!["threads", "--json"],
        vec!["connectors", "list", "--json"],
        vec!["show", "1", "--json"],
    ] {
        let out = app.run(&args);
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("hourglass is running", Duration::from_secs(20));
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(15));
    outputs.push(daemon.log());
    // A secret given as a value is refused without repeating it.
    std::fs::write(&app.config, format!("[[alerts.sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret = \"{SECRET}\"\n")).unwrap();
    let out = app.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    for o in &outputs {
        assert!(!o.contains(SECRET), "the secret leaked:\n{o}");
    }
    // A missing variable is named, not guessed at.
    let mut app2 = TestApp::new(
        None,
        "[[alerts.sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret = \"env:HG_TEST_TOKEN_MISSING\"\n",
    );
    app2.env.clear();
    let out = app2.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            ":8:10: alerts: sink \"hook\": environment variable HG_TEST_TOKEN_MISSING is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn sigterm_during_a_poll_exits_0_and_loses_nothing() {
    let app = TestApp::new(
        None,
        "[log]\nlevel = \"info,hourglass=debug\"\n\n[[instances]]\nname = \"slow\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n[instances.simulated]\nper_poll = 3\npoll_delay_ms = 3000\n",
    );
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(20));
    // The second poll has begun (it takes 3 s): stop inside it.
    daemon.wait_for_log_count("Polling.", 2, Duration::from_secs(20));
    daemon.stop_cleanly();
    let log = daemon.log();
    assert!(log.contains("Stopped."), "{log}");
    // The poll in flight was finished, not cut off: it committed after the
    // stop began.
    let stopping = log.find("Shutting down").unwrap();
    assert!(
        log[stopping..].contains("Ingested new messages"),
        "the poll in flight was not finished; log:\n{log}"
    );

    // Every message the cursor covers is in the store, and no more: the
    // cursor and the messages were committed together.
    let total = message_total(&app);
    assert!(total >= 6 && total % 3 == 0, "{total}");
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(
        sync[0]["messages"], 3,
        "the next poll continues where the last commit ended"
    );
    assert_eq!(message_total(&app), total + 3);
}

#[test]
fn sigterm_while_the_store_cannot_be_reached_yet_exits_0() {
    // A "database" that accepts connections and never answers: opening
    // the store waits (up to its 30 s acquire timeout).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://hourglass@127.0.0.1:{}/hourglass",
        silent.local_addr().unwrap().port()
    );
    let app = TestApp::new(
        Some(&url),
        "[[instances]]\nname = \"sim\"\ntype = \"simulated\"\n",
    );
    let mut daemon = app.spawn_daemon_unready(&[]);
    daemon.wait_for_log("Starting.", Duration::from_secs(20));
    assert!(daemon.is_running(), "{}", daemon.log());
    daemon.signal_during_startup("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("Stopped before startup finished."), "{log}");
    wait_until(Duration::from_secs(5), || {
        daemon.notices().contains(&"STOPPING=1".to_owned())
    })
    .unwrap_or_else(|_| panic!("no STOPPING=1: {:?}", daemon.notices()));
    assert!(!daemon.notices().contains(&"READY=1".to_owned()), "{log}");
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_config_running() {
    let app = TestApp::new(
        None,
        "[[instances]]\nname = \"sim\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n",
    );
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(20));
    let good = std::fs::read_to_string(&app.config).unwrap();

    std::fs::write(
        &app.config,
        format!("{good}\n[[instances]]\nname = \"sim2\"\ntipe = \"simulated\"\n"),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("keeping the running one", Duration::from_secs(10));
    assert!(
        daemon.log().contains("unknown field `tipe`"),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
    // The old generation keeps polling (the CLI cannot read the broken
    // file, so watch the daemon's own log).
    let ingests = || daemon.log().matches("Ingested new messages").count();
    let before = ingests();
    wait_until(Duration::from_secs(10), || ingests() > before + 1)
        .unwrap_or_else(|_| panic!("old config stopped polling; log:\n{}", daemon.log()));
    assert!(daemon.is_running());

    // A good file is applied: the new instance starts polling.
    std::fs::write(&app.config, format!("{good}\n[[instances]]\nname = \"sim2\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n")).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("Configuration reloaded", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), || {
        let list = app.json(&["connectors", "list", "--json"]);
        instance(&list, "sim2")["state"] == "ok"
    })
    .unwrap_or_else(|_| panic!("sim2 never polled; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
}

#[test]
fn migrate_creates_the_schema_once() {
    let app = TestApp::new(None, "");
    let first = app.json(&["migrate", "--json"]);
    let versions = first["versions"].as_array().unwrap().clone();
    assert!(versions.len() >= 2, "{first}");
    assert_eq!(
        first["applied"], first["versions"],
        "a fresh store gets every migration"
    );
    let again = app.json(&["migrate", "--json"]);
    assert_eq!(again["applied"], serde_json::json!([]), "{again}");
    assert_eq!(again["versions"].as_array().unwrap(), &versions);
}

#[test]
fn logs_can_be_json_lines() {
    let app = TestApp::new(
        None,
        "[[instances]]\nname = \"sim\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n",
    );
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    daemon.wait_for_log("Ingested new messages", Duration::from_secs(20));
    daemon.stop_cleanly();
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ingest = lines
        .iter()
        .find(|l| l["message"] == "Ingested new messages.")
        .unwrap();
    assert_eq!(ingest["instance"], "sim");
    assert_eq!(ingest["level"], "INFO");
    assert!(ingest["messages"].as_i64().unwrap() >= 1);
}
