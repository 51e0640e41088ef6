//! The views: the JSON shapes of threads, a thread, stats and connectors,
//! defined once and built from the store. `hourglass ... --json` prints
//! them, the HTTP API (`/api/v1/...`) answers with them and the web inbox
//! renders them, so the three never drift. These shapes are a public
//! contract (DESIGN §6): add fields, never rename or remove one.
//!
//! Text tables for the terminal live in [`text`]: fetching and rendering
//! stay apart.

pub mod text;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::Status;
use crate::config::Config;
use crate::store::{self, Store, ThreadFilter};

pub use crate::report::Report;
pub use crate::stats::{Figures, Report as Stats};

/// A thread in a listing (`threads --json`, `GET /api/v1/threads`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Thread {
    pub id: i64,
    /// The configured instance the thread came in on.
    pub instance: String,
    /// `amazon`, `email`, `ebay`, `messenger`, ...
    pub channel: String,
    #[schema(value_type = String, example = "awaiting")]
    /// awaiting | answered | breached | snoozed | no_response_needed
    pub status: Status,
    /// The customer's display name.
    pub customer: Option<String>,
    pub order_id: Option<String>,
    pub marketplace: Option<String>,
    pub subject: Option<String>,
    pub language: Option<String>,
    pub awaiting_since: Option<DateTime<Utc>>,
    /// The reply deadline (RFC 3339 UTC), null when not awaiting.
    pub due_at: Option<DateTime<Utc>>,
    /// Milliseconds until `due_at` (negative when breached).
    pub time_left_ms: Option<i64>,
    /// When the platform stops accepting free replies (Meta's 24 h).
    pub reply_window_closes_at: Option<DateTime<Utc>>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub message_count: i64,
    /// The last refused or bounced reply, in plain words.
    pub last_error: Option<String>,
    /// The agent who took the thread (acknowledged its alert) in the
    /// current awaiting cycle; its later alerts are not sent.
    pub taken_by: Option<String>,
    pub taken_at: Option<DateTime<Utc>>,
}

impl From<&store::ThreadSummary> for Thread {
    fn from(t: &store::ThreadSummary) -> Thread {
        Thread {
            id: t.id,
            instance: t.instance.clone(),
            channel: t.channel.clone(),
            status: t.status,
            customer: t.customer.clone(),
            order_id: t.order_id.clone(),
            marketplace: t.marketplace.clone(),
            subject: t.subject.clone(),
            language: t.language.clone(),
            awaiting_since: t.awaiting_since,
            due_at: t.due_at,
            time_left_ms: t.time_left_ms,
            reply_window_closes_at: t.reply_window_closes_at,
            snoozed_until: t.snoozed_until,
            message_count: t.message_count,
            last_error: t.last_error.clone(),
            taken_by: t.taken_by.clone(),
            taken_at: t.taken_at,
        }
    }
}

/// One message of a thread.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    pub id: i64,
    /// The platform's id of the message.
    pub external_id: String,
    /// inbound | outbound | system
    pub direction: String,
    /// An auto-responder or other automatic message.
    pub automatic: bool,
    pub sent_at: DateTime<Utc>,
    pub author: Option<String>,
    pub subject: Option<String>,
    pub text: String,
    /// When the platform reported this reply undelivered (Amazon's
    /// delivery-failure notice); null otherwise. An undelivered reply
    /// does not stop the reply clock.
    pub delivery_failed_at: Option<DateTime<Utc>>,
    /// Why it was not delivered, in the platform's words.
    pub delivery_error: Option<String>,
}

/// A reply in the outbox and its state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutboxEntry {
    pub id: String,
    /// queued | sending | sent | failed | uncertain
    pub state: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub text: String,
}

/// One entry of a thread's audit log (marks, snoozes, replies).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// A thread and its whole conversation (`show --json`,
/// `GET /api/v1/threads/{id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ThreadDetail {
    #[serde(flatten)]
    pub thread: Thread,
    pub messages: Vec<Message>,
    pub outbox: Vec<OutboxEntry>,
    pub audit: Vec<AuditEntry>,
}

