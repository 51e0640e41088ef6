//! Reading threads: the listing (`threads`, digests, the alert engine's
//! candidates) and one thread's whole conversation (`show`). A thread's
//! status is derived here, at read time, from its clock columns and `now`.
//! Threads are written by ingest, the clock and the outbox.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::dialect::placeholders;
use super::sql::opt_time;
use super::{from_ms, ms, Result, SqlStore};
use crate::clock::{self, Status};

/// Which threads to list.
#[derive(Debug, Clone, Default)]
pub struct ThreadFilter {
    pub due_within: Option<Duration>,
    pub channel: Option<String>,
    pub instance: Option<String>,
    pub status: Option<Status>,
    pub limit: Option<i64>,
}

/// A thread in a listing. Its JSON form is a public contract (DESIGN §6).
#[derive(Debug, Clone, Serialize)]
pub struct ThreadSummary {
    pub id: i64,
    pub instance: String,
    pub channel: String,
    pub status: Status,
    pub customer: Option<String>,
    pub order_id: Option<String>,
    pub marketplace: Option<String>,
    pub subject: Option<String>,
    pub language: Option<String>,
    pub awaiting_since: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    /// Milliseconds until `due_at` (negative when breached).
    pub time_left_ms: Option<i64>,
    pub reply_window_closes_at: Option<DateTime<Utc>>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub message_count: i64,
    pub last_error: Option<String>,
    /// The agent who took the thread (acknowledged its alert) in its
    /// current awaiting cycle.
    pub taken_by: Option<String>,
    pub taken_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub thread_key: String,
    #[serde(skip)]
    pub reply_to: Option<String>,
}

/// One message in `show`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: i64,
    pub external_id: String,
    pub direction: String,
    pub automatic: bool,
    pub sent_at: DateTime<Utc>,
    pub author: Option<String>,
    pub subject: Option<String>,
    pub text: String,
    /// When the platform reported this reply undelivered, and why.
    pub delivery_failed_at: Option<DateTime<Utc>>,
    pub delivery_error: Option<String>,
    #[serde(skip)]
    pub meta: serde_json::Value,
    #[serde(skip)]
    pub reply_to: Option<String>,
}

/// A reply in the outbox, as `show` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    pub id: String,
    pub state: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub text: String,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// `show ID`: the thread and its whole conversation.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadDetail {
    #[serde(flatten)]
    pub thread: ThreadSummary,
    pub messages: Vec<MessageView>,
    pub outbox: Vec<OutboxView>,
    pub audit: Vec<AuditEntry>,
}

/// Reading threads.
#[async_trait]
pub trait ThreadStore: Send + Sync {
    /// Threads matching `filter`, the most urgent first.
    async fn threads(
        &self,
        filter: &ThreadFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<ThreadSummary>>;
    /// One thread with its messages, replies and audit log.
    async fn thread(&self, id: i64, now: DateTime<Utc>) -> Result<Option<ThreadDetail>>;

    /// What sending replies needs of their threads, in two reads per 500
    /// threads: each thread and its last inbound message only (`messages`
    /// holds at most that one; `outbox` and `audit` are empty). The outbox
    /// reads this per claimed batch. A thread that does not exist is not
    /// in the map.
    async fn threads_for_reply(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<HashMap<i64, ThreadDetail>>;
    /// The other threads of the customer behind thread `id` (other
    /// channels, other orders), most recently active first, at most 20:
    /// the web inbox shows a customer's whole conversation.
    async fn customer_threads(&self, id: i64, now: DateTime<Utc>) -> Result<Vec<ThreadSummary>>;
}

/// The columns [`thread_from_row`] reads, from `threads t LEFT JOIN
/// customers c`.
pub(super) const THREAD_COLUMNS: &str = "t.id, t.instance, t.channel, t.thread_key, t.subject, \
    t.order_id, t.marketplace, t.language, t.reply_to, t.awaiting_since, t.due_at, \
    t.reply_window_closes_at, t.last_outbound_at, t.handled_at, t.snoozed_until, \
    t.message_count, t.last_error, t.alerted_remaining_ms, t.next_alert_at, \
    CASE WHEN t.taken_cycle = t.awaiting_since THEN t.taken_by END AS taken_by, \
    CASE WHEN t.taken_cycle = t.awaiting_since THEN t.taken_at END AS taken_at, \
    c.display_name AS customer";

pub(super) fn thread_from_row(row: &AnyRow, now: DateTime<Utc>) -> Result<ThreadSummary> {
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
        taken_by: row.try_get("taken_by")?,
        taken_at: opt_time(row, "taken_at")?,
        thread_key: row.try_get("thread_key")?,
        reply_to: row.try_get("reply_to")?,
    })
}

