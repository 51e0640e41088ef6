//! The alert engine and the delivery worker.
//!
//! The engine sleeps until the earliest `next_alert_at` in the store (an
//! indexed query), or until new messages arrive, looks only at the threads
//! whose point has come, and fires at most one alert per threshold and
//! awaiting cycle: the store's unique key makes that hold across crashes.
//! Deliveries are queued rows, sent by a separate worker with retries, each
//! sink on its own so one that is down never holds back the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sinks::{self, Rendered};
use crate::clock::{self, Threshold};
use crate::daemon::Context;
use crate::deadline::{before, Late};
use crate::duration::format_left;
use crate::store::{
    AlertCandidate, AlertDelivery, DeliveryKind, NewDelivery, Store, ThreadSummary,
};

/// Longest sleep between checks: bounds how late an alert can be when its
/// thread was changed outside this process (another daemon on the same
/// PostgreSQL store, a clock jump). One indexed query per period.
const MAX_SLEEP: Duration = Duration::from_secs(5);
const BATCH: i64 = 500;
const DELIVERY_LEASE: Duration = Duration::from_secs(60);
const PER_SINK_CONCURRENCY: usize = 8;

/// Worker: the alert engine.
pub fn engine(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let deliveries = Arc::new(Notify::new());
        let delivery_task =
            tokio::spawn(deliver_loop(ctx.clone(), stop.clone(), deliveries.clone()));
        loop {
            let now = Utc::now();
            let busy = crate::watchdog::busy("the alert engine's pass");
            let ticked = tick(&ctx, now).await;
            drop(busy);
            match ticked {
                Ok(fired) if fired > 0 => deliveries.notify_one(),
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "Alert check failed; retrying."),
            }
            let sleep = match ctx.store.next_alert_at().await {
                Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                Ok(None) => MAX_SLEEP,
                Err(_) => Duration::from_secs(1),
            }
            .min(MAX_SLEEP);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                _ = ctx.ingested.notified() => {}
            }
        }
        let _ = delivery_task.await;
    })
}

/// One pass: fires every alert whose point has come. Returns the number of
/// deliveries queued.
pub async fn tick(ctx: &Context, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let mut queued = 0;
    // Errors first: a refused or bounced reply needs a human now.
    for (t, at) in ctx.store.error_alert_candidates(now, BATCH).await? {
        let mut payload = alert_payload(
            &t,
            Threshold::BREACH,
            ctx.config.http.public_url.as_deref(),
            now,
        );
        payload["kind"] = json!("error");
        payload["threshold"] = json!("error");
        payload["error"] = json!(t.last_error);
        let deliveries = route(ctx, &t, "error", &payload, now);
        queued += ctx
            .store
            .fire_error_alert(t.id, at, &deliveries, now)
            .await?;
        warn!(thread = t.id, instance = %t.instance, error = t.last_error.as_deref().unwrap_or(""), "A reply failed; alerting.");
    }
    loop {
        let candidates = ctx.store.alert_candidates(now, BATCH).await?;
        let n = candidates.len();
        for c in candidates {
            queued += consider(ctx, &c, now).await?;
        }
        if (n as i64) < BATCH {
            return Ok(queued);
        }
    }
}

async fn consider(ctx: &Context, c: &AlertCandidate, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let t = &c.thread;
    let points = ctx
        .clockings
        .get(&t.instance)
        .map(|cl| cl.points.clone())
        // Threads of an instance no longer configured still get alerts.
        .unwrap_or_else(|| crate::daemon::alert_points(&ctx.config));
    let (Some(due), Some(cycle)) = (t.due_at, t.awaiting_since) else {
        ctx.store.set_next_alert_at(t.id, None).await?;
        return Ok(0);
    };
    let fired = c.alerted_remaining_ms;
    match clock::due_alert(due, &points, fired, t.snoozed_until, now) {
        None => {
            // Woken early (a snooze ended, the config changed): move on to
            // the real next point.
            let next = clock::next_alert_at(Some(due), &points, fired, t.snoozed_until);
            let next = next.filter(|n| *n > now);
            ctx.store.set_next_alert_at(t.id, next).await?;
            Ok(0)
        }
        Some(threshold) => {
            let label = threshold.label();
            let payload = alert_payload(t, threshold, ctx.config.http.public_url.as_deref(), now);
            // A thread an agent has taken does not page anyone again in
            // this cycle: the point is recorded as passed, sent nowhere.
            let deliveries = match &t.taken_by {
                Some(_) => Vec::new(),
                None => route(ctx, t, &label, &payload, now),
            };
            let next = clock::next_alert_at(
                Some(due),
                &points,
                Some(threshold.remaining_ms),
                t.snoozed_until,
            );
            let queued = ctx
                .store
                .fire_alert(t.id, cycle, threshold, &deliveries, next, now)
                .await?;
            if let Some(by) = &t.taken_by {
                info!(thread = t.id, threshold = %label, taken_by = %by, "Alert not sent: the thread is taken.");
                return Ok(queued);
            }
            info!(
                thread = t.id,
                instance = %t.instance,
                threshold = %label,
                sinks = deliveries.len(),
                held = deliveries.iter().filter(|d| d.held_until.is_some()).count(),
                late_ms = (now - (due - chrono::Duration::milliseconds(threshold.remaining_ms))).num_milliseconds(),
                "Alert fired."
            );
            Ok(queued)
        }
    }
}

