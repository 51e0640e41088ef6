//! Ingest: a connector's batch becomes customers, threads and messages.
//!
//! One batch is one transaction: its messages, its quarantined items, its
//! cursors and the clock of every thread it touched commit together or not
//! at all: a daemon killed mid-batch has stored none of it and polls it
//! again from the old cursor. A message seen twice is a duplicate by its
//! `(instance, external_id)` key, never a second row.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::Utc;
use hourglass_connector::{Batch, DeliveryState, DeliveryStatus, Message};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::alerts::set_thread_error;
use super::clock::reclock_many;
use super::instances::save_cursors;
use super::leases::{check_fence, Fence};
use super::quarantine::insert_quarantined;
use super::sql::insert_audit;
use super::{ms, Clocking, Result, SqlStore};

/// What one ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub inserted: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    pub threads_touched: usize,
}

/// Writing what connectors fetched.
#[async_trait]
pub trait IngestStore: Send + Sync {
    /// Writes a batch's messages, quarantined items and cursors in one
    /// transaction, and resets the clock of every thread it touched.
    async fn ingest(
        &self,
        instance: &str,
        batch: &Batch,
        clocking: &Clocking,
    ) -> Result<IngestReport> {
        self.ingest_fenced(instance, batch, clocking, None).await
    }
    /// Like [`IngestStore::ingest`], committed only while the instance's
    /// lease is still held with `fence` (when given): a daemon that lost
    /// its lease gets [`super::StoreError::LeaseLost`] and moves nothing.
    async fn ingest_fenced(
        &self,
        instance: &str,
        batch: &Batch,
        clocking: &Clocking,
        fence: Option<&Fence>,
    ) -> Result<IngestReport>;
}

#[async_trait]
impl IngestStore for SqlStore {
    async fn ingest_fenced(
        &self,
        instance: &str,
        batch: &Batch,
        clocking: &Clocking,
        fence: Option<&Fence>,
    ) -> Result<IngestReport> {
        let now = ms(Utc::now());
        let mut report = IngestReport::default();
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        if let Some(fence) = fence {
            check_fence(&mut tx, instance, fence).await?;
        }
        let mut touched = BTreeSet::new();
        let mut customers = HashMap::new();
        let mut with_customers = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            let customer_id = customer_for(&mut tx, m, now, &mut customers).await?;
            with_customers.push((m, customer_id));
        }
        let threads =
            threads_for(&mut tx, instance, &clocking.channel, &with_customers, now).await?;
        let mut rows = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            let thread_id = threads.get(m.thread_key.as_str()).copied().ok_or_else(|| {
                super::StoreError::Invalid(format!("No thread for key {}", m.thread_key))
            })?;
            rows.push((thread_id, m));
        }
        let mut inserted = HashMap::new();
        for chunk in rows.chunks(MESSAGES_PER_STATEMENT) {
            inserted.extend(insert_messages(&mut tx, instance, chunk, now).await?);
        }
        for (thread_id, m) in rows {
            // The first of a batch's copies of a message is the new one.
            if let Some(message_id) = inserted.remove(&m.external_id) {
                insert_attachments(&mut tx, message_id, m).await?;
                report.inserted += 1;
                touched.insert(thread_id);
                // A platform notice that our reply did not arrive (Amazon's
                // relay bounced it): an error on the thread, alerted once.
                if let Some(reason) = m.meta.get("delivery_failure").and_then(|v| v.as_str()) {
                    set_thread_error(
                        &mut tx,
                        thread_id,
                        &format!("A reply bounced: {reason}"),
                        now,
                    )
                    .await?;
                }
            } else {
                if m.edit {
                    update_message_text(&mut tx, instance, m).await?;
                }
                report.duplicates += 1;
            }
        }
        for q in &batch.quarantined {
            insert_quarantined(&mut tx, instance, q, now).await?;
            report.quarantined += 1;
        }
        for status in &batch.statuses {
            if let Some(thread_id) = apply_status(&mut tx, instance, status, now).await? {
                touched.insert(thread_id);
            }
        }
        reclock_many(&mut tx, &touched, clocking, now).await?;
        save_cursors(&mut tx, instance, &batch.cursors, now).await?;
        tx.commit().await?;
        report.threads_touched = touched.len();
        Ok(report)
    }
}