#[async_trait]
impl ThreadStore for SqlStore {
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
        // The status conditions mirror clock::status; answered and
        // no_response_needed differ only by columns compared in Rust.
        let now_param = matches!(
            filter.status,
            Some(Status::Snoozed) | Some(Status::Breached) | Some(Status::Awaiting)
        )
        .then(&mut next);
        let now_p = now_param.as_deref().unwrap_or_default();
        match filter.status {
            Some(Status::Answered) | Some(Status::NoResponseNeeded) => {
                sql.push_str(" AND t.due_at IS NULL")
            }
            Some(Status::Snoozed) => sql.push_str(&format!(
                " AND t.due_at IS NOT NULL AND t.snoozed_until > {now_p}"
            )),
            Some(Status::Breached) => sql.push_str(&format!(
                " AND t.due_at <= {now_p} AND (t.snoozed_until IS NULL OR t.snoozed_until <= {now_p})"
            )),
            Some(Status::Awaiting) => sql.push_str(&format!(
                " AND t.due_at > {now_p} AND (t.snoozed_until IS NULL OR t.snoozed_until <= {now_p})"
            )),
            None => {}
        }
        // Matches the threads_by_deadline index (migration 0004): the
        // first page of a million threads reads a page of rows, not all.
        sql.push_str(" ORDER BY (t.due_at IS NULL), t.due_at, t.updated_at DESC, t.id");
        let exact = !matches!(
            filter.status,
            Some(Status::Answered) | Some(Status::NoResponseNeeded)
        );
        let limit_param = match filter.limit {
            Some(_) if exact => {
                let p = next();
                sql.push_str(&format!(" LIMIT {p}"));
                true
            }
            _ => false,
        };
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
        if now_param.is_some() {
            q = q.bind(ms(now));
        }
        if limit_param {
            q = q.bind(filter.limit.unwrap_or(i64::MAX));
        }
        // Streamed: with a limit, reading stops at the last row needed.
        let mut rows = q.fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
            let t = thread_from_row(&row, now)?;
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

    async fn customer_threads(&self, id: i64, now: DateTime<Utc>) -> Result<Vec<ThreadSummary>> {
        let sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.customer_id = (SELECT customer_id FROM threads WHERE id = $1)
               AND t.id <> $2
             ORDER BY t.updated_at DESC, t.id DESC
             LIMIT 20"
        );
        let rows = sqlx::query(&sql)
            .bind(id)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| thread_from_row(r, now)).collect()
    }

    async fn threads_for_reply(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<HashMap<i64, ThreadDetail>> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let mut conn = self.pool.acquire().await?;
        for chunk in ids.chunks(FOR_REPLY_CHUNK) {
            let list = placeholders(chunk.len());
            let sql = format!(
                "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
                 WHERE t.id IN ({list})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let thread = thread_from_row(&row, now)?;
                out.insert(
                    thread.id,
                    ThreadDetail {
                        thread,
                        messages: Vec::new(),
                        outbox: Vec::new(),
                        audit: Vec::new(),
                    },
                );
            }
            // Each thread's last inbound message, found through the
            // `messages_thread` index, one lookup per thread.
            let sql = format!(
                "SELECT thread_id AS reply_thread, {MESSAGE_COLUMNS} FROM messages
                 WHERE id IN (
                    SELECT (SELECT l.id FROM messages l
                            WHERE l.thread_id = t.id AND l.direction = 'inbound'
                            ORDER BY l.sent_at DESC, l.id DESC LIMIT 1)
                    FROM threads t WHERE t.id IN ({list}))"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let thread: i64 = row.try_get("reply_thread")?;
                if let Some(d) = out.get_mut(&thread) {
                    d.messages.push(message_from_row(&row)?);
                }
            }
        }
        Ok(out)
    }

    async fn thread(&self, id: i64, now: DateTime<Utc>) -> Result<Option<ThreadDetail>> {
        let mut conn = self.pool.acquire().await?;
        let Some(thread) = thread_summary(&mut conn, id, now).await? else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 ORDER BY sent_at, id"
        );
        let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *conn).await?;
        let messages = rows
            .iter()
            .map(message_from_row)
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
}

/// Threads read per query by [`ThreadStore::threads_for_reply`].
const FOR_REPLY_CHUNK: usize = 500;

const MESSAGE_COLUMNS: &str =
    "id, external_id, direction, automatic, sent_at, author, subject, body, meta, reply_to, \
    delivery_failed_at, delivery_error";

fn message_from_row(r: &AnyRow) -> Result<MessageView> {
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
        delivery_failed_at: opt_time(r, "delivery_failed_at")?,
        delivery_error: r.try_get("delivery_error")?,
        meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
        reply_to: r.try_get("reply_to")?,
    })
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
