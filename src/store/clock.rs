//! The reply clock in the store. A thread's clock columns (`awaiting_since`,
//! `due_at`, the reply window, the next alert point) are re-derived from its
//! messages and marks by the pure `crate::clock` in the transaction that
//! changed the thread: an ingest, a sent reply, or an agent's mark (no
//! response needed, snooze), which live here too.

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::Direction;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::dialect::{placeholders, placeholders_from, positional, value_rows};
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
    snoozed_at, snoozed_until, alerted_remaining_ms, due_at, last_inbound_at, \
    last_outbound_at, reply_window_closes_at, message_count FROM threads";

/// A thread's recorded cycles, as [`CycleChanges::derive`] compares them.
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

/// The message columns [`fact_from_row`] reads.
const FACT_COLUMNS: &str = "direction, automatic, sent_at, delivery_failed_at";

/// A message as the clock sees it, from [`FACT_COLUMNS`]. A reply the
/// platform reported undelivered answers nothing: the clock sees it as a
/// notice.
fn fact_from_row(row: &AnyRow) -> Result<Fact> {
    let dir: String = row.try_get("direction")?;
    let undelivered = row
        .try_get::<Option<i64>, _>("delivery_failed_at")?
        .is_some();
    Ok(Fact {
        direction: match Direction::parse(&dir) {
            Some(Direction::Outbound) if undelivered => Direction::System,
            Some(d) => d,
            None => Direction::System,
        },
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
    let rows = sqlx::query(&format!(
        "SELECT {FACT_COLUMNS} FROM messages WHERE thread_id = $1"
    ))
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
    let clock = evaluate_clock(thread_id, &facts, &t, clocking)?;
    write_clocks(conn, &[clock], now, false).await?;
    let mut changes = CycleChanges::default();
    changes.derive(thread_id, &facts, &t, &stored)?;
    changes.write(conn, &clocking.channel).await
}

/// [`reclock`] for many threads, reading their messages and clock columns
/// and writing the result in a few statements rather than three per thread.
pub(super) async fn reclock_many(
    conn: &mut AnyConnection,
    ids: &BTreeSet<i64>,
    clocking: &Clocking,
    now: i64,
) -> Result<()> {
    reclock_threads(conn, ids, clocking, now, false).await
}

/// [`reclock_many`] for threads a reply was just sent on: their error (a
/// reply that failed before) clears in the same statement as the clock.
/// `replies` holds the replies that became new messages, by thread. A
/// thread with one new reply, later than its customer's messages (the
/// common case), gets its clock and cycles from their stored state plus
/// that reply ([`clock::after_reply`], [`crate::lrr::cycles_after_reply`]),
/// without reading its messages again; any other is recomputed in full.
pub(super) async fn reclock_replied(
    conn: &mut AnyConnection,
    ids: &BTreeSet<i64>,
    replies: &HashMap<i64, Vec<DateTime<Utc>>>,
    clocking: &Clocking,
    now: i64,
) -> Result<()> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    let mut in_full = BTreeSet::new();
    for chunk in ids.chunks(RECLOCK_CHUNK) {
        let list = placeholders(chunk.len());
        let stored = stored_cycles(conn, chunk, &list).await?;
        let mut clocks = Vec::with_capacity(chunk.len());
        let mut changes = CycleChanges::default();
        for t in &clock_rows(conn, chunk, &list).await? {
            let id: i64 = t.try_get("id")?;
            let stored = stored.get(&id).map(Vec::as_slice).unwrap_or_default();
            let at = match replies.get(&id).map(Vec::as_slice) {
                Some([at]) => *at,
                _ => {
                    in_full.insert(id);
                    continue;
                }
            };
            let before = stored_clock(t)?;
            let mut cycles: Vec<crate::lrr::Cycle> = stored.iter().map(|(c, _)| *c).collect();
            cycles.sort_by_key(|c| c.started_at);
            let after = clock::after_reply(&before, at).zip(crate::lrr::cycles_after_reply(
                &cycles,
                before.last_inbound_at,
                at,
            ));
            let Some((state, cycles)) = after else {
                in_full.insert(id);
                continue;
            };
            let count: i64 = t.try_get("message_count")?;
            clocks.push(clock_columns(id, state, count + 1, t, clocking)?);
            changes.compare(id, &cycles, t, stored)?;
        }
        for group in clocks.chunks(CLOCKS_PER_STATEMENT) {
            write_clocks(conn, group, now, true).await?;
        }
        changes.write(conn, &clocking.channel).await?;
    }
    if in_full.is_empty() {
        return Ok(());
    }
    reclock_threads(conn, &in_full, clocking, now, true).await
}

/// The clock a thread's row holds, as [`clock::evaluate`] last derived it.
fn stored_clock(t: &AnyRow) -> Result<clock::ClockState> {
    Ok(clock::ClockState {
        awaiting_since: opt_time(t, "awaiting_since")?,
        due_at: opt_time(t, "due_at")?,
        last_inbound_at: opt_time(t, "last_inbound_at")?,
        last_outbound_at: opt_time(t, "last_outbound_at")?,
        reply_window_closes_at: opt_time(t, "reply_window_closes_at")?,
    })
}

/// The stored clock rows of `ids` (`list`: their placeholders).
async fn clock_rows(
    conn: &mut AnyConnection,
    ids: &[i64],
    list: &str,
) -> Result<Vec<sqlx::any::AnyRow>> {
    let sql = format!("{CLOCK_ROW} WHERE id IN ({list})");
    let sql = positional(conn, &sql);
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(&mut *conn).await?)
}

