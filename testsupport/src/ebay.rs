//! A mock of eBay's Commerce Message API (`commerce/message/v1`) and its
//! OAuth token endpoint, shaped after `../shared/specs/ebay/
//! commerce_message_v1_oas3.json`: the same paths, query parameters,
//! response schemas and error format
//! (`{"errors":[{"errorId","domain","category","message"}]}`).
//!
//! It validates every request against the spec (required parameters,
//! allowed values, `limit` ≤ 50, `offset` a multiple of `limit`, request
//! bodies) and records what does not conform in [`MockEbay::violations`],
//! answering 400 like eBay would. Conversations are listed newest first and
//! paged with `limit`/`offset`/`next`/`total`. Access tokens come from the
//! refresh-token grant (Basic auth with the app's keys, scope
//! `commerce.message`) and expire; faults (401, 429 with `Retry-After`,
//! 500, eBay error 2001, malformed JSON, slow answers) are injected on
//! command with [`MockEbay::inject`].
//!
//! Runs on its own thread and runtime, stops on drop.

// Handlers bail out with a ready axum Response; its size does not matter
// in a test mock.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::net::HttpServer;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// The app keys and the seller the mock knows.
pub const CLIENT_ID: &str = "MyShop-hourglass-PRD-0123456789";
pub const CLIENT_SECRET: &str = "PRD-0123456789ab-cert-s3cret";
pub const REFRESH_TOKEN: &str = "v^1.1#i^1#r^1#f^0#refresh-s3cret";
pub const SELLER: &str = "brightshop_de";
pub const SCOPE: &str = "https://api.ebay.com/oauth/api_scope/commerce.message";
const BASE: &str = "/commerce/message/v1";
const MAX_LIMIT: u64 = 50;
const DEFAULT_LIMIT: u64 = 25;

/// Which endpoint a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Token,
    GetConversations,
    GetConversation,
    SendMessage,
    UpdateConversation,
    /// Any Message API call (not the token endpoint).
    AnyApi,
}

/// What an injected fault does.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status and eBay's error body; `retry_after` in
    /// seconds sets `Retry-After`.
    Status {
        status: u16,
        error_id: u64,
        retry_after: Option<u64>,
    },
    /// Answer 200 with this body, which is not the documented JSON.
    Malformed(String),
    /// Expire every access token now: this request gets 401.
    ExpireTokens,
    /// Answer only after this long (the request is served normally).
    Delay(Duration),
    /// `send_message` and `update_conversation`: the request is served and recorded at once,
    /// the answer comes after this long. A client killed meanwhile never
    /// learns that it went through (what `check_sent` is for).
    SlowAnswer(Duration),
}

/// A fault for the `skip + 1`-th matching request from now on.
#[derive(Debug, Clone)]
pub struct Fault {
    pub route: Route,
    pub skip: usize,
    pub kind: FaultKind,
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Request {
    pub route: Route,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub marketplace: Option<String>,
    pub body: Option<Value>,
}

/// One message accepted by `send_message`.
#[derive(Debug, Clone)]
pub struct Sent {
    pub conversation_id: String,
    pub message_id: String,
    pub text: String,
}

#[derive(Debug, Clone)]
struct Msg {
    id: String,
    sender: String,
    recipient: String,
    body: String,
    subject: Option<String>,
    created: DateTime<Utc>,
    read: bool,
    media: Vec<Value>,
}

#[derive(Debug, Clone)]
struct Conv {
    id: String,
    kind: &'static str,
    title: String,
    reference: Option<(String, String)>,
    created: DateTime<Utc>,
    other: String,
    messages: Vec<Msg>,
}

impl Conv {
    fn latest(&self) -> Option<&Msg> {
        self.messages.iter().max_by_key(|m| m.created)
    }
}

struct Inner {
    convs: Vec<Conv>,
    next_id: u64,
    tokens: HashMap<String, Instant>,
    token_lifetime: u64,
    revoked: bool,
    /// The refresh token the token endpoint accepts.
    refresh_token: String,
    token_requests: usize,
    requests: Vec<Request>,
    violations: Vec<String>,
    faults: Vec<Fault>,
    sent: Vec<Sent>,
    consent: crate::consent::ConsentDesk,
    consents: usize,
    /// `refresh_token_expires_in` of granted tokens (eBay: 18 months).
    refresh_lifetime: i64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            convs: Vec::new(),
            next_id: 1,
            tokens: HashMap::new(),
            token_lifetime: 7200,
            revoked: false,
            refresh_token: REFRESH_TOKEN.to_owned(),
            token_requests: 0,
            requests: Vec::new(),
            violations: Vec::new(),
            faults: Vec::new(),
            sent: Vec::new(),
            consent: crate::consent::ConsentDesk::new(CLIENT_ID, false),
            consents: 0,
            refresh_lifetime: 47_304_000,
        }
    }
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running mock. Stops when dropped.
pub struct MockEbay {
    server: HttpServer,
    shared: Arc<Shared>,
}

