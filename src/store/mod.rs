//! The store: one trait with one method per domain operation, implemented
//! once over sqlx's `Any` driver for SQLite (embedded default) and
//! PostgreSQL (shared deployments). Each backend has its own migrations
//! with the same version numbers.

mod migrations;
mod push;
mod sql;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::{Batch, Cursors};
use serde::Serialize;

use crate::clock::{Policy, Status, Threshold};

pub use migrations::{Backend, MIGRATIONS};
pub use push::{sha256_hex, IdempotentReply, MetricsSnapshot, WebhookEvent};
pub use sql::{redact_url as sql_redact, SqlStore};

/// Store failures. Messages carry no secrets (URLs are shown without
/// passwords).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Unsupported store URL {0:?}: use sqlite:///path or postgres://...")]
    UnsupportedUrl(String),
    #[error("Thread {0} not found")]
    ThreadNotFound(i64),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How the clock of an instance's threads is set.
#[derive(Debug, Clone)]
pub struct Clocking {
    pub channel: String,
    pub policy: Policy,
    /// Alert points, most distant first, ending with the breach.
    pub points: Vec<Threshold>,
}

/// What one ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub inserted: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    pub threads_touched: usize,
}

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
}

/// Which threads to list.
#[derive(Debug, Clone, Default)]
pub struct ThreadFilter {
    pub due_within: Option<Duration>,
    pub channel: Option<String>,
    pub instance: Option<String>,
    pub status: Option<Status>,
    pub limit: Option<i64>,
}

/// A thread in a listing. Its JSON form is a public contract (DESIGN §6).
#[derive(Debug, Clone, Serialize)]
pub struct ThreadSummary {
    pub id: i64,
    pub instance: String,
    pub channel: String,
    pub status: Status,
    pub customer: Option<String>,
    pub order_id: Option<String>,
    pub marketplace: Option<String>,
    pub subject: Option<String>,
    pub language: Option<String>,
    pub awaiting_since: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    /// Milliseconds until `due_at` (negative when breached).
    pub time_left_ms: Option<i64>,
    pub reply_window_closes_at: Option<DateTime<Utc>>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub message_count: i64,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub thread_key: String,
    #[serde(skip)]
    pub reply_to: Option<String>,
}

/// One message in `show`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: i64,
    pub external_id: String,
    pub direction: String,
    pub automatic: bool,
    pub sent_at: DateTime<Utc>,
    pub author: Option<String>,
    pub subject: Option<String>,
    pub text: String,
    #[serde(skip)]
    pub meta: serde_json::Value,
    #[serde(skip)]
    pub reply_to: Option<String>,
}

/// A reply in the outbox, as `show` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    pub id: String,
    pub state: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub text: String,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// `show ID`: the thread and its whole conversation.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadDetail {
    #[serde(flatten)]
    pub thread: ThreadSummary,
    pub messages: Vec<MessageView>,
    pub outbox: Vec<OutboxView>,
    pub audit: Vec<AuditEntry>,
}

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
    pub attempts: i64,
    /// The state before the claim: `queued`, or `sending` when a previous
    /// worker died mid-send and the outcome is unknown.
    pub previous_state: String,
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

/// A thread whose next alert point has come.
#[derive(Debug, Clone)]
pub struct AlertCandidate {
    pub thread: ThreadSummary,
    pub tags: Vec<String>,
    pub alerted_remaining_ms: Option<i64>,
    pub next_alert_at: DateTime<Utc>,
}

/// A queued alert delivery.
#[derive(Debug, Clone)]
pub struct AlertDelivery {
    pub id: i64,
    pub thread_id: i64,
    pub threshold: String,
    pub sink: String,
    pub attempts: i64,
    pub payload: serde_json::Value,
}

/// An item kept in quarantine.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    pub instance: String,
    pub source: String,
    pub external_id: Option<String>,
    pub error: String,
    pub size: usize,
    pub created_at: DateTime<Utc>,
}

