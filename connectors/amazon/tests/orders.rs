//! getOrders (the silent-channel watchdog's order count) against the
//! SP-API mock shaped after ordersV0.json: filters, NextToken pages, the
//! usage plan's own limiter, and each documented error as a clear
//! `ConnectorError`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hourglass_amazon::sp_api::{OrderCount, SpApi, ORDERS_QUOTA};
use hourglass_amazon::SpApiConfig;
use hourglass_connector::secret::SecretRef;
use hourglass_connector::ConnectorError;
use hourglass_testsupport::spapi::{self, ListFailure, SpApiMock};
use tokio::time::Instant;

const DE: &str = "A1PA6795UKMFR9";
const FR: &str = "A13V1IB3VIYZZH";

fn client(mock: &SpApiMock, dir: &tempfile::TempDir, marketplaces: &[&str]) -> SpApi {
    std::fs::write(dir.path().join("secret"), spapi::CLIENT_SECRET).unwrap();
    std::fs::write(dir.path().join("refresh"), spapi::REFRESH_TOKEN).unwrap();
    let file = |n: &str| SecretRef::File(dir.path().join(n).display().to_string());
    SpApi::new(SpApiConfig {
        endpoint: mock.url().to_owned(),
        token_url: mock.token_url(),
        authorize_url: format!("{}/consent", mock.url()),
        application_id: None,
        draft_app: false,
        client_id: spapi::CLIENT_ID.into(),
        client_secret: file("secret"),
        refresh_token: file("refresh"),
        requests_per_second: 0.5,
        burst: 5,
        poll_budget_secs: 15,
        marketplace_ids: marketplaces.iter().map(|m| (*m).to_owned()).collect(),
    })
    .unwrap()
}