/// The deliveries of an alert on thread `t`: its sinks by the instance's
/// tags, each held or not by its routes' quiet hours.
fn route(
    ctx: &Context,
    t: &ThreadSummary,
    label: &str,
    payload: &Value,
    now: DateTime<Utc>,
) -> Vec<NewDelivery> {
    let tags = ctx
        .config
        .instance(&t.instance)
        .map(|i| i.tags.as_slice())
        .unwrap_or_default();
    ctx.config
        .alerts
        .route_at(&t.instance, &t.channel, label, tags, now)
        .into_iter()
        .map(|(sink, held_until)| NewDelivery {
            sink,
            payload: payload.clone(),
            held_until,
        })
        .collect()
}

/// The alert as JSON: kept with the queued delivery and sent as-is to
/// `format = "json"` webhooks.
pub fn alert_payload(
    t: &ThreadSummary,
    threshold: Threshold,
    public_url: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "kind": if threshold.is_breach() { "breach" } else { "deadline" },
        "threshold": threshold.label(),
        "thread_id": t.id,
        "instance": t.instance,
        "channel": t.channel,
        "customer": t.customer,
        "order_id": t.order_id,
        "marketplace": t.marketplace,
        "subject": t.subject,
        "awaiting_since": t.awaiting_since,
        "due_at": t.due_at,
        "fired_at": now,
        "reply_window_closes_at": t.reply_window_closes_at,
        // Opens the thread in the web inbox (sign-in required) with its
        // "Take this thread" button at hand.
        "link": public_url.map(|u| format!("{}/threads/{}?ack=1", u.trim_end_matches('/'), t.id)),
        "taken_by": t.taken_by,
    })
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Renders a queued alert for people. Time left is computed at delivery,
/// so a late delivery says how late it really is.
pub fn render(payload: &Value, now: DateTime<Utc>) -> Rendered {
    match s(payload, "kind") {
        Some(super::admin::AUTH) => return render_auth(payload),
        Some(super::admin::STORE) => return render_store(payload),
        Some(super::digest::KIND) => return super::digest::from_queued(payload),
        _ => {}
    }
    if s(payload, "kind") == Some(super::silence::SILENCE) {
        return render_silence(payload);
    }
    if s(payload, "kind") == Some(super::relay::RELAY_SILENCE) {
        let title = s(payload, "title")
            .unwrap_or("Relay mail stopped")
            .to_owned();
        return render_notice(payload, title, super::relay::RENDERED_ROWS);
    }
    if s(payload, "kind") == Some(super::late::LATE_RESPONSE_RATE) {
        let title = s(payload, "title")
            .unwrap_or("Late Response Rate")
            .to_owned();
        return render_notice(
            payload,
            title,
            &[
                ("Forecast", "summary"),
                ("What to do", "action"),
                ("Open", "link"),
            ],
        );
    }
    let customer = s(payload, "customer").unwrap_or("a customer");
    let channel = s(payload, "channel").unwrap_or("?");
    let instance = s(payload, "instance").unwrap_or("?");
    let due = s(payload, "due_at")
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc));
    let left = due
        .map(|d| format_left((d - now).num_milliseconds()))
        .unwrap_or_default();
    let title = if s(payload, "kind") == Some("breach") {
        format!("Deadline missed: {customer} on {channel}")
    } else if s(payload, "kind") == Some("error") {
        format!("Reply failed: {customer} on {channel}")
    } else {
        format!("{left}: reply to {customer} on {channel}")
    };
    let mut lines = vec![title.clone()];
    let mut html = format!("<p><strong>{}</strong></p><table>", escape(&title));
    let mut row = |k: &str, v: String| {
        lines.push(format!("{k}: {v}"));
        html.push_str(&format!(
            "<tr><th align=left>{}</th><td>{}</td></tr>",
            escape(k),
            escape(&v)
        ));
    };
    row("Thread", format!("#{} ({instance})", payload["thread_id"]));
    if let Some(error) = s(payload, "error") {
        row("Error", error.to_owned());
    }
    if let Some(subject) = s(payload, "subject") {
        row("Subject", subject.to_owned());
    }
    if let Some(order) = s(payload, "order_id") {
        let market = s(payload, "marketplace")
            .map(|m| format!(" on {m}"))
            .unwrap_or_default();
        row("Order", format!("{order}{market}"));
    }
    if let Some(d) = due {
        row(
            "Due",
            format!("{} ({left})", d.format("%Y-%m-%d %H:%M UTC")),
        );
    }
    if let Some(link) = s(payload, "link") {
        row("Open", link.to_owned());
    }
    html.push_str("</table>");
    Rendered {
        title,
        text: lines.join("\n"),
        html,
        json: payload.clone(),
    }
}

