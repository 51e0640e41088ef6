//! The eBay connector against a mock of eBay's Message API and token
//! endpoint (testsupport::ebay), shaped after the published OpenAPI file:
//! eBay cannot be reached from here. Every test also checks that the
//! mock saw no request that breaks the spec.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::{
    Batch, Connector, ConnectorError, Cursors, Direction, Message, OutgoingReply, SentCheck,
};
use hourglass_ebay::{EbayConfig, EbayConnector, CHANNEL};
use hourglass_testsupport::ebay::{
    FaultKind, MockEbay, Route, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SELLER,
};

struct Setup {
    mock: MockEbay,
    _secrets: tempfile::TempDir,
    config: EbayConfig,
}

fn setup() -> Setup {
    let mock = MockEbay::start().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("client_secret");
    let refresh = secrets.path().join("refresh_token");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    std::fs::write(&refresh, REFRESH_TOKEN).unwrap();
    let mut config = EbayConfig::new(
        CLIENT_ID,
        SecretRef::File(secret.to_string_lossy().into_owned()),
        SecretRef::File(refresh.to_string_lossy().into_owned()),
    );
    config.api_url = mock.url().to_owned();
    config.token_url = mock.token_url();
    config.marketplace_id = "EBAY_DE".into();
    Setup {
        mock,
        _secrets: secrets,
        config,
    }
}

impl Setup {
    fn connector(&self) -> EbayConnector {
        EbayConnector::new("ebay-de", self.config.clone()).unwrap()
    }

    fn assert_spec_kept(&self) {
        assert_eq!(self.mock.violations(), Vec::<String>::new());
    }
}

/// Two days ago at 08:00 UTC, plus `minute` minutes: recent enough to be
/// read in full by a first sync.
fn at(minute: i64) -> DateTime<Utc> {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let day = (Utc::now() - chrono::Duration::days(2)).date_naive();
        Utc.from_utc_datetime(&day.and_hms_opt(8, 0, 0).unwrap())
    });
    *base + chrono::Duration::minutes(minute)
}

/// Polls until the connector says there is no more, committing cursors
/// like the daemon does.
async fn sync(conn: &EbayConnector, cursors: &mut Cursors) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let batch: Batch = conn.poll(cursors).await.unwrap();
        assert!(batch.quarantined.is_empty(), "{:?}", batch.quarantined);
        out.extend(batch.messages);
        cursors.extend(batch.cursors);
        if !batch.more {
            return out;
        }
    }
    panic!("the connector never finished");
}

/// `n` buyers who each asked one question about a listing.
fn seed(mock: &MockEbay, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let c = mock.add_conversation(
                &format!("buyer_{i}"),
                Some(&format!("32547891{i:04}")),
                &format!("Question about item {i}"),
            );
            mock.buyer_writes(&c, &format!("Is item {i} still available?"), at(i as i64));
            c
        })
        .collect()
}

