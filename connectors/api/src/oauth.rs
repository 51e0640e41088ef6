//! The per-platform half of the OAuth consent flows (`connectors
//! authorize NAME`, the admin page's Connect button).
//!
//! The daemon owns the flow: the `state` and the PKCE verifier kept on the
//! server side with an expiry and used once, the listener that receives the
//! redirect, and where the token is kept (the `file:` its reference names,
//! written 0600, or the store sealed with `[store] secret_key`). A platform
//! only says how its consent URL looks ([`Consent::authorize_url`]) and how
//! a code becomes a token ([`Consent::exchange`]), including its own
//! follow-up steps (Meta's Page pick and webhook subscription).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::secret::SecretRef;
use crate::ConnectorError;

/// The vault entry of a token obtained by a consent flow when its
/// reference is not a `file:`. Connectors prefer it over the configured
/// reference: it is newer than anything the admin could have pasted.
pub const VAULT_AUTHORIZED: &str = "authorized_token";

/// What goes into the consent URL.
#[derive(Debug, Clone)]
pub struct ConsentRequest<'a> {
    /// Where the platform sends the browser back
    /// (`{public_url}/oauth/callback` or the loopback listener).
    pub callback: &'a str,
    /// The single-use value the callback must bring back.
    pub state: &'a str,
    /// `BASE64URL(SHA-256(verifier))`, for platforms with PKCE (S256).
    pub code_challenge: &'a str,
}

/// What the callback brought, for the token exchange.
#[derive(Debug, Clone)]
pub struct CodeExchange<'a> {
    pub code: &'a str,
    /// The same callback as in the consent URL.
    pub callback: &'a str,
    /// The PKCE verifier of this flow.
    pub code_verifier: &'a str,
    /// The account the redirect named, where the platform adds one
    /// (Amazon's `selling_partner_id`).
    pub account: Option<&'a str>,
}

/// The outcome of a flow: the token to keep and what to tell the admin.
/// `Debug` never shows the token.
pub struct Grant {
    /// The config key of the reference the token belongs to
    /// (`ebay.refresh_token`, `meta.access_token`).
    pub key: &'static str,
    /// That reference: a `file:` is written, anything else goes to the
    /// store sealed.
    pub target: SecretRef,
    pub token: SecretString,
    /// The scopes the platform says it granted.
    pub scopes: Vec<String>,
    /// The account that consented (a user name, a Page name).
    pub account: Option<String>,
    /// When the kept token stops working, when the platform says so.
    pub expires_at: Option<DateTime<Utc>>,
    /// Further steps done, in words (`Page subscribed to the app's webhooks`).
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("key", &self.key)
            .field("target", &self.target)
            .field("scopes", &self.scopes)
            .field("account", &self.account)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The HTTP client a consent flow exchanges its code with: one request
/// or three, each given 30 s.
pub fn consent_client() -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| ConnectorError::Other(format!("HTTP client: {e}")))
}

/// One platform's consent flow, for one instance.
#[async_trait]
pub trait Consent: Send + Sync {
    /// The platform's name for the admin ("eBay").
    fn platform(&self) -> &'static str;

    /// Whether the connector reads a token kept in the store (the vault,
    /// under [`VAULT_AUTHORIZED`]) when its reference is not a `file:`.
    /// When false, the flow is refused up front for such a reference,
    /// with the key to point at a file instead.
    fn reads_stored_token(&self) -> bool {
        true
    }

    /// The config key the granted token belongs to and its reference,
    /// known before the flow starts (to refuse a flow whose token could
    /// not be kept).
    fn target(&self) -> (&'static str, &SecretRef);

    /// The URL the admin opens in a browser signed in as the seller.
    fn authorize_url(&self, request: &ConsentRequest<'_>) -> Result<String, String>;

    /// Turns the code into the token to keep. A refused code (replayed,
    /// expired, for another redirect) is [`ConnectorError::Auth`] saying
    /// so; the message never carries a secret.
    async fn exchange(&self, exchange: &CodeExchange<'_>) -> Result<Grant, ConnectorError>;
}

/// The form of a redirect URL with its query, percent-encoded.
pub fn url_with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
        sep = '&';
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            url_with_query(
                "https://a.example/authorize",
                &[("scope", "dm.read dm.write"), ("redirect_uri", "http://h/cb?x=1")]
            ),
            "https://a.example/authorize?scope=dm.read%20dm.write&redirect_uri=http%3A%2F%2Fh%2Fcb%3Fx%3D1"
        );
        assert_eq!(
            url_with_query("https://a/b?v=1", &[("a", "é")]),
            "https://a/b?v=1&a=%C3%A9"
        );
    }
}
