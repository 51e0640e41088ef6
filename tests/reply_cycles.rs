//! `reply_cycles`, the rows the Late Response Rate counts: kept by the
//! clock as messages and marks arrive, and filled by the upgrade
//! (migration 12) from messages already stored; the same rows either way.
//! On SQLite and on a real PostgreSQL.

use chrono::{DateTime, Duration, DurationRound, Utc};
use hourglass::clock::{self, Policy};
use hourglass::store::prelude::*;
use hourglass::store::{Backend, Clocking, NewReply, OutboxOutcome, SqlStore, MIGRATIONS};
use hourglass_connector::{Batch, Direction, Message};
use sqlx::Row;

fn clocking() -> Clocking {
    Clocking {
        channel: "amazon".into(),
        policy: Policy::wall_clock(Duration::hours(24)),
        points: clock::thresholds(&[std::time::Duration::from_secs(3600)]),
    }
}

fn msg(id: &str, thread: &str, dir: Direction, at: DateTime<Utc>, automatic: bool) -> Message {
    let mut m = Message::new(id, thread, dir, at, "text");
    m.automatic = automatic;
    if thread == "anna" {
        m.marketplace = Some("amazon.de".into());
    }
    m
}

type Row3 = (String, i64, Option<i64>, Option<i64>);

async fn rows(store: &SqlStore) -> Vec<Row3> {
    let mut out: Vec<Row3> = sqlx::query(
        "SELECT t.thread_key AS k, c.started_at, c.answered_at, c.no_response_needed_at
         FROM reply_cycles c JOIN threads t ON t.id = c.thread_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.try_get("k").unwrap(),
            r.try_get("started_at").unwrap(),
            r.try_get("answered_at").unwrap(),
            r.try_get("no_response_needed_at").unwrap(),
        )
    })
    .collect();
    out.sort();
    out
}

async fn story(store: SqlStore, backend: Backend) {
    store.migrate().await.unwrap();
    store
        .register_instance("amazon-eu", "amazon", "amazon")
        .await
        .unwrap();
    let c = clocking();
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let at = |h: i64| now - Duration::hours(h);
    let ms = |h: i64| at(h).timestamp_millis();
    use Direction::*;
    let batch = Batch {
        messages: vec![
            msg("a1", "anna", Inbound, at(50), false),
            msg("a2", "anna", Outbound, at(49), true), // auto-response: no answer
            msg("a3", "anna", Inbound, at(45), false), // same cycle
            msg("a4", "anna", Outbound, at(20), false), // answers it
            msg("a5", "anna", Inbound, at(10), false),
            msg("a6", "anna", Outbound, at(10), false), // same instant: answers it
            msg("a7", "anna", Inbound, at(3), false),   // open
            msg("b1", "bruno", Inbound, at(30), false),
            msg("c1", "chloe", Inbound, at(5), false),
            msg("s1", "chloe", System, at(4), false), // a notice opens nothing
        ],
        ..Default::default()
    };
    store.ingest("amazon-eu", &batch, &c).await.unwrap();
    let chloe: i64 = sqlx::query("SELECT id FROM threads WHERE thread_key = 'chloe'")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get("id")
        .unwrap();
    store
        .mark_no_response_needed(chloe, "ana", &c, now)
        .await
        .unwrap();
    // An older message of bruno's arrives late: his cycle opened earlier.
    let late = Batch {
        messages: vec![msg("b0", "bruno", Inbound, at(40), false)],
        ..Default::default()
    };
    store.ingest("amazon-eu", &late, &c).await.unwrap();

    let want: Vec<Row3> = vec![
        ("anna".into(), ms(50), Some(ms(20)), None),
        ("anna".into(), ms(10), Some(ms(10)), None),
        ("anna".into(), ms(3), None, None),
        ("bruno".into(), ms(40), None, None),
        ("chloe".into(), ms(5), None, Some(now.timestamp_millis())),
    ];
    let mut want = want;
    want.sort();
    assert_eq!(rows(&store).await, want, "kept by the clock");
    let market: Vec<String> =
        sqlx::query("SELECT marketplace FROM reply_cycles ORDER BY started_at")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("marketplace").unwrap())
            .collect();
    assert_eq!(market.iter().filter(|m| *m == "amazon.de").count(), 3);

    // The upgrade's fill from the stored messages gives the same rows.
    sqlx::query("DELETE FROM reply_cycles")
        .execute(store.pool())
        .await
        .unwrap();
    let m12 = MIGRATIONS.iter().find(|m| m.version == 12).unwrap();
    for stmt in m12.statements(backend) {
        let s = stmt.trim_start();
        if s.starts_with("INSERT INTO reply_cycles") || s.starts_with("UPDATE reply_cycles") {
            sqlx::query(&stmt).execute(store.pool()).await.unwrap();
        }
    }
    assert_eq!(rows(&store).await, want, "filled by the upgrade");
}