#[tokio::test]
async fn the_first_poll_reads_every_conversation_across_pages() {
    let s = setup();
    let convs = seed(&s.mock, 120);
    // One long conversation: its messages span two pages of 50.
    for k in 0..59 {
        if k % 2 == 0 {
            s.mock
                .seller_writes(&convs[0], &format!("answer {k}"), at(200 + k));
        } else {
            s.mock
                .buyer_writes(&convs[0], &format!("follow-up {k}"), at(200 + k));
        }
    }
    let notice = s
        .mock
        .add_ebay_notice("Your item sold", "<p>Your item <b>sold</b>!</p>", at(300));
    let conn = s.connector();

    let mut cursors = Cursors::new();
    let messages = sync(&conn, &mut cursors).await;

    assert_eq!(messages.len(), 120 + 59 + 1);
    let ids: std::collections::HashSet<_> = messages.iter().map(|m| &m.external_id).collect();
    assert_eq!(ids.len(), messages.len(), "no message twice");
    // 120 conversations = 3 listing pages, plus one listing of FROM_EBAY;
    // one getConversation each, plus a second page for the long one.
    assert_eq!(s.mock.count(Route::GetConversations), 3 + 1);
    assert_eq!(s.mock.count(Route::GetConversation), 120 + 1 + 1);
    assert_eq!(conn.calls_last_24h() as usize, s.mock.count(Route::AnyApi));
    assert_eq!(
        s.mock.token_requests(),
        1,
        "one access token serves all calls"
    );

    // The seller was never configured: it is learned, and its messages
    // sent from eBay's site are outbound.
    let long: Vec<_> = messages
        .iter()
        .filter(|m| m.thread_key == convs[0])
        .collect();
    assert_eq!(long.len(), 60);
    assert_eq!(
        long.iter()
            .filter(|m| m.direction == Direction::Outbound)
            .count(),
        30
    );
    for m in &long {
        assert_eq!(m.customer.as_ref().unwrap().handle, "buyer_0");
        assert_eq!(m.customer.as_ref().unwrap().channel, CHANNEL);
        assert_eq!(m.order_id.as_deref(), Some("325478910000"));
        assert_eq!(m.marketplace.as_deref(), Some("EBAY_DE"));
        let from_seller = m.author.as_deref() == Some(SELLER);
        assert_eq!(m.direction == Direction::Outbound, from_seller, "{m:?}");
    }
    let q = messages.iter().find(|m| m.thread_key == convs[7]).unwrap();
    assert_eq!(q.direction, Direction::Inbound);
    assert_eq!(q.text, "Is item 7 still available?");
    assert_eq!(q.subject.as_deref(), Some("Question about item 7"));
    assert_eq!(q.sent_at, at(7));
    assert_eq!(q.meta["conversation_id"], convs[7].as_str());

    // eBay's notices are system messages, HTML turned into text.
    let n = messages.iter().find(|m| m.thread_key == notice).unwrap();
    assert_eq!(n.direction, Direction::System);
    assert!(n.customer.is_none());
    assert!(n.text.contains("Your item sold"), "{}", n.text);
    assert!(n.html.as_deref().unwrap().contains("<b>"));

    // Nothing new: one listing call per type and nothing else.
    let before = s.mock.count(Route::AnyApi);
    let again = conn.poll(&cursors).await.unwrap();
    assert!(again.messages.is_empty(), "{:?}", again.messages);
    assert!(!again.more);
    assert_eq!(s.mock.count(Route::AnyApi) - before, 2);
    assert!(s
        .mock
        .requests()
        .iter()
        .all(|r| r.marketplace.as_deref() == Some("EBAY_DE")));
    s.assert_spec_kept();
}

#[tokio::test]
async fn only_conversations_with_a_newer_message_are_fetched_again() {
    let s = setup();
    let convs = seed(&s.mock, 60);
    let conn = s.connector();
    let mut cursors = Cursors::new();
    sync(&conn, &mut cursors).await;

    s.mock.buyer_writes(&convs[7], "Hello? Any news?", at(500));
    let answer = s.mock.seller_writes(&convs[9], "Shipped today.", at(501));
    let before = s.mock.requests().len();
    let batch = conn.poll(&cursors).await.unwrap();
    let fetched: Vec<_> = s.mock.requests()[before..]
        .iter()
        .filter(|r| r.route == Route::GetConversation)
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    assert!(fetched.contains(&convs[7]) && fetched.contains(&convs[9]));

    // The changed conversations come back whole (ingest is idempotent);
    // the new messages are among them with the right direction.
    let new = batch
        .messages
        .iter()
        .find(|m| m.text == "Hello? Any news?")
        .unwrap();
    assert_eq!(new.direction, Direction::Inbound);
    assert_eq!(new.thread_key, convs[7]);
    let reply = batch
        .messages
        .iter()
        .find(|m| m.external_id == answer)
        .unwrap();
    assert_eq!(
        reply.direction,
        Direction::Outbound,
        "a reply from eBay's site stops the clock"
    );
    assert!(batch
        .messages
        .iter()
        .all(|m| m.thread_key == convs[7] || m.thread_key == convs[9]));
    // The member listing asked only for what changed.
    let listing = s.mock.requests()[before..]
        .iter()
        .find(|r| {
            r.route == Route::GetConversations && r.query["conversation_type"] == "FROM_MEMBERS"
        })
        .cloned()
        .unwrap();
    let newest_before = at(59).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(listing.query.get("start_time"), Some(&newest_before));
    s.assert_spec_kept();
}

#[tokio::test]
async fn an_expired_token_is_renewed_mid_poll_without_losing_a_page() {
    let s = setup();
    seed(&s.mock, 120);
    s.mock
        .inject(Route::GetConversation, 30, FaultKind::ExpireTokens);
    let conn = s.connector();
    let mut cursors = Cursors::new();
    let messages = sync(&conn, &mut cursors).await;
    assert_eq!(messages.len(), 120);
    assert_eq!(s.mock.token_requests(), 2);
    // The refused call was repeated once with the new token.
    assert_eq!(s.mock.count(Route::GetConversation), 120 + 1);
    s.assert_spec_kept();
}

