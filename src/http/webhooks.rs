//! Push intake at `/webhooks/{instance}`.
//!
//! 1. The instance's connector verifies the request (signature, handshake).
//!    A forged or unsigned one is answered 401 and leaves nothing but a
//!    log line.
//! 2. A verified body is written to the store, raw, before the platform
//!    gets its 200: a crash after the 200 loses nothing.
//! 3. The processor (below) turns stored deliveries into messages through
//!    the connector and the normal ingest, then marks them processed.
//!    Ingest is idempotent by `external_id`, and a redelivered body is
//!    stored once, so a crash in between or a platform's retry adds
//!    nothing.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use hourglass_connector::{Batch, ConnectorError, Quarantined, WebhookRequest, WebhookVerdict};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::ApiError;
use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/{instance}", get(intake).post(intake))
}

fn count(instance: &str, outcome: &'static str) {
    metrics::counter!(
        "hourglass_webhook_requests_total",
        "instance" => instance.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

async fn intake(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(inst) = state
        .instance(&name)
        .filter(|i| i.connector.accepts_webhooks())
    else {
        return ApiError::not_found(format!("no instance {name:?} takes webhooks")).into_response();
    };
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let request = WebhookRequest {
        method: method.as_str(),
        query: &query,
        headers: &headers,
        body: &body,
    };
    match inst.connector.verify_webhook(&request) {
        Ok(WebhookVerdict::Respond {
            status,
            content_type,
            body,
        }) => {
            count(&name, "handshake");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Ok(WebhookVerdict::Accept) => {
            let Ok(sql) = state.sql() else {
                return ApiError::unavailable("this store keeps no webhook deliveries")
                    .into_response();
            };
            match sql.store_webhook_event(&name, &body, Utc::now()).await {
                Ok((id, new)) => {
                    count(&name, if new { "stored" } else { "duplicate" });
                    state.webhook_stored.notify_one();
                    (StatusCode::OK, Json(serde_json::json!({ "received": id }))).into_response()
                }
                Err(e) => {
                    count(&name, "store_failed");
                    // Not a 200: the platform keeps the delivery and retries.
                    warn!(instance = %name, error = %e, "Cannot store a webhook delivery; the platform will retry.");
                    ApiError::unavailable("cannot store the delivery now; retry later")
                        .into_response()
                }
            }
        }
        Err(ConnectorError::Auth(why)) => {
            count(&name, "rejected");
            warn!(instance = %name, reason = %why, "Refused a webhook request that failed verification.");
            ApiError::unauthorized("the request could not be verified").into_response()
        }
        Err(e) => {
            count(&name, "error");
            warn!(instance = %name, error = %e, "Cannot verify a webhook request.");
            ApiError::unavailable("webhooks of this instance cannot be verified now")
                .into_response()
        }
    }
}

/// Turns stored deliveries into messages until `stop`: right after each
/// delivery, and every few seconds for what an earlier run left.
pub async fn process_loop(state: AppState, stop: CancellationToken) {
    loop {
        process_pending(&state).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = state.webhook_stored.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Processes what is pending for every running instance that takes
/// webhooks. Returns the number of deliveries processed.
pub async fn process_pending(state: &AppState) -> usize {
    let Some(sql) = state.store.as_sql() else {
        return 0;
    };
    let mut done = 0;
    for inst in state
        .instances
        .iter()
        .filter(|i| i.connector.accepts_webhooks())
    {
        let name = inst.config.name();
        loop {
            let events = match sql.pending_webhook_events(name, 100).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(instance = %name, error = %e, "Cannot read pending webhook deliveries.");
                    return done;
                }
            };
            if events.is_empty() {
                break;
            }
            // One ingest (one write transaction) for the whole page of
            // deliveries: under a burst, the processor takes the write lock
            // once per page, not once per delivery, and intake keeps going.
            let mut batch = Batch::default();
            let mut ok = Vec::new();
            let mut unreadable = Vec::new();
            for event in &events {
                match inst.connector.parse_webhook(&event.body) {
                    Ok(parsed) => {
                        batch.messages.extend(parsed.messages);
                        batch.quarantined.extend(parsed.quarantined);
                        batch.statuses.extend(parsed.statuses);
                        ok.push(event.id);
                    }
                    Err(ConnectorError::BadData { reason, raw }) => {
                        batch.quarantined.push(Quarantined {
                            external_id: None,
                            source: format!("webhook {}", event.id),
                            error: reason.clone(),
                            raw,
                        });
                        unreadable.push((event.id, reason));
                    }
                    Err(e) => {
                        warn!(instance = %name, delivery = event.id, error = %e, "Cannot process a webhook delivery; will retry.");
                        let _ = sql.retry_webhook_event(event.id, &e.to_string()).await;
                    }
                }
            }
            if ok.is_empty() && unreadable.is_empty() {
                break;
            }
            let report = match state.store.ingest(name, &batch, &inst.clocking).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(instance = %name, error = %e, "Cannot store pushed messages; will retry.");
                    return done;
                }
            };
            // Marked after the ingest committed: a crash in between
            // processes them again, and ingest absorbs the repeat.
            let now = Utc::now();
            if let Err(e) = sql.finish_webhook_events(&ok, now).await {
                warn!(instance = %name, error = %e, "Cannot mark webhook deliveries processed.");
            }
            for (id, reason) in &unreadable {
                warn!(instance = %name, delivery = id, reason = %reason, "A webhook delivery could not be read; quarantined with its raw bytes.");
                if let Err(e) = sql.finish_webhook_event(*id, Some(reason), now).await {
                    warn!(instance = %name, error = %e, "Cannot mark a webhook delivery processed.");
                }
            }
            if report.inserted > 0 {
                info!(instance = %name, messages = report.inserted, "Ingested pushed messages.");
                state.ingested.notify_waiters();
            }
            done += ok.len() + unreadable.len();
        }
    }
    done
}