/// The `reply_cycles` rows of the threads `chunk` (`list`: its
/// placeholders), by thread.
async fn stored_cycles(
    conn: &mut AnyConnection,
    chunk: &[i64],
    list: &str,
) -> Result<HashMap<i64, Vec<StoredCycle>>> {
    let sql = format!("{CYCLES_ROW} WHERE thread_id IN ({list})");
    let sql = positional(conn, &sql);
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
    Ok(stored)
}

async fn reclock_threads(
    conn: &mut AnyConnection,
    ids: &BTreeSet<i64>,
    clocking: &Clocking,
    now: i64,
    clear_error: bool,
) -> Result<()> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    for chunk in ids.chunks(RECLOCK_CHUNK) {
        let list = placeholders(chunk.len());
        let sql = format!(
            "SELECT thread_id, {FACT_COLUMNS} FROM messages
             WHERE thread_id IN ({list})"
        );
        let sql = positional(conn, &sql);
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
        let stored = stored_cycles(conn, chunk, &list).await?;
        let mut clocks = Vec::with_capacity(chunk.len());
        let mut changes = CycleChanges::default();
        for t in &clock_rows(conn, chunk, &list).await? {
            let id: i64 = t.try_get("id")?;
            let facts = facts.get(&id).map(Vec::as_slice).unwrap_or_default();
            clocks.push(evaluate_clock(id, facts, t, clocking)?);
            let stored = stored.get(&id).map(Vec::as_slice).unwrap_or_default();
            changes.derive(id, facts, t, stored)?;
        }
        for group in clocks.chunks(CLOCKS_PER_STATEMENT) {
            write_clocks(conn, group, now, clear_error).await?;
        }
        changes.write(conn, &clocking.channel).await?;
    }
    Ok(())
}

/// A thread's clock columns as [`evaluate_clock`] derived them.
struct ThreadClock {
    id: i64,
    awaiting_since: Option<i64>,
    due_at: Option<i64>,
    reply_window_closes_at: Option<i64>,
    last_inbound_at: Option<i64>,
    last_outbound_at: Option<i64>,
    snoozed_at: Option<i64>,
    snoozed_until: Option<i64>,
    alerted_remaining_ms: Option<i64>,
    next_alert_at: Option<i64>,
    message_count: i64,
}

/// Clocks written per `UPDATE` by [`write_clocks`]: 11 values each.
const CLOCKS_PER_STATEMENT: usize = 20;

/// Evaluates a thread's clock from its messages (`facts`) and its row as
/// read with [`CLOCK_ROW`].
fn evaluate_clock(
    thread_id: i64,
    facts: &[Fact],
    t: &AnyRow,
    clocking: &Clocking,
) -> Result<ThreadClock> {
    let handled_at = opt_time(t, "handled_at")?;
    let state = clock::evaluate(facts, handled_at, &clocking.policy, &clocking.channel);
    clock_columns(thread_id, state, facts.len() as i64, t, clocking)
}

