//! The store over sqlx's `Any` driver. SQL is written once, in the subset
//! SQLite (3.35+) and PostgreSQL share: `$N` placeholders, `ON CONFLICT`,
//! `RETURNING`. Times are milliseconds since the epoch (BIGINT/INTEGER).

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::{Batch, Cursors, Direction, Message};
use secrecy::ExposeSecret;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};

use super::migrations::{Backend, MIGRATIONS};
use super::*;
use crate::clock::{self, Fact};

/// The store over SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

/// Connects from a URL: `sqlite:///abs/path.db`, `sqlite://rel.db`,
/// `postgres://user@host:port/db`.
impl SqlStore {
    pub async fn connect(
        url: &str,
        password: Option<&secrecy::SecretString>,
        max_connections: u32,
    ) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
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
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut u = url.to_owned();
            if let Some(pw) = password {
                // Insert the password into the URL we hand to sqlx only; the
                // configured URL (shown in messages) stays without it.
                if let Some((scheme, rest)) = u.split_once("://") {
                    if let Some((user, host)) = rest.split_once('@') {
                        u = format!(
                            "{scheme}://{user}:{}@{host}",
                            percent_encode(pw.expose_secret())
                        );
                    }
                }
            }
            (Backend::Postgres, u)
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(&url).map_err(|e| {
            StoreError::Invalid(format!("Invalid store URL {}: {e}", redact_url(&url)))
        })?;
        let max = if backend == Backend::Sqlite {
            // One writer at a time anyway; a few readers for the CLI and HTTP.
            max_connections.clamp(1, 4)
        } else {
            max_connections.max(1)
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn: &mut AnyConnection, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(SqlStore { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction that will write. On SQLite it takes the write
    /// lock up front: a deferred transaction that reads first fails with
    /// SQLITE_BUSY_SNAPSHOT when another writer commits in between, and the
    /// busy timeout cannot help it.
    async fn begin_write<'c>(
        &self,
        conn: &'c mut AnyConnection,
    ) -> Result<sqlx::Transaction<'c, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => conn.begin().await?,
        })
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

fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ms)
}

fn opt_time(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_ms))
}

/// A reply is only handed out when no earlier reply of its thread is still
/// waiting or in flight: the replies of one conversation leave in the
/// order they were written, even when the first one is held back by a
/// 429 or a retry.
const IN_THREAD_ORDER: &str = "NOT EXISTS (
    SELECT 1 FROM outbox earlier
    WHERE earlier.thread_id = outbox.thread_id
      AND earlier.state IN ('queued', 'sending')
      AND (earlier.created_at < outbox.created_at
           OR (earlier.created_at = outbox.created_at AND earlier.id < outbox.id)))";

const THREAD_COLUMNS: &str = "t.id, t.instance, t.channel, t.thread_key, t.subject, t.order_id, \
    t.marketplace, t.language, t.reply_to, t.awaiting_since, t.due_at, t.reply_window_closes_at, \
    t.last_outbound_at, t.handled_at, t.snoozed_until, t.message_count, t.last_error, \
    t.alerted_remaining_ms, t.next_alert_at, c.display_name AS customer";

/// A thread's clock columns, as [`SqlStore::write_clock`] reads them.
const CLOCK_ROW: &str = "SELECT id, awaiting_since, handled_at, snoozed_at, snoozed_until, \
    alerted_remaining_ms FROM threads";

/// Threads reclocked per query by [`SqlStore::reclock_many`] (bind
/// parameters: SQLite allows 32,766, PostgreSQL 65,535).
const RECLOCK_CHUNK: usize = 500;

/// A message as the clock sees it, from `direction, automatic, sent_at`.
fn fact_from_row(row: &AnyRow) -> Result<Fact> {
    let dir: String = row.try_get("direction")?;
    Ok(Fact {
        direction: Direction::parse(&dir).unwrap_or(Direction::System),
        automatic: row.try_get::<i64, _>("automatic")? != 0,
        sent_at: from_ms(row.try_get("sent_at")?),
    })
}

fn thread_from_row(row: &AnyRow, now: DateTime<Utc>) -> Result<ThreadSummary> {
    let due_at = opt_time(row, "due_at")?;
    let snoozed_until = opt_time(row, "snoozed_until")?;
    let status = clock::status(
        due_at,
        opt_time(row, "handled_at")?,
        opt_time(row, "last_outbound_at")?,
        snoozed_until,
        now,
    );
    Ok(ThreadSummary {
        id: row.try_get("id")?,
        instance: row.try_get("instance")?,
        channel: row.try_get("channel")?,
        status,
        customer: row.try_get("customer")?,
        order_id: row.try_get("order_id")?,
        marketplace: row.try_get("marketplace")?,
        subject: row.try_get("subject")?,
        language: row.try_get("language")?,
        awaiting_since: opt_time(row, "awaiting_since")?,
        due_at,
        time_left_ms: due_at.map(|d| (d - now).num_milliseconds()),
        reply_window_closes_at: opt_time(row, "reply_window_closes_at")?,
        snoozed_until: snoozed_until.filter(|u| *u > now),
        message_count: row.try_get("message_count")?,
        last_error: row.try_get("last_error")?,
        thread_key: row.try_get("thread_key")?,
        reply_to: row.try_get("reply_to")?,
    })
}

