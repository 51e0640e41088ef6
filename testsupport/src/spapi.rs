//! A mock Selling Partner API for the daemon's order enrichment, shaped
//! after the published specs (`ordersV0.json` getOrder with `BuyerInfo`,
//! Login with Amazon's token endpoint): SP-API cannot be reached from
//! here.
//!
//! - `POST /auth/o2/token` (form: `grant_type=refresh_token`,
//!   `refresh_token`, `client_id`, `client_secret`) answers an access
//!   token, or 400 `invalid_grant` for anything else;
//! - `GET /orders/v0/orders/{id}` wants `x-amz-access-token`, answers the
//!   orders added with [`SpApiMock::add_order`] (403 `Unauthorized`
//!   without the token, 404 `NotFound` for unknown orders), carries
//!   `x-amzn-RateLimit-Limit`, and answers 429 `QuotaExceeded` without
//!   Retry-After while throttled, as SP-API does;
//! - every getOrder request is counted per order;
//! - `GET /orders/v0/orders` (getOrders) answers the orders whose
//!   `PurchaseDate` is within `CreatedAfter`/`CreatedBefore` (ISO 8601) and
//!   whose marketplace is among `MarketplaceIds` (comma-separated, required),
//!   oldest first, [`SpApiMock::set_page_size`] at a time with a
//!   `NextToken`; 400 `InvalidInput` for a missing or malformed parameter;
//!   and the failures queued with [`SpApiMock::fail_list`] (429 with or
//!   without Retry-After, 500, a body that is not JSON, an access token
//!   that expired: 403 `Unauthorized` until a new one is fetched).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::net::HttpServer;

pub const CLIENT_ID: &str = "amzn1.application-oa2-client.test";
pub const CLIENT_SECRET: &str = "spapi-client-secret";
pub const REFRESH_TOKEN: &str = "Atzr|test-refresh";
const ACCESS_TOKEN: &str = "Atza|test-access";

/// A failure getOrders answers instead of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFailure {
    /// 429 QuotaExceeded, with `Retry-After: N` when given.
    Throttled { retry_after: Option<u64> },
    /// 500 InternalFailure.
    ServerError,
    /// 200 with a body that is not JSON.
    Garbage,
    /// The access token expires: 403 Unauthorized, and a new token must
    /// be fetched.
    ExpiredToken,
}

#[derive(Default)]
struct Inner {
    orders: HashMap<String, Value>,
    requests: HashMap<String, usize>,
    throttle: bool,
    /// Bumped when the access token expires.
    token_generation: u32,
    token_requests: usize,
    list_requests: usize,
    /// getOrders requests (first pages) per marketplace named.
    list_requests_by_marketplace: HashMap<String, usize>,
    list_failures: VecDeque<ListFailure>,
    page_size: Option<usize>,
    /// NextToken to the order ids still to answer.
    pages: HashMap<String, Vec<String>>,
    next_page: usize,
}

impl Inner {
    fn access_token(&self) -> String {
        format!("{ACCESS_TOKEN}-{}", self.token_generation)
    }
}

