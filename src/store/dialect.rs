//! Every difference between SQLite and PostgreSQL, in one place.
//!
//! The SQL in the concern files is written once, in the subset SQLite
//! (3.35+) and PostgreSQL share: `$N` placeholders, `ON CONFLICT ... DO
//! UPDATE/NOTHING`, `RETURNING`, times as BIGINT milliseconds since the
//! epoch, booleans as 0/1 integers, no casts. What they do not share is here:
//!
//! - how a store URL names a backend, and the URL sqlx is handed;
//! - the pool size (SQLite has one writer) and per-connection pragmas;
//! - how a writing transaction starts (`BEGIN IMMEDIATE` on SQLite);
//! - the row lock of a claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
//!
//! The schema itself differs per backend too: each has its own files under
//! `migrations/`, with the same versions (see `migrations.rs`).

use secrecy::ExposeSecret;
use sqlx::{AnyConnection, Connection};

use super::sql::redact_url;
use super::{Result, StoreError};

/// The SQL dialect behind a store URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a store URL names, and the URL to hand sqlx:
    /// `sqlite:///abs/path.db` or `sqlite://rel.db` (the file and its
    /// directory are created), `postgres://user@host:port/db` (the password,
    /// if any, goes into this URL only; the configured one stays without it).
    pub(super) fn from_url(
        url: &str,
        password: Option<&secrecy::SecretString>,
    ) -> Result<(Backend, String)> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::UnsupportedUrl(url.to_owned()));
            }
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::Invalid(format!(
                            "Cannot create the store directory {}: {e}",
                            parent.display()
                        ))
                    })?;
                }
            }
            Ok((Backend::Sqlite, format!("sqlite://{path}?mode=rwc")))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut u = url.to_owned();
            if let Some(pw) = password {
                if let Some((scheme, rest)) = u.split_once("://") {
                    if let Some((user, host)) = rest.split_once('@') {
                        u = format!(
                            "{scheme}://{user}:{}@{host}",
                            percent_encode(pw.expose_secret())
                        );
                    }
                }
            }
            Ok((Backend::Postgres, u))
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// The pool size for the configured `max_connections`.
    pub(super) fn max_connections(self, configured: u32) -> u32 {
        match self {
            // One writer at a time anyway; a few readers for the CLI and HTTP.
            Backend::Sqlite => configured.clamp(1, 4),
            Backend::Postgres => configured.max(1),
        }
    }

    /// Statements run on every new connection.
    pub(super) fn session_setup(self) -> &'static [&'static str] {
        match self {
            Backend::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA busy_timeout = 10000",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
            ],
            // A daemon that hangs (SIGSTOP, a frozen VM) inside a transaction
            // would keep its row locks, among them the lease row its fenced
            // commit locks, and no other daemon could take its instances
            // over. The server ends such a session instead: its locks go,
            // and its commit fails when it wakes up. Our transactions never
            // wait between statements, so this only ever ends a hung one.
            Backend::Postgres => &["SET idle_in_transaction_session_timeout = '5s'"],
        }
    }

    /// Starts a transaction that will write. On SQLite it takes the write
    /// lock up front: a deferred transaction that reads first fails with
    /// SQLITE_BUSY_SNAPSHOT when another writer commits in between, and the
    /// busy timeout cannot help it.
    pub(super) async fn begin_write(
        self,
        conn: &mut AnyConnection,
    ) -> Result<sqlx::Transaction<'_, sqlx::Any>> {
        Ok(match self {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => conn.begin().await?,
        })
    }

    /// Taken first in the migration transaction on PostgreSQL, where DDL
    /// does not lock what does not exist yet (daemons started together
    /// would race to create the same tables; two `CREATE TABLE IF NOT
    /// EXISTS` at once collide in `pg_type`). It ends with the
    /// transaction. SQLite: `BEGIN IMMEDIATE` serializes them already.
    pub(super) fn migration_lock(self) -> Option<&'static str> {
        match self {
            // An arbitrary key: "hourglass" on a phone keypad.
            Backend::Postgres => Some("SELECT pg_advisory_xact_lock(468752777)"),
            Backend::Sqlite => None,
        }
    }

    /// The clause that ends a claim's `SELECT`. PostgreSQL: several daemons
    /// claim from one table without blocking each other. SQLite has one
    /// writer, taken by [`Backend::begin_write`] or by the single statement.
    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }
}

/// `$1, $2, ..., $n`: the placeholders of an `IN (...)` list of `n` values.
pub(super) fn placeholders(n: usize) -> String {
    placeholders_from(1, n)
}

/// `$first, ..., $(first + n - 1)`: an `IN (...)` list after `first - 1`
/// other parameters.
pub(super) fn placeholders_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, ...), (...), ...`: the rows of a `VALUES` list of `rows`
/// rows of `width` parameters each, numbered from `first`.
pub(super) fn value_rows(first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders_from(first + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sql` as the connection's backend runs it best. On SQLite, `$1, $2,
/// …, $n` appearing in that order, each once, become plain `?`: SQLite
/// keeps a `$N` parameter's name in a list that it searches from the
/// start, and sqlx asks for every parameter's name on every execution,
/// so binding n named parameters costs n² (a 100-row `VALUES` of 11
/// columns: 600,000 steps per execution, the largest single cost of a
/// sync's SQLite thread). Plain `?` have no name and bind in order. Any
/// other use of parameters (one twice, out of order) is left as written,
/// as is everything on PostgreSQL.
pub(super) fn positional<'a>(conn: &AnyConnection, sql: &'a str) -> std::borrow::Cow<'a, str> {
    if conn.backend_name() != "SQLite" {
        return sql.into();
    }
    sqlite_positional(sql).map_or(sql.into(), Into::into)
}

/// [`positional`]'s rewrite, or `None` when the parameters are not `$1`
/// to `$n` in order, or the statement has a comment.
fn sqlite_positional(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut next = 1usize;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // A literal or a quoted name: copied as it is.
            q @ (b'\'' | b'"') => {
                i += 1 + sql[i + 1..].find(q as char)? + 1;
                continue;
            }
            // A comment could name a parameter that SQLite never sees.
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let n: usize = sql.get(i + 1..i + 1 + digits)?.parse().ok()?;
                if n != next {
                    return None;
                }
                next += 1;
                out.push_str(&sql[copied..i]);
                out.push('?');
                i += 1 + digits;
                copied = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sqlite_positional;

    #[test]
    fn numbered_parameters_in_order_become_positional_on_sqlite() {
        let cases: &[(&str, Option<&str>)] = &[
            ("SELECT 1", Some("SELECT 1")),
            (
                "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)",
                Some("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"),
            ),
            (
                "SELECT id FROM m WHERE d = 'outbound' AND x = $1 AND y IN ($2, $3)",
                Some("SELECT id FROM m WHERE d = 'outbound' AND x = ? AND y IN (?, ?)"),
            ),
            // A `$` inside a literal is text, not a parameter.
            ("SELECT '$2 it''s', $1", Some("SELECT '$2 it''s', ?")),
            (
                "SELECT \"$x\" FROM t WHERE a = $1",
                Some("SELECT \"$x\" FROM t WHERE a = ?"),
            ),
            // Reused, out of order, or skipped: left as written.
            ("VALUES ($2, $1), ($3, $1)", None),
            ("SELECT $1, $1", None),
            ("SELECT $1, $3", None),
            ("SELECT $ FROM t", None),
            ("SELECT $1 -- $2", None),
            ("SELECT $1 /* $2 */", None),
            ("SELECT '$1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(sqlite_positional(sql).as_deref(), *want, "{sql}");
        }
    }
}
