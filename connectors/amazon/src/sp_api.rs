//! Optional order enrichment through the Selling Partner API: a
//! Login-with-Amazon refresh token buys a one-hour access token (sent as
//! `x-amz-access-token`, no SigV4), and Orders API `getOrder` adds the
//! order's status, dates, total and buyer e-mail (`BuyerInfo.BuyerEmail`,
//! by which the daemon links a customer's identities) to buyer messages'
//! `meta.order`.
//!
//! Enrichment is best effort: a poll never fails because of it, and it
//! never exceeds the operation's usage plan (getOrder: 0.5 requests/s,
//! burst 30; a 429 carries no Retry-After, so we back off ourselves).

use std::collections::HashMap;
use std::time::Duration;

use hourglass_connector::limit::Limiter;
use hourglass_connector::secret::{ExposeSecret, SecretRef};
use hourglass_connector::{ConnectorError, Direction, Message, RateLimit};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// `[instances.sp_api]`: order enrichment for an Amazon instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpApiConfig {
    /// The regional SP-API endpoint
    /// (`https://sellingpartnerapi-eu.amazon.com`, `-na`, `-fe`).
    pub endpoint: String,
    /// The Login-with-Amazon token endpoint.
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// Seller Central's consent page, for `hourglass connectors authorize
    /// NAME` (the website authorization workflow).
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    /// The SP-API application id (`amzn1.sp.solution.…`), needed to
    /// connect the seller from hourglass.
    #[serde(default)]
    pub application_id: Option<String>,
    /// Send `version=beta` with the consent: an application still in
    /// draft (self-authorized) needs it.
    #[serde(default)]
    pub draft_app: bool,
    /// The LWA client id of the SP-API application.
    pub client_id: String,
    /// The LWA client secret, by reference (`env:NAME`, ...).
    pub client_secret: SecretRef,
    /// The seller's LWA refresh token, by reference.
    pub refresh_token: SecretRef,
    /// getOrder requests per second at most (the published usage plan).
    #[serde(default = "default_rate")]
    pub requests_per_second: f64,
    /// getOrder requests allowed in a burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Time one poll may spend enriching; orders left over stay plain.
    #[serde(default = "default_budget_secs")]
    pub poll_budget_secs: u64,
}

fn default_token_url() -> String {
    "https://api.amazon.com/auth/o2/token".to_owned()
}
fn default_authorize_url() -> String {
    "https://sellercentral.amazon.com/apps/authorize/consent".to_owned()
}
fn default_rate() -> f64 {
    0.5
}
fn default_burst() -> u32 {
    5
}
fn default_budget_secs() -> u64 {
    15
}

#[derive(Debug, Deserialize)]
struct LwaToken {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3600
}

struct State {
    token: Option<(SecretString, Instant)>,
    cache: HashMap<String, (Instant, Value)>,
}

/// An SP-API client for order enrichment.
pub struct SpApi {
    config: SpApiConfig,
    client_secret: SecretString,
    refresh_token: SecretString,
    http: reqwest::Client,
    /// getOrder's pace: `requests_per_second` and `burst`, paused after a
    /// 429.
    limiter: Limiter,
    state: Mutex<State>,
}

const CACHE_TTL: Duration = Duration::from_secs(3600);
const CACHE_MAX: usize = 10_000;
/// How long to pause after a 429, which comes without Retry-After.
const THROTTLE_PAUSE: Duration = Duration::from_secs(10);

