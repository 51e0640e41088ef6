//! eBay member messages through the real daemon, against the Message API
//! mock (testsupport/src/ebay.rs): `type = "ebay"` is registered, threads
//! get eBay's 24 h clock, replies reach eBay once, and a revoked refresh
//! token stops one instance while another goes on.

mod common;

use std::time::Duration;

use chrono::{Duration as Days, Timelike, Utc};
use common::{wait_until, TestApp};
use hourglass_testsupport::ebay::{
    MockEbay, Route, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SELLER,
};

const WAIT: Duration = Duration::from_secs(60);

fn instance(app_dir: &std::path::Path, name: &str, mock: &MockEbay) -> String {
    let client_secret = app_dir.join(format!("{name}.client"));
    std::fs::write(&client_secret, CLIENT_SECRET).unwrap();
    let refresh = app_dir.join(format!("{name}.refresh"));
    std::fs::write(&refresh, REFRESH_TOKEN).unwrap();
    format!(
        "[[instances]]\nname = \"{name}\"\ntype = \"ebay\"\nschedule = \"* * * * * *\"\n\
         [instances.ebay]\napi_url = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"file:{}\"\nrefresh_token = \"file:{}\"\nmarketplace_id = \"EBAY_DE\"\n\
         username = \"{SELLER}\"\n\n",
        mock.url(),
        mock.token_url(),
        client_secret.display(),
        refresh.display(),
    )
}

fn threads(app: &TestApp, instance: &str) -> Vec<serde_json::Value> {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["instance"] == instance)
        .cloned()
        .collect()
}

#[test]
fn ebay_buyers_get_a_clock_and_a_reply_that_reaches_ebay_once() {
    let mock = MockEbay::start().unwrap();
    let now = Utc::now();
    // Whole seconds: eBay's timestamps carry milliseconds at most.
    let asked = (now - Days::hours(3)).with_nanosecond(0).unwrap();
    let conv = mock.add_conversation("anna_k", Some("296512345678"), "Lieferzeit?");
    mock.buyer_writes(&conv, "Hallo, wann kommt mein Paket?", asked);
    let answered = mock.add_conversation("tom_b", None, "Size");
    mock.buyer_writes(&answered, "Is it XL?", now - Days::hours(5));
    mock.seller_writes(&answered, "Yes, XL.", now - Days::hours(4));
    mock.add_ebay_notice(
        "Your invoice",
        "Your eBay invoice is ready.",
        now - Days::hours(2),
    );

    let app = TestApp::new(None, "");
    let body = instance(app.path(), "ebay-de", &mock);
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();
    let check = app.run(&["check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let sync = app.run(&["sync", "--once"]);
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let list = threads(&app, "ebay-de");
    assert_eq!(list.len(), 3, "{list:#?}");
    let anna = list.iter().find(|t| t["customer"] == "anna_k").unwrap();
    assert_eq!(anna["channel"], "ebay");
    assert_eq!(anna["status"], "awaiting");
    let due = chrono::DateTime::parse_from_rfc3339(anna["due_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        (due.with_timezone(&Utc) - asked).num_seconds(),
        24 * 3600,
        "eBay's 24 h from the buyer's message"
    );
    let tom = list.iter().find(|t| t["customer"] == "tom_b").unwrap();
    assert_eq!(tom["status"], "answered", "answered on eBay's site");
    assert!(
        list.iter()
            .filter(|t| t["status"] == "awaiting")
            .all(|t| t["customer"] == "anna_k"),
        "an eBay notice never starts a clock: {list:#?}"
    );

    // Too long for eBay: refused before anything is queued.
    let id = anna["id"].to_string();
    let long = "x".repeat(2001);
    let out = app.run(&["reply", &id, "--body", &long]);
    assert!(!out.status.success(), "a 2,001-character reply was queued");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = app.run(&["reply", &id, "--body", "Morgen, mit DHL."]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || {
        threads(&app, "ebay-de")
            .iter()
            .any(|t| t["customer"] == "anna_k" && t["status"] == "answered")
    })
    .unwrap_or_else(|_| panic!("the reply did not leave: {}", daemon.log()));
    daemon.stop_cleanly();
    let sent = mock.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].conversation_id, conv);
    assert_eq!(sent[0].text, "Morgen, mit DHL.");
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
}

#[test]
fn a_revoked_refresh_token_stops_its_instance_and_not_the_other() {
    let good = MockEbay::start().unwrap();
    let revoked = MockEbay::start().unwrap();
    for mock in [&good, &revoked] {
        let c = mock.add_conversation("anna_k", None, "Hello");
        mock.buyer_writes(&c, "Hello?", Utc::now() - Days::hours(1));
    }
    revoked.revoke_refresh_token();
    let app = TestApp::new(
        None,
        "[daemon]\nmin_backoff = \"200ms\"\nmax_backoff = \"1s\"\n\n",
    );
    let body =
        instance(app.path(), "ebay-good", &good) + &instance(app.path(), "ebay-revoked", &revoked);
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();

    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || {
        let list = app.json(&["connectors", "list", "--json"]);
        let state = |n: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == n)
                .map(|i| i["state"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        state("ebay-revoked") == "auth_failed" && threads(&app, "ebay-good").len() == 1
    })
    .unwrap_or_else(|_| panic!("states: {}", daemon.log()));
    let list = app.json(&["connectors", "list", "--json"]);
    let revoked_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "ebay-revoked")
        .unwrap()
        .clone();
    let error = revoked_row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("invalid_grant"), "{revoked_row}");
    assert!(
        !daemon.log().contains(REFRESH_TOKEN) && !daemon.log().contains(CLIENT_SECRET),
        "the refresh token leaked into the log"
    );
    // The stopped instance asks eBay nothing more.
    // The stopped instance asks eBay nothing more while the other one
    // polls on.
    let calls = revoked.requests().len();
    let polls = good.count(Route::GetConversations);
    wait_until(WAIT, || good.count(Route::GetConversations) > polls + 2)
        .unwrap_or_else(|_| panic!("the healthy instance stopped polling: {}", daemon.log()));
    assert_eq!(revoked.requests().len(), calls, "auth_failed kept calling");
    daemon.stop_cleanly();
}
