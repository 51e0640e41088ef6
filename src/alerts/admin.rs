//! Alerts to the admin about an instance rather than a thread: the
//! platform refused its credentials (a revoked or expired refresh token, a
//! wrong app secret). Any connector that answers `ConnectorError::Auth`
//! gets this; the poll loop raises it (see `daemon.rs`).
//!
//! One alert per episode: the store marks the instance alerted in the
//! transaction that queues the deliveries, and only a successful poll
//! clears the mark. Retries, restarts and other daemons on the same store
//! do not alert again; a failure after a recovery does. Deliveries go
//! through the same sinks, routes (`thresholds = ["auth"]`) and retries as
//! deadline alerts.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::Config;
use crate::store::Store;

/// The route label and `kind` of these alerts.
pub const AUTH: &str = "auth";

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
    let tags = config
        .instance(instance)
        .map(|i| i.tags.as_slice())
        .unwrap_or_default();
    let sinks = config.alerts.route(instance, channel, AUTH, tags);
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
    let deliveries: Vec<(String, Value)> =
        sinks.into_iter().map(|s| (s, payload.clone())).collect();
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
    let tags = config
        .instance(instance)
        .map(|i| i.tags.as_slice())
        .unwrap_or_default();
    let deliveries: Vec<(String, Value)> = config
        .alerts
        .route(instance, channel, AUTH, tags)
        .into_iter()
        .map(|s| (s, payload.clone()))
        .collect();
    sql.raise_expiry_alert(instance, &deliveries, now).await
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
