//! The watchdog's relay-mail check through the real daemon: Dovecot holds
//! the Amazon relay mailboxes, the SP-API mock answers getOrders. A shop
//! whose relay mail stopped while orders kept coming alerts the admin once
//! (also across a restart); a shop whose orders stopped too, and one whose
//! mail keeps coming, do not; getOrders failures are logged and retried,
//! never fatal.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{wait_until, Daemon, TestApp, WebhookReceiver};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::spapi::{self, ListFailure, SpApiMock};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const DE: &str = "A1PA6795UKMFR9";
const FR: &str = "A13V1IB3VIYZZH";
const IT: &str = "APJ6JRA9NG5V4";

fn ago(minutes: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::minutes(minutes)
}

fn relay(id: &str, at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "From: \"Ana Souza - Amazon Marketplace\" <q7w8{id}@marketplace.amazon.de>\r\n\
         To: seller@shop.example\r\n\
         Subject: Anfrage von Amazon-Kunde Ana Souza (Bestellung: 302-1111111-{id:0>7})\r\n\
         Date: {}\r\nMessage-ID: <{id}@email.amazonses.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         ------------- Begin message -------------\r\n\r\nWo bleibt mein Paket?\r\n\r\n\
         ------------- End message -------------\r\n\r\n[commMgrTok:{id}]\r\n",
        at.to_rfc2822()
    )
    .into_bytes()
}

/// Relay mail into `folder` at each of `minutes_ago`.
fn mail(dovecot: &Dovecot, folder: &str, tag: &str, minutes_ago: impl Iterator<Item = i64>) {
    let raws: Vec<Vec<u8>> = minutes_ago
        .map(|m| relay(&format!("{tag}{m}"), ago(m)))
        .collect();
    dovecot.deliver_many(folder, raws).unwrap();
}

/// Orders in `marketplace` at each of `minutes_ago`.
fn orders(sp: &SpApiMock, marketplace: &str, tag: &str, minutes_ago: impl Iterator<Item = i64>) {
    for m in minutes_ago {
        sp.add_order_at(&format!("{tag}-{m}"), marketplace, ago(m));
    }
}

fn instance(
    name: &str,
    folder: &str,
    marketplace: &str,
    dovecot: &Dovecot,
    sp: &SpApiMock,
) -> String {
    format!(
        "[[instances]]\nname = \"{name}\"\ntype = \"amazon\"\nschedule = \"0 0 0 1 1 *\"\n\
         [instances.imap]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         username = \"{user}\"\npassword = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"{folder}\"]\n\
         [instances.sp_api]\nendpoint = \"{endpoint}\"\ntoken_url = \"{token_url}\"\n\
         client_id = \"{client_id}\"\nclient_secret = \"env:HG_SPAPI_SECRET\"\n\
         refresh_token = \"env:HG_SPAPI_REFRESH\"\nmarketplace_ids = [\"{marketplace}\"]\n\n",
        port = dovecot.port(),
        user = dovecot.user(),
        endpoint = sp.url(),
        token_url = sp.token_url(),
        client_id = spapi::CLIENT_ID,
    )
}

fn app(dovecot: &Dovecot, instances: &str, watchdog: &str, hooks: &WebhookReceiver) -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            "{instances}[alerts.watchdog]\ncheck_every = \"1s\"\n{watchdog}\n\
             [[alerts.sinks]]\nname = \"admin\"\ntype = \"webhook\"\nurl = \"{}\"\n\n\
             [[alerts.routes]]\nthresholds = [\"silence\"]\nsinks = [\"admin\"]\n",
            hooks.url("/admin")
        ),
    );
    app.env
        .push(("HG_IMAP_PASSWORD".into(), dovecot.password().into()));
    app.env
        .push(("HG_SPAPI_SECRET".into(), spapi::CLIENT_SECRET.into()));
    app.env
        .push(("HG_SPAPI_REFRESH".into(), spapi::REFRESH_TOKEN.into()));
    app.env.push((
        "RUST_LOG".into(),
        "info,hourglass::alerts::relay=debug".into(),
    ));
    app
}

fn relay_alerts(hooks: &WebhookReceiver) -> Vec<Value> {
    hooks
        .received()
        .into_iter()
        .map(|r| r.json())
        .filter(|a| a["kind"] == "relay_silence")
        .collect()
}

fn messages(app: &TestApp) -> i64 {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}

/// Waits for `n` more watch passes than the log shows now.
fn passes(daemon: &Daemon, n: usize) {
    let done = daemon.log().matches("Relay watch pass done.").count();
    daemon.wait_for_log_count("Relay watch pass done.", done + n, WAIT);
}

