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
//!
//! The silent-channel watchdog counts orders with `getOrders`
//! ([`SpApi::count_orders`]): when SP-API shows new orders while no relay
//! mail arrives, Seller Central's notification setting is likely broken.
//! getOrders has its own usage plan (0.0167 requests/s, burst 20) and so
//! its own limiter.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
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
    /// The marketplaces whose orders the watchdog counts (getOrders
    /// `MarketplaceIds`; `A1PA6795UKMFR9` is amazon.de, `ATVPDKIKX0DER`
    /// amazon.com). Empty: relay mail is not checked against orders.
    #[serde(default)]
    pub marketplace_ids: Vec<String>,
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
    /// getOrders' pace: its own usage plan ([`ORDERS_QUOTA`]).
    orders_limiter: Limiter,
    state: Mutex<State>,
}

/// getOrders' published usage plan (ordersV0.json): 0.0167 requests/s
/// (one a minute), burst 20.
pub const ORDERS_QUOTA: RateLimit = RateLimit {
    per_second: 0.0167,
    burst: 20,
};
/// getOrders' largest page (`MaxResultsPerPage`, 1-100).
const ORDERS_PAGE: u32 = 100;

/// Orders counted by [`SpApi::count_orders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderCount {
    pub orders: u64,
    /// False when pages were left unread (the page limit, or the usage
    /// plan would not allow them before the deadline): `orders` is then
    /// a lower bound.
    pub complete: bool,
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
            orders_limiter: Limiter::new(Some(ORDERS_QUOTA)),
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

    /// The marketplaces configured for getOrders.
    pub fn marketplace_ids(&self) -> &[String] {
        &self.config.marketplace_ids
    }

    /// getOrders: the orders of the configured marketplaces created after
    /// `created_after` (and before `created_before`), following `NextToken`
    /// for at most `max_pages` pages, each paced by getOrders' usage plan
    /// and only when it can be made before `deadline`.
    ///
    /// Errors as ordersV0.json documents them: 400 `InvalidInput` (Other,
    /// naming Amazon's message), 403 `Unauthorized` (an expired access
    /// token is renewed once, then Auth), 429 `QuotaExceeded` (RateLimited
    /// with `Retry-After` when Amazon sends one; the limiter pauses either
    /// way), 5xx (Transient), a body that is not the documented JSON
    /// (BadData). Never a secret in an error.
    pub async fn count_orders(
        &self,
        created_after: DateTime<Utc>,
        created_before: Option<DateTime<Utc>>,
        max_pages: usize,
        deadline: Instant,
    ) -> Result<OrderCount, ConnectorError> {
        if self.config.marketplace_ids.is_empty() {
            return Err(ConnectorError::Other(
                "getOrders needs sp_api.marketplace_ids".to_owned(),
            ));
        }
        let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let marketplaces = self.config.marketplace_ids.join(",");
        let mut query = vec![
            ("MarketplaceIds", marketplaces.clone()),
            ("CreatedAfter", iso(created_after)),
            ("MaxResultsPerPage", ORDERS_PAGE.to_string()),
        ];
        if let Some(before) = created_before {
            query.push(("CreatedBefore", iso(before)));
        }
        let mut orders = 0u64;
        for _ in 0..max_pages {
            let Some(body) = self.orders_page(&query, deadline).await? else {
                return Ok(OrderCount {
                    orders,
                    complete: false,
                });
            };
            let page = parse_orders_page(&body)?;
            orders += page.orders;
            match page.next_token {
                // With NextToken, the other filters are those of the first
                // request; MarketplaceIds is still required.
                Some(token) => {
                    query = vec![
                        ("MarketplaceIds", marketplaces.clone()),
                        ("NextToken", token),
                    ];
                }
                None => {
                    return Ok(OrderCount {
                        orders,
                        complete: true,
                    })
                }
            }
        }
        Ok(OrderCount {
            orders,
            complete: false,
        })
    }

    /// One getOrders request; `None` when the usage plan allows none
    /// before `deadline`.
    async fn orders_page(
        &self,
        query: &[(&str, String)],
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        let url = format!(
            "{}/orders/v0/orders",
            self.config.endpoint.trim_end_matches('/')
        );
        let mut renewed = false;
        loop {
            if !self.orders_limiter.acquire_before(deadline).await {
                return Ok(None);
            }
            let token = {
                let mut state = self.state.lock().await;
                self.access_token(&mut state).await?
            };
            let resp = self
                .http
                .get(&url)
                .query(query)
                .header("x-amz-access-token", token.expose_secret())
                .header("accept", "application/json")
                .send()
                .await
                .map_err(|e| {
                    ConnectorError::Transient(format!("getOrders: {}", e.without_url()))
                })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp
                .bytes()
                .await
                .map_err(|e| {
                    ConnectorError::Transient(format!("getOrders response: {}", e.without_url()))
                })?
                .to_vec();
            match status {
                200 => return Ok(Some(body)),
                403 if !renewed => {
                    // An access token can expire (or be revoked) before
                    // its hour is up: renew it once.
                    self.state.lock().await.token = None;
                    renewed = true;
                }
                401 | 403 => {
                    self.state.lock().await.token = None;
                    return Err(ConnectorError::Auth(format!(
                        "getOrders refused: HTTP {status}{}",
                        amazon_error(&body)
                    )));
                }
                429 => {
                    let pause = retry_after.unwrap_or(THROTTLE_PAUSE);
                    self.orders_limiter.pause_until(Instant::now() + pause);
                    return Err(ConnectorError::RateLimited { retry_after });
                }
                400 | 404 => {
                    return Err(ConnectorError::Other(format!(
                        "getOrders refused the request: HTTP {status}{}",
                        amazon_error(&body)
                    )))
                }
                _ => {
                    return Err(ConnectorError::Transient(format!(
                        "getOrders: HTTP {status}{}",
                        amazon_error(&body)
                    )))
                }
            }
        }
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

/// One page of a getOrders answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrdersPage {
    pub orders: u64,
    pub next_token: Option<String>,
}

