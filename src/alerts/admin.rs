//! Alerts to the admin about an instance rather than a thread: the
//! platform refused its credentials (a revoked or expired refresh token, a
//! wrong app secret), or the store's disk is full (see [`store_full`]). Any connector that answers `ConnectorError::Auth`
//! gets this; the poll loop raises it (see `daemon.rs`).
//!
//! One alert per episode: the store marks the instance alerted in the
//! transaction that queues the deliveries, and only a successful poll
//! clears the mark. Retries, restarts and other daemons on the same store
//! do not alert again; a failure after a recovery does. Deliveries go
//! through the same sinks, routes (`thresholds = ["auth"]`) and retries as
//! deadline alerts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::config::Config;
use crate::store::{NewDelivery, Store};

/// The route label and `kind` of these alerts.
pub const AUTH: &str = "auth";

/// The route label and `kind` of the alert that the store's disk is full.
pub const STORE: &str = "store";

/// Set while the store refuses writes for lack of space (an episode).
static STORE_FULL: AtomicBool = AtomicBool::new(false);

/// What the admin should do when the store's disk is full.
pub fn store_full_action() -> String {
    "Free space on the disk that holds the store (or grow it). Until then ingest is paused: \
     each poll's batch is refused whole, nothing of it is written and the cursor does not \
     move, so nothing is lost. Ingest resumes by itself once there is room; no restart \
     is needed."
        .to_owned()
}

/// The store-full alert as JSON. `error` is the database's message, which
/// names no secret (never the store URL).
pub fn store_full_payload(
    instance: &str,
    channel: &str,
    error: &str,
    public_url: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "kind": STORE,
        "threshold": STORE,
        "instance": instance,
        "channel": channel,
        "error": error,
        "action": store_full_action(),
        "fired_at": now,
        "link": public_url.map(|u| format!("{}/readyz", u.trim_end_matches('/'))),
    })
}

