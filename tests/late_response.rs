//! A simulated month through the real daemon: Amazon relay mail dated
//! over the last 40 days in a real Dovecot (buyer messages in INBOX, the
//! seller's replies and an auto-response in Sent), read by an `amazon`
//! instance. The Late Response Rate per marketplace in `stats --json`,
//! `/metrics` and `report` must match the figures computed by hand below;
//! the forecast alert goes out once per marketplace and again only after
//! the forecast went back under the level.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::http::{base_url, token_env, HTTP_CONFIG};
use common::{wait_until, Daemon, TestApp, WebhookReceiver};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::smtp::SmtpSink;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn relay(id: &str, alias: &str, tld: &str, order: &str, at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "From: \"Buyer {alias} - Amazon Marketplace\" <{alias}@marketplace.amazon.{tld}>\r\n\
         To: seller@shop.example\r\nSubject: Inquiry from Amazon customer Buyer {alias} (Order: {order})\r\n\
         Date: {}\r\nMessage-ID: <{id}@email.amazonses.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         ------------- Begin message -------------\r\n\r\nWhere is my parcel? ({id})\r\n\r\n\
         ------------- End message -------------\r\n\r\n[commMgrTok:{id}]\r\n",
        at.to_rfc2822()
    )
    .into_bytes()
}

fn reply(id: &str, alias: &str, tld: &str, order: &str, at: DateTime<Utc>, auto: bool) -> Vec<u8> {
    let auto = if auto {
        "Auto-Submitted: auto-replied\r\n"
    } else {
        ""
    };
    format!(
        "From: seller@shop.example\r\nTo: {alias}@marketplace.amazon.{tld}\r\n\
         Subject: Re: Inquiry from Amazon customer Buyer {alias} (Order: {order})\r\n\
         Date: {}\r\nMessage-ID: <{id}@shop.example>\r\n{auto}\
         Content-Type: text/plain; charset=utf-8\r\n\r\nOn its way.\r\n",
        at.to_rfc2822()
    )
    .into_bytes()
}

/// One buyer's thread: its messages, hours before the test's start.
struct Thread {
    alias: &'static str,
    tld: &'static str,
    order: &'static str,
    /// (hours ago, kind): 'b' buyer message, 'r' seller reply, 'a' auto-response.
    mail: &'static [(i64, char)],
}

const D: i64 = 24;

/// The month. Per cycle, hand-classified: late (answered after 24 h or
/// unanswered past it), on time, pending (under 24 h, unanswered), or
/// excluded (marked "no response needed" in time).
const MONTH: &[Thread] = &[
    // age 40 d: on time; in the 90-day window only.
    Thread {
        alias: "de01",
        tld: "de",
        order: "302-0000001-0000001",
        mail: &[(40 * D, 'b'), (40 * D - 2, 'r')],
    },
    // age 20 d: answered after 30 h: late.
    Thread {
        alias: "de02",
        tld: "de",
        order: "302-0000002-0000002",
        mail: &[(20 * D, 'b'), (20 * D - 30, 'r')],
    },
    // age 20 d: an auto-response after 1 h is no answer; the reply after 26 h is late.
    Thread {
        alias: "de03",
        tld: "de",
        order: "302-0000003-0000003",
        mail: &[(20 * D, 'b'), (20 * D - 1, 'a'), (20 * D - 26, 'r')],
    },
    // age 10 d: two buyer messages, one cycle, answered after 23 h: on time.
    Thread {
        alias: "de04",
        tld: "de",
        order: "302-0000004-0000004",
        mail: &[(10 * D, 'b'), (10 * D - 5, 'b'), (10 * D - 23, 'r')],
    },
    // age 5 d: never answered: late.
    Thread {
        alias: "de05",
        tld: "de",
        order: "302-0000005-0000005",
        mail: &[(5 * D, 'b')],
    },
    // age 3 d: answered after 1 h (on time); the buyer wrote again 25 h ago: late.
    Thread {
        alias: "de06",
        tld: "de",
        order: "302-0000006-0000006",
        mail: &[(3 * D, 'b'), (3 * D - 1, 'r'), (25, 'b')],
    },
    // age 6.5 d: answered after 25 h: late; the 7-day window drops it tomorrow.
    Thread {
        alias: "de07",
        tld: "de",
        order: "302-0000007-0000007",
        mail: &[(6 * D + 12, 'b'), (6 * D + 12 - 25, 'r')],
    },
    // 2 h ago: pending.
    Thread {
        alias: "de08",
        tld: "de",
        order: "302-0000008-0000008",
        mail: &[(2, 'b')],
    },
    // 10 h ago, marked "no response needed" by the test: excluded.
    Thread {
        alias: "de09",
        tld: "de",
        order: "302-0000009-0000009",
        mail: &[(10, 'b')],
    },
    // age 29 d: on time; the 30-day window drops it tomorrow.
    Thread {
        alias: "de10",
        tld: "de",
        order: "302-0000010-0000010",
        mail: &[(29 * D + 6, 'b'), (29 * D + 5, 'r')],
    },
    // amazon.fr, age 8 d: on time.
    Thread {
        alias: "fr11",
        tld: "fr",
        order: "171-0000011-0000011",
        mail: &[(8 * D, 'b'), (8 * D - 3, 'r')],
    },
    // amazon.fr, 4 h ago: pending.
    Thread {
        alias: "fr12",
        tld: "fr",
        order: "171-0000012-0000012",
        mail: &[(4, 'b')],
    },
];

