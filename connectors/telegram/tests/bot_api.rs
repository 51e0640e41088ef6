//! The connector against the mock Bot API (testsupport::telegram).

use std::time::Duration;

use hourglass_connector::{Connector, ConnectorError, Cursors, Direction, OutgoingReply};
use hourglass_telegram::{TelegramConfig, TelegramConnector, ALLOWED_UPDATES};
use hourglass_testsupport::telegram::MockBotApi;

const TOKEN: &str = "123456:TEST-token";

fn connector(mock: &MockBotApi) -> TelegramConnector {
    // Each test binary runs its tests in one process: one variable for all.
    std::env::set_var("HG_TEST_TG_TOKEN", TOKEN);
    let config: TelegramConfig = toml::from_str(&format!(
        "api_url = \"{}\"\nbot_token = \"env:HG_TEST_TG_TOKEN\"\nlong_poll_secs = 5\n",
        mock.url()
    ))
    .unwrap();
    TelegramConnector::new("shop-bot", config).unwrap()
}

fn commit(cursors: &mut Cursors, batch: &hourglass_connector::Batch) {
    cursors.extend(batch.cursors.clone());
}

fn reply(thread_key: &str, text: &str, meta: serde_json::Value) -> OutgoingReply {
    OutgoingReply {
        outbox_id: "0123456789abcdef".into(),
        thread_key: thread_key.into(),
        to: thread_key.rsplit(':').next().unwrap().into(),
        subject: None,
        text: text.into(),
        in_reply_to_meta: meta,
        order_id: None,
    }
}

#[tokio::test]
async fn nothing_is_confirmed_before_the_cursor_is_committed() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    let (u1, _) = mock.push_message(42, "Ana", "Where is my parcel?");
    let (u2, _) = mock.push_message(43, "Ben", "Do you ship to Norway?");
    let mut cursors = Cursors::new();

    let batch = c.poll(&cursors).await.unwrap();
    assert_eq!(batch.messages.len(), 2);
    assert_eq!(batch.messages[0].direction, Direction::Inbound);
    assert_eq!(batch.cursors.get(""), Some(&u2.to_string()));

    // The daemon died before committing: polling from the old cursor
    // gets the same updates again, nothing was confirmed.
    let again = c.poll(&cursors).await.unwrap();
    assert_eq!(again.messages.len(), 2);
    assert!(mock.confirmed().is_empty());

    commit(&mut cursors, &batch);
    let after = c.poll(&cursors).await.unwrap();
    assert!(after.messages.is_empty());
    assert_eq!(mock.confirmed(), vec![u1, u2]);
    assert_eq!(mock.calls().last().unwrap().offset, Some(u2 + 1));
    assert_eq!(
        mock.allowed_updates().unwrap(),
        ALLOWED_UPDATES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_message_arrives() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    let cursors = Cursors::new();
    let waiter = async { c.wait_for_change(&cursors, Duration::from_secs(60)).await };
    let pusher = async {
        while mock.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        mock.push_message(42, "Ana", "Hello?")
    };
    let (changed, _) = tokio::join!(waiter, pusher);
    assert!(changed.unwrap());
    let calls_before = mock.calls().len();
    // The poll that follows uses what the long poll received.
    let batch = c.poll(&cursors).await.unwrap();
    assert_eq!(batch.messages[0].text, "Hello?");
    assert_eq!(mock.calls().len(), calls_before);
}

#[tokio::test]
async fn conflicts_are_auth_errors_that_say_why() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    mock.set_webhook("https://example.com/hook");
    let e = c.poll(&Cursors::new()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth(m) if m.contains("webhook is set")),
        "{e}"
    );
    let e = c.health_check().await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth(m) if m.contains("webhook")),
        "{e}"
    );
    mock.set_webhook("");
    mock.set_other_poller(true);
    let e = c.poll(&Cursors::new()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth(m) if m.contains("another program")),
        "{e}"
    );
    mock.set_other_poller(false);
    c.health_check().await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_error_without_the_token() {
    let mock = MockBotApi::start("999:other").unwrap();
    let c = connector(&mock);
    let e = c.poll(&Cursors::new()).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth(_)), "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    // Nothing listening: a transient error, still without the token.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    std::env::set_var("HG_TEST_TG_TOKEN", TOKEN);
    let config: TelegramConfig = toml::from_str(&format!(
        "api_url = \"http://127.0.0.1:{port}\"\nbot_token = \"env:HG_TEST_TG_TOKEN\"\n"
    ))
    .unwrap();
    let c = TelegramConnector::new("x", config).unwrap();
    let e = c.poll(&Cursors::new()).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Transient(_)), "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
}

