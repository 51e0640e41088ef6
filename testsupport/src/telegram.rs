//! A mock Telegram Bot API, shaped after the published spec
//! (../shared/specs/telegram/api.json): methods at `/bot{token}/{method}`
//! taking a JSON body, answers `{"ok": true, "result": ...}` or
//! `{"ok": false, "error_code": ..., "description": ..., "parameters": ...}`.
//!
//! - `getUpdates`: an updates queue with Telegram's offset semantics (an
//!   offset confirms and forgets every update below it), `limit`,
//!   `allowed_updates` (remembered, as Telegram does), and long polling
//!   (`timeout` seconds, answered as soon as an update arrives);
//! - 409 while a webhook is set, or when another poller is simulated;
//! - `answerCallbackQuery` recorded (`push_callback` queues an inline
//!   button's press);
//! - `sendMessage` recorded, with scripted answers (429 with
//!   `parameters.retry_after`, 403 for chats that blocked the bot);
//! - `getMe`, `getWebhookInfo`, `setWebhook`, `deleteWebhook`;
//! - a malformed (non-JSON) answer on demand.
//!
//! Telegram keeps unconfirmed updates for 24 hours; this mock keeps them
//! until confirmed (no test runs for a day).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::net::HttpServer;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A `sendMessage` the mock accepted.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub chat_id: i64,
    pub text: String,
    pub message_id: i64,
    /// `reply_parameters.message_id`.
    pub reply_to_message_id: Option<i64>,
    pub business_connection_id: Option<String>,
    /// `reply_markup` (an inline keyboard), as sent.
    pub reply_markup: Option<Value>,
}

/// An `answerCallbackQuery` the mock accepted.
#[derive(Debug, Clone)]
pub struct CallbackAnswer {
    pub callback_query_id: String,
    pub text: Option<String>,
}

/// One `getUpdates` call as the mock saw it.
#[derive(Debug, Clone)]
pub struct UpdatesCall {
    pub offset: Option<i64>,
    /// The update ids it answered with.
    pub returned: Vec<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Unconfirmed updates, in order.
    pending: Vec<(i64, Value)>,
    next_update_id: i64,
    next_message_id: i64,
    /// Update ids confirmed (and forgotten) by a later offset.
    confirmed: Vec<i64>,
    calls: Vec<UpdatesCall>,
    /// Long polls waiting right now.
    waiting: usize,
    allowed_updates: Option<Vec<String>>,
    webhook_url: String,
    webhook_secret: Option<String>,
    webhook_allowed: Option<Vec<String>>,
    webhook_error: Option<(i64, String)>,
    other_poller: bool,
    garbage: usize,
    send_answers: VecDeque<(u16, Value)>,
    blocked: HashSet<i64>,
    sent: Vec<SentMessage>,
    answered: Vec<CallbackAnswer>,
    next_callback: i64,
    /// When each pushed message was sent, for its edits.
    dates: std::collections::HashMap<i64, i64>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
    token: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running mock. Stops when dropped.
pub struct MockBotApi {
    server: HttpServer,
    shared: Arc<Shared>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl MockBotApi {
    /// Starts the mock on 127.0.0.1 for the bot `token`.
    pub fn start(token: &str) -> anyhow::Result<MockBotApi> {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            ..Shared::default()
        });
        {
            let mut i = shared.lock();
            i.next_update_id = 815_000_000;
            i.next_message_id = 100;
        }
        let app = Router::new()
            .route("/{bot}/{method}", post(method).get(method_get))
            .with_state(shared.clone());
        Ok(MockBotApi {
            server: HttpServer::serve(app)?,
            shared,
        })
    }

    /// Base URL, for `api_url`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Queues an update (`update_id` is added); returns its id.
    pub fn push_update(&self, mut update: Value) -> i64 {
        let id = {
            let mut i = self.shared.lock();
            for kind in ["message", "business_message"] {
                if let (Some(m), Some(d)) = (
                    update[kind]["message_id"].as_i64(),
                    update[kind]["date"].as_i64(),
                ) {
                    i.dates.insert(m, d);
                }
            }
            let id = i.next_update_id;
            i.next_update_id += 1;
            update["update_id"] = json!(id);
            i.pending.push((id, update));
            id
        };
        self.shared.changed.notify_waiters();
        id
    }