impl MockEbay {
    /// Starts the mock on 127.0.0.1 with no conversations.
    pub fn start() -> anyhow::Result<MockEbay> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/identity/v1/oauth2/token", post(token))
            .route("/oauth2/authorize", get(authorize))
            .route(&format!("{BASE}/conversation"), get(get_conversations))
            .route(
                &format!("{BASE}/conversation/{{id}}"),
                get(get_conversation),
            )
            .route(&format!("{BASE}/send_message"), post(send_message))
            .route(
                &format!("{BASE}/update_conversation"),
                post(update_conversation),
            )
            .fallback(unknown_path)
            .with_state(shared.clone());
        Ok(MockEbay {
            server: HttpServer::serve(app)?,
            shared,
        })
    }

    /// `authorize_url` for the connector (eBay's consent page).
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth2/authorize", self.server.url())
    }

    /// Registers the application's RuName with its "auth accepted URL",
    /// as the developer console does.
    pub fn set_ru_name(&self, ru_name: &str, accept_url: &str) {
        self.shared.lock().consent.map_redirect(ru_name, accept_url);
    }

    /// The refresh token the mock accepts now (the last one granted).
    pub fn refresh_token(&self) -> String {
        self.shared.lock().refresh_token.clone()
    }

    /// The lifetime eBay gives refresh tokens it grants from now on, in
    /// seconds (18 months by default): a seller who consented long ago.
    pub fn set_refresh_token_lifetime(&self, secs: i64) {
        self.shared.lock().refresh_lifetime = secs;
    }

    /// Authorization codes exchanged for tokens so far.
    pub fn consents(&self) -> usize {
        self.shared.lock().consents
    }

    /// `api_url` for the connector.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// `token_url` for the connector.
    pub fn token_url(&self) -> String {
        format!("{}/identity/v1/oauth2/token", self.server.url())
    }

    /// A new buyer conversation, optionally about a listing (item id).
    pub fn add_conversation(&self, buyer: &str, item_id: Option<&str>, title: &str) -> String {
        self.add(buyer, "FROM_MEMBERS", item_id, title)
    }

    /// A conversation from eBay with one notice in it.
    pub fn add_ebay_notice(&self, title: &str, text: &str, at: DateTime<Utc>) -> String {
        let id = self.add("eBay", "FROM_EBAY", None, title);
        self.add_message(&id, "eBay", SELLER, text, at);
        id
    }

    fn add(&self, other: &str, kind: &'static str, item: Option<&str>, title: &str) -> String {
        let mut inner = self.shared.lock();
        let id = format!("{}", 1_000_000_000u64 + inner.next_id);
        inner.next_id += 1;
        inner.convs.push(Conv {
            id: id.clone(),
            kind,
            title: title.to_owned(),
            reference: item.map(|i| ("LISTING".to_owned(), i.to_owned())),
            created: Utc::now(),
            other: other.to_owned(),
            messages: Vec::new(),
        });
        id
    }

    /// The buyer of `conv` writes `text` at `at`.
    pub fn buyer_writes(&self, conv: &str, text: &str, at: DateTime<Utc>) -> String {
        let other = self.other_party(conv);
        self.add_message(conv, &other, SELLER, text, at)
    }

    /// The seller answers on eBay's site (not through hourglass).
    pub fn seller_writes(&self, conv: &str, text: &str, at: DateTime<Utc>) -> String {
        let other = self.other_party(conv);
        self.add_message(conv, SELLER, &other, text, at)
    }

    fn other_party(&self, conv: &str) -> String {
        self.shared
            .lock()
            .convs
            .iter()
            .find(|c| c.id == conv)
            .map(|c| c.other.clone())
            .unwrap_or_default()
    }

    /// Any message, with an exact body (HTML, media...).
    pub fn add_message(
        &self,
        conv: &str,
        sender: &str,
        recipient: &str,
        body: &str,
        at: DateTime<Utc>,
    ) -> String {
        self.add_message_with_media(conv, sender, recipient, body, at, Vec::new())
    }

    /// A message with `messageMedia` entries (`{"mediaName","mediaType","mediaUrl"}`).
    pub fn add_message_with_media(
        &self,
        conv: &str,
        sender: &str,
        recipient: &str,
        body: &str,
        at: DateTime<Utc>,
        media: Vec<Value>,
    ) -> String {
        let mut inner = self.shared.lock();
        let id = format!("{}", 5_000_000_000u64 + inner.next_id);
        inner.next_id += 1;
        if let Some(c) = inner.convs.iter_mut().find(|c| c.id == conv) {
            c.messages.push(Msg {
                id: id.clone(),
                sender: sender.to_owned(),
                recipient: recipient.to_owned(),
                body: body.to_owned(),
                subject: None,
                created: at,
                read: false,
                media,
            });
        }
        id
    }

    /// Queues a fault.
    pub fn inject(&self, route: Route, skip: usize, kind: FaultKind) {
        self.shared.lock().faults.push(Fault { route, skip, kind });
    }

    /// Every access token issued so far stops working.
    pub fn expire_tokens(&self) {
        for t in self.shared.lock().tokens.values_mut() {
            *t = Instant::now();
        }
    }

    /// The seller revoked the app (or 18 months passed): the refresh token
    /// gets `invalid_grant`, issued access tokens stop working.
    pub fn revoke_refresh_token(&self) {
        let mut inner = self.shared.lock();
        inner.revoked = true;
        inner.tokens.clear();
    }

    /// The seller signed in and consented again: `refresh_token` is the
    /// new refresh token, the old one stays refused.
    pub fn consent_again(&self, refresh_token: &str) {
        let mut inner = self.shared.lock();
        inner.revoked = false;
        inner.refresh_token = refresh_token.to_owned();
    }

    /// Lifetime of new access tokens (eBay: 7200 s).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.shared.lock().token_lifetime = secs;
    }

    /// How many times a token was requested.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }

    /// Every Message API request, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Message API requests to `route` so far.
    pub fn count(&self, route: Route) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| route == Route::AnyApi || r.route == route)
            .count()
    }

    /// Requests that did not conform to the spec.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Messages accepted by `send_message`, in order (duplicates included).
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.lock().sent.clone()
    }

    /// Whether the seller's copy of the conversation is read.
    pub fn is_read(&self, conv: &str) -> bool {
        self.shared
            .lock()
            .convs
            .iter()
            .find(|c| c.id == conv)
            .is_some_and(|c| c.messages.iter().all(|m| m.read))
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ebay_error(status: StatusCode, error_id: u64, category: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{
            "errorId": error_id,
            "domain": "API_MESSAGE",
            "category": category,
            "message": message,
        }]})),
    )
        .into_response()
}

