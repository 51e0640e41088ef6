//! A mock Graph API and a client that delivers webhooks as Meta does.
//!
//! [`MockGraph`] follows Meta's documented payloads and error shapes:
//! - `POST /{page-id}/messages` (Send API: `recipient.id`,
//!   `messaging_type` RESPONSE | MESSAGE_TAG with `tag`, text ≤ 2,000)
//!   answers `{"recipient_id", "message_id"}`;
//! - `POST /{phone-number-id}/messages` (Cloud API: `messaging_product`,
//!   `to`, `type` text | template) answers `{"messaging_product",
//!   "contacts": [{"input", "wa_id"}], "messages": [{"id"}]}`;
//! - `GET /{page-id}/conversations?platform=&fields=&limit=&after=` and
//!   `GET /{conversation-id}/messages`, newest first, paged with
//!   `paging.cursors.after` and `paging.next`;
//! - `GET /{id}` for health checks;
//! - errors as `{"error": {"message", "type", "code", "error_subcode",
//!   "fbtrace_id"}}`: 190 for a wrong token, 100 for a bad parameter,
//!   scripted ones (613 throttling, 551, ...) on demand;
//! - `X-App-Usage` on every answer, settable.
//!
//! It records every request with its time, and counts reads faster than
//! the documented 2 calls/s per Page as violations.
//!
//! [`WebhookClient`] POSTs deliveries signed with `X-Hub-Signature-256`
//! (or wrongly signed, or changed after signing) and runs the GET
//! handshake. The builders below shape deliveries after Meta's
//! documented webhook payloads (Messenger `messaging`, WhatsApp `changes`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::net::HttpServer;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path after the version (`104857600000001/messages`).
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

