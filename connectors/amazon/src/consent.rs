//! Connecting a seller to the SP-API application: Login with Amazon's
//! website authorization workflow. Seller Central's consent page takes the
//! `application_id` and `state` (and `version=beta` for a draft app) and
//! sends the browser back with `spapi_oauth_code`, `state` and
//! `selling_partner_id`; the code is exchanged at the LWA token endpoint
//! (`grant_type=authorization_code`) for the refresh token hourglass keeps.
//! SP-API reads its refresh token from its reference at start, so the
//! token goes to a `file:`.

use async_trait::async_trait;
use hourglass_connector::oauth::{url_with_query, CodeExchange, Consent, ConsentRequest, Grant};
use hourglass_connector::secret::{ExposeSecret, SecretRef};
use hourglass_connector::ConnectorError;
use secrecy::SecretString;
use serde_json::Value;

use crate::sp_api::SpApiConfig;

/// The consent flow of one Amazon instance's SP-API access.
pub struct AmazonConsent {
    config: SpApiConfig,
    application_id: String,
}

impl AmazonConsent {
    pub fn new(config: &SpApiConfig) -> Result<AmazonConsent, String> {
        let application_id = config
            .application_id
            .clone()
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                "sp_api.application_id is not set: add the App ID of your SP-API application (Seller Central → Develop Apps) to connect the seller".to_owned()
            })?;
        Ok(AmazonConsent {
            config: config.clone(),
            application_id,
        })
    }
}

#[async_trait]
impl Consent for AmazonConsent {
    fn platform(&self) -> &'static str {
        "Amazon"
    }

    fn target(&self) -> (&'static str, &SecretRef) {
        ("sp_api.refresh_token", &self.config.refresh_token)
    }

    fn reads_stored_token(&self) -> bool {
        false
    }

    fn authorize_url(&self, request: &ConsentRequest<'_>) -> Result<String, String> {
        let mut params = vec![
            ("application_id", self.application_id.as_str()),
            ("state", request.state),
            ("redirect_uri", request.callback),
        ];
        if self.config.draft_app {
            params.push(("version", "beta"));
        }
        Ok(url_with_query(&self.config.authorize_url, &params))
    }

    async fn exchange(&self, exchange: &CodeExchange<'_>) -> Result<Grant, ConnectorError> {
        let secret = self
            .config
            .client_secret
            .resolve()
            .map_err(|e| ConnectorError::Auth(format!("sp_api.client_secret: {e}")))?;
        let http = hourglass_connector::oauth::consent_client()?;
        let resp = http
            .post(&self.config.token_url)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", exchange.code),
                ("redirect_uri", exchange.callback),
                ("client_id", self.config.client_id.as_str()),
                ("client_secret", secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!("LWA token request: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| {
            ConnectorError::Transient(format!("LWA token response: {}", e.without_url()))
        })?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let error = v.get("error").and_then(Value::as_str).unwrap_or("");
            let detail = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            if status >= 500 {
                return Err(ConnectorError::Transient(format!(
                    "LWA token endpoint: HTTP {status}"
                )));
            }
            return Err(ConnectorError::Auth(format!(
                "Login with Amazon refused the authorization code (HTTP {status} {error}: {detail}): a code works once and for 5 minutes only. Start the connection again"
            )));
        }
        let token = v
            .get("refresh_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConnectorError::Other("Login with Amazon's answer carries no refresh_token".into())
            })?;
        Ok(Grant {
            key: "sp_api.refresh_token",
            target: self.config.refresh_token.clone(),
            token: SecretString::from(token.to_owned()),
            scopes: vec!["sellingpartnerapi (the application's roles)".to_owned()],
            account: exchange.account.map(|a| format!("selling partner {a}")),
            // LWA refresh tokens do not expire while the authorization
            // stands (a seller may revoke it; a draft app's lasts a year).
            expires_at: None,
            notes: Vec::new(),
        })
    }
}
