//! The silent-channel watchdog: an instance that stops delivering messages
//! (a changed Seller Central notification setting, a full mailbox, a
//! webhook subscription gone) is noticed before a customer complains.
//!
//! Per instance, the rhythm is learnt from the store: inbound messages per
//! hour of the week over the last four weeks (one grouped query, by index,
//! recomputed at most every `relearn_every`). The silence since the last
//! inbound message is "much longer than usual" when the messages that
//! would usually have arrived in it add up to `expected_messages` or more
//! (default 6: were arrivals Poisson with that mean, a silence this long
//! happens by chance about once in 400). A weekend lull, when little
//! usually arrives, adds up to little and does not alert. An instance with
//! less than four weeks of history has no rhythm yet; only its
//! `expect_within` applies. The alert is an admin alert
//! (`thresholds = ["silence"]`), raised once per silence: the store
//! names the silence by its last message, so a new message ends it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::daemon::Context;
use crate::duration::{format_compact, Dur};

/// The route label and `kind` of these alerts.
pub const SILENCE: &str = "silence";

/// Weeks of history the rhythm is learnt from.
pub const WEEKS: i64 = 4;
const HOUR_MS: i64 = 3_600_000;

/// `[alerts.watchdog]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Set to false to turn the watchdog off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Alert when at least this many messages would usually have arrived
    /// since the last one (by the instance's rhythm of the last 4 weeks).
    #[serde(default = "default_expected")]
    pub expected_messages: f64,
    /// How often each instance is checked.
    #[serde(default = "default_check_every")]
    pub check_every: Dur,
    /// How often the rhythm is learnt anew from the store.
    #[serde(default = "default_relearn_every")]
    pub relearn_every: Dur,
    /// Amazon instances with `[instances.sp_api]` and `marketplace_ids`:
    /// SP-API's orders are counted only once the relay mail has been
    /// silent this long (an ordinary gap calls no API). See `relay.rs`.
    #[serde(default = "default_orders_min_silence")]
    pub orders_min_silence: Dur,
    /// getOrders is called at most this often per instance (on top of its
    /// usage plan, 0.0167 requests/s).
    #[serde(default = "default_orders_check_every")]
    pub orders_check_every: Dur,
    /// With no history to learn messages per order from: this many orders
    /// since the last relay message, without one message, is an alert.
    #[serde(default = "default_orders_without_mail")]
    pub orders_without_mail: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            enabled: true,
            expected_messages: default_expected(),
            check_every: default_check_every(),
            relearn_every: default_relearn_every(),
            orders_min_silence: default_orders_min_silence(),
            orders_check_every: default_orders_check_every(),
            orders_without_mail: default_orders_without_mail(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_expected() -> f64 {
    6.0
}
fn default_check_every() -> Dur {
    Dur::from_secs(300)
}
fn default_relearn_every() -> Dur {
    Dur::from_secs(3600)
}
fn default_orders_min_silence() -> Dur {
    Dur::from_secs(2 * 3600)
}
fn default_orders_check_every() -> Dur {
    Dur::from_secs(15 * 60)
}
fn default_orders_without_mail() -> u64 {
    30
}

/// Messages per hour of the week (Monday 00:00 UTC first), averaged over
/// the weeks learnt.
#[derive(Debug, Clone, PartialEq)]
pub struct Rhythm {
    pub per_hour: [f64; 168],
}

/// The hour of the week of an instant, Monday 00:00-01:00 UTC being 0.
pub fn hour_of_week(at: DateTime<Utc>) -> usize {
    at.weekday().num_days_from_monday() as usize * 24 + at.hour() as usize
}

impl Rhythm {
    /// From inbound message counts per hour since the epoch (`sent_at /
    /// 3600000`, as the store groups them) over `weeks` weeks.
    pub fn learn(counts: &[(i64, i64)], weeks: i64) -> Rhythm {
        let mut per_hour = [0.0; 168];
        for (hour, n) in counts {
            if let Some(at) = Utc.timestamp_opt(hour * 3600, 0).single() {
                per_hour[hour_of_week(at)] += *n as f64 / weeks.max(1) as f64;
            }
        }
        Rhythm { per_hour }
    }

    /// The messages that usually arrive between `from` and `to`.
    pub fn expected_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
        let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
        if to <= from {
            return 0.0;
        }
        // A silence of more than five weeks is far past any threshold.
        let to = to.min(from + 5 * 168 * HOUR_MS);
        let mut sum = 0.0;
        let mut hour = from.div_euclid(HOUR_MS);
        while hour * HOUR_MS < to {
            let (start, end) = (hour * HOUR_MS, (hour + 1) * HOUR_MS);
            let covered = (end.min(to) - start.max(from)) as f64 / HOUR_MS as f64;
            if let Some(at) = Utc.timestamp_millis_opt(start).single() {
                sum += covered * self.per_hour[hour_of_week(at)];
            }
            hour += 1;
        }
        sum
    }
}

