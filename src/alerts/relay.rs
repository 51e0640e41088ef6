//! The watchdog's relay-mail check: Amazon buyer messages reach hourglass
//! only as relay e-mail, so a changed notification setting in Seller
//! Central silences an instance while its shop keeps selling. For an
//! `amazon` instance with `[instances.sp_api]` and `marketplace_ids`, the
//! orders SP-API shows since the last relay message tell a broken setting
//! from a quiet shop.
//!
//! Only once the relay has been silent for `orders_min_silence` (default
//! 2h) is SP-API asked, at most every `orders_check_every` (default 15m)
//! and within getOrders' usage plan. The decision ([`decide`]):
//! - messages per order are learnt once per silence from the four weeks
//!   before it (relay messages in the store / orders getOrders counts in
//!   the same span, when that span had at least [`MIN_LEARN_ORDERS`]
//!   orders); the relay stopped when the orders since the last message
//!   would usually have brought `expected_messages` (default 6) or more;
//! - with no such history, `orders_without_mail` (default 30) orders
//!   without one relay message is the signal.
//!
//! The alert goes to the admin route (`thresholds = ["silence"]`), once per
//! silence: the store names the silence by its last message, so a new
//! relay message ends it and a restart does not repeat it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use hourglass_amazon::sp_api::{OrderCount, SpApi};
use hourglass_amazon::SpApiConfig;
use hourglass_connector::ConnectorError;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::silence::{WatchdogConfig, SILENCE, WEEKS};
use crate::daemon::Context;
use crate::duration::format_compact;

/// The `kind` of these alerts (their route label is [`SILENCE`]).
pub const RELAY_SILENCE: &str = "relay_silence";

/// The rows of the rendered alert: label and payload key.
pub const RENDERED_ROWS: &[(&str, &str)] = &[
    ("Last relay message", "last_message_at"),
    ("Orders since", "orders_text"),
    ("Usually", "usual"),
    ("What to check", "action"),
    ("Open", "link"),
];

/// Fewer orders than this in the learning span teach no ratio.
pub const MIN_LEARN_ORDERS: u64 = 20;
/// The orders needed never exceed this: a thousand orders without one
/// buyer message is a broken setting whatever the ratio says.
pub const MAX_ORDERS_NEEDED: u64 = 1000;
/// Nor fall below this: two or three orders prove little.
pub const MIN_ORDERS_NEEDED: u64 = 3;
/// getOrders pages read to learn the ratio (100 orders each).
const LEARN_PAGES: usize = 20;
/// Time one instance's check may wait for getOrders' usage plan.
const CALL_BUDGET: Duration = Duration::from_secs(120);

/// What the span before the silence shows: relay messages and orders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    pub messages: u64,
    pub orders: OrderCount,
}

/// Why the relay is found stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Orders since the last relay message.
    pub orders: u64,
    /// False when pages were left unread: `orders` is a lower bound.
    pub complete: bool,
    /// Messages per order, when learnt.
    pub per_order: Option<f64>,
    /// The orders that were enough to alert.
    pub needed: u64,
}

/// Messages per order from the span before the silence, when it says
/// enough: every order counted, at least [`MIN_LEARN_ORDERS`] of them,
/// and at least one message.
pub fn messages_per_order(history: Option<&History>) -> Option<f64> {
    let h = history?;
    (h.orders.complete && h.orders.orders >= MIN_LEARN_ORDERS && h.messages > 0)
        .then(|| h.messages as f64 / h.orders.orders as f64)
}

/// The orders since the last relay message that mean the relay stopped.
pub fn orders_needed(per_order: Option<f64>, expected_messages: f64, without_mail: u64) -> u64 {
    match per_order {
        Some(r) if r > 0.0 => {
            ((expected_messages / r).ceil() as u64).clamp(MIN_ORDERS_NEEDED, MAX_ORDERS_NEEDED)
        }
        _ => without_mail.max(1),
    }
}

/// The decision, pure: did the relay stop while orders kept coming?
pub fn decide(
    history: Option<&History>,
    orders_since: OrderCount,
    expected_messages: f64,
    without_mail: u64,
) -> Option<Verdict> {
    let per_order = messages_per_order(history);
    let needed = orders_needed(per_order, expected_messages, without_mail);
    (orders_since.orders >= needed).then_some(Verdict {
        orders: orders_since.orders,
        complete: orders_since.complete,
        per_order,
        needed,
    })
}