#[tokio::test]
async fn a_token_refused_twice_is_an_auth_error_after_one_retry() {
    let s = setup();
    seed(&s.mock, 2);
    for _ in 0..2 {
        s.mock.inject(
            Route::AnyApi,
            0,
            FaultKind::Status {
                status: 401,
                error_id: 1001,
                retry_after: None,
            },
        );
    }
    let conn = s.connector();
    let err = conn.poll(&Cursors::new()).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Auth(_)), "{err}");
    assert_eq!(s.mock.count(Route::AnyApi), 2, "one retry, no more");
    assert_eq!(s.mock.token_requests(), 2);
}

#[tokio::test]
async fn a_revoked_refresh_token_is_an_auth_error_that_says_what_to_do() {
    let s = setup();
    seed(&s.mock, 2);
    s.mock.revoke_refresh_token();
    let conn = s.connector();
    for err in [
        conn.poll(&Cursors::new()).await.unwrap_err(),
        conn.health_check().await.unwrap_err(),
    ] {
        let ConnectorError::Auth(msg) = &err else {
            panic!("not an auth error: {err}");
        };
        assert!(msg.contains("invalid_grant"), "{msg}");
        assert!(
            msg.contains("18 months") && msg.contains("Sign in to eBay"),
            "{msg}"
        );
        assert!(msg.contains("refresh_token points (file:"), "{msg}");
        for secret in [REFRESH_TOKEN, CLIENT_SECRET, "access-"] {
            assert!(!err.to_string().contains(secret), "{err}");
        }
    }
    assert_eq!(
        s.mock.count(Route::AnyApi),
        0,
        "no API call without a token"
    );
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_auth_error_naming_the_keys() {
    let mut s = setup();
    let bad = s._secrets.path().join("bad_secret");
    std::fs::write(&bad, "not-the-cert-id").unwrap();
    s.config.client_secret = SecretRef::File(bad.to_string_lossy().into_owned());
    let err = s.connector().health_check().await.unwrap_err();
    let ConnectorError::Auth(msg) = &err else {
        panic!("not an auth error: {err}");
    };
    assert!(
        msg.contains("client_id") && msg.contains("client_secret"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-cert-id"), "{msg}");
}

#[tokio::test]
async fn throttling_and_outages_are_typed_and_lose_nothing() {
    let s = setup();
    seed(&s.mock, 3);
    let conn = s.connector();
    let faults = [
        (Route::GetConversations, 429, 0, Some(7)),
        (Route::GetConversation, 400, 2001, Some(3)),
        (Route::GetConversation, 500, 335000, None),
        (Route::GetConversations, 503, 0, None),
    ];
    for (route, status, error_id, retry_after) in faults {
        s.mock.inject(
            route,
            0,
            FaultKind::Status {
                status,
                error_id,
                retry_after,
            },
        );
        let err = conn.poll(&Cursors::new()).await.unwrap_err();
        match (status, &err) {
            (429, ConnectorError::RateLimited { retry_after }) => {
                assert_eq!(*retry_after, Some(Duration::from_secs(7)))
            }
            (400, ConnectorError::RateLimited { retry_after }) => {
                assert_eq!(*retry_after, Some(Duration::from_secs(3)))
            }
            (500 | 503, ConnectorError::Transient(msg)) => {
                assert!(msg.contains(&status.to_string()), "{msg}")
            }
            _ => panic!("HTTP {status} gave {err:?}"),
        }
    }
    // The cursor never moved, so the next poll reads everything.
    let mut cursors = Cursors::new();
    assert_eq!(sync(&conn, &mut cursors).await.len(), 3);
    s.assert_spec_kept();
}

#[tokio::test]
async fn malformed_answers_are_quarantined_and_the_poll_goes_on() {
    let s = setup();
    let convs = seed(&s.mock, 3);
    let conn = s.connector();

    // A listing that is not the documented JSON: quarantined, the cursor
    // stays where it was.
    let garbage = "{\"conversations\": [ {\"conversationId\": ";
    s.mock.inject(
        Route::GetConversations,
        0,
        FaultKind::Malformed(garbage.into()),
    );
    let batch = conn.poll(&Cursors::new()).await.unwrap();
    assert_eq!(batch.quarantined.len(), 1);
    assert_eq!(batch.quarantined[0].raw, garbage.as_bytes());
    assert!(
        batch.quarantined[0].source.contains("getConversations"),
        "{:?}",
        batch.quarantined[0]
    );
    let mut cursors = Cursors::new();
    cursors.extend(batch.cursors);

    // One conversation's messages unreadable: it is quarantined with its
    // raw bytes and its id, the others arrive.
    let broken = "<html>502 Bad Gateway</html>";
    // Listed newest first: the second fetch is the second newest.
    s.mock.inject(
        Route::GetConversation,
        1,
        FaultKind::Malformed(broken.into()),
    );
    let batch = conn.poll(&cursors).await.unwrap();
    assert_eq!(
        batch.messages.len(),
        2 + batch
            .messages
            .iter()
            .filter(|m| m.thread_key == convs[1])
            .count()
    );
    assert_eq!(batch.quarantined.len(), 1);
    let q = &batch.quarantined[0];
    assert_eq!(q.raw, broken.as_bytes());
    assert_eq!(q.external_id.as_deref(), Some(convs[1].as_str()));
    assert!(
        q.error.contains("GetMessagesByConversationIdResponse"),
        "{}",
        q.error
    );
    assert!(!batch.messages.iter().any(|m| m.thread_key == convs[1]));

    // The cursor did not move past it: the next poll reads it.
    cursors.extend(batch.cursors);
    let messages = sync(&conn, &mut cursors).await;
    assert!(
        messages.iter().any(|m| m.thread_key == convs[1]),
        "the conversation that was unreadable once is never read again"
    );
    s.assert_spec_kept();
}

fn reply_to(conv: &str, text: &str, outbox_id: &str) -> OutgoingReply {
    OutgoingReply {
        outbox_id: outbox_id.into(),
        thread_key: conv.into(),
        to: "buyer_0".into(),
        subject: None,
        text: text.into(),
        in_reply_to_meta: serde_json::json!({ "conversation_id": conv }),
        order_id: None,
    }
}

#[tokio::test]
async fn a_reply_reaches_ebay_once_and_check_sent_finds_it_after_a_crash() {
    let mut s = setup();
    s.config.mark_read = true;
    let convs = seed(&s.mock, 2);
    let conn = s.connector();
    let mut cursors = Cursors::new();
    sync(&conn, &mut cursors).await;

    let reply = reply_to(&convs[0], "Yes, it is!\nShipping tomorrow.", "outbox-1");
    let unsent = reply_to(&convs[0], "Not sent", "outbox-2");
    assert_eq!(conn.check_sent(&reply).await.unwrap(), SentCheck::NotSent);
    let sent = conn.send_reply(&reply).await.unwrap();
    let on_ebay = s.mock.sent();
    assert_eq!(on_ebay.len(), 1);
    assert_eq!(on_ebay[0].text, reply.text);
    assert_eq!(on_ebay[0].conversation_id, convs[0]);
    assert_eq!(sent.external_id, on_ebay[0].message_id);
    assert!(
        s.mock.is_read(&convs[0]),
        "mark_read = true marks the conversation read"
    );

    // After a crash, a new connector (nothing in memory) finds the reply.
    let fresh = s.connector();
    match fresh.check_sent(&reply).await.unwrap() {
        SentCheck::Sent(found) => assert_eq!(found.external_id, sent.external_id),
        other => panic!("the reply was not found: {other:?}"),
    }
    assert_eq!(fresh.check_sent(&unsent).await.unwrap(), SentCheck::NotSent);

    // The next poll reads the reply back as the seller's: same id, outbound.
    let batch = conn.poll(&cursors).await.unwrap();
    let back = batch
        .messages
        .iter()
        .find(|m| m.external_id == sent.external_id)
        .unwrap();
    assert_eq!(back.direction, Direction::Outbound);
    assert_eq!(s.mock.sent().len(), 1);
    s.assert_spec_kept();
}

#[tokio::test]
async fn a_reply_over_2000_characters_is_refused_before_it_reaches_ebay() {
    let s = setup();
    let convs = seed(&s.mock, 1);
    let conn = s.connector();
    let long = "ä".repeat(2001);
    let err = conn
        .send_reply(&reply_to(&convs[0], &long, "o1"))
        .await
        .unwrap_err();
    let ConnectorError::Refused(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("2000") && msg.contains("2001"), "{msg}");
    assert_eq!(s.mock.count(Route::SendMessage), 0);
    assert!(hourglass_ebay::check_reply(&"ä".repeat(2000)).is_ok());
    // eBay's own refusal (a conversation it does not know) is Refused too.
    let err = conn
        .send_reply(&reply_to("999", "hi", "o2"))
        .await
        .unwrap_err();
    let ConnectorError::Refused(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("355007"), "{msg}");
}

#[tokio::test]
async fn polling_stops_before_the_daily_budget_runs_out_and_replies_still_go() {
    let mut s = setup();
    s.config.daily_call_budget = 100;
    let convs = seed(&s.mock, 120);
    let conn = s.connector();
    let mut cursors = Cursors::new();
    let first = conn.poll(&cursors).await.unwrap();
    assert_eq!(first.messages.len(), 50);
    cursors.extend(first.cursors);
    match conn.poll(&cursors).await.unwrap_err() {
        ConnectorError::RateLimited {
            retry_after: Some(wait),
        } => {
            assert!(wait > Duration::from_secs(23 * 3600), "{wait:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s.mock.count(Route::AnyApi) <= 95);
    // The reserve is for replies.
    conn.send_reply(&reply_to(&convs[0], "On its way.", "o1"))
        .await
        .unwrap();
    assert_eq!(s.mock.sent().len(), 1);
}

#[tokio::test]
async fn the_connector_passes_the_conformance_suite() {
    let s = setup();
    seed(&s.mock, 130);
    s.mock
        .add_ebay_notice("Payment received", "Payment received for item 1", at(5));
    let conn = s.connector();
    let report = hourglass_connector::testkit::conformance(&conn)
        .await
        .unwrap();
    assert_eq!(report.messages, 131);
    assert_eq!(report.polls, 3);
    s.assert_spec_kept();
}

#[tokio::test]
async fn a_first_sync_reads_old_conversations_latest_message_only() {
    let s = setup();
    let old = Utc::now() - chrono::Duration::days(60);
    let stale = s
        .mock
        .add_conversation("buyer_old", Some("111122223333"), "Old question");
    s.mock.buyer_writes(&stale, "Do you ship to Austria?", old);
    let last = s
        .mock
        .seller_writes(&stale, "Yes.", old + chrono::Duration::hours(1));
    let recent = seed(&s.mock, 1);
    s.mock.seller_writes(&recent[0], "Yes, it is.", at(30));
    let conn = s.connector();
    let mut cursors = Cursors::new();
    let first = sync(&conn, &mut cursors).await;

    let of_stale: Vec<_> = first.iter().filter(|m| m.thread_key == stale).collect();
    assert_eq!(of_stale.len(), 1, "the latest message only");
    assert_eq!(of_stale[0].external_id, last);
    assert_eq!(of_stale[0].direction, Direction::Outbound);
    assert_eq!(
        first.iter().filter(|m| m.thread_key == recent[0]).count(),
        2
    );
    assert_eq!(s.mock.count(Route::GetConversation), 1);

    // When the old conversation comes alive, it is read whole.
    s.mock
        .buyer_writes(&stale, "And to Switzerland?", Utc::now());
    let batch = conn.poll(&cursors).await.unwrap();
    assert_eq!(
        batch
            .messages
            .iter()
            .filter(|m| m.thread_key == stale)
            .count(),
        3
    );
    s.assert_spec_kept();
}

#[tokio::test]
async fn a_reply_whose_answer_never_came_is_found_by_check_sent() {
    let s = setup();
    let convs = seed(&s.mock, 1);
    s.mock.inject(
        Route::SendMessage,
        0,
        FaultKind::SlowAnswer(Duration::from_secs(600)),
    );
    let reply = reply_to(&convs[0], "Refund issued.", "outbox-9");
    let conn = std::sync::Arc::new(s.connector());
    let sending = {
        let conn = conn.clone();
        let reply = reply.clone();
        tokio::spawn(async move { conn.send_reply(&reply).await })
    };
    // eBay has the message; the daemon dies before the answer arrives.
    while s.mock.sent().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sending.abort();
    let after_restart = s.connector();
    match after_restart.check_sent(&reply).await.unwrap() {
        SentCheck::Sent(found) => assert_eq!(found.external_id, s.mock.sent()[0].message_id),
        other => panic!("the reply was not found: {other:?}"),
    }
    assert_eq!(s.mock.sent().len(), 1);
}
