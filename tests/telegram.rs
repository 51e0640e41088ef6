//! Telegram through the real daemon, against the mock Bot API
//! (testsupport::telegram): the Bot API cannot be reached from here.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{wait_until, Daemon, TestApp};
use hourglass_testsupport::telegram::MockBotApi;
use serde_json::Value;

const TOKEN: &str = "700001:AAH-daemon-test-token";
const WAIT: Duration = Duration::from_secs(20);

fn app(mock: &MockBotApi) -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[daemon]
min_backoff = "200ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[outbox]
lease = "2s"
poll_interval = "100ms"

[[instances]]
name = "shop-bot"
type = "telegram"
# Updates arrive by long polling; the schedule is only a fallback.
schedule = "0 0 1 1 *"
[instances.telegram]
api_url = "{}"
bot_token = "env:HG_TG_BOT_TOKEN"
mode = "poll"
long_poll_secs = 2
"#,
            mock.url()
        ),
    );
    app.env.push(("HG_TG_BOT_TOKEN".into(), TOKEN.into()));
    app
}

/// Starts the daemon and waits until it long-polls the bot.
fn start(app: &TestApp, mock: &MockBotApi) -> Daemon {
    let calls = mock.calls().len();
    let daemon = app.spawn_daemon();
    wait_until(WAIT, || mock.waiting() > 0 || mock.calls().len() > calls)
        .unwrap_or_else(|_| panic!("the daemon never polled the bot; log:\n{}", daemon.log()));
    daemon
}

fn threads(app: &TestApp) -> Vec<Value> {
    app.json(&["threads", "--json"]).as_array().unwrap().clone()
}

fn thread_of(app: &TestApp, customer: &str) -> Option<Value> {
    threads(app).into_iter().find(|t| t["customer"] == customer)
}

fn wait_thread(app: &TestApp, daemon: &Daemon, customer: &str) -> Value {
    let mut found = None;
    wait_until(WAIT, || {
        found = thread_of(app, customer);
        found.is_some()
    })
    .unwrap_or_else(|_| panic!("no thread of {customer}; log:\n{}", daemon.log()));
    found.unwrap()
}

fn show(app: &TestApp, id: i64) -> Value {
    app.json(&["show", &id.to_string(), "--json"])
}

fn reply(app: &TestApp, id: i64, body: &str) -> String {
    let v = app.json(&["reply", &id.to_string(), "--body", body, "--json"]);
    v["id"].as_str().unwrap().to_owned()
}

fn outbox(app: &TestApp, thread: i64, reply: &str) -> Value {
    show(app, thread)["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == reply)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_message_is_stored_while_the_daemon_long_polls() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    let mut daemon = start(&app, &mock);
    wait_until(WAIT, || mock.waiting() > 0).unwrap();

    mock.push_message(4242, "Ana", "Hi, where is my order?");
    let t = wait_thread(&app, &daemon, "Ana");
    assert_eq!(t["channel"], "telegram");
    assert_eq!(t["status"], "awaiting");
    assert_eq!(t["message_count"], 1);
    let detail = show(&app, t["id"].as_i64().unwrap());
    assert_eq!(detail["messages"][0]["text"], "Hi, where is my order?");
    assert_eq!(detail["messages"][0]["direction"], "inbound");

    daemon.stop_cleanly();
    assert!(
        !daemon.log().contains(TOKEN),
        "the token leaked into the log"
    );
    // Only the update types hourglass reads were asked for.
    let allowed = mock.allowed_updates().unwrap();
    assert!(
        allowed.contains(&"business_message".to_owned()),
        "{allowed:?}"
    );
    assert!(
        !allowed.contains(&"callback_query".to_owned()),
        "{allowed:?}"
    );
}

/// The chaos run found it: a long poll answered with garbage made the
/// daemon wait for the next scheduled poll, which for a bot is only a
/// fallback (here: once a year), so the bot went deaf after one hiccup.
#[test]
fn a_failed_long_poll_is_retried_after_a_backoff_not_at_the_next_schedule() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    let mut daemon = start(&app, &mock);
    mock.answer_garbage(1);
    daemon.wait_for_log("Waiting for changes failed", WAIT);

    mock.push_message(4343, "Bea", "Is the blue one back in stock?");
    let t = wait_thread(&app, &daemon, "Bea");
    assert_eq!(t["message_count"], 1);
    daemon.stop_cleanly();
}

