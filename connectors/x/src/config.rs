//! `[instances.x]`: the keys of DESIGN §6 "Connectors", a public contract.

use std::sync::Arc;

use hourglass_connector::platform::{InstanceSettings, RateLimit, SettingsProblem};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::Connector;
use serde::Deserialize;

use crate::XConnector;

/// X's limit on `POST /2/dm_conversations/{id}/messages`: 15 requests per
/// 15 minutes per user. One at once, then 14 spread over the window, so no
/// window ever holds more than 15. The `x-rate-limit-*` headers of each
/// answer are honoured on top.
pub const SEND_QUOTA: RateLimit = RateLimit::per_window(15, 900.0, 1);

/// Reads cost money on X's pay-per-use plan: every five minutes, not two.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

/// The keys of an `x` instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XSettings {
    /// `[instances.x]`: the account (required).
    #[serde(default)]
    pub x: Option<XConfig>,
}

/// `[instances.x]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XConfig {
    /// X API base URL; direct messages are under `/2/dm_events` and
    /// `/2/dm_conversations`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The OAuth 2.0 token endpoint.
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// X's consent page, where `hourglass connectors authorize NAME` (or
    /// the admin page's Connect button) sends the seller.
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    /// The app's OAuth 2.0 client id.
    pub client_id: String,
    /// The client secret of a confidential client, by reference; absent
    /// for a public client.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// A user access token (scopes `dm.read dm.write tweet.read
    /// users.read offline.access`), by reference; optional, it is renewed
    /// with the refresh token when absent or expired.
    #[serde(default)]
    pub access_token: Option<SecretRef>,
    /// The user refresh token, by reference. X replaces it on every use:
    /// the new one is kept in the store, sealed with `[store] secret_key`,
    /// and used instead of this one until this one changes.
    pub refresh_token: SecretRef,
    /// The seller's X user id; asked once from `/2/users/me` when absent.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Direct-message events read per UTC day at most (X bills each one).
    /// Polling stops for the day when it is reached, and the admin is told
    /// at 80 % and at 100 %.
    #[serde(default = "default_daily_read_budget")]
    pub daily_read_budget: u32,
    /// Events asked for per page (1 to 100); never more than the budget
    /// has left.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_api_url() -> String {
    "https://api.x.com".into()
}

fn default_token_url() -> String {
    "https://api.x.com/2/oauth2/token".into()
}

fn default_authorize_url() -> String {
    "https://x.com/i/oauth2/authorize".into()
}

fn default_daily_read_budget() -> u32 {
    500
}

fn default_page_size() -> u32 {
    50
}

fn check_url(out: &mut Vec<SettingsProblem>, key: &str, url: &str) {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        out.push(SettingsProblem::new(
            format!("x.{key}"),
            format!("{key} must start with https:// or http://, not {url:?}"),
        ));
    }
}

impl InstanceSettings for XSettings {
    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        let Some(x) = &self.x else {
            return vec![SettingsProblem::missing_table(kind, "x")];
        };
        let mut out = Vec::new();
        check_url(&mut out, "api_url", &x.api_url);
        check_url(&mut out, "token_url", &x.token_url);
        check_url(&mut out, "authorize_url", &x.authorize_url);
        if x.client_id.trim().is_empty() {
            out.push(SettingsProblem::new(
                "x.client_id",
                "client_id is the app's OAuth 2.0 client id and cannot be empty",
            ));
        }
        if x.daily_read_budget == 0 {
            out.push(SettingsProblem::new(
                "x.daily_read_budget",
                "daily_read_budget must be at least 1 (events read per day)",
            ));
        }
        if !(1..=100).contains(&x.page_size) {
            out.push(SettingsProblem::new(
                "x.page_size",
                format!("page_size must be between 1 and 100, not {}", x.page_size),
            ));
        }
        if let Some(id) = &x.user_id {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
                out.push(SettingsProblem::new(
                    "x.user_id",
                    format!("user_id is the numeric X user id, not {id:?}"),
                ));
            }
        }
        out
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        let mut out = Vec::new();
        if let Some(x) = &self.x {
            out.push(("x.refresh_token", &x.refresh_token));
            if let Some(s) = &x.client_secret {
                out.push(("x.client_secret", s));
            }
            if let Some(s) = &x.access_token {
                out.push(("x.access_token", s));
            }
        }
        out
    }

    fn send_quota(&self) -> Option<RateLimit> {
        Some(SEND_QUOTA)
    }

    /// Over 10,000 characters is refused before it is queued.
    fn check_reply(&self, text: &str) -> Result<(), String> {
        crate::check_text(text)
    }

    fn keeps_secrets(&self) -> bool {
        true
    }

    fn default_schedule(&self) -> Option<&'static str> {
        Some(DEFAULT_SCHEDULE)
    }

    fn consent(
        &self,
        kind: &str,
        _instance: &str,
    ) -> Option<Result<Box<dyn hourglass_connector::oauth::Consent>, String>> {
        Some(match &self.x {
            Some(x) => Ok(Box::new(crate::consent::XConsent::new(x))
                as Box<dyn hourglass_connector::oauth::Consent>),
            None => Err(SettingsProblem::missing_table(kind, "x").message),
        })
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let config = self
            .x
            .clone()
            .ok_or_else(|| SettingsProblem::missing_table(kind, "x").message)?;
        XConnector::new(instance, config).map(|c| Arc::new(c) as Arc<dyn Connector>)
    }
}
