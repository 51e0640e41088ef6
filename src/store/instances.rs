//! Connector instances: that they exist, how their last poll went (what
//! `connectors list` shows), and the cursors they resume from. Cursors are
//! written by an ingest, in its transaction (see `ingest.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::Cursors;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::sql::opt_time;
use super::{ms, Result, SqlStore};

/// The outcome of one poll, for the instance's status.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    Ok {
        messages: usize,
    },
    Failed {
        kind: String,
        error: String,
        failures: u32,
        next_poll_at: DateTime<Utc>,
    },
}

/// An instance as `connectors list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: String,
    /// `idle` (never polled), `ok`, `backoff`, `auth_failed`, `stopped`.
    pub state: String,
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_error_kind: Option<String>,
    pub last_poll_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub next_poll_at: Option<DateTime<Utc>>,
    pub messages_total: i64,
    /// When the admin was alerted that the credentials were refused; null
    /// again once a poll succeeds.
    pub auth_alerted_at: Option<DateTime<Utc>>,
    /// Platform API calls in the last 24 hours, as last counted (null for
    /// connectors that do not count).
    pub api_calls_24h: Option<i64>,
    /// The daily API call budget in force, where the platform has one.
    pub api_call_budget: Option<i64>,
    /// When `api_calls_24h` was counted.
    pub api_calls_at: Option<DateTime<Utc>>,
}

/// Instances and their cursors.
#[async_trait]
pub trait InstanceStore: Send + Sync {
    /// Records that an instance exists (at daemon start).
    async fn register_instance(&self, name: &str, kind: &str, channel: &str) -> Result<()>;
    /// Records how a poll ended: its state, failures and next poll.
    async fn record_poll(&self, instance: &str, outcome: &PollOutcome) -> Result<()>;
    async fn set_instance_state(&self, instance: &str, state: &str) -> Result<()>;
    /// Records the connector's API call count (last 24 h) and daily budget.
    async fn record_api_calls(
        &self,
        instance: &str,
        calls_24h: u32,
        budget: Option<u32>,
    ) -> Result<()>;
    async fn instances(&self) -> Result<Vec<InstanceStatus>>;
    /// Where the instance's next poll starts, per scope.
    async fn cursors(&self, instance: &str) -> Result<Cursors>;
}

#[async_trait]
impl InstanceStore for SqlStore {
    async fn register_instance(&self, name: &str, kind: &str, channel: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO instances (name, kind, channel, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, channel = excluded.channel",
        )
        .bind(name)
        .bind(kind)
        .bind(channel)
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_poll(&self, instance: &str, outcome: &PollOutcome) -> Result<()> {
        let now = ms(Utc::now());
        match outcome {
            PollOutcome::Ok { messages } => {
                sqlx::query(
                    "UPDATE instances SET state = 'ok', failures = 0, last_poll_at = $1,
                        last_success_at = $1, next_poll_at = NULL, auth_alerted_at = NULL,
                        messages_total = messages_total + $2, updated_at = $1
                     WHERE name = $3",
                )
                .bind(now)
                .bind(*messages as i64)
                .bind(instance)
                .execute(&self.pool)
                .await?;
            }
            PollOutcome::Failed {
                kind,
                error,
                failures,
                next_poll_at,
            } => {
                let state = if kind == "auth" {
                    "auth_failed"
                } else {
                    "backoff"
                };
                sqlx::query(
                    "UPDATE instances SET state = $1, failures = $2, last_error = $3,
                        last_error_kind = $4, last_poll_at = $5, next_poll_at = $6, updated_at = $5
                     WHERE name = $7",
                )
                .bind(state)
                .bind(i64::from(*failures))
                .bind(error)
                .bind(kind)
                .bind(now)
                .bind(ms(*next_poll_at))
                .bind(instance)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn set_instance_state(&self, instance: &str, state: &str) -> Result<()> {
        sqlx::query("UPDATE instances SET state = $1, updated_at = $2 WHERE name = $3")
            .bind(state)
            .bind(ms(Utc::now()))
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_api_calls(
        &self,
        instance: &str,
        calls_24h: u32,
        budget: Option<u32>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE instances SET api_calls_24h = $1, api_call_budget = $2, api_calls_at = $3
             WHERE name = $4",
        )
        .bind(i64::from(calls_24h))
        .bind(budget.map(i64::from))
        .bind(ms(Utc::now()))
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceStatus>> {
        let rows = sqlx::query(
            "SELECT name, kind, channel, state, failures, last_error, last_error_kind,
                last_poll_at, last_success_at, next_poll_at, messages_total,
                auth_alerted_at, api_calls_24h, api_call_budget, api_calls_at
             FROM instances ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InstanceStatus {
                    name: r.try_get("name")?,
                    kind: r.try_get("kind")?,
                    channel: r.try_get("channel")?,
                    state: r.try_get("state")?,
                    failures: r.try_get("failures")?,
                    last_error: r.try_get("last_error")?,
                    last_error_kind: r.try_get("last_error_kind")?,
                    last_poll_at: opt_time(r, "last_poll_at")?,
                    last_success_at: opt_time(r, "last_success_at")?,
                    next_poll_at: opt_time(r, "next_poll_at")?,
                    messages_total: r.try_get("messages_total")?,
                    auth_alerted_at: opt_time(r, "auth_alerted_at")?,
                    api_calls_24h: r.try_get("api_calls_24h")?,
                    api_call_budget: r.try_get("api_call_budget")?,
                    api_calls_at: opt_time(r, "api_calls_at")?,
                })
            })
            .collect()
    }

    async fn cursors(&self, instance: &str) -> Result<Cursors> {
        let rows = sqlx::query("SELECT scope, value FROM cursors WHERE instance = $1")
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("scope")?, r.try_get("value")?)))
            .collect()
    }
}

/// Stores the cursors a batch carries, in the ingest's transaction: they
/// move only together with the messages they cover.
pub(super) async fn save_cursors(
    conn: &mut AnyConnection,
    instance: &str,
    cursors: &Cursors,
    now: i64,
) -> Result<()> {
    for (scope, value) in cursors {
        sqlx::query(
            "INSERT INTO cursors (instance, scope, value, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (instance, scope) DO UPDATE SET value = excluded.value,
                updated_at = excluded.updated_at",
        )
        .bind(instance)
        .bind(scope)
        .bind(value)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