/// What the store knows of an instance's arrivals.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

/// Why an instance is found silent.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub since: DateTime<Utc>,
    /// Messages that would usually have arrived meanwhile (rhythm known).
    pub expected: Option<f64>,
    /// The instance's `expect_within`, when that is what was exceeded.
    pub expect_within: Option<Duration>,
}

/// The decision, pure: is the instance silent for much longer than usual?
pub fn judge(
    arrivals: &Arrivals,
    rhythm: Option<&Rhythm>,
    expect_within: Option<Duration>,
    expected_messages: f64,
    now: DateTime<Utc>,
) -> Option<Silence> {
    let last = arrivals.last?;
    let learnt = arrivals
        .first
        .is_some_and(|f| f <= now - chrono::Duration::weeks(WEEKS));
    let expected = rhythm
        .filter(|_| learnt)
        .map(|r| r.expected_between(last, now));
    let by_rhythm = expected.is_some_and(|e| e >= expected_messages);
    let by_limit =
        expect_within.filter(|w| chrono::Duration::from_std(*w).is_ok_and(|w| now - last > w));
    (by_rhythm || by_limit.is_some()).then_some(Silence {
        since: last,
        expected,
        expect_within: by_limit,
    })
}

/// What to check, by platform type.
pub fn what_to_check(kind: &str, instance: &str) -> String {
    match kind {
        "amazon" => format!(
            "Amazon buyer messages reach hourglass as relay e-mail. In Seller Central, \
             Settings → Notification Preferences → Messaging: is \"Buyer Messages\" still on \
             and sent to the mailbox instance {instance} reads? Then check that mailbox: \
             quota, filters or forwarding rules that move Amazon mail elsewhere, the spam folder."
        ),
        "email" | "maildir" => format!(
            "Check the mailbox instance {instance} reads: is it full (quota), does a filter, \
             forwarding or another client move new mail out of the folders in `folders` \
             before hourglass sees it, and does mail to the address still arrive (MX, bounces)?"
        ),
        "ebay" => format!(
            "Check in My eBay that buyers' messages still arrive for this seller account, and \
             that the refresh token of instance {instance} still carries the \
             commerce.message scope (an expired token raises an `auth` alert)."
        ),
        "messenger" | "instagram" | "whatsapp" => format!(
            "Check the app's webhook subscription in the Meta App Dashboard (the `messages` \
             field for this Page or number), that {{public_url}}/webhooks/{instance} is \
             reachable from the internet, and that the access token is still valid."
        ),
        "telegram" => format!(
            "Check that no other program polls this bot or has set a webhook for it (Telegram \
             answers 409 then), and that the bot of instance {instance} is still in its chats."
        ),
        "x" => format!(
            "Check the daily read budget of instance {instance} (daily_read_budget) and that \
             its token still has the dm.read scope."
        ),
        _ => format!("Check that the platform of instance {instance} still delivers messages."),
    }
}

/// The alert as JSON (never a secret).
pub fn silence_payload(
    instance: &str,
    kind: &str,
    channel: &str,
    silence: &Silence,
    poll_state: &str,
    public_url: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    let silent_ms = (now - silence.since).num_milliseconds().max(0);
    let usual = match (silence.expect_within, silence.expected) {
        (Some(w), _) => format!(
            "a message at least every {} (expect_within)",
            format_compact(w)
        ),
        (None, Some(e)) => {
            format!("about {e:.0} messages in a span like this (the last {WEEKS} weeks' rhythm)")
        }
        (None, None) => String::new(),
    };
    let polls = match poll_state {
        "ok" => "polls succeed: the platform delivers nothing".to_owned(),
        "idle" => "no poll has finished yet (or the instance only receives webhooks)".to_owned(),
        other => format!(
            "the instance is in state {other}: see its last error in `hourglass connectors list`"
        ),
    };
    json!({
        "kind": SILENCE,
        "threshold": SILENCE,
        "instance": instance,
        "type": kind,
        "channel": channel,
        "last_message_at": silence.since,
        "silent_for": format_compact(Duration::from_millis(silent_ms as u64)),
        "expected_messages": silence.expected.map(|e| (e * 10.0).round() / 10.0),
        "usual": usual,
        "polls": polls,
        "action": what_to_check(kind, instance),
        "fired_at": now,
        "link": public_url.map(|u| format!("{}/api/v1/connectors", u.trim_end_matches('/'))),
    })
}

