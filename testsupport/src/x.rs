//! A mock X API v2 for direct messages, shaped after the published spec
//! (../shared/specs/x/openapi.json) and X's OAuth 2.0 documentation:
//!
//! - `GET /2/dm_events`: the seller's DM events newest first, paged with
//!   `max_results` (1-100) and an opaque `pagination_token` (`meta.next_token`),
//!   `includes.users` for `expansions=sender_id`, `event_types` honoured;
//! - `GET /2/dm_conversations/{id}/dm_events`, `GET /2/users/me`;
//! - `POST /2/dm_conversations/{id}/messages` → 201
//!   `{"data": {"dm_conversation_id", "dm_event_id"}}`;
//! - `POST /2/oauth2/token` with `grant_type=refresh_token`: the refresh
//!   token is single-use (X rotates it): the answer carries a new access
//!   and a new refresh token, and the old refresh token is refused
//!   (`400 invalid_request`) from then on;
//! - bearer tokens checked (401 with a problem JSON when unknown or
//!   expired); `x-rate-limit-limit/-remaining/-reset` on every answer, a
//!   scripted 429 (`{"title": "Too Many Requests", ...}`, reset header)
//!   and a malformed (non-JSON) body on demand.
//!
//! Every call is recorded, so tests can count what X would bill.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::net::HttpServer;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The app's OAuth 2.0 client id (a public client) the consent page knows.
pub const CLIENT_ID: &str = "aGVsbG8tY2xpZW50LWlk";

/// The seller's X user id in the mock.
pub const SELLER_ID: &str = "1500000000000000001";

/// One API call as the mock saw it.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub status: u16,
    /// Event ids answered (dm_events).
    pub returned: Vec<String>,
    /// When it came, in Unix milliseconds.
    pub at_ms: i64,
    /// The `x-rate-limit-reset` it answered with (Unix seconds).
    pub reset: i64,
}

/// A direct message the mock accepted.
#[derive(Debug, Clone)]
pub struct SentDm {
    pub conversation: String,
    pub text: String,
    pub event_id: String,
}

#[derive(Debug, Clone)]
struct Event {
    id: u64,
    conversation: String,
    sender: String,
    text: String,
    created_at: String,
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<Event>,
    users: HashMap<String, (String, String)>,
    next_id: u64,
    access_tokens: Vec<String>,
    refresh_token: String,
    used_refresh_tokens: Vec<String>,
    refreshes: usize,
    token_counter: u64,
    calls: Vec<ApiCall>,
    sent: Vec<SentDm>,
    /// Scripted answers for the next API calls: (status, reset in seconds).
    throttle: VecDeque<(u16, i64)>,
    garbage: usize,
    /// `x-rate-limit-remaining` to report (None: plenty).
    remaining: Option<(u32, i64)>,
    consent: crate::consent::ConsentDesk,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running mock. Stops when dropped.
pub struct MockX {
    server: HttpServer,
    shared: Arc<Shared>,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl MockX {
    /// Starts the mock; `refresh_token` is the one the seller configures.
    /// No access token is valid until a refresh.
    pub fn start(refresh_token: &str) -> anyhow::Result<MockX> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                refresh_token: refresh_token.to_owned(),
                next_id: 1_600_000_000_000_000_000,
                consent: crate::consent::ConsentDesk::new(CLIENT_ID, true),
                ..Inner::default()
            }),
        });
        shared.lock().users.insert(
            SELLER_ID.to_owned(),
            ("Maple Shop".to_owned(), "mapleshop".to_owned()),
        );
        let app = Router::new()
            .route("/2/dm_events", get(dm_events))
            .route("/2/users/me", get(users_me))
            .route(
                "/2/dm_conversations/{id}/dm_events",
                get(conversation_events),
            )
            .route("/2/dm_conversations/{id}/messages", post(send))
            .route("/2/oauth2/token", post(token))
            .route("/i/oauth2/authorize", get(authorize))
            .with_state(shared.clone());
        Ok(MockX {
            server: HttpServer::serve(app)?,
            shared,
        })
    }

    /// `authorize_url` for the connector (X's consent page).
    pub fn authorize_url(&self) -> String {
        format!("{}/i/oauth2/authorize", self.server.url())
    }

    /// The refresh token the mock accepts now.
    pub fn refresh_token(&self) -> String {
        self.shared.lock().refresh_token.clone()
    }

    /// Base URL, for `api_url`; the token endpoint is `{url}/2/oauth2/token`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// A customer writes to the seller; returns the event id.
    pub fn push_dm(&self, user_id: &str, name: &str, text: &str) -> String {
        let mut i = self.shared.lock();
        i.users
            .insert(user_id.to_owned(), (name.to_owned(), name.to_lowercase()));
        let conversation = conversation_id(user_id, SELLER_ID);
        push_event(&mut i, &conversation, user_id, text)
    }

    /// The seller answers from X itself (not through hourglass).
    pub fn push_seller_dm(&self, user_id: &str, text: &str) -> String {
        let mut i = self.shared.lock();
        let conversation = conversation_id(user_id, SELLER_ID);
        push_event(&mut i, &conversation, SELLER_ID, text)
    }

    /// Every API call so far (not the token endpoint).
    pub fn calls(&self) -> Vec<ApiCall> {
        self.shared.lock().calls.clone()
    }

    /// `GET /2/dm_events` calls so far.
    pub fn dm_event_calls(&self) -> Vec<ApiCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == "/2/dm_events")
            .collect()
    }

    /// Direct messages sent through the API.
    pub fn sent(&self) -> Vec<SentDm> {
        self.shared.lock().sent.clone()
    }

    /// Successful refresh grants so far.
    pub fn refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// The refresh token X accepts now (the newest one it issued).
    pub fn current_refresh_token(&self) -> String {
        self.shared.lock().refresh_token.clone()
    }

    /// Forgets every access token: the next call answers 401.
    pub fn expire_access_tokens(&self) {
        self.shared.lock().access_tokens.clear();
    }

    /// The next API call answers 429 with `x-rate-limit-reset` in
    /// `reset_in` seconds.
    pub fn throttle_next(&self, reset_in: i64) {
        self.shared.lock().throttle.push_back((429, reset_in));
    }

    /// Reports `x-rate-limit-remaining: remaining`, resetting in
    /// `reset_in` seconds, on every answer from now on.
    pub fn set_remaining(&self, remaining: u32, reset_in: i64) {
        self.shared.lock().remaining = Some((remaining, now_secs() + reset_in));
    }

    /// The next `n` API answers are not JSON.
    pub fn garbage(&self, n: usize) {
        self.shared.lock().garbage = n;
    }
}

