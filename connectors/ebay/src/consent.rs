//! Connecting a seller account: eBay's authorization code grant.
//!
//! The consent URL carries the application's RuName as `redirect_uri`
//! (eBay maps it to the "auth accepted URL" registered in the developer
//! console), the token request sends the same RuName and the code, with the
//! application's keys as Basic auth. The refresh token it returns lasts 18
//! months (`refresh_token_expires_in`); hourglass records that date and
//! warns the admin 30 days before.

use async_trait::async_trait;
use chrono::Utc;
use hourglass_connector::oauth::{url_with_query, CodeExchange, Consent, ConsentRequest, Grant};
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::ConnectorError;
use secrecy::SecretString;
use serde::Deserialize;

use crate::client::SCOPE;
use crate::config::EbayConfig;

/// The consent flow of one eBay instance.
pub struct EbayConsent {
    config: EbayConfig,
    ru_name: String,
}

impl EbayConsent {
    pub fn new(config: &EbayConfig) -> Result<EbayConsent, String> {
        let ru_name = config
            .ru_name
            .clone()
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| {
                "ebay.ru_name is not set: add the RuName of your eBay application (developer console → User Tokens → \"Get a Token from eBay via Your Application\"), whose auth accepted URL is hourglass's /oauth/callback".to_owned()
            })?;
        Ok(EbayConsent {
            config: config.clone(),
            ru_name,
        })
    }
}

#[derive(Deserialize)]
struct CodeGrant {
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_token_expires_in: Option<i64>,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

#[async_trait]
impl Consent for EbayConsent {
    fn platform(&self) -> &'static str {
        "eBay"
    }

    fn target(&self) -> (&'static str, &hourglass_connector::secret::SecretRef) {
        ("ebay.refresh_token", &self.config.refresh_token)
    }

    fn authorize_url(&self, request: &ConsentRequest<'_>) -> Result<String, String> {
        Ok(url_with_query(
            &self.config.authorize_url,
            &[
                ("client_id", &self.config.client_id),
                ("redirect_uri", &self.ru_name),
                ("response_type", "code"),
                ("scope", SCOPE),
                ("state", request.state),
            ],
        ))
    }

    async fn exchange(&self, exchange: &CodeExchange<'_>) -> Result<Grant, ConnectorError> {
        let secret = self
            .config
            .client_secret
            .resolve()
            .map_err(|e| ConnectorError::Auth(format!("ebay.client_secret: {e}")))?;
        let http = hourglass_connector::oauth::consent_client()?;
        let resp = http
            .post(&self.config.token_url)
            .basic_auth(&self.config.client_id, Some(secret.expose_secret()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", exchange.code),
                ("redirect_uri", self.ru_name.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!("eBay token request: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| {
            ConnectorError::Transient(format!("eBay token response: {}", e.without_url()))
        })?;
        if !(200..300).contains(&status) {
            let e: OAuthError = serde_json::from_slice(&body).unwrap_or_default();
            let what = if e.error.is_empty() {
                format!("HTTP {status}")
            } else if e.error_description.is_empty() {
                format!("HTTP {status} {}", e.error)
            } else {
                format!("HTTP {status} {}: {}", e.error, e.error_description)
            };
            return Err(match e.error.as_str() {
                "invalid_grant" => ConnectorError::Auth(format!(
                    "eBay refused the authorization code ({what}): a code works once and for a few minutes only. Start the connection again"
                )),
                "invalid_client" => ConnectorError::Auth(format!(
                    "eBay refused the application's keys ({what}): check ebay.client_id and ebay.client_secret"
                )),
                _ if status >= 500 => {
                    ConnectorError::Transient(format!("eBay token endpoint: {what}"))
                }
                _ => ConnectorError::Auth(format!("eBay refused the token request ({what})")),
            });
        }
        let grant: CodeGrant = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::Other(format!(
                "eBay token response is not the documented JSON: {e}"
            ))
        })?;
        let token = grant.refresh_token.ok_or_else(|| {
            ConnectorError::Other("eBay's answer carries no refresh_token".to_owned())
        })?;
        let expires_at = grant
            .refresh_token_expires_in
            .filter(|s| *s > 0)
            .map(|s| Utc::now() + chrono::Duration::seconds(s));
        Ok(Grant {
            key: "ebay.refresh_token",
            target: self.config.refresh_token.clone(),
            token: SecretString::from(token),
            scopes: vec![SCOPE.to_owned()],
            account: self.config.username.clone(),
            expires_at,
            notes: Vec::new(),
        })
    }
}