/// One alert, or the summary of those quiet hours held for one sink.
fn render_unit(unit: &[AlertDelivery], now: DateTime<Utc>) -> Rendered {
    match unit {
        [d] if d.held_until.is_none() => render(&d.payload, now),
        _ => {
            let payloads: Vec<Value> = unit.iter().map(|d| d.payload.clone()).collect();
            render_summary(&payloads, now)
        }
    }
}

/// The summary sent when quiet hours end: every held alert, one line each,
/// as it reads now (time left is counted at delivery).
pub fn render_summary(payloads: &[Value], now: DateTime<Utc>) -> Rendered {
    let n = payloads.len();
    let title = format!(
        "Quiet hours ended: {n} alert{} held",
        if n == 1 { "" } else { "s" }
    );
    let mut lines = vec![title.clone()];
    let mut html = format!("<p><strong>{}</strong></p><ul>", escape(&title));
    for p in payloads {
        let one = render(p, now);
        let link = s(p, "link").map(|l| format!(" {l}")).unwrap_or_default();
        let thread = p
            .get("thread_id")
            .and_then(Value::as_i64)
            .map(|id| format!(" (thread #{id})"))
            .unwrap_or_default();
        lines.push(format!("- {}{thread}{link}", one.title));
        html.push_str(&format!(
            "<li>{}{}{}</li>",
            escape(&one.title),
            escape(&thread),
            escape(&link)
        ));
    }
    html.push_str("</ul>");
    Rendered {
        title,
        text: lines.join("\n"),
        html,
        json: json!({ "kind": "summary", "count": n, "alerts": payloads, "sent_at": now }),
    }
}

/// An instance stopped delivering (see `silence.rs`).
fn render_silence(payload: &Value) -> Rendered {
    let instance = s(payload, "instance").unwrap_or("?");
    let kind = s(payload, "type").unwrap_or("?");
    let silent_for = s(payload, "silent_for").unwrap_or("?");
    let title = format!("Silent: {instance} ({kind}) has received nothing for {silent_for}");
    let mut lines = vec![title.clone()];
    let mut html = format!("<p><strong>{}</strong></p><table>", escape(&title));
    for (label, key) in [
        ("Last message", "last_message_at"),
        ("Usually", "usual"),
        ("Polls", "polls"),
        ("What to check", "action"),
        ("Open", "link"),
    ] {
        if let Some(v) = s(payload, key).filter(|v| !v.is_empty()) {
            lines.push(format!("{label}: {v}"));
            html.push_str(&format!(
                "<tr><th align=left>{}</th><td>{}</td></tr>",
                escape(label),
                escape(v)
            ));
        }
    }
    html.push_str("</table>");
    Rendered {
        title,
        text: lines.join("\n"),
        html,
        json: payload.clone(),
    }
}

/// An instance's credentials were refused (see `admin.rs`).
fn render_auth(payload: &Value) -> Rendered {
    let instance = s(payload, "instance").unwrap_or("?");
    let kind = s(payload, "type").unwrap_or("?");
    let title = s(payload, "title")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("Action needed: {instance} ({kind}) cannot sign in"));
    render_admin(payload, title)
}

/// The store's disk is full (see `admin.rs`).
fn render_store(payload: &Value) -> Rendered {
    render_admin(
        payload,
        "Action needed: the store's disk is full, ingest is paused".to_owned(),
    )
}

