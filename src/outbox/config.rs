//! `[outbox]` and the per-instance `rate_limit`.

use serde::Deserialize;

use crate::duration::Dur;

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// How long a claimed reply is reserved for the daemon sending it. A
    /// daemon that dies mid-send leaves the reply in `sending`; once the
    /// lease has run out, the reply is looked up on the platform and resent
    /// only if the platform says it never arrived (else it is marked
    /// `uncertain` for a human). At least 1s.
    #[serde(default = "default_lease")]
    pub lease: Dur,
    /// How often the outbox is looked at for replies queued by another
    /// process (the CLI). Replies queued inside the daemon wake it at once.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// Attempts before a reply that keeps failing transiently (network,
    /// 5xx) is marked `failed`. Rate-limit answers are not counted as
    /// failures.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Replies of one instance in flight at once (to different threads;
    /// the replies of one thread always go out in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_lease() -> Dur {
    Dur::from_secs(60)
}
fn default_poll_interval() -> Dur {
    Dur::from_secs(1)
}
fn default_max_attempts() -> u32 {
    8
}
fn default_concurrency() -> usize {
    8
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            lease: default_lease(),
            poll_interval: default_poll_interval(),
            max_attempts: default_max_attempts(),
            concurrency: default_concurrency(),
        }
    }
}

/// `rate_limit = { per_second = 1.0, burst = 5 }` on an instance: how fast
/// hourglass may call the platform to send. Without it, the platform's
/// published quota applies (see [`crate::outbox::default_rate_limit`]).
///
/// The sustained rate is used in full; of `burst`, hourglass spends at most
/// half at once and keeps the rest as slack, so that network jitter can
/// never push a request over the platform's own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRateLimit")]
pub struct RateLimitConfig {
    /// Sustained calls per second; fractions allowed (`1.2` = 72 a minute).
    pub per_second: f64,
    /// Calls the platform accepts at once after a quiet period.
    pub burst: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: f64,
    #[serde(default = "default_burst")]
    burst: u32,
}

fn default_burst() -> u32 {
    1
}

impl TryFrom<RawRateLimit> for RateLimitConfig {
    type Error = String;

    fn try_from(raw: RawRateLimit) -> Result<Self, String> {
        if !raw.per_second.is_finite() || raw.per_second <= 0.0 || raw.per_second > 1_000_000.0 {
            return Err(format!(
                "rate_limit.per_second must be above 0 and at most 1000000, not {}",
                raw.per_second
            ));
        }
        if raw.burst == 0 {
            return Err("rate_limit.burst must be at least 1".into());
        }
        Ok(RateLimitConfig {
            per_second: raw.per_second,
            burst: raw.burst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        rate_limit: RateLimitConfig,
    }

    #[test]
    fn rate_limit_parses_and_rejects_nonsense() {
        let h: Holder = toml::from_str("rate_limit = { per_second = 1.2, burst = 3 }").unwrap();
        assert_eq!(
            h.rate_limit,
            RateLimitConfig {
                per_second: 1.2,
                burst: 3
            }
        );
        let h: Holder = toml::from_str("rate_limit = { per_second = 5.0 }").unwrap();
        assert_eq!(h.rate_limit.burst, 1);
        for bad in [
            "rate_limit = { per_second = 0.0 }",
            "rate_limit = { per_second = -1.0 }",
            "rate_limit = { per_second = 1.0, burst = 0 }",
            "rate_limit = { per_second = 1.0, bust = 2 }",
        ] {
            assert!(toml::from_str::<Holder>(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn outbox_section_defaults() {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default)]
            outbox: OutboxConfig,
        }
        let t: Top = toml::from_str("[outbox]\nlease = \"2s\"\n").unwrap();
        assert_eq!(t.outbox.lease, Dur::from_secs(2));
        assert_eq!(t.outbox.poll_interval, Dur::from_secs(1));
        assert!(toml::from_str::<Top>("[outbox]\nleese = \"2s\"\n").is_err());
    }
}