    fn next_message_id(&self) -> i64 {
        let mut i = self.shared.lock();
        i.next_message_id += 1;
        i.next_message_id
    }

    /// A customer (user id = chat id) writes to the bot. Returns
    /// `(update_id, message_id)`.
    pub fn push_message(&self, chat_id: i64, first_name: &str, text: &str) -> (i64, i64) {
        let message_id = self.next_message_id();
        let update =
            json!({ "message": private_message(chat_id, chat_id, first_name, message_id, text) });
        (self.push_update(update), message_id)
    }

    /// The customer edits message `message_id` to `text`: the update
    /// carries the message's original date and an `edit_date`.
    pub fn push_edit(&self, chat_id: i64, first_name: &str, message_id: i64, text: &str) -> i64 {
        let mut m = private_message(chat_id, chat_id, first_name, message_id, text);
        if let Some(date) = self.shared.lock().dates.get(&message_id) {
            m["date"] = json!(date);
        }
        m["edit_date"] = json!(now());
        self.push_update(json!({ "edited_message": m }))
    }

    /// A message in the seller's Telegram Business chat with `chat_id`,
    /// written by `from_id` (the customer when equal to `chat_id`).
    pub fn push_business_message(
        &self,
        connection: &str,
        chat_id: i64,
        from_id: i64,
        first_name: &str,
        text: &str,
    ) -> (i64, i64) {
        let message_id = self.next_message_id();
        let mut m = private_message(chat_id, from_id, first_name, message_id, text);
        m["business_connection_id"] = json!(connection);
        (
            self.push_update(json!({ "business_message": m })),
            message_id,
        )
    }

    /// `from` (user id, first name, username) pressed the inline button
    /// carrying `data` under message `message_id` in chat `chat_id`.
    /// Returns the update id.
    pub fn push_callback(
        &self,
        chat_id: i64,
        from: (i64, &str, &str),
        message_id: i64,
        data: &str,
    ) -> i64 {
        let id = {
            let mut i = self.shared.lock();
            i.next_callback += 1;
            format!("{}", 4_400_000_000_000_000_000i64 + i.next_callback)
        };
        let (from_id, first_name, username) = from;
        self.push_update(json!({
            "callback_query": {
                "id": id,
                "from": { "id": from_id, "is_bot": false, "first_name": first_name, "username": username },
                "message": {
                    "message_id": message_id,
                    "date": now(),
                    "chat": { "id": chat_id, "type": "supergroup", "title": "Agents" },
                    "text": "(the alert)"
                },
                "chat_instance": "-7312398123",
                "data": data
            }
        }))
    }

    /// Every accepted answerCallbackQuery.
    pub fn answered(&self) -> Vec<CallbackAnswer> {
        self.shared.lock().answered.clone()
    }

    /// Every `getUpdates` call so far.
    pub fn calls(&self) -> Vec<UpdatesCall> {
        self.shared.lock().calls.clone()
    }

    /// Update ids confirmed by a later offset (Telegram has forgotten them).
    pub fn confirmed(&self) -> Vec<i64> {
        self.shared.lock().confirmed.clone()
    }