#[test]
fn relay_mail_that_stops_while_orders_come_alerts_once_and_a_quiet_or_busy_shop_does_not() {
    let dovecot = Dovecot::start().unwrap();
    for f in ["Stopped", "Quiet", "Busy"] {
        dovecot.create_folder(f, None).unwrap();
    }
    let sp = SpApiMock::start().unwrap();
    sp.set_page_size(10);
    let hooks = WebhookReceiver::start();

    // All three shops: a relay message every hour from 20h to 5h ago, and
    // an order every 30 minutes from 19h50 to 5h20 ago (30 orders, 16
    // messages: 0.53 messages an order, so 6 expected messages take 12
    // orders).
    let history = || (5..=20).map(|h| h * 60);
    let sold = || (0..30).map(|k| 19 * 60 + 50 - k * 30);
    mail(&dovecot, "Stopped", "s", history());
    mail(&dovecot, "Quiet", "q", history());
    orders(&sp, DE, "302", sold());
    orders(&sp, FR, "171", sold());
    orders(&sp, IT, "404", sold());
    // "stopped": no mail since, 14 orders (every 20 min from 4h50 ago).
    orders(&sp, DE, "302n", (0..14).map(|k| 4 * 60 + 50 - k * 20));
    // "quiet": no mail and no orders since (its buyers are asleep too).
    // "busy": mail and orders keep coming.
    // (One delivery per folder: the Maildir file names are per call.)
    mail(
        &dovecot,
        "Busy",
        "b",
        history().chain((1..5).map(|h| h * 60 - 30)),
    );
    orders(&sp, IT, "404n", (0..14).map(|k| 4 * 60 + 50 - k * 20));

    let body = [
        instance("stopped", "Stopped", DE, &dovecot, &sp),
        instance("quiet", "Quiet", FR, &dovecot, &sp),
        instance("busy", "Busy", IT, &dovecot, &sp),
    ]
    .concat();
    // A check a day: each silence is looked at once per daemon.
    let app = app(
        &dovecot,
        &body,
        "orders_min_silence = \"1h\"\norders_check_every = \"1d\"\n",
        &hooks,
    );
    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || messages(&app) == 16 * 3 + 4)
        .unwrap_or_else(|_| panic!("the relay mail never arrived; log:\n{}", daemon.log()));
    wait_until(WAIT, || !relay_alerts(&hooks).is_empty())
        .unwrap_or_else(|_| panic!("no relay alert; log:\n{}", daemon.log()));
    daemon.wait_for_log(
        "Orders since the last relay message are within the usual.",
        WAIT,
    );
    passes(&daemon, 3);

    let got = relay_alerts(&hooks);
    assert_eq!(got.len(), 1, "{got:?}");
    let alert = &got[0];
    assert_eq!(alert["instance"], "stopped", "{alert}");
    assert_eq!(alert["orders"], 14, "{alert}");
    assert_eq!(alert["threshold"], "silence");
    let per_order = alert["messages_per_order"].as_f64().unwrap();
    assert!((per_order - 16.0 / 30.0).abs() < 0.001, "{alert}");
    let text = alert["text"].as_str().unwrap();
    assert!(
        text.starts_with("Relay mail stopped: stopped (amazon) has had no buyer message for 5h"),
        "{text}"
    );
    assert!(text.contains("while SP-API shows 14 new orders"), "{text}");
    assert!(
        text.contains("Notification Preferences → Messaging"),
        "{text}"
    );
    assert!(text.contains(dovecot.user()), "{text}");
    // The last relay message came 5 hours ago: "since" names it.
    let last: DateTime<Utc> = alert["last_message_at"].as_str().unwrap().parse().unwrap();
    assert!((last - ago(300)).num_minutes().abs() <= 2, "{alert}");
    // The quiet shop was asked, and is quiet; the busy one was never asked.
    assert!(sp.list_requests_for(FR) >= 1);
    assert_eq!(
        sp.list_requests_for(IT),
        0,
        "mail keeps coming: no API call"
    );
    assert!(
        !daemon.log().contains("getOrders failed"),
        "{}",
        daemon.log()
    );

    // The shop keeps selling; the daemon restarts: the silence was alerted
    // on, so nothing is sent again (and SP-API is not asked again for it).
    orders(&sp, DE, "302m", 5..8);
    daemon.stop_cleanly();
    let de_before = sp.list_requests_for(DE);
    let fr_before = sp.list_requests_for(FR);
    let daemon = app.spawn_daemon();
    wait_until(WAIT, || sp.list_requests_for(FR) >= fr_before + 2).unwrap_or_else(|_| {
        panic!(
            "the quiet shop was not checked again; log:\n{}",
            daemon.log()
        )
    });
    passes(&daemon, 3);
    assert_eq!(relay_alerts(&hooks).len(), 1, "{:?}", relay_alerts(&hooks));
    assert_eq!(sp.list_requests_for(DE), de_before);

    // A relay message (100 minutes old) ends that silence; in the new one
    // 17 orders come: 4 + 3 of the above and 10 more. Learnt from before
    // it: 17 messages for 40 orders, so 6 expected messages take 15.
    orders(&sp, DE, "302k", (3..=12).map(|k| k * 5));
    dovecot
        .append("Stopped", &relay("late100", ago(100)))
        .unwrap();
    wait_until(WAIT, || relay_alerts(&hooks).len() == 2)
        .unwrap_or_else(|_| panic!("no alert for the new silence; log:\n{}", daemon.log()));
    passes(&daemon, 3);
    let got = relay_alerts(&hooks);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["instance"], "stopped");
    assert_eq!(got[1]["orders"], 17, "{}", got[1]);
    let per_order = got[1]["messages_per_order"].as_f64().unwrap();
    assert!((per_order - 17.0 / 40.0).abs() < 0.001, "{}", got[1]);
    assert!(got[1]["last_message_at"] != got[0]["last_message_at"]);
}