#[tokio::test]
async fn malformed_answers_are_bad_data_with_the_raw_bytes() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    mock.push_message(42, "Ana", "hi");
    mock.answer_garbage(1);
    match c.poll(&Cursors::new()).await.unwrap_err() {
        ConnectorError::BadData { raw, .. } => {
            assert_eq!(raw, b"<html><body>upstream hiccup</body>".to_vec())
        }
        e => panic!("{e}"),
    }
    // One unreadable update is quarantined; the cursor moves past it.
    let bad = mock.push_update(serde_json::json!({ "message": { "message_id": "x", "chat": 1 } }));
    let batch = c.poll(&Cursors::new()).await.unwrap();
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(batch.quarantined.len(), 1);
    assert_eq!(batch.quarantined[0].external_id, Some(bad.to_string()));
    assert_eq!(batch.cursors.get(""), Some(&bad.to_string()));
}

#[tokio::test]
async fn replies_answer_the_message_and_business_chats_go_through_their_connection() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    let sent = c
        .send_reply(&reply(
            "42",
            "It left today.",
            serde_json::json!({ "message_id": 101 }),
        ))
        .await
        .unwrap();
    let biz = c
        .send_reply(&reply(
            "b:conn-7:43",
            "Yes, we do.",
            serde_json::json!({ "message_id": 55 }),
        ))
        .await
        .unwrap();
    let out = mock.sent();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].chat_id, out[0].reply_to_message_id),
        (42, Some(101))
    );
    assert_eq!(out[0].business_connection_id, None);
    assert_eq!(sent.external_id, format!("42:{}", out[0].message_id));
    assert_eq!(out[1].business_connection_id.as_deref(), Some("conn-7"));
    assert_eq!(out[1].chat_id, 43);
    assert_eq!(
        biz.external_id,
        format!("b:conn-7:43:{}", out[1].message_id)
    );
}

#[tokio::test]
async fn sending_errors_are_typed() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    let long = "x".repeat(4097);
    let e = c
        .send_reply(&reply("42", &long, serde_json::Value::Null))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Refused(m) if m.contains("4097") && m.contains("4096")),
        "{e}"
    );
    c.send_reply(&reply("42", &"x".repeat(4096), serde_json::Value::Null))
        .await
        .unwrap();

    mock.flood_wait(7);
    let e = c
        .send_reply(&reply("42", "hi", serde_json::Value::Null))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)),
        "{e}"
    );

    mock.block(44);
    let e = c
        .send_reply(&reply("44", "hi", serde_json::Value::Null))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Refused(m) if m.contains("blocked the bot")),
        "{e}"
    );
    assert!(!e.is_retryable());
    assert_eq!(
        mock.sent().len(),
        1,
        "only the 4096-character reply went out"
    );
}

#[tokio::test]
async fn edits_and_media_are_read() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    let c = connector(&mock);
    let (_, id) = mock.push_message(42, "Ana", "The box is damged");
    mock.push_edit(42, "Ana", id, "The box is damaged");
    let batch = c.poll(&Cursors::new()).await.unwrap();
    assert_eq!(batch.messages.len(), 2);
    assert_eq!(batch.messages[0].external_id, batch.messages[1].external_id);
    assert!(batch.messages[1].edit);
    assert_eq!(batch.messages[1].text, "The box is damaged");
}

#[tokio::test]
async fn webhook_deliveries_need_the_secret_token_and_read_like_polls() {
    let mock = MockBotApi::start(TOKEN).unwrap();
    std::env::set_var("HG_TEST_TG_TOKEN", TOKEN);
    std::env::set_var("HG_TEST_TG_HOOK", "s3cret-Token_1");
    let config: TelegramConfig = toml::from_str(&format!(
        "api_url = \"{}\"\nbot_token = \"env:HG_TEST_TG_TOKEN\"\nwebhook_secret = \"env:HG_TEST_TG_HOOK\"\n",
        mock.url()
    ))
    .unwrap();
    let c = TelegramConnector::new("shop-bot", config).unwrap();
    assert!(c.verify_secret_token(Some("s3cret-Token_1")).is_ok());
    for wrong in [Some("s3cret-Token_2"), Some(""), None] {
        let e = c.verify_secret_token(wrong).unwrap_err();
        assert!(matches!(e, ConnectorError::Auth(_)), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    // Without a configured secret nothing is accepted.
    assert!(connector(&mock)
        .verify_secret_token(Some("anything"))
        .is_err());

    // The same update polled and pushed gives the same message.
    mock.push_message(42, "Ana", "pushed");
    let polled = c.poll(&Cursors::new()).await.unwrap();
    let body = serde_json::json!({
        "update_id": 1,
        "message": {
            "message_id": polled.messages[0].meta["message_id"], "date": 1_767_000_000,
            "chat": { "id": 42, "type": "private", "first_name": "Ana" },
            "from": { "id": 42, "is_bot": false, "first_name": "Ana" },
            "text": "pushed"
        }
    });
    let pushed = c.parse_update_body(body.to_string().as_bytes()).unwrap();
    assert_eq!(
        pushed.messages[0].external_id,
        polled.messages[0].external_id
    );
    assert!(pushed.cursors.is_empty());
    match c.parse_update_body(b"{not json").unwrap_err() {
        ConnectorError::BadData { raw, .. } => assert_eq!(raw, b"{not json".to_vec()),
        e => panic!("{e}"),
    }
}
