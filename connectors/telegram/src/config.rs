//! `[instances.telegram]`: the keys of DESIGN §6 "Connectors", a public
//! contract.

use std::sync::Arc;

use hourglass_connector::platform::{InstanceSettings, RateLimit, SettingsProblem};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::Connector;
use serde::Deserialize;

use crate::TelegramConnector;

/// Bot API FAQ: "no more than 30 messages per second" overall. Three at
/// once, 27/s sustained: no second ever holds more than 30.
pub const SEND_QUOTA: RateLimit = RateLimit::per_window(30, 1.0, 3);

/// Bot API FAQ: "avoid sending more than one message per second" to one
/// chat; more is answered 429.
pub const PER_CHAT_QUOTA: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 1,
};

/// The keys of a `telegram` instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramSettings {
    /// `[instances.telegram]`: the bot (required).
    #[serde(default)]
    pub telegram: Option<TelegramConfig>,
}

/// How updates reach hourglass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `getUpdates` long polling (the default).
    #[default]
    Poll,
    /// Telegram POSTs updates to `/webhooks/{instance}`.
    Webhook,
}

/// `[instances.telegram]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// Bot API base URL; methods are at `{api_url}/bot{token}/{method}`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The token @BotFather gave, by reference (`env:`, `file:`,
    /// `credential:`).
    pub bot_token: SecretRef,
    /// `poll` (getUpdates long polling) or `webhook`.
    #[serde(default)]
    pub mode: Mode,
    /// Webhook mode: the secret Telegram sends in
    /// `X-Telegram-Bot-Api-Secret-Token`, by reference.
    #[serde(default)]
    pub webhook_secret: Option<SecretRef>,
    /// Seconds one `getUpdates` long poll waits for an update (1 to 50).
    #[serde(default = "default_long_poll_secs")]
    pub long_poll_secs: u64,
    /// A reply over 4,096 characters is sent as several messages, cut at
    /// paragraph, line or word boundaries, in order. Off: such a reply is
    /// refused before it is queued.
    #[serde(default)]
    pub split_long: bool,
}

fn default_api_url() -> String {
    "https://api.telegram.org".into()
}

fn default_long_poll_secs() -> u64 {
    25
}

impl InstanceSettings for TelegramSettings {
    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        let Some(t) = &self.telegram else {
            return vec![SettingsProblem::missing_table(kind, "telegram")];
        };
        let mut out = Vec::new();
        if t.mode == Mode::Webhook && t.webhook_secret.is_none() {
            out.push(SettingsProblem::new(
                "telegram.mode",
                "mode = \"webhook\" needs webhook_secret (by reference): Telegram sends it in X-Telegram-Bot-Api-Secret-Token and unsigned deliveries are refused",
            ));
        }
        if !(1..=50).contains(&t.long_poll_secs) {
            out.push(SettingsProblem::new(
                "telegram.long_poll_secs",
                format!(
                    "long_poll_secs must be between 1 and 50, not {}",
                    t.long_poll_secs
                ),
            ));
        }
        if !(t.api_url.starts_with("https://") || t.api_url.starts_with("http://")) {
            out.push(SettingsProblem::new(
                "telegram.api_url",
                format!(
                    "api_url must start with https:// or http://, not {:?}",
                    t.api_url
                ),
            ));
        }
        out
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        let mut out = Vec::new();
        if let Some(t) = &self.telegram {
            out.push(("telegram.bot_token", &t.bot_token));
            if let Some(s) = &t.webhook_secret {
                out.push(("telegram.webhook_secret", s));
            }
        }
        out
    }

    /// Over 4,096 characters is refused before it is queued, unless
    /// `split_long` allows sending it in parts.
    fn check_reply(&self, text: &str) -> Result<(), String> {
        if self.telegram.as_ref().is_some_and(|t| t.split_long) {
            if text.trim().is_empty() {
                return Err("Telegram cannot send an empty message".into());
            }
            let parts = crate::split_text(text, crate::MAX_TEXT).len();
            if parts > crate::MAX_PARTS {
                return Err(format!(
                    "the reply would take {parts} Telegram messages; at most {} are sent for one reply",
                    crate::MAX_PARTS
                ));
            }
            return Ok(());
        }
        crate::check_text(text)
    }

    fn split_reply(&self, text: &str) -> Vec<String> {
        match &self.telegram {
            Some(t) if t.split_long => crate::split_text(text, crate::MAX_TEXT),
            _ => vec![text.to_owned()],
        }
    }

    fn send_quota(&self) -> Option<RateLimit> {
        Some(SEND_QUOTA)
    }

    fn per_thread_quota(&self) -> Option<RateLimit> {
        Some(PER_CHAT_QUOTA)
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let config = self
            .telegram
            .clone()
            .ok_or_else(|| SettingsProblem::missing_table(kind, "telegram").message)?;
        TelegramConnector::new(instance, config).map(|c| Arc::new(c) as Arc<dyn Connector>)
    }
}