#[test]
fn a_kill_between_get_updates_and_the_commit_loses_nothing() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    // message_id -> update_id of everything pushed.
    let mut pushed: HashMap<i64, i64> = HashMap::new();
    let stored_updates = |app: &TestApp, pushed: &HashMap<i64, i64>| -> HashSet<i64> {
        let Some(t) = thread_of(app, "Ioana") else {
            return HashSet::new();
        };
        show(app, t["id"].as_i64().unwrap())["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let ext = m["external_id"].as_str().unwrap();
                let message_id: i64 = ext.rsplit(':').next().unwrap().parse().unwrap();
                pushed[&message_id]
            })
            .collect()
    };
    for round in 0..5 {
        let mut daemon = start(&app, &mock);
        let (update, message) = mock.push_message(777, "Ioana", &format!("Message {round}"));
        pushed.insert(message, update);
        // The daemon has the update in hand: kill it at once, most likely
        // before it has committed the update.
        wait_until(WAIT, || {
            mock.calls().iter().any(|c| c.returned.contains(&update))
        })
        .unwrap_or_else(|_| panic!("update never served; log:\n{}", daemon.log()));
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();

        // Whatever Telegram has forgotten must be in the store.
        let stored = stored_updates(&app, &pushed);
        eprintln!(
            "round {round}: update {update} {} when the daemon was killed",
            if stored.contains(&update) {
                "was already stored"
            } else {
                "was not stored yet"
            }
        );
        for id in mock.confirmed() {
            assert!(
                stored.contains(&id),
                "update {id} was confirmed but not stored"
            );
        }
        // The next poller confirms only what is stored.
        let calls = mock.calls().len();
        let daemon = start(&app, &mock);
        wait_until(WAIT, || mock.calls().len() > calls).unwrap();
        let next = mock.calls()[calls].offset;
        if let Some(offset) = next {
            for (_, &id) in pushed.iter().filter(|(_, &id)| id < offset) {
                assert!(
                    stored.contains(&id),
                    "offset {offset} confirms update {id}, which is not stored"
                );
            }
        }
        drop(daemon);
    }
    let mut daemon = start(&app, &mock);
    wait_until(WAIT, || stored_updates(&app, &pushed).len() == 5)
        .unwrap_or_else(|_| panic!("messages lost; log:\n{}", daemon.log()));
    let t = thread_of(&app, "Ioana").unwrap();
    assert_eq!(t["message_count"], 5, "each message once");
    daemon.stop_cleanly();
}

#[test]
fn an_edit_changes_the_text_and_not_the_clock() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    let mut daemon = start(&app, &mock);
    let (_, message_id) = mock.push_message(5150, "Jürgen", "Die Packung war beschädight");
    let t = wait_thread(&app, &daemon, "Jürgen");
    let id = t["id"].as_i64().unwrap();
    let r = reply(&app, id, "Das tut uns leid, wir senden Ersatz.");
    wait_until(WAIT, || outbox(&app, id, &r)["state"] == "sent")
        .unwrap_or_else(|_| panic!("reply not sent; log:\n{}", daemon.log()));
    let answered = thread_of(&app, "Jürgen").unwrap();
    assert_eq!(answered["status"], "answered");

    // The customer fixes a typo in the message that was already answered.
    mock.push_edit(5150, "Jürgen", message_id, "Die Packung war beschädigt");
    wait_until(WAIT, || {
        show(&app, id)["messages"][0]["text"] == "Die Packung war beschädigt"
    })
    .unwrap_or_else(|_| panic!("edit not applied; log:\n{}", daemon.log()));
    let after = thread_of(&app, "Jürgen").unwrap();
    assert_eq!(after["status"], "answered", "an edit is not a new question");
    assert_eq!(after["due_at"], Value::Null);
    assert_eq!(after["message_count"], 2);
    daemon.stop_cleanly();
}

