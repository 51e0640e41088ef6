//! How a platform crate plugs into the daemon: one [`Platform`] value per
//! `type = "..."`, listed once in the daemon's registry (src/registry.rs).
//!
//! A platform owns everything that is specific to it: the keys of its
//! config tables (`[instances.imap]`, `[instances.ebay]`, ...) as a serde
//! type with its own checks, its published send quota, and the constructor
//! of its connector. The daemon owns the keys every instance shares
//! (`name`, `type`, `schedule`, `enabled`, `window`, `business_hours`,
//! `tags`, `rate_limit`) and hands a platform the rest of the instance's
//! table.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::secret::SecretRef;
use crate::Connector;

/// How fast hourglass may call a platform: `per_second` sustained, `burst`
/// at once after a quiet period. In config: `rate_limit = { per_second =
/// 1.0, burst = 5 }`.
///
/// The sustained rate is used in full; of `burst`, hourglass spends at most
/// half at once and keeps the rest as slack, so that network jitter can
/// never push a request over the platform's own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRateLimit")]
pub struct RateLimit {
    /// Sustained calls per second; fractions allowed (`1.2` = 72 a minute).
    pub per_second: f64,
    /// Calls the platform accepts at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    /// A quota of `n` calls per `window_secs` as a token bucket that can
    /// never exceed it: with `burst` calls allowed at once, the sustained
    /// rate is `(n - burst) / window`, so any window holds at most `n`.
    pub const fn per_window(n: u32, window_secs: f64, burst: u32) -> RateLimit {
        let sustained = if n > burst { n - burst } else { 1 };
        RateLimit {
            per_second: sustained as f64 / window_secs,
            burst,
        }
    }
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

impl TryFrom<RawRateLimit> for RateLimit {
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
        Ok(RateLimit {
            per_second: raw.per_second,
            burst: raw.burst,
        })
    }
}

/// A problem in a platform's part of an instance's config. `path` is the
/// dotted key it concerns inside the instance (`imap.port`, `ebay`), empty
/// for the instance as a whole; the daemon turns it into `FILE:LINE:COL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsProblem {
    pub path: String,
    pub message: String,
}

impl SettingsProblem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        SettingsProblem {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The instance lacks a table its type needs.
    pub fn missing_table(kind: &str, table: &str) -> Self {
        SettingsProblem::new(
            "",
            format!("an instance of type {kind} needs an [instances.{table}] table"),
        )
    }
}

impl fmt::Display for SettingsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The parsed, platform-specific settings of one instance.
pub trait InstanceSettings: fmt::Debug + Send + Sync + 'static {
    /// The channel threads of this instance belong to: clock policies and
    /// alert routing use it. Usually the type itself.
    fn channel(&self, kind: &str) -> String {
        kind.to_owned()
    }

    /// Checks that serde cannot express (a table one type needs, two that
    /// exclude each other). Secrets are resolved by the daemon through
    /// [`InstanceSettings::secrets`].
    fn check(&self, _kind: &str) -> Vec<SettingsProblem> {
        Vec::new()
    }

    /// Every secret reference, with the dotted key it sits at, so that
    /// `check-config` can tell that each one resolves.
    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        Vec::new()
    }

    /// The platform's published quota for sending replies (DESIGN §9);
    /// `None`: no limit. An instance's `rate_limit` overrides it.
    fn send_quota(&self) -> Option<RateLimit>;

    /// A limit per conversation on top of the instance's, where the
    /// platform has one (Telegram: about one message per second per chat).
    fn per_thread_quota(&self) -> Option<RateLimit> {
        None
    }

    /// Refuses, before it is queued, a reply the platform would refuse
    /// whatever happens (too long, a link where links are forbidden), with
    /// the reason in words for the agent.
    fn check_reply(&self, _text: &str) -> Result<(), String> {
        Ok(())
    }

    /// The schedule when the instance names none (a platform that bills
    /// each read polls less often); `None`: the daemon's default.
    fn default_schedule(&self) -> Option<&'static str> {
        None
    }

    /// The platform rotates a credential that hourglass must keep (X's
    /// refresh token): the instance needs `[store] secret_key`.
    fn keeps_secrets(&self) -> bool {
        false
    }

    /// The messages a reply is sent as, in order: one, unless the seller
    /// allowed the platform's length limit to be met by splitting
    /// (Telegram's `split_long`). Each part becomes its own outbox entry,
    /// so a crash never sends a part twice.
    fn split_reply(&self, text: &str) -> Vec<String> {
        vec![text.to_owned()]
    }

    /// Refuses, before it is queued, a reply to a conversation whose
    /// platform reply window (DESIGN §3: `reply_window_closes_at`, the
    /// end of the free 24 h after the customer's last message) closed at
    /// `closes_at`. `template` is the reply's template name, if any. The
    /// default refuses every reply after the window; a platform with a
    /// way past it (Messenger's `HUMAN_AGENT` tag, a WhatsApp template)
    /// says when that way applies.
    fn check_reply_window(
        &self,
        kind: &str,
        closes_at: DateTime<Utc>,
        now: DateTime<Utc>,
        _template: Option<&str>,
    ) -> Result<(), String> {
        if closes_at <= now {
            return Err(window_closed(kind, closes_at));
        }
        Ok(())
    }

    /// The platform's OAuth consent flow for this instance (`connectors
    /// authorize NAME`, the admin page's Connect button); `None` for a
    /// platform whose credentials are pasted, not granted. An `Err` says
    /// which key the flow needs.
    fn consent(
        &self,
        _kind: &str,
        _instance: &str,
    ) -> Option<Result<Box<dyn crate::oauth::Consent>, String>> {
        None
    }

    /// The connector of the instance named `instance`. Errors never carry
    /// a secret.
    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String>;
}

