//! Moving a whole store: `hourglass backup FILE` (a consistent copy of a
//! SQLite store, also while the daemon writes to it) and `hourglass migrate
//! --to postgres://...` (a SQLite store copied into an empty PostgreSQL
//! store, for a seller who outgrows one machine).
//!
//! The copy is generic over the schema: the columns of each table are read
//! from the target's catalogue, and every column is one of the three types
//! the migrations use (BIGINT/INTEGER, TEXT, BYTEA/BLOB). The list of tables
//! is fixed here in foreign-key order; a table the target has and this list
//! lacks stops the copy, so a new migration cannot be forgotten silently.

use std::path::Path;

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Connection, Row};

use super::dialect::Backend;
use super::migrations::MigrationStore;
use super::sql::SqlStore;
use super::{Result, StoreError};

/// The tables `migrate --to` copies, parents before children.
const COPIED: &[&str] = &[
    "instances",
    "instance_alerts",
    "secrets",
    "connector_grants",
    "cursors",
    "customers",
    "identities",
    "identity_keys",
    "customer_splits",
    "threads",
    "reply_cycles",
    "late_response_alerts",
    "messages",
    "attachments",
    "quarantine",
    "outbox",
    "alerts",
    "audit",
    "webhook_events",
    "idempotency_keys",
    "digest_runs",
    "digest_deliveries",
];

/// Tables that describe the daemons running on a store, not its data: the
/// target starts without them and its first daemon fills them.
const NOT_COPIED: &[&str] = &["daemons", "leases", "schema_migrations"];

/// Bound parameters per INSERT stay well under PostgreSQL's 65,535.
const PARAMS_PER_INSERT: usize = 8_000;

/// What `hourglass backup` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub bytes: u64,
}

/// What `hourglass migrate --to` copied.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// Each table, in the order copied.
    pub tables: Vec<TableCopy>,
}

/// Rows copied into one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
}

impl SqlStore {
    /// Writes a consistent copy of this SQLite store to `file` with `VACUUM
    /// INTO`: it reads one snapshot (the daemon keeps writing meanwhile, WAL
    /// readers do not block writers) into `file.partial`, renamed when
    /// complete, so `file` is never half written. PostgreSQL is refused
    /// with a pointer to pg_dump.
    pub async fn backup_to(&self, file: &Path) -> Result<BackupReport> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Invalid(
                "backup copies a SQLite store; for PostgreSQL use pg_dump \
                 (e.g. pg_dump --format=custom --file=hourglass.dump DBNAME)"
                    .to_owned(),
            ));
        }
        if file.exists() {
            return Err(StoreError::Invalid(format!(
                "{} already exists; backup never overwrites a file",
                file.display()
            )));
        }
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        // A leftover of an interrupted backup: ours to replace.
        let _ = std::fs::remove_file(&partial);
        let target = partial.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a UTF-8 path", file.display()))
        })?;
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                let _ = std::fs::remove_file(&partial);
                StoreError::Invalid(format!("Cannot write {}: {e}", file.display()))
            })?;
        std::fs::rename(&partial, file).map_err(|e| {
            StoreError::Invalid(format!(
                "Cannot rename {} to {}: {e}",
                partial.display(),
                file.display()
            ))
        })?;
        let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        Ok(BackupReport { bytes })
    }
}

