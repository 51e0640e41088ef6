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
//! - every getOrder request is counted per order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

use crate::net::HttpServer;

pub const CLIENT_ID: &str = "amzn1.application-oa2-client.test";
pub const CLIENT_SECRET: &str = "spapi-client-secret";
pub const REFRESH_TOKEN: &str = "Atzr|test-refresh";
const ACCESS_TOKEN: &str = "Atza|test-access";

#[derive(Default)]
struct Inner {
    orders: HashMap<String, Value>,
    requests: HashMap<String, usize>,
    throttle: bool,
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
    State(_shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let field = |k: &str| form.get(k).map(String::as_str);
    let ok = field("grant_type") == Some("refresh_token")
        && field("refresh_token") == Some(REFRESH_TOKEN)
        && field("client_id") == Some(CLIENT_ID)
        && field("client_secret") == Some(CLIENT_SECRET);
    if ok {
        (
            StatusCode::OK,
            Json(json!({"access_token": ACCESS_TOKEN, "token_type": "bearer", "expires_in": 3600})),
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
    if token != Some(ACCESS_TOKEN) {
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
