//! Digests: on a cron schedule, one summary per sink of what is due soon
//! and what is already breached, queued durably and delivered like alerts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::DigestConfig;
use super::sinks::Rendered;
use crate::clock::Status;
use crate::daemon::Context;
use crate::duration::format_left;
use crate::store::{ThreadFilter, ThreadSummary};

/// A run missed while no daemon ran (a crash just before 09:00, a
/// restart across it) is still sent, late and once, if it is at most this
/// old; older ones are stale: the next run carries the same threads.
const CATCH_UP: chrono::Duration = chrono::Duration::hours(1);

/// Worker: on each digest's schedule, renders it and queues one delivery
/// per sink in the store, like an alert; the alert delivery worker sends
/// them with the same retries. The run is claimed in the transaction that
/// queues it, so several daemons on one store send it once, and a crash
/// after the claim loses nothing.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if ctx.config.alerts.digests.is_empty() {
            return;
        }
        let mut schedules = Vec::new();
        for d in &ctx.config.alerts.digests {
            match crate::config::parse_schedule(&d.schedule) {
                Ok(s) => schedules.push((d.clone(), s)),
                Err(e) => warn!(digest = %d.name, error = %e, "Digest schedule is invalid."),
            }
        }
        // The latest run of each digest already due, if recent: queued
        // unless some daemon queued it before.
        let now = Utc::now();
        for (digest, schedule) in &schedules {
            let missed = schedule
                .after(&(now - CATCH_UP))
                .take_while(|t| *t <= now)
                .last();
            if let Some(slot) = missed {
                queue(&ctx, digest, slot).await;
            }
        }
        loop {
            let now = Utc::now();
            let Some((next, digest)) = schedules
                .iter()
                .filter_map(|(d, s)| s.after(&now).next().map(|t| (t, d)))
                .min_by_key(|(t, _)| *t)
            else {
                return;
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            queue(&ctx, digest, next).await;
        }
    })
}

/// Renders digest run `slot` and queues it, unless already queued.
async fn queue(ctx: &Context, digest: &DigestConfig, slot: DateTime<Utc>) {
    let now = Utc::now();
    let threads = match due_threads(ctx, digest, now).await {
        Ok(t) => t,
        Err(e) => {
            warn!(digest = %digest.name, error = %format!("{e:#}"), "Cannot build the digest; skipping this run.");
            return;
        }
    };
    let payload = queued_payload(&render(digest, &threads, now), slot);
    let deliveries: Vec<(String, Value)> = digest
        .sinks
        .iter()
        .map(|s| (s.clone(), payload.clone()))
        .collect();
    match ctx
        .store
        .queue_digest(&digest.name, slot, &ctx.daemon_id, &deliveries, now)
        .await
    {
        Ok(Some(n)) => {
            // The delivery worker picks it up within its 2 s poll.
            info!(digest = %digest.name, slot = %slot, threads = threads.len(), deliveries = n, "Digest queued.");
        }
        Ok(None) => {}
        Err(e) => {
            warn!(digest = %digest.name, error = %e, "Cannot queue the digest; skipping this run.")
        }
    }
}

/// What a queued digest delivery keeps: the digest as rendered when its
/// run came (the threads due then), sent as-is however late.
fn queued_payload(r: &Rendered, slot: DateTime<Utc>) -> Value {
    json!({
        "kind": KIND,
        "slot": slot,
        "title": r.title,
        "text": r.text,
        "html": r.html,
        "json": r.json,
    })
}

/// The `kind` of a queued digest delivery.
pub const KIND: &str = "digest";

/// A queued digest back as the message to send.
pub fn from_queued(payload: &Value) -> Rendered {
    let s = |k: &str| payload[k].as_str().unwrap_or_default().to_owned();
    Rendered {
        title: s("title"),
        text: s("text"),
        html: s("html"),
        json: payload["json"].clone(),
    }
}

/// Threads a digest lists: breached, and due within its window.
pub async fn due_threads(
    ctx: &Context,
    digest: &DigestConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<ThreadSummary>> {
    let filter = ThreadFilter {
        due_within: Some(digest.due_within.0),
        ..ThreadFilter::default()
    };
    let threads = ctx.store.threads(&filter, now).await?;
    Ok(threads
        .into_iter()
        .filter(|t| matches!(t.status, Status::Awaiting | Status::Breached))
        .collect())
}

pub fn render(digest: &DigestConfig, threads: &[ThreadSummary], now: DateTime<Utc>) -> Rendered {
    let breached = threads
        .iter()
        .filter(|t| t.status == Status::Breached)
        .count();
    let title = format!(
        "{}: {} due within {}, {} breached",
        digest.name,
        threads.len() - breached,
        digest.due_within,
        breached
    );
    let mut text = vec![title.clone()];
    let mut html = format!("<p><strong>{title}</strong></p><ul>");
    for t in threads {
        let left = t
            .due_at
            .map(|d| format_left((d - now).num_milliseconds()))
            .unwrap_or_default();
        let line = format!(
            "#{} {} · {} · {} · {}",
            t.id,
            left,
            t.channel,
            t.customer.as_deref().unwrap_or("-"),
            t.subject.as_deref().unwrap_or("")
        );
        html.push_str(&format!(
            "<li>{}</li>",
            line.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ));
        text.push(line);
    }
    html.push_str("</ul>");
    Rendered {
        title,
        text: text.join("\n"),
        html,
        json: json!({
            "kind": "digest",
            "digest": digest.name,
            "threads": threads,
        }),
    }
}
