//! What the HTTP surface keeps in the store (webhook deliveries,
//! Idempotency-Keys, metrics counts) and the thread list's status filters
//! and page, on SQLite and on PostgreSQL.

use chrono::{Duration, Utc};
use hourglass::clock::{Policy, Status};
use hourglass::store::prelude::*;
use hourglass::store::{Clocking, IdempotentReply, SqlStore, ThreadFilter};
use hourglass_connector::{Batch, Direction, Message};

fn clocking() -> Clocking {
    Clocking {
        channel: "messenger".into(),
        policy: Policy::wall_clock(Duration::hours(24)),
        points: hourglass::clock::thresholds(&[]),
    }
}

async fn story(store: &SqlStore) {
    store.migrate().await.unwrap();
    let now = Utc::now();

    // Webhook deliveries: stored once per body, pending until finished.
    let (a, new_a) = store
        .store_webhook_event("chat", b"{\"x\":1}", now)
        .await
        .unwrap();
    let (again, new_again) = store
        .store_webhook_event("chat", b"{\"x\":1}", now)
        .await
        .unwrap();
    let (b, _) = store
        .store_webhook_event("chat", b"{\"x\":2}", now)
        .await
        .unwrap();
    assert!(new_a && !new_again);
    assert_eq!(a, again);
    let pending = store.pending_webhook_events("chat", 10).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(pending[0].body, b"{\"x\":1}");
    assert!(store
        .pending_webhook_events("other", 10)
        .await
        .unwrap()
        .is_empty());
    store.retry_webhook_event(a, "store busy").await.unwrap();
    store.finish_webhook_event(a, None, now).await.unwrap();
    let pending = store.pending_webhook_events("chat", 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, b);
    assert_eq!(
        store.last_webhook_per_instance().await.unwrap()[0].0,
        "chat"
    );

    // Idempotency keys: the first reservation wins.
    let first = IdempotentReply {
        request_sha256: "h1".into(),
        thread_id: 1,
        outbox_id: "o1".into(),
    };
    assert!(store
        .reserve_idempotency_key("ana", "k", &first, now)
        .await
        .unwrap());
    let second = IdempotentReply {
        outbox_id: "o2".into(),
        ..first.clone()
    };
    assert!(!store
        .reserve_idempotency_key("ana", "k", &second, now)
        .await
        .unwrap());
    assert!(store
        .reserve_idempotency_key("bob", "k", &second, now)
        .await
        .unwrap());
    assert_eq!(
        store.idempotent_reply("ana", "k").await.unwrap(),
        Some(first)
    );
    assert_eq!(store.idempotent_reply("ana", "other").await.unwrap(), None);

    // Threads: 3 awaiting (one breached), one snoozed, one answered.
    let mut batch = Batch::default();
    for (i, hours_ago) in [1i64, 2, 30, 3].iter().enumerate() {
        batch.messages.push(Message::new(
            format!("m{i}"),
            format!("t{i}"),
            Direction::Inbound,
            now - Duration::hours(*hours_ago),
            "hello",
        ));
    }
    batch.messages.push(Message::new(
        "m9",
        "t9",
        Direction::Inbound,
        now - Duration::hours(5),
        "hi",
    ));
    batch.messages.push(Message::new(
        "m10",
        "t9",
        Direction::Outbound,
        now - Duration::hours(4),
        "done",
    ));
    store.ingest("chat", &batch, &clocking()).await.unwrap();
    let all = store.threads(&ThreadFilter::default(), now).await.unwrap();
    assert_eq!(all.len(), 5);
    let snooze_id = all
        .iter()
        .find(|t| t.status == Status::Awaiting)
        .unwrap()
        .id;
    store
        .snooze(snooze_id, now + Duration::hours(2), "ana", &clocking(), now)
        .await
        .unwrap();
    let ids = |status: Option<Status>, limit: Option<i64>| {
        let filter = ThreadFilter {
            status,
            limit,
            ..ThreadFilter::default()
        };
        async move {
            store
                .threads(&filter, now)
                .await
                .unwrap()
                .iter()
                .map(|t| (t.id, t.status))
                .collect::<Vec<_>>()
        }
    };
    let everything = ids(None, None).await;
    // Soonest deadline first, answered last.
    assert_eq!(everything[0].1, Status::Breached);
    assert_eq!(everything.last().unwrap().1, Status::Answered);
    assert_eq!(ids(None, Some(2)).await, everything[..2].to_vec());
    for status in [
        Status::Awaiting,
        Status::Breached,
        Status::Snoozed,
        Status::Answered,
        Status::NoResponseNeeded,
    ] {
        let want: Vec<_> = everything
            .iter()
            .filter(|(_, s)| *s == status)
            .cloned()
            .collect();
        assert_eq!(ids(Some(status), None).await, want, "{status:?}");
        assert_eq!(
            ids(Some(status), Some(1)).await,
            want.iter().take(1).cloned().collect::<Vec<_>>(),
            "{status:?}"
        );
    }
    assert_eq!(ids(Some(Status::Awaiting), None).await.len(), 2);

    // Metrics counts.
    let m = store.metrics_snapshot(now).await.unwrap();
    let count = |st: &str| {
        m.threads
            .iter()
            .find(|(_, s, _)| s == st)
            .map(|(_, _, n)| *n)
            .unwrap_or(0)
    };
    assert_eq!(
        (
            count("awaiting"),
            count("breached"),
            count("snoozed"),
            count("answered")
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(m.webhooks_pending, 1);
    assert!(m.next_due_at.is_some_and(|d| d > now));
}

#[tokio::test]
async fn http_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/hourglass.db", dir.path().display());
    let store = SqlStore::connect(&url, None, 4).await.unwrap();
    story(&store).await;
}

#[tokio::test]
async fn http_store_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("http").unwrap();
    let store = SqlStore::connect(&url, None, 4).await.unwrap();
    story(&store).await;
    store.close().await;
}
