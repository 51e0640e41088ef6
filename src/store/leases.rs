//! Several daemons on one store: who is alive, who polls which instance,
//! and which daemon sends a scheduled digest.
//!
//! A daemon writes a heartbeat every third of its lease period and counts
//! as live until `expires_at`. An instance is polled only by the holder of
//! its lease. Taking a lease over (free, released or expired) increments its
//! fencing `token`; a poll commits its cursor only while its holder and token
//! are still the lease's (see [`check_fence`], called by the ingest in its
//! transaction), so a daemon that hung past its expiry cannot move a cursor
//! that another daemon now owns. Which leases a daemon takes or gives back
//! is the pure [`plan_leases`].

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{from_ms, ms, Result, SqlStore, StoreError};

/// A daemon as its heartbeat records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonInfo {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Counted as live until then.
    pub expires_at: DateTime<Utc>,
}

/// An instance's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    pub instance: String,
    /// The daemon id; `None` once released.
    pub holder: Option<String>,
    /// Incremented on every takeover.
    pub token: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LeaseRow {
    /// Held by someone, and not expired at `now`.
    pub fn is_held(&self, now: DateTime<Utc>) -> bool {
        self.holder.is_some() && self.expires_at > now
    }
}

/// What a poll's commit must still hold: the lease of its instance with
/// this holder and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub token: i64,
}

