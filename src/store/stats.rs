//! Stats: the raw figures behind `hourglass stats`. The store returns one
//! sample per awaiting cycle; the percentiles are computed in `src/stats.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::sql::opt_time;
use super::{from_ms, ms, Result, SqlStore};

/// One awaiting cycle: when the customer opened it, and when a human first
/// answered (none yet: `None`).
#[derive(Debug, Clone, Serialize)]
pub struct ResponseSample {
    pub channel: String,
    pub inbound_at: DateTime<Utc>,
    pub first_response_at: Option<DateTime<Utc>>,
}

/// Figures for `stats`.
#[async_trait]
pub trait StatsStore: Send + Sync {
    /// Inbound messages that started a cycle since `since`, with the first
    /// human reply after each, for `stats`.
    async fn response_samples(&self, since: DateTime<Utc>) -> Result<Vec<ResponseSample>>;
}

#[async_trait]
impl StatsStore for SqlStore {
    async fn response_samples(&self, since: DateTime<Utc>) -> Result<Vec<ResponseSample>> {
        // Each inbound message that opened an awaiting cycle (no inbound
        // since the previous human reply), with the first human reply after.
        let rows = sqlx::query(
            "SELECT t.channel AS channel, m.sent_at AS inbound_at,
                (SELECT MIN(o.sent_at) FROM messages o
                  WHERE o.thread_id = m.thread_id AND o.direction = 'outbound'
                    AND o.automatic = 0 AND o.delivery_failed_at IS NULL
                    AND o.sent_at >= m.sent_at) AS first_response_at
             FROM messages m JOIN threads t ON t.id = m.thread_id
             WHERE m.direction = 'inbound' AND m.sent_at >= $1
               AND NOT EXISTS (
                 SELECT 1 FROM messages p
                  WHERE p.thread_id = m.thread_id AND p.direction = 'inbound'
                    AND (p.sent_at < m.sent_at OR (p.sent_at = m.sent_at AND p.id < m.id))
                    AND NOT EXISTS (
                      SELECT 1 FROM messages r
                       WHERE r.thread_id = m.thread_id AND r.direction = 'outbound'
                         AND r.automatic = 0 AND r.delivery_failed_at IS NULL
                         AND r.sent_at >= p.sent_at AND r.sent_at <= m.sent_at))
             ORDER BY m.sent_at",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ResponseSample {
                    channel: r.try_get("channel")?,
                    inbound_at: from_ms(r.try_get("inbound_at")?),
                    first_response_at: opt_time(r, "first_response_at")?,
                })
            })
            .collect()
    }
}
