//! Alerts: which threads have reached their next alert point or hold an
//! unalerted error, and the queue of deliveries to sinks.
//!
//! Firing is at most once: a delivery is unique per (thread, cycle,
//! threshold, sink), and a thread's next alert point only moves if the
//! thread is still in the cycle that was evaluated. Deliveries are leased:
//! a daemon that dies mid-delivery gets the row back after the lease.
//! Digests read threads through `threads.rs`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::sql::opt_ms;
use super::threads::{thread_from_row, THREAD_COLUMNS};
use super::{from_ms, ms, Result, SqlStore, ThreadSummary};
use crate::clock::Threshold;

/// A thread whose next alert point has come.
#[derive(Debug, Clone)]
pub struct AlertCandidate {
    pub thread: ThreadSummary,
    pub tags: Vec<String>,
    pub alerted_remaining_ms: Option<i64>,
    pub next_alert_at: DateTime<Utc>,
}

/// A delivery to queue: the sink, the alert, and until when a route's
/// quiet hours hold it (`None`: send now).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub sink: String,
    pub payload: serde_json::Value,
    pub held_until: Option<DateTime<Utc>>,
}

/// Who took a thread (acknowledged its alert), for its current cycle.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Taken {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// What a queued delivery is about, and so the table it is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A thread's deadline, breach or error alert (`alerts`).
    Thread,
    /// An alert about an instance (its credentials were refused, the
    /// store is full), not about a thread (`instance_alerts`).
    Instance,
    /// A scheduled digest, rendered when its run was claimed
    /// (`digest_deliveries`).
    Digest,
}

impl DeliveryKind {
    fn table(self) -> &'static str {
        match self {
            DeliveryKind::Thread => "alerts",
            DeliveryKind::Instance => "instance_alerts",
            DeliveryKind::Digest => "digest_deliveries",
        }
    }
}

/// A queued alert delivery.
#[derive(Debug, Clone)]
pub struct AlertDelivery {
    pub id: i64,
    /// 0 unless `kind` is [`DeliveryKind::Thread`].
    pub thread_id: i64,
    pub kind: DeliveryKind,
    pub threshold: String,
    pub sink: String,
    pub attempts: i64,
    pub payload: serde_json::Value,
    /// Held by quiet hours until then: sent in one summary with the
    /// others held for the same sink.
    pub held_until: Option<DateTime<Utc>>,
}

