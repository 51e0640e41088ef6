//! HTTP to eBay: the OAuth refresh-token grant, the Message API calls, the
//! daily call budget, and the mapping of eBay's answers to
//! [`ConnectorError`].

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hourglass_connector::secret::{ExposeSecret, SecretRef};
use hourglass_connector::ConnectorError;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::EbayConfig;

/// The OAuth scope the Message API needs.
pub const SCOPE: &str = "https://api.ebay.com/oauth/api_scope/commerce.message";
/// Path of the Message API under `api_url`.
pub const BASE_PATH: &str = "/commerce/message/v1";
/// A token is renewed when it has less than this left, so that it never
/// expires in the middle of a request.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// eBay's user access tokens last two hours; used when `expires_in` is
/// missing.
const DEFAULT_TOKEN_LIFETIME: u64 = 7200;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// eBay's error id for "too many requests" in an error body.
const ERROR_TOO_MANY_REQUESTS: i64 = 2001;

/// What a call is for: polling keeps a reserve of the daily budget for
/// replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Poll,
    Send,
}

/// Message API calls in the last 24 hours, against the daily budget.
#[derive(Debug)]
pub struct CallBudget {
    per_day: u32,
    calls: VecDeque<Instant>,
}

impl CallBudget {
    pub fn new(per_day: u32) -> CallBudget {
        CallBudget {
            per_day,
            calls: VecDeque::new(),
        }
    }

    /// The part of the budget polling leaves to replies.
    pub fn reserve(&self) -> u32 {
        (self.per_day / 20).max(1)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.calls.front() {
            if now.saturating_duration_since(*first) >= DAY {
                self.calls.pop_front();
            } else {
                break;
            }
        }
    }

    /// Calls made in the 24 hours before `now`.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.expire(now);
        u32::try_from(self.calls.len()).unwrap_or(u32::MAX)
    }

    /// Whether `n` more calls for `purpose` fit; if not, how long until
    /// they do.
    pub fn check(&mut self, now: Instant, purpose: Purpose, n: u32) -> Result<(), Duration> {
        let limit = match purpose {
            Purpose::Poll => self.per_day.saturating_sub(self.reserve()),
            Purpose::Send => self.per_day,
        };
        let used = self.used(now);
        if used.saturating_add(n) <= limit {
            return Ok(());
        }
        // The calls that must age out before `n` more fit.
        let excess = used.saturating_add(n).saturating_sub(limit) as usize;
        let wait = self
            .calls
            .get(excess.saturating_sub(1))
            .map(|t| (*t + DAY).saturating_duration_since(now))
            .unwrap_or(DAY);
        Err(wait.max(Duration::from_secs(1)))
    }

    pub fn record(&mut self, now: Instant) {
        self.calls.push_back(now);
    }

    /// Counts `n` calls made in the 24 hours before `at`, before every
    /// call recorded so far. When they were made is not kept, so they are
    /// spread evenly over that day: stamping them all at `at` instead would
    /// carry them over from restart to restart (each one stamps them anew)
    /// and never let them age out.
    pub fn restore(&mut self, n: u32, at: Instant) {
        // Newest first, each pushed in front of the older ones.
        for k in 0..n {
            let back = DAY.mul_f64(f64::from(k + 1) / f64::from(n + 1));
            let when = at.checked_sub(back).unwrap_or(at);
            self.calls.push_front(when);
        }
    }
}

struct AccessToken {
    value: SecretString,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    /// eBay's refresh grant does not echo the scopes; where a server does,
    /// they are what it granted.
    #[serde(default)]
    scope: Option<String>,
}

/// What the last token renewal granted (for `connectors test`).
#[derive(Debug, Clone)]
pub struct Granted {
    /// Space-separated scopes.
    pub scopes: String,
    pub lifetime: Duration,
}

#[derive(Deserialize)]
struct OAuthError {
    #[serde(default)]
    error: String,
}

