//! X direct messages through API v2 (`type = "x"`).
//!
//! Every read costs money on X's pay-per-use plan, so this connector reads
//! as little as it can: a sparse default schedule (every 5 minutes), only
//! `MessageCreate` events, only the fields it uses, pages never larger than
//! the day's budget has left, and each poll stops at the newest event
//! already stored. `GET /2/dm_events` lists newest first; a scan that
//! spans several pages keeps its `pagination_token` and the newest id it
//! started from in the cursor, so each page is committed as it is read and
//! a crash never reads a page twice. The events read today are counted in
//! the cursor too: `daily_read_budget` holds across restarts, and
//! `connectors list` shows it.
//!
//! OAuth 2.0 user tokens: X invalidates a refresh token when it is used
//! and returns a new one, which the client seals into the daemon's vault
//! before anything else (see [`client`]).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod config;
pub mod consent;
pub mod normalize;

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use hourglass_connector::platform::PlatformOf;
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, SentCheck, SentReply,
    Vault,
};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use client::{Client, Endpoint};
pub use config::{XConfig, XSettings, DEFAULT_SCHEDULE, SEND_QUOTA};
pub use normalize::{cmp_ids, read_page, Page, CHANNEL};

/// `type = "x"`.
pub static PLATFORM: PlatformOf<XSettings> = PlatformOf::new("x");

/// X takes at most 10,000 characters in one direct message.
pub const MAX_TEXT: usize = 10_000;

/// The cursor scope of the day's usage (`connectors list` shows it).
pub const USAGE_SCOPE: &str = "usage";

/// Share of the budget at which the admin is warned.
const WARN_AT: f64 = 0.8;

const DM_EVENT_FIELDS: &str = "id,event_type,text,created_at,dm_conversation_id,attachments";
const EXPANSIONS: &str = "sender_id,participant_ids";
const USER_FIELDS: &str = "name,username";

/// Whether X takes `text` as a direct message: the reason when not.
pub fn check_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("X cannot send an empty direct message".into());
    }
    let n = text.chars().count();
    if n > MAX_TEXT {
        return Err(format!(
            "the reply is {n} characters long and an X direct message takes at most {MAX_TEXT}; shorten it"
        ));
    }
    Ok(())
}

/// Where polling stands (cursor scope `""`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// The newest event id stored by a complete scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_id: Option<String>,
    /// A scan spanning several polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan: Option<Scan>,
    /// The seller's user id, once asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    me: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scan {
    /// The newest event id of the scan: `last_id` once it completes.
    top: String,
    /// The next (older) page.
    next_token: String,
}

/// The day's reads (cursor scope `usage`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The UTC day counted.
    pub day: NaiveDate,
    /// `GET` calls made by polls.
    pub calls: u32,
    /// Direct-message events read (what X bills).
    pub events: u32,
    /// The budget these count against.
    #[serde(default)]
    pub budget: u32,
    /// The admin was told the budget is near.
    #[serde(default)]
    pub warned: bool,
    /// The admin was told the budget is spent.
    #[serde(default)]
    pub exhausted: bool,
}

impl Usage {
    fn today(cursors: &Cursors, today: NaiveDate, budget: u32) -> Usage {
        let stored = cursors
            .get(USAGE_SCOPE)
            .and_then(|v| serde_json::from_str::<Usage>(v).ok())
            .filter(|u| u.day == today);
        let mut u = stored.unwrap_or(Usage {
            day: today,
            calls: 0,
            events: 0,
            budget,
            warned: false,
            exhausted: false,
        });
        u.budget = budget;
        u
    }

    fn left(&self) -> u32 {
        self.budget.saturating_sub(self.events)
    }
}

/// One X account.
pub struct XConnector {
    instance: String,
    config: XConfig,
    client: Client,
    /// The seller's user id: configured or asked once.
    me: Mutex<Option<String>>,
    /// Why the last poll read nothing though it succeeded (the budget).
    note: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bad(reason: String, raw: &[u8]) -> ConnectorError {
    ConnectorError::BadData {
        reason,
        raw: raw.to_vec(),
    }
}

impl XConnector {
    /// Resolves the secrets; errors name the key, never a value.
    pub fn new(instance: &str, config: XConfig) -> Result<XConnector, String> {
        let client = Client::new(instance, &config)?;
        let me = config.user_id.clone();
        Ok(XConnector {
            instance: instance.to_owned(),
            config,
            client,
            me: Mutex::new(me),
            note: Mutex::new(None),
        })
    }