    /// Updates not yet confirmed.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Long polls waiting right now.
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }

    /// The `allowed_updates` the last poller asked for.
    pub fn allowed_updates(&self) -> Option<Vec<String>> {
        self.shared.lock().allowed_updates.clone()
    }

    /// The webhook set with `setWebhook`: its URL and `secret_token`.
    pub fn webhook(&self) -> (String, Option<String>) {
        let i = self.shared.lock();
        (i.webhook_url.clone(), i.webhook_secret.clone())
    }

    /// Telegram's last failed delivery to the webhook, as getWebhookInfo
    /// reports it (`last_error_date`, `last_error_message`).
    pub fn set_webhook_error(&self, date: i64, message: &str) {
        self.shared.lock().webhook_error = Some((date, message.to_owned()));
    }

    /// Sets (or, with "", deletes) the webhook: getUpdates then answers 409.
    pub fn set_webhook(&self, url: &str) {
        self.shared.lock().webhook_url = url.to_owned();
        self.shared.changed.notify_waiters();
    }

    /// Another program polls the same bot: getUpdates answers 409.
    pub fn set_other_poller(&self, on: bool) {
        self.shared.lock().other_poller = on;
        self.shared.changed.notify_waiters();
    }

    /// The next `n` calls of any method get a non-JSON answer.
    pub fn answer_garbage(&self, n: usize) {
        self.shared.lock().garbage = n;
    }

    /// The next sendMessage gets HTTP `status` with this Bot API body.
    pub fn script_send(&self, status: u16, body: Value) {
        self.shared.lock().send_answers.push_back((status, body));
    }

    /// The next sendMessage is refused with 429 and `retry_after` seconds.
    pub fn flood_wait(&self, retry_after: u64) {
        self.script_send(
            429,
            json!({
                "ok": false, "error_code": 429,
                "description": format!("Too Many Requests: retry after {retry_after}"),
                "parameters": { "retry_after": retry_after }
            }),
        );
    }

    /// The user of `chat_id` blocked the bot: messages to them get 403.
    pub fn block(&self, chat_id: i64) {
        self.shared.lock().blocked.insert(chat_id);
    }

    /// Every accepted sendMessage.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.lock().sent.clone()
    }
}

fn private_message(
    chat_id: i64,
    from_id: i64,
    first_name: &str,
    message_id: i64,
    text: &str,
) -> Value {
    json!({
        "message_id": message_id,
        "date": now(),
        "chat": { "id": chat_id, "type": "private", "first_name": first_name },
        "from": { "id": from_id, "is_bot": false, "first_name": first_name, "language_code": "en" },
        "text": text
    })
}

fn ok(result: Value) -> Response {
    Json(json!({ "ok": true, "result": result })).into_response()
}

fn fail(status: u16, description: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        code,
        Json(json!({ "ok": false, "error_code": status, "description": description })),
    )
        .into_response()
}

async fn method_get(state: State<Arc<Shared>>, path: Path<(String, String)>) -> Response {
    method(state, path, Bytes::new()).await
}

async fn method(
    State(state): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if bot != format!("bot{}", state.token) {
        return fail(401, "Unauthorized");
    }
    let params: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return fail(400, "Bad Request: can't parse JSON"),
        }
    };
    {
        let mut i = state.lock();
        if i.garbage > 0 {
            i.garbage -= 1;
            return (StatusCode::OK, "<html><body>upstream hiccup</body>").into_response();
        }
    }
    match method.as_str() {
        "getMe" => ok(
            json!({ "id": 7_000_001, "is_bot": true, "first_name": "Shop", "username": "shop_bot", "can_connect_to_business": true }),
        ),
        "getWebhookInfo" => {
            let i = state.lock();
            let mut info = json!({
                "url": i.webhook_url,
                "has_custom_certificate": false,
                "pending_update_count": i.pending.len(),
            });
            if let Some((date, message)) = &i.webhook_error {
                info["last_error_date"] = json!(date);
                info["last_error_message"] = json!(message);
            }
            if let Some(allowed) = &i.webhook_allowed {
                info["allowed_updates"] = json!(allowed);
            }
            ok(info)
        }
        "setWebhook" => {
            let Some(url) = params["url"].as_str() else {
                return fail(400, "Bad Request: bad webhook: URL must be provided");
            };
            if !url.is_empty() && !url.starts_with("https://") {
                return fail(
                    400,
                    "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
                );
            }
            {
                let mut i = state.lock();
                i.webhook_url = url.to_owned();
                i.webhook_secret = params["secret_token"].as_str().map(str::to_owned);
                i.webhook_allowed = params["allowed_updates"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                });
            }
            state.changed.notify_waiters();
            ok(json!(true))
        }
        "deleteWebhook" => {
            state.lock().webhook_url.clear();
            ok(json!(true))
        }
        "getUpdates" => get_updates(&state, &params).await,
        "sendMessage" => send_message(&state, &params),
        "answerCallbackQuery" => {
            let Some(id) = params["callback_query_id"].as_str() else {
                return fail(400, "Bad Request: query is too old and response timeout expired or query ID is invalid");
            };
            state.lock().answered.push(CallbackAnswer {
                callback_query_id: id.to_owned(),
                text: params["text"].as_str().map(str::to_owned),
            });
            ok(json!(true))
        }
        _ => fail(404, "Not Found"),
    }
}