/// A message stored in a mock conversation.
#[derive(Debug, Clone)]
struct ConvMessage {
    id: String,
    from: (String, String),
    text: String,
    at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Conversation {
    id: String,
    platform: String,
    customer: (String, String),
    messages: Vec<ConvMessage>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Vec<Request>,
    scripted: VecDeque<(u16, Value)>,
    conversations: Vec<Conversation>,
    next_id: u64,
    app_usage: Option<String>,
    login: Option<Login>,
}

/// Facebook Login for Business, when a test turns it on.
#[derive(Debug)]
struct Login {
    app_id: String,
    app_secret: String,
    desk: crate::consent::ConsentDesk,
    short_lived: Vec<String>,
    long_lived: Vec<String>,
    /// `(page id, subscribed_fields)` of each `POST /{page}/subscribed_apps`.
    subscribed: Vec<(String, String)>,
}

struct Shared {
    inner: Mutex<Inner>,
    token: String,
    own_id: String,
    own_name: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running mock. Stops when dropped.
pub struct MockGraph {
    url: String,
    shared: Arc<Shared>,
    _server: HttpServer,
}

/// Meta's error body.
pub fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Value {
    let mut e = json!({
        "message": message,
        "type": if code == 190 { "OAuthException" } else { "GraphMethodException" },
        "code": code,
        "fbtrace_id": "AbCdEfGhIjK",
    });
    if let Some(s) = subcode {
        e["error_subcode"] = json!(s);
    }
    json!({ "error": e })
}

impl MockGraph {
    /// Starts the mock on 127.0.0.1 for the Page, Instagram account or
    /// number `own_id`, accepting `token`.
    pub fn start(token: &str, own_id: &str) -> anyhow::Result<MockGraph> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                next_id: 1000,
                ..Inner::default()
            }),
            token: token.to_owned(),
            own_id: own_id.to_owned(),
            own_name: "Shop".to_owned(),
        });
        let server = HttpServer::serve(Router::new().fallback(handle).with_state(shared.clone()))?;
        Ok(MockGraph {
            url: format!("{}/v23.0", server.url()),
            _server: server,
            shared,
        })
    }

    /// Turns on Facebook Login for the app `app_id`: the consent dialog at
    /// `{url}/dialog/oauth`, the code and `fb_exchange_token` grants at
    /// `/oauth/access_token`, `/me/accounts` (the Page of this mock, whose
    /// token is the one the mock accepts, and another Page) and
    /// `POST /{page-id}/subscribed_apps`.
    pub fn enable_login(&self, app_id: &str, app_secret: &str) {
        self.shared.lock().login = Some(Login {
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
            desk: crate::consent::ConsentDesk::new(app_id, false),
            short_lived: Vec::new(),
            long_lived: Vec::new(),
            subscribed: Vec::new(),
        });
    }

    /// `authorize_url` for the connector (the Login dialog).
    pub fn authorize_url(&self) -> String {
        format!("{}/dialog/oauth", self.url)
    }

    /// The Pages subscribed to the app so far, with their fields.
    pub fn subscribed_apps(&self) -> Vec<(String, String)> {
        self.shared
            .lock()
            .login
            .as_ref()
            .map(|l| l.subscribed.clone())
            .unwrap_or_default()
    }

    /// Base URL with the version, for `api_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The message sends (`POST .../messages`) so far, their bodies.
    pub fn sent(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/messages"))
            .map(|r| r.body)
            .collect()
    }

    /// The next send is answered with `status` and `body` (an error from
    /// [`graph_error`]).
    pub fn script_send(&self, status: u16, body: Value) {
        self.shared.lock().scripted.push_back((status, body));
    }

    /// `X-App-Usage` on every answer from now on.
    pub fn set_app_usage(&self, usage: &str) {
        self.shared.lock().app_usage = Some(usage.to_owned());
    }

    /// A customer's message in a conversation the API can list (and no
    /// webhook delivered): what backfill must find. Returns its id.
    pub fn add_message(
        &self,
        platform: &str,
        customer: (&str, &str),
        from_customer: bool,
        text: &str,
        at: DateTime<Utc>,
    ) -> String {
        let mut i = self.shared.lock();
        i.next_id += 1;
        let id = format!("m_backfill_{}", i.next_id);
        let from = if from_customer {
            (customer.0.to_owned(), customer.1.to_owned())
        } else {
            (self.shared.own_id.clone(), self.shared.own_name.clone())
        };
        let conv_id = format!("t_{}", customer.0);
        let pos = i.conversations.iter().position(|c| c.id == conv_id);
        let m = ConvMessage {
            id: id.clone(),
            from,
            text: text.to_owned(),
            at,
        };
        match pos {
            Some(p) => i.conversations[p].messages.push(m),
            None => i.conversations.push(Conversation {
                id: conv_id,
                platform: platform.to_owned(),
                customer: (customer.0.to_owned(), customer.1.to_owned()),
                messages: vec![m],
            }),
        }
        id
    }

    /// Reads of conversations or messages that came faster than 2 per
    /// second (any 3 within one second).
    pub fn read_rate_violations(&self) -> usize {
        let reads: Vec<Instant> = self
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "GET"
                    && (r.path.ends_with("/conversations") || r.path.ends_with("/messages"))
            })
            .map(|r| r.at)
            .collect();
        reads
            .windows(3)
            .filter(|w| w[2].duration_since(w[0]) < Duration::from_millis(1000))
            .count()
    }
}

