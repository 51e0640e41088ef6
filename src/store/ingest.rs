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
use hourglass_connector::{Batch, DeliveryState, DeliveryStatus, Direction, Message};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::alerts::set_thread_error;
use super::clock::reclock_many;
use super::customers::link_batch;
use super::dialect::positional;
use super::instances::save_cursors;
use super::leases::{check_fence, Fence};
use super::quarantine::insert_quarantined;
use super::sql::insert_audit;
use super::{ms, Clocking, Result, SqlStore};
use crate::customers::keys_of;

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
        let customers = customers_for(&mut tx, &batch.messages, now).await?;
        let mut keys = BTreeSet::new();
        let mut with_identities = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            let identity = m
                .customer
                .as_ref()
                .and_then(|c| customers.get(&(c.channel.as_str(), c.handle.as_str())))
                .copied();
            if let Some((identity_id, _)) = identity {
                keys.extend(keys_of(m).into_iter().map(|k| (identity_id, k)));
            }
            with_identities.push((m, identity));
        }
        // Threads by key, one statement per 32; then the platform notices
        // that belong on another thread (a bounce of our reply, Amazon's
        // delivery failure naming an order) are routed there, seeing the
        // threads this batch created.
        let (notices, plain): (Vec<_>, Vec<_>) = with_identities
            .iter()
            .copied()
            .partition(|(m, _)| routable_notice(m));
        let mut threads = threads_for(&mut tx, instance, &clocking.channel, &plain, now).await?;
        let mut routed = HashMap::new();
        for (m, identity) in notices {
            match notice_thread(&mut tx, instance, m).await? {
                Some(id) => {
                    routed.insert(m.external_id.as_str(), id);
                }
                None => threads.extend(
                    threads_for(&mut tx, instance, &clocking.channel, &[(m, identity)], now)
                        .await?,
                ),
            }
        }
        let mut rows = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            let thread_id = routed
                .get(m.external_id.as_str())
                .or_else(|| threads.get(m.thread_key.as_str()))
                .copied()
                .ok_or_else(|| {
                    super::StoreError::Invalid(format!("No thread for key {}", m.thread_key))
                })?;
            rows.push((thread_id, m));
        }
        let mut inserted = HashMap::new();
        for chunk in rows.chunks(MESSAGES_PER_STATEMENT) {
            inserted.extend(insert_messages(&mut tx, instance, chunk, now).await?);
        }
        let mut attachments = Vec::new();
        for (thread_id, m) in rows {
            // The first of a batch's copies of a message is the new one.
            if let Some(message_id) = inserted.remove(&m.external_id) {
                attachments.extend(m.attachments.iter().map(|a| (message_id, a)));
                report.inserted += 1;
                touched.insert(thread_id);
                // A platform notice that our reply did not arrive (Amazon's
                // relay bounced it): the reply no longer answers, the
                // error is on the thread, alerted once.
                if let Some(reason) = m.meta.get("delivery_failure").and_then(|v| v.as_str()) {
                    reply_undelivered(&mut tx, instance, thread_id, m, reason, now).await?;
                }
            } else {
                if m.edit {
                    update_message_text(&mut tx, instance, m).await?;
                }
                report.duplicates += 1;
            }
        }
        insert_attachments(&mut tx, &attachments).await?;
        for q in &batch.quarantined {
            insert_quarantined(&mut tx, instance, q, now).await?;
            report.quarantined += 1;
        }
        for status in &batch.statuses {
            if let Some(thread_id) = apply_status(&mut tx, instance, status, now).await? {
                touched.insert(thread_id);
            }
        }
        link_batch(&mut tx, &keys, now).await?;
        reclock_many(&mut tx, &touched, clocking, now).await?;
        save_cursors(&mut tx, instance, &batch.cursors, now).await?;
        tx.commit().await?;
        report.threads_touched = touched.len();
        Ok(report)
    }
}

