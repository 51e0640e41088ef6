//! One customer across channels, through the real daemon: Dovecot holds
//! a plain support mailbox and the Amazon relay mailbox, a mock SP-API
//! answers getOrder (with `BuyerInfo.BuyerEmail`), and an SMTP sink takes
//! the replies. A customer who wrote by e-mail and by Amazon about the
//! same order is one customer with one history; an agent's split sticks;
//! Amazon's delivery-failure notice reopens the buyer's clock.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::http::{self, AGENT};
use common::{wait_until, TestApp};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::smtp::SmtpSink;
use hourglass_testsupport::spapi::{self, SpApiMock};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const ANA_ORDER: &str = "302-1111111-2222222";
const BOB_ORDER: &str = "305-3333333-4444444";

fn relay(
    id: &str,
    buyer: &str,
    alias: &str,
    order: &str,
    body: &str,
    at: DateTime<Utc>,
) -> Vec<u8> {
    format!(
        "From: \"{buyer} - Amazon Marketplace\" <{alias}@marketplace.amazon.de>\r\n\
         To: seller@shop.example\r\n\
         Subject: Anfrage von Amazon-Kunde {buyer} (Bestellung: {order})\r\nDate: {}\r\n\
         Message-ID: <{id}@email.amazonses.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         ------------- Begin message -------------\r\n\r\n{body}\r\n\r\n\
         ------------- End message -------------\r\n\r\n[commMgrTok:{id}]\r\n",
        at.to_rfc2822()
    )
    .into_bytes()
}

fn plain(id: &str, from: &str, subject: &str, body: &str, at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: support@shop.example\r\nSubject: {subject}\r\nDate: {}\r\n\
         Message-ID: <{id}@mail.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        at.to_rfc2822()
    )
    .into_bytes()
}

fn ago(hours: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(hours)
}

/// An Amazon instance on the mailbox's INBOX and Sent (with SP-API) and a
/// plain e-mail instance on its Support folder, both woken by IDLE.
fn app_for(dovecot: &Dovecot, sp: &SpApiMock, smtp: Option<&SmtpSink>) -> TestApp {
    let smtp = smtp
        .map(|s| {
            format!(
                "sent_folder = \"Sent\"\n[instances.smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
                 tls = \"none\"\nfrom = \"seller@shop.example\"\n",
                s.port()
            )
        })
        .unwrap_or_default();
    let mut app = TestApp::new(
        None,
        &format!(
            "{}\n[[instances]]\nname = \"amazon-de\"\ntype = \"amazon\"\nschedule = \"0 0 0 1 1 *\"\n\
             [instances.imap]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nusername = \"{user}\"\n\
             password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"INBOX\", \"Sent\"]\n{smtp}\
             [instances.sp_api]\nendpoint = \"{endpoint}\"\ntoken_url = \"{token_url}\"\n\
             client_id = \"{client_id}\"\nclient_secret = \"env:HG_SPAPI_SECRET\"\n\
             refresh_token = \"env:HG_SPAPI_REFRESH\"\n\n\
             [[instances]]\nname = \"shop-mail\"\ntype = \"email\"\nschedule = \"0 0 0 1 1 *\"\n\
             [instances.imap]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nusername = \"{user}\"\n\
             password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"Support\"]\n",
            http::HTTP_CONFIG,
            port = dovecot.port(),
            user = dovecot.user(),
            endpoint = sp.url(),
            token_url = sp.token_url(),
            client_id = spapi::CLIENT_ID,
        ),
    );
    app.env
        .push(("HG_IMAP_PASSWORD".into(), dovecot.password().into()));
    app.env
        .push(("HG_SPAPI_SECRET".into(), spapi::CLIENT_SECRET.into()));
    app.env
        .push(("HG_SPAPI_REFRESH".into(), spapi::REFRESH_TOKEN.into()));
    app.env.extend(http::token_env());
    app
}

fn threads(app: &TestApp) -> Vec<Value> {
    app.json(&["threads", "--json"]).as_array().unwrap().clone()
}

/// The thread of `channel` whose order is `order`.
fn thread_of(app: &TestApp, channel: &str, order: Option<&str>, customer: &str) -> Option<Value> {
    threads(app).into_iter().find(|t| {
        t["channel"] == channel
            && t["order_id"].as_str() == order
            && t["customer"].as_str().is_some_and(|c| c.contains(customer))
    })
}