/// X's one-to-one conversation id: the two user ids, lower first.
pub fn conversation_id(a: &str, b: &str) -> String {
    let (x, y): (u128, u128) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
    if x <= y {
        format!("{a}-{b}")
    } else {
        format!("{b}-{a}")
    }
}

fn push_event(i: &mut Inner, conversation: &str, sender: &str, text: &str) -> String {
    i.next_id += 1 + (i.next_id % 7);
    let id = i.next_id;
    i.events.push(Event {
        id,
        conversation: conversation.to_owned(),
        sender: sender.to_owned(),
        text: text.to_owned(),
        created_at: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
    });
    id.to_string()
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        Json(json!({
            "title": title,
            "detail": detail,
            "type": "about:blank",
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

/// Checks the bearer token and the scripted throttle; `Err` is the answer.
fn admit(shared: &Shared, headers: &HeaderMap, call: &mut ApiCall) -> Result<(), Box<Response>> {
    let mut i = shared.lock();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !i.access_tokens.iter().any(|t| t == bearer) {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        )));
    }
    if let Some((status, reset_in)) = i.throttle.pop_front() {
        let reset = now_secs() + reset_in;
        call.reset = reset;
        let body = json!({"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": status});
        return Err(Box::new(
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                [
                    ("x-rate-limit-limit", "15".to_owned()),
                    ("x-rate-limit-remaining", "0".to_owned()),
                    ("x-rate-limit-reset", reset.to_string()),
                ],
                Json(body),
            )
                .into_response(),
        ));
    }
    Ok(())
}

fn finish(shared: &Shared, call: ApiCall, status: StatusCode, body: Value) -> Response {
    let mut i = shared.lock();
    let (remaining, reset) = i.remaining.unwrap_or((299, now_secs() + 900));
    let mut call = call;
    call.status = status.as_u16();
    call.reset = reset;
    i.calls.push(call);
    let headers = [
        ("x-rate-limit-limit", "300".to_owned()),
        ("x-rate-limit-remaining", remaining.to_string()),
        ("x-rate-limit-reset", reset.to_string()),
    ];
    if i.garbage > 0 {
        i.garbage -= 1;
        return (status, headers, "<html><body>upstream hiccup</body></html>").into_response();
    }
    (status, headers, Json(body)).into_response()
}

fn record(method: &str, path: &str, query: &HashMap<String, String>) -> ApiCall {
    ApiCall {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.clone(),
        status: 0,
        returned: Vec::new(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        reset: 0,
    }
}

fn event_json(e: &Event) -> Value {
    json!({
        "id": e.id.to_string(),
        "event_type": "MessageCreate",
        "text": e.text,
        "created_at": e.created_at,
        "dm_conversation_id": e.conversation,
        "sender_id": e.sender,
    })
}

/// A page of `events` (newest first) from `query`.
fn page(i: &Inner, events: Vec<&Event>, query: &HashMap<String, String>) -> (Value, Vec<String>) {
    let max = query
        .get("max_results")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 100);
    let start = query
        .get("pagination_token")
        .and_then(|t| t.strip_prefix("PAGE"))
        .and_then(|t| t.trim_start_matches('0').parse::<usize>().ok())
        .unwrap_or(0);
    let mut sorted = events;
    sorted.sort_by_key(|e| std::cmp::Reverse(e.id));
    let slice: Vec<&Event> = sorted.iter().skip(start).take(max).copied().collect();
    let ids = slice.iter().map(|e| e.id.to_string()).collect();
    let mut users = Vec::new();
    for e in &slice {
        if let Some((name, username)) = i.users.get(&e.sender) {
            let u = json!({"id": e.sender, "name": name, "username": username});
            if !users.contains(&u) {
                users.push(u);
            }
        }
    }
    let mut meta = json!({"result_count": slice.len()});
    if start + slice.len() < sorted.len() {
        meta["next_token"] = json!(format!("PAGE{:016}", start + slice.len()));
    }
    let mut body = json!({
        "data": slice.iter().map(|e| event_json(e)).collect::<Vec<_>>(),
        "meta": meta,
    });
    if !users.is_empty() {
        body["includes"] = json!({"users": users});
    }
    if slice.is_empty() {
        body.as_object_mut().map(|o| o.remove("data"));
    }
    (body, ids)
}

