//! The HTTP surface in the daemon (DESIGN §6 "HTTP"): the JSON API under
//! `/api/v1`, webhook intake at `/webhooks/{instance}`, `/metrics`,
//! `/healthz` and `/readyz`, and the web inbox.
//!
//! The server is a daemon worker: it starts with each config generation
//! and stops with it, so SIGHUP reloads its tokens and listen address and
//! SIGTERM drains it. [`router`] assembles the routes of each part:
//! - [`api`]: `/api/v1/...` and the OpenAPI document,
//! - [`webhooks`]: push intake, and the loop that turns stored deliveries
//!   into messages,
//! - [`metrics`] and [`health`],
//! - [`web`]: the server-rendered inbox (`/login`, `/threads`, ...).
//!
//! Handlers of every part call the operations on [`AppState`]
//! (`service.rs`), which return the view types of [`crate::view`].

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod health;
pub mod metrics;
pub mod service;
pub mod web;
pub mod webhooks;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{error, info};

use crate::config::Config;
use crate::daemon::{Context, Instance};
use crate::store::{SqlStore, Store};

pub use auth::Principal;
pub use config::{HttpConfig, Role};
pub use error::ApiError;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// The running instances (their connectors verify webhooks and check
    /// replies).
    pub instances: Arc<Vec<Instance>>,
    /// Wakes the webhook processor after a delivery is stored.
    pub webhook_stored: Arc<Notify>,
    /// Wakes whoever waits for new messages (the alert engine).
    pub ingested: Arc<Notify>,
    tokens: Vec<auth::KnownToken>,
    pub metrics: metrics::Metrics,
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The state of one generation of the daemon.
    pub fn new(ctx: &Context) -> AppState {
        AppState(Arc::new(Inner {
            tokens: auth::load_tokens(&ctx.config.http.tokens),
            config: ctx.config.clone(),
            store: ctx.store.clone(),
            instances: ctx.instances.clone(),
            webhook_stored: Arc::new(Notify::new()),
            ingested: ctx.ingested.clone(),
            metrics: metrics::Metrics::new(),
        }))
    }

    /// The caller behind a bearer token, if the token is configured.
    pub fn verify_token(&self, token: &str) -> Option<Principal> {
        auth::verify(&self.tokens, token)
    }

    /// The SQL store, for the HTTP surface's own tables.
    pub fn sql(&self) -> Result<&SqlStore, ApiError> {
        self.store
            .as_sql()
            .ok_or_else(|| ApiError::unavailable("this store keeps no HTTP state"))
    }

    /// A running instance by name.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.config.name() == name)
    }
}

/// Every route, with request logging, the body limit and the timeout.
pub fn router(state: AppState) -> Router {
    let http = &state.config.http;
    Router::new()
        .merge(api::routes())
        .merge(webhooks::routes())
        .merge(metrics::routes())
        .merge(health::routes())
        .merge(web::routes())
        .layer(RequestBodyLimitLayer::new(http.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            http.request_timeout.0,
        ))
        // Requests are logged at debug (`level = "info,tower_http=debug"`),
        // by method and path only: a query string may carry a secret
        // (Meta's hub.verify_token), and headers carry tokens.
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<axum::body::Body>| {
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
            },
        ))
        .with_state(state)
}

/// The daemon worker: the webhook processor always (deliveries stored
/// before a restart still need processing), the server when `[http]
/// listen` is set.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let state = AppState::new(&ctx);
        let processor = tokio::spawn(webhooks::process_loop(state.clone(), stop.clone()));
        if let Some(addr) = state.config.http.listen {
            serve(state, addr, stop.clone()).await;
        }
        stop.cancelled().await;
        let _ = processor.await;
    })
}

async fn serve(state: AppState, addr: SocketAddr, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %addr, error = %e, "Cannot listen for HTTP; the daemon runs on without its HTTP server.");
            return;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    info!(listen = %local, "HTTP server listening.");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        error!(error = %e, "The HTTP server failed.");
    }
    info!(listen = %local, "HTTP server stopped.");
}