/// One window: (late, on time, pending, rate, tomorrow if answered, if
/// unanswered).
type Window = (i64, i64, i64, Option<f64>, f64, f64);

/// 7, 30 and 90 days of amazon.de, by hand from the table above:
/// (late, on time, pending, rate, tomorrow if answered, if unanswered).
///
/// 7 d:  late de05 de06b de07, on time de06a, pending de08. Tomorrow de07
///       (age 6) falls out: late 2, on time 1, + de08.
/// 30 d: + late de02 de03, on time de04 de10. Tomorrow de10 (age 29)
///       falls out: late 5, on time 2, + de08.
/// 90 d: + on time de01. Nothing falls out.
const DE: [Window; 3] = [
    (3, 1, 1, Some(3.0 / 4.0), 2.0 / 4.0, 3.0 / 4.0),
    (5, 3, 1, Some(5.0 / 8.0), 5.0 / 8.0, 6.0 / 8.0),
    (5, 4, 1, Some(5.0 / 9.0), 5.0 / 10.0, 6.0 / 10.0),
];

/// amazon.fr: 7 d only fr12 (pending, no rate yet); 30 and 90 d fr11 on time.
const FR: [Window; 3] = [
    (0, 0, 1, None, 0.0, 1.0),
    (0, 1, 1, Some(0.0), 0.0, 0.5),
    (0, 1, 1, Some(0.0), 0.0, 0.5),
];

fn config(dovecot: &Dovecot, smtp: &SmtpSink, hooks: &WebhookReceiver) -> String {
    format!(
        "[[instances]]\nname = \"amazon-eu\"\ntype = \"amazon\"\nschedule = \"* * * * *\"\n\
         [instances.imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\n\
         password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"INBOX\", \"Sent\"]\nsent_folder = \"Sent\"\n\
         [instances.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"seller@shop.example\"\n\n\
         [[alerts.sinks]]\nname = \"managers\"\ntype = \"webhook\"\nurl = \"{}\"\nformat = \"json\"\n\n\
         [[alerts.routes]]\nthresholds = [\"late_response_rate\"]\nsinks = [\"managers\"]\n\n\
         [alerts.late_response_rate]\nlevel = \"10%\"\nevery = \"1s\"\n{HTTP_CONFIG}",
        dovecot.port(),
        dovecot.user(),
        smtp.port(),
        hooks.url("/lrr"),
    )
}

fn total_messages(app: &TestApp) -> usize {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_u64().unwrap() as usize)
        .sum()
}

fn thread_id(app: &TestApp, order: &str) -> String {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["order_id"] == order)
        .unwrap_or_else(|| panic!("no thread for order {order}"))["id"]
        .to_string()
}

fn alerts(hooks: &WebhookReceiver) -> Vec<Value> {
    hooks
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .filter(|v| v["kind"] == "late_response_rate")
        .collect()
}

fn alerts_for(hooks: &WebhookReceiver, marketplace: &str) -> usize {
    alerts(hooks)
        .iter()
        .filter(|a| a["marketplace"] == marketplace)
        .count()
}

fn close(a: &Value, b: Option<f64>, what: &str) {
    match b {
        None => assert!(a.is_null(), "{what}: {a} should be null"),
        Some(b) => {
            let a = a
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: {a} is no number"));
            assert!((a - b).abs() < 1e-9, "{what}: {a} should be {b}");
        }
    }
}