/// Copies every table of the SQLite store `source` into the PostgreSQL
/// store `target`, whose schema is created here and which must hold no
/// rows yet. One read snapshot of the source, one transaction on the
/// target: either everything arrives or nothing does, and the command can
/// simply be run again. The caller keeps the daemon off the source (its
/// SQLite lock) meanwhile: what it wrote during the copy would stay behind.
pub async fn copy_store(source: &SqlStore, target: &SqlStore) -> Result<CopyReport> {
    if source.backend != Backend::Sqlite || target.backend != Backend::Postgres {
        return Err(StoreError::Invalid(
            "migrate --to copies a SQLite store (the configured [store] url) into a \
             PostgreSQL store (--to postgres://...)"
                .to_owned(),
        ));
    }
    let known: Vec<i64> = super::MIGRATIONS.iter().map(|m| m.version).collect();
    let applied = source.applied_migrations().await.unwrap_or_default();
    if applied != known {
        return Err(StoreError::Invalid(format!(
            "The SQLite store's schema is at versions {applied:?}, this build's is {known:?}: \
             run `hourglass migrate` on it first"
        )));
    }
    let mut src = source.pool.acquire().await?;
    let mut read = src.begin().await?;

    target.migrate().await?;
    let mut dst = target.pool.acquire().await?;
    let mut write = dst.begin().await?;
    // The session default ends transactions idle for 5 s (a hung daemon's
    // locks); this one waits on the source between statements.
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0")
        .execute(&mut *write)
        .await?;
    let tables: Vec<String> = sqlx::query(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut *write)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>(0))
    .collect::<std::result::Result<_, _>>()?;
    if let Some(unknown) = tables
        .iter()
        .find(|t| !COPIED.contains(&t.as_str()) && !NOT_COPIED.contains(&t.as_str()))
    {
        return Err(StoreError::Invalid(format!(
            "The target has a table {unknown:?} this build does not know how to copy"
        )));
    }
    for table in COPIED.iter().chain(["daemons", "leases"].iter()) {
        let rows: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *write)
            .await?
            .try_get(0)?;
        if rows > 0 {
            return Err(StoreError::Invalid(format!(
                "The target store is not empty (table {table} has {rows} rows): \
                 migrate --to only fills a new, empty database"
            )));
        }
    }

    let mut report = CopyReport { tables: Vec::new() };
    for table in COPIED {
        let columns = target_columns(&mut write, table).await?;
        let rows = copy_table(&mut read, &mut write, table, &columns).await?;
        if columns.iter().any(|(c, t)| c == "id" && t == "bigint") {
            // Explicit ids leave the BIGSERIAL sequence behind: the next row
            // written by the daemon must not collide with a copied one.
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            ))
            .execute(&mut *write)
            .await?;
        }
        report.tables.push(TableCopy {
            table: (*table).to_owned(),
            rows,
        });
    }
    write.commit().await?;
    read.rollback().await?;
    Ok(report)
}

/// (name, type) of each column of `table` on PostgreSQL, in table order.
async fn target_columns(
    conn: &mut sqlx::AnyConnection,
    table: &str,
) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        let kind: String = r.try_get(1)?;
        if !matches!(kind.as_str(), "bigint" | "integer" | "text" | "bytea") {
            return Err(StoreError::Invalid(format!(
                "Column {table}.{name} has type {kind}, which migrate --to does not copy"
            )));
        }
        out.push((name, kind));
    }
    Ok(out)
}

/// One value on its way from SQLite to PostgreSQL.
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

fn cell(row: &AnyRow, i: usize, kind: &str) -> std::result::Result<Cell, sqlx::Error> {
    Ok(match kind {
        "bigint" | "integer" => Cell::Int(row.try_get(i)?),
        "bytea" => Cell::Bytes(row.try_get(i)?),
        _ => Cell::Text(row.try_get(i)?),
    })
}

/// Streams `table` from the source and writes it in multi-row INSERTs.
async fn copy_table(
    read: &mut sqlx::AnyConnection,
    write: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[(String, String)],
) -> Result<u64> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let list = names.join(", ");
    let per_insert = (PARAMS_PER_INSERT / columns.len().max(1)).max(1);
    let select = format!("SELECT {list} FROM {table} ORDER BY 1");
    let mut stream = sqlx::query(&select).fetch(&mut *read);
    let mut batch: Vec<Vec<Cell>> = Vec::with_capacity(per_insert);
    let mut copied = 0u64;
    while let Some(row) = stream.try_next().await? {
        let cells = columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| cell(&row, i, kind))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        batch.push(cells);
        if batch.len() == per_insert {
            copied += insert(write, table, &list, columns.len(), &mut batch).await?;
        }
    }
    copied += insert(write, table, &list, columns.len(), &mut batch).await?;
    Ok(copied)
}

async fn insert(
    write: &mut sqlx::AnyConnection,
    table: &str,
    list: &str,
    width: usize,
    batch: &mut Vec<Vec<Cell>>,
) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut sql = format!("INSERT INTO {table} ({list}) VALUES ");
    for r in 0..batch.len() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        let first = r * width + 1;
        let params: Vec<String> = (first..first + width).map(|i| format!("${i}")).collect();
        sql.push_str(&params.join(", "));
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for row in batch.drain(..) {
        for c in row {
            query = match c {
                Cell::Int(v) => query.bind(v),
                Cell::Text(v) => query.bind(v),
                Cell::Bytes(v) => query.bind(v),
            };
        }
    }
    Ok(query.execute(&mut *write).await?.rows_affected())
}
