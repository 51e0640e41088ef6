//! systemd's watchdog (`WatchdogSec=`): `WATCHDOG=1` while the daemon makes
//! progress, none once a unit of work is stuck, so systemd restarts it.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, TestApp};

const WAIT: Duration = Duration::from_secs(60);

fn app(extra: &str) -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            "[daemon]\nshutdown_timeout = \"1s\"\nwatchdog_busy_limit = \"1s\"\n\n\
             [[instances]]\nname = \"healthy\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n{extra}"
        ),
    );
    // What systemd sets with WatchdogSec=200ms.
    app.env.push(("WATCHDOG_USEC".into(), "200000".into()));
    app
}

fn pings(d: &Daemon) -> usize {
    d.notices().iter().filter(|n| *n == "WATCHDOG=1").count()
}

#[test]
fn a_healthy_daemon_keeps_answering_the_watchdog() {
    let app = app("");
    let mut daemon = app.spawn_daemon();
    let healthy_polls = |d: &Daemon| d.log().matches("Ingested new messages").count();
    let polls = healthy_polls(&daemon);
    // Several polls later, the pings still come.
    wait_until(WAIT, || healthy_polls(&daemon) >= polls + 3)
        .unwrap_or_else(|_| panic!("no polls: {}", daemon.log()));
    let before = pings(&daemon);
    wait_until(WAIT, || pings(&daemon) >= before + 5)
        .unwrap_or_else(|_| panic!("watchdog pings stopped: {}", daemon.log()));
    assert!(!daemon.log().contains("Work is stuck"), "{}", daemon.log());
    daemon.stop_cleanly();
}

#[test]
fn a_wedged_poll_stops_the_watchdog_pings() {
    // A second instance whose poll hangs (10 minutes, as on a dead socket
    // without a timeout) beside the healthy one.
    let app = app(
        "\n[[instances]]\nname = \"hung\"\ntype = \"simulated\"\nschedule = \"* * * * * *\"\n\
         [instances.simulated]\npoll_delay_ms = 600000\n",
    );
    let daemon = app.spawn_daemon();
    wait_until(WAIT, || daemon.log().contains("Work is stuck"))
        .unwrap_or_else(|_| panic!("the hung poll was not noticed: {}", daemon.log()));
    assert!(
        daemon.log().contains("polling hung"),
        "the log names the stuck work: {}",
        daemon.log()
    );
    let at_stuck = pings(&daemon);
    assert!(at_stuck > 0, "pings came before the poll was stuck");
    // The rest of the daemon runs on: the healthy instance polls three more
    // times, i.e. about 15 watchdog periods pass, and no ping is sent (one
    // may still have been on its way when the stuck work was logged).
    let polls = daemon.log().matches("Ingested new messages").count();
    wait_until(WAIT, || {
        daemon.log().matches("Ingested new messages").count() >= polls + 3
    })
    .unwrap_or_else(|_| panic!("the healthy instance stopped: {}", daemon.log()));
    let after = pings(&daemon);
    assert!(
        after <= at_stuck + 1,
        "{} pings were sent while a poll was stuck",
        after - at_stuck
    );
}
