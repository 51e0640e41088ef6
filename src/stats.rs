//! `hourglass stats`: first-response times, breach rate and volume.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::duration::{format_compact, Dur};
use crate::lrr::{percent, LateResponseRate};
use crate::store::ResponseSample;

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Figures {
    /// Customer messages that opened an awaiting cycle.
    pub conversations: usize,
    pub answered: usize,
    /// Answered after the deadline, or unanswered past it.
    pub breached: usize,
    /// Breached / (answered + unanswered past the deadline).
    pub breach_rate: Option<f64>,
    pub first_response_median_s: Option<i64>,
    pub first_response_p90_s: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub total: Figures,
    pub per_channel: BTreeMap<String, Figures>,
    /// Conversations opened per day (UTC) and channel.
    pub per_day: BTreeMap<String, BTreeMap<String, usize>>,
    /// Amazon's Late Response Rate per instance and marketplace over 7, 30
    /// and 90 days (whatever `since` says), with tomorrow's forecast.
    pub late_response_rate: Vec<LateResponseRate>,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn figures(
    samples: &[&ResponseSample],
    window_of: &dyn Fn(&str) -> Duration,
    now: DateTime<Utc>,
) -> Figures {
    let mut times: Vec<i64> = Vec::new();
    let (mut breached, mut decided) = (0, 0);
    for s in samples {
        let due = s.inbound_at + window_of(&s.channel);
        match s.first_response_at {
            Some(r) => {
                times.push((r - s.inbound_at).num_seconds());
                decided += 1;
                if r > due {
                    breached += 1;
                }
            }
            None if now > due => {
                decided += 1;
                breached += 1;
            }
            None => {}
        }
    }
    times.sort_unstable();
    Figures {
        conversations: samples.len(),
        answered: times.len(),
        breached,
        breach_rate: (decided > 0).then(|| breached as f64 / decided as f64),
        first_response_median_s: percentile(&times, 0.5),
        first_response_p90_s: percentile(&times, 0.9),
    }
}

pub fn compute(samples: &[ResponseSample], config: &Config, now: DateTime<Utc>) -> Report {
    let window_of = |channel: &str| {
        config
            .clock
            .channels
            .get(channel)
            .and_then(|p| p.window)
            .unwrap_or(config.clock.window)
            .chrono()
    };
    let all: Vec<&ResponseSample> = samples.iter().collect();
    let mut by_channel: BTreeMap<String, Vec<&ResponseSample>> = BTreeMap::new();
    let mut per_day: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for s in samples {
        by_channel.entry(s.channel.clone()).or_default().push(s);
        *per_day
            .entry(s.inbound_at.format("%Y-%m-%d").to_string())
            .or_default()
            .entry(s.channel.clone())
            .or_default() += 1;
    }
    Report {
        total: figures(&all, &window_of, now),
        per_channel: by_channel
            .iter()
            .map(|(c, v)| (c.clone(), figures(v, &window_of, now)))
            .collect(),
        per_day,
        late_response_rate: Vec::new(),
    }
}

fn secs(v: Option<i64>) -> String {
    v.map(|s| format_compact(std::time::Duration::from_secs(s.max(0) as u64)))
        .unwrap_or_else(|| "-".into())
}

pub fn render(r: &Report, since: Dur) -> String {
    let mut out = format!("Last {since}\n\n");
    out.push_str(&format!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}\n",
        "CHANNEL", "CONVS", "ANSWERED", "BREACHED", "RATE", "FIRST p50", "FIRST p90"
    ));
    let rows = r
        .per_channel
        .iter()
        .map(|(c, f)| (c.as_str(), f))
        .chain(std::iter::once(("all", &r.total)));
    for (c, f) in rows {
        out.push_str(&format!(
            "{:<12} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}\n",
            c,
            f.conversations,
            f.answered,
            f.breached,
            f.breach_rate
                .map(|x| format!("{:.1}%", x * 100.0))
                .unwrap_or_else(|| "-".into()),
            secs(f.first_response_median_s),
            secs(f.first_response_p90_s),
        ));
    }
    if !r.late_response_rate.is_empty() {
        out.push_str(&render_late_response_rate(&r.late_response_rate));
    }
    out.push_str("\nPer day:\n");
    for (day, channels) in &r.per_day {
        let parts: Vec<String> = channels.iter().map(|(c, n)| format!("{c} {n}")).collect();
        out.push_str(&format!("  {day}  {}\n", parts.join(", ")));
    }
    out
}

/// The Late Response Rate table of `stats`: each window's rate now and
/// tomorrow's forecast (if the awaiting cycles are answered at their
/// deadlines / not at all).
pub fn render_late_response_rate(rates: &[LateResponseRate]) -> String {
    let mut out = String::from(
        "\nLate Response Rate (answered after 24 h or not at all; tomorrow: awaiting answered at the deadline / not answered)\n",
    );
    out.push_str(&format!(
        "{:<28} {:>6} {:>6} {:>8} {:>8} {:>8} {:>20}\n",
        "INSTANCE", "WINDOW", "LATE", "ON TIME", "PENDING", "RATE", "TOMORROW"
    ));
    for r in rates {
        for w in &r.windows {
            out.push_str(&format!(
                "{:<28} {:>6} {:>6} {:>8} {:>8} {:>8} {:>20}\n",
                r.label(),
                format!("{}d", w.days),
                w.late,
                w.on_time,
                w.pending,
                percent(w.rate),
                format!(
                    "{} / {}",
                    percent(w.forecast_if_answered),
                    percent(w.forecast_if_unanswered)
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        channel: &str,
        hours_ago: i64,
        answered_after_h: Option<i64>,
        now: DateTime<Utc>,
    ) -> ResponseSample {
        let inbound_at = now - Duration::hours(hours_ago);
        ResponseSample {
            channel: channel.into(),
            inbound_at,
            first_response_at: answered_after_h.map(|h| inbound_at + Duration::hours(h)),
        }
    }

    #[test]
    fn breach_rate_and_percentiles() {
        let now = Utc::now();
        let config: Config = toml::from_str("").unwrap();
        let samples = vec![
            sample("amazon", 50, Some(1), now),
            sample("amazon", 50, Some(2), now),
            sample("amazon", 50, Some(30), now), // answered late
            sample("amazon", 30, None, now),     // unanswered, overdue
            sample("email", 2, None, now),       // still within its window
            sample("email", 40, Some(4), now),
        ];
        let r = compute(&samples, &config, now);
        let a = &r.per_channel["amazon"];
        assert_eq!((a.conversations, a.answered, a.breached), (4, 3, 2));
        assert_eq!(a.breach_rate, Some(0.5));
        assert_eq!(a.first_response_median_s, Some(2 * 3600));
        assert_eq!(a.first_response_p90_s, Some(30 * 3600));
        let e = &r.per_channel["email"];
        assert_eq!(
            e.breach_rate,
            Some(0.0),
            "pending conversations do not count"
        );
        assert_eq!(r.total.conversations, 6);
        assert_eq!(percentile(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9), Some(9));
    }
}
