//! The store: one trait per concern, one method per domain operation, all
//! implemented once by [`SqlStore`] over sqlx's `Any` driver for SQLite
//! (embedded default) and PostgreSQL (shared deployments). [`Store`] is
//! every concern at once; callers hold an `Arc<dyn Store>`.
//!
//! | file             | concern                                                    |
//! |------------------|------------------------------------------------------------|
//! | `sql.rs`         | [`SqlStore`]: the pool, connecting, the audit log, helpers |
//! | `dialect.rs`     | every SQLite/PostgreSQL difference                         |
//! | `migrations.rs`  | the schema: embedded migrations and applying them          |
//! | `instances.rs`   | connector instances, their poll status and cursors         |
//! | `ingest.rs`      | a fetched batch, written in one transaction                |
//! | `threads.rs`     | reading threads: listings and one conversation             |
//! | `clock.rs`       | re-deriving a thread's reply clock; no-response and snooze |
//! | `customers.rs`   | one customer across channels: keys, links, splits          |
//! | `outbox.rs`      | queueing, claiming and completing replies                  |
//! | `alerts.rs`      | alert points, error alerts and the delivery queue          |
//! | `stats.rs`       | response samples for `stats`                               |
//! | `quarantine.rs`  | items that could not be read, with their raw bytes         |
//! | `push.rs`        | webhook deliveries, idempotency keys, metrics snapshots    |
//! | `leases.rs`      | daemons, their heartbeats, instance leases, digest runs    |
//! | `transfer.rs`    | `backup` (SQLite copy) and `migrate --to` (into PostgreSQL) |
//!
//! Adding a concern: a new file with its types, its trait and
//! `impl ThatStore for SqlStore` (module docs first, like the others), its
//! `mod`/`pub use` here, and its trait in [`Store`]'s list. Helpers that
//! must run inside another concern's transaction take `&mut AnyConnection`
//! and are `pub(super)` in the file of the table they write. Code holding a
//! `dyn Store` calls every concern's methods as they are; code holding a
//! concrete `SqlStore` imports the concern traits it calls.

mod alerts;
mod clock;
mod customers;
mod dialect;
mod ingest;
mod instances;
mod leases;
mod migrations;
mod outbox;
mod push;
mod quarantine;
mod secrets;
mod sql;
mod stats;
mod threads;
mod transfer;

use chrono::{DateTime, Utc};

pub use alerts::{AlertCandidate, AlertDelivery, AlertStore, DeliveryKind, NewDelivery, Taken};
pub use clock::{ClockStore, Clocking};
pub use customers::{CustomerDetail, CustomerStore, IdentityView, SplitView};
pub use dialect::Backend;
pub use ingest::{IngestReport, IngestStore};
pub use instances::{InstanceStatus, InstanceStore, PollOutcome};
pub use leases::{plan_leases, DaemonInfo, Fence, LeasePlan, LeaseRow, LeaseStore};
pub use migrations::{MigrationStore, MIGRATIONS};
pub use outbox::{NewReply, OutboxItem, OutboxOutcome, OutboxStore};
pub use push::{sha256_hex, IdempotentReply, MetricsSnapshot, WebhookEvent};
pub use quarantine::{QuarantineEntry, QuarantineStore};
pub use secrets::ConnectorGrant;
pub use sql::{redact_url as sql_redact, SqlStore};
pub use stats::{ReportCycle, ResponseSample, StatsStore};
pub use threads::{
    AuditEntry, MessageView, OutboxView, ThreadDetail, ThreadFilter, ThreadStore, ThreadSummary,
};
pub use transfer::{copy_store, BackupReport, CopyReport, TableCopy};

/// Every concern trait, for code that holds a concrete [`SqlStore`]:
/// `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        AlertStore, ClockStore, CustomerStore, IngestStore, InstanceStore, LeaseStore,
        MigrationStore, OutboxStore, QuarantineStore, StatsStore, Store, ThreadStore,
    };
}

/// Every concern of the store, for callers that hold one `dyn Store`.
pub trait Store:
    MigrationStore
    + InstanceStore
    + IngestStore
    + ThreadStore
    + ClockStore
    + CustomerStore
    + OutboxStore
    + AlertStore
    + StatsStore
    + QuarantineStore
    + LeaseStore
{
    /// The SQL store behind this one, for the HTTP surface's own tables
    /// (webhook events, idempotency keys; see `push.rs`).
    fn as_sql(&self) -> Option<&SqlStore> {
        None
    }
}

/// Stated once, so that a new concern is one line in [`Store`]'s list.
impl Store for SqlStore {
    fn as_sql(&self) -> Option<&SqlStore> {
        Some(self)
    }
}

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
    /// A customer, thread or identity named by an agent does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "The lease on instance {0} was taken over by another daemon; this batch was not committed"
    )]
    LeaseLost(String),
}

impl StoreError {
    /// The database refused a write for lack of space: SQLite's
    /// `SQLITE_FULL` (13), PostgreSQL's `disk_full` (53100), or the OS's
    /// `ENOSPC`. Nothing of the failed transaction was written.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("13" | "53100"))
                    || db.message().contains("database or disk is full")
            }
            StoreError::Database(sqlx::Error::Io(e)) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Times are stored as milliseconds since the epoch (BIGINT/INTEGER).
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}
