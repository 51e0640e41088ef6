//! `/healthz` (the process answers) and `/readyz` (the store answers; each
//! instance's last poll or push, and its age).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    store: StoreReadiness,
    instances: Vec<InstanceReadiness>,
}

#[derive(Serialize)]
struct StoreReadiness {
    ok: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct InstanceReadiness {
    name: String,
    /// idle | ok | backoff | auth_failed | stopped
    state: String,
    last_poll_at: Option<DateTime<Utc>>,
    last_poll_age_s: Option<i64>,
    last_push_at: Option<DateTime<Utc>>,
    last_push_age_s: Option<i64>,
    last_error: Option<String>,
}

/// How long the store may take to answer before the daemon is not ready.
const STORE_DEADLINE: Duration = Duration::from_secs(2);

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let now = Utc::now();
    let probe = async {
        let sql = state
            .store
            .as_sql()
            .ok_or_else(|| "no SQL store".to_owned())?;
        sql.ping().await.map_err(|e| e.to_string())?;
        let polls = state.store.instances().await.map_err(|e| e.to_string())?;
        let pushes = sql
            .last_webhook_per_instance()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((polls, pushes))
    };
    let (store, polls, pushes) = match tokio::time::timeout(STORE_DEADLINE, probe).await {
        Ok(Ok((polls, pushes))) => (
            StoreReadiness {
                ok: true,
                error: None,
            },
            polls,
            pushes,
        ),
        Ok(Err(e)) => (
            StoreReadiness {
                ok: false,
                error: Some(e),
            },
            Vec::new(),
            Vec::new(),
        ),
        Err(_) => (
            StoreReadiness {
                ok: false,
                error: Some(format!("no answer within {}s", STORE_DEADLINE.as_secs())),
            },
            Vec::new(),
            Vec::new(),
        ),
    };
    let age = |t: Option<DateTime<Utc>>| t.map(|t| (now - t).num_seconds());
    let instances = state
        .instances
        .iter()
        .map(|i| {
            let name = i.config.name();
            let poll = polls.iter().find(|p| p.name == name);
            let push = pushes.iter().find(|(n, _)| n == name).map(|(_, at)| *at);
            let last_poll_at = poll.and_then(|p| p.last_poll_at);
            InstanceReadiness {
                name: name.to_owned(),
                state: poll
                    .map(|p| p.state.clone())
                    .unwrap_or_else(|| "idle".into()),
                last_poll_at,
                last_poll_age_s: age(last_poll_at),
                last_push_at: push,
                last_push_age_s: age(push),
                last_error: poll.and_then(|p| p.last_error.clone()),
            }
        })
        .collect();
    let ready = store.ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            store,
            instances,
        }),
    )
}