impl From<&store::ThreadDetail> for ThreadDetail {
    fn from(d: &store::ThreadDetail) -> ThreadDetail {
        ThreadDetail {
            thread: Thread::from(&d.thread),
            messages: d
                .messages
                .iter()
                .map(|m| Message {
                    id: m.id,
                    external_id: m.external_id.clone(),
                    direction: m.direction.clone(),
                    automatic: m.automatic,
                    sent_at: m.sent_at,
                    author: m.author.clone(),
                    subject: m.subject.clone(),
                    text: m.text.clone(),
                    delivery_failed_at: m.delivery_failed_at,
                    delivery_error: m.delivery_error.clone(),
                })
                .collect(),
            outbox: d
                .outbox
                .iter()
                .map(|o| OutboxEntry {
                    id: o.id.clone(),
                    state: o.state.clone(),
                    attempts: o.attempts,
                    error: o.error.clone(),
                    created_at: o.created_at,
                    sent_at: o.sent_at,
                    text: o.text.clone(),
                })
                .collect(),
            audit: d
                .audit
                .iter()
                .map(|a| AuditEntry {
                    at: a.at,
                    actor: a.actor.clone(),
                    action: a.action.clone(),
                    detail: a.detail.clone(),
                })
                .collect(),
        }
    }
}

/// One identity of a customer: a channel's handle and the keys that link
/// it to the others (`email:…`, `relay:…`, `order:…`, `phone:…`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Identity {
    pub id: i64,
    /// `amazon`, `email`, `whatsapp`, ...
    pub channel: String,
    /// The handle on that channel; `CHANNEL:HANDLE` names it in
    /// `customers link` and `unlink`.
    pub handle: String,
    pub display_name: Option<String>,
    pub keys: Vec<String>,
}

/// A split an agent made: no automatic rule joins these two again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Split {
    /// `CHANNEL:HANDLE` of this customer's identity.
    pub identity: String,
    /// `CHANNEL:HANDLE` of the identity it was split from.
    pub other: String,
    pub other_customer_id: i64,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// One customer across channels (`customers show --json`,
/// `GET /api/v1/customers/{ref}`): identities, threads on every channel
/// (most recent first), and the splits agents made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Customer {
    pub id: i64,
    pub display_name: Option<String>,
    pub identities: Vec<Identity>,
    pub threads: Vec<Thread>,
    pub splits: Vec<Split>,
}

impl From<&store::CustomerDetail> for Customer {
    fn from(c: &store::CustomerDetail) -> Customer {
        Customer {
            id: c.id,
            display_name: c.display_name.clone(),
            identities: c
                .identities
                .iter()
                .map(|i| Identity {
                    id: i.id,
                    channel: i.channel.clone(),
                    handle: i.handle.clone(),
                    display_name: i.display_name.clone(),
                    keys: i.keys.clone(),
                })
                .collect(),
            threads: c.threads.iter().map(Thread::from).collect(),
            splits: c
                .splits
                .iter()
                .map(|s| Split {
                    identity: s.identity.clone(),
                    other: s.other.clone(),
                    other_customer_id: s.other_customer_id,
                    actor: s.actor.clone(),
                    at: s.at,
                })
                .collect(),
        }
    }
}

/// The customer `r` names; `None` when there is none.
pub async fn customer(
    store: &dyn Store,
    r: &crate::customers::CustomerRef,
    now: DateTime<Utc>,
) -> store::Result<Option<Customer>> {
    Ok(store.customer(r, now).await?.as_ref().map(Customer::from))
}

/// A configured instance and its state (`connectors list --json`,
/// `GET /api/v1/connectors`). Fields in alphabetical order: the JSON
/// has always listed them so.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectorStatus {
    /// The daily platform API call budget (eBay: 5,000), null where the
    /// platform has none.
    pub api_call_budget: Option<i64>,
    /// Platform API calls in the last 24 hours as last counted, null for
    /// connectors that do not count calls.
    pub api_calls_24h: Option<i64>,
    /// When the admin was alerted that the platform refused this
    /// instance's credentials (once per episode); null once it recovers.
    pub auth_alerted_at: Option<DateTime<Utc>>,
    /// Null until the instance has run once.
    pub channel: Option<String>,
    pub enabled: bool,
    /// Consecutive failed polls.
    pub failures: i64,
    pub last_error: Option<String>,
    /// auth | rate_limited | transient | bad_data | other | store
    pub last_error_kind: Option<String>,
    pub last_poll_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub messages_total: i64,
    pub name: String,
    pub next_poll_at: Option<DateTime<Utc>>,
    /// The cron schedule of its polls.
    pub schedule: String,
    /// idle | ok | backoff | auth_failed | stopped
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Today's billed reads, for platforms that charge per read (X):
    /// `{"day", "calls", "events", "budget", ...}`; null elsewhere.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<serde_json::Value>,
}