/// Deciding, queueing and delivering alerts.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Threads whose next alert point is at or before `now`.
    async fn alert_candidates(&self, now: DateTime<Utc>, limit: i64)
        -> Result<Vec<AlertCandidate>>;
    /// The earliest pending alert point of any thread.
    async fn next_alert_at(&self) -> Result<Option<DateTime<Utc>>>;
    /// Records that `threshold` fired for the thread's current cycle, queues
    /// one delivery per sink (at most once: unique per thread, cycle,
    /// threshold and sink) and moves the thread's next alert point.
    async fn fire_alert(
        &self,
        thread_id: i64,
        cycle: DateTime<Utc>,
        threshold: Threshold,
        sinks: &[NewDelivery],
        next_alert_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<usize>;
    /// Threads with an error (a refused or bounced reply) not yet alerted
    /// on, with the error's time.
    async fn error_alert_candidates(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(ThreadSummary, DateTime<Utc>)>>;
    /// Queues one delivery per sink for the thread's error at `error_at`
    /// (at most once) and clears its flag.
    async fn fire_error_alert(
        &self,
        thread_id: i64,
        error_at: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<usize>;
    /// Moves a thread's next alert point without firing (snooze ended, ...).
    async fn set_next_alert_at(&self, thread_id: i64, at: Option<DateTime<Utc>>) -> Result<()>;
    /// Queues one admin alert per sink saying that `instance`'s
    /// credentials were refused, once per episode: `None` when this episode
    /// was alerted on already (by this daemon, before a restart, or by
    /// another daemon). The next successful poll ends the episode
    /// ([`super::InstanceStore::record_poll`]).
    async fn raise_auth_alert(
        &self,
        instance: &str,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>>;
    /// Queues one admin alert per sink saying that `instance` has been
    /// silent since `last_inbound` (its last inbound message), once per
    /// silence: `None` when this silence was alerted on already. A new
    /// message starts a new silence.
    async fn raise_silence_alert(
        &self,
        instance: &str,
        last_inbound: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>>;
    /// Records that `actor` took thread `id` for its current awaiting
    /// cycle: its later alert points are not sent and queued escalations
    /// are dropped. Returns who holds it now (an earlier taker keeps it),
    /// `None` when the thread is not awaiting.
    async fn take_thread(&self, id: i64, actor: &str, now: DateTime<Utc>) -> Result<Option<Taken>>;
    /// Who took thread `id` in its current cycle.
    async fn taken(&self, id: i64) -> Result<Option<Taken>>;
    /// Inbound messages of `instance` per hour since the epoch
    /// (`sent_at / 3600000`, count), from `since` on: the watchdog's rhythm.
    async fn arrivals_per_hour(
        &self,
        instance: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(i64, i64)>>;
    /// The first and last inbound message of `instance`.
    async fn arrivals(&self, instance: &str) -> Result<crate::alerts::silence::Arrivals>;
    /// Queues one admin alert per sink saying that `instance`'s Amazon
    /// relay mail stopped while SP-API shows new orders, once per silence
    /// (named by `last_inbound`, as for [`AlertStore::raise_silence_alert`]):
    /// `None` when this silence was alerted on already.
    async fn raise_relay_alert(
        &self,
        instance: &str,
        last_inbound: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>>;
    /// The silence (its last inbound message) the relay check last
    /// alerted on for `instance`.
    async fn relay_alerted_for(&self, instance: &str) -> Result<Option<DateTime<Utc>>>;
    /// Claims up to `limit` deliveries due now (of threads, then of
    /// instances), leased until `now + lease`.
    async fn claim_alert_deliveries(
        &self,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertDelivery>>;
    /// Ends a delivery: sent, retried at `retry_at`, or failed for good.
    async fn finish_alert_delivery(
        &self,
        kind: DeliveryKind,
        id: i64,
        result: std::result::Result<(), String>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Queues digest `name`'s run at `slot` unless a daemon did already:
    /// the run is recorded and one delivery per sink queued in one
    /// transaction. Returns the deliveries queued (`None`: queued before).
    async fn queue_digest(
        &self,
        name: &str,
        slot: DateTime<Utc>,
        daemon: &str,
        sinks: &[(String, serde_json::Value)],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>>;
}

#[async_trait]
impl AlertStore for SqlStore {
    async fn alert_candidates(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AlertCandidate>> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.next_alert_at IS NOT NULL AND t.next_alert_at <= $1
             ORDER BY t.next_alert_at LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertCandidate {
                    thread: thread_from_row(r, now)?,
                    tags: Vec::new(),
                    alerted_remaining_ms: r.try_get("alerted_remaining_ms")?,
                    next_alert_at: from_ms(r.try_get("next_alert_at")?),
                })
            })
            .collect()
    }

    async fn next_alert_at(&self) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT next_alert_at FROM threads WHERE next_alert_at IS NOT NULL
             ORDER BY next_alert_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(from_ms(r.try_get("next_alert_at")?)))
            .transpose()
    }

    async fn fire_alert(
        &self,
        thread_id: i64,
        cycle: DateTime<Utc>,
        threshold: Threshold,
        sinks: &[NewDelivery],
        next_alert_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        // Only if the thread is still in the cycle we evaluated (a message
        // that arrived meanwhile has reset it, and this alert is moot), and
        // this point has not fired yet: of several daemons evaluating the
        // same thread, one claims the firing, the others change nothing.
        let moved = sqlx::query(
            "UPDATE threads SET alerted_remaining_ms = $1, next_alert_at = $2
             WHERE id = $3 AND awaiting_since = $4
               AND (alerted_remaining_ms IS NULL OR alerted_remaining_ms > $1)",
        )
        .bind(threshold.remaining_ms)
        .bind(opt_ms(next_alert_at))
        .bind(thread_id)
        .bind(ms(cycle))
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        let label = threshold.label();
        let subject = AlertSubject::Thread {
            thread_id,
            cycle: ms(cycle),
            label: &label,
        };
        let queued = queue_alerts(&mut tx, subject, sinks, ms(now)).await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn error_alert_candidates(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(ThreadSummary, DateTime<Utc>)>> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS}, t.last_error_at FROM threads t
             LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.error_alert_pending = 1 ORDER BY t.last_error_at LIMIT $1"
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    thread_from_row(r, now)?,
                    from_ms(r.try_get::<Option<i64>, _>("last_error_at")?.unwrap_or(0)),
                ))
            })
            .collect()
    }

    async fn fire_error_alert(
        &self,
        thread_id: i64,
        error_at: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        // Only the error we looked at: a newer one gets its own alert.
        let cleared = sqlx::query(
            "UPDATE threads SET error_alert_pending = 0 WHERE id = $1 AND last_error_at = $2",
        )
        .bind(thread_id)
        .bind(ms(error_at))
        .execute(&mut *tx)
        .await?;
        if cleared.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        let subject = AlertSubject::Thread {
            thread_id,
            cycle: ms(error_at),
            label: "error",
        };
        let queued = queue_alerts(&mut tx, subject, sinks, ms(now)).await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn set_next_alert_at(&self, thread_id: i64, at: Option<DateTime<Utc>>) -> Result<()> {
        sqlx::query("UPDATE threads SET next_alert_at = $1 WHERE id = $2")
            .bind(opt_ms(at))
            .bind(thread_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn raise_auth_alert(
        &self,
        instance: &str,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let opened = sqlx::query(
            "UPDATE instances SET auth_alerted_at = $1
             WHERE name = $2 AND auth_alerted_at IS NULL",
        )
        .bind(ms(now))
        .bind(instance)
        .execute(&mut *tx)
        .await?;
        if opened.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let subject = AlertSubject::Instance {
            instance,
            problem: "auth",
            episode: ms(now),
        };
        let queued = queue_alerts(&mut tx, subject, sinks, ms(now)).await?;
        tx.commit().await?;
        Ok(Some(queued))
    }

    async fn raise_silence_alert(
        &self,
        instance: &str,
        last_inbound: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>> {
        self.raise_silence_episode(
            instance,
            "silence_alerted_for",
            "silence",
            last_inbound,
            sinks,
            now,
        )
        .await
    }

    async fn take_thread(&self, id: i64, actor: &str, now: DateTime<Utc>) -> Result<Option<Taken>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let Some(row) = sqlx::query(
            "SELECT awaiting_since, taken_by, taken_at, taken_cycle FROM threads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(super::StoreError::ThreadNotFound(id));
        };
        let Some(cycle) = row.try_get::<Option<i64>, _>("awaiting_since")? else {
            tx.rollback().await?;
            return Ok(None);
        };
        if row.try_get::<Option<i64>, _>("taken_cycle")? == Some(cycle) {
            // Taken already in this cycle: the first taker keeps it.
            let by: Option<String> = row.try_get("taken_by")?;
            let at: Option<i64> = row.try_get("taken_at")?;
            tx.rollback().await?;
            return Ok(by.zip(at).map(|(by, at)| Taken {
                by,
                at: from_ms(at),
            }));
        }
        sqlx::query(
            "UPDATE threads SET taken_by = $1, taken_at = $2, taken_cycle = $3
             WHERE id = $4 AND awaiting_since = $3",
        )
        .bind(actor)
        .bind(ms(now))
        .bind(cycle)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // What is still waiting for this cycle (held by quiet hours, or not
        // yet claimed) would page people about a thread someone has taken.
        sqlx::query(
            "UPDATE alerts SET state = 'dropped', error = $1
             WHERE thread_id = $2 AND cycle = $3 AND state = 'queued'",
        )
        .bind(format!("taken by {actor}"))
        .bind(id)
        .bind(cycle)
        .execute(&mut *tx)
        .await?;
        super::sql::insert_audit(&mut tx, ms(now), actor, "take", Some(id), "").await?;
        tx.commit().await?;
        Ok(Some(Taken {
            by: actor.to_owned(),
            at: now,
        }))
    }

    async fn arrivals_per_hour(
        &self,
        instance: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT sent_at / 3600000 AS hour, COUNT(*) AS n FROM messages
             WHERE instance = $1 AND direction = 'inbound' AND sent_at >= $2
             GROUP BY sent_at / 3600000",
        )
        .bind(instance)
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("hour")?, r.try_get("n")?)))
            .collect()
    }

    async fn raise_relay_alert(
        &self,
        instance: &str,
        last_inbound: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>> {
        self.raise_silence_episode(
            instance,
            "relay_alerted_for",
            crate::alerts::relay::RELAY_SILENCE,
            last_inbound,
            sinks,
            now,
        )
        .await
    }

    async fn relay_alerted_for(&self, instance: &str) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query("SELECT relay_alerted_for FROM instances WHERE name = $1")
            .bind(instance)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r
                .try_get::<Option<i64>, _>("relay_alerted_for")?
                .map(from_ms),
            None => None,
        })
    }

    async fn arrivals(&self, instance: &str) -> Result<crate::alerts::silence::Arrivals> {
        let row = sqlx::query(
            "SELECT MIN(sent_at) AS first, MAX(sent_at) AS last FROM messages
             WHERE instance = $1 AND direction = 'inbound'",
        )
        .bind(instance)
        .fetch_one(&self.pool)
        .await?;
        Ok(crate::alerts::silence::Arrivals {
            first: row.try_get::<Option<i64>, _>("first")?.map(from_ms),
            last: row.try_get::<Option<i64>, _>("last")?.map(from_ms),
        })
    }

    async fn taken(&self, id: i64) -> Result<Option<Taken>> {
        let row = sqlx::query(
            "SELECT taken_by, taken_at FROM threads
             WHERE id = $1 AND taken_cycle IS NOT NULL AND taken_cycle = awaiting_since",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let by: Option<String> = row.try_get("taken_by")?;
        let at: Option<i64> = row.try_get("taken_at")?;
        Ok(by.zip(at).map(|(by, at)| Taken {
            by,
            at: from_ms(at),
        }))
    }

    async fn claim_alert_deliveries(
        &self,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertDelivery>> {
        let mut out = Vec::new();
        for kind in [
            DeliveryKind::Thread,
            DeliveryKind::Instance,
            DeliveryKind::Digest,
        ] {
            let left = limit - out.len() as i64;
            if left <= 0 {
                break;
            }
            out.extend(self.claim_from(kind, left, lease, now).await?);
        }
        Ok(out)
    }

    async fn finish_alert_delivery(
        &self,
        kind: DeliveryKind,
        id: i64,
        result: std::result::Result<(), String>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.finish_in(kind.table(), id, result, retry_at, now)
            .await
    }

    async fn queue_digest(
        &self,
        name: &str,
        slot: DateTime<Utc>,
        daemon: &str,
        sinks: &[(String, serde_json::Value)],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let claimed = sqlx::query(
            "INSERT INTO digest_runs (digest, slot, daemon, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest, slot) DO NOTHING",
        )
        .bind(name)
        .bind(ms(slot))
        .bind(daemon)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut queued = 0;
        for (sink, payload) in sinks {
            let done = sqlx::query(
                "INSERT INTO digest_deliveries (digest, slot, sink, state, attempts,
                    next_attempt_at, payload, created_at)
                 VALUES ($1, $2, $3, 'queued', 0, $4, $5, $4)
                 ON CONFLICT (digest, slot, sink) DO NOTHING",
            )
            .bind(name)
            .bind(ms(slot))
            .bind(sink)
            .bind(ms(now))
            .bind(payload.to_string())
            .execute(&mut *tx)
            .await?;
            queued += done.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(Some(queued))
    }
}

impl SqlStore {
    /// Claims due deliveries of one kind (the tables share the delivery
    /// columns).
    async fn claim_from(
        &self,
        kind: DeliveryKind,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertDelivery>> {
        let table = kind.table();
        // Digests are sent when their schedule says: quiet hours never hold them.
        let (thread, threshold, held) = match kind {
            DeliveryKind::Thread => ("thread_id", "threshold", "held_until"),
            DeliveryKind::Instance => (
                "CAST(0 AS BIGINT) AS thread_id",
                "problem AS threshold",
                "held_until",
            ),
            DeliveryKind::Digest => (
                "CAST(0 AS BIGINT) AS thread_id",
                "digest AS threshold",
                "CAST(NULL AS BIGINT) AS held_until",
            ),
        };
        let lock = self.backend.skip_locked();
        // One statement: a read-then-write transaction would fail on SQLite
        // with SQLITE_BUSY_SNAPSHOT whenever another writer commits between
        // the two. Leased: if this daemon dies mid-delivery, the row comes
        // back after the lease; a sink may then see it twice, which is the
        // price of never losing an alert.
        let sql = format!(
            "UPDATE {table} SET state = 'sending', attempts = attempts + 1, next_attempt_at = $1
             WHERE id IN (
                SELECT id FROM {table}
                WHERE state IN ('queued', 'sending') AND next_attempt_at <= $2
                ORDER BY next_attempt_at, id LIMIT $3{lock})
             RETURNING id, {thread}, {threshold}, sink, attempts, payload, {held}"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(now) + lease.as_millis() as i64)
            .bind(ms(now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok(AlertDelivery {
                    id: r.try_get("id")?,
                    thread_id: r.try_get("thread_id")?,
                    kind,
                    threshold: r.try_get("threshold")?,
                    sink: r.try_get("sink")?,
                    attempts: r.try_get("attempts")?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    held_until: r.try_get::<Option<i64>, _>("held_until")?.map(from_ms),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn finish_in(
        &self,
        table: &str,
        id: i64,
        result: std::result::Result<(), String>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        match result {
            Ok(()) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET state = 'sent', sent_at = $1, error = NULL WHERE id = $2"
                ))
                .bind(ms(now))
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
            Err(error) => {
                let (state, next) = match retry_at {
                    Some(at) => ("queued", ms(at)),
                    None => ("failed", ms(now)),
                };
                sqlx::query(&format!(
                    "UPDATE {table} SET state = $1, error = $2, next_attempt_at = $3 WHERE id = $4"
                ))
                .bind(state)
                .bind(error)
                .bind(next)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

impl SqlStore {
    /// Opens an instance's silence episode, named by its last inbound
    /// message and recorded in `column`, and queues `sinks`' deliveries;
    /// `None` when that silence was alerted already.
    async fn raise_silence_episode(
        &self,
        instance: &str,
        column: &str,
        problem: &str,
        last_inbound: DateTime<Utc>,
        sinks: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let opened = sqlx::query(&format!(
            "UPDATE instances SET {column} = $1
             WHERE name = $2 AND ({column} IS NULL OR {column} <> $1)"
        ))
        .bind(ms(last_inbound))
        .bind(instance)
        .execute(&mut *tx)
        .await?;
        if opened.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let subject = AlertSubject::Instance {
            instance,
            problem,
            episode: ms(last_inbound),
        };
        let queued = queue_alerts(&mut tx, subject, sinks, ms(now)).await?;
        tx.commit().await?;
        Ok(Some(queued))
    }
}

/// What a queued alert is about, and so the table it goes to and the key
/// that makes it once-only per sink.
#[derive(Clone, Copy)]
pub(super) enum AlertSubject<'a> {
    /// A thread's alert: at most once per (thread, cycle, label, sink).
    Thread {
        thread_id: i64,
        cycle: i64,
        label: &'a str,
    },
    /// An admin alert about an instance (`problem` = `auth`, `silence`,
    /// ...): at most once per episode and sink.
    Instance {
        instance: &'a str,
        problem: &'a str,
        episode: i64,
    },
}

/// Queues one delivery per sink about `subject`, each at most once.
/// Returns how many were new.
pub(super) async fn queue_alerts(
    conn: &mut AnyConnection,
    subject: AlertSubject<'_>,
    sinks: &[NewDelivery],
    now: i64,
) -> Result<usize> {
    let (table, key) = match subject {
        AlertSubject::Thread { .. } => ("alerts", "thread_id, cycle, threshold"),
        AlertSubject::Instance { .. } => ("instance_alerts", "instance, problem, episode"),
    };
    let sql = format!(
        "INSERT INTO {table} ({key}, sink, state, attempts, next_attempt_at, payload,
            created_at, held_until)
         VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $7, $8)
         ON CONFLICT ({key}, sink) DO NOTHING"
    );
    let mut queued = 0;
    for d in sinks {
        let held = d.held_until.map(ms);
        let q = sqlx::query(&sql);
        let q = match subject {
            AlertSubject::Thread {
                thread_id,
                cycle,
                label,
            } => q.bind(thread_id).bind(cycle).bind(label),
            AlertSubject::Instance {
                instance,
                problem,
                episode,
            } => q.bind(instance).bind(problem).bind(episode),
        };
        let done = q
            .bind(&d.sink)
            .bind(held.unwrap_or(now))
            .bind(d.payload.to_string())
            .bind(now)
            .bind(held)
            .execute(&mut *conn)
            .await?;
        queued += done.rows_affected() as usize;
    }
    Ok(queued)
}

/// Records an error on a thread (a bounced or refused reply) and flags it
/// for one alert, in the caller's transaction.
pub(super) async fn set_thread_error(
    conn: &mut AnyConnection,
    thread_id: i64,
    error: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE threads SET last_error = $1, last_error_at = $2, error_alert_pending = 1
         WHERE id = $3",
    )
    .bind(error)
    .bind(now)
    .bind(thread_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