/// Daemons, leases and digest runs.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Records that daemon `id` is alive until `expires_at`.
    async fn heartbeat(&self, daemon: &DaemonInfo) -> Result<()>;
    /// Every daemon row, live or not, by id.
    async fn daemons(&self) -> Result<Vec<DaemonInfo>>;
    /// Every lease, by instance.
    async fn leases(&self) -> Result<Vec<LeaseRow>>;
    /// Takes the lease of `instance` if it is free, released or expired at
    /// `now`; returns the new fencing token, or `None` if another daemon
    /// holds it.
    async fn acquire_lease(
        &self,
        instance: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<i64>>;
    /// Extends a lease still held with this token; `false` when it was
    /// taken over meanwhile.
    async fn renew_lease(
        &self,
        instance: &str,
        fence: &Fence,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Gives a lease back, if still held with this token.
    async fn release_lease(&self, instance: &str, fence: &Fence) -> Result<()>;
    /// A daemon stops: its leases are released and its row removed, so that
    /// the others take over at once rather than after the expiry.
    async fn leave(&self, daemon: &str) -> Result<()>;
    /// Forgets every daemon and frees every lease: for a store that only
    /// one daemon can use at a time (SQLite, under its lock file), where
    /// whatever is recorded was left by a daemon that is gone.
    async fn forget_daemons(&self) -> Result<()>;
}

fn daemon_from_row(r: &AnyRow) -> Result<DaemonInfo> {
    Ok(DaemonInfo {
        id: r.try_get("id")?,
        host: r.try_get("host")?,
        pid: r.try_get("pid")?,
        started_at: from_ms(r.try_get("started_at")?),
        heartbeat_at: from_ms(r.try_get("heartbeat_at")?),
        expires_at: from_ms(r.try_get("expires_at")?),
    })
}

fn lease_from_row(r: &AnyRow) -> Result<LeaseRow> {
    Ok(LeaseRow {
        instance: r.try_get("instance")?,
        holder: r.try_get("holder")?,
        token: r.try_get("token")?,
        acquired_at: from_ms(r.try_get("acquired_at")?),
        renewed_at: from_ms(r.try_get("renewed_at")?),
        expires_at: from_ms(r.try_get("expires_at")?),
    })
}

#[async_trait]
impl LeaseStore for SqlStore {
    async fn heartbeat(&self, d: &DaemonInfo) -> Result<()> {
        sqlx::query(
            "INSERT INTO daemons (id, host, pid, started_at, heartbeat_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                expires_at = excluded.expires_at",
        )
        .bind(&d.id)
        .bind(&d.host)
        .bind(d.pid)
        .bind(ms(d.started_at))
        .bind(ms(d.heartbeat_at))
        .bind(ms(d.expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn daemons(&self) -> Result<Vec<DaemonInfo>> {
        let rows = sqlx::query(
            "SELECT id, host, pid, started_at, heartbeat_at, expires_at FROM daemons ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(daemon_from_row).collect()
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>> {
        let rows = sqlx::query(
            "SELECT instance, holder, token, acquired_at, renewed_at, expires_at
             FROM leases ORDER BY instance",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lease_from_row).collect()
    }

    async fn acquire_lease(
        &self,
        instance: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        // One statement: of two daemons racing for a free lease, the second
        // finds it held (PostgreSQL re-checks the WHERE after the first
        // commits; SQLite has one writer) and gets no row back.
        let row = sqlx::query(
            "INSERT INTO leases (instance, holder, token, acquired_at, renewed_at, expires_at)
             VALUES ($1, $2, 1, $3, $3, $4)
             ON CONFLICT (instance) DO UPDATE SET holder = excluded.holder,
                token = leases.token + 1, acquired_at = excluded.acquired_at,
                renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
             WHERE leases.holder IS NULL OR leases.expires_at <= $3
             RETURNING token",
        )
        .bind(instance)
        .bind(holder)
        .bind(ms(now))
        .bind(ms(until))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("token").map_err(Into::into))
            .transpose()
    }

    async fn renew_lease(
        &self,
        instance: &str,
        fence: &Fence,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE leases SET renewed_at = $1, expires_at = $2
             WHERE instance = $3 AND holder = $4 AND token = $5",
        )
        .bind(ms(now))
        .bind(ms(until))
        .bind(instance)
        .bind(&fence.holder)
        .bind(fence.token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, instance: &str, fence: &Fence) -> Result<()> {
        sqlx::query(
            "UPDATE leases SET holder = NULL, expires_at = 0
             WHERE instance = $1 AND holder = $2 AND token = $3",
        )
        .bind(instance)
        .bind(&fence.holder)
        .bind(fence.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn leave(&self, daemon: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        sqlx::query("UPDATE leases SET holder = NULL, expires_at = 0 WHERE holder = $1")
            .bind(daemon)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM daemons WHERE id = $1")
            .bind(daemon)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn forget_daemons(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = self.begin_write(&mut conn).await?;
        sqlx::query("UPDATE leases SET holder = NULL, expires_at = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM daemons").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Fails with [`StoreError::LeaseLost`] unless `instance`'s lease is still
/// held with `fence`, in the caller's transaction. It is an UPDATE, not a
/// SELECT: on PostgreSQL the row stays locked until the caller commits, so
/// a takeover racing with the commit waits for it and then increments the
/// token: the cursor moves under the old lease or not at all.
pub(super) async fn check_fence(
    conn: &mut AnyConnection,
    instance: &str,
    fence: &Fence,
) -> Result<()> {
    let held = sqlx::query(
        "UPDATE leases SET renewed_at = renewed_at
         WHERE instance = $1 AND holder = $2 AND token = $3",
    )
    .bind(instance)
    .bind(&fence.holder)
    .bind(fence.token)
    .execute(&mut *conn)
    .await?;
    if held.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(instance.to_owned()))
    }
}

/// What one daemon should do with its leases now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeasePlan {
    /// Free or expired leases to try to take, best first.
    pub take: Vec<String>,
    /// Leases this daemon holds beyond its share, to give back.
    pub release: Vec<String>,
}

/// Which leases daemon `me` should take or give back, given the configured
/// `instances`, the `live` daemons (`me` counts even when its heartbeat is
/// not written yet) and the current `leases`.
///
/// Each daemon holds at most `ceil(instances / live daemons)`: when one dies
/// the others' share grows and they take its expired leases; when one joins
/// the share shrinks, the others give back their surplus, and the newcomer
/// takes it. Daemons prefer different instances (a hash of daemon and
/// instance), so that they rarely race for the same free lease.
pub fn plan_leases(
    me: &str,
    instances: &[String],
    live: &[String],
    leases: &[LeaseRow],
    now: DateTime<Utc>,
) -> LeasePlan {
    let daemons: BTreeSet<&str> = live
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(me))
        .collect();
    let share = instances.len().div_ceil(daemons.len());
    let configured: HashSet<&str> = instances.iter().map(String::as_str).collect();
    let held_by = |i: &str| {
        leases
            .iter()
            .find(|l| l.instance == i && l.is_held(now))
            .and_then(|l| l.holder.as_deref())
    };
    let mut mine: Vec<&str> = instances
        .iter()
        .map(String::as_str)
        .filter(|i| held_by(i) == Some(me))
        .collect();
    let mut free: Vec<&str> = instances
        .iter()
        .map(String::as_str)
        .filter(|i| held_by(i).is_none())
        .collect();
    let preference = |i: &&str| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (me, *i).hash(&mut h);
        h.finish()
    };
    let mut plan = LeasePlan::default();
    // Leases of instances no longer configured are given back too.
    plan.release.extend(
        leases
            .iter()
            .filter(|l| l.is_held(now) && l.holder.as_deref() == Some(me))
            .filter(|l| !configured.contains(l.instance.as_str()))
            .map(|l| l.instance.clone()),
    );
    if mine.len() > share {
        // Keep the ones this daemon prefers; the others prefer the rest.
        mine.sort_by_key(preference);
        plan.release
            .extend(mine[share..].iter().map(|s| (*s).to_owned()));
    } else {
        free.sort_by_key(preference);
        plan.take = free
            .into_iter()
            .take(share - mine.len())
            .map(str::to_owned)
            .collect();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i:02}")).collect()
    }

    fn lease(instance: &str, holder: Option<&str>, expires_in_s: i64) -> LeaseRow {
        LeaseRow {
            instance: instance.into(),
            holder: holder.map(Into::into),
            token: 1,
            acquired_at: now(),
            renewed_at: now(),
            expires_at: now() + Duration::seconds(expires_in_s),
        }
    }

    fn live(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Runs every daemon's plan in turn (each taking what is still free)
    /// until nothing changes; returns how many each holds.
    fn settle(instances: &[String], daemons: &[&str], leases: &mut Vec<LeaseRow>) -> Vec<usize> {
        for _ in 0..10 {
            let mut changed = false;
            for d in daemons {
                let plan = plan_leases(d, instances, &live(daemons), leases, now());
                for r in &plan.release {
                    leases.retain(|l| &l.instance != r);
                    changed = true;
                }
                for t in &plan.take {
                    if !leases.iter().any(|l| &l.instance == t && l.is_held(now())) {
                        leases.retain(|l| &l.instance != t);
                        leases.push(lease(t, Some(d), 30));
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        daemons
            .iter()
            .map(|d| {
                leases
                    .iter()
                    .filter(|l| l.holder.as_deref() == Some(d) && l.is_held(now()))
                    .count()
            })
            .collect()
    }

    #[test]
    fn a_lone_daemon_takes_every_free_lease() {
        let plan = plan_leases("a", &names(5), &live(&["a"]), &[], now());
        assert_eq!(plan.take.len(), 5);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn table_of_takes_and_releases() {
        // (instances, live daemons, leases held by "a", by "b", expired, want take, want release)
        type Case<'a> = (usize, &'a [&'a str], usize, usize, usize, usize, usize);
        let cases: &[Case] = &[
            // Three daemons, nothing held yet: a third each, rounded up.
            (20, &["a", "b", "c"], 0, 0, 0, 7, 0),
            // "a" already has its share.
            (20, &["a", "b", "c"], 7, 7, 0, 0, 0),
            // "c" died: its leases expired, the share is now 10.
            (20, &["a", "b"], 7, 7, 6, 3, 0),
            // "b" joined while "a" held everything: "a" gives half back.
            (20, &["a", "b"], 20, 0, 0, 0, 10),
            // A third joined: "a" keeps 7 of 10.
            (20, &["a", "b", "c"], 10, 10, 0, 0, 3),
            // "a"'s own heartbeat is not in the list yet: it still counts.
            (4, &["b"], 0, 2, 0, 2, 0),
            // More daemons than instances: at most one each.
            (2, &["a", "b", "c"], 0, 1, 0, 1, 0),
            (2, &["a", "b", "c"], 0, 2, 0, 0, 0),
        ];
        for (n, daemons, a, b, expired, take, release) in cases {
            let inst = names(*n);
            let mut leases = Vec::new();
            let mut it = inst.iter();
            for _ in 0..*a {
                leases.push(lease(it.next().unwrap(), Some("a"), 30));
            }
            for _ in 0..*b {
                leases.push(lease(it.next().unwrap(), Some("b"), 30));
            }
            for _ in 0..*expired {
                leases.push(lease(it.next().unwrap(), Some("c"), -1));
            }
            let plan = plan_leases("a", &inst, &live(daemons), &leases, now());
            assert_eq!(
                (plan.take.len(), plan.release.len()),
                (*take, *release),
                "case {n} instances, {daemons:?}, a={a} b={b} expired={expired}: {plan:?}"
            );
            for t in &plan.take {
                let l = leases.iter().find(|l| &l.instance == t);
                assert!(
                    l.is_none_or(|l| !l.is_held(now())),
                    "takes a held lease {t}"
                );
            }
            for r in &plan.release {
                let l = leases.iter().find(|l| &l.instance == r).unwrap();
                assert_eq!(l.holder.as_deref(), Some("a"), "releases another's {r}");
            }
        }
    }

    #[test]
    fn leases_spread_evenly_and_move_back_when_a_daemon_joins() {
        let inst = names(20);
        let mut leases = Vec::new();
        assert_eq!(settle(&inst, &["a"], &mut leases), vec![20]);
        let mut counts = settle(&inst, &["a", "b", "c"], &mut leases);
        counts.sort();
        assert_eq!(counts, vec![6, 7, 7]);
        // "b" dies: its leases expire, and the two others share them.
        for l in leases
            .iter_mut()
            .filter(|l| l.holder.as_deref() == Some("b"))
        {
            l.expires_at = now() - Duration::seconds(1);
        }
        assert_eq!(settle(&inst, &["a", "c"], &mut leases), vec![10, 10]);
        assert!(leases.iter().all(|l| l.is_held(now())));
    }

    #[test]
    fn leases_of_unconfigured_instances_are_given_back() {
        let leases = vec![lease("gone", Some("a"), 30), lease("i00", Some("a"), 30)];
        let plan = plan_leases("a", &names(1), &live(&["a"]), &leases, now());
        assert_eq!(plan.release, vec!["gone".to_owned()]);
        assert!(plan.take.is_empty());
    }

    #[tokio::test]
    async fn a_takeover_fences_the_old_holder_out_of_the_cursor() {
        use crate::store::{IngestStore, InstanceStore, MigrationStore};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let store = SqlStore::connect(&url, None, 2).await.unwrap();
        store.migrate().await.unwrap();
        let t0 = Utc::now();
        let until = t0 + Duration::seconds(2);
        let a = store.acquire_lease("shop", "a", t0, until).await.unwrap();
        assert_eq!(a, Some(1));
        assert_eq!(
            store.acquire_lease("shop", "b", t0, until).await.unwrap(),
            None
        );
        // "a" hangs past its expiry; "b" takes over with a new token.
        let later = until + Duration::milliseconds(1);
        let b = store
            .acquire_lease("shop", "b", later, later + Duration::seconds(2))
            .await
            .unwrap();
        assert_eq!(b, Some(2));
        let stale = Fence {
            holder: "a".into(),
            token: 1,
        };
        let fresh = Fence {
            holder: "b".into(),
            token: 2,
        };
        assert!(!store
            .renew_lease("shop", &stale, later, later)
            .await
            .unwrap());

        let clocking = crate::store::Clocking {
            channel: "simulated".into(),
            policy: crate::clock::Policy {
                window: Duration::hours(24),
                business_hours: None,
            },
            points: Vec::new(),
        };
        let batch = |cursor: &str| {
            let mut b = hourglass_connector::Batch::default();
            b.messages.push(hourglass_connector::Message::new(
                format!("m{cursor}"),
                "t".to_owned(),
                hourglass_connector::Direction::Inbound,
                Utc::now(),
                "hello",
            ));
            b.cursors.insert(String::new(), cursor.to_owned());
            b
        };
        let err = store
            .ingest_fenced("shop", &batch("9"), &clocking, Some(&stale))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseLost(ref i) if i == "shop"),
            "{err}"
        );
        assert!(store.cursors("shop").await.unwrap().is_empty());
        let report = store
            .ingest_fenced("shop", &batch("1"), &clocking, Some(&fresh))
            .await
            .unwrap();
        assert_eq!(report.inserted, 1);
        assert_eq!(store.cursors("shop").await.unwrap()[""], "1");
        // Released: free for anyone, with the next token.
        store.release_lease("shop", &fresh).await.unwrap();
        assert_eq!(
            store
                .acquire_lease("shop", "a", later, until)
                .await
                .unwrap(),
            Some(3)
        );
    }
}