    /// The seller's user id: configured, from the cursor, or asked from
    /// `GET /2/users/me` (one read, then kept in the cursor).
    async fn me(&self, state: &State) -> Result<String, ConnectorError> {
        if let Some(me) = lock(&self.me).clone().or_else(|| state.me.clone()) {
            return Ok(me);
        }
        let answer = self
            .client
            .call(Endpoint::Me, Method::GET, "/2/users/me", &[], None)
            .await?;
        if !answer.is_success() {
            return Err(ConnectorError::Auth(format!(
                "X refused GET /2/users/me ({}); the token needs the users.read scope",
                answer.problem()
            )));
        }
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| bad(format!("GET /2/users/me is not JSON: {e}"), &answer.body))?;
        let id = v
            .pointer("/data/id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("GET /2/users/me has no data.id".into(), &answer.body))?
            .to_owned();
        *lock(&self.me) = Some(id.clone());
        Ok(id)
    }

    fn refused_read(&self, answer: &client::Answer, what: &str) -> ConnectorError {
        match answer.status {
            401 | 403 => ConnectorError::Auth(format!(
                "X refused {what} ({}); the app needs direct-message access and the token the dm.read scope",
                answer.problem()
            )),
            _ => ConnectorError::Other(format!("X refused {what}: {}", answer.problem())),
        }
    }
}

#[async_trait]
impl Connector for XConnector {
    fn kind(&self) -> &str {
        "x"
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            poll: true,
            push: false,
            send: true,
            check_sent: true,
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        *lock(&self.me) = self.config.user_id.clone();
        self.me(&State::default()).await.map(|_| ())
    }

    fn poll_is_read_only(&self) -> bool {
        // Reading changes nothing on X, but each read is billed: no reads
        // ahead of the commits.
        false
    }

    fn partial_failure(&self) -> Option<String> {
        lock(&self.note).clone()
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        *lock(&self.note) = None;
        let state: State = match cursors.get("") {
            Some(v) => serde_json::from_str(v).map_err(|e| {
                bad(
                    format!("stored X cursor is not readable: {e}"),
                    v.as_bytes(),
                )
            })?,
            None => State::default(),
        };
        let now = Utc::now();
        let budget = self.config.daily_read_budget;
        let mut usage = Usage::today(cursors, now.date_naive(), budget);
        let mut batch = Batch::default();
        if usage.left() == 0 {
            let message = format!(
                "daily_read_budget of {budget} X events is spent ({} read in {} calls today); polling resumes at 00:00 UTC",
                usage.events, usage.calls
            );
            if !usage.exhausted {
                tracing::error!(instance = %self.instance, events = usage.events, budget, "The X read budget for today is spent; polling stops until 00:00 UTC. Raise daily_read_budget to read more.");
                usage.exhausted = true;
                batch.cursors.insert(USAGE_SCOPE.into(), usage_json(&usage));
            }
            *lock(&self.note) = Some(message);
            return Ok(batch);
        }
        let mut next = state.clone();
        let me = self.me(&state).await?;
        next.me = Some(me.clone());
        let page_size = self.config.page_size.min(usage.left()).max(1);
        let mut query = vec![
            ("max_results", page_size.to_string()),
            ("event_types", "MessageCreate".to_owned()),
            ("dm_event.fields", DM_EVENT_FIELDS.to_owned()),
            ("expansions", EXPANSIONS.to_owned()),
            ("user.fields", USER_FIELDS.to_owned()),
        ];
        if let Some(scan) = &state.scan {
            query.push(("pagination_token", scan.next_token.clone()));
        }
        let answer = self
            .client
            .call(
                Endpoint::DmEvents,
                Method::GET,
                "/2/dm_events",
                &query,
                None,
            )
            .await?;
        usage.calls += 1;
        if answer.status == 400 && state.scan.is_some() {
            // The pagination token is no longer accepted: the scan starts
            // again from the newest event and reads down to the stored one
            // (some events twice, none lost).
            tracing::warn!(instance = %self.instance, detail = %answer.problem(), "X refused the saved pagination token; scanning again from the newest event.");
            next.scan = None;
            batch.more = true;
            batch.cursors.insert(
                String::new(),
                serde_json::to_string(&next).unwrap_or_default(),
            );
            batch.cursors.insert(USAGE_SCOPE.into(), usage_json(&usage));
            return Ok(batch);
        }
        if !answer.is_success() {
            return Err(self.refused_read(&answer, "GET /2/dm_events"));
        }
        let page: Page = serde_json::from_slice(&answer.body).map_err(|e| {
            bad(
                format!("GET /2/dm_events is not the documented JSON: {e}"),
                &answer.body,
            )
        })?;
        let read = page.data.len() as u32;
        usage.events = usage
            .events
            .saturating_add(page.meta.result_count.unwrap_or(read).max(read));
        let r = read_page(&page, &me, state.last_id.as_deref());
        let top = state
            .scan
            .as_ref()
            .map(|s| s.top.clone())
            .or(r.newest.clone());
        match (&page.meta.next_token, r.reached) {
            (Some(token), false) if top.is_some() => {
                next.scan = top.map(|top| Scan {
                    top,
                    next_token: token.clone(),
                });
                batch.more = true;
            }
            _ => {
                next.scan = None;
                if let Some(top) = top {
                    next.last_id = Some(match &state.last_id {
                        Some(last) if cmp_ids(last, &top).is_gt() => last.clone(),
                        _ => top,
                    });
                }
            }
        }
        if !usage.warned && f64::from(usage.events) >= f64::from(budget) * WARN_AT {
            usage.warned = true;
            tracing::warn!(instance = %self.instance, events = usage.events, budget, "The X read budget for today is nearly spent.");
        }
        batch.messages = r.messages;
        batch.quarantined = r.quarantined;
        batch.cursors.insert(
            String::new(),
            serde_json::to_string(&next).unwrap_or_default(),
        );
        batch.cursors.insert(USAGE_SCOPE.into(), usage_json(&usage));
        Ok(batch)
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        check_text(&reply.text).map_err(ConnectorError::Refused)?;
        let conversation = conversation_of(reply)?;
        let path = format!("/2/dm_conversations/{conversation}/messages");
        let answer = self
            .client
            .call(
                Endpoint::Send,
                Method::POST,
                &path,
                &[],
                Some(&json!({ "text": reply.text })),
            )
            .await?;
        if !answer.is_success() {
            return Err(match answer.status {
                400 | 403 | 404 => ConnectorError::Refused(format!(
                    "X refused the direct message: {}",
                    answer.problem()
                )),
                _ => ConnectorError::Other(format!(
                    "X refused the direct message: {}",
                    answer.problem()
                )),
            });
        }
        let v: Value = serde_json::from_slice(&answer.body).map_err(|e| {
            bad(
                format!("the answer to the direct message is not JSON: {e}"),
                &answer.body,
            )
        })?;
        let id = v
            .pointer("/data/dm_event_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad(
                    "the answer to the direct message has no data.dm_event_id".into(),
                    &answer.body,
                )
            })?;
        Ok(SentReply {
            external_id: id.to_owned(),
            sent_at: Utc::now(),
        })
    }

    /// After a crash mid-send: the newest events of the conversation (one
    /// small page) hold the reply if it left.
    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let conversation = conversation_of(reply)?;
        let me = self.me(&State::default()).await?;
        let path = format!("/2/dm_conversations/{conversation}/dm_events");
        let query = [
            ("max_results", "10".to_owned()),
            ("event_types", "MessageCreate".to_owned()),
            ("dm_event.fields", DM_EVENT_FIELDS.to_owned()),
            ("expansions", "sender_id".to_owned()),
        ];
        let answer = self
            .client
            .call(
                Endpoint::ConversationEvents,
                Method::GET,
                &path,
                &query,
                None,
            )
            .await?;
        if !answer.is_success() {
            return Ok(SentCheck::CannotTell);
        }
        let Ok(page) = serde_json::from_slice::<Page>(&answer.body) else {
            return Ok(SentCheck::CannotTell);
        };
        let found = read_page(&page, &me, None).messages.into_iter().find(|m| {
            m.direction == hourglass_connector::Direction::Outbound && m.text == reply.text
        });
        Ok(match found {
            Some(m) => SentCheck::Sent(SentReply {
                external_id: m.external_id,
                sent_at: m.sent_at,
            }),
            None => SentCheck::NotSent,
        })
    }

    fn attach_vault(&self, vault: Arc<dyn Vault>) {
        self.client.attach_vault(vault);
    }
}