impl SqlStore {
    /// Finds or creates the customer behind an identity. Identities that
    /// share an e-mail address are linked to one customer.
    async fn customer_for(
        conn: &mut AnyConnection,
        m: &Message,
        now: i64,
        known: &mut HashMap<(String, String), i64>,
    ) -> Result<Option<i64>> {
        let Some(ident) = &m.customer else {
            return Ok(None);
        };
        // Within one ingest, an identity resolves to the same customer each
        // time: ask the database once.
        let key = (ident.channel.clone(), ident.handle.clone());
        if let Some(id) = known.get(&key) {
            return Ok(Some(*id));
        }
        let found =
            sqlx::query("SELECT customer_id FROM identities WHERE channel = $1 AND handle = $2")
                .bind(&ident.channel)
                .bind(&ident.handle)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(row) = found {
            let id: i64 = row.try_get("customer_id")?;
            known.insert(key, id);
            return Ok(Some(id));
        }
        let mut customer_id: Option<i64> = None;
        if let Some(email) = &ident.email {
            let linked = sqlx::query(
                "SELECT customer_id FROM identities WHERE email = $1 ORDER BY id LIMIT 1",
            )
            .bind(email.to_lowercase())
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = linked {
                customer_id = Some(row.try_get("customer_id")?);
            }
        }
        let customer_id = match customer_id {
            Some(id) => id,
            None => sqlx::query(
                "INSERT INTO customers (display_name, created_at) VALUES ($1, $2) RETURNING id",
            )
            .bind(ident.display_name.clone().or_else(|| m.author.clone()))
            .bind(now)
            .fetch_one(&mut *conn)
            .await?
            .try_get("id")?,
        };
        // Another daemon may have won the race: its row is the one that
        // counts, and the no-op update makes RETURNING give it.
        let row = sqlx::query(
            "INSERT INTO identities (customer_id, channel, handle, display_name, email, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (channel, handle) DO UPDATE SET handle = excluded.handle
             RETURNING customer_id",
        )
        .bind(customer_id)
        .bind(&ident.channel)
        .bind(&ident.handle)
        .bind(&ident.display_name)
        .bind(ident.email.as_ref().map(|e| e.to_lowercase()))
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        let id: i64 = row.try_get("customer_id")?;
        known.insert(key, id);
        Ok(Some(id))
    }

    /// Re-derives a thread's clock from its messages and marks, and its next
    /// alert point. Called in the transaction that changed the thread.
    async fn reclock(
        conn: &mut AnyConnection,
        thread_id: i64,
        clocking: &Clocking,
        now: i64,
    ) -> Result<()> {
        let rows =
            sqlx::query("SELECT direction, automatic, sent_at FROM messages WHERE thread_id = $1")
                .bind(thread_id)
                .fetch_all(&mut *conn)
                .await?;
        let facts = rows.iter().map(fact_from_row).collect::<Result<Vec<_>>>()?;
        let t = sqlx::query(&format!("{CLOCK_ROW} WHERE id = $1"))
            .bind(thread_id)
            .fetch_one(&mut *conn)
            .await?;
        Self::write_clock(conn, thread_id, &facts, &t, clocking, now).await
    }