#[test]
fn a_business_message_is_answered_through_its_connection() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    let mut daemon = start(&app, &mock);
    let (_, message_id) = mock.push_business_message(
        "BC-seller-1",
        8800,
        8800,
        "Chloé",
        "Le bleu est disponible ?",
    );
    let t = wait_thread(&app, &daemon, "Chloé");
    let id = t["id"].as_i64().unwrap();
    let r = reply(&app, id, "Oui, depuis lundi.");
    wait_until(WAIT, || outbox(&app, id, &r)["state"] == "sent")
        .unwrap_or_else(|_| panic!("reply not sent; log:\n{}", daemon.log()));
    let sent = mock.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].business_connection_id.as_deref(),
        Some("BC-seller-1")
    );
    assert_eq!(sent[0].chat_id, 8800);
    assert_eq!(sent[0].reply_to_message_id, Some(message_id));
    assert_eq!(sent[0].text, "Oui, depuis lundi.");

    // The seller answers the next question from their own Telegram app:
    // that stops the clock too.
    // Telegram dates are whole seconds: these come a second apart, as
    // they would in a real chat, so their order is not a tie.
    let now = chrono::Utc::now().timestamp();
    mock.push_update(business(8800, 8800, "Chloé", "Et en taille M ?", now + 1));
    wait_until(WAIT, || {
        thread_of(&app, "Chloé").unwrap()["status"] == "awaiting"
    })
    .unwrap();
    mock.push_update(business(8800, 31337, "Shop", "Oui, en M aussi.", now + 2));
    wait_until(WAIT, || {
        thread_of(&app, "Chloé").unwrap()["status"] == "answered"
    })
    .unwrap_or_else(|_| panic!("seller's own reply not seen; log:\n{}", daemon.log()));
    assert_eq!(mock.sent().len(), 1);
    daemon.stop_cleanly();
}

/// A `business_message` update of the seller's connection "BC-seller-1".
fn business(chat: i64, from: i64, name: &str, text: &str, date: i64) -> Value {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(5000);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serde_json::json!({ "business_message": {
        "message_id": id, "date": date, "business_connection_id": "BC-seller-1",
        "chat": { "id": chat, "type": "private", "first_name": "Chloé" },
        "from": { "id": from, "is_bot": false, "first_name": name },
        "text": text
    } })
}

#[test]
fn a_blocked_bot_shows_on_the_thread() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    let mut daemon = start(&app, &mock);
    mock.push_message(6060, "Marta", "Czy mogę zwrócić?");
    let t = wait_thread(&app, &daemon, "Marta");
    let id = t["id"].as_i64().unwrap();
    mock.block(6060);
    let r = reply(&app, id, "Tak, oczywiście.");
    wait_until(WAIT, || outbox(&app, id, &r)["state"] == "failed")
        .unwrap_or_else(|_| panic!("reply not failed; log:\n{}", daemon.log()));
    let o = outbox(&app, id, &r);
    assert!(
        o["error"].as_str().unwrap().contains("blocked the bot"),
        "{o}"
    );
    assert_eq!(o["attempts"], 1, "a block is not retried");
    let thread = thread_of(&app, "Marta").unwrap();
    assert!(
        thread["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("blocked the bot"),
        "{thread}"
    );
    assert!(mock.sent().is_empty());
    daemon.stop_cleanly();
}

#[test]
fn a_webhook_set_on_the_bot_stops_polling_and_says_why() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    mock.set_webhook("https://elsewhere.example.com/hook");
    let app = app(&mock);
    let mut daemon = app.spawn_daemon();
    daemon.wait_for_log("Credentials refused", WAIT);
    let list = app.json(&["connectors", "list", "--json"]);
    let error = list[0]["last_error"].as_str().unwrap();
    assert!(error.contains("a webhook is set"), "{list}");
    assert_eq!(list[0]["last_error_kind"], "auth", "{list}");
    daemon.stop_cleanly();
}

#[test]
fn check_config_names_what_is_wrong_with_a_bot() {
    let app = TestApp::new(
        None,
        "[[instances]]\nname = \"b1\"\ntype = \"telegram\"\n\n\
         [[instances]]\nname = \"b2\"\ntype = \"telegram\"\n[instances.telegram]\n\
         bot_token = \"env:HG_TG_UNSET_TOKEN\"\nmode = \"webhook\"\n",
    );
    let out = app.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs an [instances.telegram] table"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mode = \"webhook\" needs webhook_secret"),
        "{stderr}"
    );
    assert!(stderr.contains("HG_TG_UNSET_TOKEN is not set"), "{stderr}");
}

