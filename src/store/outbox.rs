//! The outbox: replies queued by agents and handed out to senders.
//!
//! A claim moves rows to `sending` with a lease, and counts an attempt, in
//! one transaction; a worker that dies mid-send leaves its rows there until
//! the lease runs out, and the next claim sees `previous_state = sending`
//! (the outcome is unknown: the platform may have it). The replies of one
//! thread leave in the order they were written. A sent reply becomes an
//! outbound message of its thread and stops the clock in the same
//! transaction that marks it sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::{Direction, Message};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::alerts::set_thread_error;
use super::clock::reclock_replied;
use super::dialect::{placeholders_from, value_rows};
use super::ingest::{insert_messages, MESSAGES_PER_STATEMENT};
use super::sql::{insert_audit, insert_audits};
use super::{ms, Clocking, Result, SqlStore, StoreError};

/// A reply to queue.
#[derive(Debug, Clone)]
pub struct NewReply {
    pub id: String,
    pub thread_id: i64,
    pub body: String,
    pub template: Option<String>,
    pub created_by: String,
}

/// A reply claimed by an outbox worker.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: String,
    pub thread_id: i64,
    pub instance: String,
    pub body: String,
    /// The template the reply was written from, if any.
    pub template: Option<String>,
    pub attempts: i64,
    /// The state before the claim: `queued`, or `sending` when a previous
    /// worker died mid-send and the outcome is unknown.
    pub previous_state: String,
    /// Whether a previous attempt recorded that its send started
    /// ([`OutboxStore::mark_send_started`]).
    pub send_started: bool,
}

/// How an outbox send ended.
#[derive(Debug, Clone)]
pub enum OutboxOutcome {
    Sent {
        external_id: String,
        sent_at: DateTime<Utc>,
    },
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    Failed {
        error: String,
    },
    Uncertain {
        error: String,
    },
}

/// Queueing, claiming and completing replies.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Queues a reply on its thread's instance.
    async fn enqueue_reply(&self, reply: &NewReply) -> Result<()>;
    /// Claims up to `limit` replies due now: queued ones, and ones left in
    /// `sending` by a worker whose lease ran out. Claimed rows are in
    /// `sending` with a lease until `now + lease`.
    async fn claim_outbox(
        &self,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>>;
    /// Like [`OutboxStore::claim_outbox`], for one instance only: each
    /// instance's sender claims no more than its rate limit lets it send
    /// within the lease, so a slow or limited instance never holds back the
    /// others.
    async fn claim_outbox_for(
        &self,
        instance: &str,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>>;
    /// Ends a send; on `Sent` the reply becomes an outbound message of the
    /// thread and the clock stops, in the same transaction.
    async fn complete_outbox(
        &self,
        id: &str,
        outcome: &OutboxOutcome,
        clocking: &Clocking,
    ) -> Result<()>;
    /// Ends several sends of one instance in one transaction: all are
    /// recorded or none is.
    async fn complete_outbox_many(
        &self,
        outcomes: &[(&str, &OutboxOutcome)],
        clocking: &Clocking,
    ) -> Result<()>;
    /// Puts a claimed reply that was never handed to the platform back in
    /// the queue (shutdown, a rate-limit pause), without counting an
    /// attempt. Only rows still claimed by `worker` are touched.
    async fn release_outbox(&self, id: &str, worker: &str) -> Result<()>;
    /// Records that the send of a reply claimed by `worker` starts now;
    /// an error (the claim is gone) means it must not be sent.
    async fn mark_send_started(&self, id: &str, worker: &str, now: DateTime<Utc>) -> Result<()>;
    /// How many replies are in each state.
    async fn outbox_counts(&self) -> Result<Vec<(String, i64)>>;
}

/// A reply is only handed out when no earlier reply of its thread is still
/// waiting or in flight: the replies of one conversation leave in the
/// order they were written, even when the first one is held back by a
/// 429 or a retry.
/// Claimed or sent replies per `UPDATE`.
const CLAIM_CHUNK: usize = 100;

const IN_THREAD_ORDER: &str = "NOT EXISTS (
    SELECT 1 FROM outbox earlier
    WHERE earlier.thread_id = outbox.thread_id
      AND earlier.state IN ('queued', 'sending')
      AND (earlier.created_at < outbox.created_at
           OR (earlier.created_at = outbox.created_at AND earlier.id < outbox.id)))";

