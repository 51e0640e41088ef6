//! `[instances.ebay]`: one eBay seller account on the Commerce Message API.

use hourglass_connector::secret::SecretRef;
use serde::Deserialize;

/// eBay's production REST host; the Message API lives under
/// `/commerce/message/v1`.
pub const DEFAULT_API_URL: &str = "https://api.ebay.com";
/// eBay's OAuth token endpoint (production).
pub const DEFAULT_TOKEN_URL: &str = "https://api.ebay.com/identity/v1/oauth2/token";
/// eBay's consent page (production), where the seller signs in and grants
/// the application its scope.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://auth.ebay.com/oauth2/authorize";
/// eBay's default daily call limit per API and application.
pub const DEFAULT_DAILY_CALL_BUDGET: u32 = 5_000;

/// `[instances.ebay]` (DESIGN §6 "Connectors"). The first six keys are a
/// public contract.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbayConfig {
    /// Base URL of eBay's REST APIs; the Message API is called under
    /// `{api_url}/commerce/message/v1`. Point it elsewhere for a proxy or a
    /// mock (sandbox: `https://api.sandbox.ebay.com`).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// eBay's OAuth token endpoint, where the refresh token buys a two-hour
    /// user access token.
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// eBay's consent page, where `hourglass connectors authorize NAME`
    /// (or the admin page's Connect button) sends the seller.
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    /// The RuName (eBay redirect URL name) of the application, needed to
    /// connect the account from hourglass. In the developer console its
    /// "auth accepted URL" must be `{public_url}/oauth/callback` (or the
    /// loopback listener of `connectors authorize NAME --listen`).
    #[serde(default)]
    pub ru_name: Option<String>,
    /// The App ID (client id) of your eBay developer application.
    pub client_id: String,
    /// The Cert ID (client secret) of the application, by reference
    /// (`env:NAME`, `file:/path`, `credential:NAME`).
    pub client_secret: SecretRef,
    /// The seller's user refresh token with the `commerce.message` scope, by
    /// reference. eBay refresh tokens last 18 months; then sign in again
    /// and replace it.
    pub refresh_token: SecretRef,
    /// The marketplace, sent as `X-EBAY-C-MARKETPLACE-ID` (`EBAY_US`,
    /// `EBAY_DE`, `EBAY_GB`, ...) and shown on threads.
    #[serde(default = "default_marketplace")]
    pub marketplace_id: String,
    /// The seller's eBay user ID. Messages from it are the seller's own
    /// (they stop the clock). When absent it is learned from the
    /// conversations: the one user taking part in all of them.
    #[serde(default)]
    pub username: Option<String>,
    /// Mark a conversation read on eBay (`updateConversation`) after
    /// hourglass sent a reply in it.
    #[serde(default)]
    pub mark_read: bool,
    /// Message API calls per day at most (eBay's default limit is 5,000 per
    /// application). Polling pauses when it would leave less than a
    /// twentieth of it for replies.
    #[serde(default = "default_daily_call_budget")]
    pub daily_call_budget: u32,
    /// The first sync reads whole conversations active in the last this
    /// many days, and only the latest message of older ones (a large
    /// account's full history would not fit in the daily call budget).
    /// `0` reads every conversation whole.
    #[serde(default = "default_backfill_days")]
    pub backfill_days: u32,
}

/// Days of history the first sync reads in full by default.
pub const DEFAULT_BACKFILL_DAYS: u32 = 30;

fn default_backfill_days() -> u32 {
    DEFAULT_BACKFILL_DAYS
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_owned()
}
fn default_token_url() -> String {
    DEFAULT_TOKEN_URL.to_owned()
}
fn default_authorize_url() -> String {
    DEFAULT_AUTHORIZE_URL.to_owned()
}
fn default_marketplace() -> String {
    "EBAY_US".to_owned()
}
fn default_daily_call_budget() -> u32 {
    DEFAULT_DAILY_CALL_BUDGET
}

impl EbayConfig {
    /// A config with the defaults and the given credentials.
    pub fn new(client_id: &str, client_secret: SecretRef, refresh_token: SecretRef) -> EbayConfig {
        EbayConfig {
            api_url: default_api_url(),
            token_url: default_token_url(),
            authorize_url: default_authorize_url(),
            ru_name: None,
            client_id: client_id.to_owned(),
            client_secret,
            refresh_token,
            marketplace_id: default_marketplace(),
            username: None,
            mark_read: false,
            daily_call_budget: default_daily_call_budget(),
            backfill_days: default_backfill_days(),
        }
    }

    /// Checks what serde cannot: URLs, an empty client id, a zero budget.
    pub fn validate(&self) -> Result<(), String> {
        for (key, url) in [
            ("api_url", &self.api_url),
            ("token_url", &self.token_url),
            ("authorize_url", &self.authorize_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{key} must be an http(s) URL, not {url:?}"));
            }
        }
        if self.client_id.trim().is_empty() {
            return Err("client_id is empty".to_owned());
        }
        if self.marketplace_id.trim().is_empty() {
            return Err("marketplace_id is empty".to_owned());
        }
        if self.daily_call_budget < 100 {
            return Err(format!(
                "daily_call_budget = {} leaves nothing to poll with (eBay's default is {DEFAULT_DAILY_CALL_BUDGET})",
                self.daily_call_budget
            ));
        }
        Ok(())
    }
}