fn message_json(m: &Msg) -> Value {
    let mut v = json!({
        "createdDate": ts(m.created),
        "messageBody": m.body,
        "messageId": m.id,
        "readStatus": m.read,
        "recipientUsername": m.recipient,
        "senderUsername": m.sender,
    });
    if let Some(s) = &m.subject {
        v["subject"] = json!(s);
    }
    if !m.media.is_empty() {
        v["messageMedia"] = json!(m.media);
    }
    v
}

/// Records the request, applies a due fault and checks the bearer token.
/// `Err(response)` ends the request there; `Ok(delay)` is how long the
/// answer must wait after the request was served.
async fn intake(state: &Shared, req: Request, headers: &HeaderMap) -> Result<Duration, Response> {
    let route = req.route;
    let (fault, violations) = {
        let mut inner = state.lock();
        let mut violations = Vec::new();
        if req.marketplace.is_none() {
            violations.push(format!("{}: no X-EBAY-C-MARKETPLACE-ID header", req.path));
        }
        inner.requests.push(req);
        let mut due = None;
        for (i, f) in inner.faults.iter_mut().enumerate() {
            if f.route == route || f.route == Route::AnyApi {
                if f.skip == 0 {
                    due = Some(i);
                    break;
                }
                f.skip -= 1;
            }
        }
        (due.map(|i| inner.faults.remove(i)), violations)
    };
    state.lock().violations.extend(violations);
    let mut slow = Duration::ZERO;
    match fault.map(|f| f.kind) {
        Some(FaultKind::Status {
            status,
            error_id,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let category = if status.is_server_error() {
                "APPLICATION"
            } else {
                "REQUEST"
            };
            let mut resp = ebay_error(status, error_id, category, "Injected fault.");
            if let Some(s) = retry_after {
                if let Ok(v) = s.to_string().parse() {
                    resp.headers_mut().insert("retry-after", v);
                }
            }
            return Err(resp);
        }
        Some(FaultKind::Malformed(body)) => {
            return Err(
                (StatusCode::OK, [("content-type", "application/json")], body).into_response(),
            )
        }
        Some(FaultKind::ExpireTokens) => {
            for t in state.lock().tokens.values_mut() {
                *t = Instant::now();
            }
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::SlowAnswer(d)) => slow = d,
        None => {}
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let valid = state
        .lock()
        .tokens
        .get(token)
        .is_some_and(|until| Instant::now() < *until);
    if !valid {
        return Err(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"errors": [{
                    "errorId": 1001,
                    "domain": "OAuth",
                    "category": "REQUEST",
                    "message": "Invalid access token",
                    "longMessage": "Invalid access token. Check the value of the Authorization HTTP request header."
                }]})),
            )
                .into_response(),
        );
    }
    Ok(slow)
}