/// An admin alert: a title, then what failed and what to do.
fn render_admin(payload: &Value, title: String) -> Rendered {
    render_notice(
        payload,
        title,
        &[
            ("Error", "error"),
            ("What to do", "action"),
            ("Open", "link"),
        ],
    )
}

/// An alert about an instance rather than a thread: a title and rows.
fn render_notice(payload: &Value, title: String, rows: &[(&str, &str)]) -> Rendered {
    let mut lines = vec![title.clone()];
    let mut html = format!("<p><strong>{}</strong></p><table>", escape(&title));
    for &(label, key) in rows {
        if let Some(v) = s(payload, key) {
            lines.push(format!("{label}: {v}"));
            html.push_str(&format!(
                "<tr><th align=left>{}</th><td>{}</td></tr>",
                escape(label),
                escape(v)
            ));
        }
    }
    html.push_str("</table>");
    Rendered {
        title,
        text: lines.join("\n"),
        html,
        json: payload.clone(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The idempotency key of a delivery (`X-Hourglass-Delivery`): named after
/// its row in the store, so every retry of it, after a crash too, carries
/// the same key, and no two deliveries share one.
pub fn delivery_key(d: &crate::store::AlertDelivery) -> String {
    match d.kind {
        DeliveryKind::Thread => format!("alert-{}", d.id),
        DeliveryKind::Instance => format!("instance-alert-{}", d.id),
        DeliveryKind::Digest => format!("digest-{}", d.id),
    }
}

/// The key of what one request carries: a delivery's own, or for a quiet
/// hours summary one derived from the keys of the deliveries in it (the
/// same summary retried carries the same key).
fn unit_key(unit: &[AlertDelivery]) -> String {
    match unit {
        [d] => delivery_key(d),
        _ => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for d in unit {
                h.update(delivery_key(d).as_bytes());
                h.update(b"\n");
            }
            let hex: String = h
                .finalize()
                .iter()
                .take(12)
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("summary-{hex}")
        }
    }
}

/// Delivery backoff: 5 s doubling to 10 min.
fn retry_delay(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 8) as u32 - 1;
    Duration::from_secs(5u64 << exp).min(Duration::from_secs(600))
}

async fn deliver_loop(ctx: Context, stop: CancellationToken, wake: Arc<Notify>) {
    let sinks = match sinks::build(&ctx.config.alerts) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "Alert sinks cannot be built; alerts stay queued.");
            return;
        }
    };
    let mut running = tokio::task::JoinSet::new();
    loop {
        // A delivery starts only while its claim holds: one still queued
        // behind a slow sink when the lease runs out (or held up by a
        // stopped process) is left to the next claim, not sent beside it.
        let send_by = tokio::time::Instant::now() + DELIVERY_LEASE - DELIVERY_LEASE / 10;
        match ctx
            .store
            .claim_alert_deliveries(100, DELIVERY_LEASE, Utc::now())
            .await
        {
            Ok(batch) => {
                // Group by sink: each sink works through its own list, so a
                // sink that times out delays only itself.
                let mut by_sink: HashMap<String, Vec<Vec<AlertDelivery>>> = HashMap::new();
                for d in batch {
                    let units = by_sink.entry(d.sink.clone()).or_default();
                    // What quiet hours held for this sink goes out as one
                    // summary; everything else one by one.
                    match units.iter_mut().find(|u| {
                        d.held_until.is_some() && u.first().is_some_and(|f| f.held_until.is_some())
                    }) {
                        Some(summary) => summary.push(d),
                        None => units.push(vec![d]),
                    }
                }
                for (name, list) in by_sink {
                    let store = ctx.store.clone();
                    let sinks = sinks.clone();
                    let max_attempts = i64::from(ctx.config.alerts.max_attempts);
                    running.spawn(async move {
                        // A few at a time per sink: a burst of alerts (after
                        // downtime, many deadlines at 09:00) must not queue
                        // behind one slow request.
                        futures::stream::iter(list)
                            .for_each_concurrent(PER_SINK_CONCURRENCY, |unit| {
                                let (store, sinks, name) =
                                    (store.clone(), sinks.clone(), name.clone());
                                async move {
                                    let result = match sinks.get(&name) {
                                        Some(sink) => {
                                            let message = render_unit(&unit, Utc::now());
                                            let key = unit_key(&unit);
                                            match before(send_by, sink.send(&message, &key)).await {
                                                Ok(sent) => sent,
                                                Err(Late::BeforeStart) => return,
                                                Err(Late::Midway) => Err(sinks::SendError {
                                                    message: "the sink did not answer within the delivery's lease".into(),
                                                    retry_after: None,
                                                    permanent: false,
                                                }),
                                            }
                                        }
                                        None => Err(sinks::SendError {
                                            message: format!(
                                                "no sink named {name:?} in the configuration"
                                            ),
                                            retry_after: None,
                                            permanent: false,
                                        }),
                                    };
                                    for d in &unit {
                                        finish(store.as_ref(), d, result.clone(), max_attempts).await;
                                    }
                                }
                            })
                            .await;
                    });
                }
            }
            Err(e) => warn!(error = %e, "Cannot claim alert deliveries."),
        }
        while running.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    // Let deliveries in flight finish (bounded by the HTTP/SMTP timeouts
    // and the daemon's shutdown timeout).
    while running.join_next().await.is_some() {}
}

