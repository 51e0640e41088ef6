//! Digests: on a cron schedule, one summary per sink of what is due soon
//! and what is already breached.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::DigestConfig;
use super::sinks::{self, Rendered};
use crate::clock::Status;
use crate::daemon::Context;
use crate::duration::format_left;
use crate::store::{ThreadFilter, ThreadSummary};

/// Worker: runs every configured digest on its schedule.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if ctx.config.alerts.digests.is_empty() {
            return;
        }
        let sinks = match sinks::build(&ctx.config.alerts) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Alert sinks cannot be built; digests are off.");
                return;
            }
        };
        let mut schedules = Vec::new();
        for d in &ctx.config.alerts.digests {
            match crate::config::parse_schedule(&d.schedule) {
                Ok(s) => schedules.push((d.clone(), s)),
                Err(e) => warn!(digest = %d.name, error = %e, "Digest schedule is invalid."),
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
            // Several daemons on one store: the first to claim this run
            // sends it.
            match ctx
                .store
                .claim_digest_run(&digest.name, next, &ctx.daemon_id)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(digest = %digest.name, error = %e, "Cannot claim the digest run; skipping it.");
                    continue;
                }
            }
            let threads = match due_threads(&ctx, digest, Utc::now()).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(digest = %digest.name, error = %e, "Cannot build the digest.");
                    continue;
                }
            };
            let rendered = render(digest, &threads, Utc::now());
            for name in &digest.sinks {
                let Some(sink) = sinks.get(name) else {
                    continue;
                };
                // A few quick retries; digests are summaries, the next one
                // will carry the same threads.
                let mut sent = false;
                let key = format!("digest-{}-{}-{name}", digest.name, next.timestamp());
                for attempt in 1..=3u64 {
                    match sink.send(&rendered, &key).await {
                        Ok(()) => {
                            sent = true;
                            break;
                        }
                        Err(e) => {
                            warn!(digest = %digest.name, sink = %name, attempt, error = %e.message, "Digest delivery failed.");
                            tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
                        }
                    }
                }
                if sent {
                    info!(digest = %digest.name, sink = %name, threads = threads.len(), "Digest sent.");
                }
            }
        }
    })
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