/// What to check, in Seller Central and in the mailbox.
pub fn what_to_check(instance: &str, mailbox: Option<&str>) -> String {
    let address = mailbox.map_or_else(
        || format!("the address instance {instance} reads"),
        |m| format!("{m}, the address instance {instance} reads"),
    );
    format!(
        "In Seller Central, Settings → Notification Preferences → Messaging: \"Buyer Messages\" \
         must be on and sent to {address} (a changed or removed address sends the relay \
         elsewhere). Then the relay's way into that mailbox: mail from \
         *@marketplace.amazon.<tld> (the buyers' relay aliases) must be whitelisted in its spam \
         filter, and no filter, forwarding rule or other client may move or reject it."
    )
}

/// The alert as JSON (never a secret). `last_message` is `None` for an
/// instance that never received relay mail; `since` starts the silence
/// (the last message, or when the daemon began watching).
#[allow(clippy::too_many_arguments)]
pub fn payload(
    instance: &str,
    channel: &str,
    last_message: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    verdict: &Verdict,
    mailbox: Option<&str>,
    public_url: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    let silent_ms = (now - since).num_milliseconds().max(0);
    let silent_for = format_compact(Duration::from_millis(silent_ms as u64));
    let complete = verdict.complete;
    let count = if complete {
        verdict.orders.to_string()
    } else {
        format!("at least {}", verdict.orders)
    };
    let since_text = since.format("%Y-%m-%d %H:%M UTC");
    let usual = match verdict.per_order {
        Some(r) => format!(
            "about {r:.2} buyer messages per order (the {WEEKS} weeks before): about {:.0} \
             messages for {count} orders",
            r * verdict.orders as f64
        ),
        None => format!(
            "no history to learn messages per order from: {} orders without one relay \
             message (orders_without_mail) are the signal",
            verdict.needed
        ),
    };
    json!({
        "kind": RELAY_SILENCE,
        "threshold": SILENCE,
        "instance": instance,
        "type": "amazon",
        "channel": channel,
        "title": match last_message {
            Some(_) => format!(
                "Relay mail stopped: {instance} (amazon) has had no buyer message for {silent_for} \
                 while SP-API shows {count} new orders"
            ),
            None => format!(
                "Relay mail never arrived: {instance} (amazon) has received no buyer message \
                 since hourglass began watching it {silent_for} ago, while SP-API shows {count} \
                 new orders"
            ),
        },
        "last_message_at": last_message,
        "silent_for": silent_for,
        "orders": verdict.orders,
        "orders_complete": complete,
        "orders_text": format!("{count} orders created since {since_text} (SP-API getOrders)"),
        "messages_per_order": verdict.per_order.map(|r| (r * 1000.0).round() / 1000.0),
        "expected_messages": verdict.per_order.map(|r| (r * verdict.orders as f64 * 10.0).round() / 10.0),
        "usual": usual,
        "action": what_to_check(instance, mailbox),
        "fired_at": now,
        "link": public_url.map(|u| format!("{}/api/v1/connectors", u.trim_end_matches('/'))),
    })
}

/// One watched instance.
struct Watched {
    name: String,
    channel: String,
    mailbox: Option<String>,
    api: Arc<SpApi>,
    /// When this daemon began watching: the silence of an instance that
    /// never received relay mail starts here.
    watching_since: DateTime<Utc>,
    /// The silence the ratio was learnt for, and what was learnt.
    learnt: Option<(DateTime<Utc>, Option<History>)>,
    /// No getOrders call before this, for the silence named here (a new
    /// silence is looked at once it is `orders_min_silence` old).
    next_call: (DateTime<Utc>, DateTime<Utc>),
}