fn answer(state: &Shared, status: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let usage = state
        .lock()
        .app_usage
        .clone()
        .unwrap_or_else(|| r#"{"call_count":1,"total_cputime":1,"total_time":1}"#.to_owned());
    (code, [("x-app-usage", usage)], Json(body)).into_response()
}

/// The Login endpoints, when turned on; `None` for every other request.
fn login(
    state: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let q = crate::consent::parse_query(query);
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .unwrap_or_else(|| get("access_token"));
    let mut inner = state.lock();
    let own_id = state.own_id.clone();
    let page_token = state.token.clone();
    let own_name = state.own_name.clone();
    let l = inner.login.as_mut()?;
    let oauth_error = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": m, "type": "OAuthException", "code": 100, "fbtrace_id": "AbCdEf"}})),
        )
            .into_response()
    };
    let parts: Vec<&str> = path.split('/').collect();
    Some(match (method.as_str(), parts.as_slice()) {
        ("GET", ["dialog", "oauth"]) => l.desk.authorize(&q, false),
        ("GET", ["oauth", "access_token"]) => {
            if get("client_id") != l.app_id || get("client_secret") != l.app_secret {
                return Some(oauth_error("Error validating client secret."));
            }
            if get("grant_type") == "fb_exchange_token" {
                if !l.short_lived.contains(&get("fb_exchange_token")) {
                    return Some(oauth_error("Invalid OAuth access token."));
                }
                let long = format!("EAAlong{}", l.long_lived.len() + 1);
                l.long_lived.push(long.clone());
                Json(json!({"access_token": long, "token_type": "bearer", "expires_in": 5_183_944}))
                    .into_response()
            } else {
                match l.desk.redeem(&get("code"), &get("redirect_uri"), None) {
                    Ok(_) => {
                        let short = format!("EAAshort{}", l.short_lived.len() + 1);
                        l.short_lived.push(short.clone());
                        Json(json!({"access_token": short, "token_type": "bearer", "expires_in": 5_400}))
                            .into_response()
                    }
                    Err(why) => (
                        StatusCode::BAD_REQUEST,
                        Json(json!({"error": {"message": format!("{why} This authorization code has been used."), "type": "OAuthException", "code": 100, "error_subcode": 36009, "fbtrace_id": "AbCdEf"}})),
                    )
                        .into_response(),
                }
            }
        }
        ("GET", ["me", "accounts"]) => {
            if !l.long_lived.contains(&bearer) && !l.short_lived.contains(&bearer) {
                return Some(
                    (
                        StatusCode::BAD_REQUEST,
                        Json(graph_error(190, None, "Invalid OAuth access token.")),
                    )
                        .into_response(),
                );
            }
            Json(json!({
                "data": [
                    {"id": own_id, "name": own_name, "access_token": page_token, "category": "Shopping & retail", "tasks": ["MESSAGING", "MODERATE", "MANAGE"]},
                    {"id": "104857600000999", "name": "Other Page", "access_token": "EAAother", "category": "Community", "tasks": ["MESSAGING"]},
                ],
                "paging": {"cursors": {"before": "QVFI", "after": "QVFJ"}},
            }))
            .into_response()
        }
        ("POST", [page, "subscribed_apps"]) => {
            if *page != own_id || bearer != page_token {
                return Some(
                    (
                        StatusCode::BAD_REQUEST,
                        Json(graph_error(190, None, "Invalid OAuth access token.")),
                    )
                        .into_response(),
                );
            }
            l.subscribed
                .push((page.to_string(), get("subscribed_fields")));
            Json(json!({"success": true})).into_response()
        }
        _ => return None,
    })
}

fn bad(state: &Shared, message: &str) -> Response {
    answer(state, 400, graph_error(100, None, message))
}

fn graph_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+0000").to_string()
}

/// Pages `items` (newest first) at `limit` after the cursor `after` (an
/// index, as a string).
fn page(items: Vec<Value>, query: &BTreeMap<String, String>, base: &str) -> Value {
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25);
    let start: usize = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let end = items.len().min(start + limit);
    let data: Vec<Value> = items
        .get(start..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut paging =
        json!({ "cursors": { "before": start.to_string(), "after": end.to_string() } });
    if end < items.len() {
        paging["next"] = json!(format!("{base}?after={end}&limit={limit}"));
    }
    json!({ "data": data, "paging": paging })
}

