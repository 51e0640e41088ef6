//! Connecting an X account: OAuth 2.0 authorization code with PKCE (S256).
//!
//! The consent URL asks for `dm.read dm.write tweet.read users.read
//! offline.access` (offline.access is what yields a refresh token); the
//! code is exchanged with the verifier kept by the daemon, and the account
//! is named from `GET /2/users/me`. The refresh token is what hourglass
//! keeps; X rotates it on every use, the client keeps the successors.

use async_trait::async_trait;
use hourglass_connector::oauth::{url_with_query, CodeExchange, Consent, ConsentRequest, Grant};
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::ConnectorError;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::config::XConfig;

/// The scopes hourglass asks for.
pub const SCOPES: &str = "dm.read dm.write tweet.read users.read offline.access";

/// The consent flow of one X instance.
pub struct XConsent {
    config: XConfig,
}

impl XConsent {
    pub fn new(config: &XConfig) -> XConsent {
        XConsent {
            config: config.clone(),
        }
    }
}

#[derive(Deserialize)]
struct CodeGrant {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[async_trait]
impl Consent for XConsent {
    fn platform(&self) -> &'static str {
        "X"
    }

    fn target(&self) -> (&'static str, &hourglass_connector::secret::SecretRef) {
        ("x.refresh_token", &self.config.refresh_token)
    }

    fn authorize_url(&self, request: &ConsentRequest<'_>) -> Result<String, String> {
        Ok(url_with_query(
            &self.config.authorize_url,
            &[
                ("response_type", "code"),
                ("client_id", &self.config.client_id),
                ("redirect_uri", request.callback),
                ("scope", SCOPES),
                ("state", request.state),
                ("code_challenge", request.code_challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
    }

    async fn exchange(&self, exchange: &CodeExchange<'_>) -> Result<Grant, ConnectorError> {
        let http = hourglass_connector::oauth::consent_client()?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", exchange.code.to_owned()),
            ("redirect_uri", exchange.callback.to_owned()),
            ("code_verifier", exchange.code_verifier.to_owned()),
        ];
        let mut req = http.post(&self.config.token_url);
        match &self.config.client_secret {
            Some(r) => {
                let secret = r
                    .resolve()
                    .map_err(|e| ConnectorError::Auth(format!("x.client_secret: {e}")))?;
                req = req.basic_auth(&self.config.client_id, Some(secret.expose_secret()));
            }
            None => form.push(("client_id", self.config.client_id.clone())),
        }
        let resp = req.form(&form).send().await.map_err(|e| {
            ConnectorError::Transient(format!("X token request: {}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| {
            ConnectorError::Transient(format!("X token response: {}", e.without_url()))
        })?;
        if !(200..300).contains(&status) {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let error = v.get("error").and_then(Value::as_str).unwrap_or("");
            let detail = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            let what = format!(
                "HTTP {status}{}{error}{}{detail}",
                if error.is_empty() { "" } else { " " },
                if detail.is_empty() { "" } else { ": " }
            );
            if status >= 500 {
                return Err(ConnectorError::Transient(format!(
                    "X token endpoint: {what}"
                )));
            }
            return Err(ConnectorError::Auth(format!(
                "X refused the authorization code ({what}): a code works once, for this redirect and this verifier only. Start the connection again"
            )));
        }
        let grant: CodeGrant = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::Other(format!("X token response is not the documented JSON: {e}"))
        })?;
        let refresh = grant.refresh_token.ok_or_else(|| {
            ConnectorError::Auth(
                "X granted no refresh token: the app must ask for offline.access".to_owned(),
            )
        })?;
        let scopes: Vec<String> = grant
            .scope
            .unwrap_or_else(|| SCOPES.to_owned())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // The account's name, with the access token just granted.
        let me = http
            .get(format!(
                "{}/2/users/me",
                self.config.api_url.trim_end_matches('/')
            ))
            .bearer_auth(&grant.access_token)
            .send()
            .await;
        let account = match me {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok().and_then(|v| {
                v.pointer("/data/username")
                    .and_then(Value::as_str)
                    .map(|u| format!("@{u}"))
            }),
            _ => None,
        };
        Ok(Grant {
            key: "x.refresh_token",
            target: self.config.refresh_token.clone(),
            token: SecretString::from(refresh),
            scopes,
            account,
            // X refresh tokens do not expire while used; they are rotated.
            expires_at: None,
            notes: Vec::new(),
        })
    }
}