/// The instances this check applies to: `amazon`, enabled, with
/// `[instances.sp_api]` and `marketplace_ids`.
fn watched(ctx: &Context) -> Vec<Watched> {
    let mut out = Vec::new();
    for inst in ctx.config.instances.iter().filter(|i| i.enabled) {
        if inst.kind() != "amazon" {
            continue;
        }
        let Some(raw) = inst.platform_keys.get("sp_api") else {
            continue;
        };
        let config: SpApiConfig = match raw.clone().try_into() {
            Ok(c) => c,
            // The config was checked at load; this cannot fail there.
            Err(e) => {
                warn!(instance = inst.name(), error = %e, "Relay check off: sp_api unreadable.");
                continue;
            }
        };
        if config.marketplace_ids.is_empty() {
            info!(
                instance = inst.name(),
                "Relay mail is not checked against orders: set sp_api.marketplace_ids."
            );
            continue;
        }
        let mailbox = ["imap", "maildir"]
            .iter()
            .find_map(|t| inst.platform_keys.get(*t))
            .and_then(|t| t.get("username"))
            .and_then(|u| u.as_str())
            .map(str::to_owned);
        match SpApi::new(config) {
            Ok(api) => out.push(Watched {
                name: inst.name().to_owned(),
                channel: inst.channel(),
                mailbox,
                api: Arc::new(api),
                watching_since: Utc::now(),
                learnt: None,
                next_call: (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC),
            }),
            Err(e) => warn!(
                instance = inst.name(),
                error = %e,
                "Relay check off: the SP-API client cannot be built."
            ),
        }
    }
    out
}

/// Worker: checks the watched instances every `check_every`.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let cfg = ctx.config.alerts.watchdog.clone();
        if !cfg.enabled {
            return;
        }
        let mut instances = watched(&ctx);
        if instances.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(cfg.check_every.0) => {}
            }
            for w in instances.iter_mut() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = check(&ctx, &cfg, w) => if let Err(e) = r {
                        warn!(instance = %w.name, error = %format!("{e:#}"), "Relay check failed; retrying.");
                    }
                }
            }
            debug!(instances = instances.len(), "Relay watch pass done.");
        }
    })
}

async fn check(ctx: &Context, cfg: &WatchdogConfig, w: &mut Watched) -> anyhow::Result<()> {
    let name = w.name.clone();
    let name = name.as_str();
    // Another daemon sharing the store watches the instance it holds.
    if !ctx.leases.borrow().contains_key(name) {
        return Ok(());
    }
    let state = ctx
        .store
        .instances()
        .await?
        .into_iter()
        .find(|i| i.name == name)
        .map(|i| i.state);
    // Refused credentials have their own alert; a stopped instance is
    // silent on purpose.
    if matches!(state.as_deref(), Some("auth_failed" | "stopped")) {
        return Ok(());
    }
    let arrivals = ctx.store.arrivals(name).await?;
    // `last` starts the silence: the last relay message, or, for an
    // instance that never received one (a notification setting never
    // made), the moment this daemon began watching it. That silence is
    // named by the epoch, so it alerts once, across restarts too.
    let (last, episode) = match arrivals.last {
        Some(last) => (last, last),
        None => (w.watching_since, DateTime::<Utc>::UNIX_EPOCH),
    };
    let now = Utc::now();
    if now - last < cfg.orders_min_silence.chrono()
        || (w.next_call.0 == last && now < w.next_call.1)
    {
        return Ok(());
    }
    if ctx.store.relay_alerted_for(name).await? == Some(episode) {
        return Ok(());
    }
    w.next_call = (last, now + cfg.orders_check_every.chrono());
    // The span the ratio is learnt from: the 4 weeks before the silence.
    let from = arrivals
        .first
        .unwrap_or(last)
        .max(last - chrono::Duration::weeks(WEEKS));
    let learning = w.learnt.as_ref().is_none_or(|(at, _)| *at != last);
    let messages = if learning && from < last {
        let per_hour = ctx.store.arrivals_per_hour(name, from).await?;
        per_hour.iter().map(|(_, n)| *n).sum::<i64>().max(0) as u64
    } else {
        0
    };
    match orders_since(cfg, w, from, messages, last, now).await {
        Ok(Some((history, count))) => {
            let verdict = decide(
                history.as_ref(),
                count,
                cfg.expected_messages,
                cfg.orders_without_mail,
            );
            let Some(verdict) = verdict else {
                debug!(
                    instance = name,
                    orders = count.orders,
                    last_message_at = %last,
                    "Orders since the last relay message are within the usual."
                );
                return Ok(());
            };
            let payload = payload(
                name,
                &w.channel,
                arrivals.last.is_some().then_some(last),
                last,
                &verdict,
                w.mailbox.as_deref(),
                ctx.config.http.public_url.as_deref(),
                now,
            );
            let deliveries =
                super::admin::deliveries(&ctx.config, name, &w.channel, SILENCE, &payload, now);
            match ctx
                .store
                .raise_relay_alert(name, episode, &deliveries, now)
                .await?
            {
                Some(n) => warn!(
                    instance = name,
                    orders = verdict.orders,
                    last_message_at = %last,
                    sinks = n,
                    "Amazon relay mail stopped while SP-API shows new orders; alerting."
                ),
                None => debug!(instance = name, "Relay silence alerted on already."),
            }
        }
        Ok(None) => debug!(instance = name, "getOrders' usage plan allows no call now."),
        Err(e) => {
            if let ConnectorError::RateLimited {
                retry_after: Some(d),
            } = &e
            {
                if let Ok(d) = chrono::Duration::from_std(*d) {
                    w.next_call.1 = w.next_call.1.max(now + d);
                }
            }
            warn!(
                instance = name,
                error = %e,
                retry_at = %w.next_call.1,
                "SP-API getOrders failed; the relay check retries later."
            );
        }
    }
    Ok(())
}

