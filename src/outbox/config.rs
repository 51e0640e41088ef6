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
/// published quota applies (its crate's [`hourglass_connector::InstanceSettings::send_quota`]).
pub use hourglass_connector::RateLimit as RateLimitConfig;

#[cfg(test)]
mod tests {
    use super::*;

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
