//! Rate limits for the calls hourglass makes to a platform, one bucket per
//! instance and operation (`send`, `check`), with the platform's published
//! quotas as defaults and `Retry-After` honoured by pausing the bucket.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::config::RateLimitConfig;
use crate::config::InstanceType;

/// A quota of `n` calls per `window` expressed as a token bucket that can
/// never exceed it: with `burst` calls allowed at once, the sustained rate
/// is `(n - burst) / window`, so that any window holds at most `n` calls.
fn per_window(n: u32, window_secs: f64, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        per_second: f64::from(n.saturating_sub(burst).max(1)) / window_secs,
        burst,
    }
}

/// The published sending quota of each platform (sources in
/// ../shared/specs/README.md and DESIGN §9). `None`: no limit.
pub fn default_rate_limit(kind: InstanceType) -> Option<RateLimitConfig> {
    Some(match kind {
        // SP-API Messaging: 1 request/s with a burst of 5 per operation
        // (the "Usage Plan" table of the Messaging API reference); 429
        // QuotaExceeded comes without Retry-After.
        InstanceType::Amazon => RateLimitConfig {
            per_second: 1.0,
            burst: 5,
        },
        // Trading API AddMemberMessage*: at most 75 calls per 60 s per
        // seller, then blocked for 100 s (eBay developer docs, "Member
        // messages" call limits).
        InstanceType::Ebay => per_window(75, 60.0, 3),
        // Messenger Send API: 300 calls per second per Page (Meta, "Send
        // API" rate limits).
        InstanceType::Messenger => per_window(300, 1.0, 10),
        // Instagram Messaging: 100 calls per second per professional
        // account for text, links, reactions and stickers (Meta, Instagram
        // Messaging API rate limits).
        InstanceType::Instagram => per_window(100, 1.0, 5),
        // WhatsApp Cloud API: 80 messages per second per business phone
        // number by default (error 130429 beyond it).
        InstanceType::Whatsapp => per_window(80, 1.0, 5),
        // Bot API FAQ: about 1 message per second per chat and no more
        // than 30 messages per second overall; 429 carries retry_after.
        InstanceType::Telegram => per_window(30, 1.0, 3),
        // X API v2, POST /2/dm_conversations/with/:id/messages: 200
        // requests per 15 minutes per user (also 1,000 per 24 h).
        InstanceType::X => per_window(200, 900.0, 2),
        // SMTP has no published quota; mail providers throttle senders that
        // burst. A conservative 5 messages/s keeps us clear of that.
        InstanceType::Email | InstanceType::Maildir => RateLimitConfig {
            per_second: 5.0,
            burst: 5,
        },
        // The in-memory simulation has no limit; one with an `api_url` is
        // given its mock's quota in config.
        InstanceType::Simulated => return None,
    })
}

