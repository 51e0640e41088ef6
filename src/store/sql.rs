//! [`SqlStore`]: the connection pool behind every concern, how it is opened,
//! and the small helpers the concern files share (time columns, the audit
//! log). Each concern implements its own trait for `SqlStore` in its own
//! file; what differs between SQLite and PostgreSQL is in `dialect.rs`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};

use super::dialect::Backend;
use super::{from_ms, ms, Result, StoreError};

/// The store over SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
}

impl SqlStore {
    /// Connects from a URL: `sqlite:///abs/path.db`, `sqlite://rel.db`,
    /// `postgres://user@host:port/db`.
    pub async fn connect(
        url: &str,
        password: Option<&secrecy::SecretString>,
        max_connections: u32,
    ) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let (backend, url) = Backend::from_url(url, password)?;
        let options = AnyConnectOptions::from_str(&url).map_err(|e| {
            StoreError::Invalid(format!("Invalid store URL {}: {e}", redact_url(&url)))
        })?;
        let pool = AnyPoolOptions::new()
            .max_connections(backend.max_connections(max_connections))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn: &mut AnyConnection, _meta| {
                Box::pin(async move {
                    for statement in backend.session_setup() {
                        sqlx::query(statement).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            // A transaction whose COMMIT failed (SQLite on a full disk:
            // SQLITE_FULL, then SQLite has rolled back by itself and the
            // ROLLBACK of the dropped transaction fails too) leaves sqlx
            // counting it as open, and every later BEGIN on that
            // connection fails. Such a connection is closed, not reused.
            // Cheap when all is well: one atomic load per release.
            .after_release(|conn: &mut AnyConnection, _meta| {
                Box::pin(async move {
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    // A dropped transaction's ROLLBACK may still be queued:
                    // let it run, then look again.
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options)
            .await?;
        Ok(SqlStore { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction that will write (see [`Backend::begin_write`]).
    pub(super) async fn begin_write<'c>(
        &self,
        conn: &'c mut AnyConnection,
    ) -> Result<sqlx::Transaction<'c, sqlx::Any>> {
        self.backend.begin_write(conn).await
    }

    /// The connection pool, for tools and benchmarks that seed data in bulk.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A URL with its password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_owned()
}

pub(super) fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ms)
}

pub(super) fn opt_time(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_ms))
}

/// Appends to the audit log that `show` lists, in the caller's transaction.
/// Audit lines of one action by one actor, one per `(thread, detail)`, in
/// one statement per hundred.
pub(super) async fn insert_audits(
    conn: &mut AnyConnection,
    at: i64,
    actor: &str,
    action: &str,
    lines: &[(i64, &str)],
) -> Result<()> {
    for chunk in lines.chunks(100) {
        let values = (0..chunk.len())
            .map(|i| format!("($1, $2, $3, ${}, ${})", 4 + 2 * i, 5 + 2 * i))
            .collect::<Vec<_>>()
            .join(", ");
        let sql =
            format!("INSERT INTO audit (at, actor, action, thread_id, detail) VALUES {values}");
        let mut q = sqlx::query(&sql).bind(at).bind(actor).bind(action);
        for (thread_id, detail) in chunk {
            q = q.bind(*thread_id).bind(*detail);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn insert_audit(
    conn: &mut AnyConnection,
    at: i64,
    actor: &str,
    action: &str,
    thread_id: Option<i64>,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at, actor, action, thread_id, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(thread_id)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