async fn handle(
    State(state): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path()
        .trim_start_matches('/')
        .trim_start_matches("v23.0/")
        .to_owned();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((
                        k.to_owned(),
                        v.replace("%2C", ",")
                            .replace("%7B", "{")
                            .replace("%7D", "}"),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.lock().requests.push(Request {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: json_body.clone(),
        at: Instant::now(),
    });
    if let Some(r) = login(&state, &method, &path, uri.query().unwrap_or(""), &headers) {
        return r;
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", state.token) {
        return answer(
            &state,
            400,
            graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            ),
        );
    }
    let parts: Vec<&str> = path.split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", [id, "messages"]) if *id == state.own_id => {
            let scripted = state.lock().scripted.pop_front();
            if let Some((status, body)) = scripted {
                return answer(&state, status, body);
            }
            send(&state, &json_body)
        }
        ("GET", [id, "conversations"]) if *id == state.own_id => {
            let Some(platform) = query.get("platform") else {
                return bad(&state, "(#100) The parameter platform is required");
            };
            let mut convs = state.lock().conversations.clone();
            convs.retain(|c| &c.platform == platform);
            let updated = |c: &Conversation| c.messages.iter().map(|m| m.at).max();
            convs.sort_by_key(|c| std::cmp::Reverse(updated(c)));
            let items = convs
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "updated_time": updated(c).map(graph_time),
                        "participants": { "data": [
                            { "name": c.customer.1, "id": c.customer.0 },
                            { "name": state.own_name, "id": state.own_id },
                        ] }
                    })
                })
                .collect();
            answer(&state, 200, page(items, &query, &path))
        }
        ("GET", [conv, "messages"]) => {
            let conv = state
                .lock()
                .conversations
                .iter()
                .find(|c| c.id == *conv)
                .cloned();
            let Some(conv) = conv else {
                return answer(
                    &state,
                    400,
                    graph_error(
                        100,
                        Some(33),
                        "Unsupported get request. Object does not exist",
                    ),
                );
            };
            let mut msgs = conv.messages.clone();
            msgs.sort_by_key(|m| std::cmp::Reverse(m.at));
            let items = msgs
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id,
                        "created_time": graph_time(m.at),
                        "from": { "name": m.from.1, "id": m.from.0 },
                        "message": m.text,
                    })
                })
                .collect();
            answer(&state, 200, page(items, &query, &path))
        }
        ("GET", [id]) if *id == state.own_id => answer(
            &state,
            200,
            json!({ "id": state.own_id, "name": state.own_name }),
        ),
        _ => answer(
            &state,
            400,
            graph_error(
                100,
                Some(33),
                &format!("Unsupported {method} request. Object with ID '{path}' does not exist"),
            ),
        ),
    }
}

fn next_id(state: &Shared) -> u64 {
    let mut i = state.lock();
    i.next_id += 1;
    i.next_id
}