/// Per-channel figures for `stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseSample {
    pub channel: String,
    pub inbound_at: DateTime<Utc>,
    pub first_response_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// The SQL store behind this one, for the HTTP surface's own tables
    /// (webhook events, idempotency keys; see `push.rs`).
    fn as_sql(&self) -> Option<&SqlStore> {
        None
    }

    /// Applies pending migrations; returns the versions applied now.
    async fn migrate(&self) -> Result<Vec<i64>>;
    /// Versions already applied.
    async fn applied_migrations(&self) -> Result<Vec<i64>>;

    /// Records that an instance exists (at daemon start).
    async fn register_instance(&self, name: &str, kind: &str, channel: &str) -> Result<()>;
    async fn record_poll(&self, instance: &str, outcome: &PollOutcome) -> Result<()>;
    async fn set_instance_state(&self, instance: &str, state: &str) -> Result<()>;
    async fn instances(&self) -> Result<Vec<InstanceStatus>>;

    async fn cursors(&self, instance: &str) -> Result<Cursors>;
    /// Writes a batch's messages, quarantined items and cursors in one
    /// transaction, and resets the clock of every thread it touched.
    async fn ingest(
        &self,
        instance: &str,
        batch: &Batch,
        clocking: &Clocking,
    ) -> Result<IngestReport>;

    async fn threads(
        &self,
        filter: &ThreadFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<ThreadSummary>>;
    async fn thread(&self, id: i64, now: DateTime<Utc>) -> Result<Option<ThreadDetail>>;
    async fn mark_no_response_needed(
        &self,
        id: i64,
        actor: &str,
        clocking: &Clocking,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn snooze(
        &self,
        id: i64,
        until: DateTime<Utc>,
        actor: &str,
        clocking: &Clocking,
        now: DateTime<Utc>,
    ) -> Result<()>;

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
    /// Ends a send; on `Sent` the reply becomes an outbound message of the
    /// thread and the clock stops, in the same transaction.
    async fn complete_outbox(
        &self,
        id: &str,
        outcome: &OutboxOutcome,
        clocking: &Clocking,
    ) -> Result<()>;
    async fn outbox_counts(&self) -> Result<Vec<(String, i64)>>;
    /// Like [`Store::claim_outbox`], for one instance only: each instance's
    /// sender claims no more than its rate limit lets it send within the
    /// lease, so a slow or limited instance never holds back the others.
    async fn claim_outbox_for(
        &self,
        instance: &str,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>>;
    /// Puts a claimed reply that was never handed to the platform back in
    /// the queue (shutdown, a rate-limit pause), without counting an
    /// attempt. Only rows still claimed by `worker` are touched.
    async fn release_outbox(&self, id: &str, worker: &str) -> Result<()>;

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
        sinks: &[(String, serde_json::Value)],
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
        sinks: &[(String, serde_json::Value)],
        now: DateTime<Utc>,
    ) -> Result<usize>;
    /// Moves a thread's next alert point without firing (snooze ended, ...).
    async fn set_next_alert_at(&self, thread_id: i64, at: Option<DateTime<Utc>>) -> Result<()>;
    async fn claim_alert_deliveries(
        &self,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertDelivery>>;
    async fn finish_alert_delivery(
        &self,
        id: i64,
        result: std::result::Result<(), String>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    async fn quarantine(&self, instance: Option<&str>) -> Result<Vec<QuarantineEntry>>;
    async fn quarantine_raw(&self, id: i64) -> Result<Option<Vec<u8>>>;

    /// Inbound messages that started a cycle since `since`, with the first
    /// human reply after each, for `stats`.
    async fn response_samples(&self, since: DateTime<Utc>) -> Result<Vec<ResponseSample>>;

    /// The other threads of the customer behind thread `id` (other
    /// channels, other orders), most recently active first, at most 20:
    /// the web inbox shows a customer's whole conversation.
    async fn customer_threads(&self, id: i64, now: DateTime<Utc>) -> Result<Vec<ThreadSummary>>;
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}
