//! Replies through the outbox, end to end: the real binary, a real store,
//! and a mock platform (the SaaS APIs cannot be reached from here) that
//! enforces a quota and records every message it accepts.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use common::{wait_until, TestApp};
use hourglass_testsupport::mockplatform::{MockPlatform, Quota};
use rand::Rng;
use serde_json::Value;

/// A simulated shop whose replies go to `mock`. `per_poll` new buyer
/// messages appear per poll, one per buyer (thread).
fn shop(mock: &MockPlatform, per_poll: u32, rate: &str, extra: &str) -> String {
    format!(
        r#"[daemon]
min_backoff = "200ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[outbox]
lease = "2s"
poll_interval = "100ms"
{extra}
[templates]
dir = "templates"

[[instances]]
name = "shop"
type = "simulated"
schedule = "0 0 1 1 *"
rate_limit = {rate}
[instances.simulated]
channel = "amazon"
per_poll = {per_poll}
threads = {per_poll}
api_url = "{url}"
"#,
        url = mock.url()
    )
}

/// Creates `threads` awaiting threads, then stops the simulation from adding
/// more (the daemon polls once at start): returns thread ids by customer.
fn seed(
    app: &TestApp,
    mock: &MockPlatform,
    threads: u32,
    rate: &str,
    extra: &str,
) -> HashMap<String, i64> {
    // Keep the harness's [store] section (SQLite or PostgreSQL).
    let text = std::fs::read_to_string(&app.config).unwrap();
    let store = text.split("\n\n").next().unwrap().to_owned();
    std::fs::write(
        &app.config,
        format!("{store}\n\n{}", shop(mock, threads, rate, extra)),
    )
    .unwrap();
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["messages"], threads, "{sync}");
    std::fs::write(
        &app.config,
        format!("{store}\n\n{}", shop(mock, 0, rate, extra)),
    )
    .unwrap();
    let list = app.json(&["threads", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["customer"].as_str().unwrap().to_owned(),
                t["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn new_app() -> TestApp {
    app_on(None)
}

fn app_on(store_url: Option<&str>) -> TestApp {
    let app = TestApp::new(store_url, "");
    std::fs::create_dir(app.path().join("templates")).unwrap();
    app
}

fn show(app: &TestApp, id: i64) -> Value {
    app.json(&["show", &id.to_string(), "--json"])
}

fn outbox_state(app: &TestApp, thread: i64, reply: &str) -> String {
    let detail = show(app, thread);
    detail["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == reply)
        .map(|o| o["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn reply(app: &TestApp, thread: i64, args: &[&str]) -> String {
    let mut all = vec!["reply".to_owned(), thread.to_string()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push("--json".into());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let v = app.json(&all);
    assert_eq!(v["state"], "queued", "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn wait_state(app: &TestApp, daemon: &common::Daemon, thread: i64, id: &str, state: &str) {
    wait_until(Duration::from_secs(20), || {
        outbox_state(app, thread, id) == state
    })
    .unwrap_or_else(|_| {
        panic!(
            "reply {id} never became {state}: {}\nlog:\n{}",
            show(app, thread),
            daemon.log()
        )
    });
}

const NO_LIMIT: &str = "{ per_second = 1000.0, burst = 10 }";

#[test]
fn a_reply_is_sent_by_the_daemon_and_stops_the_clock_only_then() {
    a_reply_is_sent_and_answers_its_thread(&new_app());
}

#[test]
fn a_reply_is_sent_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("outbox").unwrap();
    a_reply_is_sent_and_answers_its_thread(&app_on(Some(&url)));
}

fn a_reply_is_sent_and_answers_its_thread(app: &TestApp) {
    let mock = MockPlatform::start(None).unwrap();
    let threads = seed(app, &mock, 3, NO_LIMIT, "");
    let ana = threads["Ana Souza"];

    // Queued while no daemon runs: nothing is sent, the clock still runs.
    let id = reply(app, ana, &["--body", "Olá Ana, a encomenda já seguiu."]);
    assert_eq!(id.len(), 16, "{id}");
    let before = show(app, ana);
    assert_eq!(before["status"], "awaiting", "{before}");
    assert_eq!(before["outbox"][0]["state"], "queued");
    assert!(before["due_at"].is_string());
    assert!(mock.accepted().is_empty());

    let mut daemon = app.spawn_daemon();
    wait_state(app, &daemon, ana, &id, "sent");
    daemon.stop_cleanly();

    let sent = mock.accepted();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].key, id, "the outbox id is the idempotency key");
    assert_eq!(sent[0].to, "buyer0@shop.sim");
    assert_eq!(
        sent[0].subject.as_deref(),
        Some("Re: Question from Ana Souza")
    );
    assert_eq!(sent[0].text, "Olá Ana, a encomenda já seguiu.");

    let after = show(app, ana);
    assert_eq!(after["status"], "answered", "{after}");
    assert!(after["due_at"].is_null(), "{after}");
    let outbound: Vec<&Value> = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .collect();
    assert_eq!(outbound.len(), 1, "{after}");
    assert_eq!(
        outbound[0]["external_id"], sent[0].id,
        "the platform's id is kept"
    );
    assert_eq!(outbound[0]["text"], "Olá Ana, a encomenda já seguiu.");
    assert_eq!(after["outbox"][0]["state"], "sent");
    // The other threads were not touched.
    assert_eq!(show(app, threads["Ioana Popescu"])["status"], "awaiting");
}

#[test]
fn a_refused_reply_is_failed_and_shown_on_the_thread() {
    let mock = MockPlatform::start(None).unwrap();
    mock.refuse_to("buyer1@shop.sim", "window closed");
    let app = new_app();
    let threads = seed(&app, &mock, 2, NO_LIMIT, "");
    let ioana = threads["Ioana Popescu"];
    let id = reply(&app, ioana, &["--body", "Bună ziua!"]);

    let mut daemon = app.spawn_daemon();
    wait_state(&app, &daemon, ioana, &id, "failed");
    daemon.stop_cleanly();

    let detail = show(&app, ioana);
    let error = detail["outbox"][0]["error"].as_str().unwrap();
    assert!(error.contains("window closed"), "{detail}");
    assert!(
        detail["last_error"]
            .as_str()
            .unwrap()
            .contains("window closed"),
        "{detail}"
    );
    assert_eq!(
        detail["status"], "awaiting",
        "a refused reply answers nothing"
    );
    assert_eq!(
        detail["outbox"][0]["attempts"], 1,
        "a refusal is not retried"
    );
    let text = String::from_utf8(app.run(&["show", &ioana.to_string()]).stdout).unwrap();
    assert!(text.contains("window closed"), "{text}");
    assert!(text.contains("failed"), "{text}");
    assert!(mock.accepted().is_empty());
}

#[test]
fn templates_render_in_the_thread_language_with_diacritics_intact() {
    let mock = MockPlatform::start(None).unwrap();
    let app = new_app();
    let dir = app.path().join("templates");
    std::fs::write(
        dir.join("shipped.pt.txt"),
        "Olá {{ customer }},\n\na sua encomenda {{ order_id }} já está a caminho. Informações e \
         atenção: o código é {{ coupon }}. Obrigado pela paciência, são situações raras.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("shipped.ro.txt"),
        "Bună ziua {{ customer }},\n\ncomanda {{ order_id }} a fost expediată și mâine ajunge în \
         oraș. Îți mulțumim pentru răbdare; codul este {{ coupon }}.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("shipped.txt"),
        "Hello {{ customer }}, order {{ order_id }} shipped.\n",
    )
    .unwrap();
    let threads = seed(&app, &mock, 3, NO_LIMIT, "");
    let (ana, ioana, jurgen) = (
        threads["Ana Souza"],
        threads["Ioana Popescu"],
        threads["Jürgen Weiß"],
    );
    let order = |t: i64| show(&app, t)["order_id"].as_str().unwrap().to_owned();

    // A missing variable fails before anything is queued.
    let out = app.run(&["reply", &ana.to_string(), "--template", "shipped"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shipped.pt.txt"), "{stderr}");
    assert!(stderr.contains("coupon"), "{stderr}");
    assert!(stderr.contains("nothing was queued"), "{stderr}");
    assert!(show(&app, ana)["outbox"].as_array().unwrap().is_empty());

    let pt = reply(
        &app,
        ana,
        &["--template", "shipped", "--var", "coupon=VOLTE10"],
    );
    let ro = reply(
        &app,
        ioana,
        &["--template", "shipped", "--var", "coupon=REVINO10"],
    );
    let de = reply(&app, jurgen, &["--template", "shipped"]);
    let mut daemon = app.spawn_daemon();
    for (t, id) in [(ana, &pt), (ioana, &ro), (jurgen, &de)] {
        wait_state(&app, &daemon, t, id, "sent");
    }
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(15));

    let by_key: HashMap<String, String> = mock
        .accepted()
        .into_iter()
        .map(|a| (a.key, a.text))
        .collect();
    assert_eq!(
        by_key[&pt],
        format!(
            "Olá Ana Souza,\n\na sua encomenda {} já está a caminho. Informações e atenção: o \
             código é VOLTE10. Obrigado pela paciência, são situações raras.",
            order(ana)
        )
    );
    assert_eq!(
        by_key[&ro],
        format!(
            "Bună ziua Ioana Popescu,\n\ncomanda {} a fost expediată și mâine ajunge în oraș. Îți \
             mulțumim pentru răbdare; codul este REVINO10.",
            order(ioana)
        )
    );
    // No German file: the default one.
    assert_eq!(
        by_key[&de],
        format!("Hello Jürgen Weiß, order {} shipped.", order(jurgen))
    );
    for c in ['ã', 'ç', 'õ'] {
        assert!(by_key[&pt].contains(c), "{c} lost");
    }
    for c in ['ă', 'â', 'î', 'Î', 'ș', 'ț'] {
        assert!(by_key[&ro].contains(c), "{c} lost");
    }
}

/// DESIGN §8 Faults: kill -9 at random points while sending, many times;
/// at the end every reply is on the platform exactly once or marked
/// uncertain, none twice and none lost.
#[test]
fn kill_9_while_sending_never_sends_twice_and_never_loses_a_reply() {
    const ROUNDS: usize = 50;
    const PER_ROUND: usize = 6;
    const THREADS: u32 = 12;
    // Slow enough that kills land mid-send: 20/s at most, and the platform
    // answers 40 ms after it has recorded a message, so a kill often falls
    // between "sent" and "we know it was sent".
    let mock = MockPlatform::start(Some(Quota {
        per_second: 20.0,
        burst: 4.0,
    }))
    .unwrap();
    mock.set_response_delay(Duration::from_millis(40));
    let app = new_app();
    let threads = seed(
        &app,
        &mock,
        THREADS,
        "{ per_second = 20.0, burst = 4 }",
        "concurrency = 4\n",
    );
    let thread_ids: Vec<i64> = threads.values().copied().collect();
    let mut queued: Vec<(i64, String)> = Vec::new();
    let mut rng = rand::rng();
    let mut kills_mid_send = 0;
    for round in 0..ROUNDS {
        for k in 0..PER_ROUND {
            let t = thread_ids[(round * PER_ROUND + k) % thread_ids.len()];
            let id = reply(
                &app,
                t,
                &[
                    "--body",
                    &format!("Reply {round}.{k} — obrigado, mulțumesc"),
                ],
            );
            queued.push((t, id));
        }
        let daemon = app.spawn_daemon();
        let before = mock.accepted().len();
        let ms = rng.random_range(50..900);
        std::thread::sleep(Duration::from_millis(ms));
        let mut daemon = daemon;
        daemon.child.kill().unwrap(); // SIGKILL
        daemon.child.wait().unwrap();
        if mock.accepted().len() > before {
            kills_mid_send += 1;
        }
    }

    // Let it drain: leases left by the kills run out, interrupted sends are
    // looked up on the platform.
    let mut daemon = app.spawn_daemon();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    let store = runtime
        .block_on(hourglass::cli::store_for(&config))
        .unwrap();
    wait_until(Duration::from_secs(60), || {
        let counts = runtime.block_on(store.outbox_counts()).unwrap();
        counts.iter().all(|(state, n)| {
            *n == 0 || state == "sent" || state == "uncertain" || state == "failed"
        })
    })
    .unwrap_or_else(|_| panic!("the outbox never drained; log:\n{}", daemon.log()));
    daemon.stop_cleanly();

    let on_platform = mock.counts_by_key();
    let mut states: HashMap<String, String> = HashMap::new();
    let mut outbound_messages = 0;
    for &t in &thread_ids {
        let detail = runtime
            .block_on(store.thread(t, chrono::Utc::now()))
            .unwrap()
            .unwrap();
        for o in &detail.outbox {
            states.insert(o.id.clone(), o.state.clone());
        }
        outbound_messages += detail
            .messages
            .iter()
            .filter(|m| m.direction == "outbound")
            .count();
    }
    let (mut sent, mut uncertain, mut duplicated, mut lost, mut other) = (0, 0, 0, 0, 0);
    for (_, id) in &queued {
        let times = on_platform.get(id).copied().unwrap_or(0);
        if times > 1 {
            duplicated += 1;
        }
        match states.get(id).map(String::as_str) {
            Some("sent") if times >= 1 => sent += 1,
            Some("uncertain") => uncertain += 1,
            // "Sent" in the store but not on the platform, or anything
            // else left behind: the customer never got it and nobody knows.
            _ if times == 0 => lost += 1,
            _ => other += 1,
        }
    }
    let line = format!(
        "kill loop: {ROUNDS} rounds, {} replies, {kills_mid_send} kills while sending: sent {sent}, uncertain {uncertain}, duplicated {duplicated}, lost {lost}, other {other}; 429s {}",
        queued.len(),
        mock.rejected_429()
    );
    // Written past the test harness's capture, so it shows in every run.
    let _ = writeln!(std::io::stderr(), "{line}");
    assert_eq!(duplicated, 0, "{line}");
    assert_eq!(lost, 0, "{line}");
    assert_eq!(other, 0, "{line}");
    assert_eq!(sent + uncertain, queued.len(), "{line}");
    assert_eq!(
        outbound_messages, sent,
        "each sent reply is one outbound message: {line}"
    );
    assert_eq!(mock.duplicates(), 0, "{line}");
    // The mock can always say whether a reply arrived.
    assert_eq!(uncertain, 0, "{line}");
    assert!(
        kills_mid_send >= ROUNDS / 4,
        "too few kills landed while sending: {line}"
    );
}

fn wait_all(app: &TestApp, daemon: &common::Daemon, replies: &[(i64, String)], state: &str) {
    wait_until(Duration::from_secs(30), || {
        replies
            .iter()
            .all(|(t, id)| outbox_state(app, *t, id) == state)
    })
    .unwrap_or_else(|_| panic!("not every reply became {state}; log:\n{}", daemon.log()));
}

#[test]
fn transient_failures_back_off_then_fail_while_other_threads_go_out() {
    let mock = MockPlatform::start(None).unwrap();
    mock.answer_to("buyer0@shop.sim", 503, "down for maintenance");
    let app = new_app();
    let threads = seed(&app, &mock, 2, NO_LIMIT, "max_attempts = 3\n");
    let (ana, ioana) = (threads["Ana Souza"], threads["Ioana Popescu"]);
    let bad = reply(&app, ana, &["--body", "Olá"]);
    let good = reply(&app, ioana, &["--body", "Bună"]);

    let mut daemon = app.spawn_daemon();
    wait_state(&app, &daemon, ioana, &good, "sent");
    wait_state(&app, &daemon, ana, &bad, "failed");
    daemon.stop_cleanly();

    let detail = show(&app, ana);
    let entry = &detail["outbox"][0];
    assert_eq!(entry["attempts"], 3, "{detail}");
    let error = entry["error"].as_str().unwrap();
    assert!(error.contains("Gave up after 3 attempts"), "{error}");
    assert!(error.contains("down for maintenance"), "{error}");
    assert!(daemon.log().contains("retrying later"), "{}", daemon.log());
    assert_eq!(mock.accepted().len(), 1);
}

#[test]
fn the_platforms_429_pauses_the_instance_and_every_reply_still_goes_out_once_in_order() {
    // hourglass is told it may send faster than the platform really allows.
    let mock = MockPlatform::start(Some(Quota {
        per_second: 4.0,
        burst: 2.0,
    }))
    .unwrap();
    let app = new_app();
    let threads = seed(&app, &mock, 4, "{ per_second = 50.0, burst = 10 }", "");
    let mut replies = Vec::new();
    for round in ["first", "second"] {
        for (customer, &t) in &threads {
            let id = reply(&app, t, &["--body", &format!("{round} to {customer}")]);
            replies.push((t, id));
        }
    }
    let mut daemon = app.spawn_daemon();
    wait_all(&app, &daemon, &replies, "sent");
    daemon.stop_cleanly();

    assert!(
        mock.rejected_429() > 0,
        "the test needs the platform to push back"
    );
    assert!(
        daemon.log().contains("asked us to slow down"),
        "{}",
        daemon.log()
    );
    let accepted = mock.accepted();
    assert_eq!(accepted.len(), replies.len());
    assert_eq!(mock.duplicates(), 0);
    // The replies of one thread arrive in the order they were written.
    for customer in threads.keys() {
        let texts: Vec<&str> = accepted
            .iter()
            .filter(|a| a.text.ends_with(&format!("to {customer}")))
            .map(|a| a.text.as_str())
            .collect();
        assert_eq!(
            texts,
            [
                format!("first to {customer}"),
                format!("second to {customer}")
            ]
        );
    }
}

#[test]
fn refused_credentials_stop_the_instance_sending_and_keep_its_replies() {
    let mock = MockPlatform::start(None).unwrap();
    mock.answer_to("buyer0@shop.sim", 401, "access token expired");
    let hooks = common::WebhookReceiver::start();
    let app = new_app();
    let admin_sink = format!(
        "\n[[alerts.sinks]]\nname = \"admin\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        hooks.url("/admin")
    );
    let threads = seed(&app, &mock, 2, NO_LIMIT, &admin_sink);
    let (ana, ioana) = (threads["Ana Souza"], threads["Ioana Popescu"]);
    // A second instance whose sender shows the daemon's outbox at work.
    let mut config = std::fs::read_to_string(&app.config).unwrap();
    config.push_str(&format!(
        "\n[[instances]]\nname = \"witness\"\ntype = \"simulated\"\nschedule = \"0 0 1 1 *\"\n\
         [instances.simulated]\nchannel = \"ebay\"\nper_poll = 1\nthreads = 1\napi_url = \"{}\"\n",
        mock.url()
    ));
    std::fs::write(&app.config, config).unwrap();
    app.json(&["sync", "--once", "--json"]);
    let witness = app.json(&["threads", "--instance", "witness", "--json"])[0]["id"]
        .as_i64()
        .unwrap();
    let first = reply(&app, ana, &["--body", "Olá"]);

    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Credentials refused while sending", Duration::from_secs(20));
    // Sending has stopped for the instance: a reply the platform would take
    // waits too, instead of hammering an account whose token is refused.
    // Meanwhile the other instance's sender picks up two replies queued
    // after it, one after the other (each sender looks every 100 ms).
    let second = reply(&app, ioana, &["--body", "Bună"]);
    for n in 0..2 {
        let w = reply(&app, witness, &["--body", &format!("witness {n}")]);
        wait_state(&app, &daemon, witness, &w, "sent");
    }
    assert_eq!(outbox_state(&app, ioana, &second), "queued");
    assert_eq!(outbox_state(&app, ana, &first), "queued");
    let detail = show(&app, ana);
    let error = detail["outbox"][0]["error"].as_str().unwrap();
    assert!(error.contains("access token expired"), "{detail}");
    assert!(mock
        .accepted()
        .iter()
        .all(|a| a.text.starts_with("witness")));
    assert!(daemon.log().contains("ERROR"), "{}", daemon.log());
    // The admin hears of it once, as of a refused poll.
    wait_until(Duration::from_secs(20), || !hooks.received().is_empty())
        .unwrap_or_else(|_| panic!("no admin alert; log:\n{}", daemon.log()));
    daemon.stop_cleanly();
    let alerts = hooks.received();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].json()["kind"], "auth");
    assert_eq!(alerts[0].json()["instance"], "shop");

    // Fixed credentials (here: the platform takes them again) and a restart
    // send both.
    mock.clear_answer_to("buyer0@shop.sim");
    let daemon = app.spawn_daemon();
    wait_all(&app, &daemon, &[(ana, first), (ioana, second)], "sent");
    assert_eq!(hooks.received().len(), 1, "alerted again after the fix");
}

/// Found by the chaos run: a refusal that passes (a platform's hiccup, a
/// token renewed behind the same reference) left the instance's replies
/// queued until someone reloaded the daemon.
#[test]
fn replies_go_out_by_themselves_once_the_credentials_are_accepted_again() {
    let mock = MockPlatform::start(None).unwrap();
    mock.answer_to("buyer0@shop.sim", 401, "access token expired");
    let app = new_app();
    let threads = seed(&app, &mock, 1, NO_LIMIT, "");
    let ana = threads["Ana Souza"];
    let first = reply(&app, ana, &["--body", "Olá"]);

    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Credentials refused while sending", Duration::from_secs(20));
    mock.clear_answer_to("buyer0@shop.sim");
    // No reload, no restart: the next try (30 s on) sends it.
    wait_until(Duration::from_secs(120), || {
        outbox_state(&app, ana, &first) == "sent"
    })
    .unwrap_or_else(|_| panic!("the reply stayed queued; log:\n{}", daemon.log()));
    assert_eq!(mock.accepted().len(), 1);
    daemon.stop_cleanly();
}

#[test]
fn a_slow_instance_does_not_hold_back_another() {
    let mock = MockPlatform::start(None).unwrap();
    let app = new_app();
    let instances = |per_poll: u32| {
        format!(
            r#"[outbox]
lease = "2s"
poll_interval = "100ms"

[[instances]]
name = "slow"
type = "simulated"
schedule = "0 0 1 1 *"
rate_limit = {{ per_second = 0.5, burst = 1 }}
[instances.simulated]
per_poll = {per_poll}
threads = {per_poll}
api_url = "{url}"

[[instances]]
name = "fast"
type = "simulated"
schedule = "0 0 1 1 *"
[instances.simulated]
per_poll = {per_poll}
threads = {per_poll}
api_url = "{url}"
"#,
            url = mock.url()
        )
    };
    let text = std::fs::read_to_string(&app.config).unwrap();
    let store = text.split("\n\n").next().unwrap().to_owned();
    std::fs::write(&app.config, format!("{store}\n\n{}", instances(3))).unwrap();
    app.json(&["sync", "--once", "--json"]);
    std::fs::write(&app.config, format!("{store}\n\n{}", instances(0))).unwrap();
    let ids = |instance: &str| -> Vec<i64> {
        app.json(&["threads", "--instance", instance, "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect()
    };
    let slow: Vec<(i64, String)> = ids("slow")
        .into_iter()
        .map(|t| (t, reply(&app, t, &["--body", "slow"])))
        .collect();
    let fast_thread = ids("fast")[0];
    let fast = reply(&app, fast_thread, &["--body", "fast"]);

    let daemon = app.spawn_daemon();
    wait_state(&app, &daemon, fast_thread, &fast, "sent");
    let slow_sent = slow
        .iter()
        .filter(|(t, id)| outbox_state(&app, *t, id) == "sent")
        .count();
    assert!(
        slow_sent < slow.len(),
        "the slow instance should still be sending (0.5/s)"
    );
    wait_all(&app, &daemon, &slow, "sent");
}

/// A reply left in `sending` by a dead daemon, on a platform that cannot
/// say whether it arrived (the in-memory simulation keeps nothing across a
/// crash): marked uncertain for a human, never silently resent. The same
/// reply on a platform that can tell is looked up and sent once.
#[test]
fn an_interrupted_send_is_checked_and_never_silently_resent() {
    let mock = MockPlatform::start(None).unwrap();
    let app = new_app();
    let threads = seed(&app, &mock, 2, NO_LIMIT, "");
    let (ana, ioana) = (threads["Ana Souza"], threads["Ioana Popescu"]);
    let blind = reply(&app, ana, &["--body", "Olá"]);
    let checked = reply(&app, ioana, &["--body", "Bună"]);

    // A worker claims both and dies before it sends anything; its lease
    // (zero here) has run out by the time the daemon starts.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    let store = runtime
        .block_on(hourglass::cli::store_for(&config))
        .unwrap();
    let claimed = runtime
        .block_on(store.claim_outbox_for(
            "shop",
            "dead-worker",
            Duration::ZERO,
            10,
            chrono::Utc::now(),
        ))
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(outbox_state(&app, ana, &blind), "sending");
    // The mock has neither: both are sent, once.
    let mut daemon = app.spawn_daemon();
    wait_state(&app, &daemon, ioana, &checked, "sent");
    wait_state(&app, &daemon, ana, &blind, "sent");
    daemon.stop_cleanly();
    assert!(
        daemon.log().contains("is not on the platform; sending it"),
        "{}",
        daemon.log()
    );
    assert_eq!(mock.accepted().len(), 2);
    assert_eq!(mock.duplicates(), 0);

    // Without api_url the simulation cannot tell.
    let text = std::fs::read_to_string(&app.config).unwrap();
    let without = text
        .lines()
        .filter(|l| !l.starts_with("api_url"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&app.config, without).unwrap();
    let lost = reply(&app, ana, &["--body", "Olá de novo"]);
    runtime
        .block_on(store.claim_outbox_for(
            "shop",
            "dead-worker",
            Duration::ZERO,
            10,
            chrono::Utc::now(),
        ))
        .unwrap();
    let mut daemon = app.spawn_daemon();
    wait_state(&app, &daemon, ana, &lost, "uncertain");
    daemon.stop_cleanly();
    let detail = show(&app, ana);
    let entry = detail["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == lost.as_str())
        .unwrap();
    assert!(
        entry["error"]
            .as_str()
            .unwrap()
            .contains("cannot tell whether it arrived"),
        "{detail}"
    );
    assert!(detail["last_error"].as_str().unwrap().contains("uncertain"));
    assert_eq!(mock.accepted().len(), 2, "nothing was resent");
}
