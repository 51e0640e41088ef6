//! Customers across channels: the keys ingest records per identity, the
//! automatic links they make, and an agent's links and splits.
//!
//! Ingest records a batch's keys in one statement per hundred and looks
//! for other customers sharing them in one query per batch
//! ([`link_batch`]); a merge happens only where one is found. Two
//! customers are never joined automatically across a split an agent
//! recorded, nor when each already has an Amazon buyer (an alias is one
//! buyer at one seller: a shipper's mail naming two orders must not make
//! two buyers one).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::dialect::{placeholders, positional};
use super::sql::insert_audit;
use super::threads::{thread_from_row, ThreadSummary, THREAD_COLUMNS};
use super::{from_ms, ms, Result, SqlStore, StoreError};
use crate::customers::{CustomerRef, Key};

/// One identity of a customer and the keys that link it.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    pub id: i64,
    pub channel: String,
    pub handle: String,
    pub display_name: Option<String>,
    /// `kind:value` (`email:ana@example.com`, `order:302-…`).
    pub keys: Vec<String>,
}

/// A split an agent made: these two identities stay apart.
#[derive(Debug, Clone, Serialize)]
pub struct SplitView {
    /// The identity of this customer.
    pub identity: String,
    /// The identity it was split from, and that one's customer now.
    pub other: String,
    pub other_customer_id: i64,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// A customer with its identities and threads on every channel.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerDetail {
    pub id: i64,
    pub display_name: Option<String>,
    pub identities: Vec<IdentityView>,
    pub threads: Vec<ThreadSummary>,
    pub splits: Vec<SplitView>,
}

/// Reading, linking and splitting customers.
#[async_trait]
pub trait CustomerStore: Send + Sync {
    /// The customer `r` names, with its identities, threads (most recent
    /// first, at most 100) and recorded splits.
    async fn customer(&self, r: &CustomerRef, now: DateTime<Utc>)
        -> Result<Option<CustomerDetail>>;
    /// Joins the customers `a` and `b` name into one (the older id stays)
    /// and forgets splits between them. Returns the customer id.
    async fn link_customers(&self, a: &CustomerRef, b: &CustomerRef, actor: &str) -> Result<i64>;
    /// Splits identity `b` (or, without `b`, identity `a`) off its
    /// customer into a new one, with its threads, and records the split
    /// so that no automatic rule joins them again. Returns the new
    /// customer's id.
    async fn unlink_customers(
        &self,
        a: &CustomerRef,
        b: Option<&CustomerRef>,
        actor: &str,
    ) -> Result<i64>;
}

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(msg)
}

/// The customer `r` names.
async fn customer_of(conn: &mut AnyConnection, r: &CustomerRef) -> Result<i64> {
    let (sql, what) = match r {
        CustomerRef::Customer(_) => ("SELECT id AS c FROM customers WHERE id = $1", "customer"),
        CustomerRef::Thread(_) => (
            "SELECT customer_id AS c FROM threads WHERE id = $1",
            "thread",
        ),
        CustomerRef::Identity { .. } => (
            "SELECT customer_id AS c FROM identities
             WHERE channel = $1 AND (handle = $2 OR handle = $3) ORDER BY (handle = $4) DESC",
            "identity",
        ),
    };
    let q = sqlx::query(sql);
    let q = match r {
        CustomerRef::Customer(id) | CustomerRef::Thread(id) => q.bind(*id),
        CustomerRef::Identity { channel, handle } => q
            .bind(channel)
            .bind(handle)
            .bind(handle.to_lowercase())
            .bind(handle),
    };
    let row = q
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("No such {what}: {r}")))?;
    row.try_get::<Option<i64>, _>("c")?
        .ok_or_else(|| invalid(format!("{r} has no customer (a platform notice)")))
}