#[derive(Default)]
struct Shared(Mutex<Inner>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The mock; stops on drop.
pub struct SpApiMock {
    server: HttpServer,
    shared: Arc<Shared>,
}

impl SpApiMock {
    pub fn start() -> anyhow::Result<SpApiMock> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/auth/o2/token", post(token))
            .route("/orders/v0/orders", get(orders))
            .route("/orders/v0/orders/{id}", get(order))
            .with_state(shared.clone());
        Ok(SpApiMock {
            server: HttpServer::serve(app)?,
            shared,
        })
    }

    /// The endpoint (`endpoint` in `[instances.sp_api]`).
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// The token URL (`token_url` in `[instances.sp_api]`).
    pub fn token_url(&self) -> String {
        format!("{}/auth/o2/token", self.server.url())
    }

    /// An order getOrder answers, with `BuyerInfo.BuyerEmail` when given.
    pub fn add_order(&self, id: &str, buyer_email: Option<&str>) {
        let mut payload = json!({
            "AmazonOrderId": id,
            "PurchaseDate": "2026-11-18T10:00:00Z",
            "LastUpdateDate": "2026-11-19T10:00:00Z",
            "OrderStatus": "Shipped",
            "FulfillmentChannel": "MFN",
            "OrderTotal": {"CurrencyCode": "EUR", "Amount": "49.90"},
            "MarketplaceId": "A1PA6795UKMFR9",
        });
        if let (Some(email), Some(obj)) = (buyer_email, payload.as_object_mut()) {
            obj.insert("BuyerInfo".into(), json!({ "BuyerEmail": email }));
        }
        self.shared.lock().orders.insert(id.to_owned(), payload);
    }

    /// An order created at `created` (its `PurchaseDate`) in marketplace
    /// `marketplace_id`, as getOrders and getOrder answer it.
    pub fn add_order_at(&self, id: &str, marketplace_id: &str, created: DateTime<Utc>) {
        let payload = json!({
            "AmazonOrderId": id,
            "PurchaseDate": created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "LastUpdateDate": created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "OrderStatus": "Unshipped",
            "FulfillmentChannel": "MFN",
            "OrderTotal": {"CurrencyCode": "EUR", "Amount": "19.90"},
            "MarketplaceId": marketplace_id,
        });
        self.shared.lock().orders.insert(id.to_owned(), payload);
    }

    /// Orders per getOrders page (default 100, the API's largest).
    pub fn set_page_size(&self, n: usize) {
        self.shared.lock().page_size = Some(n.max(1));
    }

    /// The next getOrders requests answer these failures, in order.
    pub fn fail_list(&self, failures: impl IntoIterator<Item = ListFailure>) {
        self.shared.lock().list_failures.extend(failures);
    }

    /// getOrders requests so far.
    pub fn list_requests(&self) -> usize {
        self.shared.lock().list_requests
    }

    /// getOrders first pages asked for `marketplace_id` so far.
    pub fn list_requests_for(&self, marketplace_id: &str) -> usize {
        self.shared
            .lock()
            .list_requests_by_marketplace
            .get(marketplace_id)
            .copied()
            .unwrap_or(0)
    }

    /// Access tokens handed out so far.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }

    /// getOrder requests for this order so far.
    pub fn order_requests(&self, id: &str) -> usize {
        self.shared.lock().requests.get(id).copied().unwrap_or(0)
    }

    /// While on, getOrder answers 429 QuotaExceeded.
    pub fn throttle(&self, on: bool) {
        self.shared.lock().throttle = on;
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let field = |k: &str| form.get(k).map(String::as_str);
    let ok = field("grant_type") == Some("refresh_token")
        && field("refresh_token") == Some(REFRESH_TOKEN)
        && field("client_id") == Some(CLIENT_ID)
        && field("client_secret") == Some(CLIENT_SECRET);
    if ok {
        let mut inner = shared.lock();
        inner.token_requests += 1;
        (
            StatusCode::OK,
            Json(
                json!({"access_token": inner.access_token(), "token_type": "bearer", "expires_in": 3600}),
            ),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": "invalid_grant", "error_description": "The request has an invalid grant parameter"}),
            ),
        )
    }
}

async fn order(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    let mut inner = shared.lock();
    *inner.requests.entry(id.clone()).or_default() += 1;
    let mut out = HeaderMap::new();
    out.insert(
        "x-amzn-RateLimit-Limit",
        axum::http::HeaderValue::from_static("0.5"),
    );
    let token = headers
        .get("x-amz-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(inner.access_token().as_str()) {
        return (
            StatusCode::FORBIDDEN,
            out,
            Json(
                json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied."}]}),
            ),
        );
    }
    if inner.throttle {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            out,
            Json(
                json!({"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota for the requested resource."}]}),
            ),
        );
    }
    match inner.orders.get(&id) {
        Some(payload) => (StatusCode::OK, out, Json(json!({ "payload": payload }))),
        None => (
            StatusCode::NOT_FOUND,
            out,
            Json(json!({"errors": [{"code": "NotFound", "message": "Order not found"}]})),
        ),
    }
}

fn errors(code: &str, message: &str) -> Json<Value> {
    Json(json!({"errors": [{"code": code, "message": message}]}))
}

fn purchase_date(order: &Value) -> Option<DateTime<Utc>> {
    order["PurchaseDate"]
        .as_str()
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc))
}

