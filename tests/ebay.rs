//! eBay member messages through the real daemon, against the Message API
//! mock (testsupport/src/ebay.rs): `type = "ebay"` is registered, threads
//! get eBay's 24 h clock, replies reach eBay once, and a revoked refresh
//! token stops one instance while another goes on.

mod common;

use std::time::Duration;

use chrono::{Duration as Days, Timelike, Utc};
use common::{wait_until, TestApp};
use hourglass_testsupport::ebay::{
    FaultKind, MockEbay, Route, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SELLER,
};
use hourglass_testsupport::smtp::SmtpSink;

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

fn connector(app: &TestApp, name: &str) -> serde_json::Value {
    let list = app.json(&["connectors", "list", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no instance {name} in {list}"))
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
fn a_revoked_refresh_token_mails_the_admin_once_and_stops_only_its_instance() {
    let smtp = SmtpSink::start().unwrap();
    let good = MockEbay::start().unwrap();
    let revoked = MockEbay::start().unwrap();
    for mock in [&good, &revoked] {
        let c = mock.add_conversation("anna_k", None, "Hello");
        mock.buyer_writes(&c, "Hello?", Utc::now() - Days::hours(1));
    }
    revoked.revoke_refresh_token();
    let app = TestApp::new(
        None,
        &format!(
            "[daemon]\nmin_backoff = \"200ms\"\nmax_backoff = \"500ms\"\n\n\
             [[alerts.sinks]]\nname = \"admin\"\ntype = \"email\"\nto = [\"admin@shop.example\"]\n\
             smtp = {{ host = \"127.0.0.1\", port = {}, tls = \"none\", from = \"hourglass@shop.example\" }}\n\n",
            smtp.port()
        ),
    );
    let body =
        instance(app.path(), "ebay-good", &good) + &instance(app.path(), "ebay-revoked", &revoked);
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();

    let mut daemon = app.spawn_daemon();
    let state = |n: &str| {
        connector(&app, n)["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_until(WAIT, || {
        state("ebay-revoked") == "auth_failed" && threads(&app, "ebay-good").len() == 1
    })
    .unwrap_or_else(|_| panic!("states: {}", daemon.log()));
    let revoked_row = connector(&app, "ebay-revoked");
    let error = revoked_row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("invalid_grant"), "{revoked_row}");

    // One mail to the admin, however often the instance is retried.
    let mails = smtp.wait_for(1, WAIT).unwrap();
    let tries = revoked.token_requests();
    wait_until(WAIT, || revoked.token_requests() >= tries + 3)
        .unwrap_or_else(|_| panic!("the revoked instance is not retried: {}", daemon.log()));
    let raw = String::from_utf8_lossy(&mails[0]).into_owned();
    // Quoted-printable, as lettre sends it: undo the soft line breaks.
    let mail = raw
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    assert!(
        mail.contains("Action needed: ebay-revoked (ebay) cannot sign in"),
        "{mail}"
    );
    assert!(mail.contains("invalid_grant"), "{mail}");
    assert!(
        mail.contains("grant this application the commerce.message"),
        "{mail}"
    );
    for secret in [REFRESH_TOKEN, CLIENT_SECRET] {
        assert!(!raw.contains(secret), "a secret in the alert: {raw}");
        assert!(!daemon.log().contains(secret), "a secret in the log");
    }
    // The stopped instance asks the Message API nothing while the other
    // one polls on.
    let calls = revoked.requests().len();
    let polls = good.count(Route::GetConversations);
    wait_until(WAIT, || good.count(Route::GetConversations) > polls + 2)
        .unwrap_or_else(|_| panic!("the healthy instance stopped polling: {}", daemon.log()));
    assert_eq!(revoked.requests().len(), calls, "auth_failed kept calling");
    assert_eq!(smtp.messages().unwrap().len(), 1, "alerted more than once");

    // The seller consents again; the new refresh token, stored where
    // refresh_token points, is picked up by the next retry: no reload.
    const RENEWED: &str = "v^1.1#i^1#r^1#f^0#renewed-s3cret";
    revoked.consent_again(RENEWED);
    std::fs::write(app.path().join("ebay-revoked.refresh"), RENEWED).unwrap();
    wait_until(WAIT, || {
        let row = connector(&app, "ebay-revoked");
        row["state"] == "ok" && row["auth_alerted_at"].is_null()
    })
    .unwrap_or_else(|_| panic!("never recovered: {}", daemon.log()));
    wait_until(WAIT, || threads(&app, "ebay-revoked").len() == 1)
        .unwrap_or_else(|_| panic!("nothing ingested after recovery: {}", daemon.log()));
    daemon.stop_cleanly();
    assert!(!daemon.log().contains(RENEWED), "the new token leaked");
    assert_eq!(smtp.messages().unwrap().len(), 1);
}

fn add_instance(app: &TestApp, name: &str, mock: &MockEbay) {
    let body = instance(app.path(), name, mock);
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();
}

fn sync(app: &TestApp) {
    let out = app.run(&["sync", "--once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` conversations, each with one buyer message, a minute apart.
fn buyers(mock: &MockEbay, n: usize) -> Vec<String> {
    let now = Utc::now().with_nanosecond(0).unwrap();
    (0..n)
        .map(|i| {
            let conv = mock.add_conversation(&format!("buyer_{i}"), None, &format!("Order {i}"));
            mock.buyer_writes(
                &conv,
                &format!("Where is order {i}?"),
                now - Days::minutes(i as i64 + 1),
            );
            conv
        })
        .collect()
}

#[test]
fn a_first_sync_of_1200_conversations_pages_through_renews_the_token_once_and_counts_calls() {
    let mock = MockEbay::start().unwrap();
    let convs = buyers(&mock, 1200);
    // The access token expires half-way through the conversations.
    mock.inject(Route::GetConversation, 600, FaultKind::ExpireTokens);
    let app = TestApp::new(None, "");
    add_instance(&app, "ebay-de", &mock);

    sync(&app);
    let list = threads(&app, "ebay-de");
    assert_eq!(list.len(), 1200);
    assert!(list
        .iter()
        .all(|t| t["status"] == "awaiting" && t["message_count"] == 1));
    assert_eq!(mock.token_requests(), 2, "renewed once, on the 401");
    assert_eq!(
        mock.count(Route::GetConversation),
        1201,
        "every conversation once, plus the retried one"
    );
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
    // 24 pages of 50 and eBay's notices: well inside the daily budget, and
    // shown with it.
    let row = connector(&app, "ebay-de");
    let calls = mock.count(Route::AnyApi) as i64;
    assert!(calls < 1300, "{calls} calls");
    assert_eq!(row["api_calls_24h"], calls, "{row}");
    assert_eq!(row["api_call_budget"], 5000, "{row}");
    let text = String::from_utf8(app.run(&["connectors", "list"]).stdout).unwrap();
    assert!(text.contains(&format!("{calls}/5000")), "{text}");

    // Nothing new: the next sync lists, fetches no conversation again, and
    // the count goes on across processes.
    let fetched = mock.count(Route::GetConversation);
    sync(&app);
    assert_eq!(mock.count(Route::GetConversation), fetched);
    assert_eq!(
        connector(&app, "ebay-de")["api_calls_24h"],
        mock.count(Route::AnyApi) as i64
    );

    // A buyer writes again: only that conversation is read; the clock
    // still runs from the first unanswered message.
    let at = Utc::now().with_nanosecond(0).unwrap();
    mock.buyer_writes(&convs[700], "Any news?", at);
    sync(&app);
    assert_eq!(mock.count(Route::GetConversation), fetched + 1);
    let list = threads(&app, "ebay-de");
    let t = list.iter().find(|t| t["customer"] == "buyer_700").unwrap();
    assert_eq!(t["message_count"], 2);
    let since = chrono::DateTime::parse_from_rfc3339(t["awaiting_since"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    assert!(since < at - Days::minutes(700), "{t}");
    let total: i64 = list
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 1201);
}

#[test]
fn connectors_test_shows_the_granted_scope_and_never_the_token() {
    let mock = MockEbay::start().unwrap();
    let app = TestApp::new(None, "");
    add_instance(&app, "ebay-de", &mock);
    let out = app.run(&["connectors", "test", "ebay-de"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ebay-de: ok"), "{stdout}");
    assert!(
        stdout.contains("scopes: https://api.ebay.com/oauth/api_scope/commerce.message"),
        "{stdout}"
    );
    assert!(stdout.contains("valid for 7200 s"), "{stdout}");
    for secret in [REFRESH_TOKEN, CLIENT_SECRET, "access-0"] {
        assert!(!stdout.contains(secret), "{stdout}");
    }

    mock.revoke_refresh_token();
    let out = app.run(&["connectors", "test", "ebay-de"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("auth failure") && stdout.contains("invalid_grant"),
        "{stdout}"
    );
    assert!(!stdout.contains(REFRESH_TOKEN), "{stdout}");
}

/// DESIGN §8 Faults, for eBay: a kill -9 while a first sync pages through,
/// and one after eBay took a reply but before its answer came back.
#[test]
fn a_kill_9_while_polling_or_sending_loses_nothing_and_sends_nothing_twice() {
    let mock = MockEbay::start().unwrap();
    buyers(&mock, 300);
    // The third page hangs: the first two are committed, the kill lands.
    mock.inject(
        Route::GetConversation,
        120,
        FaultKind::Delay(Duration::from_secs(20)),
    );
    let app = TestApp::new(
        None,
        "[outbox]\nlease = \"2s\"\npoll_interval = \"100ms\"\n\n",
    );
    add_instance(&app, "ebay-de", &mock);

    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || threads(&app, "ebay-de").len() >= 100)
        .unwrap_or_else(|_| panic!("no page committed: {}", daemon.log()));
    daemon.signal("KILL");
    daemon.wait_exit(WAIT);
    let stored = threads(&app, "ebay-de").len();
    assert!(stored < 300, "the kill came after the sync: {stored}");

    let mut daemon = app.spawn_daemon();
    wait_until(WAIT, || threads(&app, "ebay-de").len() == 300)
        .unwrap_or_else(|_| panic!("not all stored after the restart: {}", daemon.log()));
    let list = threads(&app, "ebay-de");
    assert!(list.iter().all(|t| t["message_count"] == 1), "a duplicate");

    // eBay takes the reply; its answer comes 20 s later, after the kill.
    mock.inject(
        Route::SendMessage,
        0,
        FaultKind::SlowAnswer(Duration::from_secs(20)),
    );
    let t = list.iter().find(|t| t["customer"] == "buyer_7").unwrap();
    let out = app.run(&["reply", &t["id"].to_string(), "--body", "Shipped today."]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, || mock.sent().len() == 1)
        .unwrap_or_else(|_| panic!("the reply never reached eBay: {}", daemon.log()));
    daemon.signal("KILL");
    daemon.wait_exit(WAIT);

    // The restarted daemon finds it on eBay instead of sending it again.
    let mut daemon = app.spawn_daemon();
    let id = t["id"].to_string();
    wait_until(WAIT, || {
        app.json(&["show", &id, "--json"])["outbox"][0]["state"] == "sent"
    })
    .unwrap_or_else(|_| panic!("the reply was not settled: {}", daemon.log()));
    let detail = app.json(&["show", &id, "--json"]);
    assert_eq!(detail["status"], "answered", "{detail}");
    assert_eq!(
        detail["message_count"], 2,
        "the reply stored once: {detail}"
    );
    daemon.stop_cleanly();
    let sent = mock.sent();
    assert_eq!(sent.len(), 1, "sent twice: {sent:?}");
    assert_eq!(sent[0].text, "Shipped today.");
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
}