fn send(state: &Shared, body: &Value) -> Response {
    if body.get("messaging_product").is_some() {
        // Cloud API.
        if body["messaging_product"] != "whatsapp" {
            return bad(
                state,
                "(#100) Invalid parameter: messaging_product must be whatsapp",
            );
        }
        let Some(to) = body["to"].as_str() else {
            return bad(state, "(#100) The parameter to is required.");
        };
        match body["type"].as_str() {
            Some("text") => {
                let text = body["text"]["body"].as_str().unwrap_or("");
                if text.is_empty() || text.chars().count() > 4096 {
                    return bad(
                        state,
                        "(#100) Param text['body'] must be 1 to 4096 characters",
                    );
                }
            }
            Some("template") => {
                if body["template"]["name"].as_str().is_none()
                    || body["template"]["language"]["code"].as_str().is_none()
                {
                    return answer(
                        state,
                        400,
                        graph_error(
                            132001,
                            None,
                            "Template name does not exist in the translation",
                        ),
                    );
                }
            }
            _ => return bad(state, "(#100) Invalid parameter: type"),
        }
        let id = format!("wamid.HBgL{}", next_id(state));
        return answer(
            state,
            200,
            json!({
                "messaging_product": "whatsapp",
                "contacts": [{ "input": to, "wa_id": to }],
                "messages": [{ "id": id }]
            }),
        );
    }
    // Send API.
    let Some(recipient) = body["recipient"]["id"].as_str() else {
        return bad(state, "(#100) The parameter recipient is required");
    };
    match body["messaging_type"].as_str() {
        Some("RESPONSE") | Some("UPDATE") => {}
        Some("MESSAGE_TAG") => {
            if body["tag"].as_str().is_none() {
                return bad(
                    state,
                    "(#100) Tag is required for MESSAGE_TAG messaging type",
                );
            }
        }
        _ => {
            return bad(
                state,
                "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}",
            )
        }
    }
    let text = body["message"]["text"].as_str().unwrap_or("");
    if text.chars().count() > 2000 {
        return bad(
            state,
            "(#100) Length of param message[text] must be less than or equal to 2000",
        );
    }
    let id = format!("m_sent_{}", next_id(state));
    answer(
        state,
        200,
        json!({ "recipient_id": recipient, "message_id": id }),
    )
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers webhooks to `/webhooks/{instance}` as Meta does.
pub struct WebhookClient {
    url: String,
    secret: String,
    http: reqwest::blocking::Client,
}

impl WebhookClient {
    pub fn new(url: &str, app_secret: &str) -> WebhookClient {
        WebhookClient {
            url: url.to_owned(),
            secret: app_secret.to_owned(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
        }
    }

    /// POSTs `delivery` signed with the app secret; returns the status.
    pub fn deliver(&self, delivery: &Value) -> u16 {
        let body = delivery.to_string().into_bytes();
        let sig = sign(&self.secret, &body);
        self.deliver_raw(body, Some(&sig))
    }

    /// POSTs raw bytes with the given `X-Hub-Signature-256` (or none).
    pub fn deliver_raw(&self, body: Vec<u8>, signature: Option<&str>) -> u16 {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        req.send().map(|r| r.status().as_u16()).unwrap_or(0)
    }

    /// A delivery signed, then changed before it arrives.
    pub fn deliver_tampered(&self, delivery: &Value, change: impl Fn(String) -> String) -> u16 {
        let body = delivery.to_string();
        let sig = sign(&self.secret, body.as_bytes());
        self.deliver_raw(change(body).into_bytes(), Some(&sig))
    }

    /// The subscription handshake: status and body.
    pub fn handshake(&self, mode: &str, verify_token: &str, challenge: &str) -> (u16, String) {
        match self
            .http
            .get(&self.url)
            .query(&[
                ("hub.mode", mode),
                ("hub.verify_token", verify_token),
                ("hub.challenge", challenge),
            ])
            .send()
        {
            Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }
}

/// A Messenger or Instagram delivery (`object` "page" or "instagram"):
/// one entry per group of events, as Meta batches them.
pub fn page_delivery(object: &str, page_id: &str, entries: Vec<Vec<Value>>) -> Value {
    let now = Utc::now().timestamp_millis();
    json!({
        "object": object,
        "entry": entries.into_iter().map(|events| json!({
            "id": page_id, "time": now, "messaging": events
        })).collect::<Vec<_>>()
    })
}

/// A customer's text message to the Page.
pub fn customer_text(page_id: &str, psid: &str, mid: &str, text: &str, at: DateTime<Utc>) -> Value {
    json!({
        "sender": { "id": psid }, "recipient": { "id": page_id },
        "timestamp": at.timestamp_millis(),
        "message": { "mid": mid, "text": text }
    })
}

/// The Page's own message (sent from Meta Business Suite), echoed.
pub fn page_echo(page_id: &str, psid: &str, mid: &str, text: &str, at: DateTime<Utc>) -> Value {
    json!({
        "sender": { "id": page_id }, "recipient": { "id": psid },
        "timestamp": at.timestamp_millis(),
        "message": { "mid": mid, "is_echo": true, "app_id": 263_902_037_430_900_i64, "text": text }
    })
}

/// A WhatsApp Cloud API delivery with customer `messages` and
/// `statuses`.
pub fn whatsapp_delivery(
    phone_number_id: &str,
    contacts: &[(&str, &str)],
    messages: Vec<Value>,
    statuses: Vec<Value>,
) -> Value {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550001111", "phone_number_id": phone_number_id },
        "contacts": contacts.iter().map(|(wa_id, name)| json!({ "profile": { "name": name }, "wa_id": wa_id })).collect::<Vec<_>>(),
    });
    if !messages.is_empty() {
        value["messages"] = json!(messages);
    }
    if !statuses.is_empty() {
        value["statuses"] = json!(statuses);
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }]
    })
}

/// A customer's WhatsApp text.
pub fn whatsapp_text(wa_id: &str, wamid: &str, text: &str, at: DateTime<Utc>) -> Value {
    json!({ "from": wa_id, "id": wamid, "timestamp": at.timestamp().to_string(), "type": "text", "text": { "body": text } })
}

/// A status of a message the business sent; `failed` carries an error.
pub fn whatsapp_status(
    wamid: &str,
    wa_id: &str,
    status: &str,
    error: Option<(i64, &str, &str)>,
) -> Value {
    let mut s = json!({
        "id": wamid, "status": status, "timestamp": Utc::now().timestamp().to_string(),
        "recipient_id": wa_id
    });
    if let Some((code, title, details)) = error {
        s["errors"] = json!([{ "code": code, "title": title, "message": title, "error_data": { "details": details } }]);
    }
    s
}