/// getOrders (ordersV0.json `GET /orders/v0/orders`).
async fn orders(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, String) {
    let mut inner = shared.lock();
    inner.list_requests += 1;
    let mut out = HeaderMap::new();
    out.insert(
        "x-amzn-RateLimit-Limit",
        axum::http::HeaderValue::from_static("0.0167"),
    );
    out.insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    let reply =
        |status: StatusCode, out: HeaderMap, body: Json<Value>| (status, out, body.0.to_string());
    let token = headers
        .get("x-amz-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(inner.access_token().as_str()) {
        return reply(
            StatusCode::FORBIDDEN,
            out,
            errors("Unauthorized", "Access to requested resource is denied."),
        );
    }
    match inner.list_failures.pop_front() {
        None => {}
        Some(ListFailure::Throttled { retry_after }) => {
            if let Some(secs) = retry_after {
                if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                    out.insert("retry-after", v);
                }
            }
            return reply(
                StatusCode::TOO_MANY_REQUESTS,
                out,
                errors(
                    "QuotaExceeded",
                    "You exceeded your quota for the requested resource.",
                ),
            );
        }
        Some(ListFailure::ServerError) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                out,
                errors(
                    "InternalFailure",
                    "We encountered an internal error. Please try again.",
                ),
            );
        }
        Some(ListFailure::Garbage) => {
            return (
                StatusCode::OK,
                out,
                "{\"payload\": {\"Orders\": [".to_owned(),
            );
        }
        Some(ListFailure::ExpiredToken) => {
            inner.token_generation += 1;
            return reply(
                StatusCode::FORBIDDEN,
                out,
                errors("Unauthorized", "The access token you provided has expired."),
            );
        }
    }
    let Some(marketplaces) = query.get("MarketplaceIds").filter(|m| !m.is_empty()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            out,
            errors("InvalidInput", "MarketplaceIds is required."),
        );
    };
    let marketplaces: Vec<&str> = marketplaces.split(',').map(str::trim).collect();
    if !query.contains_key("NextToken") {
        for m in &marketplaces {
            *inner
                .list_requests_by_marketplace
                .entry((*m).to_owned())
                .or_default() += 1;
        }
    }
    let ids = if let Some(next) = query.get("NextToken") {
        match inner.pages.remove(next) {
            Some(ids) => ids,
            None => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    out,
                    errors("InvalidInput", "Invalid NextToken."),
                )
            }
        }
    } else {
        let date = |k: &str| -> Result<Option<DateTime<Utc>>, String> {
            match query.get(k) {
                None => Ok(None),
                Some(v) => DateTime::parse_from_rfc3339(v)
                    .map(|d| Some(d.with_timezone(&Utc)))
                    .map_err(|_| format!("{k} is not an ISO 8601 date: {v}")),
            }
        };
        let (after, before) = match (date("CreatedAfter"), date("CreatedBefore")) {
            (Ok(Some(a)), Ok(b)) => (a, b),
            (Ok(None), _) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    out,
                    errors(
                        "InvalidInput",
                        "Either CreatedAfter or LastUpdatedAfter must be specified.",
                    ),
                )
            }
            (Err(e), _) | (_, Err(e)) => {
                return reply(StatusCode::BAD_REQUEST, out, errors("InvalidInput", &e))
            }
        };
        let mut matching: Vec<(DateTime<Utc>, String)> = inner
            .orders
            .iter()
            .filter(|(_, o)| {
                o["MarketplaceId"]
                    .as_str()
                    .is_some_and(|m| marketplaces.contains(&m))
            })
            .filter_map(|(id, o)| purchase_date(o).map(|d| (d, id.clone())))
            .filter(|(d, _)| *d >= after && before.is_none_or(|b| *d <= b))
            .collect();
        matching.sort();
        matching.into_iter().map(|(_, id)| id).collect()
    };
    let size = query
        .get("MaxResultsPerPage")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(100)
        .min(inner.page_size.unwrap_or(100));
    let (page, rest) = ids.split_at(size.min(ids.len()));
    let orders: Vec<Value> = page
        .iter()
        .filter_map(|id| inner.orders.get(id).cloned())
        .collect();
    let mut payload = json!({ "Orders": orders });
    if !rest.is_empty() {
        inner.next_page += 1;
        let token = format!("nt-{}", inner.next_page);
        inner.pages.insert(token.clone(), rest.to_vec());
        payload["NextToken"] = json!(token);
    }
    reply(StatusCode::OK, out, Json(json!({ "payload": payload })))
}