/// A thread's clock columns for the clock `state` of its `message_count`
/// messages, given its row as read with [`CLOCK_ROW`] (marks, alerts
/// fired, the clock before).
fn clock_columns(
    thread_id: i64,
    state: clock::ClockState,
    message_count: i64,
    t: &AnyRow,
    clocking: &Clocking,
) -> Result<ThreadClock> {
    let old_since: Option<i64> = t.try_get("awaiting_since")?;
    let mut snoozed_at: Option<i64> = t.try_get("snoozed_at")?;
    let mut snoozed_until: Option<i64> = t.try_get("snoozed_until")?;
    let mut fired: Option<i64> = t.try_get("alerted_remaining_ms")?;

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
    Ok(ThreadClock {
        id: thread_id,
        awaiting_since: since,
        due_at: opt_ms(state.due_at),
        reply_window_closes_at: opt_ms(state.reply_window_closes_at),
        last_inbound_at: opt_ms(state.last_inbound_at),
        last_outbound_at: opt_ms(state.last_outbound_at),
        snoozed_at,
        snoozed_until,
        alerted_remaining_ms: fired,
        next_alert_at: opt_ms(next_alert),
        message_count,
    })
}

/// Writes evaluated clocks, in one statement: each row's values go
/// through a CTE (`WITH ... UPDATE ... FROM`, on SQLite and PostgreSQL).
/// With `clear_error`, the threads' `last_error` clears too.
async fn write_clocks(
    conn: &mut AnyConnection,
    clocks: &[ThreadClock],
    now: i64,
    clear_error: bool,
) -> Result<()> {
    if clocks.is_empty() {
        return Ok(());
    }
    let clear = if clear_error {
        ", last_error = NULL"
    } else {
        ""
    };
    let sql = format!(
        "WITH v (v_id, v_awaiting_since, v_due_at, v_window, v_last_in, v_last_out,
                v_snoozed_at, v_snoozed_until, v_fired, v_next_alert, v_count)
            AS (VALUES {})
         UPDATE threads SET awaiting_since = v.v_awaiting_since, due_at = v.v_due_at,
            reply_window_closes_at = v.v_window, last_inbound_at = v.v_last_in,
            last_outbound_at = v.v_last_out, snoozed_at = v.v_snoozed_at,
            snoozed_until = v.v_snoozed_until, alerted_remaining_ms = v.v_fired,
            next_alert_at = v.v_next_alert, message_count = v.v_count, updated_at = ${}{clear}
         FROM v WHERE threads.id = v.v_id",
        value_rows(1, clocks.len(), 11),
        clocks.len() * 11 + 1
    );
    let sql = positional(conn, &sql);
    let mut q = sqlx::query(&sql);
    for c in clocks {
        q = q
            .bind(c.id)
            .bind(c.awaiting_since)
            .bind(c.due_at)
            .bind(c.reply_window_closes_at)
            .bind(c.last_inbound_at)
            .bind(c.last_outbound_at)
            .bind(c.snoozed_at)
            .bind(c.snoozed_until)
            .bind(c.alerted_remaining_ms)
            .bind(c.next_alert_at)
            .bind(c.message_count);
    }
    q = q.bind(now);
    q.execute(&mut *conn).await?;
    Ok(())
}

/// A `reply_cycles` row to insert or update, as [`CycleChanges::write`]
/// binds it.
struct CycleRow {
    thread_id: i64,
    started_at: i64,
    instance: String,
    marketplace: String,
    answered_at: Option<i64>,
    no_response_needed_at: Option<i64>,
}

/// Cycle rows written per statement by [`CycleChanges::write`]: at most 7
/// values each, far below either backend's bind limit.
const CYCLES_PER_STATEMENT: usize = 100;

/// What [`CycleChanges::derive`] found out of line in `reply_cycles`, for
/// many threads, written by [`CycleChanges::write`] in three statements
/// per hundred rows rather than one statement per changed cycle.
#[derive(Default)]
struct CycleChanges {
    inserts: Vec<CycleRow>,
    updates: Vec<CycleRow>,
    /// `(thread_id, started_at)`.
    deletes: Vec<(i64, i64)>,
}

impl CycleChanges {
    /// Compares a thread's `reply_cycles` rows with its messages and marks
    /// and notes what differs (usually one row: the cycle a new message
    /// opened or a reply closed). The "no response needed" marks are the
    /// thread's latest (`handled_at`) and those recorded on earlier
    /// cycles, since the thread keeps only the latest.
    fn derive(
        &mut self,
        thread_id: i64,
        facts: &[Fact],
        t: &AnyRow,
        stored: &[StoredCycle],
    ) -> Result<()> {
        let mut marks: Vec<DateTime<Utc>> = stored
            .iter()
            .filter_map(|(c, _)| c.no_response_needed_at)
            .collect();
        marks.extend(opt_time(t, "handled_at")?);
        let derived = crate::lrr::cycles(facts, &marks);
        self.compare(thread_id, &derived, t, stored)
    }

