//! The Late Response Rate alert: warns an instance's agents before
//! Amazon's rate moves past `[alerts.late_response_rate] level`.
//!
//! Every `every`, the rate of each instance and marketplace is computed
//! (`crate::lrr`, one grouped query). When tomorrow's rate, if the
//! messages awaiting now are not answered in time, reaches the level in
//! any window, one alert is queued (an episode opens in the store, in the
//! transaction that queues the deliveries, so restarts and other daemons
//! on the same store do not repeat it). When every window's forecast is
//! back under the level, the episode ends and a later crossing alerts
//! again. Deliveries go through the admin alerts' table, sinks and
//! retries; routes match them with `thresholds = ["late_response_rate"]`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::daemon::Context;
use crate::lrr::{percent, LateResponseRate};
use crate::store::Store;

/// The route label and `kind` of these alerts.
pub const LATE_RESPONSE_RATE: &str = "late_response_rate";

/// The alert as JSON, kept with the queued delivery.
pub fn payload(
    rate: &LateResponseRate,
    level: f64,
    public_url: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    let (worst, forecast) = match rate.worst_forecast() {
        Some((w, f)) => (Some(w), f),
        None => (None, 0.0),
    };
    let days = worst.map(|w| w.days).unwrap_or_default();
    let pending = worst.map(|w| w.pending).unwrap_or_default();
    let title = format!(
        "Late Response Rate of {} may reach {} tomorrow ({days} days)",
        rate.label(),
        percent(Some(forecast)),
    );
    let summary = format!(
        "{days}-day rate now {}; tomorrow {} if the {pending} awaiting message(s) are not answered \
         within 24 h, {} if they are. Alert level {}.",
        percent(worst.and_then(|w| w.rate)),
        percent(Some(forecast)),
        percent(worst.and_then(|w| w.forecast_if_answered)),
        percent(Some(level)),
    );
    json!({
        "kind": LATE_RESPONSE_RATE,
        "threshold": LATE_RESPONSE_RATE,
        "instance": rate.instance,
        "marketplace": rate.marketplace,
        "title": title,
        "summary": summary,
        "action": "Answer the threads awaiting a reply before their deadlines (hourglass threads --status awaiting), or mark those that need none as \"no response needed\".",
        "windows": rate.windows,
        "level": level,
        "fired_at": now,
        "link": public_url.map(|u| format!("{}/threads", u.trim_end_matches('/'))),
    })
}

/// One check: raises the alert where the forecast reached `level` and
/// ends the episodes where it went back under. Returns the labels of the
/// instances alerted now.
pub async fn check(
    config: &Config,
    store: &dyn Store,
    level: f64,
    channel_of: &(dyn Fn(&str) -> String + Sync),
    now: DateTime<Utc>,
) -> crate::store::Result<Vec<String>> {
    let rates = crate::lrr::compute(&store.late_response_counts(now).await?);
    let mut raised = Vec::new();
    for r in &rates {
        let marketplace = r.marketplace.as_deref().unwrap_or("");
        let above = r.worst_forecast().is_some_and(|(_, f)| f >= level);
        if !above {
            if store
                .clear_late_response_alert(&r.instance, marketplace)
                .await?
            {
                info!(instance = %r.instance, marketplace, "The Late Response Rate forecast is back under the alert level.");
            }
            continue;
        }
        let tags = config
            .instance(&r.instance)
            .map(|i| i.tags.as_slice())
            .unwrap_or_default();
        let sinks = config.alerts.route(
            &r.instance,
            &channel_of(&r.instance),
            LATE_RESPONSE_RATE,
            tags,
        );
        let p = payload(r, level, config.http.public_url.as_deref(), now);
        let deliveries: Vec<(String, Value)> = sinks.into_iter().map(|s| (s, p.clone())).collect();
        if let Some(n) = store
            .raise_late_response_alert(&r.instance, marketplace, &deliveries, now)
            .await?
        {
            info!(instance = %r.instance, marketplace, deliveries = n, "The Late Response Rate forecast reached the alert level.");
            raised.push(r.label());
        }
    }
    Ok(raised)
}

/// The daemon's worker: [`check`] every `every`, and soon after new
/// messages arrive.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let Some(cfg) = ctx.config.alerts.late_response_rate.clone() else {
            return;
        };
        let level = match crate::lrr::parse_level(&cfg.level) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "The Late Response Rate alert level is invalid; the alert is off.");
                return;
            }
        };
        let every = cfg.every.0.max(Duration::from_secs(1));
        let clockings = ctx.clockings.clone();
        let channel_of = move |i: &str| {
            clockings
                .get(i)
                .map(|c| c.channel.clone())
                .unwrap_or_default()
        };
        loop {
            if let Err(e) = check(
                &ctx.config,
                ctx.store.as_ref(),
                level,
                &channel_of,
                Utc::now(),
            )
            .await
            {
                warn!(error = %format!("{e:#}"), "Cannot compute the Late Response Rate; retrying.");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lrr::{DayCount, Standing};

    #[test]
    fn the_payload_says_how_far_and_what_to_do() {
        let counts = vec![
            DayCount {
                instance: "amazon-eu".into(),
                marketplace: Some("amazon.de".into()),
                age_days: 3,
                standing: Standing::OnTime,
                count: 9,
            },
            DayCount {
                instance: "amazon-eu".into(),
                marketplace: Some("amazon.de".into()),
                age_days: 0,
                standing: Standing::Pending,
                count: 1,
            },
        ];
        let r = &crate::lrr::compute(&counts)[0];
        let p = payload(r, 0.1, Some("https://hg.example.com"), Utc::now());
        assert_eq!(p["kind"], LATE_RESPONSE_RATE);
        let title = p["title"].as_str().unwrap();
        assert_eq!(
            title,
            "Late Response Rate of amazon-eu (amazon.de) may reach 10.0% tomorrow (7 days)"
        );
        let summary = p["summary"].as_str().unwrap();
        assert!(summary.contains("7-day rate now 0.0%"), "{summary}");
        assert!(summary.contains("0.0% if they are"), "{summary}");
        let rendered = super::super::engine::render(&p, Utc::now());
        assert_eq!(rendered.title, title);
        assert!(
            rendered.text.contains("Answer the threads"),
            "{}",
            rendered.text
        );
        assert!(rendered.text.contains("https://hg.example.com/threads"));
    }
}