/// Worker: checks every enabled instance every `check_every`.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let cfg = ctx.config.alerts.watchdog.clone();
        if !cfg.enabled {
            return;
        }
        let mut rhythms: HashMap<String, (DateTime<Utc>, Rhythm)> = HashMap::new();
        loop {
            // The first check only after one period: by then the
            // instances have polled, and the alert can say whether their
            // polls succeed.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(cfg.check_every.0) => {}
            }
            let now = Utc::now();
            if let Err(e) = check_all(&ctx, &cfg, &mut rhythms, now).await {
                warn!(error = %format!("{e:#}"), "Watchdog check failed; retrying.");
            }
        }
    })
}

async fn check_all(
    ctx: &Context,
    cfg: &WatchdogConfig,
    rhythms: &mut HashMap<String, (DateTime<Utc>, Rhythm)>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let states: HashMap<String, String> = ctx
        .store
        .instances()
        .await?
        .into_iter()
        .map(|i| (i.name, i.state))
        .collect();
    for inst in ctx.config.instances.iter().filter(|i| i.enabled) {
        let name = inst.name();
        let state = states.get(name).map_or("idle", String::as_str);
        // Refused credentials have their own alert; a stopped instance
        // is silent on purpose.
        if state == "auth_failed" || state == "stopped" {
            continue;
        }
        let relearn =
            chrono::Duration::from_std(cfg.relearn_every.0).unwrap_or(chrono::Duration::hours(1));
        if rhythms.get(name).is_none_or(|(at, _)| now - *at >= relearn) {
            let since = now - chrono::Duration::weeks(WEEKS);
            let counts = ctx.store.arrivals_per_hour(name, since).await?;
            rhythms.insert(name.to_owned(), (now, Rhythm::learn(&counts, WEEKS)));
        }
        let arrivals = ctx.store.arrivals(name).await?;
        let rhythm = rhythms.get(name).map(|(_, r)| r);
        let Some(silence) = judge(
            &arrivals,
            rhythm,
            inst.expect_within.map(|d| d.0),
            cfg.expected_messages,
            now,
        ) else {
            continue;
        };
        let channel = inst.channel();
        let payload = silence_payload(
            name,
            inst.kind(),
            &channel,
            &silence,
            state,
            ctx.config.http.public_url.as_deref(),
            now,
        );
        let deliveries =
            super::admin::deliveries(&ctx.config, name, &channel, SILENCE, &payload, now);
        match ctx
            .store
            .raise_silence_alert(name, silence.since, &deliveries, now)
            .await?
        {
            Some(n) => warn!(
                instance = name,
                last_message_at = %silence.since,
                expected = silence.expected.unwrap_or(0.0),
                sinks = n,
                "Instance is silent for much longer than usual; alerting."
            ),
            None => debug!(instance = name, "Silence alerted on already."),
        }
    }
    debug!(
        instances = ctx.config.instances.len(),
        "Watchdog pass done."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Four weeks of a shop open Monday to Friday, 08:00-20:00 UTC, two
    /// messages an hour; nothing at night or at the weekend.
    fn weekday_shop() -> Rhythm {
        let mut counts = Vec::new();
        let start = at("2026-11-02T00:00:00Z").timestamp() / 3600; // a Monday
        for h in start..start + 4 * 168 {
            let t = Utc.timestamp_opt(h * 3600, 0).unwrap();
            if t.weekday().num_days_from_monday() < 5 && (8..20).contains(&t.hour()) {
                counts.push((h, 2));
            }
        }
        Rhythm::learn(&counts, 4)
    }

    #[test]
    fn the_rhythm_counts_per_hour_of_week() {
        let r = weekday_shop();
        assert_eq!(r.per_hour[8], 2.0, "Monday 08:00");
        assert_eq!(r.per_hour[7], 0.0, "Monday 07:00");
        assert_eq!(r.per_hour[5 * 24 + 10], 0.0, "Saturday 10:00");
        assert_eq!(
            hour_of_week(at("2026-12-06T23:30:00Z")),
            167,
            "Sunday 23:00"
        );
        // Half an hour of Monday 08:00 plus all of 09:00.
        let e = r.expected_between(at("2026-11-30T08:30:00Z"), at("2026-11-30T10:00:00Z"));
        assert!((e - 3.0).abs() < 1e-9, "{e}");
    }

    #[test]
    fn silence_table() {
        let r = weekday_shop();
        let old = Some(at("2026-10-01T00:00:00Z"));
        let arrivals = |last: &str| Arrivals {
            first: old,
            last: Some(at(last)),
        };
        let cases: &[(&str, Arrivals, Option<u64>, &str, bool)] = &[
            // The weekend lull: last message Friday 19:50, Monday 07:00.
            (
                "weekend lull",
                arrivals("2026-11-27T19:50:00Z"),
                None,
                "2026-11-30T07:00:00Z",
                false,
            ),
            // Monday 09:30, nothing since Friday 19:50: about 3.3 expected.
            (
                "monday 09:30",
                arrivals("2026-11-27T19:50:00Z"),
                None,
                "2026-11-30T09:30:00Z",
                false,
            ),
            // Monday 11:00: about 6.3 expected, alert.
            (
                "monday 11:00",
                arrivals("2026-11-27T19:50:00Z"),
                None,
                "2026-11-30T11:00:00Z",
                true,
            ),
            // Silent since Tuesday 10:00, now Tuesday 13:00: 6 expected.
            (
                "tuesday",
                arrivals("2026-12-01T10:00:00Z"),
                None,
                "2026-12-01T13:00:00Z",
                true,
            ),
            // A night: nothing expected.
            (
                "night",
                arrivals("2026-12-01T19:59:00Z"),
                None,
                "2026-12-02T07:59:00Z",
                false,
            ),
            // expect_within = 6h applies day and night.
            (
                "expect_within",
                arrivals("2026-12-01T19:59:00Z"),
                Some(6),
                "2026-12-02T02:00:00Z",
                true,
            ),
            (
                "within limit",
                arrivals("2026-12-01T19:59:00Z"),
                Some(6),
                "2026-12-02T01:58:00Z",
                false,
            ),
            // Less than four weeks of history: the rhythm is not used.
            (
                "new instance",
                Arrivals {
                    first: Some(at("2026-11-20T00:00:00Z")),
                    last: Some(at("2026-11-27T19:50:00Z")),
                },
                None,
                "2026-11-30T15:00:00Z",
                false,
            ),
            (
                "never a message",
                Arrivals::default(),
                Some(1),
                "2026-11-30T15:00:00Z",
                false,
            ),
        ];
        for (name, arrivals, within, now, silent) in cases {
            let within = within.map(|h| Duration::from_secs(h * 3600));
            let got = judge(arrivals, Some(&r), within, 6.0, at(now));
            assert_eq!(got.is_some(), *silent, "{name}: {got:?}");
        }
    }

    #[test]
    fn the_payload_says_what_to_check() {
        let s = Silence {
            since: at("2026-11-30T06:00:00Z"),
            expected: Some(9.04),
            expect_within: None,
        };
        let p = silence_payload(
            "amazon-de",
            "amazon",
            "amazon",
            &s,
            "ok",
            None,
            at("2026-11-30T12:00:00Z"),
        );
        assert_eq!(p["kind"], "silence");
        assert_eq!(p["silent_for"], "6h");
        assert_eq!(p["expected_messages"], 9.0);
        assert!(p["action"]
            .as_str()
            .unwrap()
            .contains("Notification Preferences"));
        let r = super::super::engine::render(&p, at("2026-11-30T12:00:00Z"));
        assert_eq!(
            r.title,
            "Silent: amazon-de (amazon) has received nothing for 6h"
        );
        assert!(r.text.contains("polls succeed"), "{}", r.text);
        assert!(r.text.contains("about 9 messages"), "{}", r.text);
    }
}