/// A platform's report that a reply it had accepted was not delivered
/// (WhatsApp's `failed` status): the reply becomes `failed` with the
/// platform's reason, shown on the thread, and its message no longer
/// counts as an answer, so the thread awaits a reply again. Other
/// statuses (delivered, read) change nothing. Returns the thread touched.
async fn apply_status(
    conn: &mut AnyConnection,
    instance: &str,
    status: &DeliveryStatus,
    now: i64,
) -> Result<Option<i64>> {
    if status.state != DeliveryState::Failed {
        return Ok(None);
    }
    let Some(row) = sqlx::query(
        "SELECT id, thread_id FROM outbox WHERE instance = $1 AND external_id = $2 AND state = 'sent'",
    )
    .bind(instance)
    .bind(&status.external_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    let thread_id: i64 = row.try_get("thread_id")?;
    let error = status
        .error
        .clone()
        .unwrap_or_else(|| "the platform could not deliver it".into());
    sqlx::query("UPDATE outbox SET state = 'failed', error = $1, updated_at = $2 WHERE id = $3")
        .bind(&error)
        .bind(now)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM messages WHERE instance = $1 AND external_id = $2 AND direction = 'outbound'
           AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = messages.id)",
    )
    .bind(instance)
    .bind(&status.external_id)
    .execute(&mut *conn)
    .await?;
    set_thread_error(conn, thread_id, &format!("Reply {id} failed: {error}"), now).await?;
    insert_audit(
        conn,
        now,
        "platform",
        "reply_failed",
        Some(thread_id),
        &format!("{id}: {error}"),
    )
    .await?;
    Ok(Some(thread_id))
}

/// Finds or creates the customer behind an identity. Identities that share
/// an e-mail address are linked to one customer.
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
        let linked =
            sqlx::query("SELECT customer_id FROM identities WHERE email = $1 ORDER BY id LIMIT 1")
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
    // Another daemon may have won the race: its row is the one that counts,
    // and the no-op update makes RETURNING give it.
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

/// A thread's facts as a batch's messages tell them, in the order the
/// messages came: what [`threads_for`] writes for its key.
struct ThreadFacts<'a> {
    customer_id: Option<i64>,
    subject: Option<&'a str>,
    order_id: Option<&'a str>,
    marketplace: Option<&'a str>,
    language: Option<&'a str>,
    reply_to: Option<String>,
}

/// Distinct threads per upsert in [`threads_for`]: 7 values each.
const THREADS_PER_STATEMENT: usize = 32;