async fn finish(
    store: &dyn Store,
    d: &crate::store::AlertDelivery,
    result: Result<(), sinks::SendError>,
    max_attempts: i64,
) {
    let now = Utc::now();
    let outcome = match result {
        Ok(()) => {
            info!(sink = %d.sink, thread = d.thread_id, threshold = %d.threshold, "Alert delivered.");
            store
                .finish_alert_delivery(d.kind, d.id, Ok(()), None, now)
                .await
        }
        Err(e) => {
            let give_up = e.permanent || d.attempts >= max_attempts;
            let retry_at = (!give_up).then(|| {
                let wait = e.retry_after.unwrap_or_else(|| retry_delay(d.attempts));
                now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(60))
            });
            warn!(
                sink = %d.sink,
                thread = d.thread_id,
                attempts = d.attempts,
                retry = !give_up,
                error = %e.message,
                "Alert delivery failed."
            );
            store
                .finish_alert_delivery(d.kind, d.id, Err(e.message), retry_at, now)
                .await
        }
    };
    if let Err(e) = outcome {
        warn!(error = %e, "Cannot record an alert delivery.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_time_left_and_breach() {
        let now = Utc::now();
        let payload = json!({
            "kind": "deadline", "threshold": "1h", "thread_id": 7, "instance": "amazon-eu",
            "channel": "amazon", "customer": "Ana Souza", "order_id": "702-1234567-1234567",
            "marketplace": "amazon.com.br", "subject": "Pedido <atrasado>",
            "due_at": (now + chrono::Duration::minutes(59)).to_rfc3339(), "link": null,
        });
        let r = render(&payload, now);
        assert!(
            r.title.starts_with("58m") || r.title.starts_with("59m"),
            "{}",
            r.title
        );
        assert!(
            r.text
                .contains("Order: 702-1234567-1234567 on amazon.com.br"),
            "{}",
            r.text
        );
        assert!(r.html.contains("Pedido &lt;atrasado&gt;"), "{}", r.html);
        let mut breach = payload.clone();
        breach["kind"] = json!("breach");
        assert_eq!(
            render(&breach, now).title,
            "Deadline missed: Ana Souza on amazon"
        );
    }

    #[test]
    fn delivery_keys_follow_the_stored_row() {
        let row = |id, kind| crate::store::AlertDelivery {
            id,
            thread_id: 7,
            kind,
            threshold: "1h".into(),
            sink: "hook".into(),
            attempts: 1,
            payload: json!({}),
            held_until: None,
        };
        let first = row(41, DeliveryKind::Thread);
        let mut retried = first.clone();
        retried.attempts = 3;
        assert_eq!(delivery_key(&first), delivery_key(&retried));
        assert_ne!(
            delivery_key(&first),
            delivery_key(&row(42, DeliveryKind::Thread))
        );
        // Alerts, instance alerts and digests live in three tables: same
        // id, three keys.
        let instance = delivery_key(&row(41, DeliveryKind::Instance));
        let digest = delivery_key(&row(41, DeliveryKind::Digest));
        assert_ne!(delivery_key(&first), instance);
        assert_ne!(instance, digest);
        // A summary of held alerts: the same set, the same key.
        let two = [first.clone(), row(42, DeliveryKind::Thread)];
        assert_eq!(unit_key(&two), unit_key(&two.clone()));
        assert_ne!(unit_key(&two), unit_key(std::slice::from_ref(&first)));
    }

    #[test]
    fn retry_delays_grow_and_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(5));
        assert_eq!(retry_delay(2), Duration::from_secs(10));
        assert_eq!(retry_delay(50), Duration::from_secs(600));
    }
}
