//! `/metrics` in the Prometheus text format.
//!
//! Two sources: counters the daemon bumps as things happen (polls, webhook
//! requests, replies queued; the `metrics` facade with the Prometheus
//! recorder), and counts read from the store (threads by status and
//! channel, outbox, alerts, quarantine). The store counts read every
//! thread, so a scrape never runs them: it serves a snapshot at most
//! [`SNAPSHOT_MAX_AGE`] old and refreshes it in the background.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::warn;

use super::config::Role;
use super::AppState;
use crate::store::MetricsSnapshot;

/// How stale the store counts of a scrape may be.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(15);

/// The process-wide recorder (installed once, shared by every generation).
fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(error = %e, "Cannot install the metrics recorder; /metrics shows store counts only.");
                None
            }
        })
        .as_ref()
}

/// Installs the recorder early, so counts start before the first scrape.
pub fn install() {
    if recorder().is_some() {
        describe();
    }
}

fn describe() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        metrics::describe_counter!(
            "hourglass_polls_total",
            "Polls per instance by outcome (ok, or the error kind)."
        );
        metrics::describe_histogram!(
            "hourglass_poll_duration_seconds",
            metrics::Unit::Seconds,
            "How long polls take per instance."
        );
        metrics::describe_counter!(
            "hourglass_webhook_requests_total",
            "Webhook requests per instance by outcome (stored, duplicate, rejected, handshake, ...)."
        );
        metrics::describe_counter!(
            "hourglass_http_replies_queued_total",
            "Replies queued through the HTTP API and web inbox."
        );
    });
}