async fn dm_events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut call = record("GET", "/2/dm_events", &query);
    if let Err(r) = admit(&shared, &headers, &mut call) {
        let mut i = shared.lock();
        call.status = r.status().as_u16();
        i.calls.push(call);
        return *r;
    }
    let (body, ids) = {
        let i = shared.lock();
        page(&i, i.events.iter().collect(), &query)
    };
    call.returned = ids;
    finish(&shared, call, StatusCode::OK, body)
}

async fn conversation_events(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut call = record(
        "GET",
        &format!("/2/dm_conversations/{id}/dm_events"),
        &query,
    );
    if let Err(r) = admit(&shared, &headers, &mut call) {
        call.status = r.status().as_u16();
        shared.lock().calls.push(call);
        return *r;
    }
    let (body, ids) = {
        let i = shared.lock();
        page(
            &i,
            i.events.iter().filter(|e| e.conversation == id).collect(),
            &query,
        )
    };
    call.returned = ids;
    finish(&shared, call, StatusCode::OK, body)
}

async fn users_me(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut call = record("GET", "/2/users/me", &HashMap::new());
    if let Err(r) = admit(&shared, &headers, &mut call) {
        call.status = r.status().as_u16();
        shared.lock().calls.push(call);
        return *r;
    }
    finish(
        &shared,
        call,
        StatusCode::OK,
        json!({"data": {"id": SELLER_ID, "name": "Maple Shop", "username": "mapleshop"}}),
    )
}

async fn send(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut call = record(
        "POST",
        &format!("/2/dm_conversations/{id}/messages"),
        &HashMap::new(),
    );
    if let Err(r) = admit(&shared, &headers, &mut call) {
        call.status = r.status().as_u16();
        shared.lock().calls.push(call);
        return *r;
    }
    let text = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("text").and_then(Value::as_str).map(str::to_owned));
    let Some(text) = text else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "One or more parameters to your request was invalid.",
        );
    };
    if !id.split('-').any(|p| p == SELLER_ID) {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "You are not a participant of this conversation.",
        );
    }
    let event_id = {
        let mut i = shared.lock();
        let event_id = push_event(&mut i, &id, SELLER_ID, &text);
        i.sent.push(SentDm {
            conversation: id.clone(),
            text,
            event_id: event_id.clone(),
        });
        event_id
    };
    finish(
        &shared,
        call,
        StatusCode::CREATED,
        json!({"data": {"dm_conversation_id": id, "dm_event_id": event_id}}),
    )
}

async fn token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url_form(&body);
    let mut i = shared.lock();
    let bad = |description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
            return bad("Missing valid authorization header or client_id.");
        }
        let code = form.get("code").map(String::as_str).unwrap_or("");
        let redirect = form.get("redirect_uri").map(String::as_str).unwrap_or("");
        let verifier = form.get("code_verifier").map(String::as_str);
        let issued = match i.consent.redeem(code, redirect, verifier) {
            Ok(issued) => issued,
            Err(why) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_grant", "error_description": why})),
                )
                    .into_response()
            }
        };
        i.token_counter += 1;
        let access = format!("xat-consent-{}-{}", i.token_counter, now_secs());
        let refresh = format!("xrt-consent-{}-{}", i.token_counter, now_secs());
        i.refresh_token = refresh.clone();
        i.access_tokens.push(access.clone());
        return Json(json!({
            "token_type": "bearer",
            "expires_in": 7200,
            "access_token": access,
            "scope": issued.scope,
            "refresh_token": refresh,
        }))
        .into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return bad("Missing required parameter [grant_type].");
    }
    let given = form.get("refresh_token").cloned().unwrap_or_default();
    if given != i.refresh_token {
        return bad("Value passed for the token was invalid.");
    }
    i.token_counter += 1;
    i.refreshes += 1;
    let access = format!("xat-{}-{}", i.token_counter, now_secs());
    let refresh = format!("xrt-{}-{}", i.token_counter, now_secs());
    i.used_refresh_tokens.push(given);
    i.refresh_token = refresh.clone();
    i.access_tokens.push(access.clone());
    Json(json!({
        "token_type": "bearer",
        "expires_in": 7200,
        "access_token": access,
        "scope": "dm.read dm.write tweet.read users.read offline.access",
        "refresh_token": refresh,
    }))
    .into_response()
}

/// X's consent page (`/i/oauth2/authorize`), with PKCE S256 required.
async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    shared.lock().consent.authorize(&q, false)
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