#[test]
fn webhook_mode_stores_signed_updates_and_refuses_a_wrong_secret() {
    const SECRET: &str = "tg-webhook-secret-0c4d";
    let mock = MockBotApi::start(TOKEN).unwrap();
    let mut app = TestApp::new(
        None,
        &format!(
            "{}\n[[instances]]\nname = \"shop-bot\"\ntype = \"telegram\"\nschedule = \"0 0 1 1 *\"\n\
             [instances.telegram]\napi_url = \"{}\"\nbot_token = \"env:HG_TG_BOT_TOKEN\"\n\
             mode = \"webhook\"\nwebhook_secret = \"env:HG_TG_WEBHOOK_SECRET\"\n",
            common::http::HTTP_CONFIG,
            mock.url()
        ),
    );
    app.env.push(("HG_TG_BOT_TOKEN".into(), TOKEN.into()));
    app.env.push(("HG_TG_WEBHOOK_SECRET".into(), SECRET.into()));
    app.env.extend(common::http::token_env());
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = common::http::base_url(&daemon);
    let update = serde_json::json!({
        "update_id": 900001,
        "message": {
            "message_id": 11,
            "date": chrono::Utc::now().timestamp(),
            "chat": {"id": 4242, "type": "private", "first_name": "Ana"},
            "from": {"id": 4242, "is_bot": false, "first_name": "Ana"},
            "text": "Olá, o meu pedido chegou partido."
        }
    })
    .to_string();
    let post = |secret: Option<&str>| {
        let mut req = common::http::client()
            .post(format!("{base}/webhooks/shop-bot"))
            .header("content-type", "application/json")
            .body(update.clone());
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(post(None), 401, "an unsigned delivery is refused");
    assert_eq!(post(Some("wrong")), 401, "a wrong secret is refused");
    assert!(
        threads(&app).is_empty(),
        "a refused delivery stores nothing"
    );

    assert_eq!(post(Some(SECRET)), 200);
    let thread = wait_thread(&app, &daemon, "Ana");
    assert_eq!(thread["channel"], "telegram");
    assert_eq!(thread["status"], "awaiting");
    // Telegram redelivers when unsure: the same update adds nothing. A
    // second update after it shows that the redelivery was dealt with.
    assert_eq!(post(Some(SECRET)), 200);
    let next = update
        .replace("900001", "900002")
        .replace("\"message_id\":11", "\"message_id\":12")
        .replace("chegou partido", "veio sem a fatura");
    let status = common::http::client()
        .post(format!("{base}/webhooks/shop-bot"))
        .header("content-type", "application/json")
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body(next)
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
    let id = thread["id"].as_i64().unwrap();
    let texts = || -> Vec<String> {
        show(&app, id)["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    wait_until(WAIT, || texts().iter().any(|t| t.contains("fatura")))
        .unwrap_or_else(|_| panic!("the second update never arrived: {:?}", texts()));
    assert_eq!(
        texts().len(),
        2,
        "the redelivered update was stored twice: {:?}",
        texts()
    );
    assert!(
        mock.calls().is_empty(),
        "webhook mode never calls getUpdates (it would be refused with 409)"
    );
    assert!(
        !daemon.log().contains(SECRET),
        "the webhook secret leaked into the log"
    );
    daemon.stop_cleanly();
}

#[test]
fn connectors_webhook_sets_the_webhook_and_shows_what_telegram_reports() {
    const SECRET: &str = "tg-webhook-secret-77aa";
    let mock = MockBotApi::start(TOKEN).unwrap();
    let body = |mode: &str, public_url: &str| {
        format!(
            "[http]\npublic_url = \"{public_url}\"\n\n\
             [[instances]]\nname = \"shop-bot\"\ntype = \"telegram\"\n\
             [instances.telegram]\napi_url = \"{}\"\nbot_token = \"env:HG_TG_BOT_TOKEN\"\n\
             mode = \"{mode}\"\nwebhook_secret = \"env:HG_TG_WEBHOOK_SECRET\"\n",
            mock.url()
        )
    };
    let mut app = TestApp::new(None, &body("webhook", "https://hourglass.example.com/"));
    app.env.push(("HG_TG_BOT_TOKEN".into(), TOKEN.into()));
    app.env.push(("HG_TG_WEBHOOK_SECRET".into(), SECRET.into()));

    let out = app.run(&["connectors", "webhook", "shop-bot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("shop-bot: no webhook set"));

    let out = app.run(&["connectors", "webhook", "shop-bot", "--set"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("webhook set to https://hourglass.example.com/webhooks/shop-bot"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(SECRET) && !stdout.contains(TOKEN),
        "{stdout}"
    );
    let (url, secret) = mock.webhook();
    assert_eq!(url, "https://hourglass.example.com/webhooks/shop-bot");
    assert_eq!(
        secret.as_deref(),
        Some(SECRET),
        "Telegram must send the secret back"
    );

    // Telegram could not deliver, and holds the updates back.
    mock.push_message(4242, "Ana", "Hello?");
    mock.set_webhook_error(
        1_796_000_000,
        "Wrong response from the webhook: 502 Bad Gateway",
    );
    let v = app.json(&["connectors", "webhook", "shop-bot", "--json"]);
    assert_eq!(v["url"], "https://hourglass.example.com/webhooks/shop-bot");
    assert_eq!(v["pending_updates"], 1);
    assert_eq!(
        v["last_error"],
        "Wrong response from the webhook: 502 Bad Gateway"
    );
    assert_eq!(v["last_error_at"], "2026-11-30T00:53:20Z");
    let text = app.run(&["connectors", "webhook", "shop-bot"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("pending updates: 1"), "{text}");
    assert!(text.contains("502 Bad Gateway"), "{text}");

    // A polling bot is not switched to a webhook behind its back.
    mock.set_webhook("");
    std::fs::write(
        &app.config,
        format!(
            "[store]\nurl = \"sqlite://{}/hourglass.db\"\n\n{}",
            app.path().display(),
            body("poll", "https://hourglass.example.com")
        ),
    )
    .unwrap();
    let out = app.run(&["connectors", "webhook", "shop-bot", "--set"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode = \"webhook\""));
    assert_eq!(mock.webhook().0, "");
}

#[test]
fn split_long_sends_a_long_reply_as_several_messages_in_order() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let app = app(&mock);
    let long: String = (1..=3)
        .map(|p| format!("Paragraph {p}: {}", "word ".repeat(600).trim_end()))
        .collect::<Vec<_>>()
        .join("\n\n");
    assert!(long.chars().count() > 4096);
    // Without split_long: refused before anything is queued.
    let mut daemon = start(&app, &mock);
    mock.push_message(9090, "Olu", "Can you explain the warranty?");
    let t = wait_thread(&app, &daemon, "Olu");
    let id = t["id"].as_i64().unwrap();
    let out = app.run(&["reply", &id.to_string(), "--body", &long]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was queued") && err.contains("4096"),
        "{err}"
    );
    assert!(show(&app, id)["outbox"].as_array().unwrap().is_empty());
    daemon.stop_cleanly();

    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        text.replace(
            "long_poll_secs = 2\n",
            "long_poll_secs = 2\nsplit_long = true\n",
        ),
    )
    .unwrap();
    let mut daemon = start(&app, &mock);
    let r = reply(&app, id, &long);
    wait_until(WAIT, || mock.sent().len() == 3)
        .unwrap_or_else(|_| panic!("parts not sent; log:\n{}", daemon.log()));
    let outbox = show(&app, id)["outbox"].as_array().unwrap().clone();
    assert_eq!(outbox.len(), 3, "{outbox:#?}");
    wait_until(WAIT, || {
        show(&app, id)["outbox"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["state"] == "sent")
    })
    .unwrap();
    daemon.stop_cleanly();
    let sent = mock.sent();
    assert_eq!(sent.len(), 3, "each part once");
    for (k, m) in sent.iter().enumerate() {
        assert!(
            m.text.starts_with(&format!("Paragraph {}:", k + 1)),
            "part {k} out of order"
        );
        assert!(m.text.encode_utf16().count() <= 4096);
        assert_eq!(m.chat_id, 9090);
    }
    let joined: Vec<String> = sent.iter().map(|m| m.text.clone()).collect();
    assert_eq!(
        joined.join("\n\n"),
        long,
        "nothing lost or changed at the cuts"
    );
    assert!(outbox.iter().any(|o| o["id"] == r.as_str()));
    assert_eq!(thread_of(&app, "Olu").unwrap()["status"], "answered");
}
