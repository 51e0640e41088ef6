//! A mock messaging platform for the SaaS APIs tests cannot reach (Amazon,
//! eBay, Meta, Telegram): an HTTP server on loopback that
//!
//! - accepts `POST /messages` (JSON `{to, subject, text, ...}` with an
//!   `Idempotency-Key` header) and records every accepted request, *without*
//!   deduplicating, so a reply sent twice shows up twice;
//! - enforces a token-bucket quota like the platforms do, answering 429 with
//!   `Retry-After` (whole seconds, as HTTP says) and counting those answers;
//! - answers `GET /messages/{key}` with the first message accepted under
//!   that key (200) or 404, which is what `check_sent` asks after a crash;
//! - refuses messages to chosen recipients with 400 and a reason, like a
//!   platform whose reply window has closed, or answers them with any other
//!   status (401, 503).
//!
//! It runs on its own thread and runtime, so plain `#[test]`s and benches
//! can use it, and stops on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::net::HttpServer;

/// A platform quota: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub per_second: f64,
    pub burst: f64,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub key: String,
    pub id: String,
    pub to: String,
    pub subject: Option<String>,
    pub text: String,
    pub at: Instant,
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug)]
struct Bucket {
    quota: Quota,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.quota.per_second).min(self.quota.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.quota.per_second,
            ))
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    bucket: Option<Bucket>,
    accepted: Vec<Accepted>,
    first_by_key: HashMap<String, usize>,
    rejected_429: u64,
    answers: HashMap<String, (u16, String)>,
    response_delay: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running mock. Stops when dropped.
pub struct MockPlatform {
    server: HttpServer,
    shared: Arc<Shared>,
}

impl MockPlatform {
    /// Starts the mock on 127.0.0.1 with an optional quota.
    pub fn start(quota: Option<Quota>) -> anyhow::Result<MockPlatform> {
        let shared = Arc::new(Shared::default());
        shared.lock().bucket = quota.map(|q| Bucket {
            quota: q,
            tokens: q.burst,
            last: Instant::now(),
        });
        let app = Router::new()
            .route("/messages", post(send))
            .route("/messages/{key}", get(lookup))
            .with_state(shared.clone());
        Ok(MockPlatform {
            server: HttpServer::serve(app)?,
            shared,
        })
    }

    /// Base URL, for `api_url` in the simulated instance's config.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Every accepted message, in order of arrival (duplicates included).
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.lock().accepted.clone()
    }

    /// How many messages were accepted (duplicates included): what a
    /// caller waiting for them polls, without copying them all each time
    /// while the mock's handlers wait for the lock.
    pub fn accepted_count(&self) -> usize {
        self.shared.lock().accepted.len()
    }

    /// How many times each idempotency key was accepted.
    pub fn counts_by_key(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for a in &self.shared.lock().accepted {
            *out.entry(a.key.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Accepted messages beyond the first for their key.
    pub fn duplicates(&self) -> usize {
        self.counts_by_key().values().map(|n| n - 1).sum()
    }

    /// How many requests were answered 429 (over the quota).
    pub fn rejected_429(&self) -> u64 {
        self.shared.lock().rejected_429
    }

    /// Messages to `to` are refused with 400 and `reason`.
    pub fn refuse_to(&self, to: &str, reason: &str) {
        self.answer_to(to, 400, reason);
    }

    /// Messages to `to` get HTTP `status` with `reason` and are not
    /// recorded (401 expired token, 503 maintenance, ...).
    pub fn answer_to(&self, to: &str, status: u16, reason: &str) {
        self.shared
            .lock()
            .answers
            .insert(to.to_owned(), (status, reason.to_owned()));
    }

    /// Messages to `to` are accepted again.
    pub fn clear_answer_to(&self, to: &str) {
        self.shared.lock().answers.remove(to);
    }

    /// Each accepted message is answered only after `delay`: the message is
    /// already recorded, so a client killed meanwhile never learns it went
    /// through (the case `check_sent` exists for).
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().response_delay = delay;
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn send(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| body["idempotency_key"].as_str().map(str::to_owned));
    let (Some(key), Some(to), Some(text)) = (key, body["to"].as_str(), body["text"].as_str())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "to, text and Idempotency-Key are required",
        );
    };
    let (id, delay) = {
        let mut inner = state.lock();
        if let Some(bucket) = inner.bucket.as_mut() {
            if let Err(wait) = bucket.take(Instant::now()) {
                inner.rejected_429 += 1;
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "quota exceeded");
                if let Ok(v) = secs.to_string().parse() {
                    resp.headers_mut().insert("retry-after", v);
                }
                return resp;
            }
        }
        if let Some((status, reason)) = inner.answers.get(to) {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &reason.clone());
        }
        let id = format!("mock-{}", inner.accepted.len() + 1);
        let index = inner.accepted.len();
        inner.first_by_key.entry(key.clone()).or_insert(index);
        inner.accepted.push(Accepted {
            key,
            id: id.clone(),
            to: to.to_owned(),
            subject: body["subject"].as_str().map(str::to_owned),
            text: text.to_owned(),
            at: Instant::now(),
            sent_at: chrono::Utc::now(),
        });
        (id, inner.response_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "sent_at": chrono::Utc::now().to_rfc3339() })),
    )
        .into_response()
}

async fn lookup(State(state): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    let inner = state.lock();
    match inner
        .first_by_key
        .get(&key)
        .and_then(|&i| inner.accepted.get(i))
    {
        Some(a) => Json(serde_json::json!({ "id": a.id, "sent_at": a.sent_at.to_rfc3339() }))
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "no message with this key"),
    }
}
