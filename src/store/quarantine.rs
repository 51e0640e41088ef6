//! Quarantine: items a connector could not read, kept with their exact raw
//! bytes. They are written in the ingest's transaction (so they move with
//! the cursor that skipped them) and listed by `hourglass quarantine`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::Quarantined;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::{from_ms, Result, SqlStore};

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

/// Reading the quarantine.
#[async_trait]
pub trait QuarantineStore: Send + Sync {
    /// Quarantined items, of one instance or all, oldest first.
    async fn quarantine(&self, instance: Option<&str>) -> Result<Vec<QuarantineEntry>>;
    /// The exact bytes of one item, `None` if there is no such item.
    async fn quarantine_raw(&self, id: i64) -> Result<Option<Vec<u8>>>;
}

#[async_trait]
impl QuarantineStore for SqlStore {
    async fn quarantine(&self, instance: Option<&str>) -> Result<Vec<QuarantineEntry>> {
        let rows = sqlx::query(
            "SELECT id, instance, source, external_id, error, raw, created_at FROM quarantine
             WHERE $1 IS NULL OR instance = $1 ORDER BY id",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let raw: Vec<u8> = r.try_get("raw")?;
                Ok(QuarantineEntry {
                    id: r.try_get("id")?,
                    instance: r.try_get("instance")?,
                    source: r.try_get("source")?,
                    external_id: r.try_get("external_id")?,
                    error: r.try_get("error")?,
                    size: raw.len(),
                    created_at: from_ms(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn quarantine_raw(&self, id: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT raw FROM quarantine WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("raw").map_err(Into::into))
            .transpose()
    }
}

/// Keeps an item that could not be read, in the ingest's transaction.
pub(super) async fn insert_quarantined(
    conn: &mut AnyConnection,
    instance: &str,
    q: &Quarantined,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO quarantine (instance, source, external_id, error, raw, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(instance)
    .bind(&q.source)
    .bind(&q.external_id)
    .bind(&q.error)
    .bind(q.raw.clone())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