/// The reason a reply after the platform's reply window is refused.
pub fn window_closed(channel: &str, closes_at: DateTime<Utc>) -> String {
    format!(
        "the platform's reply window closed at {}: {channel} no longer accepts a free reply in this conversation",
        closes_at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// One `type = "..."` that config may name.
pub trait Platform: Sync {
    /// The `type` value.
    fn kind(&self) -> &'static str;

    /// Reads the platform's keys: the instance's table without the keys
    /// every instance shares.
    fn parse(&self, table: toml::Table) -> Result<Arc<dyn InstanceSettings>, SettingsProblem>;
}

/// The usual [`Platform`]: settings type `S` read with serde. Each
/// platform crate exposes one as a `static`:
/// `pub static EBAY: PlatformOf<EbaySettings> = PlatformOf::new("ebay");`
pub struct PlatformOf<S> {
    kind: &'static str,
    settings: PhantomData<fn() -> S>,
}

impl<S> PlatformOf<S> {
    pub const fn new(kind: &'static str) -> Self {
        PlatformOf {
            kind,
            settings: PhantomData,
        }
    }
}

impl<S: InstanceSettings + DeserializeOwned> Platform for PlatformOf<S> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn parse(&self, table: toml::Table) -> Result<Arc<dyn InstanceSettings>, SettingsProblem> {
        let value = toml::Value::Table(table);
        match serde_path_to_error::deserialize::<_, S>(value) {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) => {
                let mut path = e.path().to_string();
                let message = e.into_inner().to_string();
                // An unknown key is reported at the table that holds it.
                if let Some(field) = message
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    if path == field {
                        path.clear();
                    } else if let Some(parent) = path.strip_suffix(&format!(".{field}")) {
                        path = parent.to_owned();
                    }
                }
                if path == "." {
                    path.clear();
                }
                Err(SettingsProblem::new(path, message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        rate_limit: RateLimit,
    }

    #[test]
    fn rate_limit_parses_and_rejects_nonsense() {
        let h: Holder = toml::from_str("rate_limit = { per_second = 1.2, burst = 3 }").unwrap();
        assert_eq!(
            h.rate_limit,
            RateLimit {
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
    fn windowed_quotas_never_exceed_the_published_limit() {
        // Any window of the platform's length holds at most burst + rate * window.
        for (n, window, burst) in [(75, 60.0, 3), (300, 1.0, 10), (80, 1.0, 5), (200, 900.0, 2)] {
            let c = RateLimit::per_window(n, window, burst);
            let most = f64::from(c.burst) + c.per_second * window;
            assert!(most <= f64::from(n) + 1e-9, "{n}/{window}: {most}");
            assert!(
                most >= f64::from(n) * 0.95,
                "{n}/{window}: {most} wastes it"
            );
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Toy {
        #[allow(dead_code)]
        toy: ToyTable,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ToyTable {
        #[allow(dead_code)]
        port: u16,
    }
    impl InstanceSettings for Toy {
        fn send_quota(&self) -> Option<RateLimit> {
            None
        }
        fn build(&self, _: &str, _: &str) -> Result<Arc<dyn Connector>, String> {
            Err("a toy".into())
        }
    }

    #[test]
    fn parse_errors_name_the_key() {
        static TOY: PlatformOf<Toy> = PlatformOf::new("toy");
        let table: toml::Table = toml::from_str("[toy]\nport = \"x\"\n").unwrap();
        let e = TOY.parse(table).unwrap_err();
        assert_eq!(e.path, "toy.port");
        let table: toml::Table = toml::from_str("colour = 1\n[toy]\nport = 1\n").unwrap();
        let e = TOY.parse(table).unwrap_err();
        assert_eq!(e.path, "");
        assert!(e.message.contains("colour"), "{e}");
        let table: toml::Table = toml::from_str("[toy]\nport = 993\n").unwrap();
        assert!(TOY.parse(table).is_ok());
    }
}