    /// [`SqlStore::reclock`] for many threads, reading their messages and
    /// clock columns in a few queries rather than two per thread.
    async fn reclock_many(
        conn: &mut AnyConnection,
        ids: &BTreeSet<i64>,
        clocking: &Clocking,
        now: i64,
    ) -> Result<()> {
        let ids: Vec<i64> = ids.iter().copied().collect();
        for chunk in ids.chunks(RECLOCK_CHUNK) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT thread_id, direction, automatic, sent_at FROM messages
                 WHERE thread_id IN ({list})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            let mut facts: HashMap<i64, Vec<Fact>> = HashMap::with_capacity(chunk.len());
            for row in &q.fetch_all(&mut *conn).await? {
                facts
                    .entry(row.try_get("thread_id")?)
                    .or_default()
                    .push(fact_from_row(row)?);
            }
            let sql = format!("{CLOCK_ROW} WHERE id IN ({list})");
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for t in &q.fetch_all(&mut *conn).await? {
                let id: i64 = t.try_get("id")?;
                let facts = facts.get(&id).map(Vec::as_slice).unwrap_or_default();
                Self::write_clock(conn, id, facts, t, clocking, now).await?;
            }
        }
        Ok(())
    }

    /// Evaluates a thread's clock from its messages (`facts`) and its row
    /// as read with [`CLOCK_ROW`], and writes the result.
    async fn write_clock(
        conn: &mut AnyConnection,
        thread_id: i64,
        facts: &[Fact],
        t: &AnyRow,
        clocking: &Clocking,
        now: i64,
    ) -> Result<()> {
        let old_since: Option<i64> = t.try_get("awaiting_since")?;
        let handled_at = opt_time(t, "handled_at")?;
        let mut snoozed_at: Option<i64> = t.try_get("snoozed_at")?;
        let mut snoozed_until: Option<i64> = t.try_get("snoozed_until")?;
        let mut fired: Option<i64> = t.try_get("alerted_remaining_ms")?;

        let state = clock::evaluate(facts, handled_at, &clocking.policy, &clocking.channel);
        let since = opt_ms(state.awaiting_since);
        if since != old_since {
            // A new awaiting cycle: every threshold may fire again.
            fired = None;
        }
        // The customer wrote again after the snooze: it no longer holds.
        if let (Some(at), Some(last_in)) = (snoozed_at, state.last_inbound_at) {
            if ms(last_in) > at {
                snoozed_at = None;
                snoozed_until = None;
            }
        }
        let next_alert = clock::next_alert_at(
            state.due_at,
            &clocking.points,
            fired,
            snoozed_until.map(from_ms),
        );
        sqlx::query(
            "UPDATE threads SET awaiting_since = $1, due_at = $2, reply_window_closes_at = $3,
                last_inbound_at = $4, last_outbound_at = $5, snoozed_at = $6, snoozed_until = $7,
                alerted_remaining_ms = $8, next_alert_at = $9, message_count = $10, updated_at = $11
             WHERE id = $12",
        )
        .bind(since)
        .bind(opt_ms(state.due_at))
        .bind(opt_ms(state.reply_window_closes_at))
        .bind(opt_ms(state.last_inbound_at))
        .bind(opt_ms(state.last_outbound_at))
        .bind(snoozed_at)
        .bind(snoozed_until)
        .bind(fired)
        .bind(opt_ms(next_alert))
        .bind(facts.len() as i64)
        .bind(now)
        .bind(thread_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn insert_message(
        conn: &mut AnyConnection,
        instance: &str,
        thread_id: i64,
        m: &Message,
        now: i64,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO messages (thread_id, instance, external_id, direction, automatic, sent_at,
                author, subject, body, html, order_id, language, reply_to, meta, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (instance, external_id) DO NOTHING
             RETURNING id",
        )
        .bind(thread_id)
        .bind(instance)
        .bind(&m.external_id)
        .bind(m.direction.as_str())
        .bind(i64::from(m.automatic))
        .bind(ms(m.sent_at))
        .bind(&m.author)
        .bind(&m.subject)
        .bind(&m.text)
        .bind(&m.html)
        .bind(&m.order_id)
        .bind(&m.language)
        .bind(&m.reply_to)
        .bind(m.meta.to_string())
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = inserted else {
            return Ok(false);
        };
        let message_id: i64 = row.try_get("id")?;
        for a in &m.attachments {
            sqlx::query(
                "INSERT INTO attachments (message_id, filename, content_type, size, data)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(message_id)
            .bind(&a.filename)
            .bind(&a.content_type)
            .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
            .bind(a.data.clone())
            .execute(&mut *conn)
            .await?;
        }
        Ok(true)
    }

    /// An edited message (Telegram's `edited_message`): the new text
    /// replaces the stored one; its time, and so the thread's clock, stay.
    async fn update_message_text(
        conn: &mut AnyConnection,
        instance: &str,
        m: &Message,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE messages SET body = $1, html = $2
             WHERE instance = $3 AND external_id = $4",
        )
        .bind(&m.text)
        .bind(&m.html)
        .bind(instance)
        .bind(&m.external_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn thread_for(
        conn: &mut AnyConnection,
        instance: &str,
        channel: &str,
        m: &Message,
        customer_id: Option<i64>,
        now: i64,
    ) -> Result<i64> {
        // One statement: a new thread takes the message's facts; a known
        // one fills what its first messages did not know. Replies go to the
        // customer's latest address.
        let row = sqlx::query(
            "INSERT INTO threads (instance, thread_key, channel, customer_id, subject, order_id,
                marketplace, language, reply_to, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                CASE WHEN $10 = 'inbound' THEN $11 ELSE NULL END, $9, $9)
             ON CONFLICT (instance, thread_key) DO UPDATE SET
                updated_at = excluded.updated_at,
                customer_id = COALESCE(threads.customer_id, excluded.customer_id),
                subject = COALESCE(threads.subject, excluded.subject),
                order_id = COALESCE(threads.order_id, excluded.order_id),
                marketplace = COALESCE(threads.marketplace, excluded.marketplace),
                language = COALESCE(threads.language, excluded.language),
                reply_to = CASE WHEN $10 = 'inbound' THEN COALESCE($11, threads.reply_to)
                    ELSE threads.reply_to END
             RETURNING id",
        )
        .bind(instance)
        .bind(&m.thread_key)
        .bind(channel)
        .bind(customer_id)
        .bind(&m.subject)
        .bind(&m.order_id)
        .bind(&m.marketplace)
        .bind(&m.language)
        .bind(now)
        .bind(m.direction.as_str())
        .bind(
            m.reply_to
                .clone()
                .or_else(|| m.customer.as_ref().map(|c| c.handle.clone())),
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Claims replies due now (of one instance, or all): queued ones, and
    /// ones left in `sending` by a worker whose lease ran out.
    async fn claim(
        &self,
        instance: Option<&str>,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>> {
        let now_ms = ms(now);
        let lease_until = now_ms + lease.as_millis() as i64;
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        // PostgreSQL: several daemons claim from one table without blocking
        // each other. SQLite has one writer (taken by begin_write).
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT id, thread_id, instance, body, attempts, state FROM outbox
             WHERE ($1 IS NULL OR instance = $1)
               AND ((state = 'queued' AND next_attempt_at <= $2)
                 OR (state = 'sending' AND claimed_until < $2))
               AND {IN_THREAD_ORDER}
             ORDER BY next_attempt_at, created_at, id
             LIMIT $3{lock}"
        );
        let rows = sqlx::query(&sql)
            .bind(instance)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let item = OutboxItem {
                id: r.try_get("id")?,
                thread_id: r.try_get("thread_id")?,
                instance: r.try_get("instance")?,
                body: r.try_get("body")?,
                attempts: r.try_get("attempts")?,
                previous_state: r.try_get("state")?,
            };
            sqlx::query(
                "UPDATE outbox SET state = 'sending', claimed_by = $1, claimed_until = $2,
                    attempts = attempts + 1, updated_at = $3
                 WHERE id = $4",
            )
            .bind(worker)
            .bind(lease_until)
            .bind(now_ms)
            .bind(&item.id)
            .execute(&mut *tx)
            .await?;
            items.push(item);
        }
        tx.commit().await?;
        Ok(items)
    }

    /// Queues one alert delivery per sink, at most once per (thread, cycle,
    /// label, sink). Returns how many were new.
    async fn queue_deliveries(
        conn: &mut AnyConnection,
        thread_id: i64,
        cycle: i64,
        label: &str,
        sinks: &[(String, serde_json::Value)],
        now: i64,
    ) -> Result<usize> {
        let mut queued = 0;
        for (sink, payload) in sinks {
            let done = sqlx::query(
                "INSERT INTO alerts (thread_id, cycle, threshold, sink, state, attempts,
                    next_attempt_at, payload, created_at)
                 VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $5)
                 ON CONFLICT (thread_id, cycle, threshold, sink) DO NOTHING",
            )
            .bind(thread_id)
            .bind(cycle)
            .bind(label)
            .bind(sink)
            .bind(now)
            .bind(payload.to_string())
            .execute(&mut *conn)
            .await?;
            queued += done.rows_affected() as usize;
        }
        Ok(queued)
    }

    /// Records an error on a thread and flags it for one alert.
    async fn set_thread_error(
        conn: &mut AnyConnection,
        thread_id: i64,
        error: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE threads SET last_error = $1, last_error_at = $2, error_alert_pending = 1
             WHERE id = $3",
        )
        .bind(error)
        .bind(now)
        .bind(thread_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn thread_summary(
        conn: &mut AnyConnection,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<ThreadSummary>> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| thread_from_row(&r, now)).transpose()
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<Vec<i64>> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY NOT NULL,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&mut *conn)
        .await?;
        // On the connection we hold: a pool of one would wait for itself.
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()?;
        let mut now_applied = Vec::new();
        for m in MIGRATIONS {
            if applied.contains(&m.version) {
                continue;
            }
            let mut tx = self.begin_write(&mut conn).await?;
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
            tx.commit().await?;
            now_applied.push(m.version);
        }
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

    async fn register_instance(&self, name: &str, kind: &str, channel: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO instances (name, kind, channel, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, channel = excluded.channel",
        )
        .bind(name)
        .bind(kind)
        .bind(channel)
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_poll(&self, instance: &str, outcome: &PollOutcome) -> Result<()> {
        let now = ms(Utc::now());
        match outcome {
            PollOutcome::Ok { messages } => {
                sqlx::query(
                    "UPDATE instances SET state = 'ok', failures = 0, last_poll_at = $1,
                        last_success_at = $1, next_poll_at = NULL,
                        messages_total = messages_total + $2, updated_at = $1
                     WHERE name = $3",
                )
                .bind(now)
                .bind(*messages as i64)
                .bind(instance)
                .execute(&self.pool)
                .await?;
            }
            PollOutcome::Failed {
                kind,
                error,
                failures,
                next_poll_at,
            } => {
                let state = if kind == "auth" {
                    "auth_failed"
                } else {
                    "backoff"
                };
                sqlx::query(
                    "UPDATE instances SET state = $1, failures = $2, last_error = $3,
                        last_error_kind = $4, last_poll_at = $5, next_poll_at = $6, updated_at = $5
                     WHERE name = $7",
                )
                .bind(state)
                .bind(i64::from(*failures))
                .bind(error)
                .bind(kind)
                .bind(now)
                .bind(ms(*next_poll_at))
                .bind(instance)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn set_instance_state(&self, instance: &str, state: &str) -> Result<()> {
        sqlx::query("UPDATE instances SET state = $1, updated_at = $2 WHERE name = $3")
            .bind(state)
            .bind(ms(Utc::now()))
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceStatus>> {
        let rows = sqlx::query(
            "SELECT name, kind, channel, state, failures, last_error, last_error_kind,
                last_poll_at, last_success_at, next_poll_at, messages_total
             FROM instances ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InstanceStatus {
                    name: r.try_get("name")?,
                    kind: r.try_get("kind")?,
                    channel: r.try_get("channel")?,
                    state: r.try_get("state")?,
                    failures: r.try_get("failures")?,
                    last_error: r.try_get("last_error")?,
                    last_error_kind: r.try_get("last_error_kind")?,
                    last_poll_at: opt_time(r, "last_poll_at")?,
                    last_success_at: opt_time(r, "last_success_at")?,
                    next_poll_at: opt_time(r, "next_poll_at")?,
                    messages_total: r.try_get("messages_total")?,
                })
            })
            .collect()
    }

    async fn cursors(&self, instance: &str) -> Result<Cursors> {
        let rows = sqlx::query("SELECT scope, value FROM cursors WHERE instance = $1")
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("scope")?, r.try_get("value")?)))
            .collect()
    }

    async fn ingest(
        &self,
        instance: &str,
        batch: &Batch,
        clocking: &Clocking,
    ) -> Result<IngestReport> {
        let now = ms(Utc::now());
        let mut report = IngestReport::default();
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let mut touched = BTreeSet::new();
        let mut customers = HashMap::new();
        for m in &batch.messages {
            let customer_id = Self::customer_for(&mut tx, m, now, &mut customers).await?;
            let thread_id =
                Self::thread_for(&mut tx, instance, &clocking.channel, m, customer_id, now).await?;
            if Self::insert_message(&mut tx, instance, thread_id, m, now).await? {
                report.inserted += 1;
                touched.insert(thread_id);
                // A platform notice that our reply did not arrive (Amazon's
                // relay bounced it): an error on the thread, alerted once.
                if let Some(reason) = m.meta.get("delivery_failure").and_then(|v| v.as_str()) {
                    Self::set_thread_error(
                        &mut tx,
                        thread_id,
                        &format!("A reply bounced: {reason}"),
                        now,
                    )
                    .await?;
                }
            } else {
                if m.edit {
                    Self::update_message_text(&mut tx, instance, m).await?;
                }
                report.duplicates += 1;
            }
        }
        for q in &batch.quarantined {
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
            .execute(&mut *tx)
            .await?;
            report.quarantined += 1;
        }
        Self::reclock_many(&mut tx, &touched, clocking, now).await?;
        for (scope, value) in &batch.cursors {
            sqlx::query(
                "INSERT INTO cursors (instance, scope, value, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (instance, scope) DO UPDATE SET value = excluded.value,
                    updated_at = excluded.updated_at",
            )
            .bind(instance)
            .bind(scope)
            .bind(value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        report.threads_touched = touched.len();
        Ok(report)
    }

    async fn threads(
        &self,
        filter: &ThreadFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<ThreadSummary>> {
        let mut sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
             WHERE 1 = 1"
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        let due_limit = filter.due_within.map(|d| ms(now) + d.as_millis() as i64);
        if due_limit.is_some() {
            sql.push_str(&format!(
                " AND t.due_at IS NOT NULL AND t.due_at <= {}",
                next()
            ));
        }
        if filter.channel.is_some() {
            sql.push_str(&format!(" AND t.channel = {}", next()));
        }
        if filter.instance.is_some() {
            sql.push_str(&format!(" AND t.instance = {}", next()));
        }
        match filter.status {
            Some(Status::Answered) | Some(Status::NoResponseNeeded) => {
                sql.push_str(" AND t.due_at IS NULL")
            }
            Some(_) => sql.push_str(" AND t.due_at IS NOT NULL"),
            None => {}
        }
        sql.push_str(
            " ORDER BY CASE WHEN t.due_at IS NULL THEN 1 ELSE 0 END, t.due_at, t.updated_at DESC, t.id",
        );
        let mut q = sqlx::query(&sql);
        if let Some(limit) = due_limit {
            q = q.bind(limit);
        }
        if let Some(c) = &filter.channel {
            q = q.bind(c.clone());
        }
        if let Some(i) = &filter.instance {
            q = q.bind(i.clone());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for row in &rows {
            let t = thread_from_row(row, now)?;
            if filter.status.is_some_and(|s| s != t.status) {
                continue;
            }
            out.push(t);
            if filter.limit.is_some_and(|l| out.len() as i64 >= l) {
                break;
            }
        }
        Ok(out)
    }

    async fn thread(&self, id: i64, now: DateTime<Utc>) -> Result<Option<ThreadDetail>> {
        let mut conn = self.pool.acquire().await?;
        let Some(thread) = Self::thread_summary(&mut conn, id, now).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT id, external_id, direction, automatic, sent_at, author, subject, body, meta,
                reply_to
             FROM messages WHERE thread_id = $1 ORDER BY sent_at, id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let messages = rows
            .iter()
            .map(|r| {
                let meta: String = r.try_get("meta")?;
                Ok(MessageView {
                    id: r.try_get("id")?,
                    external_id: r.try_get("external_id")?,
                    direction: r.try_get("direction")?,
                    automatic: r.try_get::<i64, _>("automatic")? != 0,
                    sent_at: from_ms(r.try_get("sent_at")?),
                    author: r.try_get("author")?,
                    subject: r.try_get("subject")?,
                    text: r.try_get("body")?,
                    meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
                    reply_to: r.try_get("reply_to")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT id, state, attempts, error, created_at, sent_at, body FROM outbox
             WHERE thread_id = $1 ORDER BY created_at, id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let outbox = rows
            .iter()
            .map(|r| {
                Ok(OutboxView {
                    id: r.try_get("id")?,
                    state: r.try_get("state")?,
                    attempts: r.try_get("attempts")?,
                    error: r.try_get("error")?,
                    created_at: from_ms(r.try_get("created_at")?),
                    sent_at: opt_time(r, "sent_at")?,
                    text: r.try_get("body")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT at, actor, action, detail FROM audit WHERE thread_id = $1 ORDER BY at, id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let audit = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: from_ms(r.try_get("at")?),
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ThreadDetail {
            thread,
            messages,
            outbox,
            audit,
        }))
    }

    async fn mark_no_response_needed(
        &self,
        id: i64,
        actor: &str,
        clocking: &Clocking,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let done = sqlx::query("UPDATE threads SET handled_at = $1, handled_by = $2 WHERE id = $3")
            .bind(ms(now))
            .bind(actor)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::ThreadNotFound(id));
        }
        Self::reclock(&mut tx, id, clocking, ms(now)).await?;
        insert_audit(&mut tx, ms(now), actor, "no_response_needed", Some(id), "").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn snooze(
        &self,
        id: i64,
        until: DateTime<Utc>,
        actor: &str,
        clocking: &Clocking,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let done = sqlx::query(
            "UPDATE threads SET snoozed_at = $1, snoozed_until = $2, snoozed_by = $3 WHERE id = $4",
        )
        .bind(ms(now))
        .bind(ms(until))
        .bind(actor)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::ThreadNotFound(id));
        }
        Self::reclock(&mut tx, id, clocking, ms(now)).await?;
        let detail = format!(
            "until {}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        insert_audit(&mut tx, ms(now), actor, "snooze", Some(id), &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_reply(&self, reply: &NewReply) -> Result<()> {
        let now = ms(Utc::now());
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let row = sqlx::query("SELECT instance FROM threads WHERE id = $1")
            .bind(reply.thread_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::ThreadNotFound(reply.thread_id))?;
        let instance: String = row.try_get("instance")?;
        sqlx::query(
            "INSERT INTO outbox (id, thread_id, instance, body, template, state, attempts,
                next_attempt_at, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, $6, $6)",
        )
        .bind(&reply.id)
        .bind(reply.thread_id)
        .bind(&instance)
        .bind(&reply.body)
        .bind(&reply.template)
        .bind(now)
        .bind(&reply.created_by)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            now,
            &reply.created_by,
            "reply_queued",
            Some(reply.thread_id),
            &reply.id,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_outbox(
        &self,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>> {
        self.claim(None, worker, lease, limit, now).await
    }

    async fn complete_outbox(
        &self,
        id: &str,
        outcome: &OutboxOutcome,
        clocking: &Clocking,
    ) -> Result<()> {
        let now = ms(Utc::now());
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let row = sqlx::query("SELECT thread_id, instance, body FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("Outbox entry {id} not found")))?;
        let thread_id: i64 = row.try_get("thread_id")?;
        let instance: String = row.try_get("instance")?;
        match outcome {
            OutboxOutcome::Sent {
                external_id,
                sent_at,
            } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'sent', external_id = $1, sent_at = $2,
                        error = NULL, claimed_until = NULL, updated_at = $3
                     WHERE id = $4",
                )
                .bind(external_id)
                .bind(ms(*sent_at))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let body: String = row.try_get("body")?;
                let thread_key: String =
                    sqlx::query("SELECT thread_key FROM threads WHERE id = $1")
                        .bind(thread_id)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("thread_key")?;
                let mut m = Message::new(
                    external_id.clone(),
                    thread_key,
                    Direction::Outbound,
                    *sent_at,
                    body,
                );
                m.author = Some("hourglass".into());
                m.meta = serde_json::json!({ "outbox_id": id });
                Self::insert_message(&mut tx, &instance, thread_id, &m, now).await?;
                sqlx::query("UPDATE threads SET last_error = NULL WHERE id = $1")
                    .bind(thread_id)
                    .execute(&mut *tx)
                    .await?;
                Self::reclock(&mut tx, thread_id, clocking, now).await?;
                insert_audit(&mut tx, now, "outbox", "reply_sent", Some(thread_id), id).await?;
            }
            OutboxOutcome::Retry { error, at } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'queued', error = $1, next_attempt_at = $2,
                        claimed_until = NULL, updated_at = $3
                     WHERE id = $4",
                )
                .bind(error)
                .bind(ms(*at))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            OutboxOutcome::Failed { error } | OutboxOutcome::Uncertain { error } => {
                let state = if matches!(outcome, OutboxOutcome::Failed { .. }) {
                    "failed"
                } else {
                    "uncertain"
                };
                sqlx::query(
                    "UPDATE outbox SET state = $1, error = $2, claimed_until = NULL, updated_at = $3
                     WHERE id = $4",
                )
                .bind(state)
                .bind(error)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                Self::set_thread_error(
                    &mut tx,
                    thread_id,
                    &format!("Reply {id} {state}: {error}"),
                    now,
                )
                .await?;
                insert_audit(
                    &mut tx,
                    now,
                    "outbox",
                    &format!("reply_{state}"),
                    Some(thread_id),
                    &format!("{id}: {error}"),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_outbox_for(
        &self,
        instance: &str,
        worker: &str,
        lease: Duration,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxItem>> {
        self.claim(Some(instance), worker, lease, limit, now).await
    }

    async fn release_outbox(&self, id: &str, worker: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'queued', claimed_by = NULL, claimed_until = NULL,
                attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = $1
             WHERE id = $2 AND state = 'sending' AND claimed_by = $3",
        )
        .bind(ms(Utc::now()))
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    async fn alert_candidates(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AlertCandidate>> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.next_alert_at IS NOT NULL AND t.next_alert_at <= $1
             ORDER BY t.next_alert_at LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertCandidate {
                    thread: thread_from_row(r, now)?,
                    tags: Vec::new(),
                    alerted_remaining_ms: r.try_get("alerted_remaining_ms")?,
                    next_alert_at: from_ms(r.try_get("next_alert_at")?),
                })
            })
            .collect()
    }

    async fn next_alert_at(&self) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT next_alert_at FROM threads WHERE next_alert_at IS NOT NULL
             ORDER BY next_alert_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(from_ms(r.try_get("next_alert_at")?)))
            .transpose()
    }

    async fn fire_alert(
        &self,
        thread_id: i64,
        cycle: DateTime<Utc>,
        threshold: Threshold,
        sinks: &[(String, serde_json::Value)],
        next_alert_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        // Only if the thread is still in the cycle we evaluated: a message
        // that arrived meanwhile has reset it, and this alert is moot.
        let moved = sqlx::query(
            "UPDATE threads SET alerted_remaining_ms = $1, next_alert_at = $2
             WHERE id = $3 AND awaiting_since = $4",
        )
        .bind(threshold.remaining_ms)
        .bind(opt_ms(next_alert_at))
        .bind(thread_id)
        .bind(ms(cycle))
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        let queued = Self::queue_deliveries(
            &mut tx,
            thread_id,
            ms(cycle),
            &threshold.label(),
            sinks,
            ms(now),
        )
        .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn error_alert_candidates(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(ThreadSummary, DateTime<Utc>)>> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS}, t.last_error_at FROM threads t
             LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.error_alert_pending = 1 ORDER BY t.last_error_at LIMIT $1"
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    thread_from_row(r, now)?,
                    from_ms(r.try_get::<Option<i64>, _>("last_error_at")?.unwrap_or(0)),
                ))
            })
            .collect()
    }

    async fn fire_error_alert(
        &self,
        thread_id: i64,
        error_at: DateTime<Utc>,
        sinks: &[(String, serde_json::Value)],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        // Only the error we looked at: a newer one gets its own alert.
        let cleared = sqlx::query(
            "UPDATE threads SET error_alert_pending = 0 WHERE id = $1 AND last_error_at = $2",
        )
        .bind(thread_id)
        .bind(ms(error_at))
        .execute(&mut *tx)
        .await?;
        if cleared.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        let queued =
            Self::queue_deliveries(&mut tx, thread_id, ms(error_at), "error", sinks, ms(now))
                .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn set_next_alert_at(&self, thread_id: i64, at: Option<DateTime<Utc>>) -> Result<()> {
        sqlx::query("UPDATE threads SET next_alert_at = $1 WHERE id = $2")
            .bind(opt_ms(at))
            .bind(thread_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_alert_deliveries(
        &self,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertDelivery>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // One statement: a read-then-write transaction would fail on SQLite
        // with SQLITE_BUSY_SNAPSHOT whenever another writer commits between
        // the two. Leased: if this daemon dies mid-delivery, the row comes
        // back after the lease; a sink may then see it twice, which is the
        // price of never losing an alert.
        let sql = format!(
            "UPDATE alerts SET state = 'sending', attempts = attempts + 1, next_attempt_at = $1
             WHERE id IN (
                SELECT id FROM alerts
                WHERE state IN ('queued', 'sending') AND next_attempt_at <= $2
                ORDER BY next_attempt_at, id LIMIT $3{lock})
             RETURNING id, thread_id, threshold, sink, attempts, payload"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(now) + lease.as_millis() as i64)
            .bind(ms(now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok(AlertDelivery {
                    id: r.try_get("id")?,
                    thread_id: r.try_get("thread_id")?,
                    threshold: r.try_get("threshold")?,
                    sink: r.try_get("sink")?,
                    attempts: r.try_get("attempts")?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn finish_alert_delivery(
        &self,
        id: i64,
        result: std::result::Result<(), String>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        match result {
            Ok(()) => {
                sqlx::query(
                    "UPDATE alerts SET state = 'sent', sent_at = $1, error = NULL WHERE id = $2",
                )
                .bind(ms(now))
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
            Err(error) => {
                let (state, next) = match retry_at {
                    Some(at) => ("queued", ms(at)),
                    None => ("failed", ms(now)),
                };
                sqlx::query(
                    "UPDATE alerts SET state = $1, error = $2, next_attempt_at = $3 WHERE id = $4",
                )
                .bind(state)
                .bind(error)
                .bind(next)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

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

    async fn response_samples(&self, since: DateTime<Utc>) -> Result<Vec<ResponseSample>> {
        // Each inbound message that opened an awaiting cycle (no inbound
        // since the previous human reply), with the first human reply after.
        let rows = sqlx::query(
            "SELECT t.channel AS channel, m.sent_at AS inbound_at,
                (SELECT MIN(o.sent_at) FROM messages o
                  WHERE o.thread_id = m.thread_id AND o.direction = 'outbound'
                    AND o.automatic = 0 AND o.sent_at >= m.sent_at) AS first_response_at
             FROM messages m JOIN threads t ON t.id = m.thread_id
             WHERE m.direction = 'inbound' AND m.sent_at >= $1
               AND NOT EXISTS (
                 SELECT 1 FROM messages p
                  WHERE p.thread_id = m.thread_id AND p.direction = 'inbound'
                    AND (p.sent_at < m.sent_at OR (p.sent_at = m.sent_at AND p.id < m.id))
                    AND NOT EXISTS (
                      SELECT 1 FROM messages r
                       WHERE r.thread_id = m.thread_id AND r.direction = 'outbound'
                         AND r.automatic = 0 AND r.sent_at >= p.sent_at AND r.sent_at <= m.sent_at))
             ORDER BY m.sent_at",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ResponseSample {
                    channel: r.try_get("channel")?,
                    inbound_at: from_ms(r.try_get("inbound_at")?),
                    first_response_at: opt_time(r, "first_response_at")?,
                })
            })
            .collect()
    }
}

async fn insert_audit(
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
