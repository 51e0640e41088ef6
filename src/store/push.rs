//! What the HTTP surface keeps: webhook deliveries (raw, durable before the
//! 200, processed afterwards), the `Idempotency-Key`s of API replies, and
//! the aggregates `/metrics` and `/readyz` show.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{from_ms, ms, Result, SqlStore};

/// A stored webhook delivery not yet turned into messages.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    pub id: i64,
    pub instance: String,
    pub body: Vec<u8>,
    pub received_at: DateTime<Utc>,
    pub attempts: i64,
}

/// What one `Idempotency-Key` already stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentReply {
    pub request_sha256: String,
    pub thread_id: i64,
    pub outbox_id: String,
}

/// Counts for `/metrics`, taken in one pass.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// (channel, status, count)
    pub threads: Vec<(String, String, i64)>,
    /// The earliest deadline of a thread still awaiting a reply.
    pub next_due_at: Option<DateTime<Utc>>,
    /// (state, count)
    pub outbox: Vec<(String, i64)>,
    /// (sink, state, count)
    pub alerts: Vec<(String, String, i64)>,
    /// (instance, count)
    pub quarantined: Vec<(String, i64)>,
    /// Webhook deliveries stored but not processed yet.
    pub webhooks_pending: i64,
    /// The Late Response Rate per instance and marketplace.
    pub late_response_rate: Vec<crate::lrr::LateResponseRate>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl SqlStore {
    /// Stores a verified webhook body. Returns its id and whether it is new
    /// (a redelivery of the same body is not stored twice).
    pub async fn store_webhook_event(
        &self,
        instance: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(i64, bool)> {
        let hash = sha256_hex(body);
        let inserted = sqlx::query(
            "INSERT INTO webhook_events (instance, body_sha256, body, received_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (instance, body_sha256) DO NOTHING
             RETURNING id",
        )
        .bind(instance)
        .bind(&hash)
        .bind(body.to_vec())
        .bind(ms(now))
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = inserted {
            return Ok((row.try_get("id")?, true));
        }
        let row =
            sqlx::query("SELECT id FROM webhook_events WHERE instance = $1 AND body_sha256 = $2")
                .bind(instance)
                .bind(&hash)
                .fetch_one(self.pool())
                .await?;
        Ok((row.try_get("id")?, false))
    }

    /// Deliveries waiting to be processed, oldest first.
    pub async fn pending_webhook_events(
        &self,
        instance: &str,
        limit: i64,
    ) -> Result<Vec<WebhookEvent>> {
        let rows = sqlx::query(
            "SELECT id, instance, body, received_at, attempts FROM webhook_events
             WHERE processed_at IS NULL AND instance = $1 ORDER BY id LIMIT $2",
        )
        .bind(instance)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WebhookEvent {
                    id: r.try_get("id")?,
                    instance: r.try_get("instance")?,
                    body: r.try_get("body")?,
                    received_at: from_ms(r.try_get("received_at")?),
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Marks a delivery processed (its messages are stored, or it could not
    /// be read and went to quarantine: `error` says so).
    pub async fn finish_webhook_event(
        &self,
        id: i64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_events SET processed_at = $1, error = $2, attempts = attempts + 1
             WHERE id = $3",
        )
        .bind(ms(now))
        .bind(error)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks deliveries processed (their messages are stored).
    pub async fn finish_webhook_events(&self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        for chunk in ids.chunks(500) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE webhook_events SET processed_at = $1, error = NULL, attempts = attempts + 1
                 WHERE id IN ({list})"
            );
            let mut q = sqlx::query(&sql).bind(ms(now));
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Records a failed attempt; the delivery stays pending.
    pub async fn retry_webhook_event(&self, id: i64, error: &str) -> Result<()> {
        sqlx::query("UPDATE webhook_events SET error = $1, attempts = attempts + 1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The last delivery received per instance, for `/readyz`.
    pub async fn last_webhook_per_instance(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = sqlx::query(
            "SELECT instance, MAX(received_at) AS at FROM webhook_events GROUP BY instance",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("instance")?, from_ms(r.try_get("at")?))))
            .collect()
    }

    /// What an `Idempotency-Key` of `principal` already queued.
    pub async fn idempotent_reply(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotentReply>> {
        let row = sqlx::query(
            "SELECT request_sha256, thread_id, outbox_id FROM idempotency_keys
             WHERE principal = $1 AND key = $2",
        )
        .bind(principal)
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(IdempotentReply {
                request_sha256: r.try_get("request_sha256")?,
                thread_id: r.try_get("thread_id")?,
                outbox_id: r.try_get("outbox_id")?,
            })
        })
        .transpose()
    }

    /// Reserves an `Idempotency-Key` for a reply about to be queued.
    /// Returns false when the key was taken meanwhile (a concurrent retry).
    pub async fn reserve_idempotency_key(
        &self,
        principal: &str,
        key: &str,
        reply: &IdempotentReply,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO idempotency_keys (principal, key, request_sha256, thread_id, outbox_id,
                created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (principal, key) DO NOTHING",
        )
        .bind(principal)
        .bind(key)
        .bind(&reply.request_sha256)
        .bind(reply.thread_id)
        .bind(&reply.outbox_id)
        .bind(ms(now))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The state of one outbox entry, if it exists.
    pub async fn outbox_state(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT state FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get("state").map_err(Into::into))
            .transpose()
    }

    /// Cheap liveness of the store: one trivial query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    /// Everything `/metrics` counts from the store. This reads every thread:
    /// callers cache it (see `http::metrics`), a scrape never runs it.
    pub async fn metrics_snapshot(&self, now: DateTime<Utc>) -> Result<MetricsSnapshot> {
        use super::StatsStore;
        let late_response_rate = crate::lrr::compute(&self.late_response_counts(now).await?);
        let now = ms(now);
        let threads = sqlx::query(
            "SELECT channel,
                CASE
                  WHEN due_at IS NULL THEN
                    CASE WHEN handled_at IS NOT NULL
                          AND (last_outbound_at IS NULL OR handled_at >= last_outbound_at)
                         THEN 'no_response_needed' ELSE 'answered' END
                  WHEN snoozed_until IS NOT NULL AND snoozed_until > $1 THEN 'snoozed'
                  WHEN due_at <= $1 THEN 'breached'
                  ELSE 'awaiting'
                END AS status,
                COUNT(*) AS n
             FROM threads GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let next_due = sqlx::query(
            "SELECT MIN(due_at) AS at FROM threads
             WHERE due_at IS NOT NULL AND due_at > $1
               AND (snoozed_until IS NULL OR snoozed_until <= $1)",
        )
        .bind(now)
        .fetch_one(self.pool())
        .await?;
        let outbox =
            sqlx::query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state ORDER BY state")
                .fetch_all(self.pool())
                .await?;
        let alerts = sqlx::query(
            "SELECT sink, state, COUNT(*) AS n FROM alerts GROUP BY sink, state ORDER BY 1, 2",
        )
        .fetch_all(self.pool())
        .await?;
        let quarantined = sqlx::query(
            "SELECT instance, COUNT(*) AS n FROM quarantine GROUP BY instance ORDER BY 1",
        )
        .fetch_all(self.pool())
        .await?;
        let pending =
            sqlx::query("SELECT COUNT(*) AS n FROM webhook_events WHERE processed_at IS NULL")
                .fetch_one(self.pool())
                .await?;
        let pairs = |rows: &[sqlx::any::AnyRow], a: &str| -> Result<Vec<(String, i64)>> {
            rows.iter()
                .map(|r| Ok((r.try_get(a)?, r.try_get("n")?)))
                .collect()
        };
        Ok(MetricsSnapshot {
            threads: threads
                .iter()
                .map(|r| Ok((r.try_get("channel")?, r.try_get("status")?, r.try_get("n")?)))
                .collect::<Result<_>>()?,
            next_due_at: next_due.try_get::<Option<i64>, _>("at")?.map(from_ms),
            outbox: pairs(&outbox, "state")?,
            alerts: alerts
                .iter()
                .map(|r| Ok((r.try_get("sink")?, r.try_get("state")?, r.try_get("n")?)))
                .collect::<Result<_>>()?,
            quarantined: pairs(&quarantined, "instance")?,
            webhooks_pending: pending.try_get("n")?,
            late_response_rate,
        })
    }
}
