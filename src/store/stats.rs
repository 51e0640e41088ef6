//! Stats: the raw figures behind `hourglass stats`. The store returns one
//! sample per awaiting cycle; the percentiles are computed in `src/stats.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::sql::opt_time;
use super::{from_ms, ms, Result, SqlStore};
use crate::lrr::{Cycle, DayCount, Standing, WINDOWS};

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
    /// The cycles of the last 90 days per instance, marketplace, age in
    /// whole days and standing at `now`, for the Late Response Rate
    /// (`crate::lrr`). One grouped range scan of `reply_cycles_started`.
    async fn late_response_counts(&self, now: DateTime<Utc>) -> Result<Vec<DayCount>>;
    /// Every cycle opened in `(since, now]`, with the agent whose reply
    /// closed it, for `hourglass report`.
    async fn report_cycles(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReportCycle>>;
    /// Opens a Late Response Rate alert episode for an instance and
    /// marketplace (empty: none) and queues `sinks`' deliveries, unless
    /// one is open already: then `None`.
    async fn raise_late_response_alert(
        &self,
        instance: &str,
        marketplace: &str,
        sinks: &[(String, serde_json::Value)],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>>;
    /// Ends the episode (the forecast went back under the level); true
    /// when one was open.
    async fn clear_late_response_alert(&self, instance: &str, marketplace: &str) -> Result<bool>;
}

/// One cycle for `hourglass report`.
#[derive(Debug, Clone, Serialize)]
pub struct ReportCycle {
    pub instance: String,
    pub channel: String,
    pub marketplace: Option<String>,
    pub cycle: Cycle,
    /// The name of the token or CLI user that queued the answering reply;
    /// `None` when it was sent elsewhere (the mailbox, the platform) or
    /// the cycle is not answered.
    pub agent: Option<String>,
}

const DAY_MS: i64 = 86_400_000;

#[async_trait]
impl StatsStore for SqlStore {
    async fn late_response_counts(&self, now: DateTime<Utc>) -> Result<Vec<DayCount>> {
        // The standing of `crate::lrr::standing`, in SQL: $2 is 24 h.
        let longest = WINDOWS.iter().copied().max().unwrap_or(90);
        let rows = sqlx::query(
            "SELECT instance, marketplace, ($1 - started_at) / $2 AS age_days,
                CASE
                  WHEN answered_at IS NOT NULL THEN
                    CASE WHEN answered_at - started_at > $2 THEN 'late' ELSE 'on_time' END
                  WHEN no_response_needed_at IS NOT NULL THEN 'late'
                  WHEN $1 - started_at > $2 THEN 'late'
                  ELSE 'pending'
                END AS standing,
                COUNT(*) AS n
             FROM reply_cycles
             WHERE started_at > $3 AND started_at <= $1
               AND (no_response_needed_at IS NULL OR answered_at IS NOT NULL
                    OR no_response_needed_at - started_at > $2)
             GROUP BY 1, 2, 3, 4",
        )
        .bind(ms(now))
        .bind(DAY_MS)
        .bind(ms(now) - longest * DAY_MS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .filter_map(|r| {
                let standing: String = match r.try_get("standing") {
                    Ok(s) => s,
                    Err(e) => return Some(Err(e.into())),
                };
                let standing = Standing::parse(&standing)?;
                Some((|| {
                    let marketplace: String = r.try_get("marketplace")?;
                    Ok(DayCount {
                        instance: r.try_get("instance")?,
                        marketplace: (!marketplace.is_empty()).then_some(marketplace),
                        age_days: r.try_get("age_days")?,
                        standing,
                        count: r.try_get("n")?,
                    })
                })())
            })
            .collect()
    }

    async fn report_cycles(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReportCycle>> {
        let rows = sqlx::query(
            "SELECT thread_id, started_at, instance, channel, marketplace, answered_at,
                no_response_needed_at
             FROM reply_cycles WHERE started_at > $1 AND started_at <= $2
             ORDER BY started_at",
        )
        .bind(ms(since))
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await?;
        // Who queued the replies sent since then: the outbox records the
        // token or CLI user, and the reply's message carries its send time.
        let sent = sqlx::query(
            "SELECT thread_id, sent_at, created_by FROM outbox
             WHERE state = 'sent' AND sent_at > $1",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        let mut agents = std::collections::HashMap::new();
        for r in &sent {
            let key: (i64, i64) = (r.try_get("thread_id")?, r.try_get("sent_at")?);
            agents.insert(key, r.try_get::<String, _>("created_by")?);
        }
        rows.iter()
            .map(|r| {
                let thread_id: i64 = r.try_get("thread_id")?;
                let answered: Option<i64> = r.try_get("answered_at")?;
                let marketplace: String = r.try_get("marketplace")?;
                Ok(ReportCycle {
                    instance: r.try_get("instance")?,
                    channel: r.try_get("channel")?,
                    marketplace: (!marketplace.is_empty()).then_some(marketplace),
                    cycle: Cycle {
                        started_at: from_ms(r.try_get("started_at")?),
                        answered_at: answered.map(from_ms),
                        no_response_needed_at: opt_time(r, "no_response_needed_at")?,
                    },
                    agent: answered
                        .and_then(|a| agents.get(&(thread_id, a)))
                        .filter(|a| !a.is_empty())
                        .cloned(),
                })
            })
            .collect()
    }

    async fn raise_late_response_alert(
        &self,
        instance: &str,
        marketplace: &str,
        sinks: &[(String, serde_json::Value)],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let opened = sqlx::query(
            "INSERT INTO late_response_alerts (instance, marketplace, raised_at)
             VALUES ($1, $2, $3) ON CONFLICT (instance, marketplace) DO NOTHING",
        )
        .bind(instance)
        .bind(marketplace)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        if opened.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let problem = format!("late_response_rate {marketplace}");
        let subject = super::alerts::AlertSubject::Instance {
            instance,
            problem: problem.trim_end(),
            episode: ms(now),
        };
        let deliveries: Vec<super::alerts::NewDelivery> = sinks
            .iter()
            .map(|(sink, payload)| super::alerts::NewDelivery {
                sink: sink.clone(),
                payload: payload.clone(),
                held_until: None,
            })
            .collect();
        let queued = super::alerts::queue_alerts(&mut tx, subject, &deliveries, ms(now)).await?;
        tx.commit().await?;
        Ok(Some(queued))
    }

    async fn clear_late_response_alert(&self, instance: &str, marketplace: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM late_response_alerts WHERE instance = $1 AND marketplace = $2",
        )
        .bind(instance)
        .bind(marketplace)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

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