fn violation(state: &Shared, status: StatusCode, error_id: u64, message: String) -> Response {
    state.lock().violations.push(message.clone());
    ebay_error(status, error_id, "REQUEST", &message)
}

fn marketplace(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-ebay-c-marketplace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn query_map(q: Vec<(String, String)>) -> BTreeMap<String, String> {
    q.into_iter().collect()
}

async fn token(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let form: HashMap<String, String> = form.into_iter().collect();
    let fault = {
        let mut inner = state.lock();
        inner.token_requests += 1;
        let mut due = None;
        for (i, f) in inner.faults.iter_mut().enumerate() {
            if f.route == Route::Token {
                if f.skip == 0 {
                    due = Some(i);
                    break;
                }
                f.skip -= 1;
            }
        }
        due.map(|i| inner.faults.remove(i))
    };
    if let Some(Fault {
        kind:
            FaultKind::Status {
                status,
                retry_after,
                ..
            },
        ..
    }) = fault
    {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            Json(json!({"error": "server_error", "error_description": "Injected fault."})),
        )
            .into_response();
        if let Some(s) = retry_after.and_then(|s| s.to_string().parse().ok()) {
            resp.headers_mut().insert("retry-after", s);
        }
        return resp;
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "client authentication failed"})),
        )
            .into_response();
    }
    if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        return code_grant(&state, &form);
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        state
            .lock()
            .violations
            .push(format!("token: grant_type is {:?}", form.get("grant_type")));
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "grant type in request is not supported by the authorization server"})),
        )
            .into_response();
    }
    let scopes_ok = form
        .get("scope")
        .is_some_and(|s| s.split(' ').any(|s| s == SCOPE));
    if !scopes_ok {
        state
            .lock()
            .violations
            .push(format!("token: scope is {:?}", form.get("scope")));
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_scope", "error_description": "The requested scope is invalid, unknown, malformed, or exceeds the scope granted to the client"})),
        )
            .into_response();
    }
    let mut inner = state.lock();
    if inner.revoked || form.get("refresh_token") != Some(&inner.refresh_token) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "the provided authorization refresh token is invalid or was issued to another client"})),
        )
            .into_response();
    }
    let n = inner.token_requests;
    let token = format!("v^1.1#i^1#p^3#I^3#access-{n}");
    let lifetime = inner.token_lifetime;
    inner.tokens.insert(
        token.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    Json(json!({
        "access_token": token,
        "expires_in": lifetime,
        "token_type": "User Access Token",
    }))
    .into_response()
}