/// An answer of the Message API that the caller decides about: a success,
/// or a refusal of this one request (400, 404, 409).
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// eBay's own words from `{"errors":[{"errorId","message"}]}`, or the
    /// status.
    pub fn error_message(&self) -> String {
        error_message(self.status, &self.body)
    }

    /// The `errorId`s of an error body.
    pub fn error_ids(&self) -> Vec<i64> {
        error_ids(&self.body)
    }
}

fn error_ids(body: &[u8]) -> Vec<i64> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("errorId").and_then(Value::as_i64))
        .collect()
}

fn error_message(status: u16, body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let first = parsed
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    match first {
        Some(e) => {
            let id = e.get("errorId").and_then(Value::as_i64);
            let msg = e
                .get("longMessage")
                .or_else(|| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no message");
            match id {
                Some(id) => format!("HTTP {status}, eBay error {id}: {msg}"),
                None => format!("HTTP {status}: {msg}"),
            }
        }
        None => format!("HTTP {status}"),
    }
}

/// A client of one seller account.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token_url: String,
    client_id: String,
    client_secret: SecretString,
    refresh_token: SecretString,
    /// Read again for every token request: a seller who consents again
    /// writes the new token there (a `file:` or a systemd credential), and
    /// the next retry uses it without a reload.
    refresh_token_source: SecretRef,
    refresh_token_ref: String,
    /// The store's vault and the instance name: a refresh token obtained
    /// by `connectors authorize` for a reference that is not a `file:` is
    /// kept there, and wins over the configured one.
    vault: std::sync::OnceLock<(std::sync::Arc<dyn hourglass_connector::Vault>, String)>,
    marketplace: String,
    token: tokio::sync::Mutex<Option<AccessToken>>,
    granted: Mutex<Option<Granted>>,
    budget: Mutex<CallBudget>,
}

impl Client {
    pub fn new(config: &EbayConfig) -> Result<Client, String> {
        let client_secret = config
            .client_secret
            .resolve()
            .map_err(|e| format!("client_secret: {e}"))?;
        let refresh_token = config
            .refresh_token
            .resolve()
            .map_err(|e| format!("refresh_token: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Client {
            http,
            base: format!("{}{BASE_PATH}", config.api_url.trim_end_matches('/')),
            token_url: config.token_url.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            refresh_token,
            refresh_token_source: config.refresh_token.clone(),
            refresh_token_ref: config.refresh_token.to_string(),
            vault: std::sync::OnceLock::new(),
            marketplace: config.marketplace_id.clone(),
            token: tokio::sync::Mutex::new(None),
            granted: Mutex::new(None),
            budget: Mutex::new(CallBudget::new(config.daily_call_budget)),
        })
    }

    /// Gives the client the store's vault (see [`Client::vault`]).
    pub fn attach_vault(
        &self,
        vault: std::sync::Arc<dyn hourglass_connector::Vault>,
        instance: &str,
    ) {
        let _ = self.vault.set((vault, instance.to_owned()));
    }

    fn budget(&self) -> MutexGuard<'_, CallBudget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the last token renewal granted.
    pub fn granted(&self) -> Option<Granted> {
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Message API calls in the last 24 hours.
    pub fn calls_last_24h(&self) -> u32 {
        self.budget().used(Instant::now())
    }

    /// Counts `calls` made (by an earlier daemon) in the 24 hours before
    /// `at` (see [`CallBudget::restore`]).
    pub fn restore_calls(&self, calls: u32, at: std::time::SystemTime) {
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        if age >= DAY {
            return;
        }
        if let Some(when) = Instant::now().checked_sub(age) {
            self.budget().restore(calls, when);
        }
    }

    /// Whether `n` more polling calls fit in the budget.
    pub fn reserve_calls(&self, purpose: Purpose, n: u32) -> Result<(), ConnectorError> {
        self.budget()
            .check(Instant::now(), purpose, n)
            .map_err(|wait| ConnectorError::RateLimited {
                retry_after: Some(wait),
            })
    }

    /// The current access token, renewed when it is close to expiry or
    /// when `renew` says the last one was refused.
    async fn access_token(&self, renew: bool) -> Result<SecretString, ConnectorError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            if !renew && Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        *slot = None;
        let fresh = self.request_token().await?;
        let value = fresh.value.clone();
        *slot = Some(fresh);
        Ok(value)
    }