/// A platform's notice that a reply did not reach the customer (Amazon's
/// "delivery failure" relay mail). The reply it names (by the returned
/// mail's Message-ID, else the latest reply sent before the notice) is
/// marked undelivered: it stays in the conversation, its outbox entry is
/// `failed`, and it no longer stops the clock, so a thread it had
/// answered awaits again from the buyer's unanswered message, as Amazon
/// counts it (DESIGN §3; README "Customers across channels").
async fn reply_undelivered(
    conn: &mut AnyConnection,
    instance: &str,
    thread_id: i64,
    notice: &Message,
    reason: &str,
    now: i64,
) -> Result<()> {
    let named = notice
        .meta
        .get("original_message_id")
        .and_then(|v| v.as_str())
        .map(|s| {
            s.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .filter(|s| !s.is_empty());
    let mut reply = None;
    if let Some(id) = named {
        reply = sqlx::query(
            "SELECT id, external_id, sent_at FROM messages
             WHERE thread_id = $1 AND direction = 'outbound' AND external_id = $2
               AND delivery_failed_at IS NULL",
        )
        .bind(thread_id)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    }
    if reply.is_none() {
        reply = sqlx::query(
            "SELECT id, external_id, sent_at FROM messages
             WHERE thread_id = $1 AND direction = 'outbound' AND automatic = 0
               AND delivery_failed_at IS NULL AND sent_at <= $2
             ORDER BY sent_at DESC, id DESC LIMIT 1",
        )
        .bind(thread_id)
        .bind(ms(notice.sent_at))
        .fetch_optional(&mut *conn)
        .await?;
    }
    let Some(reply) = reply else {
        // A reply sent before hourglass saw this mailbox: the error alone.
        let error = format!("A reply bounced: {reason}");
        return set_thread_error(conn, thread_id, &error, now).await;
    };
    let message_id: i64 = reply.try_get("id")?;
    let external_id: String = reply.try_get("external_id")?;
    let sent_at = super::from_ms(reply.try_get("sent_at")?);
    sqlx::query("UPDATE messages SET delivery_failed_at = $1, delivery_error = $2 WHERE id = $3")
        .bind(ms(notice.sent_at))
        .bind(reason)
        .bind(message_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE outbox SET state = 'failed', error = $1, updated_at = $2
         WHERE instance = $3 AND external_id = $4 AND state = 'sent'",
    )
    .bind(reason)
    .bind(now)
    .bind(instance)
    .bind(&external_id)
    .execute(&mut *conn)
    .await?;
    let error = format!(
        "Your reply of {} could not be delivered: {reason}",
        sent_at.format("%Y-%m-%d %H:%M UTC")
    );
    set_thread_error(conn, thread_id, &error, now).await?;
    insert_audit(
        conn,
        now,
        "platform",
        "reply_undelivered",
        Some(thread_id),
        &format!("{external_id}: {reason}"),
    )
    .await
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

/// Identities per statement in [`customers_for`]: 6 values each.
const IDENTITIES_PER_STATEMENT: usize = 32;

/// Finds or creates the identity behind each message and its customer:
/// `(identity_id, customer_id)` by `(channel, handle)`. A new identity
/// starts as a customer of its own (named after its first message); the
/// keys it shares with others join it to theirs at the end of the batch
/// ([`link_batch`]). A few statements per 32 identities rather than up to
/// three per message.
async fn customers_for<'m>(
    conn: &mut AnyConnection,
    messages: &'m [Message],
    now: i64,
) -> Result<HashMap<(&'m str, &'m str), (i64, i64)>> {
    // Each identity once, with what its first message says of it:
    // PostgreSQL refuses a key twice in one statement.
    let mut wanted: Vec<(&'m str, &'m str, &'m Message)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in messages {
        if let Some(ident) = &m.customer {
            if seen.insert((ident.channel.as_str(), ident.handle.as_str())) {
                wanted.push((ident.channel.as_str(), ident.handle.as_str(), m));
            }
        }
    }
    let mut found = HashMap::with_capacity(wanted.len());
    // `IN (SELECT … FROM (VALUES …))`, not `IN (VALUES …)`: SQLite reads
    // the latter by scanning every identity, once per statement.
    for chunk in wanted.chunks(IDENTITIES_PER_STATEMENT * 4) {
        let sql = format!(
            "SELECT id, customer_id, channel, handle FROM identities
             WHERE (channel, handle) IN (SELECT column1, column2 FROM (VALUES {}) AS v)",
            super::dialect::value_rows(1, chunk.len(), 2)
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for (channel, handle, _) in chunk {
            q = q.bind(*channel).bind(*handle);
        }
        for row in q.fetch_all(&mut *conn).await? {
            let key: (String, String) = (row.try_get("channel")?, row.try_get("handle")?);
            found.insert(key, (row.try_get("id")?, row.try_get("customer_id")?));
        }
    }
    let mut ids = HashMap::with_capacity(wanted.len());
    let mut new = Vec::new();
    for (channel, handle, m) in wanted {
        match found.get(&(channel.to_owned(), handle.to_owned())) {
            Some(known) => {
                ids.insert((channel, handle), *known);
            }
            None => new.push((channel, handle, m)),
        }
    }
    for chunk in new.chunks(IDENTITIES_PER_STATEMENT) {
        // One customer per new identity, named after its first message.
        // Neither store promises RETURNING's rows in the order of the
        // VALUES, so each new row is matched back by the name it was
        // created with: rows with the same name are alike, so which of
        // them an identity gets does not matter.
        let names: Vec<Option<String>> = chunk
            .iter()
            .map(|(_, _, m)| {
                m.customer
                    .as_ref()
                    .and_then(|i| i.display_name.clone())
                    .or_else(|| m.author.clone())
            })
            .collect();
        let sql = format!(
            "INSERT INTO customers (display_name, created_at) VALUES {} RETURNING id, display_name",
            (0..chunk.len())
                .map(|r| format!("(${}, ${})", 2 * r + 1, 2 * r + 2))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for name in &names {
            q = q.bind(name.as_deref()).bind(now);
        }
        let mut by_name: HashMap<Option<String>, Vec<i64>> = HashMap::new();
        for row in q.fetch_all(&mut *conn).await? {
            by_name
                .entry(row.try_get("display_name")?)
                .or_default()
                .push(row.try_get("id")?);
        }
        let customer_ids = names
            .iter()
            .map(|name| by_name.get_mut(name).and_then(Vec::pop))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| {
                super::StoreError::Invalid(format!(
                    "Created customers do not match the {} new identities",
                    chunk.len()
                ))
            })?;
        // Another daemon may have won the race for an identity: its row is
        // the one that counts, and the no-op update makes RETURNING give it.
        let sql = format!(
            "INSERT INTO identities (customer_id, channel, handle, display_name, email, created_at)
             VALUES {}
             ON CONFLICT (channel, handle) DO UPDATE SET handle = excluded.handle
             RETURNING id, customer_id, channel, handle",
            super::dialect::value_rows(1, chunk.len(), 6)
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for ((channel, handle, m), customer_id) in chunk.iter().zip(&customer_ids) {
            let ident = m.customer.as_ref();
            q = q
                .bind(*customer_id)
                .bind(*channel)
                .bind(*handle)
                .bind(ident.and_then(|i| i.display_name.as_deref()))
                .bind(
                    ident
                        .and_then(|i| i.email.as_ref())
                        .map(|e| e.to_lowercase()),
                )
                .bind(now);
        }
        let mut created = HashMap::with_capacity(chunk.len());
        for row in q.fetch_all(&mut *conn).await? {
            let key: (String, String) = (row.try_get("channel")?, row.try_get("handle")?);
            created.insert(key, (row.try_get("id")?, row.try_get("customer_id")?));
        }
        for (channel, handle, _) in chunk {
            let got = created
                .get(&((*channel).to_owned(), (*handle).to_owned()))
                .copied()
                .ok_or_else(|| {
                    super::StoreError::Invalid(format!("No identity for {channel} {handle}"))
                })?;
            ids.insert((*channel, *handle), got);
        }
    }
    Ok(ids)
}

/// A thread's facts as a batch's messages tell them, in the order the
/// messages came: what [`threads_for`] writes for its key.
struct ThreadFacts<'a> {
    customer_id: Option<i64>,
    identity_id: Option<i64>,
    subject: Option<&'a str>,
    order_id: Option<&'a str>,
    marketplace: Option<&'a str>,
    language: Option<&'a str>,
    reply_to: Option<String>,
}

/// Distinct threads per upsert in [`threads_for`]: 8 values each.
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
    messages: &[(&Message, Option<(i64, i64)>)],
    now: i64,
) -> Result<HashMap<String, i64>> {
    // Merged per key as one upsert per message, in order, would leave
    // them: PostgreSQL refuses a key twice in one statement.
    let mut merged: Vec<(&str, ThreadFacts<'_>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (m, identity) in messages {
        let (identity_id, customer_id) = identity.unzip();
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
                    identity_id: None,
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
        f.customer_id = f.customer_id.or(customer_id);
        f.identity_id = f.identity_id.or(identity_id);
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
                customer_id, subject, order_id, marketplace, language, reply_to, identity_id)
             VALUES {}
             ON CONFLICT (instance, thread_key) DO UPDATE SET
                updated_at = excluded.updated_at,
                customer_id = COALESCE(threads.customer_id, excluded.customer_id),
                identity_id = COALESCE(threads.identity_id, excluded.identity_id),
                subject = COALESCE(threads.subject, excluded.subject),
                order_id = COALESCE(threads.order_id, excluded.order_id),
                marketplace = COALESCE(threads.marketplace, excluded.marketplace),
                language = COALESCE(threads.language, excluded.language),
                reply_to = COALESCE(excluded.reply_to, threads.reply_to)
             RETURNING id, thread_key",
            super::dialect::value_rows(1, chunk.len(), 12)
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for (key, f) in chunk {
            q = q
                .bind(now)
                .bind(now)
                .bind(instance)
                .bind(channel)
                .bind(*key)
                .bind(f.customer_id)
                .bind(f.subject)
                .bind(f.order_id)
                .bind(f.marketplace)
                .bind(f.language)
                .bind(f.reply_to.as_deref())
                .bind(f.identity_id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            ids.insert(row.try_get("thread_key")?, row.try_get("id")?);
        }
    }
    Ok(ids)
}

/// The most text (and HTML) of one message the store keeps, in bytes. A
/// message body beyond this is no message an agent reads (a 60 MB log
/// pasted into a mail); keeping it would slow every listing and page that
/// shows the thread. The complete message stays where it came from.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// `text` as stored: whole, or its first [`MAX_BODY_BYTES`] (cut at a
/// character boundary) followed by a note that says so.
pub fn capped_body(text: &str) -> String {
    if text.len() <= MAX_BODY_BYTES {
        return text.to_owned();
    }
    let mut cut = MAX_BODY_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n\n[hourglass: this message's text is {:.1} MB; only its first {} MB is kept \
         here. The complete message stays where it came from (the mailbox or the \
         platform).]",
        &text[..cut],
        text.len() as f64 / 1e6,
        MAX_BODY_BYTES >> 20
    )
}

/// The original HTML as stored: none when it is beyond [`MAX_BODY_BYTES`]
/// (the text, capped with its note, stands for it).
pub fn capped_html(html: &Option<String>) -> Option<&str> {
    html.as_deref().filter(|h| h.len() <= MAX_BODY_BYTES)
}

/// Messages per INSERT: each is one round trip to the database, and one
/// hand-off to sqlx's SQLite thread. 64 rows of 15 values (960) stay far
/// below SQLite's (32,766) and PostgreSQL's (65,535) limits on bound
/// values; bound positionally on SQLite, their number costs nothing more.
pub(super) const MESSAGES_PER_STATEMENT: usize = 64;

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
    let sql = positional(conn, &sql);
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
            .bind(capped_body(&m.text))
            .bind(capped_html(&m.html))
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

/// Attachments per INSERT: 5 values each; their bytes make the statement
/// large anyway, so a few rows suffice to save the round trips.
const ATTACHMENTS_PER_STATEMENT: usize = 16;

/// The attachments of the batch's new messages, by message id.
async fn insert_attachments(
    conn: &mut AnyConnection,
    attachments: &[(i64, &hourglass_connector::Attachment)],
) -> Result<()> {
    for chunk in attachments.chunks(ATTACHMENTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO attachments (message_id, filename, content_type, size, data) VALUES {}",
            super::dialect::value_rows(1, chunk.len(), 5)
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for (message_id, a) in chunk {
            q = q
                .bind(*message_id)
                .bind(&a.filename)
                .bind(&a.content_type)
                .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
                .bind(a.data.clone());
        }
        q.execute(&mut *conn).await?;
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
    .bind(capped_body(&m.text))
    .bind(capped_html(&m.html))
    .bind(instance)
    .bind(&m.external_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A platform notice that may belong on another thread than its own key's:
/// it returns one of our messages or names an order.
fn routable_notice(m: &Message) -> bool {
    m.direction == Direction::System
        && (m.meta.get("original_message_id").is_some() || m.order_id.is_some())
}

/// The thread a platform notice belongs on: the thread of the message it
/// returns (a bounce, Amazon's delivery failure), else the named order's
/// buyer thread, also when it does not name the buyer. `None`: its own.
async fn notice_thread(
    conn: &mut AnyConnection,
    instance: &str,
    m: &Message,
) -> Result<Option<i64>> {
    let original = m
        .meta
        .get("original_message_id")
        .and_then(|v| v.as_str())
        .map(|s| s.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|s| !s.is_empty());
    if let Some(original) = original {
        let found =
            sqlx::query("SELECT thread_id FROM messages WHERE instance = $1 AND external_id = $2")
                .bind(instance)
                .bind(original)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(row) = found {
            return Ok(Some(row.try_get("thread_id")?));
        }
    }
    if let Some(order) = &m.order_id {
        // Two lookups, each on its own index: an `OR` of the two in one
        // statement made SQLite scan every thread of the instance.
        let own = sqlx::query("SELECT id FROM threads WHERE instance = $1 AND thread_key = $2")
            .bind(instance)
            .bind(&m.thread_key)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = own {
            return Ok(Some(row.try_get("id")?));
        }
        let buyer = sqlx::query(
            "SELECT id FROM threads
             WHERE order_id = $1 AND instance = $2 AND customer_id IS NOT NULL
             ORDER BY updated_at DESC, id DESC LIMIT 1",
        )
        .bind(order)
        .bind(instance)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = buyer {
            return Ok(Some(row.try_get("id")?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_beyond_the_cap_is_cut_at_a_character_with_a_note() {
        assert_eq!(capped_body("Hallo"), "Hallo");
        let big = "ä".repeat(MAX_BODY_BYTES); // 2 bytes each
        let kept = capped_body(&big);
        let (head, note) = kept.split_once("\n\n[hourglass:").unwrap();
        assert_eq!(head.len(), MAX_BODY_BYTES);
        assert!(
            note.contains("text is 2.1 MB; only its first 1 MB is kept"),
            "{note}"
        );
        assert_eq!(capped_html(&Some(big)), None);
        assert_eq!(capped_html(&Some("<p>x</p>".into())), Some("<p>x</p>"));
    }
}
