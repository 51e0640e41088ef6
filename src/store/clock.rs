//! The reply clock in the store. A thread's clock columns (`awaiting_since`,
//! `due_at`, the reply window, the next alert point) are re-derived from its
//! messages and marks by the pure `crate::clock` in the transaction that
//! changed the thread: an ingest, a sent reply, or an agent's mark (no
//! response needed, snooze), which live here too.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::Direction;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::dialect::placeholders;
use super::sql::{insert_audit, opt_ms, opt_time};
use super::{from_ms, ms, Result, SqlStore, StoreError};
use crate::clock::{self, Fact, Policy, Threshold};

/// How the clock of an instance's threads is set.
#[derive(Debug, Clone)]
pub struct Clocking {
    pub channel: String,
    pub policy: Policy,
    /// Alert points, most distant first, ending with the breach.
    pub points: Vec<Threshold>,
}

/// An agent's marks that stop or pause a thread's clock.
#[async_trait]
pub trait ClockStore: Send + Sync {
    /// Stops the clock until the customer writes again.
    async fn mark_no_response_needed(
        &self,
        id: i64,
        actor: &str,
        clocking: &Clocking,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Holds the thread's alerts until `until`, or until the customer
    /// writes again.
    async fn snooze(
        &self,
        id: i64,
        until: DateTime<Utc>,
        actor: &str,
        clocking: &Clocking,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

#[async_trait]
impl ClockStore for SqlStore {
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
        reclock(&mut tx, id, clocking, ms(now)).await?;
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
        reclock(&mut tx, id, clocking, ms(now)).await?;
        let detail = format!(
            "until {}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        insert_audit(&mut tx, ms(now), actor, "snooze", Some(id), &detail).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A thread's clock columns, as [`write_clock`] reads them.
const CLOCK_ROW: &str = "SELECT id, instance, marketplace, awaiting_since, handled_at, \
    snoozed_at, snoozed_until, alerted_remaining_ms FROM threads";

/// A thread's recorded cycles, as [`write_cycles`] compares them.
const CYCLES_ROW: &str = "SELECT thread_id, started_at, marketplace, answered_at, \
    no_response_needed_at FROM reply_cycles";

/// A row of `reply_cycles`: the cycle and the marketplace it counts for.
type StoredCycle = (crate::lrr::Cycle, String);

fn cycle_from_row(row: &AnyRow) -> Result<StoredCycle> {
    Ok((
        crate::lrr::Cycle {
            started_at: from_ms(row.try_get("started_at")?),
            answered_at: opt_time(row, "answered_at")?,
            no_response_needed_at: opt_time(row, "no_response_needed_at")?,
        },
        row.try_get("marketplace")?,
    ))
}

/// Threads reclocked per query by [`reclock_many`] (bind parameters: SQLite
/// allows 32,766, PostgreSQL 65,535).
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

/// Re-derives a thread's clock from its messages and marks, and its next
/// alert point. Called in the transaction that changed the thread.
pub(super) async fn reclock(
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
    let stored = sqlx::query(&format!("{CYCLES_ROW} WHERE thread_id = $1"))
        .bind(thread_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(cycle_from_row)
        .collect::<Result<Vec<_>>>()?;
    write_clock(conn, thread_id, &facts, &t, clocking, now).await?;
    write_cycles(conn, thread_id, &facts, &t, &stored, clocking).await
}

/// [`reclock`] for many threads, reading their messages and clock columns
/// in a few queries rather than two per thread.
pub(super) async fn reclock_many(
    conn: &mut AnyConnection,
    ids: &BTreeSet<i64>,
    clocking: &Clocking,
    now: i64,
) -> Result<()> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    for chunk in ids.chunks(RECLOCK_CHUNK) {
        let list = placeholders(chunk.len());
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
        let sql = format!("{CYCLES_ROW} WHERE thread_id IN ({list})");
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        let mut stored: HashMap<i64, Vec<StoredCycle>> = HashMap::new();
        for row in &q.fetch_all(&mut *conn).await? {
            stored
                .entry(row.try_get("thread_id")?)
                .or_default()
                .push(cycle_from_row(row)?);
        }
        let sql = format!("{CLOCK_ROW} WHERE id IN ({list})");
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for t in &q.fetch_all(&mut *conn).await? {
            let id: i64 = t.try_get("id")?;
            let facts = facts.get(&id).map(Vec::as_slice).unwrap_or_default();
            write_clock(conn, id, facts, t, clocking, now).await?;
            let stored = stored.get(&id).map(Vec::as_slice).unwrap_or_default();
            write_cycles(conn, id, facts, t, stored, clocking).await?;
        }
    }
    Ok(())
}

/// Evaluates a thread's clock from its messages (`facts`) and its row as
/// read with [`CLOCK_ROW`], and writes the result.
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

/// Brings a thread's `reply_cycles` rows in line with its messages and
/// marks, writing only what changed (usually one row: the cycle a new
/// message opened or a reply closed). The "no response needed" marks are
/// the thread's latest (`handled_at`) and those recorded on earlier
/// cycles, since the thread keeps only the latest.
async fn write_cycles(
    conn: &mut AnyConnection,
    thread_id: i64,
    facts: &[Fact],
    t: &AnyRow,
    stored: &[StoredCycle],
    clocking: &Clocking,
) -> Result<()> {
    let instance: String = t.try_get("instance")?;
    let marketplace: String = t
        .try_get::<Option<String>, _>("marketplace")?
        .unwrap_or_default();
    let mut marks: Vec<DateTime<Utc>> = stored
        .iter()
        .filter_map(|(c, _)| c.no_response_needed_at)
        .collect();
    marks.extend(opt_time(t, "handled_at")?);
    let derived = crate::lrr::cycles(facts, &marks);
    let old: HashMap<DateTime<Utc>, &StoredCycle> =
        stored.iter().map(|s| (s.0.started_at, s)).collect();
    for c in &derived {
        match old.get(&c.started_at) {
            Some((o, m)) if o == c && *m == marketplace => {}
            Some(_) => {
                sqlx::query(
                    "UPDATE reply_cycles SET answered_at = $1, no_response_needed_at = $2,
                        marketplace = $3
                     WHERE thread_id = $4 AND started_at = $5",
                )
                .bind(opt_ms(c.answered_at))
                .bind(opt_ms(c.no_response_needed_at))
                .bind(&marketplace)
                .bind(thread_id)
                .bind(ms(c.started_at))
                .execute(&mut *conn)
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO reply_cycles (thread_id, started_at, instance, channel,
                        marketplace, answered_at, no_response_needed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(thread_id)
                .bind(ms(c.started_at))
                .bind(&instance)
                .bind(&clocking.channel)
                .bind(&marketplace)
                .bind(opt_ms(c.answered_at))
                .bind(opt_ms(c.no_response_needed_at))
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    // A cycle that no longer exists: an older message arrived late and
    // opened the cycle earlier.
    for (started_at, _) in old {
        if !derived.iter().any(|c| c.started_at == started_at) {
            sqlx::query("DELETE FROM reply_cycles WHERE thread_id = $1 AND started_at = $2")
                .bind(thread_id)
                .bind(ms(started_at))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