/// Reads a getOrders body (`{"payload": {"Orders": [...], "NextToken"}}`);
/// anything else is BadData saying what was wrong.
pub fn parse_orders_page(body: &[u8]) -> Result<OrdersPage, ConnectorError> {
    let bad = |reason: String| ConnectorError::BadData {
        reason,
        raw: body.to_vec(),
    };
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("getOrders answered a body that is not JSON: {e}")))?;
    let orders = v
        .get("payload")
        .and_then(|p| p.get("Orders"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("getOrders answered JSON without payload.Orders".to_owned()))?;
    let next_token = v["payload"]
        .get("NextToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok(OrdersPage {
        orders: orders.len() as u64,
        next_token,
    })
}

/// ` (InvalidInput: Invalid Input)` from SP-API's `{"errors": [...]}`,
/// else nothing.
fn amazon_error(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let Some(e) = v.get("errors").and_then(|e| e.get(0)) else {
        return String::new();
    };
    let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let message: String = field("message").chars().take(200).collect();
    format!(" ({}: {message})", field("code"))
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

    #[test]
    fn a_get_orders_page_is_counted_or_refused_clearly() {
        let page = parse_orders_page(
            br#"{"payload": {"Orders": [{"AmazonOrderId": "1"}, {"AmazonOrderId": "2"}], "NextToken": "abc"}}"#,
        )
        .unwrap();
        assert_eq!(
            page,
            OrdersPage {
                orders: 2,
                next_token: Some("abc".into())
            }
        );
        let last = parse_orders_page(br#"{"payload": {"Orders": [], "NextToken": ""}}"#).unwrap();
        assert_eq!(last.next_token, None, "an empty NextToken ends the pages");
        for (body, says) in [
            (&b"<html>Bad gateway</html>"[..], "not JSON"),
            (&br#"{"payload": {}}"#[..], "without payload.Orders"),
            (&br#"{"errors": []}"#[..], "without payload.Orders"),
        ] {
            match parse_orders_page(body) {
                Err(ConnectorError::BadData { reason, raw }) => {
                    assert!(reason.contains(says), "{reason}");
                    assert_eq!(raw, body);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            amazon_error(br#"{"errors": [{"code": "InvalidInput", "message": "Invalid Input"}]}"#),
            " (InvalidInput: Invalid Input)"
        );
        assert_eq!(amazon_error(b"nope"), "");
    }
}