fn usage_json(u: &Usage) -> String {
    serde_json::to_string(u).unwrap_or_default()
}

/// The conversation a reply goes to: the thread key (`dm_conversation_id`).
fn conversation_of(reply: &OutgoingReply) -> Result<String, ConnectorError> {
    let id = reply
        .in_reply_to_meta
        .get("dm_conversation_id")
        .and_then(Value::as_str)
        .unwrap_or(&reply.thread_key);
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '-') {
        return Err(ConnectorError::Refused(format!(
            "thread {:?} is not an X conversation id",
            reply.thread_key
        )));
    }
    Ok(id.to_owned())
}

/// When the day's usage in `cursors` was counted, for display.
pub fn usage_of(cursors: &Cursors) -> Option<Usage> {
    cursors
        .get(USAGE_SCOPE)
        .and_then(|v| serde_json::from_str(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_checked_before_queueing() {
        assert!(check_text("hi").is_ok());
        assert!(check_text(&"é".repeat(10_000)).is_ok());
        assert!(check_text(&"x".repeat(10_001))
            .unwrap_err()
            .contains("10001"));
        assert!(check_text(" ").is_err());
    }

    #[test]
    fn usage_restarts_each_day() {
        let d1 = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let d2 = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let mut c = Cursors::new();
        let mut u = Usage::today(&c, d1, 10);
        u.events = 10;
        c.insert(USAGE_SCOPE.into(), usage_json(&u));
        assert_eq!(Usage::today(&c, d1, 10).left(), 0);
        assert_eq!(
            Usage::today(&c, d1, 20).left(),
            10,
            "a raised budget counts"
        );
        assert_eq!(Usage::today(&c, d2, 10).left(), 10);
    }
}
