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

impl SqlStore {
    /// Messages stored per instance with a platform time at or after
    /// `since` (the admin page's "messages today").
    pub async fn messages_since(
        &self,
        since: chrono::DateTime<Utc>,
    ) -> Result<std::collections::HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT instance, COUNT(*) AS n FROM messages WHERE sent_at >= $1 GROUP BY instance",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            out.insert(r.try_get("instance")?, r.try_get("n")?);
        }
        Ok(out)
    }
}

/// What a consent flow granted an instance (table `connector_grants`).
#[derive(Debug, Clone)]
pub struct ConnectorGrant {
    pub platform: String,
    pub account: Option<String>,
    pub scopes: String,
    pub granted_at: chrono::DateTime<Utc>,
    pub expires_at: Option<chrono::DateTime<Utc>>,
    pub expiry_alerted_at: Option<chrono::DateTime<Utc>>,
}

impl SqlStore {
    /// Records a connection; a new one clears the expiry warning.
    pub async fn record_grant(&self, instance: &str, grant: &ConnectorGrant) -> Result<()> {
        sqlx::query(
            "INSERT INTO connector_grants (instance, platform, account, scopes, granted_at,
                expires_at, expiry_alerted_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)
             ON CONFLICT (instance) DO UPDATE SET platform = excluded.platform,
                account = excluded.account, scopes = excluded.scopes,
                granted_at = excluded.granted_at, expires_at = excluded.expires_at,
                expiry_alerted_at = NULL",
        )
        .bind(instance)
        .bind(&grant.platform)
        .bind(&grant.account)
        .bind(&grant.scopes)
        .bind(ms(grant.granted_at))
        .bind(grant.expires_at.map(ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every recorded connection, by instance.
    pub async fn grants(&self) -> Result<std::collections::HashMap<String, ConnectorGrant>> {
        let rows = sqlx::query(
            "SELECT instance, platform, account, scopes, granted_at, expires_at, expiry_alerted_at
             FROM connector_grants",
        )
        .fetch_all(&self.pool)
        .await?;
        let time = |v: Option<i64>| v.and_then(chrono::DateTime::<Utc>::from_timestamp_millis);
        let mut out = std::collections::HashMap::new();
        for r in rows {
            out.insert(
                r.try_get("instance")?,
                ConnectorGrant {
                    platform: r.try_get("platform")?,
                    account: r.try_get("account")?,
                    scopes: r.try_get("scopes")?,
                    granted_at: time(Some(r.try_get("granted_at")?)).unwrap_or_default(),
                    expires_at: time(r.try_get("expires_at")?),
                    expiry_alerted_at: time(r.try_get("expiry_alerted_at")?),
                },
            );
        }
        Ok(out)
    }

    /// Queues the admin's warning that the token of `instance` expires
    /// soon, once per connection. `None`: warned already.
    pub async fn raise_expiry_alert(
        &self,
        instance: &str,
        deliveries: &[crate::store::NewDelivery],
        now: chrono::DateTime<Utc>,
    ) -> Result<Option<usize>> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let opened = sqlx::query(
            "UPDATE connector_grants SET expiry_alerted_at = $1
             WHERE instance = $2 AND expiry_alerted_at IS NULL",
        )
        .bind(ms(now))
        .bind(instance)
        .execute(&mut *tx)
        .await?;
        if opened.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let subject = super::alerts::AlertSubject::Instance {
            instance,
            problem: "expiry",
            episode: ms(now),
        };
        let queued = super::alerts::queue_alerts(&mut tx, subject, deliveries, ms(now)).await?;
        tx.commit().await?;
        Ok(Some(queued))
    }
}
