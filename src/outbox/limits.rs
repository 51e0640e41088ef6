//! The outbox's rate limits: one [`Limiter`] per instance and operation
//! (`send`, `check`), with the platform's published quota as default
//! (its crate's `send_quota`), kept across reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use governor::{DefaultKeyedRateLimiter, RateLimiter};
use hourglass_connector::limit::governor_quota;
pub use hourglass_connector::limit::Limiter;

use super::config::RateLimitConfig;

/// A per-conversation limiter for `quota`, where the platform has one:
/// Telegram answers more than about one message per second to one chat
/// with 429 (Bot API FAQ), and waiting out its `retry_after` would stall
/// every other chat of the bot.
pub fn per_thread_limiter(quota: Option<RateLimitConfig>) -> Option<DefaultKeyedRateLimiter<i64>> {
    quota.and_then(|q| governor_quota(q).map(RateLimiter::keyed))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is a plain map; a panic elsewhere cannot break it.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    fn telegram_chats_get_one_message_a_second_each() {
        let l = per_thread_limiter(Some(RateLimitConfig {
            per_second: 1.0,
            burst: 1,
        }))
        .unwrap();
        assert!(l.check_key(&1).is_ok());
        assert!(
            l.check_key(&1).is_err(),
            "a second message to the same chat waits"
        );
        assert!(l.check_key(&2).is_ok(), "other chats do not");
        assert!(per_thread_limiter(None).is_none());
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