#[test]
fn get_orders_failures_are_logged_and_retried_without_an_alert_or_a_crash() {
    let dovecot = Dovecot::start().unwrap();
    let sp = SpApiMock::start().unwrap();
    let hooks = WebhookReceiver::start();
    // Two relay messages, 6h and 5h ago, then 8 orders: no history to
    // learn messages per order from, so orders_without_mail = 5 decides.
    mail(&dovecot, "INBOX", "f", [360, 300].into_iter());
    orders(&sp, DE, "302", (0..8).map(|k| 4 * 60 - k * 20));
    sp.fail_list([
        ListFailure::Throttled {
            retry_after: Some(1),
        },
        ListFailure::ServerError,
        ListFailure::Garbage,
    ]);
    let app = app(
        &dovecot,
        &instance("flaky", "INBOX", DE, &dovecot, &sp),
        "orders_min_silence = \"1h\"\norders_check_every = \"1s\"\norders_without_mail = 5\n",
        &hooks,
    );
    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || !relay_alerts(&hooks).is_empty())
        .unwrap_or_else(|_| panic!("no relay alert after the failures; log:\n{}", daemon.log()));
    passes(&daemon, 3);

    let log = daemon.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("SP-API getOrders failed; the relay check retries later."))
        .collect();
    assert_eq!(failures.len(), 3, "{log}");
    assert!(failures.iter().all(|l| l.contains("flaky")), "{failures:?}");
    assert!(failures[0].contains("retry after 1s"), "{failures:?}");
    assert!(failures[1].contains("HTTP 500"), "{failures:?}");
    assert!(failures[2].contains("not JSON"), "{failures:?}");

    let got = relay_alerts(&hooks);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["instance"], "flaky");
    assert_eq!(got[0]["orders"], 8);
    assert!(got[0]["messages_per_order"].is_null(), "{}", got[0]);
    assert!(
        got[0]["usual"]
            .as_str()
            .unwrap()
            .contains("5 orders without one relay message"),
        "{}",
        got[0]
    );
    // Three failures, then one page to learn from (none) and one to count.
    assert_eq!(sp.list_requests(), 5, "{log}");
    assert!(daemon.is_running());
    daemon.stop_cleanly();
}

#[test]
fn a_shop_whose_relay_mail_never_arrived_alerts_once_from_when_the_daemon_began_watching() {
    // A fresh install whose Seller Central notifications were never set:
    // not one relay message, ever, while the shop sells.
    let dovecot = Dovecot::start().unwrap();
    let sp = SpApiMock::start().unwrap();
    let hooks = WebhookReceiver::start();
    // Orders from before the daemon watched do not count.
    orders(&sp, DE, "302old", (0..10).map(|k| 60 + k));
    let app = app(
        &dovecot,
        &instance("fresh", "INBOX", DE, &dovecot, &sp),
        "orders_min_silence = \"1s\"\norders_check_every = \"1s\"\norders_without_mail = 5\n",
        &hooks,
    );
    let mut daemon = app.spawn_daemon();
    passes(&daemon, 2);
    assert!(
        relay_alerts(&hooks).is_empty(),
        "{:?}",
        relay_alerts(&hooks)
    );
    // Four orders since: fewer than orders_without_mail.
    for k in 0..4 {
        sp.add_order_at(&format!("302-{k}"), DE, Utc::now());
    }
    passes(&daemon, 3);
    assert!(
        relay_alerts(&hooks).is_empty(),
        "{:?}",
        relay_alerts(&hooks)
    );
    // The fifth order makes it a broken setting.
    sp.add_order_at("302-4", DE, Utc::now());
    wait_until(WAIT, || !relay_alerts(&hooks).is_empty())
        .unwrap_or_else(|_| panic!("no relay alert; log:\n{}", daemon.log()));
    let got = relay_alerts(&hooks);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["orders"], 5, "{}", got[0]);
    assert!(got[0]["last_message_at"].is_null(), "{}", got[0]);
    assert!(
        got[0]["title"]
            .as_str()
            .unwrap()
            .starts_with("Relay mail never arrived: fresh (amazon)"),
        "{}",
        got[0]
    );

    // Restarted, it still has received nothing: no second alert.
    daemon.stop_cleanly();
    sp.add_order_at("302-5", DE, Utc::now());
    let daemon = app.spawn_daemon();
    passes(&daemon, 3);
    assert_eq!(relay_alerts(&hooks).len(), 1, "{:?}", relay_alerts(&hooks));
}