/// eBay's consent page: `client_id`, `redirect_uri` (the RuName),
/// `response_type=code`, `scope`, `state`.
async fn authorize(
    State(state): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    state.lock().consent.authorize(&q, true)
}

/// The authorization code grant: the code once, with the same RuName.
/// The answer carries the 18-month refresh token.
fn code_grant(state: &Shared, form: &HashMap<String, String>) -> Response {
    let mut inner = state.lock();
    let code = form.get("code").map(String::as_str).unwrap_or("");
    let redirect = form.get("redirect_uri").map(String::as_str).unwrap_or("");
    if let Err(why) = inner.consent.redeem(code, redirect, None) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response();
    }
    inner.consents += 1;
    let n = inner.consents;
    let refresh = format!("v^1.1#i^1#r^1#f^0#consented-{n}-s3cret");
    inner.refresh_token = refresh.clone();
    inner.revoked = false;
    let access = format!("v^1.1#i^1#p^3#I^3#consent-access-{n}");
    let lifetime = inner.token_lifetime;
    inner.tokens.insert(
        access.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    Json(json!({
        "access_token": access,
        "expires_in": lifetime,
        "refresh_token": refresh,
        "refresh_token_expires_in": inner.refresh_lifetime,
        "token_type": "User Access Token",
    }))
    .into_response()
}

/// `limit` and `offset` as the spec says: limit 1..=50 (default 25),
/// offset ≥ 0 and a multiple of limit (error 355008).
fn paging(state: &Shared, q: &BTreeMap<String, String>) -> Result<(u64, u64), Response> {
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<u64>() {
            Ok(l) if (1..=MAX_LIMIT).contains(&l) => l,
            _ => {
                return Err(violation(
                    state,
                    StatusCode::BAD_REQUEST,
                    355009,
                    format!("Invalid limit {l:?}. The limit value must be a positive integer value that does not exceed {MAX_LIMIT}."),
                ))
            }
        },
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(o) => match o.parse::<u64>() {
            Ok(o) if o % limit == 0 => o,
            _ => {
                return Err(violation(
                    state,
                    StatusCode::BAD_REQUEST,
                    355008,
                    format!("Invalid offset {o:?}. The offset value must be a positive integer value and synchronized up with the limit value."),
                ))
            }
        },
    };
    Ok((limit, offset))
}

fn page_links(path: &str, base_query: &str, limit: u64, offset: u64, total: u64) -> Value {
    let href = |o: u64| format!("{path}?{base_query}limit={limit}&offset={o}");
    let mut v = json!({
        "href": href(offset),
        "limit": limit,
        "offset": offset,
        "total": total,
    });
    if offset + limit < total {
        v["next"] = json!(href(offset + limit));
    }
    if offset > 0 {
        v["prev"] = json!(href(offset.saturating_sub(limit)));
    }
    v
}