    async fn request_token(&self) -> Result<AccessToken, ConnectorError> {
        let authorized = match self.vault.get() {
            Some((vault, instance)) => vault
                .load(instance, hourglass_connector::oauth::VAULT_AUTHORIZED)
                .await
                .map_err(ConnectorError::Other)?,
            None => None,
        };
        let refresh_token = match authorized.map_or_else(|| self.refresh_token_source.resolve(), Ok)
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(refresh_token = %self.refresh_token_ref, error = %e, "Cannot read the eBay refresh token again; using the one read at start.");
                self.refresh_token.clone()
            }
        };
        let resp = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
                ("scope", SCOPE),
            ])
            .send()
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!("eBay token request: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| {
            ConnectorError::Transient(format!("eBay token response: {}", e.without_url()))
        })?;
        if (200..300).contains(&status) {
            let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                ConnectorError::Transient(format!(
                    "eBay token response is not the documented JSON: {e}"
                ))
            })?;
            let lifetime = Duration::from_secs(t.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME));
            let renew_at = Instant::now() + renew_after(lifetime);
            // A refresh grant that does not list scopes granted the ones
            // asked for: eBay answers invalid_scope otherwise.
            let scopes = t
                .scope
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| SCOPE.to_owned());
            *self.granted.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Granted { scopes, lifetime });
            tracing::debug!(
                expires_in = lifetime.as_secs(),
                "Renewed the eBay access token."
            );
            return Ok(AccessToken {
                value: SecretString::from(t.access_token),
                renew_at,
            });
        }
        let oauth = serde_json::from_slice::<OAuthError>(&body)
            .map(|e| e.error)
            .unwrap_or_default();
        Err(match (status, oauth.as_str()) {
            (_, "invalid_grant") => ConnectorError::Auth(format!(
                "eBay refused the seller's refresh token (invalid_grant): it was revoked, or it \
                 expired (eBay refresh tokens last 18 months). Sign in to eBay as the seller, \
                 grant this application the commerce.message scope again, and store the new \
                 refresh token where refresh_token points ({})",
                self.refresh_token_ref
            )),
            (_, "invalid_client") | (401, _) => ConnectorError::Auth(format!(
                "eBay refused the application's credentials (HTTP {status}, invalid_client): \
                 check client_id {:?} and the client_secret (the Cert ID of the same keyset, \
                 production or sandbox)",
                self.client_id
            )),
            (_, "invalid_scope") => ConnectorError::Auth(
                "eBay refused the scope commerce.message for this refresh token (invalid_scope): \
                 grant the application that scope when the seller signs in, then store the new \
                 refresh token"
                    .to_owned(),
            ),
            (429, _) => ConnectorError::RateLimited { retry_after },
            (s, _) if s >= 500 => {
                ConnectorError::Transient(format!("eBay token endpoint answered HTTP {s}"))
            }
            (s, e) => ConnectorError::Other(format!(
                "eBay token endpoint answered HTTP {s}{}",
                if e.is_empty() {
                    String::new()
                } else {
                    format!(" ({e})")
                }
            )),
        })
    }

    /// One Message API call. A 401 renews the token and retries once; 429,
    /// eBay error 2001, 5xx, 403 and network errors come back as errors,
    /// everything else as an [`Answer`].
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        purpose: Purpose,
    ) -> Result<Answer, ConnectorError> {
        let what = operation(&method, path);
        let mut renewed = false;
        loop {
            self.reserve_calls(purpose, 1)?;
            let token = self.access_token(renewed).await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(token.expose_secret())
                .header("X-EBAY-C-MARKETPLACE-ID", &self.marketplace)
                .header("Accept", "application/json");
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            self.budget().record(Instant::now());
            let resp = req.send().await.map_err(|e| {
                ConnectorError::Transient(format!("eBay {what}: {}", e.without_url()))
            })?;
            let status = resp.status().as_u16();
            let retry = retry_after(resp.headers());
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| {
                    ConnectorError::Transient(format!("eBay {what}: {}", e.without_url()))
                })?
                .to_vec();
            match status {
                401 if !renewed => {
                    tracing::info!(
                        operation = what,
                        "eBay refused the access token; renewing it once."
                    );
                    renewed = true;
                    continue;
                }
                401 => {
                    return Err(ConnectorError::Auth(format!(
                        "eBay {what} refused a freshly renewed access token ({})",
                        error_message(status, &bytes)
                    )))
                }
                403 => {
                    return Err(ConnectorError::Auth(format!(
                        "eBay {what} is forbidden ({}): the refresh token needs the \
                         commerce.message scope and a seller account",
                        error_message(status, &bytes)
                    )))
                }
                429 => return Err(ConnectorError::RateLimited { retry_after: retry }),
                s if s >= 500 => {
                    return Err(ConnectorError::Transient(format!(
                        "eBay {what}: {}",
                        error_message(s, &bytes)
                    )))
                }
                s if s >= 400 && error_ids(&bytes).contains(&ERROR_TOO_MANY_REQUESTS) => {
                    return Err(ConnectorError::RateLimited { retry_after: retry })
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
}

/// When to renew a token that lives `lifetime`: five minutes early, or at
/// half its life when it is shorter than ten minutes.
fn renew_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 2))
}