/// The threads `filter` selects, by deadline.
pub async fn threads(
    store: &dyn Store,
    filter: &ThreadFilter,
    now: DateTime<Utc>,
) -> store::Result<Vec<Thread>> {
    Ok(store
        .threads(filter, now)
        .await?
        .iter()
        .map(Thread::from)
        .collect())
}

/// One thread with its conversation; `None` when there is no such thread.
pub async fn thread(
    store: &dyn Store,
    id: i64,
    now: DateTime<Utc>,
) -> store::Result<Option<ThreadDetail>> {
    Ok(store
        .thread(id, now)
        .await?
        .as_ref()
        .map(ThreadDetail::from))
}

/// An agent takes a thread (acknowledges its alert): `hourglass ack ID`,
/// `POST /api/v1/threads/{id}/ack` and the web inbox's "Take" button. The
/// thread as it is now, with `taken_by` (whoever took it first in this
/// awaiting cycle); `None` when it is not awaiting a reply.
pub async fn take(
    store: &dyn Store,
    id: i64,
    actor: &str,
    now: DateTime<Utc>,
) -> store::Result<Option<Thread>> {
    if store.take_thread(id, actor, now).await?.is_none() {
        return Ok(None);
    }
    Ok(store
        .thread(id, now)
        .await?
        .map(|d| Thread::from(&d.thread)))
}

/// Response times, breach rate and volume over the last `since`.
pub async fn stats(
    store: &dyn Store,
    config: &Config,
    since: Duration,
    now: DateTime<Utc>,
) -> store::Result<Stats> {
    let since = chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX);
    let from = now
        .checked_sub_signed(since)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let samples = store.response_samples(from).await?;
    let mut report = crate::stats::compute(&samples, config, now);
    report.late_response_rate = crate::lrr::compute(&store.late_response_counts(now).await?);
    Ok(report)
}

/// `hourglass report` over the last `since`, days and hours in `tz`.
pub async fn report(
    store: &dyn Store,
    config: &Config,
    since: Duration,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> store::Result<Report> {
    let since = chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX);
    let from = now
        .checked_sub_signed(since)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let cycles = store.report_cycles(from, now).await?;
    let mut policies = std::collections::HashMap::new();
    let mut due_of = |c: &store::ReportCycle| {
        policies
            .entry((c.instance.clone(), c.channel.clone()))
            .or_insert_with(|| crate::daemon::clocking_for(config, &c.instance, &c.channel).policy)
            .due_at(c.cycle.started_at)
    };
    Ok(crate::report::compute(&cycles, &mut due_of, from, now, tz))
}

