//! HTTP to X: the OAuth 2.0 refresh grant (with X's rotating refresh
//! tokens kept in the daemon's vault), the API calls, and the mapping of
//! X's answers and `x-rate-limit-*` headers to [`ConnectorError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::{ConnectorError, Vault};
use reqwest::header::HeaderMap;
use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::XConfig;

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// X's rate-limit windows are 15 minutes: the wait after a 429 that says
/// nothing about its reset.
const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Renew an access token this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(120);
/// The vault entry of the rotated refresh token.
pub const VAULT_REFRESH_TOKEN: &str = "refresh_token";

/// Which rate-limit bucket a call counts against (X limits per endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    DmEvents,
    ConversationEvents,
    Send,
    Me,
}

/// An answer the caller decides about (2xx, or a 4xx refusal of this
/// request that is not about credentials or limits).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// X's own words: `detail` of a problem, or the first error's
    /// `message`, or the status.
    pub fn problem(&self) -> String {
        problem(self.status, &self.body)
    }
}

fn problem(status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = v
        .get("detail")
        .and_then(Value::as_str)
        .or_else(|| {
            v.get("errors")
                .and_then(|e| e.get(0))
                .and_then(|e| e.get("message").or_else(|| e.get("detail")))
                .and_then(Value::as_str)
        })
        .or_else(|| v.get("title").and_then(Value::as_str));
    match text {
        Some(t) => format!("HTTP {status}: {t}"),
        None => format!("HTTP {status}"),
    }
}

struct Tokens {
    access: Option<(SecretString, Option<Instant>)>,
    /// The refresh token in force, once decided (stored or configured).
    refresh: Option<SecretString>,
    /// A rotated refresh token the vault did not take yet.
    unsaved: bool,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The client of one X account.
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    token_url: String,
    client_id: String,
    client_secret: Option<SecretString>,
    configured_refresh: SecretString,
    instance: String,
    tokens: tokio::sync::Mutex<Tokens>,
    vault: OnceLock<Arc<dyn Vault>>,
    /// Endpoints X said are exhausted, until their reset.
    blocked: Mutex<HashMap<Endpoint, Instant>>,
}

/// A short fingerprint of the configured refresh token, kept with the
/// rotated one: when the seller configures a new token (a new
/// authorization), it wins over the stored descendant of the old one.
fn fingerprint(token: &SecretString) -> String {
    let digest = Sha256::digest(token.expose_secret().as_bytes());
    hex::encode(&digest[..8])
}

impl Client {
    pub fn new(instance: &str, config: &XConfig) -> Result<Client, String> {
        let configured_refresh = config
            .refresh_token
            .resolve()
            .map_err(|e| format!("x.refresh_token: {e}"))?;
        let client_secret = match &config.client_secret {
            Some(r) => Some(r.resolve().map_err(|e| format!("x.client_secret: {e}"))?),
            None => None,
        };
        let access = match &config.access_token {
            Some(r) => Some((
                r.resolve().map_err(|e| format!("x.access_token: {e}"))?,
                None,
            )),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Client {
            http,
            api_url: config.api_url.trim_end_matches('/').to_owned(),
            token_url: config.token_url.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            configured_refresh,
            instance: instance.to_owned(),
            tokens: tokio::sync::Mutex::new(Tokens {
                access,
                refresh: None,
                unsaved: false,
            }),
            vault: OnceLock::new(),
            blocked: Mutex::new(HashMap::new()),
        })
    }

    pub fn attach_vault(&self, vault: Arc<dyn Vault>) {
        let _ = self.vault.set(vault);
    }