fn conflict(i: &Inner) -> Option<Response> {
    if !i.webhook_url.is_empty() {
        return Some(fail(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"));
    }
    if i.other_poller {
        return Some(fail(409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"));
    }
    None
}

fn update_kind(u: &Value) -> Option<&str> {
    u.as_object()?
        .keys()
        .find(|k| k.as_str() != "update_id")
        .map(String::as_str)
}

async fn get_updates(state: &Arc<Shared>, params: &Value) -> Response {
    let offset = params["offset"].as_i64();
    let limit = params["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
    let timeout = params["timeout"].as_u64().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    {
        let mut i = state.lock();
        if let Some(c) = conflict(&i) {
            return c;
        }
        if let Some(o) = offset {
            let (gone, keep): (Vec<_>, Vec<_>) = i.pending.drain(..).partition(|(id, _)| *id < o);
            i.pending = keep;
            i.confirmed.extend(gone.into_iter().map(|(id, _)| id));
        }
        if let Some(a) = params["allowed_updates"].as_array() {
            i.allowed_updates = Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            );
        }
        i.waiting += 1;
    }
    let answer = loop {
        let notified = state.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut i = state.lock();
            if let Some(c) = conflict(&i) {
                i.waiting -= 1;
                return c;
            }
            let allowed = i.allowed_updates.clone();
            let found: Vec<(i64, Value)> = i
                .pending
                .iter()
                .filter(|(_, u)| {
                    allowed
                        .as_ref()
                        .is_none_or(|a| update_kind(u).is_some_and(|k| a.iter().any(|x| x == k)))
                })
                .take(limit)
                .cloned()
                .collect();
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                i.waiting -= 1;
                i.calls.push(UpdatesCall {
                    offset,
                    returned: found.iter().map(|(id, _)| *id).collect(),
                });
                break found;
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    };
    ok(Value::Array(answer.into_iter().map(|(_, u)| u).collect()))
}

fn send_message(state: &Arc<Shared>, params: &Value) -> Response {
    let mut i = state.lock();
    if let Some((status, body)) = i.send_answers.pop_front() {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return (code, Json(body)).into_response();
    }
    // "Integer or String" in the Bot API.
    let chat_id = params["chat_id"]
        .as_i64()
        .or_else(|| params["chat_id"].as_str().and_then(|c| c.parse().ok()));
    let Some(chat_id) = chat_id else {
        return fail(400, "Bad Request: chat not found");
    };
    let text = params["text"].as_str().unwrap_or("");
    if text.is_empty() {
        return fail(400, "Bad Request: message text is empty");
    }
    if text.encode_utf16().count() > 4096 {
        return fail(400, "Bad Request: message is too long");
    }
    if i.blocked.contains(&chat_id) {
        return fail(403, "Forbidden: bot was blocked by the user");
    }
    i.next_message_id += 1;
    let message_id = i.next_message_id;
    let business = params["business_connection_id"].as_str().map(str::to_owned);
    i.sent.push(SentMessage {
        chat_id,
        text: text.to_owned(),
        message_id,
        reply_to_message_id: params["reply_parameters"]["message_id"].as_i64(),
        business_connection_id: business.clone(),
        reply_markup: params.get("reply_markup").cloned(),
    });
    let mut m = json!({
        "message_id": message_id,
        "date": now(),
        "chat": { "id": chat_id, "type": "private" },
        "from": { "id": 7_000_001, "is_bot": true, "first_name": "Shop" },
        "text": text,
    });
    if let Some(b) = business {
        m["business_connection_id"] = json!(b);
    }
    ok(m)
}