#[tokio::test]
async fn cycles_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/hg.db", dir.path().display());
    let store = SqlStore::connect(&url, None, 2).await.unwrap();
    story(store, Backend::Sqlite).await;
}

#[tokio::test]
async fn cycles_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("reply_cycles").unwrap();
    let store = SqlStore::connect(&url, None, 2).await.unwrap();
    story(store, Backend::Postgres).await;
}

/// One ingest that answers, reopens and moves the cycles of several
/// threads at once: the clock writes them together (one statement per
/// kind of change), and every thread still gets its own rows.
async fn many_threads_in_one_batch(store: SqlStore) {
    store.migrate().await.unwrap();
    store
        .register_instance("amazon-eu", "amazon", "amazon")
        .await
        .unwrap();
    let c = clocking();
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let at = |h: i64| now - Duration::hours(h);
    let ms = |h: i64| at(h).timestamp_millis();
    use Direction::*;
    let first = Batch {
        messages: ["t0", "t1", "t2", "t3", "t4"]
            .iter()
            .map(|t| msg(&format!("{t}-in"), t, Inbound, at(30), false))
            .collect(),
        ..Default::default()
    };
    store.ingest("amazon-eu", &first, &c).await.unwrap();
    let second = Batch {
        messages: vec![
            msg("t0-re", "t0", Outbound, at(20), false), // answers t0
            msg("t1-re", "t1", Outbound, at(21), false), // answers t1
            msg("t2-old", "t2", Inbound, at(40), false), // t2's cycle opened earlier
            msg("t3-re", "t3", Outbound, at(25), false), // answers t3 ...
            msg("t3-again", "t3", Inbound, at(10), false), // ... which opens again
        ],
        ..Default::default()
    };
    store.ingest("amazon-eu", &second, &c).await.unwrap();
    let mut want: Vec<Row3> = vec![
        ("t0".into(), ms(30), Some(ms(20)), None),
        ("t1".into(), ms(30), Some(ms(21)), None),
        ("t2".into(), ms(40), None, None),
        ("t3".into(), ms(30), Some(ms(25)), None),
        ("t3".into(), ms(10), None, None),
        ("t4".into(), ms(30), None, None),
    ];
    want.sort();
    assert_eq!(rows(&store).await, want);
}

#[tokio::test]
async fn many_threads_in_one_batch_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/hg.db", dir.path().display());
    let store = SqlStore::connect(&url, None, 2).await.unwrap();
    many_threads_in_one_batch(store).await;
}

#[tokio::test]
async fn many_threads_in_one_batch_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("reply_cycles_batch").unwrap();
    let store = SqlStore::connect(&url, None, 2).await.unwrap();
    many_threads_in_one_batch(store).await;
}

/// A thread's clock columns, by thread key.
async fn clocks(store: &SqlStore) -> Vec<(String, Vec<Option<i64>>)> {
    let cols = [
        "awaiting_since",
        "due_at",
        "last_inbound_at",
        "last_outbound_at",
        "reply_window_closes_at",
        "next_alert_at",
        "alerted_remaining_ms",
        "handled_at",
        "message_count",
    ];
    let sql = format!(
        "SELECT thread_key, {} FROM threads ORDER BY thread_key",
        cols.join(", ")
    );
    sqlx::query(&sql)
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.try_get("thread_key").unwrap(),
                cols.iter().map(|c| r.try_get(*c).unwrap()).collect(),
            )
        })
        .collect()
}

