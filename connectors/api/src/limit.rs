//! Rate limiting for the daemon's outbox and for any connector that paces
//! its own calls (SP-API order lookups): a token bucket at the platform's
//! quota plus a pause that `Retry-After` (or a 429 without one) sets.
//! [`governor_quota`] gives the same quota to governor's keyed limiters
//! (one bucket per conversation).

use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use governor::Quota;
use tokio::time::Instant;

use crate::RateLimit;

/// `config` as a governor quota: the sustained rate, and half the
/// platform's burst at once (the other half absorbs requests that the
/// network delivers closer together than we sent them).
pub fn governor_quota(c: RateLimit) -> Option<Quota> {
    let period = Duration::from_secs_f64(1.0 / c.per_second);
    let burst = NonZeroU32::new(c.burst.div_ceil(2)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is a plain value; a panic elsewhere cannot break it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The daemon's side of the platform's bucket: `tokens` of at most half
/// the platform's burst, refilled at the quota's rate.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    /// The platform's burst.
    platform_burst: f64,
    /// The most we take at once: half of it (see [`governor_quota`]).
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a cell, or says how long until one is there. With
    /// `in_flight` calls under way, the bucket refills only up to what the
    /// platform can take on top of them: calls held up on the way (a
    /// stalled network, a stalled platform) arrive together when the hold
    /// ends, and a full burst sent right behind them would find the
    /// platform's bucket empty. This is what caused the 429s of the
    /// 1,000/s benchmark: eight calls stuck for 20 ms, then five more at
    /// once.
    fn take(&mut self, now: Instant, in_flight: usize) -> Result<(), Duration> {
        self.refill(now, in_flight);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

impl Bucket {
    /// Refills for the time since the last refill, during which `in_flight`
    /// calls were under way. Done whenever that number changes, so that
    /// calls answered together after a stall do not leave a full bucket
    /// behind: the platform took them all at once and its bucket is low.
    fn refill(&mut self, now: Instant, in_flight: usize) {
        let room = (self.platform_burst - in_flight as f64).max(1.0);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst.min(room));
        self.last = now;
    }
}

/// One bucket at the platform's quota, plus a pause that `Retry-After`
/// sets.
pub struct Limiter {
    config: Option<RateLimit>,
    bucket: Option<Mutex<Bucket>>,
    paused_until: Mutex<Option<Instant>>,
    /// Calls taken with [`Limiter::acquire_call`] and not yet answered.
    in_flight: AtomicUsize,
    /// Callers of [`Limiter::acquire`] wait for the bucket one at a time,
    /// in order: one wake-up per cell, not one per waiter per cell.
    turn: tokio::sync::Mutex<()>,
}

/// A call under way, from its cell until its answer (dropped).
#[derive(Debug)]
pub struct Call<'a> {
    limiter: &'a Limiter,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let l = self.limiter;
        match &l.bucket {
            Some(b) => {
                let mut b = lock(b);
                b.refill(Instant::now(), l.in_flight.load(Ordering::Acquire));
                l.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            None => {
                l.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("config", &self.config)
            .field("paused_until", &*lock(&self.paused_until))
            .finish()
    }
}

impl Limiter {
    /// A limiter for `config`; `None` limits nothing (but still pauses).
    pub fn new(config: Option<RateLimit>) -> Limiter {
        let bucket = config
            .filter(|c| c.per_second > 0.0 && c.per_second.is_finite())
            .map(|c| {
                let burst = f64::from(c.burst.div_ceil(2).max(1));
                Mutex::new(Bucket {
                    per_second: c.per_second,
                    platform_burst: f64::from(c.burst.max(1)),
                    burst,
                    tokens: burst,
                    last: Instant::now(),
                })
            });
        Limiter {
            config,
            bucket,
            paused_until: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured limit.
    pub fn config(&self) -> Option<RateLimit> {
        self.config
    }

    /// Waits until a call may be made, and takes its cell.
    pub async fn acquire(&self) {
        drop(self.acquire_call().await);
    }

    /// [`Limiter::acquire`] for a call whose answer the caller awaits:
    /// until the returned [`Call`] is dropped, the call counts as under
    /// way, and the bucket keeps room for it (see `Bucket::take`).
    pub async fn acquire_call(&self) -> Call<'_> {
        let _turn = self.turn.lock().await;
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            // Waited for on tokio's own timer: governor's `until_ready`
            // runs a timer thread of its own (futures-timer), one more
            // thread hand-off per call: 8 to 20 % of the outbox's CPU at
            // 1,000 sends a second.
            if let Err(wait) = self.take() {
                tokio::time::sleep(wait).await;
                continue;
            }
            // A pause may have begun while we waited for the cell: the
            // platform said stop, so the cell is not used.
            if self.paused_until().is_none() {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                return Call { limiter: self };
            }
        }
    }

    fn take(&self) -> Result<(), Duration> {
        match &self.bucket {
            Some(b) => lock(b).take(Instant::now(), self.in_flight.load(Ordering::Acquire)),
            None => Ok(()),
        }
    }

    /// Like [`Limiter::acquire`], but gives up (and takes nothing) when the
    /// call could not be made before `deadline`: a poll with a time budget
    /// leaves the rest for the next one.
    pub async fn acquire_before(&self, deadline: Instant) -> bool {
        loop {
            if let Some(until) = self.paused_until() {
                if until > deadline {
                    return false;
                }
                tokio::time::sleep_until(until).await;
                continue;
            }
            match self.take() {
                Ok(()) => return true,
                Err(wait) => {
                    if Instant::now() + wait > deadline {
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Stops all calls until `until` (the platform's `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        let mut p = lock(&self.paused_until);
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }

    /// The end of the current pause, if one is in force.
    pub fn paused_until(&self) -> Option<Instant> {
        let mut p = lock(&self.paused_until);
        match *p {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *p = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_keeps_the_sustained_rate() {
        let l = Limiter::new(Some(RateLimit {
            per_second: 100.0,
            burst: 4,
        }));
        let start = std::time::Instant::now();
        for _ in 0..22 {
            l.acquire().await;
        }
        // 2 at once (half the burst), then 20 at 10 ms each: never
        // faster than the quota (how much slower depends on the machine).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
    }

    #[test]
    fn calls_held_up_on_the_way_leave_no_full_burst_behind_them() {
        let start = Instant::now();
        let mut b = Bucket {
            per_second: 1000.0,
            platform_burst: 10.0,
            burst: 5.0,
            tokens: 5.0,
            last: start,
        };
        let burst = |b: &mut Bucket, at: Instant, in_flight: usize| {
            (0..10)
                .take_while(|i| b.take(at, in_flight + i).is_ok())
                .count()
        };
        assert_eq!(burst(&mut b, start, 0), 5, "half the platform's burst");
        // Eight calls stuck for 20 ms (the platform stalled): they reach it
        // together when the stall ends, and only two more fit beside them.
        let later = start + Duration::from_millis(20);
        assert_eq!(burst(&mut b, later, 8), 2);
        // Stuck again, then answered all at once: still only two, not the
        // half burst (the platform just took those eight).
        let stuck = later + Duration::from_millis(20);
        for in_flight in (1..=8).rev() {
            b.refill(stuck, in_flight);
        }
        assert_eq!(burst(&mut b, stuck, 0), 2);
        // Half the burst again once the bucket has refilled.
        let after = stuck + Duration::from_millis(20);
        assert_eq!(burst(&mut b, after, 0), 5);
    }

    #[tokio::test]
    async fn acquire_before_gives_up_when_the_deadline_comes_first() {
        let l = Limiter::new(Some(RateLimit {
            per_second: 0.5,
            burst: 2,
        }));
        let soon = Instant::now() + Duration::from_millis(200);
        assert!(
            l.acquire_before(soon).await,
            "the burst's first cell is free"
        );
        assert!(
            !l.acquire_before(soon).await,
            "the next cell comes in 2 s, after the deadline"
        );
        l.pause_until(Instant::now() + Duration::from_secs(60));
        assert!(
            !l.acquire_before(Instant::now() + Duration::from_secs(5))
                .await
        );
    }

    #[tokio::test]
    async fn a_pause_holds_every_caller() {
        let l = Limiter::new(None);
        l.pause_until(Instant::now() + Duration::from_millis(150));
        let start = std::time::Instant::now();
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(140));
        assert!(l.paused_until().is_none());
    }
}