    fn blocked(&self) -> MutexGuard<'_, HashMap<Endpoint, Instant>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `endpoint` is still exhausted, if it is.
    pub fn blocked_for(&self, endpoint: Endpoint) -> Option<Duration> {
        let now = Instant::now();
        let mut b = self.blocked();
        match b.get(&endpoint) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                b.remove(&endpoint);
                None
            }
            None => None,
        }
    }

    fn block(&self, endpoint: Endpoint, wait: Duration) {
        let until = Instant::now() + wait;
        let mut b = self.blocked();
        let e = b.entry(endpoint).or_insert(until);
        if *e < until {
            *e = until;
        }
    }

    /// The access token to use; renewed when absent, expiring or refused.
    async fn access_token(&self, renew: bool) -> Result<SecretString, ConnectorError> {
        let mut t = self.tokens.lock().await;
        if !renew {
            if let Some((token, expires)) = &t.access {
                if expires.is_none_or(|e| Instant::now() + RENEW_BEFORE < e) {
                    return Ok(token.clone());
                }
            }
        }
        t.access = None;
        self.refresh(&mut t).await?;
        t.access
            .as_ref()
            .map(|(a, _)| a.clone())
            .ok_or_else(|| ConnectorError::Other("no access token after a refresh".into()))
    }

    /// The refresh grant. X invalidates the refresh token it was given and
    /// answers with a new one: that one is sealed into the vault before
    /// anything else, because the old one will never work again.
    async fn refresh(&self, t: &mut Tokens) -> Result<(), ConnectorError> {
        let Some(vault) = self.vault.get() else {
            return Err(ConnectorError::Auth(
                "the X access token must be renewed, and X replaces the refresh token on every renewal; set [store] secret_key (by reference) so hourglass can keep the new one — the configured refresh token was not used".into(),
            ));
        };
        // A token granted by `connectors authorize` (kept in the vault
        // because its reference is not a file) starts a newer chain than
        // the configured one.
        let base = vault
            .load(&self.instance, hourglass_connector::oauth::VAULT_AUTHORIZED)
            .await
            .map_err(ConnectorError::Other)?
            .unwrap_or_else(|| self.configured_refresh.clone());
        let configured = fingerprint(&base);
        if t.unsaved {
            if let Some(r) = &t.refresh {
                self.save(vault.as_ref(), &configured, r).await?;
                t.unsaved = false;
            }
        }
        if t.refresh.is_none() {
            let from_store = self.stored_refresh(vault.as_ref(), &configured).await?;
            if from_store.is_some() {
                tracing::debug!(instance = %self.instance, "Using the refresh token kept in the store.");
            }
            t.refresh = Some(from_store.unwrap_or_else(|| base.clone()));
        }
        let refresh = t.refresh.clone().unwrap_or_else(|| base.clone());
        match self.grant(t, vault.as_ref(), &configured, &refresh).await {
            Err(ConnectorError::Auth(why)) => {
                // Another daemon on the same store (or a process before a
                // reload) may have spent the token we hold and kept its
                // successor: use that one, once.
                let stored = self.stored_refresh(vault.as_ref(), &configured).await?;
                match stored {
                    Some(s)
                        if !hourglass_connector::constant_time_eq(
                            s.expose_secret().as_bytes(),
                            refresh.expose_secret().as_bytes(),
                        ) =>
                    {
                        t.refresh = Some(s.clone());
                        self.grant(t, vault.as_ref(), &configured, &s).await
                    }
                    _ => Err(ConnectorError::Auth(why)),
                }
            }
            other => other,
        }
    }

    /// The rotated refresh token in the vault, if it descends from the
    /// configured one.
    async fn stored_refresh(
        &self,
        vault: &dyn Vault,
        configured: &str,
    ) -> Result<Option<SecretString>, ConnectorError> {
        let stored = vault
            .load(&self.instance, VAULT_REFRESH_TOKEN)
            .await
            .map_err(ConnectorError::Other)?;
        Ok(stored.and_then(|s| {
            let (fp, token) = s.expose_secret().split_once(':')?;
            hourglass_connector::constant_time_eq(fp.as_bytes(), configured.as_bytes())
                .then(|| SecretString::from(token.to_owned()))
        }))
    }

    /// One refresh grant with `refresh`.
    async fn grant(
        &self,
        t: &mut Tokens,
        vault: &dyn Vault,
        configured: &str,
        refresh: &SecretString,
    ) -> Result<(), ConnectorError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.expose_secret().to_owned()),
        ];
        let mut req = self.http.post(&self.token_url);
        match &self.client_secret {
            Some(secret) => {
                req = req.basic_auth(&self.client_id, Some(secret.expose_secret()));
            }
            None => form.push(("client_id", self.client_id.clone())),
        }
        let resp = req.form(&form).send().await.map_err(|e| {
            ConnectorError::Transient(format!("X token request: {}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| {
            ConnectorError::Transient(format!("X token response: {}", e.without_url()))
        })?;
        if status == 429 {
            return Err(ConnectorError::RateLimited {
                retry_after: Some(reset_wait(&headers).unwrap_or(DEFAULT_WINDOW)),
            });
        }
        if status >= 500 {
            return Err(ConnectorError::Transient(format!(
                "X token endpoint: HTTP {status}"
            )));
        }
        if !(200..300).contains(&status) {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let error = v.get("error").and_then(Value::as_str).unwrap_or("");
            let detail = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(ConnectorError::Auth(format!(
                "X refused the refresh token (HTTP {status} {error}{}{detail}): it was revoked or already used. Authorize hourglass again (scopes dm.read dm.write tweet.read users.read offline.access) and point x.refresh_token at the new token",
                if detail.is_empty() { "" } else { ": " }
            )));
        }
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::Transient(format!("X token response is not the documented JSON: {e}"))
        })?;
        if let Some(new) = token.refresh_token {
            let new = SecretString::from(new);
            t.refresh = Some(new.clone());
            t.unsaved = true;
            // Until this returns, the only copy of the new token is in
            // memory: it is kept there (and saved on the next try) if the
            // store fails now.
            self.save(vault, configured, &new).await?;
            t.unsaved = false;
            tracing::info!(instance = %self.instance, "X rotated the refresh token; the new one is kept in the store.");
        }
        let expires = token
            .expires_in
            .map(|s| Instant::now() + Duration::from_secs(s));
        t.access = Some((SecretString::from(token.access_token), expires));
        Ok(())
    }

    async fn save(
        &self,
        vault: &dyn Vault,
        fingerprint: &str,
        token: &SecretString,
    ) -> Result<(), ConnectorError> {
        let entry = SecretString::from(format!("{fingerprint}:{}", token.expose_secret()));
        vault
            .save(&self.instance, VAULT_REFRESH_TOKEN, &entry)
            .await
            .map_err(|e| {
                tracing::error!(instance = %self.instance, error = %e, "Cannot keep X's new refresh token in the store; it is held in memory and saved on the next try.");
                ConnectorError::Transient(format!("keeping X's rotated refresh token: {e}"))
            })
    }

    /// One API call under `path`, with the user token. A refused access
    /// token is renewed once. Rate limits (a 429, or a bucket the headers
    /// say is empty) become `RateLimited` until X's reset; 5xx and network
    /// failures are `Transient`; 401/403 after a renewal are `Auth`.
    pub async fn call(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, ConnectorError> {
        if let Some(wait) = self.blocked_for(endpoint) {
            return Err(ConnectorError::RateLimited {
                retry_after: Some(wait),
            });
        }
        let url = format!("{}{path}", self.api_url);
        let mut renewed = false;
        let mut token = self.access_token(false).await?;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose_secret())
                .query(query);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| ConnectorError::Transient(format!("X {path}: {}", e.without_url())))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ConnectorError::Transient(format!("X {path}: {}", e.without_url())))?
                .to_vec();
            self.note_limits(endpoint, status, &headers);
            match status {
                401 if !renewed => {
                    renewed = true;
                    token = self.access_token(true).await?;
                    continue;
                }
                401 => {
                    return Err(ConnectorError::Auth(format!(
                        "X refused a freshly renewed access token on {path} ({})",
                        problem(status, &bytes)
                    )))
                }
                429 => {
                    let wait = reset_wait(&headers).unwrap_or(DEFAULT_WINDOW);
                    tracing::warn!(path, wait_secs = wait.as_secs(), detail = %problem(status, &bytes), "X answered 429; waiting for the rate-limit reset.");
                    return Err(ConnectorError::RateLimited {
                        retry_after: Some(wait),
                    });
                }
                s if s >= 500 => {
                    return Err(ConnectorError::Transient(format!(
                        "X {path}: {}",
                        problem(status, &bytes)
                    )))
                }
                _ => {
                    return Ok(Answer {
                        status,
                        body: bytes,
                    })
                }
            }
        }
    }

    /// Honours `x-rate-limit-remaining` before X has to answer 429: an
    /// empty bucket blocks the endpoint until `x-rate-limit-reset`.
    fn note_limits(&self, endpoint: Endpoint, status: u16, headers: &HeaderMap) {
        let remaining = header_u64(headers, "x-rate-limit-remaining");
        if status == 429 || remaining == Some(0) {
            if let Some(wait) = reset_wait(headers) {
                self.block(endpoint, wait);
            } else if status == 429 {
                self.block(endpoint, DEFAULT_WINDOW);
            }
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Time until `x-rate-limit-reset` (epoch seconds), at least one second;
/// else `Retry-After` seconds.
pub fn reset_wait(headers: &HeaderMap) -> Option<Duration> {
    if let Some(reset) = header_u64(headers, "x-rate-limit-reset") {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    header_u64(headers, "retry-after").map(|s| Duration::from_secs(s.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn waits_follow_the_reset_header() {
        let mut h = HeaderMap::new();
        assert_eq!(reset_wait(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(reset_wait(&h), Some(Duration::from_secs(7)));
        let reset = chrono::Utc::now().timestamp() + 120;
        h.insert(
            "x-rate-limit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        let w = reset_wait(&h).unwrap();
        assert!(
            w <= Duration::from_secs(120) && w >= Duration::from_secs(118),
            "{w:?}"
        );
        h.insert("x-rate-limit-reset", HeaderValue::from_static("5"));
        assert_eq!(reset_wait(&h), Some(Duration::from_secs(1)), "a past reset");
    }

    #[test]
    fn problems_quote_x() {
        assert_eq!(
            problem(
                403,
                br#"{"title":"Forbidden","detail":"You cannot send messages to this user."}"#
            ),
            "HTTP 403: You cannot send messages to this user."
        );
        assert_eq!(
            problem(400, br#"{"errors":[{"message":"bad"}]}"#),
            "HTTP 400: bad"
        );
        assert_eq!(problem(502, b"<html>"), "HTTP 502");
    }
}
