//! Rate limiting with governor, for the daemon's outbox and for any
//! connector that paces its own calls (SP-API order lookups): a token
//! bucket at the platform's quota plus a pause that `Retry-After` (or a
//! 429 without one) sets.

use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
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

/// One bucket: a governor limiter plus a pause that `Retry-After` sets.
pub struct Limiter {
    config: Option<RateLimit>,
    bucket: Option<DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
    /// Callers of [`Limiter::acquire`] wait for the bucket one at a time,
    /// in order: one wake-up per cell, not one per waiter per cell.
    turn: tokio::sync::Mutex<()>,
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
        let bucket = config.and_then(governor_quota).map(RateLimiter::direct);
        Limiter {
            config,
            bucket,
            paused_until: Mutex::new(None),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured limit.
    pub fn config(&self) -> Option<RateLimit> {
        self.config
    }

    /// Waits until a call may be made, and takes its cell.
    pub async fn acquire(&self) {
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
            if let Some(bucket) = &self.bucket {
                if let Err(not_until) = bucket.check() {
                    let wait = not_until.wait_time_from(bucket.clock().now());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            // A pause may have begun while we waited for the cell: the
            // platform said stop, so the cell is not used.
            if self.paused_until().is_none() {
                return;
            }
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
            let Some(bucket) = &self.bucket else {
                return true;
            };
            match bucket.check() {
                Ok(()) => return true,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(bucket.clock().now());
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
