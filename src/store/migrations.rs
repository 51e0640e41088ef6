//! The schema: migrations embedded per backend, and how they are applied.
//! Both lists carry the same versions; a test checks it, and that they match
//! the files in `migrations/`.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;

use super::dialect::Backend;
use super::{ms, Result, SqlStore};

/// A migration: version, name, SQLite text, PostgreSQL text.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "error_alerts",
        sqlite: include_str!("../../migrations/sqlite/0002_error_alerts.sql"),
        postgres: include_str!("../../migrations/postgres/0002_error_alerts.sql"),
    },
    Migration {
        version: 3,
        name: "http",
        sqlite: include_str!("../../migrations/sqlite/0003_http.sql"),
        postgres: include_str!("../../migrations/postgres/0003_http.sql"),
    },
    Migration {
        version: 4,
        name: "threads_by_deadline",
        sqlite: include_str!("../../migrations/sqlite/0004_threads_by_deadline.sql"),
        postgres: include_str!("../../migrations/postgres/0004_threads_by_deadline.sql"),
    },
    Migration {
        version: 5,
        name: "customer_threads",
        sqlite: include_str!("../../migrations/sqlite/0005_customer_threads.sql"),
        postgres: include_str!("../../migrations/postgres/0005_customer_threads.sql"),
    },
    Migration {
        version: 6,
        name: "leases",
        sqlite: include_str!("../../migrations/sqlite/0006_leases.sql"),
        postgres: include_str!("../../migrations/postgres/0006_leases.sql"),
    },
    Migration {
        version: 7,
        name: "outbox_by_thread",
        sqlite: include_str!("../../migrations/sqlite/0007_outbox_by_thread.sql"),
        postgres: include_str!("../../migrations/postgres/0007_outbox_by_thread.sql"),
    },
    Migration {
        version: 8,
        name: "secrets",
        sqlite: include_str!("../../migrations/sqlite/0008_secrets.sql"),
        postgres: include_str!("../../migrations/postgres/0008_secrets.sql"),
    },
    Migration {
        version: 9,
        name: "instance_alerts",
        sqlite: include_str!("../../migrations/sqlite/0009_instance_alerts.sql"),
        postgres: include_str!("../../migrations/postgres/0009_instance_alerts.sql"),
    },
    Migration {
        version: 10,
        name: "digest_deliveries",
        sqlite: include_str!("../../migrations/sqlite/0010_digest_deliveries.sql"),
        postgres: include_str!("../../migrations/postgres/0010_digest_deliveries.sql"),
    },
    Migration {
        version: 12,
        name: "reply_cycles",
        sqlite: include_str!("../../migrations/sqlite/0012_reply_cycles.sql"),
        postgres: include_str!("../../migrations/postgres/0012_reply_cycles.sql"),
    },
    Migration {
        version: 13,
        name: "watchdog_acks_quiet",
        sqlite: include_str!("../../migrations/sqlite/0013_watchdog_acks_quiet.sql"),
        postgres: include_str!("../../migrations/postgres/0013_watchdog_acks_quiet.sql"),
    },
    Migration {
        version: 14,
        name: "customers",
        sqlite: include_str!("../../migrations/sqlite/0014_customers.sql"),
        postgres: include_str!("../../migrations/postgres/0014_customers.sql"),
    },
    Migration {
        version: 15,
        name: "connector_grants",
        sqlite: include_str!("../../migrations/sqlite/0015_connector_grants.sql"),
        postgres: include_str!("../../migrations/postgres/0015_connector_grants.sql"),
    },
    Migration {
        version: 16,
        name: "outbox_send_started",
        sqlite: include_str!("../../migrations/sqlite/0016_outbox_send_started.sql"),
        postgres: include_str!("../../migrations/postgres/0016_outbox_send_started.sql"),
    },
    Migration {
        version: 17,
        name: "relay_watch",
        sqlite: include_str!("../../migrations/sqlite/0017_relay_watch.sql"),
        postgres: include_str!("../../migrations/postgres/0017_relay_watch.sql"),
    },
];

/// The versions recorded as applied; an error when there is no
/// bookkeeping table yet.
pub async fn applied_versions(conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("version"))
        .collect()
}

impl Migration {
    pub fn sql(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }

    /// The statements of a migration file. Our files hold no semicolons
    /// inside statements (no triggers or functions), so splitting is safe.
    pub fn statements(&self, backend: Backend) -> Vec<String> {
        self.sql(backend)
            .split(';')
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|s| !s.trim().is_empty())
            .collect()
    }
}

/// The schema's version.
#[async_trait]
pub trait MigrationStore: Send + Sync {
    /// Applies pending migrations; returns the versions applied now.
    async fn migrate(&self) -> Result<Vec<i64>>;
    /// Versions already applied.
    async fn applied_migrations(&self) -> Result<Vec<i64>>;
}

#[async_trait]
impl MigrationStore for SqlStore {
    async fn migrate(&self) -> Result<Vec<i64>> {
        let mut conn = self.pool.acquire().await?;
        // Fast path, no lock: everything applied already.
        let applied = applied_versions(&mut conn).await.unwrap_or_default();
        if MIGRATIONS.iter().all(|m| applied.contains(&m.version)) {
            return Ok(Vec::new());
        }
        // Processes opening one new store at once take turns: the write
        // lock (SQLite) or an advisory lock (PostgreSQL) is held from
        // before the bookkeeping table exists until all is committed, and
        // what is applied is read again under it.
        let mut tx = self.begin_write(&mut conn).await?;
        if let Some(lock) = self.backend.migration_lock() {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY NOT NULL,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        let applied = applied_versions(&mut tx).await?;
        let mut now_applied = Vec::new();
        for m in MIGRATIONS {
            if applied.contains(&m.version) {
                continue;
            }
            for stmt in m.statements(self.backend) {
                sqlx::query(&stmt).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(ms(Utc::now()))
            .execute(&mut *tx)
            .await?;
            now_applied.push(m.version);
        }
        tx.commit().await?;
        Ok(now_applied)
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await;
        match rows {
            Ok(rows) => rows
                .iter()
                .map(|r| r.try_get::<i64, _>("version").map_err(Into::into))
                .collect(),
            // No table yet: nothing applied.
            Err(sqlx::Error::Database(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(dir: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn backends_have_the_same_migrations() {
        let sqlite = versions("migrations/sqlite");
        let postgres = versions("migrations/postgres");
        assert_eq!(sqlite, postgres, "migration files differ between backends");
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            embedded, sqlite,
            "a migration file is not embedded in MIGRATIONS"
        );
        for m in MIGRATIONS {
            let (s, p) = (
                m.statements(Backend::Sqlite),
                m.statements(Backend::Postgres),
            );
            assert_eq!(
                s.len(),
                p.len(),
                "migration {} has different statement counts",
                m.version
            );
            // Same tables and indexes, in the same order.
            let heads = |v: &[String]| {
                v.iter()
                    .map(|s| {
                        // The statement up to its column list or type.
                        let head = s.split('(').next().unwrap_or("");
                        head.split_whitespace()
                            .take(6)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                heads(&s),
                heads(&p),
                "migration {} differs in shape",
                m.version
            );
        }
    }
}