/// The identity `r` names: `(id, customer_id, display_name)`.
async fn identity_of(
    conn: &mut AnyConnection,
    r: &CustomerRef,
) -> Result<(i64, i64, Option<String>)> {
    let row = match r {
        CustomerRef::Customer(_) => {
            return Err(invalid(format!(
                "{r}: a split needs an identity (CHANNEL:HANDLE) or a thread (thread:ID)"
            )))
        }
        CustomerRef::Thread(id) => sqlx::query(
            "SELECT i.id, i.customer_id, i.display_name FROM threads t
             JOIN identities i ON i.id = t.identity_id WHERE t.id = $1",
        )
        .bind(*id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "{r}: no such thread, or no identity recorded for it (use CHANNEL:HANDLE)"
            ))
        })?,
        CustomerRef::Identity { channel, handle } => sqlx::query(
            "SELECT id, customer_id, display_name FROM identities
             WHERE channel = $1 AND (handle = $2 OR handle = $3) ORDER BY (handle = $4) DESC",
        )
        .bind(channel)
        .bind(handle)
        .bind(handle.to_lowercase())
        .bind(handle)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("No such identity: {r}")))?,
    };
    Ok((
        row.try_get("id")?,
        row.try_get("customer_id")?,
        row.try_get("display_name")?,
    ))
}