fn check_rates(stats: &Value, marketplace: &str, want: &[Window; 3]) {
    let rates = stats["late_response_rate"].as_array().unwrap();
    let r = rates
        .iter()
        .find(|r| r["instance"] == "amazon-eu" && r["marketplace"] == marketplace)
        .unwrap_or_else(|| panic!("no rate for {marketplace}: {stats}"));
    for (w, (days, want)) in r["windows"]
        .as_array()
        .unwrap()
        .iter()
        .zip([7, 30, 90].iter().zip(want))
    {
        let what = format!("{marketplace} {days} d");
        assert_eq!(w["days"], *days);
        assert_eq!(
            (
                w["late"].as_i64(),
                w["on_time"].as_i64(),
                w["pending"].as_i64()
            ),
            (Some(want.0), Some(want.1), Some(want.2)),
            "{what}: {w}"
        );
        close(&w["rate"], want.3, &format!("{what} rate"));
        close(
            &w["forecast_if_answered"],
            Some(want.4),
            &format!("{what} if answered"),
        );
        close(
            &w["forecast_if_unanswered"],
            Some(want.5),
            &format!("{what} if unanswered"),
        );
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("browser-artifacts")
}

/// Opens the HTML report (desktop and 360 px) and the inbox in Debian's
/// chromium through Playwright (`tests/browser/report.py`); fails, never
/// skips, when either is missing.
fn look_in_a_browser(report: &Path, base: &str, expect: &Value) {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium: apt-get install --no-install-recommends chromium"
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/report.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("HG_REPORT", report)
        .env("HG_EXPECT", expect.to_string())
        .env("HG_URL", base)
        .env("HG_TOKEN", common::http::AGENT)
        .env("HG_ARTIFACTS", artifacts())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser check failed (needs Playwright for Python: pip install playwright):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    // Where the report is kept to look at.
    std::fs::copy(report, artifacts().join("report.html")).unwrap();
}

fn run(store_url: Option<String>, browser: bool) {
    let now = Utc::now();
    let at = |h: i64| now - chrono::Duration::hours(h);
    let dovecot = Dovecot::start().unwrap();
    let smtp = SmtpSink::start().unwrap();
    let hooks = WebhookReceiver::start();
    let mut expected_messages = 0;
    for t in MONTH {
        for (i, (h, kind)) in t.mail.iter().enumerate() {
            let id = format!("{}-{i}", t.alias);
            let (folder, raw) = match kind {
                'b' => ("INBOX", relay(&id, t.alias, t.tld, t.order, at(*h))),
                'r' => ("Sent", reply(&id, t.alias, t.tld, t.order, at(*h), false)),
                _ => ("Sent", reply(&id, t.alias, t.tld, t.order, at(*h), true)),
            };
            dovecot.append(folder, &raw).unwrap();
            expected_messages += 1;
        }
    }
    let mut app = TestApp::new(store_url.as_deref(), &config(&dovecot, &smtp, &hooks));
    app.env
        .push(("HG_IMAP_PASSWORD".into(), dovecot.password().into()));
    app.env.extend(token_env());

    let daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    wait_until(WAIT, || total_messages(&app) == expected_messages)
        .unwrap_or_else(|_| panic!("the month never arrived; log:\n{}", daemon.log()));
    let out = app.run(&[
        "mark",
        &thread_id(&app, "302-0000009-0000009"),
        "--no-response-needed",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // stats --json and the API: the hand-computed figures.
    let stats = app.json(&["stats", "--json"]);
    check_rates(&stats, "amazon.de", &DE);
    check_rates(&stats, "amazon.fr", &FR);
    let text = String::from_utf8(app.run(&["stats"]).stdout).unwrap();
    assert!(text.contains("Late Response Rate"), "{text}");
    assert!(text.contains("amazon-eu (amazon.de)"), "{text}");
    assert!(text.contains("62.5%"), "30-day rate of amazon.de: {text}");
    let base = base_url(&daemon);
    let (status, api) =
        common::http::get(&base, "/api/v1/stats?since=7d", Some(common::http::AGENT));
    assert_eq!(status, 200);
    assert_eq!(api["late_response_rate"], stats["late_response_rate"]);

    // /metrics, from its snapshot.
    let scrape = common::http::client()
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let de30 = "hourglass_late_response_rate{instance=\"amazon-eu\",marketplace=\"amazon.de\",window=\"30d\"}";
    assert_eq!(metric(&scrape, de30), Some(0.625), "{scrape}");
    let de7 = "hourglass_late_response_rate_forecast{instance=\"amazon-eu\",marketplace=\"amazon.de\",window=\"7d\",if_awaiting=\"answered\"}";
    assert_eq!(metric(&scrape, de7), Some(0.5), "{scrape}");

    // One alert per marketplace: both forecasts are over 10 %.
    wait_until(WAIT, || {
        alerts_for(&hooks, "amazon.de") == 1 && alerts_for(&hooks, "amazon.fr") == 1
    })
    .unwrap_or_else(|_| panic!("alerts: {:?}; log:\n{}", alerts(&hooks), daemon.log()));
    let de = alerts(&hooks)
        .into_iter()
        .find(|a| a["marketplace"] == "amazon.de")
        .unwrap();
    // How high depends on how much had arrived when the daemon looked.
    let title = de["title"].as_str().unwrap();
    assert!(
        title.starts_with("Late Response Rate of amazon-eu (amazon.de) may reach "),
        "{de}"
    );
    assert!(
        de["summary"]
            .as_str()
            .unwrap()
            .contains("Alert level 10.0%"),
        "{de}"
    );

    // The report over 30 days: every cycle opened in it (de01 is older).
    let report = app.json(&["report", "--since", "30d", "--format", "json"]);
    let inst = &report["instances"][0];
    assert_eq!(inst["name"], "amazon-eu");
    // de02..de10 (de06 twice) and fr11, fr12.
    assert_eq!(inst["volume"], 12, "{inst}");
    // Replies: de02 de03 de04 de06a de07 de10 fr11.
    assert_eq!(inst["answered"], 7, "{inst}");
    assert_eq!(
        (inst["late"].as_i64(), inst["on_time"].as_i64()),
        (Some(5), Some(4)),
        "{inst}"
    );
    // Amazon's default deadline is 24 h: the breaches are the late ones.
    assert_eq!(inst["breaches"], 5, "{inst}");
    // First replies: 1, 1, 3, 23, 25, 26, 30 h: p50 23 h, p90 30 h.
    assert_eq!(inst["first_response_p50_s"], 23 * 3600, "{inst}");
    assert_eq!(inst["first_response_p90_s"], 30 * 3600, "{inst}");
    assert_eq!(report["agents"][0]["name"], "sent elsewhere");
    assert_eq!(report["agents"][0]["volume"], 7);

    // An agent answers de08 through hourglass: it counts for that agent.
    let de08 = thread_id(&app, "302-0000008-0000008");
    let out = app.run(&["reply", &de08, "--body", "Sent today.", "--actor", "ana"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, || {
        app.json(&["show", &de08, "--json"])["outbox"][0]["state"] == "sent"
    })
    .unwrap_or_else(|_| panic!("reply not sent; log:\n{}", daemon.log()));
    let report = app.json(&["report", "--since", "30d", "--format", "json"]);
    let ana = report["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ana")
        .unwrap_or_else(|| panic!("no row for ana: {report}"));
    assert_eq!(
        (ana["volume"].as_i64(), ana["late"].as_i64()),
        (Some(1), Some(0)),
        "{ana}"
    );
    let csv = String::from_utf8(
        app.run(&["report", "--since", "30d", "--format", "csv"])
            .stdout,
    )
    .unwrap();
    assert!(csv.starts_with("group,name,volume,"), "{csv}");
    assert!(csv.contains("\nagent,ana,1,1,"), "{csv}");
    let html = app.path().join("report.html");
    let out = app.run(&[
        "report",
        "--since",
        "30d",
        "--format",
        "html",
        "--output",
        html.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("amazon-eu"));
    if browser {
        // First replies now 1, 1, 2, 3, 23, 25, 26, 30 h; late 5, on time 5.
        let expect = serde_json::json!({
            "cards": {
                "Customer messages": "12", "Answered": "8", "First reply (median)": "3h",
                "Breaches": "5", "Late Response Rate": "50.0%",
            },
            "instance": { "name": "amazon-eu", "cells": ["12", "50.0%", "5", "8", "3h", "1d6h"] },
            "agents": ["ana", "sent elsewhere"],
            "days": 30,
            "inbox_label": "amazon-eu (amazon.de)",
        });
        look_in_a_browser(&html, &base, &expect);
    }

    // amazon.fr goes back under (fr12 needs no answer), then over again
    // (a new message): a second alert for amazon.fr, none more for .de.
    let fr12 = thread_id(&app, "171-0000012-0000012");
    let out = app.run(&["mark", &fr12, "--no-response-needed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_for_log(
        "The Late Response Rate forecast is back under the alert level.",
        WAIT,
    );
    dovecot
        .append(
            "INBOX",
            &relay("fr13-0", "fr13", "fr", "171-0000013-0000013", Utc::now()),
        )
        .unwrap();
    wait_until(WAIT, || alerts_for(&hooks, "amazon.fr") == 2)
        .unwrap_or_else(|_| panic!("alerts: {:?}; log:\n{}", alerts(&hooks), daemon.log()));
    assert_eq!(alerts_for(&hooks, "amazon.de"), 1);
    stop(daemon);
}

fn stop(mut daemon: Daemon) {
    daemon.stop_cleanly();
}

#[test]
fn a_simulated_month_on_sqlite_and_its_report_in_a_browser() {
    run(None, true);
}

#[test]
fn a_simulated_month_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("late_response").unwrap();
    run(Some(url), false);
}