/// The store refused a write because its disk is full (noticed by the
/// poll of `instance`). The first time in an episode, the admin is alerted
/// through the routes for `thresholds = ["store"]`; returns whether this
/// call raised it.
///
/// The alert cannot be queued in the store like the others: the store is
/// what is full. It is delivered from memory by a task of its own, with
/// the delivery worker's retries, once per episode in this process (a
/// restart during the episode alerts again, which is the safe side).
pub fn store_full(config: &Arc<Config>, instance: &str, channel: &str, error: &str) -> bool {
    if STORE_FULL.swap(true, Ordering::SeqCst) {
        return false;
    }
    let tags = config
        .instance(instance)
        .map(|i| i.tags.clone())
        .unwrap_or_default();
    let names = config.alerts.route(instance, channel, STORE, &tags);
    let payload = store_full_payload(
        instance,
        channel,
        error,
        config.http.public_url.as_deref(),
        Utc::now(),
    );
    let config = config.clone();
    tokio::spawn(async move {
        let sinks = match super::sinks::build(&config.alerts) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Alert sinks cannot be built; the store-full alert is not sent.");
                return;
            }
        };
        let message = super::engine::render(&payload, Utc::now());
        // Not a stored row: the episode's start names it, the same for
        // every retry of this alert.
        let key = format!("store-{}", Utc::now().timestamp_millis());
        let max_attempts = config.alerts.max_attempts.max(1);
        let sends = names.iter().map(|name| {
            let (sinks, message, key) = (&sinks, &message, &key);
            async move {
                let Some(sink) = sinks.get(name) else {
                    warn!(sink = %name, "No sink of this name in the configuration; the store-full alert is not sent there.");
                    return;
                };
                let mut wait = Duration::from_secs(5);
                for attempt in 1..=max_attempts {
                    match sink.send(message, key).await {
                        Ok(()) => {
                            info!(sink = %name, threshold = STORE, "Alert delivered.");
                            return;
                        }
                        Err(e) => {
                            warn!(sink = %name, threshold = STORE, attempts = attempt, error = %e.message, "Alert delivery failed.");
                            if e.permanent {
                                return;
                            }
                            tokio::time::sleep(e.retry_after.unwrap_or(wait)).await;
                            wait = (wait * 2).min(Duration::from_secs(600));
                        }
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
    });
    true
}

/// A write to the store succeeded: ends a store-full episode, if one was
/// open. Returns whether it did.
pub fn store_writable() -> bool {
    STORE_FULL.swap(false, Ordering::SeqCst)
}

/// What the admin should do, for any platform. The connector's own error
/// (shown beside it) says what exactly the platform refused.
pub fn auth_action(instance: &str, kind: &str) -> String {
    format!(
        "Renew the credentials of instance {instance} ({kind}): sign in to the platform again \
         and consent (or issue a new token or key), store it where the instance's secret \
         reference points (env:, file: or credential:), then reload hourglass \
         (systemctl reload hourglass). Until then the instance is retried with backoff and \
         ingests nothing; other instances are not affected."
    )
}

/// The alert as JSON: kept with the queued delivery and sent as-is to
/// `format = "json"` webhooks. Never carries a secret: `error` is the
/// connector's message, which names references, not values.
pub fn auth_payload(
    instance: &str,
    kind: &str,
    channel: &str,
    error: &str,
    public_url: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "kind": AUTH,
        "threshold": AUTH,
        "instance": instance,
        "type": kind,
        "channel": channel,
        "error": error,
        "action": auth_action(instance, kind),
        "fired_at": now,
        "link": public_url.map(|u| format!("{}/api/v1/connectors", u.trim_end_matches('/'))),
    })
}

/// Raises the admin alert for `instance` unless this episode was alerted
/// on already. Returns the deliveries queued (`None`: alerted before).
pub async fn raise_auth_alert(
    config: &Config,
    store: &dyn Store,
    instance: &str,
    kind: &str,
    channel: &str,
    error: &str,
    now: DateTime<Utc>,
) -> crate::store::Result<Option<usize>> {
    let payload = auth_payload(
        instance,
        kind,
        channel,
        error,
        config.http.public_url.as_deref(),
        now,
    );
    let mut payload = payload;
    if let Some((action, link)) = connect_action(config, instance) {
        payload["action"] = json!(action);
        payload["link"] = json!(link);
    }
    let deliveries = deliveries(config, instance, channel, AUTH, &payload, now);
    store.raise_auth_alert(instance, &deliveries, now).await
}

/// How long before a granted token expires the admin is warned.
pub const EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(30);

/// For an instance with a consent flow: the command and the button that
/// connect it again, and the admin page's link.
pub fn connect_action(config: &Config, instance: &str) -> Option<(String, Option<String>)> {
    let inst = config.instance(instance)?;
    let consent = inst.settings().ok()?.consent(inst.kind(), instance)?.ok()?;
    let admin = config
        .http
        .public_url
        .as_deref()
        .map(|u| format!("{}/admin", u.trim_end_matches('/')));
    Some((
        format!(
            "Connect {instance} to {} again: press \"Connect to {}\" on the admin page{}, or run `hourglass connectors authorize {instance} --listen 127.0.0.1:8765` and open the URL it prints. Until then the instance is retried with backoff and ingests nothing; other instances are not affected.",
            consent.platform(),
            consent.platform(),
            admin.as_deref().map(|a| format!(" ({a})")).unwrap_or_default(),
        ),
        admin,
    ))
}

/// Warns the admin, once per connection, that the token a consent flow
/// granted `instance` expires within [`EXPIRY_WARNING`] (eBay refresh
/// tokens: 18 months). Returns the deliveries queued, `None` when nothing
/// is due or the warning went out already.
pub async fn check_expiry(
    config: &Config,
    store: &dyn Store,
    instance: &str,
    kind: &str,
    channel: &str,
    now: DateTime<Utc>,
) -> crate::store::Result<Option<usize>> {
    let Some(sql) = store.as_sql() else {
        return Ok(None);
    };
    let grants = sql.grants().await?;
    let Some(grant) = grants.get(instance) else {
        return Ok(None);
    };
    let Some(expires) = grant.expires_at else {
        return Ok(None);
    };
    if grant.expiry_alerted_at.is_some() || expires - now > EXPIRY_WARNING {
        return Ok(None);
    }
    let (action, link) =
        connect_action(config, instance).unwrap_or_else(|| (auth_action(instance, kind), None));
    let when = expires.format("%Y-%m-%d %H:%M UTC");
    let payload = json!({
        "kind": AUTH,
        "problem": "expiry",
        "threshold": AUTH,
        "title": format!("Action needed: {instance} ({kind}) must be connected again by {when}"),
        "instance": instance,
        "type": kind,
        "channel": channel,
        "error": format!("The {} token of {instance} expires on {when}; after that the instance ingests nothing.", grant.platform),
        "expires_at": expires,
        "action": action,
        "fired_at": now,
        "link": link,
    });
    let deliveries = deliveries(config, instance, channel, AUTH, &payload, now);
    sql.raise_expiry_alert(instance, &deliveries, now).await
}

/// The deliveries of an admin alert: its routes (`thresholds = [kind]`),
/// each held or not by quiet hours.
pub fn deliveries(
    config: &Config,
    instance: &str,
    channel: &str,
    kind: &str,
    payload: &Value,
    now: DateTime<Utc>,
) -> Vec<NewDelivery> {
    let tags = config
        .instance(instance)
        .map(|i| i.tags.as_slice())
        .unwrap_or_default();
    config
        .alerts
        .route_at(instance, channel, kind, tags, now)
        .into_iter()
        .map(|(sink, held_until)| NewDelivery {
            sink,
            payload: payload.clone(),
            held_until,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_says_which_instance_and_what_to_do() {
        let now = Utc::now();
        let p = auth_payload(
            "ebay-de",
            "ebay",
            "ebay",
            "eBay refused the seller's refresh token (invalid_grant)",
            Some("https://hg.example.com/"),
            now,
        );
        assert_eq!(p["kind"], "auth");
        assert_eq!(p["instance"], "ebay-de");
        assert!(p["action"]
            .as_str()
            .unwrap()
            .contains("Renew the credentials of instance ebay-de (ebay)"));
        assert_eq!(p["link"], "https://hg.example.com/api/v1/connectors");
        let r = super::super::engine::render(&p, now);
        assert_eq!(r.title, "Action needed: ebay-de (ebay) cannot sign in");
        assert!(r.text.contains("invalid_grant"), "{}", r.text);
        assert!(r.text.contains("systemctl reload hourglass"), "{}", r.text);
        assert!(!r.text.contains("Thread"), "{}", r.text);
    }
}
