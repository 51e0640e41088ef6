//! Sealed secrets of instances (see `crate::vault`): the store keeps the
//! sealed text only and knows nothing of the key.

use chrono::Utc;
use sqlx::Row;

use super::{ms, Result, SqlStore};

impl SqlStore {
    /// The sealed secret `name` of `instance`, if one was saved.
    pub async fn sealed_secret(&self, instance: &str, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM secrets WHERE instance = $1 AND name = $2")
            .bind(instance)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("value")?),
            None => None,
        })
    }

    /// Saves (replaces) a sealed secret; committed when it returns.
    pub async fn save_sealed_secret(&self, instance: &str, name: &str, sealed: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO secrets (instance, name, value, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (instance, name) DO UPDATE SET value = excluded.value,
                updated_at = excluded.updated_at",
        )
        .bind(instance)
        .bind(name)
        .bind(sealed)
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
