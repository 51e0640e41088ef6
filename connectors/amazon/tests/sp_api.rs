//! SP-API order enrichment against a mock shaped after the published
//! specs (ordersV0.json getOrder, Login with Amazon's token endpoint):
//! SP-API cannot be reached from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use hourglass_amazon::{AmazonConnector, SpApiConfig};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::{Connector, Cursors};
use hourglass_email::maildir::deliver;
use hourglass_email::MaildirConfig;
use serde_json::{json, Value};

#[derive(Default)]
struct Mock {
    token_requests: usize,
    order_requests: Vec<(Instant, String)>,
    throttle: bool,
}

type Shared = Arc<Mutex<Mock>>;

async fn token(
    State(_m): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    _m.lock().unwrap().token_requests += 1;
    let ok = form.get("grant_type").map(String::as_str) == Some("refresh_token")
        && form.get("refresh_token").map(String::as_str) == Some("Atzr|good")
        && form.get("client_id").map(String::as_str) == Some("amzn1.application-oa2-client.test")
        && form.get("client_secret").map(String::as_str) == Some("s3cret");
    if ok {
        (
            StatusCode::OK,
            Json(
                json!({"access_token": "Atza|access-1", "token_type": "bearer", "expires_in": 3600, "refresh_token": "Atzr|good"}),
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
    State(m): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    let mut m = m.lock().unwrap();
    m.order_requests.push((Instant::now(), id.clone()));
    let mut out = HeaderMap::new();
    out.insert("x-amzn-RateLimit-Limit", "0.5".parse().unwrap());
    if headers
        .get("x-amz-access-token")
        .and_then(|v| v.to_str().ok())
        != Some("Atza|access-1")
    {
        return (
            StatusCode::FORBIDDEN,
            out,
            Json(
                json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied."}]}),
            ),
        );
    }
    if m.throttle {
        // SP-API's 429 carries no Retry-After.
        return (
            StatusCode::TOO_MANY_REQUESTS,
            out,
            Json(
                json!({"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota for the requested resource."}]}),
            ),
        );
    }
    let payload = match id.as_str() {
        "302-7654321-1234567" => json!({
            "AmazonOrderId": id, "PurchaseDate": "2026-11-18T10:00:00Z",
            "LastUpdateDate": "2026-11-19T10:00:00Z", "OrderStatus": "Shipped",
            "OrderTotal": {"CurrencyCode": "EUR", "Amount": "49.90"},
            "MarketplaceId": "A1PA6795UKMFR9", "FulfillmentChannel": "MFN",
        }),
        "701-1234567-1234567" => json!({
            "AmazonOrderId": id, "PurchaseDate": "2026-11-15T10:00:00Z",
            "LastUpdateDate": "2026-11-16T10:00:00Z", "OrderStatus": "Unshipped",
            "OrderTotal": {"CurrencyCode": "BRL", "Amount": "199.00"},
            "MarketplaceId": "A2Q3Y263D00KWC",
        }),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                out,
                Json(json!({"errors": [{"code": "NotFound", "message": "Order not found"}]})),
            )
        }
    };
    (StatusCode::OK, out, Json(json!({"payload": payload})))
}

async fn start_mock() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/auth/o2/token", post(token))
        .route("/orders/v0/orders/{id}", get(order))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), state)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn connector(dir: &tempfile::TempDir, base: &str, refresh: &str) -> AmazonConnector {
    for f in [
        "de_de_latin1_qp.eml",
        "br_pt_utf8_qp.eml",
        "de_ro_cp1250_b64.eml",
        "uk_en_product_inquiry.eml",
    ] {
        deliver(dir.path(), &fixture(f)).unwrap();
    }
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("client"), "s3cret").unwrap();
    std::fs::write(secrets.join("refresh"), refresh).unwrap();
    let file = |n: &str| SecretRef::File(secrets.join(n).display().to_string());
    let maildir = MaildirConfig {
        path: dir.path().to_path_buf(),
        folders: Some(vec!["INBOX".into()]),
        sent_folder: None,
        own_addresses: vec![],
        fetch_batch: 200,
    };
    AmazonConnector::with_maildir("amazon-eu", maildir, None)
        .unwrap()
        .with_sp_api(SpApiConfig {
            endpoint: base.to_owned(),
            token_url: format!("{base}/auth/o2/token"),
            authorize_url: format!("{base}/apps/authorize/consent"),
            application_id: None,
            draft_app: false,
            client_id: "amzn1.application-oa2-client.test".into(),
            client_secret: file("client"),
            refresh_token: file("refresh"),
            requests_per_second: 2.0,
            burst: 1,
            poll_budget_secs: 15,
            marketplace_ids: vec![],
        })
        .unwrap()
}

#[tokio::test]
async fn buyer_messages_get_their_order_within_the_usage_plan() {
    let (base, mock) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let conn = connector(&dir, &base, "Atzr|good");

    let batch = conn.poll(&Cursors::new()).await.unwrap();
    let by_order = |o: &str| {
        batch
            .messages
            .iter()
            .find(|m| m.order_id.as_deref() == Some(o))
            .unwrap()
    };
    assert_eq!(
        by_order("302-7654321-1234567").meta["order"]["status"],
        "Shipped"
    );
    assert_eq!(
        by_order("302-7654321-1234567").meta["order"]["total"]["currency"],
        "EUR"
    );
    assert_eq!(
        by_order("701-1234567-1234567").meta["order"]["status"],
        "Unshipped"
    );
    // Unknown to the API: no order, no failure.
    assert!(by_order("305-1010101-2020202").meta.get("order").is_none());

    let m = mock.lock().unwrap();
    assert_eq!(m.token_requests, 1, "the access token is reused");
    assert_eq!(m.order_requests.len(), 3, "{:?}", m.order_requests);
    // Burst 1 at 2 requests/s: never two requests within 0.5 s.
    for pair in m.order_requests.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(450), "{gap:?}");
    }
}

#[tokio::test]
async fn a_refused_refresh_token_or_a_429_leaves_the_poll_intact() {
    let (base, mock) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let conn = connector(&dir, &base, "Atzr|revoked");
    let batch = conn.poll(&Cursors::new()).await.unwrap();
    assert_eq!(batch.messages.len(), 4);
    assert!(batch.messages.iter().all(|m| m.meta.get("order").is_none()));
    assert!(mock.lock().unwrap().order_requests.is_empty());

    let (base, mock) = start_mock().await;
    mock.lock().unwrap().throttle = true;
    let dir = tempfile::tempdir().unwrap();
    let conn = connector(&dir, &base, "Atzr|good");
    let batch = conn.poll(&Cursors::new()).await.unwrap();
    assert_eq!(batch.messages.len(), 4);
    // One 429 stops enrichment for this poll: no hammering.
    assert_eq!(mock.lock().unwrap().order_requests.len(), 1);
}
