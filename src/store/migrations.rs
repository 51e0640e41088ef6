//! Migrations, embedded per backend. Both lists carry the same versions;
//! a test checks it, and that they match the files in `migrations/`.

/// The SQL dialect behind a store URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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
];

/// Taken first in the migration transaction on PostgreSQL, where DDL does
/// not lock what does not exist yet (two `CREATE TABLE IF NOT EXISTS` at
/// once collide in `pg_type`). SQLite's `BEGIN IMMEDIATE` is the lock there.
pub fn migration_lock(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Sqlite => None,
        // An arbitrary key: "hourglass" on a phone keypad.
        Backend::Postgres => Some("SELECT pg_advisory_xact_lock(468752777)"),
    }
}

/// The versions recorded as applied; an error when there is no
/// bookkeeping table yet.
pub async fn applied_versions(conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>, sqlx::Error> {
    use sqlx::Row;
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