/// Moves everything of customer `gone` to `keep` and deletes `gone`.
async fn merge(conn: &mut AnyConnection, keep: i64, gone: i64) -> Result<()> {
    sqlx::query(
        "UPDATE customers SET display_name =
            COALESCE(display_name, (SELECT display_name FROM customers WHERE id = $1))
         WHERE id = $2",
    )
    .bind(gone)
    .bind(keep)
    .execute(&mut *conn)
    .await?;
    for sql in [
        "UPDATE identities SET customer_id = $1 WHERE customer_id = $2",
        "UPDATE threads SET customer_id = $1 WHERE customer_id = $2",
    ] {
        sqlx::query(sql)
            .bind(keep)
            .bind(gone)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM customers WHERE id = $1")
        .bind(gone)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether an automatic rule may join customers `x` and `y`: no split an
/// agent recorded lies between them, and not both have an Amazon buyer.
async fn may_join(conn: &mut AnyConnection, x: i64, y: i64) -> Result<bool> {
    let row = sqlx::query(
        "SELECT
           (SELECT COUNT(*) FROM customer_splits s
              JOIN identities a ON a.id = s.identity_a
              JOIN identities b ON b.id = s.identity_b
             WHERE (a.customer_id = $1 AND b.customer_id = $2)
                OR (a.customer_id = $3 AND b.customer_id = $4)) AS splits,
           (SELECT COUNT(*) FROM identities
             WHERE customer_id = $5 AND channel = 'amazon') AS buyers_x,
           (SELECT COUNT(*) FROM identities
             WHERE customer_id = $6 AND channel = 'amazon') AS buyers_y",
    )
    .bind(x)
    .bind(y)
    .bind(y)
    .bind(x)
    .bind(x)
    .bind(y)
    .fetch_one(&mut *conn)
    .await?;
    let splits: i64 = row.try_get("splits")?;
    let buyers_x: i64 = row.try_get("buyers_x")?;
    let buyers_y: i64 = row.try_get("buyers_y")?;
    Ok(splits == 0 && !(buyers_x > 0 && buyers_y > 0))
}

/// Key rows per INSERT (4 values each).
const KEYS_PER_STATEMENT: usize = 100;

/// Records the keys of a batch's identities and joins the customers that
/// now share one, in the batch's transaction. `keys` holds
/// `(identity_id, key)`; the common case (nothing new to join) costs one
/// INSERT per hundred keys and one SELECT per batch.
pub(super) async fn link_batch(
    conn: &mut AnyConnection,
    keys: &BTreeSet<(i64, Key)>,
    now: i64,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows: Vec<&(i64, Key)> = keys.iter().collect();
    for chunk in rows.chunks(KEYS_PER_STATEMENT) {
        let values = (0..chunk.len())
            .map(|i| {
                let b = i * 4;
                format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO identity_keys (identity_id, kind, value, created_at) VALUES {values}
             ON CONFLICT DO NOTHING"
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for (identity, (kind, value)) in chunk {
            q = q.bind(*identity).bind(*kind).bind(value.as_str()).bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    let identities: Vec<i64> = keys
        .iter()
        .map(|(i, _)| *i)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Two Amazon buyers sharing a key (an order id in imported data, one
    // buyer's address on two marketplaces) are never joined: left out
    // here, so that they cost no query per batch. The rarer refusals
    // (a recorded split, a buyer reached through another identity) are
    // checked per pair by `may_join`.
    let mut pairs = Vec::new();
    for chunk in identities.chunks(500) {
        let sql = format!(
            "SELECT DISTINCT a.customer_id AS mine, b.customer_id AS other, k.kind, k.value
             FROM identity_keys k
             JOIN identity_keys o ON o.kind = k.kind AND o.value = k.value
                AND o.identity_id <> k.identity_id
             JOIN identities a ON a.id = k.identity_id
             JOIN identities b ON b.id = o.identity_id
             WHERE k.identity_id IN ({}) AND a.customer_id <> b.customer_id
               AND NOT (a.channel = 'amazon' AND b.channel = 'amazon')",
            placeholders(chunk.len())
        );
        let sql = positional(conn, &sql);
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            pairs.push((
                r.try_get::<i64, _>("mine")?,
                r.try_get::<i64, _>("other")?,
                r.try_get::<String, _>("kind")?,
                r.try_get::<String, _>("value")?,
            ));
        }
    }
    // Customers merged earlier in this loop live on under another id.
    let mut merged: HashMap<i64, i64> = HashMap::new();
    let resolve = |merged: &HashMap<i64, i64>, mut id: i64| {
        while let Some(next) = merged.get(&id) {
            id = *next;
        }
        id
    };
    for (x, y, kind, value) in pairs {
        let (x, y) = (resolve(&merged, x), resolve(&merged, y));
        if x == y || !may_join(conn, x, y).await? {
            continue;
        }
        let (keep, gone) = (x.min(y), x.max(y));
        merge(conn, keep, gone).await?;
        merged.insert(gone, keep);
        insert_audit(
            conn,
            now,
            "hourglass",
            "customers_linked",
            None,
            &format!("customer {gone} joined customer {keep}: shared {kind} {value}"),
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl CustomerStore for SqlStore {
    async fn customer(
        &self,
        r: &CustomerRef,
        now: DateTime<Utc>,
    ) -> Result<Option<CustomerDetail>> {
        let mut conn = self.pool.acquire().await?;
        let id = match customer_of(&mut conn, r).await {
            Ok(id) => id,
            Err(StoreError::NotFound(_)) | Err(StoreError::Invalid(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(row) = sqlx::query("SELECT id, display_name FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let display_name: Option<String> = row.try_get("display_name")?;
        let rows = sqlx::query(
            "SELECT i.id, i.channel, i.handle, i.display_name, k.kind, k.value
             FROM identities i LEFT JOIN identity_keys k ON k.identity_id = i.id
             WHERE i.customer_id = $1 ORDER BY i.id, k.kind, k.value",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let mut identities: Vec<IdentityView> = Vec::new();
        for r in &rows {
            let iid: i64 = r.try_get("id")?;
            if identities.last().map(|i| i.id) != Some(iid) {
                identities.push(IdentityView {
                    id: iid,
                    channel: r.try_get("channel")?,
                    handle: r.try_get("handle")?,
                    display_name: r.try_get("display_name")?,
                    keys: Vec::new(),
                });
            }
            let kind: Option<String> = r.try_get("kind")?;
            let value: Option<String> = r.try_get("value")?;
            if let (Some(k), Some(v), Some(last)) = (kind, value, identities.last_mut()) {
                last.keys.push(format!("{k}:{v}"));
            }
        }
        let sql = format!(
            "SELECT {THREAD_COLUMNS} FROM threads t LEFT JOIN customers c ON c.id = t.customer_id
             WHERE t.customer_id = $1 ORDER BY t.updated_at DESC, t.id DESC LIMIT 100"
        );
        let threads = sqlx::query(&sql)
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| thread_from_row(r, now))
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT a.channel AS ac, a.handle AS ah, a.customer_id AS acust,
                    b.channel AS bc, b.handle AS bh, b.customer_id AS bcust,
                    s.actor, s.created_at
             FROM customer_splits s
             JOIN identities a ON a.id = s.identity_a
             JOIN identities b ON b.id = s.identity_b
             WHERE a.customer_id = $1 OR b.customer_id = $2
             ORDER BY s.created_at",
        )
        .bind(id)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let mut splits = Vec::new();
        for r in &rows {
            let a = format!(
                "{}:{}",
                r.try_get::<String, _>("ac")?,
                r.try_get::<String, _>("ah")?
            );
            let b = format!(
                "{}:{}",
                r.try_get::<String, _>("bc")?,
                r.try_get::<String, _>("bh")?
            );
            let acust: i64 = r.try_get("acust")?;
            let bcust: i64 = r.try_get("bcust")?;
            let (identity, other, other_customer_id) = if acust == id {
                (a, b, bcust)
            } else {
                (b, a, acust)
            };
            splits.push(SplitView {
                identity,
                other,
                other_customer_id,
                actor: r.try_get("actor")?,
                at: from_ms(r.try_get("created_at")?),
            });
        }
        Ok(Some(CustomerDetail {
            id,
            display_name,
            identities,
            threads,
            splits,
        }))
    }

    async fn link_customers(&self, a: &CustomerRef, b: &CustomerRef, actor: &str) -> Result<i64> {
        let now = ms(Utc::now());
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let x = customer_of(&mut tx, a).await?;
        let y = customer_of(&mut tx, b).await?;
        if x == y {
            tx.commit().await?;
            return Ok(x);
        }
        sqlx::query(
            "DELETE FROM customer_splits
             WHERE (identity_a IN (SELECT id FROM identities WHERE customer_id = $1)
                    AND identity_b IN (SELECT id FROM identities WHERE customer_id = $2))
                OR (identity_a IN (SELECT id FROM identities WHERE customer_id = $3)
                    AND identity_b IN (SELECT id FROM identities WHERE customer_id = $4))",
        )
        .bind(x)
        .bind(y)
        .bind(y)
        .bind(x)
        .execute(&mut *tx)
        .await?;
        let (keep, gone) = (x.min(y), x.max(y));
        merge(&mut tx, keep, gone).await?;
        insert_audit(
            &mut tx,
            now,
            actor,
            "customers_linked",
            None,
            &format!("customer {gone} joined customer {keep} by hand ({a} with {b})"),
        )
        .await?;
        tx.commit().await?;
        Ok(keep)
    }

    async fn unlink_customers(
        &self,
        a: &CustomerRef,
        b: Option<&CustomerRef>,
        actor: &str,
    ) -> Result<i64> {
        let now = ms(Utc::now());
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        let (ia, ca, name_a) = identity_of(&mut tx, a).await?;
        // The identity that leaves, and those it is split from.
        let (leaving, from, name, old) = match b {
            Some(b) => {
                let (ib, cb, name_b) = identity_of(&mut tx, b).await?;
                if ib == ia {
                    return Err(invalid(format!(
                        "{a} and {b} are the same identity: there is nothing to split"
                    )));
                }
                if cb != ca {
                    return Err(invalid(format!(
                        "{a} and {b} are not linked (customers {ca} and {cb})"
                    )));
                }
                (ib, vec![ia], name_b, cb)
            }
            None => {
                let others = sqlx::query(
                    "SELECT id FROM identities WHERE customer_id = $1 AND id <> $2 ORDER BY id",
                )
                .bind(ca)
                .bind(ia)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>("id"))
                .collect::<std::result::Result<Vec<_>, _>>()?;
                if others.is_empty() {
                    return Err(invalid(format!(
                        "{a} is the only identity of customer {ca}: there is nothing to split"
                    )));
                }
                (ia, others, name_a, ca)
            }
        };
        let new_id: i64 = sqlx::query(
            "INSERT INTO customers (display_name, created_at) VALUES ($1, $2) RETURNING id",
        )
        .bind(name)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        sqlx::query("UPDATE identities SET customer_id = $1 WHERE id = $2")
            .bind(new_id)
            .bind(leaving)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE threads SET customer_id = $1 WHERE identity_id = $2")
            .bind(new_id)
            .bind(leaving)
            .execute(&mut *tx)
            .await?;
        for other in from {
            sqlx::query(
                "INSERT INTO customer_splits (identity_a, identity_b, actor, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(other.min(leaving))
            .bind(other.max(leaving))
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let detail = match b {
            Some(b) => format!("{b} split from {a}: now customer {new_id}, was {old}"),
            None => format!("{a} split off: now customer {new_id}, was {old}"),
        };
        insert_audit(&mut tx, now, actor, "customers_unlinked", None, &detail).await?;
        tx.commit().await?;
        Ok(new_id)
    }
}