#[async_trait]
impl OutboxStore for SqlStore {
    async fn enqueue_reply(&self, reply: &NewReply) -> Result<()> {
        let now = ms(Utc::now());
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let row = sqlx::query("SELECT instance FROM threads WHERE id = $1")
            .bind(reply.thread_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::ThreadNotFound(reply.thread_id))?;
        let instance: String = row.try_get("instance")?;
        sqlx::query(
            "INSERT INTO outbox (id, thread_id, instance, body, template, state, attempts,
                next_attempt_at, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, $6, $6)",
        )
        .bind(&reply.id)
        .bind(reply.thread_id)
        .bind(&instance)
        .bind(&reply.body)
        .bind(&reply.template)
        .bind(now)
        .bind(&reply.created_by)
        .execute(&mut *tx)
        .await?;
        let (actor, thread) = (&reply.created_by, Some(reply.thread_id));
        insert_audit(&mut tx, now, actor, "reply_queued", thread, &reply.id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_outbox(
        &self,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>> {
        self.claim(None, worker, lease, limit, now).await
    }

    async fn claim_outbox_for(
        &self,
        instance: &str,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>> {
        self.claim(Some(instance), worker, lease, limit, now).await
    }

    async fn complete_outbox(
        &self,
        id: &str,
        outcome: &OutboxOutcome,
        clocking: &Clocking,
    ) -> Result<()> {
        self.complete_outbox_many(&[(id, outcome)], clocking).await
    }

    async fn complete_outbox_many(
        &self,
        outcomes: &[(&str, &OutboxOutcome)],
        clocking: &Clocking,
    ) -> Result<()> {
        let now = ms(Utc::now());
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        // Sent replies, the common case, are written together: one update
        // each, then their messages, threads, clocks and audit lines in a
        // few statements for the whole group.
        let mut to_mark: Vec<(&str, &str, DateTime<Utc>)> = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                OutboxOutcome::Sent {
                    external_id,
                    sent_at,
                } => to_mark.push((id, external_id, *sent_at)),
                _ => complete_one(&mut tx, id, outcome, clocking, now).await?,
            }
        }
        let mut sent: Vec<SentRow> = Vec::with_capacity(to_mark.len());
        for chunk in to_mark.chunks(CLAIM_CHUNK) {
            sent.extend(mark_sent(&mut tx, chunk, now).await?);
        }
        if !sent.is_empty() {
            record_sent(&mut tx, &sent, clocking, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_send_started(&self, id: &str, worker: &str, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE outbox SET send_started_at = $1
             WHERE id = $2 AND state = 'sending' AND claimed_by = $3",
        )
        .bind(ms(now))
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(super::StoreError::Invalid(format!(
                "reply {id} is no longer claimed by this worker"
            )));
        }
        Ok(())
    }

    async fn release_outbox(&self, id: &str, worker: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'queued', claimed_by = NULL, claimed_until = NULL,
                send_started_at = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = $1
             WHERE id = $2 AND state = 'sending' AND claimed_by = $3",
        )
        .bind(ms(Utc::now()))
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}

impl SqlStore {
    /// Claims replies due now (of one instance, or all): queued ones, and
    /// ones left in `sending` by a worker whose lease ran out.
    async fn claim(
        &self,
        instance: Option<&str>,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>> {
        let now_ms = ms(now);
        let lease_until = now_ms + lease.as_millis() as i64;
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let lock = self.backend.skip_locked();
        let sql = format!(
            "SELECT id, thread_id, instance, body, template, attempts, state, send_started_at FROM outbox
             WHERE ($1 IS NULL OR instance = $1)
               AND ((state = 'queued' AND next_attempt_at <= $2)
                 OR (state = 'sending' AND claimed_until < $2))
               AND {IN_THREAD_ORDER}
             ORDER BY next_attempt_at, created_at, id
             LIMIT $3{lock}"
        );
        let rows = sqlx::query(&sql)
            .bind(instance)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            items.push(OutboxItem {
                id: r.try_get("id")?,
                thread_id: r.try_get("thread_id")?,
                instance: r.try_get("instance")?,
                body: r.try_get("body")?,
                template: r.try_get("template")?,
                attempts: r.try_get("attempts")?,
                previous_state: r.try_get("state")?,
                send_started: r.try_get::<Option<i64>, _>("send_started_at")?.is_some(),
            });
        }
        // One statement per hundred claimed rows, not one each: every
        // statement is a round trip (on SQLite, a hand-off to its thread).
        for chunk in items.chunks(CLAIM_CHUNK) {
            let sql = format!(
                "UPDATE outbox SET state = 'sending', claimed_by = $1, claimed_until = $2,
                    attempts = attempts + 1, updated_at = $3
                 WHERE id IN ({})",
                placeholders_from(4, chunk.len())
            );
            let mut q = sqlx::query(&sql)
                .bind(worker)
                .bind(lease_until)
                .bind(now_ms);
            for item in chunk {
                q = q.bind(&item.id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(items)
    }
}

/// A reply just marked sent, and the outbound message it becomes.
struct SentRow {
    id: String,
    instance: String,
    thread_id: i64,
    message: Message,
}

/// Marks replies sent (`(id, external id, sent at)`), in one statement;
/// the rest is [`record_sent`]'s. Returned in the order given.
async fn mark_sent(
    conn: &mut AnyConnection,
    replies: &[(&str, &str, DateTime<Utc>)],
    now: i64,
) -> Result<Vec<SentRow>> {
    if replies.is_empty() {
        return Ok(Vec::new());
    }
    // The values of each row go through a CTE: SQLite and PostgreSQL both
    // take `WITH ... UPDATE ... FROM`. $1 is `now`.
    let values = value_rows(2, replies.len(), 3);
    let sql = format!(
        "WITH v (v_id, v_external_id, v_sent_at) AS (VALUES {values})
         UPDATE outbox SET state = 'sent', external_id = v.v_external_id, sent_at = v.v_sent_at,
            error = NULL, claimed_until = NULL, updated_at = $1
         FROM v WHERE outbox.id = v.v_id
         RETURNING outbox.id AS id, outbox.thread_id AS thread_id,
            outbox.instance AS instance, outbox.body AS body"
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (id, external_id, sent_at) in replies {
        q = q.bind(*id).bind(*external_id).bind(ms(*sent_at));
    }
    let mut rows: HashMap<String, AnyRow> = HashMap::with_capacity(replies.len());
    for row in q.fetch_all(&mut *conn).await? {
        rows.insert(row.try_get("id")?, row);
    }
    let mut out = Vec::with_capacity(replies.len());
    for (id, external_id, sent_at) in replies {
        let row = rows
            .get(*id)
            .ok_or_else(|| StoreError::Invalid(format!("Outbox entry {id} not found")))?;
        // The message row is tied to its thread by id: no thread key needed.
        let mut m = Message::new(
            (*external_id).to_owned(),
            String::new(),
            Direction::Outbound,
            *sent_at,
            row.try_get::<String, _>("body")?,
        );
        m.author = Some("hourglass".into());
        m.meta = serde_json::json!({ "outbox_id": id });
        out.push(SentRow {
            id: (*id).to_owned(),
            instance: row.try_get("instance")?,
            thread_id: row.try_get("thread_id")?,
            message: m,
        });
    }
    Ok(out)
}

/// The rest of recording sent replies: each becomes an outbound message of
/// its thread, the thread's error clears, its clock stops, and the audit
/// says so; a few statements for the whole group.
async fn record_sent(
    conn: &mut AnyConnection,
    sent: &[SentRow],
    clocking: &Clocking,
    now: i64,
) -> Result<()> {
    let mut by_instance: BTreeMap<&str, Vec<(i64, &Message)>> = BTreeMap::new();
    for r in sent {
        by_instance
            .entry(&r.instance)
            .or_default()
            .push((r.thread_id, &r.message));
    }
    // The replies that became new messages, by thread: the clock takes
    // them from the thread's clock before them (see `reclock_replied`).
    let mut replies: HashMap<i64, Vec<DateTime<Utc>>> = HashMap::new();
    for (instance, rows) in by_instance {
        for chunk in rows.chunks(MESSAGES_PER_STATEMENT) {
            let inserted = insert_messages(conn, instance, chunk, now).await?;
            for (thread_id, m) in chunk {
                if inserted.contains_key(&m.external_id)
                    && m.direction == Direction::Outbound
                    && !m.automatic
                {
                    replies.entry(*thread_id).or_default().push(m.sent_at);
                }
            }
        }
    }
    let threads: BTreeSet<i64> = sent.iter().map(|r| r.thread_id).collect();
    reclock_replied(conn, &threads, &replies, clocking, now).await?;
    let lines: Vec<(i64, &str)> = sent.iter().map(|r| (r.thread_id, r.id.as_str())).collect();
    insert_audits(conn, now, "outbox", "reply_sent", &lines).await
}

/// Records one send's outcome on `conn`, inside the caller's transaction.
async fn complete_one(
    conn: &mut AnyConnection,
    id: &str,
    outcome: &OutboxOutcome,
    clocking: &Clocking,
    now: i64,
) -> Result<()> {
    if let OutboxOutcome::Sent {
        external_id,
        sent_at,
    } = outcome
    {
        let rows = mark_sent(conn, &[(id, external_id, *sent_at)], now).await?;
        return record_sent(conn, &rows, clocking, now).await;
    }
    let thread_id: i64 = sqlx::query("SELECT thread_id FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("Outbox entry {id} not found")))?
        .try_get("thread_id")?;
    match outcome {
        OutboxOutcome::Sent { .. } => {}
        OutboxOutcome::Retry { error, at } => {
            sqlx::query(
                "UPDATE outbox SET state = 'queued', error = $1, next_attempt_at = $2,
                    claimed_until = NULL, updated_at = $3
                 WHERE id = $4",
            )
            .bind(error)
            .bind(ms(*at))
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        OutboxOutcome::Failed { error } | OutboxOutcome::Uncertain { error } => {
            let state = if matches!(outcome, OutboxOutcome::Failed { .. }) {
                "failed"
            } else {
                "uncertain"
            };
            sqlx::query(
                "UPDATE outbox SET state = $1, error = $2, claimed_until = NULL, updated_at = $3
                 WHERE id = $4",
            )
            .bind(state)
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
            let thread_error = format!("Reply {id} {state}: {error}");
            set_thread_error(&mut *conn, thread_id, &thread_error, now).await?;
            let (action, detail) = (format!("reply_{state}"), format!("{id}: {error}"));
            insert_audit(&mut *conn, now, "outbox", &action, Some(thread_id), &detail).await?;
        }
    }
    Ok(())
}