fn operation(method: &reqwest::Method, path: &str) -> &'static str {
    match (method.as_str(), path) {
        ("GET", "/conversation") => "getConversations",
        ("GET", _) => "getConversation",
        ("POST", "/send_message") => "sendMessage",
        ("POST", "/update_conversation") => "updateConversation",
        _ => "Message API call",
    }
}

/// `Retry-After` in seconds (eBay sends seconds; an HTTP date is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_leaves_a_reserve_for_replies() {
        let t0 = Instant::now();
        let mut b = CallBudget::new(100);
        for _ in 0..95 {
            assert!(b.check(t0, Purpose::Poll, 1).is_ok());
            b.record(t0);
        }
        let wait = b.check(t0, Purpose::Poll, 1).unwrap_err();
        assert_eq!(wait, DAY);
        assert!(b.check(t0, Purpose::Send, 5).is_ok());
        assert!(b.check(t0, Purpose::Send, 6).is_err());
        // A day later the calls have aged out.
        assert!(b.check(t0 + DAY, Purpose::Poll, 50).is_ok());
        assert_eq!(b.used(t0 + DAY), 0);
    }

    #[test]
    fn restored_calls_age_out_over_the_day_before() {
        let t0 = Instant::now() + DAY;
        let mut b = CallBudget::new(5000);
        b.record(t0);
        b.restore(99, t0);
        assert_eq!(b.used(t0), 100);
        // Spread over the day before t0: half of them are older than 12 h.
        let half = b.used(t0 + DAY / 2);
        assert!((49..=51).contains(&half), "{half}");
        assert_eq!(b.used(t0 + DAY - Duration::from_secs(1)), 1);
        // Restored again at a later time, they still age out.
        let mut again = CallBudget::new(5000);
        again.restore(half, t0 + DAY / 2);
        assert_eq!(again.used(t0 + DAY + DAY / 2), 0);
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(
            renew_after(Duration::from_secs(7200)),
            Duration::from_secs(6900)
        );
        assert_eq!(
            renew_after(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn error_bodies_are_read_in_ebays_format() {
        let body = br#"{"errors":[{"errorId":355013,"domain":"API_MESSAGE","category":"REQUEST","message":"The messageText string exceeds the maximum character threshold of 2000."}]}"#;
        assert_eq!(
            error_message(400, body),
            "HTTP 400, eBay error 355013: The messageText string exceeds the maximum character threshold of 2000."
        );
        assert_eq!(error_ids(body), vec![355013]);
        assert_eq!(error_message(502, b"<html>bad gateway</html>"), "HTTP 502");
    }
}