async fn get_conversations(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let q = query_map(q);
    let req = Request {
        route: Route::GetConversations,
        path: format!("{BASE}/conversation"),
        query: q.clone(),
        marketplace: marketplace(&headers),
        body: None,
    };
    let _slow = match intake(&state, req, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    const KNOWN: &[&str] = &[
        "conversation_status",
        "conversation_type",
        "end_time",
        "limit",
        "offset",
        "other_party_username",
        "reference_id",
        "reference_type",
        "start_time",
    ];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355017,
            format!("Unknown query parameter {k:?}."),
        );
    }
    let kind = match q.get("conversation_type").map(String::as_str) {
        Some("FROM_MEMBERS") => "FROM_MEMBERS",
        Some("FROM_EBAY") => "FROM_EBAY",
        other => {
            return violation(
                &state,
                StatusCode::BAD_REQUEST,
                355017,
                format!("The required conversation_type query parameter is either missing or has an invalid value ({other:?})."),
            )
        }
    };
    if let Some(s) = q.get("conversation_status") {
        if !["ACTIVE", "ARCHIVE", "DELETE", "READ", "UNREAD"].contains(&s.as_str()) {
            return violation(
                &state,
                StatusCode::BAD_REQUEST,
                355001,
                format!("Invalid conversation_status value {s:?}."),
            );
        }
    }
    let mut times = [None, None];
    for (i, key) in ["start_time", "end_time"].into_iter().enumerate() {
        if let Some(t) = q.get(key) {
            if kind != "FROM_MEMBERS" {
                return violation(
                    &state,
                    StatusCode::BAD_REQUEST,
                    355005,
                    format!("{key} is only available for FROM_MEMBERS."),
                );
            }
            match DateTime::parse_from_rfc3339(t) {
                Ok(t) => times[i] = Some(t.with_timezone(&Utc)),
                Err(_) => {
                    return violation(
                        &state,
                        StatusCode::BAD_REQUEST,
                        355005,
                        format!(
                            "Invalid date format {t:?}. Please use ISO 8601 dates with UTC offset."
                        ),
                    )
                }
            }
        }
    }
    if let [Some(s), Some(e)] = times {
        if s >= e {
            return violation(
                &state,
                StatusCode::BAD_REQUEST,
                355004,
                "The start_time must be an earlier date than end_time.".into(),
            );
        }
    }
    if q.contains_key("reference_id") && !q.contains_key("reference_type") {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355022,
            "The parameter reference_type is required whenever reference_id is provided.".into(),
        );
    }
    let (limit, offset) = match paging(&state, &q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let inner = state.lock();
    let mut convs: Vec<&Conv> = inner
        .convs
        .iter()
        .filter(|c| c.kind == kind && c.latest().is_some())
        .filter(|c| times[0].is_none_or(|s| c.latest().is_some_and(|m| m.created > s)))
        .filter(|c| times[1].is_none_or(|e| c.latest().is_some_and(|m| m.created < e)))
        .filter(|c| q.get("other_party_username").is_none_or(|u| &c.other == u))
        .filter(|c| {
            q.get("reference_id")
                .is_none_or(|r| c.reference.as_ref().is_some_and(|(_, id)| id == r))
        })
        .collect();
    // Newest first, as eBay's inbox.
    convs.sort_by(|a, b| {
        b.latest()
            .map(|m| m.created)
            .cmp(&a.latest().map(|m| m.created))
    });
    let total = convs.len() as u64;
    let page: Vec<Value> = convs
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|c| {
            let unread = c
                .messages
                .iter()
                .filter(|m| !m.read && m.sender != SELLER)
                .count();
            let mut v = json!({
                "conversationId": c.id,
                "conversationStatus": "ACTIVE",
                "conversationTitle": c.title,
                "conversationType": c.kind,
                "createdDate": ts(c.created),
                "latestMessage": c.latest().map(message_json),
                "unreadCount": unread,
            });
            if let Some((t, id)) = &c.reference {
                v["referenceType"] = json!(t);
                v["referenceId"] = json!(id);
            }
            v
        })
        .collect();
    let mut body = page_links(
        &format!("{BASE}/conversation"),
        &format!("conversation_type={kind}&"),
        limit,
        offset,
        total,
    );
    body["conversations"] = json!(page);
    Json(body).into_response()
}

