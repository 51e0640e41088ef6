//! The JSON API, `/api/v1/...`: the CLI's operations with the CLI's JSON
//! shapes (DESIGN §6). The OpenAPI document at `/api/v1/openapi.json` is
//! generated from these handlers and types.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::auth::{Admin, Agent};
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::service::{LinkRequest, MarkRequest, ReplyQueued, ReplyRequest};
use super::AppState;
use crate::clock::Status;
use crate::duration::Dur;
use crate::store::ThreadFilter;
use crate::view;

/// The default and largest page of `GET /api/v1/threads`.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/threads", get(list_threads))
        .route("/api/v1/threads/{id}", get(show_thread))
        .route("/api/v1/threads/{id}/reply", post(reply))
        .route("/api/v1/threads/{id}/mark", post(mark))
        .route("/api/v1/customers/link", post(link_customers))
        .route("/api/v1/customers/unlink", post(unlink_customers))
        .route("/api/v1/customers/{customer}", get(show_customer))
        .route("/api/v1/threads/{id}/ack", post(ack))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/connectors", get(connectors))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/{*rest}", axum::routing::any(not_found))
}

/// The OpenAPI 3 document of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "hourglass API", description = "Threads by reply deadline, replies, marks, stats and connectors. Authenticate with `Authorization: Bearer <token>` (a `[[http.tokens]]` entry)."),
    paths(list_threads, show_thread, reply, mark, ack, show_customer, link_customers, unlink_customers, stats, connectors),
    components(schemas(
        view::Thread, view::ThreadDetail, view::Message, view::OutboxEntry, view::AuditEntry,
        view::ConnectorStatus, view::Stats, view::Figures, crate::lrr::LateResponseRate, crate::lrr::WindowRate,
        view::Customer, view::Identity, view::Split,
        ReplyRequest, ReplyQueued, MarkRequest, LinkRequest, ErrorBody, ErrorDetail
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /api/v1/openapi.json")
}

fn thread_id(path: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::bad_param("id", "a thread id is a number"))
}

/// Threads by deadline, the shape of `hourglass threads --json`.
#[utoipa::path(
    get,
    path = "/api/v1/threads",
    params(
        ("status" = Option<String>, Query, description = "awaiting | breached | snoozed | answered | no_response_needed"),
        ("channel" = Option<String>, Query, description = "amazon, email, ebay, ..."),
        ("instance" = Option<String>, Query, description = "a configured instance"),
        ("due_within" = Option<String>, Query, description = "only threads due within this duration (e.g. 2h), breached included"),
        ("limit" = Option<i64>, Query, description = "at most this many (1 to 1000, default 100)"),
    ),
    responses(
        (status = 200, description = "Threads, soonest deadline first", body = Vec<view::Thread>),
        (status = 400, description = "A bad parameter, named in the message", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
    )
)]
async fn list_threads(
    State(state): State<AppState>,
    _who: Agent,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Vec<view::Thread>>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_param("query", e.body_text()))?;
    let filter = thread_filter(&params)?;
    Ok(Json(state.list_threads(&filter).await?))
}

/// Reads the filters of a thread listing; 400 names the parameter at fault.
pub fn thread_filter(params: &[(String, String)]) -> Result<ThreadFilter, ApiError> {
    let mut filter = ThreadFilter {
        limit: Some(DEFAULT_LIMIT),
        ..ThreadFilter::default()
    };
    for (k, v) in params {
        let v = v.trim();
        match k.as_str() {
            _ if v.is_empty() => {}
            "status" => {
                filter.status = Some(Status::parse(v).ok_or_else(|| {
                    ApiError::bad_param(
                        "status",
                        format!("unknown status {v:?}: awaiting, breached, snoozed, answered, no_response_needed"),
                    )
                })?)
            }
            "channel" => filter.channel = Some(v.to_owned()),
            "instance" => filter.instance = Some(v.to_owned()),
            "due_within" => {
                filter.due_within = Some(
                    v.parse::<Dur>()
                        .map_err(|e| ApiError::bad_param("due_within", e))?
                        .0,
                )
            }
            "limit" => {
                let n = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_param("limit", format!("{v:?} is not a number from 1 to {MAX_LIMIT}"))
                    })?;
                filter.limit = Some(n);
            }
            other => return Err(ApiError::bad_param(other, "unknown parameter")),
        }
    }
    Ok(filter)
}