fn customer(app: &TestApp, r: &str) -> Value {
    app.json(&["customers", "show", r, "--json"])
}

fn handles(c: &Value) -> Vec<String> {
    let mut out: Vec<String> = c["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["channel"].as_str().unwrap(),
                i["handle"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

fn total_messages(app: &TestApp) -> i64 {
    threads(app)
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}

#[test]
fn a_customer_who_wrote_by_email_and_on_amazon_is_one_customer_until_an_agent_splits_them() {
    let dovecot = Dovecot::start().unwrap();
    dovecot.create_folder("Support", None).unwrap();
    let sp = SpApiMock::start().unwrap();
    // Amazon names an anonymized relay alias as the buyer's address for
    // Ana's order, and a real address for Bob's (older orders do).
    sp.add_order(ANA_ORDER, Some("q7w8e9r0@marketplace.amazon.de"));
    sp.add_order(BOB_ORDER, Some("Bob@Example.org"));

    dovecot
        .append(
            "Support",
            &plain(
                "ana-1",
                "Ana Souza <ana@example.com>",
                &format!("Where is my order {ANA_ORDER}?"),
                "Hello, it has been a week.",
                ago(5),
            ),
        )
        .unwrap();
    dovecot
        .append(
            "INBOX",
            &relay(
                "ana-amz-1",
                "Ana Souza",
                "q7w8e9r0+c1",
                ANA_ORDER,
                "Hallo, wo bleibt mein Paket?",
                ago(4),
            ),
        )
        .unwrap();
    dovecot
        .append(
            "INBOX",
            &relay(
                "bob-amz-1",
                "Bob Stone",
                "b0b0b0",
                BOB_ORDER,
                "The box was empty.",
                ago(3),
            ),
        )
        .unwrap();
    // Bob's e-mail names no order: only SP-API's buyer e-mail links it.
    dovecot
        .append(
            "Support",
            &plain(
                "bob-1",
                "Bob Stone <bob@example.org>",
                "Empty box",
                "Hi, I wrote on Amazon too.",
                ago(2),
            ),
        )
        .unwrap();

    let app = app_for(&dovecot, &sp, None);
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    wait_until(WAIT, || total_messages(&app) == 4)
        .unwrap_or_else(|_| panic!("the four messages never arrived; log:\n{}", daemon.log()));

    // Ana: the e-mail thread and the Amazon thread are one customer.
    let ana_mail = thread_of(&app, "email", Some(ANA_ORDER), "Ana").expect("Ana's e-mail thread");
    let ana_amz = thread_of(&app, "amazon", Some(ANA_ORDER), "Ana").expect("Ana's Amazon thread");
    let ana_mail_ref = format!("thread:{}", ana_mail["id"]);
    let ana_amz_ref = format!("thread:{}", ana_amz["id"]);
    let ana = customer(&app, &ana_amz_ref);
    assert_eq!(
        handles(&ana),
        vec![
            "amazon:q7w8e9r0@marketplace.amazon.de".to_owned(),
            "email:ana@example.com".to_owned()
        ],
        "{ana}"
    );
    let mut channels: Vec<&str> = ana["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["channel"].as_str().unwrap())
        .collect();
    channels.sort();
    assert_eq!(channels, ["amazon", "email"], "{ana}");
    assert_eq!(customer(&app, &ana_mail_ref)["id"], ana["id"]);
    let amazon_keys = ana["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["channel"] == "amazon")
        .unwrap()["keys"]
        .clone();
    assert!(
        amazon_keys
            .as_array()
            .unwrap()
            .contains(&json!(format!("order:{ANA_ORDER}"))),
        "{amazon_keys}"
    );

    // Bob: linked by the buyer e-mail getOrder names, not by an order id.
    let bob_amz = thread_of(&app, "amazon", Some(BOB_ORDER), "Bob").expect("Bob's Amazon thread");
    let bob = customer(&app, &format!("thread:{}", bob_amz["id"]));
    assert_eq!(
        handles(&bob),
        vec![
            "amazon:b0b0b0@marketplace.amazon.de".to_owned(),
            "email:bob@example.org".to_owned()
        ],
        "{bob}"
    );
    assert_ne!(bob["id"], ana["id"]);

    // The API answers the CLI's shape.
    let base = http::base_url(&daemon);
    let (status, api) = http::get(
        &base,
        &format!("/api/v1/customers/{ana_amz_ref}"),
        Some(AGENT),
    );
    assert_eq!(status, 200, "{api}");
    assert_eq!(api["id"], ana["id"]);
    assert_eq!(api["identities"], ana["identities"]);
    let (status, _) = http::get(&base, "/api/v1/customers/nobody:x", Some(AGENT));
    assert_eq!(status, 404);

    // An agent splits them; new mail that would link them does not.
    let out = app.run(&["customers", "unlink", &ana_mail_ref, &ana_amz_ref]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        customer(&app, &ana_amz_ref)["id"],
        customer(&app, &ana_mail_ref)["id"]
    );
    dovecot
        .append(
            "Support",
            &plain(
                "ana-2",
                "Ana Souza <ana@example.com>",
                &format!("Re: order {ANA_ORDER}"),
                "Any news?",
                ago(1),
            ),
        )
        .unwrap();
    dovecot
        .append(
            "INBOX",
            &relay(
                "ana-amz-2",
                "Ana Souza",
                "q7w8e9r0",
                ANA_ORDER,
                "Noch einmal: wo ist es?",
                ago(1),
            ),
        )
        .unwrap();
    wait_until(WAIT, || total_messages(&app) == 6)
        .unwrap_or_else(|_| panic!("the new mail never arrived; log:\n{}", daemon.log()));
    let mail_side = customer(&app, &ana_mail_ref);
    let amazon_side = customer(&app, &ana_amz_ref);
    assert_ne!(
        mail_side["id"], amazon_side["id"],
        "the split came undone: {mail_side}"
    );
    assert_eq!(
        handles(&amazon_side),
        vec!["amazon:q7w8e9r0@marketplace.amazon.de".to_owned()]
    );
    assert_eq!(
        mail_side["splits"][0]["other"], "amazon:q7w8e9r0@marketplace.amazon.de",
        "{mail_side}"
    );
    // getOrder once per order, however often the buyer writes.
    assert_eq!(sp.order_requests(ANA_ORDER), 1);

    // Linked again by hand, through the API: the split is forgotten.
    let (status, linked) = http::post(
        &base,
        "/api/v1/customers/link",
        Some(AGENT),
        &[],
        &json!({"a": ana_mail_ref, "b": ana_amz_ref}),
    );
    assert_eq!(status, 200, "{linked}");
    // Ana's two e-mails (two subjects, two threads) and her Amazon thread.
    assert_eq!(linked["threads"].as_array().unwrap().len(), 3, "{linked}");
    assert_eq!(linked["splits"], json!([]), "{linked}");
    assert_eq!(customer(&app, &ana_amz_ref)["id"], linked["id"]);
    // Splitting a thread from itself is refused with the reason.
    let (status, refused) = http::post(
        &base,
        "/api/v1/customers/unlink",
        Some(AGENT),
        &[],
        &json!({"a": ana_amz_ref, "b": ana_amz_ref}),
    );
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same identity"),
        "{refused}"
    );

    // An identity split off on its own, named by CHANNEL:HANDLE.
    let out = app.run(&["customers", "unlink", "email:Bob@example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob_now = customer(&app, &format!("thread:{}", bob_amz["id"]));
    assert_eq!(
        handles(&bob_now),
        vec!["amazon:b0b0b0@marketplace.amazon.de".to_owned()],
        "{bob_now}"
    );
    let text = String::from_utf8_lossy(
        &app.run(&["customers", "show", "email:bob@example.org"])
            .stdout,
    )
    .into_owned();
    assert!(
        text.contains("split from amazon:b0b0b0@marketplace.amazon.de"),
        "{text}"
    );
    let out = app.run(&["customers", "show", "nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CHANNEL:HANDLE"),
        "{out:?}"
    );
    daemon.stop_cleanly();
}

#[test]
fn amazons_delivery_failure_notice_reopens_the_clock_of_the_reply_it_names() {
    let dovecot = Dovecot::start().unwrap();
    dovecot.create_folder("Support", None).unwrap();
    let sp = SpApiMock::start().unwrap();
    let smtp = SmtpSink::start().unwrap();
    let order = "303-5555555-6666666";
    let asked = ago(3);
    dovecot
        .append(
            "INBOX",
            &relay(
                "carla-1",
                "Carla Rossi",
                "c4rl4",
                order,
                "Can I return it?",
                asked,
            ),
        )
        .unwrap();
    let app = app_for(&dovecot, &sp, Some(&smtp));
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    wait_until(WAIT, || total_messages(&app) == 1)
        .unwrap_or_else(|_| panic!("the buyer's message never arrived; log:\n{}", daemon.log()));
    let thread = threads(&app)[0].clone();
    assert_eq!(thread["channel"], "amazon");
    let id = thread["id"].to_string();
    let due_before = thread["due_at"].clone();

    // The agent answers; the reply leaves by SMTP and stops the clock.
    let out = app.run(&["reply", &id, "--body", "Yes, within 30 days."]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = smtp.wait_for(1, WAIT).unwrap();
    let raw = String::from_utf8_lossy(&sent[0]).into_owned();
    let message_id = raw
        .lines()
        .find_map(|l| {
            l.strip_prefix("Message-ID: ")
                .or_else(|| l.strip_prefix("Message-Id: "))
        })
        .expect("the reply has a Message-ID")
        .trim()
        .to_owned();
    wait_until(WAIT, || {
        app.json(&["show", &id, "--json"])["status"] == "answered"
    })
    .unwrap_or_else(|_| panic!("the reply never stopped the clock; log:\n{}", daemon.log()));

    // Amazon bounces it. The notice names the order, not the buyer, and
    // returns our mail (its Message-ID) as Amazon's notices do.
    let notice = format!(
        "From: \"Amazon Seller Central\" <donotreply@amazon.de>\r\nTo: seller@shop.example\r\n\
         Subject: Message delivery failure\r\nDate: {}\r\nMessage-ID: <df-1@email.amazonses.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"df\"\r\n\r\n\
         --df\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         Your message to the buyer for order {order} could not be delivered.\r\n\r\n\
         Reason: Your message contains an external link.\r\n\r\n\
         --df\r\nContent-Type: message/rfc822\r\n\r\n\
         From: seller@shop.example\r\nSubject: Re: Anfrage von Amazon-Kunde Carla Rossi (Bestellung: {order})\r\n\
         Message-ID: {message_id}\r\nDate: {}\r\n\r\nYes, within 30 days.\r\n\r\n--df--\r\n",
        Utc::now().to_rfc2822(),
        Utc::now().to_rfc2822(),
    );
    dovecot.append("INBOX", notice.as_bytes()).unwrap();
    wait_until(WAIT, || {
        app.json(&["show", &id, "--json"])["status"] == "awaiting"
    })
    .unwrap_or_else(|_| panic!("the clock never reopened; log:\n{}", daemon.log()));

    let shown = app.json(&["show", &id, "--json"]);
    // Counted from the buyer's unanswered message, as Amazon counts it.
    assert_eq!(shown["due_at"], due_before, "{shown}");
    let error = shown["last_error"].as_str().unwrap();
    assert!(error.starts_with("Your reply of "), "{error}");
    assert!(
        error.contains("could not be delivered: Your message contains an external link."),
        "{error}"
    );
    let messages = shown["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        3,
        "the notice is on the buyer's thread: {shown}"
    );
    let reply = messages
        .iter()
        .find(|m| m["direction"] == "outbound")
        .unwrap();
    assert!(reply["delivery_failed_at"].is_string(), "{reply}");
    assert_eq!(
        reply["delivery_error"],
        "Your message contains an external link."
    );
    assert_eq!(shown["outbox"][0]["state"], "failed", "{shown}");
    // (The e-mail instance reads the same mailbox's Sent folder: it may
    // hold the reply as an e-mail thread too.)
    let amazon = app.json(&["threads", "--instance", "amazon-de", "--json"]);
    assert_eq!(
        amazon.as_array().unwrap().len(),
        1,
        "no separate notice thread: {amazon}"
    );
    let text = String::from_utf8_lossy(&app.run(&["show", &id]).stdout).into_owned();
    assert!(
        text.contains("[not delivered: Your message contains an external link."),
        "{text}"
    );
    assert!(text.contains("could not be delivered"), "{text}");
    daemon.stop_cleanly();
}