async fn get_conversation(
    State(state): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let q = query_map(q);
    let req = Request {
        route: Route::GetConversation,
        path: format!("{BASE}/conversation/{id}"),
        query: q.clone(),
        marketplace: marketplace(&headers),
        body: None,
    };
    let _slow = match intake(&state, req, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Some(k) = q
        .keys()
        .find(|k| !["conversation_type", "limit", "offset"].contains(&k.as_str()))
    {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355017,
            format!("Unknown query parameter {k:?}."),
        );
    }
    let kind = q.get("conversation_type").cloned().unwrap_or_default();
    if kind != "FROM_MEMBERS" && kind != "FROM_EBAY" {
        return violation(&state, StatusCode::BAD_REQUEST, 355017, format!("The required conversation_type query parameter is either missing or has an invalid value ({kind:?})."));
    }
    let (limit, offset) = match paging(&state, &q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let inner = state.lock();
    let Some(c) = inner.convs.iter().find(|c| c.id == id && c.kind == kind) else {
        return ebay_error(
            StatusCode::BAD_REQUEST,
            355007,
            "REQUEST",
            "Invalid or unrecognized conversation_id value.",
        );
    };
    let mut messages: Vec<&Msg> = c.messages.iter().collect();
    messages.sort_by_key(|m| m.created);
    let total = messages.len() as u64;
    let page: Vec<Value> = messages
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|m| message_json(m))
        .collect();
    let mut body = page_links(
        &format!("{BASE}/conversation/{id}"),
        &format!("conversation_type={kind}&"),
        limit,
        offset,
        total,
    );
    body["conversationStatus"] = json!("ACTIVE");
    body["conversationTitle"] = json!(c.title);
    body["conversationType"] = json!(c.kind);
    body["messages"] = json!(page);
    Json(body).into_response()
}

fn json_body(
    state: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Result<Value, Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(violation(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            2003,
            format!("{path}: Content-Type is {ct:?}, not application/json."),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(violation(
            state,
            StatusCode::BAD_REQUEST,
            2004,
            format!("{path}: the body is not a JSON object."),
        )),
    }
}

async fn send_message(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&raw).ok();
    let req = Request {
        route: Route::SendMessage,
        path: format!("{BASE}/send_message"),
        query: BTreeMap::new(),
        marketplace: marketplace(&headers),
        body: parsed,
    };
    let slow = match intake(&state, req, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let body = match json_body(&state, &headers, &raw, "send_message") {
        Ok(b) => b,
        Err(r) => return r,
    };
    const KNOWN: &[&str] = &[
        "conversationId",
        "emailCopyToSender",
        "messageMedia",
        "messageText",
        "otherPartyUsername",
        "reference",
    ];
    if let Some(k) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| !KNOWN.contains(&k.as_str())))
    {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            2004,
            format!("send_message: unknown field {k:?}."),
        );
    }
    let text = body["messageText"].as_str().unwrap_or("").to_owned();
    let media = body["messageMedia"].as_array().cloned().unwrap_or_default();
    if text.chars().count() > 2000 {
        // A client that checks first never sees this.
        return violation(&state, StatusCode::BAD_REQUEST, 355013, "The messageText string exceeds the maximum character threshold of 2000. Please modify the message text to meet this requirement.".into());
    }
    if media.len() > 5 {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355010,
            "The maximum amount of media that may be sent is 5.".into(),
        );
    }
    if text.is_empty() && media.is_empty() {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355015,
            "Please pass message text or upload one of more media attachments.".into(),
        );
    }
    let resp = accept_message(&state, &body, text, media);
    if resp.status().is_success() && !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    resp
}