/// A per-conversation limit on top of the instance's, where the platform
/// has one: Telegram answers more than about one message per second to one
/// chat with 429 (Bot API FAQ), and waiting out its `retry_after` would
/// stall every other chat of the bot.
pub fn per_thread_limiter(kind: InstanceType) -> Option<DefaultKeyedRateLimiter<i64>> {
    match kind {
        InstanceType::Telegram => Some(RateLimiter::keyed(Quota::per_second(NonZeroU32::MIN))),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is a plain value; a panic elsewhere cannot break it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One bucket: a governor limiter plus a pause that `Retry-After` sets.
pub struct Limiter {
    config: Option<RateLimitConfig>,
    bucket: Option<DefaultDirectRateLimiter>,
    paused_until: Mutex<Option<Instant>>,
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
    pub fn new(config: Option<RateLimitConfig>) -> Limiter {
        let bucket = config.and_then(|c| {
            let period = Duration::from_secs_f64(1.0 / c.per_second);
            // Spend at most half the platform's burst at once: the other half
            // absorbs requests that the network delivers closer together
            // than we sent them. The sustained rate is the platform's.
            let burst = NonZeroU32::new(c.burst.div_ceil(2)).unwrap_or(NonZeroU32::MIN);
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
        });
        Limiter {
            config,
            bucket,
            paused_until: Mutex::new(None),
        }
    }

    /// The configured limit.
    pub fn config(&self) -> Option<RateLimitConfig> {
        self.config
    }

    /// Waits until a call may be made, and takes its cell.
    pub async fn acquire(&self) {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if let Some(bucket) = &self.bucket {
                bucket.until_ready().await;
            }
            // A pause may have begun while we waited for the cell: the
            // platform said stop, so the cell is not used.
            if self.paused_until().is_none() {
                return;
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

type Registry = Mutex<HashMap<(String, &'static str), Arc<Limiter>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The limiter of one instance and operation. It outlives a reload (SIGHUP)
/// as long as its limit is unchanged, so a reload neither grants a fresh
/// burst nor forgets a pause the platform asked for.
pub fn limiter_for(
    instance: &str,
    op: &'static str,
    config: Option<RateLimitConfig>,
) -> Arc<Limiter> {
    let mut reg = lock(registry());
    let key = (instance.to_owned(), op);
    match reg.get(&key) {
        Some(l) if l.config() == config => l.clone(),
        _ => {
            let l = Arc::new(Limiter::new(config));
            reg.insert(key, l.clone());
            l
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_defaults_never_exceed_the_published_quota() {
        // Any window of the platform's length holds at most burst + rate * window.
        let cases = [
            (InstanceType::Ebay, 75.0, 60.0),
            (InstanceType::Messenger, 300.0, 1.0),
            (InstanceType::Whatsapp, 80.0, 1.0),
            (InstanceType::Telegram, 30.0, 1.0),
            (InstanceType::X, 200.0, 900.0),
        ];
        for (kind, n, window) in cases {
            let c = default_rate_limit(kind).unwrap();
            let most = f64::from(c.burst) + c.per_second * window;
            assert!(most <= n + 1e-9, "{kind}: {most} > {n}");
            assert!(most >= n * 0.95, "{kind}: {most} wastes the quota");
        }
        let amazon = default_rate_limit(InstanceType::Amazon).unwrap();
        assert_eq!((amazon.per_second, amazon.burst), (1.0, 5));
        assert!(default_rate_limit(InstanceType::Simulated).is_none());
    }

    #[tokio::test]
    async fn limiter_keeps_the_sustained_rate() {
        let l = Limiter::new(Some(RateLimitConfig {
            per_second: 100.0,
            burst: 4,
        }));
        let start = std::time::Instant::now();
        for _ in 0..22 {
            l.acquire().await;
        }
        // 2 at once (half the burst), then 20 at 10 ms each.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
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

    #[test]
    fn telegram_chats_get_one_message_a_second_each() {
        let l = per_thread_limiter(InstanceType::Telegram).unwrap();
        assert!(l.check_key(&1).is_ok());
        assert!(
            l.check_key(&1).is_err(),
            "a second message to the same chat waits"
        );
        assert!(l.check_key(&2).is_ok(), "other chats do not");
        assert!(per_thread_limiter(InstanceType::Amazon).is_none());
    }

    #[test]
    fn the_registry_keeps_a_limiter_across_reloads_unless_its_limit_changes() {
        let c = Some(RateLimitConfig {
            per_second: 1.0,
            burst: 1,
        });
        let a = limiter_for("reg-test", "send", c);
        let b = limiter_for("reg-test", "send", c);
        assert!(Arc::ptr_eq(&a, &b));
        let other = limiter_for("reg-test", "check", c);
        assert!(!Arc::ptr_eq(&a, &other));
        let changed = limiter_for(
            "reg-test",
            "send",
            Some(RateLimitConfig {
                per_second: 2.0,
                burst: 1,
            }),
        );
        assert!(!Arc::ptr_eq(&a, &changed));
    }
}
