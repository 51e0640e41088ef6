//! Connecting a Facebook Page (Messenger): Facebook Login returns a
//! short-lived user token, exchanged (`fb_exchange_token`) for a
//! long-lived one; `/me/accounts` lists the Pages the user manages, the
//! instance's `page_id` is picked and its Page token kept (a Page token
//! from a long-lived user token does not expire); then the Page is
//! subscribed to the app (`POST /{page-id}/subscribed_apps`) so that
//! messages start to reach the webhook.
//!
//! WhatsApp has no consent flow here: its system user token is made in
//! Business Manager and pasted; `connectors test NAME` checks it.

use async_trait::async_trait;
use hourglass_connector::oauth::{url_with_query, CodeExchange, Consent, ConsentRequest, Grant};
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::ConnectorError;
use secrecy::SecretString;
use serde_json::Value;

use crate::config::MetaConfig;

/// What Messenger needs: send and read messages, manage the Page's
/// webhook subscription, list the Pages.
pub const SCOPES: &str = "pages_messaging,pages_manage_metadata,pages_show_list";
/// The webhook fields the Page is subscribed to.
pub const SUBSCRIBED_FIELDS: &str = "messages,messaging_postbacks";

/// The consent flow of one Messenger instance.
pub struct MetaConsent {
    config: MetaConfig,
    app_id: String,
    page_id: String,
}

impl MetaConsent {
    pub fn new(config: &MetaConfig) -> Result<MetaConsent, String> {
        let app_id = config
            .app_id
            .clone()
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                "meta.app_id is not set: add the App ID of your Meta app (App Dashboard → App settings → Basic) to connect a Page".to_owned()
            })?;
        let page_id = config
            .page_id
            .clone()
            .ok_or_else(|| "meta.page_id is not set: it names the Page to connect".to_owned())?;
        Ok(MetaConsent {
            config: config.clone(),
            app_id,
            page_id,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.api_url.trim_end_matches('/'))
    }
}

fn graph_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error");
    let message = e
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    match e.and_then(|e| e.get("code")).and_then(Value::as_i64) {
        Some(code) => format!("code {code}: {message}"),
        None => message.to_owned(),
    }
}

async fn read(
    resp: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<Value, ConnectorError> {
    let resp =
        resp.map_err(|e| ConnectorError::Transient(format!("Meta {what}: {}", e.without_url())))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ConnectorError::Transient(format!("Meta {what}: {}", e.without_url())))?;
    if status >= 500 {
        return Err(ConnectorError::Transient(format!(
            "Meta {what}: HTTP {status}"
        )));
    }
    if !(200..300).contains(&status) {
        return Err(ConnectorError::Auth(format!(
            "Meta refused the {what} (HTTP {status}, {})",
            graph_message(&body)
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ConnectorError::Other(format!("Meta {what}: the answer is not JSON: {e}")))
}

fn token_of(v: &Value, what: &str) -> Result<String, ConnectorError> {
    v.get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ConnectorError::Other(format!("Meta {what}: no access_token in the answer")))
}

#[async_trait]
impl Consent for MetaConsent {
    fn platform(&self) -> &'static str {
        "Meta"
    }

    fn target(&self) -> (&'static str, &hourglass_connector::secret::SecretRef) {
        ("meta.access_token", &self.config.access_token)
    }

    fn reads_stored_token(&self) -> bool {
        false
    }

    fn authorize_url(&self, request: &ConsentRequest<'_>) -> Result<String, String> {
        Ok(url_with_query(
            &self.config.authorize_url,
            &[
                ("client_id", &self.app_id),
                ("redirect_uri", request.callback),
                ("state", request.state),
                ("response_type", "code"),
                ("scope", SCOPES),
            ],
        ))
    }

    async fn exchange(&self, exchange: &CodeExchange<'_>) -> Result<Grant, ConnectorError> {
        let secret = self
            .config
            .app_secret
            .resolve()
            .map_err(|e| ConnectorError::Auth(format!("meta.app_secret: {e}")))?;
        let http = hourglass_connector::oauth::consent_client()?;
        let short = read(
            http.get(self.url("oauth/access_token"))
                .query(&[
                    ("client_id", self.app_id.as_str()),
                    ("redirect_uri", exchange.callback),
                    ("client_secret", secret.expose_secret()),
                    ("code", exchange.code),
                ])
                .send()
                .await,
            "authorization code (a code works once and for a few minutes only: start the connection again)",
        )
        .await?;
        let short = token_of(&short, "code exchange")?;
        let long = read(
            http.get(self.url("oauth/access_token"))
                .query(&[
                    ("grant_type", "fb_exchange_token"),
                    ("client_id", self.app_id.as_str()),
                    ("client_secret", secret.expose_secret()),
                    ("fb_exchange_token", short.as_str()),
                ])
                .send()
                .await,
            "exchange for a long-lived user token",
        )
        .await?;
        let long = token_of(&long, "long-lived token")?;
        let pages = read(
            http.get(self.url("me/accounts"))
                .query(&[("fields", "id,name,access_token,tasks")])
                .bearer_auth(&long)
                .send()
                .await,
            "list of the user's Pages",
        )
        .await?;
        let list = pages
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(page) = list
            .iter()
            .find(|p| p.get("id").and_then(Value::as_str) == Some(self.page_id.as_str()))
        else {
            let names: Vec<String> = list
                .iter()
                .map(|p| {
                    format!(
                        "{} ({})",
                        p.get("name").and_then(Value::as_str).unwrap_or("?"),
                        p.get("id").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect();
            return Err(ConnectorError::Auth(format!(
                "the Facebook user who consented does not manage Page {} (meta.page_id); their Pages: {}",
                self.page_id,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        };
        let page_token = token_of(page, "Page")?;
        let page_name = page.get("name").and_then(Value::as_str).map(str::to_owned);
        let subscribed = read(
            http.post(self.url(&format!("{}/subscribed_apps", self.page_id)))
                .query(&[("subscribed_fields", SUBSCRIBED_FIELDS)])
                .bearer_auth(&page_token)
                .send()
                .await,
            "webhook subscription of the Page",
        )
        .await?;
        if subscribed.get("success").and_then(Value::as_bool) != Some(true) {
            return Err(ConnectorError::Other(
                "Meta did not confirm the webhook subscription of the Page".to_owned(),
            ));
        }
        Ok(Grant {
            key: "meta.access_token",
            target: self.config.access_token.clone(),
            token: SecretString::from(page_token),
            scopes: SCOPES.split(',').map(str::to_owned).collect(),
            account: Some(match page_name {
                Some(n) => format!("Page {n} ({})", self.page_id),
                None => format!("Page {}", self.page_id),
            }),
            // A Page token from a long-lived user token does not expire.
            expires_at: None,
            notes: vec![format!(
                "Page subscribed to the app's webhooks ({SUBSCRIBED_FIELDS})"
            )],
        })
    }
}