/// The history before the silence (learnt once per silence) and the
/// orders since it; `None` when the usage plan allowed no call in time.
async fn orders_since(
    cfg: &WatchdogConfig,
    w: &mut Watched,
    from: DateTime<Utc>,
    messages: u64,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<(Option<History>, OrderCount)>, ConnectorError> {
    let deadline = tokio::time::Instant::now() + CALL_BUDGET;
    if w.learnt.as_ref().is_none_or(|(at, _)| *at != last) {
        let history = if from < last {
            // getOrders wants CreatedBefore at least two minutes ago.
            let before = last.min(now - chrono::Duration::minutes(2));
            let orders = w
                .api
                .count_orders(from, Some(before), LEARN_PAGES, deadline)
                .await?;
            if orders.orders == 0 && !orders.complete {
                // Not one page in time: learn at the next check.
                return Ok(None);
            }
            Some(History { messages, orders })
        } else {
            None
        };
        w.learnt = Some((last, history));
    }
    let history = w.learnt.as_ref().and_then(|(_, h)| *h);
    let needed = orders_needed(
        messages_per_order(history.as_ref()),
        cfg.expected_messages,
        cfg.orders_without_mail,
    );
    // Enough pages to reach what is needed, and one more.
    let pages = (needed.div_ceil(100) as usize + 1).min(LEARN_PAGES);
    let count = w.api.count_orders(last, None, pages, deadline).await?;
    if count.orders == 0 && !count.complete {
        return Ok(None);
    }
    Ok(Some((history, count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(messages: u64, orders: u64, complete: bool) -> History {
        History {
            messages,
            orders: OrderCount { orders, complete },
        }
    }

    #[test]
    fn messages_per_order_need_enough_history() {
        assert_eq!(
            messages_per_order(Some(&history(30, 200, true))),
            Some(0.15)
        );
        // Pages left unread: the order count is a lower bound, no ratio.
        assert_eq!(messages_per_order(Some(&history(30, 200, false))), None);
        assert_eq!(messages_per_order(Some(&history(5, 19, true))), None);
        assert_eq!(messages_per_order(Some(&history(0, 500, true))), None);
        assert_eq!(messages_per_order(None), None);
    }

    #[test]
    fn the_decision_by_hand() {
        // (history, orders since, expected_messages, orders_without_mail,
        //  alert with this many needed?)
        type Case = (&'static str, Option<History>, u64, f64, u64, Option<u64>);
        let cases: &[Case] = &[
            // 30 messages for 200 orders = 0.15 a order; 6 / 0.15 = 40.
            (
                "ratio, 39 orders",
                Some(history(30, 200, true)),
                39,
                6.0,
                30,
                None,
            ),
            (
                "ratio, 40 orders",
                Some(history(30, 200, true)),
                40,
                6.0,
                30,
                Some(40),
            ),
            // 0.15 * 25 = 3.75 < 4: not yet; 27 * 0.15 = 4.05.
            (
                "ratio, 4 expected",
                Some(history(30, 200, true)),
                26,
                4.0,
                30,
                None,
            ),
            (
                "ratio, 27 orders",
                Some(history(30, 200, true)),
                27,
                4.0,
                30,
                Some(27),
            ),
            // A chatty shop: 2 messages an order, 6 / 2 = 3 orders.
            ("chatty", Some(history(100, 50, true)), 3, 6.0, 30, Some(3)),
            // Chattier still: the floor of 3 orders holds.
            ("floor", Some(history(600, 50, true)), 2, 6.0, 30, None),
            // A shop whose buyers rarely write: 1 in 1,000 -> capped.
            (
                "cap",
                Some(history(2, 2000, true)),
                1000,
                6.0,
                30,
                Some(1000),
            ),
            // No history: orders_without_mail.
            ("no history, 29", None, 29, 6.0, 30, None),
            ("no history, 30", None, 30, 6.0, 30, Some(30)),
            (
                "too little history",
                Some(history(2, 10, true)),
                30,
                6.0,
                30,
                Some(30),
            ),
            // A quiet shop: no orders, no alert.
            ("quiet shop", Some(history(30, 200, true)), 0, 6.0, 30, None),
        ];
        for (name, h, since, expected, without, want) in cases {
            let count = OrderCount {
                orders: *since,
                complete: true,
            };
            let got = decide(h.as_ref(), count, *expected, *without);
            assert_eq!(got.as_ref().map(|v| v.needed), *want, "{name}: {got:?}");
            if let Some(v) = got {
                assert_eq!(v.orders, *since, "{name}");
            }
        }
    }

    #[test]
    fn the_payload_names_the_instance_the_orders_and_what_to_check() {
        let last = DateTime::parse_from_rfc3339("2026-11-30T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = last + chrono::Duration::hours(7);
        let mut verdict = Verdict {
            orders: 42,
            complete: true,
            per_order: Some(0.15),
            needed: 40,
        };
        let p = payload(
            "amazon-de",
            "amazon",
            Some(last),
            last,
            &verdict,
            Some("seller@shop.example"),
            Some("https://hg.example/"),
            now,
        );
        assert_eq!(p["kind"], RELAY_SILENCE);
        assert_eq!(p["threshold"], "silence");
        assert_eq!(p["orders"], 42);
        assert_eq!(p["expected_messages"], 6.3);
        assert_eq!(p["link"], "https://hg.example/api/v1/connectors");
        let r = super::super::engine::render(&p, now);
        assert_eq!(
            r.title,
            "Relay mail stopped: amazon-de (amazon) has had no buyer message for 7h while \
             SP-API shows 42 new orders"
        );
        assert!(
            r.text
                .contains("Orders since: 42 orders created since 2026-11-30 06:00 UTC"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("about 0.15 buyer messages per order"),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains("Settings → Notification Preferences → Messaging"),
            "{}",
            r.text
        );
        assert!(r.text.contains("sent to seller@shop.example"), "{}", r.text);
        assert!(r.text.contains("*@marketplace.amazon.<tld>"), "{}", r.text);

        verdict.complete = false;
        let partial = payload(
            "amazon-de",
            "amazon",
            Some(last),
            last,
            &verdict,
            None,
            None,
            now,
        );
        assert!(
            partial["title"]
                .as_str()
                .unwrap()
                .contains("at least 42 new orders"),
            "{partial}"
        );

        // Never a relay message: the silence runs from when the daemon
        // began watching, and no last message is named.
        let never = payload("amazon-de", "amazon", None, last, &verdict, None, None, now);
        assert!(never["last_message_at"].is_null(), "{never}");
        let r = super::super::engine::render(&never, now);
        assert_eq!(
            r.title,
            "Relay mail never arrived: amazon-de (amazon) has received no buyer message since \
             hourglass began watching it 7h ago, while SP-API shows at least 42 new orders"
        );
        assert!(!r.text.contains("Last relay message"), "{}", r.text);
    }
}