/// A reply sent through the outbox (whose clock is told from the thread's
/// clock before it, without reading its messages, when it can be) leaves
/// the same clock and cycles as the same reply ingested (recomputed from
/// every message): on an open cycle, an answered one, a marked one, and a
/// reply older than the customer's last message.
async fn sent_reply_as_ingested(sent: SqlStore, ingested: SqlStore) {
    let c = clocking();
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let at = |h: i64| now - Duration::hours(h);
    use Direction::*;
    let history = Batch {
        messages: vec![
            msg("o1", "open", Inbound, at(30), false),
            msg("a1", "answered", Inbound, at(30), false),
            msg("a2", "answered", Outbound, at(20), false),
            msg("m1", "marked", Inbound, at(30), false),
            msg("l1", "older", Inbound, at(30), false),
            msg("l2", "older", Inbound, at(2), false),
        ],
        ..Default::default()
    };
    // (thread, when the reply was sent)
    let replies = [
        ("open", at(1)),
        ("answered", at(1)),
        ("marked", at(1)),
        ("older", at(10)),
    ];
    for store in [&sent, &ingested] {
        store.migrate().await.unwrap();
        store
            .register_instance("amazon-eu", "amazon", "amazon")
            .await
            .unwrap();
        store.ingest("amazon-eu", &history, &c).await.unwrap();
        let marked: i64 = sqlx::query("SELECT id FROM threads WHERE thread_key = 'marked'")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get("id")
            .unwrap();
        store
            .mark_no_response_needed(marked, "ana", &c, at(5))
            .await
            .unwrap();
    }
    for (key, _) in &replies {
        let id: i64 = sqlx::query("SELECT id FROM threads WHERE thread_key = $1")
            .bind(*key)
            .fetch_one(sent.pool())
            .await
            .unwrap()
            .try_get("id")
            .unwrap();
        sent.enqueue_reply(&NewReply {
            id: format!("r-{key}"),
            thread_id: id,
            body: "Thanks!".into(),
            template: None,
            created_by: "ana".into(),
        })
        .await
        .unwrap();
    }
    let claimed = sent
        .claim_outbox_for(
            "amazon-eu",
            "w1",
            std::time::Duration::from_secs(60),
            10,
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), replies.len());
    let outcomes: Vec<(String, OutboxOutcome)> = replies
        .iter()
        .map(|(key, sent_at)| {
            (
                format!("r-{key}"),
                OutboxOutcome::Sent {
                    external_id: format!("x-{key}"),
                    sent_at: *sent_at,
                },
            )
        })
        .collect();
    let all: Vec<(&str, &OutboxOutcome)> = outcomes.iter().map(|(i, o)| (i.as_str(), o)).collect();
    sent.complete_outbox_many(&all, &c).await.unwrap();
    let same = Batch {
        messages: replies
            .iter()
            .map(|(key, sent_at)| msg(&format!("x-{key}"), key, Outbound, *sent_at, false))
            .collect(),
        ..Default::default()
    };
    ingested.ingest("amazon-eu", &same, &c).await.unwrap();

    assert_eq!(clocks(&sent).await, clocks(&ingested).await);
    assert_eq!(rows(&sent).await, rows(&ingested).await);
    let open = clocks(&sent).await;
    assert!(
        open.iter()
            .any(|(k, cols)| k == "older" && cols[0].is_some()),
        "the customer's later message still awaits an answer: {open:?}"
    );
}

#[tokio::test]
async fn a_sent_reply_leaves_the_clock_an_ingested_one_does_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = |name: &str| format!("sqlite://{}/{name}.db", dir.path().display());
    let sent = SqlStore::connect(&store("sent"), None, 2).await.unwrap();
    let ingested = SqlStore::connect(&store("ingested"), None, 2)
        .await
        .unwrap();
    sent_reply_as_ingested(sent, ingested).await;
}

#[tokio::test]
async fn a_sent_reply_leaves_the_clock_an_ingested_one_does_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let sent = pg.create_database("reply_sent").unwrap();
    let ingested = pg.create_database("reply_ingested").unwrap();
    let sent = SqlStore::connect(&sent, None, 2).await.unwrap();
    let ingested = SqlStore::connect(&ingested, None, 2).await.unwrap();
    sent_reply_as_ingested(sent, ingested).await;
}