/// One thread and its whole conversation, the shape of `hourglass show --json`.
#[utoipa::path(
    get,
    path = "/api/v1/threads/{id}",
    params(("id" = i64, Path, description = "thread id")),
    responses(
        (status = 200, description = "The thread", body = view::ThreadDetail),
        (status = 404, description = "No such thread", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
    )
)]
async fn show_thread(
    State(state): State<AppState>,
    _who: Agent,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<view::ThreadDetail>, ApiError> {
    Ok(Json(state.show_thread(thread_id(id)?).await?))
}

/// Queues a reply; the daemon sends it. The same `Idempotency-Key` queues
/// one reply, however often it is sent.
#[utoipa::path(
    post,
    path = "/api/v1/threads/{id}/reply",
    params(
        ("id" = i64, Path, description = "thread id"),
        ("Idempotency-Key" = Option<String>, Header, description = "a key of your choice: retries with the same key queue one reply"),
    ),
    request_body = ReplyRequest,
    responses(
        (status = 202, description = "Written to the outbox", body = ReplyQueued),
        (status = 400, description = "No body or template, or a template that cannot be rendered", body = ErrorBody),
        (status = 404, description = "No such thread", body = ErrorBody),
        (status = 422, description = "The reply would be refused (reply window closed, a platform rule)", body = ErrorBody),
    )
)]
async fn reply(
    State(state): State<AppState>,
    Agent(who): Agent,
    id: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<ReplyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ReplyQueued>), ApiError> {
    let id = thread_id(id)?;
    let Json(request) = body.map_err(|e| ApiError::bad_param("body", e.body_text()))?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_param("Idempotency-Key", "1 to 255 visible ASCII characters")
                })?,
        ),
        None => None,
    };
    let queued = state.reply(&who, id, &request, key).await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

/// Marks a thread no response needed, or snoozes it.
#[utoipa::path(
    post,
    path = "/api/v1/threads/{id}/mark",
    params(("id" = i64, Path, description = "thread id")),
    request_body = MarkRequest,
    responses(
        (status = 200, description = "The thread as it is now", body = view::Thread),
        (status = 400, description = "Neither or both marks, or a bad duration", body = ErrorBody),
        (status = 404, description = "No such thread", body = ErrorBody),
    )
)]
async fn mark(
    State(state): State<AppState>,
    Agent(who): Agent,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<MarkRequest>, JsonRejection>,
) -> Result<Json<view::Thread>, ApiError> {
    let id = thread_id(id)?;
    let Json(request) = body.map_err(|e| ApiError::bad_param("body", e.body_text()))?;
    Ok(Json(state.mark(&who, id, &request).await?))
}

/// One customer across channels, the shape of `hourglass customers show --json`.
#[utoipa::path(
    get,
    path = "/api/v1/customers/{customer}",
    params(("customer" = String, Path, description = "a customer id (42), thread:ID, or CHANNEL:HANDLE")),
    responses(
        (status = 200, description = "The customer, their identities and threads on every channel", body = view::Customer),
        (status = 400, description = "Not a way to name a customer", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
    )
)]
async fn show_customer(
    State(state): State<AppState>,
    _who: Agent,
    customer: Result<Path<String>, PathRejection>,
) -> Result<Json<view::Customer>, ApiError> {
    let Path(customer) = customer.map_err(|_| {
        ApiError::bad_param("customer", "a customer id, thread:ID or CHANNEL:HANDLE")
    })?;
    Ok(Json(state.show_customer(&customer).await?))
}