fn hours_ago(h: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(h)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// Orders in DE at 10, 9, ..., 1 hours ago, and three in FR.
fn shop() -> SpApiMock {
    let mock = SpApiMock::start().unwrap();
    for h in 1..=10 {
        mock.add_order_at(&format!("302-0000000-00000{h:02}"), DE, hours_ago(h));
    }
    for h in 1..=3 {
        mock.add_order_at(&format!("171-0000000-00000{h:02}"), FR, hours_ago(h));
    }
    mock
}

#[tokio::test]
async fn orders_are_counted_by_date_and_marketplace_across_pages() {
    let mock = shop();
    mock.set_page_size(3);
    let dir = tempfile::tempdir().unwrap();
    let api = client(&mock, &dir, &[DE]);

    // Created after 5h30 ago: 5, 4, 3, 2, 1 hours ago -> two pages of 3.
    let got = api
        .count_orders(
            hours_ago(5) - chrono::Duration::minutes(30),
            None,
            10,
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        OrderCount {
            orders: 5,
            complete: true
        }
    );
    assert_eq!(mock.list_requests(), 2, "NextToken followed once");

    // A window with an upper bound, over both marketplaces.
    let api2 = client(&mock, &dir, &[DE, FR]);
    let got = api2
        .count_orders(
            hours_ago(4) - chrono::Duration::minutes(30),
            Some(hours_ago(2) + chrono::Duration::minutes(30)),
            10,
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(got.orders, 3 + 2, "DE 4h, 3h, 2h ago; FR 3h, 2h ago");

    // Out of pages: a lower bound, said so.
    let got = api
        .count_orders(hours_ago(24), None, 2, soon())
        .await
        .unwrap();
    assert_eq!(
        got,
        OrderCount {
            orders: 6,
            complete: false
        }
    );
}

#[tokio::test]
async fn get_orders_keeps_to_its_own_usage_plan() {
    let mock = shop();
    mock.add_order_at("302-0000000-0000011", DE, hours_ago(11));
    mock.add_order_at("302-0000000-0000012", DE, hours_ago(12));
    mock.set_page_size(1);
    let dir = tempfile::tempdir().unwrap();
    let api = client(&mock, &dir, &[DE]);
    // 12 orders at one a page: the burst allows half of 20 at once, then
    // one a minute, which the deadline does not reach.
    let burst = ORDERS_QUOTA.burst.div_ceil(2) as u64;
    let got = api
        .count_orders(
            hours_ago(24),
            None,
            50,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        OrderCount {
            orders: burst,
            complete: false
        }
    );
    assert_eq!(mock.list_requests() as u64, burst);
    // getOrder's limiter is another: an order lookup is not held up.
    mock.add_order("302-7654321-1234567", None);
    let order = api
        .order(
            "302-7654321-1234567",
            Instant::now() + Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(order.is_some());
}

#[tokio::test]
async fn an_expired_access_token_is_renewed_once() {
    let mock = shop();
    let dir = tempfile::tempdir().unwrap();
    let api = client(&mock, &dir, &[DE]);
    mock.fail_list([ListFailure::ExpiredToken]);
    let got = api
        .count_orders(hours_ago(24), None, 5, soon())
        .await
        .unwrap();
    assert_eq!(got.orders, 10);
    assert_eq!(mock.token_requests(), 2, "one token, then a renewed one");
    assert_eq!(mock.list_requests(), 2);

    // Refused again with the renewed token: an Auth error, not a loop.
    mock.fail_list([ListFailure::ExpiredToken, ListFailure::ExpiredToken]);
    match api.count_orders(hours_ago(24), None, 5, soon()).await {
        Err(ConnectorError::Auth(m)) => {
            assert!(m.contains("HTTP 403"), "{m}");
            assert!(m.contains("Unauthorized"), "{m}");
            assert!(!m.contains("Atza|"), "no token in errors: {m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(mock.list_requests(), 4);
}

#[tokio::test]
async fn each_documented_error_is_a_clear_error() {
    let mock = shop();
    let dir = tempfile::tempdir().unwrap();
    let api = client(&mock, &dir, &[DE]);

    mock.fail_list([ListFailure::Throttled {
        retry_after: Some(2),
    }]);
    let err = api
        .count_orders(hours_ago(24), None, 5, soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(2)),
        "{err:?}"
    );
    // The pause holds the next request until Retry-After has passed.
    let started = Instant::now();
    let got = api
        .count_orders(hours_ago(24), None, 5, soon())
        .await
        .unwrap();
    assert_eq!(got.orders, 10);
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Without Retry-After (SP-API's usual 429), and the pause is ours: a
    // deadline before its end gives up without a request.
    mock.fail_list([ListFailure::Throttled { retry_after: None }]);
    let err = api
        .count_orders(hours_ago(24), None, 5, soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::RateLimited { retry_after: None }),
        "{err:?}"
    );
    let before = mock.list_requests();
    let got = api
        .count_orders(
            hours_ago(24),
            None,
            5,
            Instant::now() + Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        OrderCount {
            orders: 0,
            complete: false
        }
    );
    assert_eq!(mock.list_requests(), before);
}

#[tokio::test]
async fn server_errors_garbage_and_bad_input_are_errors_not_panics() {
    let mock = shop();
    let dir = tempfile::tempdir().unwrap();
    let api = client(&mock, &dir, &[DE]);

    mock.fail_list([ListFailure::ServerError]);
    match api.count_orders(hours_ago(24), None, 5, soon()).await {
        Err(ConnectorError::Transient(m)) => {
            assert!(m.contains("HTTP 500"), "{m}");
            assert!(m.contains("InternalFailure"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    mock.fail_list([ListFailure::Garbage]);
    match api.count_orders(hours_ago(24), None, 5, soon()).await {
        Err(ConnectorError::BadData { reason, .. }) => {
            assert!(
                reason.contains("getOrders answered a body that is not JSON"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A marketplace list the API refuses: the 400's message is named.
    let none = client(&mock, &dir, &[""]);
    match none.count_orders(hours_ago(24), None, 5, soon()).await {
        Err(ConnectorError::Other(m)) => {
            assert!(m.contains("HTTP 400"), "{m}");
            assert!(
                m.contains("InvalidInput: MarketplaceIds is required"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    let unset = client(&mock, &dir, &[]);
    match unset.count_orders(hours_ago(24), None, 5, soon()).await {
        Err(ConnectorError::Other(m)) => assert!(m.contains("sp_api.marketplace_ids"), "{m}"),
        other => panic!("{other:?}"),
    }
    // And the client still works afterwards.
    let got = api
        .count_orders(hours_ago(24), None, 5, soon())
        .await
        .unwrap();
    assert_eq!(got.orders, 10);
}