    /// Notes what differs between a thread's `derived` cycles and its
    /// `stored` rows.
    fn compare(
        &mut self,
        thread_id: i64,
        derived: &[crate::lrr::Cycle],
        t: &AnyRow,
        stored: &[StoredCycle],
    ) -> Result<()> {
        let instance: String = t.try_get("instance")?;
        let marketplace: String = t
            .try_get::<Option<String>, _>("marketplace")?
            .unwrap_or_default();
        let old: HashMap<DateTime<Utc>, &StoredCycle> =
            stored.iter().map(|s| (s.0.started_at, s)).collect();
        for c in derived {
            let row = || CycleRow {
                thread_id,
                started_at: ms(c.started_at),
                instance: instance.clone(),
                marketplace: marketplace.clone(),
                answered_at: opt_ms(c.answered_at),
                no_response_needed_at: opt_ms(c.no_response_needed_at),
            };
            match old.get(&c.started_at) {
                Some((o, m)) if o == c && *m == marketplace => {}
                Some(_) => self.updates.push(row()),
                None => self.inserts.push(row()),
            }
        }
        // A cycle that no longer exists: an older message arrived late and
        // opened the cycle earlier.
        let kept: HashSet<DateTime<Utc>> = derived.iter().map(|c| c.started_at).collect();
        for started_at in old.keys() {
            if !kept.contains(started_at) {
                self.deletes.push((thread_id, ms(*started_at)));
            }
        }
        Ok(())
    }

    /// Writes the changes: one `DELETE`, one multi-row `INSERT` and one
    /// `WITH ... UPDATE ... FROM` per hundred rows. A deleted and an
    /// inserted row never share a key (a thread's cycle is either still
    /// derived or gone), so the order does not matter; deletes go first
    /// all the same.
    async fn write(&self, conn: &mut AnyConnection, channel: &str) -> Result<()> {
        for chunk in self.deletes.chunks(CYCLES_PER_STATEMENT) {
            let sql = format!(
                "WITH v (v_thread, v_started) AS (VALUES {})
                 DELETE FROM reply_cycles WHERE (thread_id, started_at) IN (
                    SELECT v_thread, v_started FROM v)",
                value_rows(1, chunk.len(), 2)
            );
            // `IN`, not a correlated `EXISTS`, which SQLite answers by
            // scanning every cycle of every thread.
            let sql = positional(conn, &sql);
            let mut q = sqlx::query(&sql);
            for (thread_id, started_at) in chunk {
                q = q.bind(*thread_id).bind(*started_at);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in self.inserts.chunks(CYCLES_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO reply_cycles (channel, thread_id, started_at, instance,
                    marketplace, answered_at, no_response_needed_at)
                 VALUES {}",
                cycle_insert_rows(chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(channel);
            for c in chunk {
                q = q
                    .bind(c.thread_id)
                    .bind(c.started_at)
                    .bind(&c.instance)
                    .bind(&c.marketplace)
                    .bind(c.answered_at)
                    .bind(c.no_response_needed_at);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in self.updates.chunks(CYCLES_PER_STATEMENT) {
            let sql = format!(
                "WITH v (v_thread, v_started, v_answered, v_nrn, v_marketplace)
                    AS (VALUES {})
                 UPDATE reply_cycles SET answered_at = v.v_answered,
                    no_response_needed_at = v.v_nrn, marketplace = v.v_marketplace
                 FROM v WHERE reply_cycles.thread_id = v.v_thread
                    AND reply_cycles.started_at = v.v_started",
                value_rows(1, chunk.len(), 5)
            );
            let sql = positional(conn, &sql);
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q
                    .bind(c.thread_id)
                    .bind(c.started_at)
                    .bind(c.answered_at)
                    .bind(c.no_response_needed_at)
                    .bind(&c.marketplace);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

/// `($1, $2, ..., $7), ($1, $8, ..., $13), ...`: the rows of the cycles'
/// `INSERT`, each starting with the shared channel (`$1`).
fn cycle_insert_rows(rows: usize) -> String {
    (0..rows)
        .map(|r| format!("($1, {})", placeholders_from(2 + r * 6, 6)))
        .collect::<Vec<_>>()
        .join(", ")
}
