//! A mock of Login with Amazon for the SP-API website authorization
//! workflow: Seller Central's consent page (`/apps/authorize/consent`
//! with `application_id`, `state`, `redirect_uri`, `version=beta` for a
//! draft app) redirecting with `spapi_oauth_code`, `state` and
//! `selling_partner_id`, and the LWA token endpoint (`/auth/o2/token`,
//! `grant_type=authorization_code` with the client id and secret in the
//! form) answering `{"access_token", "refresh_token", "token_type",
//! "expires_in"}` once per code, `invalid_grant` after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::net::HttpServer;

pub const APPLICATION_ID: &str = "amzn1.sp.solution.0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
pub const CLIENT_ID: &str = "amzn1.application-oa2-client.0123456789abcdef";
pub const CLIENT_SECRET: &str = "amzn1.oa2-cs.v1.s3cret";
pub const SELLING_PARTNER: &str = "A3EXAMPLESELLER";

#[derive(Default)]
struct Inner {
    /// code → redirect_uri, used
    codes: HashMap<String, (String, bool)>,
    refresh_token: Option<String>,
    next: u64,
    draft_consents: usize,
}

/// The running mock. Stops when dropped.
pub struct MockLwa {
    server: HttpServer,
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MockLwa {
    pub fn start() -> anyhow::Result<MockLwa> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/apps/authorize/consent", get(consent))
            .route("/auth/o2/token", post(token))
            .with_state(inner.clone());
        Ok(MockLwa {
            server: HttpServer::serve(app)?,
            inner,
        })
    }

    /// `sp_api.authorize_url`.
    pub fn authorize_url(&self) -> String {
        format!("{}/apps/authorize/consent", self.server.url())
    }

    /// `sp_api.token_url`.
    pub fn token_url(&self) -> String {
        format!("{}/auth/o2/token", self.server.url())
    }

    /// The refresh token granted last.
    pub fn refresh_token(&self) -> Option<String> {
        lock(&self.inner).refresh_token.clone()
    }

    /// Consents given with `version=beta`.
    pub fn draft_consents(&self) -> usize {
        lock(&self.inner).draft_consents
    }
}

async fn consent(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("application_id") != APPLICATION_ID || get("state").is_empty() {
        return (StatusCode::BAD_REQUEST, "Unknown application or no state.").into_response();
    }
    let redirect = get("redirect_uri");
    if !redirect.starts_with("http") {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL.").into_response();
    }
    let mut i = lock(&inner);
    i.next += 1;
    if get("version") == "beta" {
        i.draft_consents += 1;
    }
    let code = format!("ANdNAVhyhqirUelHGEHA{}", i.next);
    i.codes.insert(code.clone(), (redirect.clone(), false));
    let state = get("state");
    let location = format!(
        "{redirect}?spapi_oauth_code={code}&state={state}&selling_partner_id={SELLING_PARTNER}"
    );
    (StatusCode::FOUND, [("location", location)]).into_response()
}

async fn token(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> Response {
    let form = crate::consent::parse_query(&String::from_utf8_lossy(&body));
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let bad = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return bad("invalid_client", "Client authentication failed");
    }
    if get("grant_type") != "authorization_code" {
        return bad("unsupported_grant_type", "Only authorization_code here");
    }
    let mut i = lock(&inner);
    let code = get("code");
    let redirect = get("redirect_uri");
    match i.codes.get_mut(&code) {
        Some((r, used)) if !*used && *r == redirect => *used = true,
        Some((_, true)) => {
            return bad(
                "invalid_grant",
                "The request has an invalid grant parameter : code (already used)",
            )
        }
        _ => {
            return bad(
                "invalid_grant",
                "The request has an invalid grant parameter : code",
            )
        }
    }
    let refresh = format!("Atzr|IwEBI-consented-{}", i.next);
    i.refresh_token = Some(refresh.clone());
    Json(json!({
        "access_token": format!("Atza|IwEBI-access-{}", i.next),
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": 3600,
    }))
    .into_response()
}