impl SpApi {
    pub fn new(config: SpApiConfig) -> Result<SpApi, ConnectorError> {
        let secret = |r: &SecretRef, what: &str| {
            r.resolve()
                .map_err(|e| ConnectorError::Other(format!("SP-API {what}: {e}")))
        };
        let client_secret = secret(&config.client_secret, "client secret")?;
        let refresh_token = secret(&config.refresh_token, "refresh token")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ConnectorError::Other(format!("SP-API HTTP client: {e}")))?;
        let limiter = Limiter::new(Some(RateLimit {
            per_second: config.requests_per_second.max(0.001),
            burst: config.burst.max(1),
        }));
        Ok(SpApi {
            config,
            client_secret,
            refresh_token,
            http,
            limiter,
            state: Mutex::new(State {
                token: None,
                cache: HashMap::new(),
            }),
        })
    }

    async fn access_token(&self, state: &mut State) -> Result<SecretString, ConnectorError> {
        if let Some((token, until)) = &state.token {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let resp = self
            .http
            .post(&self.config.token_url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", self.refresh_token.expose_secret()),
                ("client_id", self.config.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!("LWA token request: {}", e.without_url()))
            })?;
        let status = resp.status();
        if status.as_u16() == 400 || status.as_u16() == 401 {
            return Err(ConnectorError::Auth(format!(
                "Login with Amazon refused the refresh token (HTTP {status})"
            )));
        }
        if !status.is_success() {
            return Err(ConnectorError::Transient(format!(
                "LWA token request: HTTP {status}"
            )));
        }
        let token: LwaToken = resp.json().await.map_err(|e| {
            ConnectorError::Transient(format!("LWA token response: {}", e.without_url()))
        })?;
        // Renew a minute early so a token never expires mid-request.
        let until = Instant::now() + Duration::from_secs(token.expires_in.saturating_sub(60));
        let secret = SecretString::from(token.access_token);
        state.token = Some((secret.clone(), until));
        Ok(secret)
    }

    /// getOrder, paced by the usage plan, cached for an hour.
    pub async fn order(
        &self,
        order_id: &str,
        deadline: Instant,
    ) -> Result<Option<Value>, ConnectorError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some((at, v)) = state.cache.get(order_id) {
            if now.saturating_duration_since(*at) < CACHE_TTL {
                return Ok(Some(v.clone()));
            }
        }
        if !self.limiter.acquire_before(deadline).await {
            return Ok(None);
        }
        let token = self.access_token(&mut state).await?;
        let url = format!(
            "{}/orders/v0/orders/{order_id}",
            self.config.endpoint.trim_end_matches('/')
        );
        let resp = self
            .http
            .get(&url)
            .header("x-amz-access-token", token.expose_secret())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("getOrder: {}", e.without_url())))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            404 => return Ok(None),
            429 => {
                self.limiter.pause_until(Instant::now() + THROTTLE_PAUSE);
                return Err(ConnectorError::RateLimited { retry_after: None });
            }
            401 | 403 => {
                state.token = None;
                return Err(ConnectorError::Auth(format!(
                    "getOrder refused: HTTP {status}"
                )));
            }
            _ => {
                return Err(ConnectorError::Transient(format!(
                    "getOrder: HTTP {status}"
                )))
            }
        }
        let body: Value = resp.json().await.map_err(|e| {
            ConnectorError::Transient(format!("getOrder response: {}", e.without_url()))
        })?;
        let Some(order) = summarize(&body) else {
            return Ok(None);
        };
        if state.cache.len() >= CACHE_MAX {
            state.cache.clear();
        }
        state
            .cache
            .insert(order_id.to_owned(), (Instant::now(), order.clone()));
        Ok(Some(order))
    }

    /// Adds `meta.order` to buyer messages with an order id, within the
    /// poll's time budget. Failures are logged, never returned.
    pub async fn enrich(&self, messages: &mut [Message]) {
        let deadline = Instant::now() + Duration::from_secs(self.config.poll_budget_secs);
        for m in messages.iter_mut() {
            if m.direction != Direction::Inbound {
                continue;
            }
            let Some(order_id) = m.order_id.clone() else {
                continue;
            };
            match self.order(&order_id, deadline).await {
                Ok(Some(order)) => {
                    if let Some(meta) = m.meta.as_object_mut() {
                        meta.insert("order".into(), order);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(order_id = %order_id, error = %e, "Order enrichment skipped.");
                    if matches!(
                        e,
                        ConnectorError::RateLimited { .. } | ConnectorError::Auth(_)
                    ) {
                        return;
                    }
                }
            }
        }
    }
}

/// The parts of a getOrder payload an agent looks at.
pub fn summarize(body: &Value) -> Option<Value> {
    let p = body.get("payload")?;
    let s = |k: &str| p.get(k).cloned().unwrap_or(Value::Null);
    Some(json!({
        "status": s("OrderStatus"),
        "purchase_date": s("PurchaseDate"),
        "latest_ship_date": s("LatestShipDate"),
        "latest_delivery_date": s("LatestDeliveryDate"),
        "fulfillment_channel": s("FulfillmentChannel"),
        "marketplace_id": s("MarketplaceId"),
        "total": p.get("OrderTotal").map(|t| json!({
            "amount": t.get("Amount").cloned().unwrap_or(Value::Null),
            "currency": t.get("CurrencyCode").cloned().unwrap_or(Value::Null),
        })),
        "is_prime": s("IsPrime"),
        "is_business_order": s("IsBusinessOrder"),
        // The buyer's (usually anonymized relay) address: the daemon links
        // the identities that wrote about this order by it. Restricted
        // data: absent unless the app holds the role.
        "buyer_email": p.get("BuyerInfo").and_then(|b| b.get("BuyerEmail")).cloned().unwrap_or(Value::Null),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_order_payload_is_summarized() {
        let body = json!({"payload": {
            "AmazonOrderId": "302-7654321-1234567",
            "PurchaseDate": "2026-11-18T10:00:00Z",
            "LastUpdateDate": "2026-11-19T10:00:00Z",
            "OrderStatus": "Shipped",
            "OrderTotal": {"CurrencyCode": "EUR", "Amount": "49.90"},
            "MarketplaceId": "A1PA6795UKMFR9",
            "BuyerInfo": {"BuyerEmail": "q7w8e9r0t1y2uio@marketplace.amazon.de"},
        }});
        let s = summarize(&body).unwrap();
        assert_eq!(s["buyer_email"], "q7w8e9r0t1y2uio@marketplace.amazon.de");
        assert_eq!(s["status"], "Shipped");
        assert_eq!(s["total"]["amount"], "49.90");
        assert_eq!(s["total"]["currency"], "EUR");
        assert_eq!(summarize(&json!({"errors": []})), None);
    }
}