/// Every configured instance, with its state where it has run.
pub async fn connectors(store: &dyn Store, config: &Config) -> store::Result<Vec<ConnectorStatus>> {
    let known = store.instances().await?;
    let mut usage = std::collections::HashMap::new();
    for inst in &config.instances {
        if let Some(u) = store.cursors(inst.name()).await?.get("usage") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(u) {
                usage.insert(inst.name().to_owned(), v);
            }
        }
    }
    Ok(config
        .instances
        .iter()
        .map(|inst| {
            let status = known.iter().find(|k| k.name == inst.name());
            ConnectorStatus {
                api_call_budget: status.and_then(|s| s.api_call_budget),
                api_calls_24h: status.and_then(|s| s.api_calls_24h),
                auth_alerted_at: status.and_then(|s| s.auth_alerted_at),
                channel: status.map(|s| s.channel.clone()),
                enabled: inst.enabled,
                failures: status.map(|s| s.failures).unwrap_or(0),
                last_error: status.and_then(|s| s.last_error.clone()),
                last_error_kind: status.and_then(|s| s.last_error_kind.clone()),
                last_poll_at: status.and_then(|s| s.last_poll_at),
                last_success_at: status.and_then(|s| s.last_success_at),
                messages_total: status.map(|s| s.messages_total).unwrap_or(0),
                name: inst.name().to_owned(),
                next_poll_at: status.and_then(|s| s.next_poll_at),
                schedule: inst.schedule_text().to_owned(),
                state: status
                    .map(|s| s.state.clone())
                    .unwrap_or_else(|| "idle".into()),
                kind: inst.kind().to_owned(),
                usage: usage.remove(inst.name()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of a thread keeps the keys and the order scripts know.
    #[test]
    fn thread_json_keys_in_contract_order() {
        let t = Thread {
            id: 7,
            instance: "shop".into(),
            channel: "amazon".into(),
            status: Status::Awaiting,
            customer: Some("Ana".into()),
            order_id: None,
            marketplace: None,
            subject: None,
            language: None,
            awaiting_since: None,
            due_at: None,
            time_left_ms: None,
            reply_window_closes_at: None,
            snoozed_until: None,
            message_count: 1,
            last_error: None,
            taken_by: None,
            taken_at: None,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"id":7,"instance":"shop","channel":"amazon","status":"awaiting","customer":"Ana","order_id":null,"marketplace":null,"subject":null,"language":null,"awaiting_since":null,"due_at":null,"time_left_ms":null,"reply_window_closes_at":null,"snoozed_until":null,"message_count":1,"last_error":null,"taken_by":null,"taken_at":null}"#
        );
    }
}

/// One item `check-config --online` tried (`--json` prints an array).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineCheck {
    /// `store`, `instance` or `sink`.
    pub kind: &'static str,
    /// The instance's or the sink's name; the store's URL without password.
    pub name: String,
    pub ok: bool,
    /// The connector error's kind (`auth`, `transient`, ...) on failure.
    pub error_kind: Option<String>,
    /// What went wrong, in plain words; never a secret.
    pub error: Option<String>,
}

impl OnlineCheck {
    fn new(kind: &'static str, name: &str, result: Result<(), (String, String)>) -> OnlineCheck {
        let (error_kind, error) = match result {
            Ok(()) => (None, None),
            Err((k, e)) => (Some(k), Some(e)),
        };
        OnlineCheck {
            kind,
            name: name.to_owned(),
            ok: error.is_none(),
            error_kind,
            error,
        }
    }
}

/// How long one online check may take before it counts as failed.
const ONLINE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// `check-config --online`: the store answers, every enabled instance's
/// health check passes (a login, no poll, nothing sent), every alert sink
/// delivers a test alert to the agents. Customers get nothing.
pub async fn online_checks(config: &Config) -> Vec<OnlineCheck> {
    let mut out = Vec::new();
    let store_name = store::sql_redact(&config.store.url);
    let store_result = async {
        let password = match config.store.password.as_ref().map(|p| p.resolve()) {
            Some(Err(e)) => return Err(("other".to_owned(), format!("store.password: {e}"))),
            Some(Ok(p)) => Some(p),
            None => None,
        };
        let store = store::SqlStore::connect(&config.store.url, password.as_ref(), 1)
            .await
            .map_err(|e| ("transient".to_owned(), e.to_string()))?;
        use store::MigrationStore as _;
        let applied = store.applied_migrations().await;
        store.close().await;
        applied
            .map(|_| ())
            .map_err(|e| ("transient".to_owned(), e.to_string()))
    };
    let store_result = tokio::time::timeout(ONLINE_CHECK_TIMEOUT, store_result)
        .await
        .unwrap_or_else(|_| Err(("transient".to_owned(), timed_out())));
    out.push(OnlineCheck::new("store", &store_name, store_result));

    let instances = config
        .instances
        .iter()
        .filter(|i| i.enabled)
        .map(|inst| async move {
            let result = match inst.build_connector() {
                Err(e) => Err(("other".to_owned(), e)),
                Ok(conn) => {
                    match tokio::time::timeout(ONLINE_CHECK_TIMEOUT, conn.health_check()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err((e.kind().to_owned(), e.to_string())),
                        Err(_) => Err(("transient".to_owned(), timed_out())),
                    }
                }
            };
            OnlineCheck::new("instance", inst.name(), result)
        });
    out.extend(futures::future::join_all(instances).await);

    let sinks = tokio::time::timeout(
        ONLINE_CHECK_TIMEOUT,
        crate::alerts::test_all(&config.alerts),
    )
    .await
    .unwrap_or_else(|_| Err(timed_out()));
    match sinks {
        Ok(results) => out.extend(results.into_iter().map(|(name, r)| {
            OnlineCheck::new("sink", &name, r.map_err(|e| ("other".to_owned(), e)))
        })),
        Err(e) => out.push(OnlineCheck::new("sink", "*", Err(("other".to_owned(), e)))),
    }
    out
}

fn timed_out() -> String {
    format!("no answer within {}s", ONLINE_CHECK_TIMEOUT.as_secs())
}