/// Joins two customers into one, like `hourglass customers link A B`.
#[utoipa::path(
    post,
    path = "/api/v1/customers/link",
    request_body = LinkRequest,
    responses(
        (status = 200, description = "The joined customer", body = view::Customer),
        (status = 400, description = "a or b missing or malformed", body = ErrorBody),
        (status = 404, description = "No such customer, thread or identity", body = ErrorBody),
    )
)]
async fn link_customers(
    State(state): State<AppState>,
    Agent(who): Agent,
    body: Result<Json<LinkRequest>, JsonRejection>,
) -> Result<Json<view::Customer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_param("body", e.body_text()))?;
    Ok(Json(state.link_customers(&who, &request).await?))
}

/// Splits identity `b` off `a`'s customer (or `a` off all others), like
/// `hourglass customers unlink A [B]`; automatic links never undo it.
#[utoipa::path(
    post,
    path = "/api/v1/customers/unlink",
    request_body = LinkRequest,
    responses(
        (status = 200, description = "The customer the split identity now is", body = view::Customer),
        (status = 400, description = "a or b malformed", body = ErrorBody),
        (status = 404, description = "No such thread or identity", body = ErrorBody),
        (status = 422, description = "Nothing to split (not linked, the same identity, the only one)", body = ErrorBody),
    )
)]
async fn unlink_customers(
    State(state): State<AppState>,
    Agent(who): Agent,
    body: Result<Json<LinkRequest>, JsonRejection>,
) -> Result<Json<view::Customer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_param("body", e.body_text()))?;
    Ok(Json(state.unlink_customers(&who, &request).await?))
}

/// Takes a thread (acknowledges its alert) as the token's agent: its
/// later alerts in this awaiting cycle are not sent, and the others see
/// `taken_by`. The first taker keeps it.
#[utoipa::path(
    post,
    path = "/api/v1/threads/{id}/ack",
    params(("id" = i64, Path, description = "thread id")),
    responses(
        (status = 200, description = "The thread as it is now, with taken_by", body = view::Thread),
        (status = 404, description = "No such thread", body = ErrorBody),
        (status = 409, description = "The thread is not awaiting a reply", body = ErrorBody),
    )
)]
async fn ack(
    State(state): State<AppState>,
    Agent(who): Agent,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<view::Thread>, ApiError> {
    let id = thread_id(id)?;
    Ok(Json(state.take(&who, id).await?))
}

/// Response times, breach rate and volume, the shape of `hourglass stats --json`.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    params(("since" = Option<String>, Query, description = "period to cover, e.g. 7d (the default)")),
    responses(
        (status = 200, description = "The figures", body = view::Stats),
        (status = 400, description = "A bad duration", body = ErrorBody),
    )
)]
async fn stats(
    State(state): State<AppState>,
    _who: Agent,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<view::Stats>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_param("query", e.body_text()))?;
    let mut since = Dur::from_secs(7 * 86_400);
    for (k, v) in &params {
        match k.as_str() {
            "since" => since = v.parse().map_err(|e| ApiError::bad_param("since", e))?,
            other => return Err(ApiError::bad_param(other, "unknown parameter")),
        }
    }
    Ok(Json(state.stats(since.0).await?))
}

/// Configured instances and their state, the shape of `hourglass connectors list --json`.
#[utoipa::path(
    get,
    path = "/api/v1/connectors",
    responses(
        (status = 200, description = "Every configured instance", body = Vec<view::ConnectorStatus>),
        (status = 403, description = "The token is not an admin's", body = ErrorBody),
    )
)]
async fn connectors(
    State(state): State<AppState>,
    _who: Admin,
) -> Result<Json<Vec<view::ConnectorStatus>>, ApiError> {
    Ok(Json(state.connectors().await?))
}