/// Counts one poll of `instance`: its duration, and its error kind when it
/// failed.
pub fn record_poll(instance: &str, took: Duration, error: Option<&'static str>) {
    // The first poll may end before the HTTP worker has started.
    install();
    let outcome = error.unwrap_or("ok");
    metrics::counter!(
        "hourglass_polls_total",
        "instance" => instance.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!("hourglass_poll_duration_seconds", "instance" => instance.to_owned())
        .record(took.as_secs_f64());
}

/// The cached store counts of one generation.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Cache>>);

#[derive(Default)]
struct Cache {
    snapshot: Option<(Instant, MetricsSnapshot)>,
    refreshing: bool,
}

impl Metrics {
    pub fn new() -> Metrics {
        install();
        Metrics::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    parts: Parts,
) -> Response {
    if state.config.http.metrics_require_token {
        if let Err(e) = super::auth::authorize(&state, &parts, Role::Metrics) {
            return e.into_response();
        }
    } else if !peer.ip().is_loopback() {
        return super::error::ApiError::forbidden(
            "/metrics is open to loopback only; set [http] metrics_require_token = true and use a metrics token",
        )
        .into_response();
    }
    let snapshot = snapshot(&state).await;
    let mut out = recorder().map(|h| h.render()).unwrap_or_default();
    render_store(&mut out, snapshot.as_ref());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The current snapshot, never waiting for the store: `None` until the
/// first one is taken (this starts it). For pages that show store-wide
/// figures (the web inbox's Late Response Rate) without a query per view.
pub(crate) fn cached_snapshot(state: &AppState) -> Option<MetricsSnapshot> {
    let current = state
        .metrics
        .lock()
        .snapshot
        .as_ref()
        .map(|(_, s)| s.clone());
    let state = state.clone();
    tokio::spawn(async move {
        snapshot(&state).await;
    });
    current
}

/// The current snapshot; starts a refresh when it is stale. Only the very
/// first scrape waits for the store.
async fn snapshot(state: &AppState) -> Option<MetricsSnapshot> {
    let (current, stale) = {
        let mut cache = state.metrics.lock();
        let current = cache.snapshot.as_ref().map(|(_, s)| s.clone());
        let stale = cache
            .snapshot
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > SNAPSHOT_MAX_AGE);
        let start = stale && !cache.refreshing;
        if start {
            cache.refreshing = true;
        }
        (current, start)
    };
    if !stale {
        return current;
    }
    let refresh = {
        let state = state.clone();
        async move {
            let taken = match state.store.as_sql() {
                Some(sql) => sql.metrics_snapshot(Utc::now()).await.ok(),
                None => None,
            };
            let mut cache = state.metrics.lock();
            cache.refreshing = false;
            if let Some(s) = &taken {
                cache.snapshot = Some((Instant::now(), s.clone()));
            }
            taken
        }
    };
    match current {
        Some(s) => {
            tokio::spawn(refresh);
            Some(s)
        }
        None => refresh.await,
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every status of every channel seen, 0 where none: a series that
/// vanishes reads as "no data", not as zero.
fn thread_rows(threads: &[(String, String, i64)]) -> Vec<(String, i64)> {
    const STATUSES: [&str; 5] = [
        "awaiting",
        "breached",
        "snoozed",
        "answered",
        "no_response_needed",
    ];
    let mut channels: Vec<&str> = threads.iter().map(|(c, _, _)| c.as_str()).collect();
    channels.dedup();
    let mut out = Vec::new();
    for c in channels {
        for st in STATUSES {
            let n = threads
                .iter()
                .find(|(tc, ts, _)| tc == c && ts == st)
                .map(|(_, _, n)| *n)
                .unwrap_or(0);
            out.push((format!("{{channel=\"{}\",status=\"{st}\"}}", label(c)), n));
        }
    }
    out
}

/// Writes one metric family: its HELP and TYPE lines, then a sample per
/// row (labels already rendered as `{...}`).
fn family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: Vec<(String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
    out.push('\n');
}

fn render_store(out: &mut String, s: Option<&MetricsSnapshot>) {
    let Some(s) = s else {
        return;
    };
    family(
        out,
        "hourglass_threads",
        "gauge",
        "Threads by channel and status.",
        thread_rows(&s.threads),
    );
    let breached: i64 = s
        .threads
        .iter()
        .filter(|(_, st, _)| st == "breached")
        .map(|(_, _, n)| n)
        .sum();
    family(
        out,
        "hourglass_threads_breached",
        "gauge",
        "Threads past their reply deadline and still unanswered.",
        vec![(String::new(), breached)],
    );
    if let Some(due) = s.next_due_at {
        family(
            out,
            "hourglass_next_deadline_seconds",
            "gauge",
            "Seconds until the next reply deadline of an awaiting thread.",
            vec![(String::new(), (due - Utc::now()).num_seconds())],
        );
    }
    family(
        out,
        "hourglass_outbox_replies",
        "gauge",
        "Replies in the outbox by state (sent, failed = refused or undeliverable, ...).",
        s.outbox
            .iter()
            .map(|(st, n)| (format!("{{state=\"{}\"}}", label(st)), *n))
            .collect(),
    );
    family(
        out,
        "hourglass_alerts",
        "gauge",
        "Alert deliveries by sink and outcome.",
        s.alerts
            .iter()
            .map(|(sink, st, n)| {
                (
                    format!("{{sink=\"{}\",outcome=\"{}\"}}", label(sink), label(st)),
                    *n,
                )
            })
            .collect(),
    );
    family(
        out,
        "hourglass_quarantined_items",
        "gauge",
        "Items that could not be read, kept with their raw bytes.",
        s.quarantined
            .iter()
            .map(|(i, n)| (format!("{{instance=\"{}\"}}", label(i)), *n))
            .collect(),
    );
    let lrr_labels = |r: &crate::lrr::LateResponseRate, w: &crate::lrr::WindowRate| {
        format!(
            "instance=\"{}\",marketplace=\"{}\",window=\"{}d\"",
            label(&r.instance),
            label(r.marketplace.as_deref().unwrap_or("")),
            w.days
        )
    };
    let mut rates = Vec::new();
    let mut forecasts = Vec::new();
    let mut cycles = Vec::new();
    for r in &s.late_response_rate {
        for w in &r.windows {
            let l = lrr_labels(r, w);
            if let Some(v) = w.rate {
                rates.push((format!("{{{l}}}"), v));
            }
            for (case, v) in [
                ("answered", w.forecast_if_answered),
                ("unanswered", w.forecast_if_unanswered),
            ] {
                if let Some(v) = v {
                    forecasts.push((format!("{{{l},if_awaiting=\"{case}\"}}"), v));
                }
            }
            for (standing, n) in [
                ("late", w.late),
                ("on_time", w.on_time),
                ("pending", w.pending),
            ] {
                cycles.push((format!("{{{l},standing=\"{standing}\"}}"), n));
            }
        }
    }
    family(
        out,
        "hourglass_late_response_rate",
        "gauge",
        "Share (0..1) of customer messages answered after 24 h or not at all, per window.",
        rates,
    );
    family(

        out,

        "hourglass_late_response_rate_forecast",

        "gauge",
        "The rate tomorrow if the messages awaiting now are answered at their deadlines, or not at all.",
        forecasts,
    );
    family(

        out,
        "hourglass_late_response_cycles",
        "gauge",
        "Customer messages that opened an awaiting cycle, per window and standing (late, on time, pending).",
        cycles,
    );
    family(
        out,
        "hourglass_webhook_deliveries_pending",
        "gauge",
        "Webhook deliveries stored but not yet turned into messages.",
        vec![(String::new(), s.webhooks_pending)],
    );
}