fn accept_message(state: &Shared, body: &Value, text: String, media: Vec<Value>) -> Response {
    let conv_id = body["conversationId"].as_str().map(str::to_owned);
    let other = body["otherPartyUsername"].as_str().map(str::to_owned);
    let mut inner = state.lock();
    let id = format!("{}", 5_000_000_000u64 + inner.next_id);
    inner.next_id += 1;
    let now = Utc::now();
    let conv_index = match (conv_id, other) {
        (Some(cid), _) => match inner
            .convs
            .iter()
            .position(|c| c.id == cid && c.kind == "FROM_MEMBERS")
        {
            Some(i) => i,
            None => {
                return ebay_error(
                    StatusCode::BAD_REQUEST,
                    355007,
                    "REQUEST",
                    "Invalid or unrecognized conversation_id value.",
                )
            }
        },
        (None, Some(user)) => {
            let cid = format!("{}", 1_000_000_000u64 + inner.next_id);
            inner.next_id += 1;
            let reference = body["reference"]["referenceId"]
                .as_str()
                .map(|r| ("LISTING".to_owned(), r.to_owned()));
            inner.convs.push(Conv {
                id: cid,
                kind: "FROM_MEMBERS",
                title: format!("Message to {user}"),
                reference,
                created: now,
                other: user,
                messages: Vec::new(),
            });
            inner.convs.len() - 1
        }
        (None, None) => {
            drop(inner);
            return violation(
                state,
                StatusCode::BAD_REQUEST,
                355018,
                "conversationId and otherPartyUsername cannot both be empty.".into(),
            );
        }
    };
    let conv = &mut inner.convs[conv_index];
    let msg = Msg {
        id: id.clone(),
        sender: SELLER.to_owned(),
        recipient: conv.other.clone(),
        body: text.clone(),
        subject: None,
        created: now,
        read: true,
        media: media.clone(),
    };
    let recipient = conv.other.clone();
    let cid = conv.id.clone();
    conv.messages.push(msg);
    inner.sent.push(Sent {
        conversation_id: cid,
        message_id: id.clone(),
        text: text.clone(),
    });
    let mut out = json!({
        "createdDate": ts(now),
        "messageBody": text,
        "messageId": id,
        "readStatus": false,
        "recipientUserName": recipient,
        "senderUserName": SELLER,
    });
    if !media.is_empty() {
        out["messageMedia"] = json!(media);
    }
    (StatusCode::CREATED, Json(out)).into_response()
}

async fn update_conversation(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&raw).ok();
    let req = Request {
        route: Route::UpdateConversation,
        path: format!("{BASE}/update_conversation"),
        query: BTreeMap::new(),
        marketplace: marketplace(&headers),
        body: parsed,
    };
    let slow = match intake(&state, req, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let body = match json_body(&state, &headers, &raw, "update_conversation") {
        Ok(b) => b,
        Err(r) => return r,
    };
    const KNOWN: &[&str] = &[
        "conversationId",
        "conversationStatus",
        "conversationType",
        "read",
    ];
    if let Some(k) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| !KNOWN.contains(&k.as_str())))
    {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            2004,
            format!("update_conversation: unknown field {k:?}."),
        );
    }
    let kind = body["conversationType"].as_str().unwrap_or("");
    if kind != "FROM_MEMBERS" && kind != "FROM_EBAY" {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355002,
            format!("Invalid conversationType value {kind:?}."),
        );
    }
    let Some(cid) = body["conversationId"].as_str() else {
        return violation(
            &state,
            StatusCode::BAD_REQUEST,
            355007,
            "Invalid or unrecognized conversation_id value.".into(),
        );
    };
    let resp = apply_update(&state, &body, kind, cid);
    if resp.status().is_success() && !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    resp
}

fn apply_update(state: &Shared, body: &Value, kind: &str, cid: &str) -> Response {
    let read = body["read"].as_bool();
    let mut inner = state.lock();
    let Some(c) = inner
        .convs
        .iter_mut()
        .find(|c| c.id == cid && c.kind == kind)
    else {
        return ebay_error(
            StatusCode::BAD_REQUEST,
            355007,
            "REQUEST",
            "Invalid or unrecognized conversation_id value.",
        );
    };
    if let Some(read) = read {
        for m in &mut c.messages {
            m.read = read;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn unknown_path(State(state): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    violation(
        &state,
        StatusCode::NOT_FOUND,
        2002,
        format!("No such resource: {uri}"),
    )
}