/// The threads a batch's messages belong to, by thread key, created on
/// their first message: one statement per 32 threads rather than one per
/// message. A new thread takes its messages' facts (the first known of
/// each); a known one fills what its first messages did not know. Replies
/// go to the customer's latest address (the last inbound message's).
async fn threads_for(
    conn: &mut AnyConnection,
    instance: &str,
    channel: &str,
    messages: &[(&Message, Option<i64>)],
    now: i64,
) -> Result<HashMap<String, i64>> {
    // Merged per key as one upsert per message, in order, would leave
    // them: PostgreSQL refuses a key twice in one statement.
    let mut merged: Vec<(&str, ThreadFacts<'_>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (m, customer_id) in messages {
        let reply_to = match m.direction {
            hourglass_connector::Direction::Inbound => m
                .reply_to
                .clone()
                .or_else(|| m.customer.as_ref().map(|c| c.handle.clone())),
            _ => None,
        };
        let at = *index.entry(m.thread_key.as_str()).or_insert_with(|| {
            merged.push((
                m.thread_key.as_str(),
                ThreadFacts {
                    customer_id: None,
                    subject: None,
                    order_id: None,
                    marketplace: None,
                    language: None,
                    reply_to: None,
                },
            ));
            merged.len() - 1
        });
        let f = &mut merged[at].1;
        f.customer_id = f.customer_id.or(*customer_id);
        f.subject = f.subject.or(m.subject.as_deref());
        f.order_id = f.order_id.or(m.order_id.as_deref());
        f.marketplace = f.marketplace.or(m.marketplace.as_deref());
        f.language = f.language.or(m.language.as_deref());
        if reply_to.is_some() {
            f.reply_to = reply_to;
        }
    }
    let mut ids = HashMap::with_capacity(merged.len());
    for chunk in merged.chunks(THREADS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO threads (created_at, updated_at, instance, channel, thread_key,
                customer_id, subject, order_id, marketplace, language, reply_to)
             VALUES {}
             ON CONFLICT (instance, thread_key) DO UPDATE SET
                updated_at = excluded.updated_at,
                customer_id = COALESCE(threads.customer_id, excluded.customer_id),
                subject = COALESCE(threads.subject, excluded.subject),
                order_id = COALESCE(threads.order_id, excluded.order_id),
                marketplace = COALESCE(threads.marketplace, excluded.marketplace),
                language = COALESCE(threads.language, excluded.language),
                reply_to = COALESCE(excluded.reply_to, threads.reply_to)
             RETURNING id, thread_key",
            (0..chunk.len())
                .map(|r| {
                    let first = 4 + r * 7;
                    format!(
                        "($1, $1, $2, $3, {})",
                        super::dialect::placeholders_from(first, 7)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut q = sqlx::query(&sql).bind(now).bind(instance).bind(channel);
        for (key, f) in chunk {
            q = q
                .bind(*key)
                .bind(f.customer_id)
                .bind(f.subject)
                .bind(f.order_id)
                .bind(f.marketplace)
                .bind(f.language)
                .bind(f.reply_to.as_deref());
        }
        for row in q.fetch_all(&mut *conn).await? {
            ids.insert(row.try_get("thread_key")?, row.try_get("id")?);
        }
    }
    Ok(ids)
}

/// Messages per INSERT: each is one round trip to the database, and one
/// hand-off to sqlx's SQLite thread. 15 values a row keeps a statement far
/// below SQLite's and PostgreSQL's limits on bound values.
pub(super) const MESSAGES_PER_STATEMENT: usize = 16;

const MESSAGE_COLUMNS: &str = "thread_id, instance, external_id, direction, automatic, sent_at,
    author, subject, body, html, order_id, language, reply_to, meta, created_at";

/// Inserts messages the store does not have yet (by instance and external
/// id) in one statement; returns the new rows' ids by external id.
/// Attachments are left to [`insert_attachments`].
pub(super) async fn insert_messages(
    conn: &mut AnyConnection,
    instance: &str,
    rows: &[(i64, &Message)],
    now: i64,
) -> Result<HashMap<String, i64>> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let values = (0..rows.len())
        .map(|r| {
            let first = r * 15;
            let list = (1..=15)
                .map(|c| format!("${}", first + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({list})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES {values}
         ON CONFLICT (instance, external_id) DO NOTHING
         RETURNING id, external_id"
    );
    let mut query = sqlx::query(&sql);
    for (thread_id, m) in rows {
        query = query
            .bind(*thread_id)
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
            .bind(now);
    }
    let returned = query.fetch_all(&mut *conn).await?;
    returned
        .iter()
        .map(|r| Ok((r.try_get("external_id")?, r.try_get("id")?)))
        .collect()
}

async fn insert_attachments(conn: &mut AnyConnection, message_id: i64, m: &Message) -> Result<()> {
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
    Ok(())
}

/// An edited message (Telegram's `edited_message`): the new text replaces
/// the stored one; its time, and so the thread's clock, stay.
async fn update_message_text(conn: &mut AnyConnection, instance: &str, m: &Message) -> Result<()> {
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
