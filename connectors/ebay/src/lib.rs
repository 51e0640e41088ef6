//! eBay member messages through the REST Commerce Message API
//! (`commerce/message/v1`).
//!
//! The seller's refresh token buys two-hour access tokens
//! ([`client::Client`]). Each poll reads one page (50) of
//! `getConversations` per conversation type, then `getConversation` for
//! every conversation on it whose latest message is newer than the cursor.
//! Buyers' conversations (`FROM_MEMBERS`) give inbound and outbound
//! messages; eBay's notices (`FROM_EBAY`) give `system` messages.
//!
//! The cursor (scope = conversation type) holds the newest latest-message
//! time of the last complete scan and, while a scan spans several polls,
//! its offset. eBay lists conversations newest first, so a scan stops at
//! the first conversation that is not newer than the cursor.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod config;
pub mod consent;
pub mod normalize;
pub mod platform;

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use hourglass_connector::{
    ApiCalls, Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, Quarantined,
    SentCheck, SentReply,
};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use client::{Answer, Client, Purpose};
pub use config::EbayConfig;
pub use normalize::{check_reply, MAX_MESSAGE_CHARS};
use normalize::{
    ConversationDetail, ConversationType, ConversationsPage, MessageDetail, MessagesPage,
    SendMessageResponse,
};
pub use platform::{EbaySettings, EBAY};

/// The channel (and connector kind) of eBay threads.
pub const CHANNEL: &str = "ebay";
/// Default sending quota: eBay limits member messages to 75 per 60 s per
/// seller and then blocks for 100 s (DESIGN §9). With a burst of 3, a
/// sustained (75 - 3) / 60 = 1.2 per second never puts more than 75 in a
/// minute.
pub const SEND_PER_SECOND: f64 = 1.2;
/// Replies sent at once before the sustained rate applies.
pub const SEND_BURST: u32 = 3;
/// Message API calls per day by default (eBay's default per API).
pub const DAILY_CALL_BUDGET: u32 = config::DEFAULT_DAILY_CALL_BUDGET;
/// Entries per page: eBay's maximum `limit`.
pub const PAGE_LIMIT: u32 = 50;

/// Where a poll stands for one conversation type (stored as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TypeCursor {
    /// Every conversation whose latest message is at or before this was
    /// read by a complete scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<DateTime<Utc>>,
    /// A scan spanning several polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan: Option<Scan>,
    /// The seller's user ID, once learned from the conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seller: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scan {
    /// The next page's offset.
    offset: u32,
    /// The newest latest-message time seen in this scan so far.
    top: Option<DateTime<Utc>>,
}

/// One eBay seller account.
pub struct EbayConnector {
    instance: String,
    config: EbayConfig,
    client: Client,
    /// The seller's user ID: configured, learned from a cursor, or from a
    /// sent message.
    seller: Mutex<Option<String>>,
}

impl EbayConnector {
    /// Builds the connector; reads the secrets. Errors name the key at
    /// fault, never a secret's value.
    pub fn new(instance: &str, config: EbayConfig) -> Result<EbayConnector, String> {
        config.validate()?;
        let client = Client::new(&config)?;
        let seller = config.username.clone().filter(|u| !u.trim().is_empty());
        Ok(EbayConnector {
            instance: instance.to_owned(),
            config,
            client,
            seller: Mutex::new(seller),
        })
    }

    /// Message API calls made in the last 24 hours (the budget is
    /// `daily_call_budget`).
    pub fn calls_last_24h(&self) -> u32 {
        self.client.calls_last_24h()
    }

    /// The daily call budget in force.
    pub fn daily_call_budget(&self) -> u32 {
        self.config.daily_call_budget
    }

    fn seller(&self) -> MutexGuard<'_, Option<String>> {
        self.seller.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every message of a conversation, paged, with its title. `Ok(None)`
    /// when eBay no longer knows it, or when a page is not the documented
    /// JSON (then quarantined with its raw bytes).
    async fn conversation_messages(
        &self,
        id: &str,
        kind: ConversationType,
        since: Option<DateTime<Utc>>,
        quarantined: &mut Vec<Quarantined>,
        purpose: Purpose,
    ) -> Result<Option<(Option<String>, Vec<MessageDetail>)>, ConnectorError> {
        let path = format!("/conversation/{id}");
        let mut offset = 0u32;
        let mut title = None;
        let mut out = Vec::new();
        loop {
            let query = [
                ("conversation_type", kind.as_str().to_owned()),
                ("limit", PAGE_LIMIT.to_string()),
                ("offset", offset.to_string()),
            ];
            let answer = self
                .client
                .call(Method::GET, &path, &query, None, purpose)
                .await?;
            if !answer.is_success() {
                if answer.status == 404 || answer.error_ids().contains(&355007) {
                    tracing::warn!(
                        conversation = id,
                        "eBay no longer knows this conversation; skipped."
                    );
                    return Ok(None);
                }
                return Err(ConnectorError::Other(format!(
                    "eBay getConversation {id} refused: {}",
                    answer.error_message()
                )));
            }
            let page: MessagesPage = match serde_json::from_slice(&answer.body) {
                Ok(p) => p,
                Err(e) => {
                    quarantined.push(Quarantined {
                        external_id: Some(id.to_owned()),
                        source: format!("getConversation {id} offset {offset}"),
                        error: format!(
                            "not the documented GetMessagesByConversationIdResponse: {e}"
                        ),
                        raw: answer.body,
                    });
                    return Ok(None);
                }
            };
            if title.is_none() {
                title = page.conversation_title.clone();
            }
            let mut dates = Vec::new();
            for raw in page.messages {
                match MessageDetail::deserialize(&raw) {
                    Ok(m) => {
                        dates.push(m.created_date);
                        out.push(m);
                    }
                    Err(e) => quarantined.push(Quarantined {
                        external_id: raw
                            .get("messageId")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        source: format!("getConversation {id}"),
                        error: format!("not the documented MessageDetail: {e}"),
                        raw: serde_json::to_vec(&raw).unwrap_or_default(),
                    }),
                }
            }
            // A page listed newest first that reaches back before the
            // cursor holds everything new.
            let newest_first = dates.len() > 1 && dates.windows(2).all(|w| w[0] >= w[1]);
            let reached_since = match (since, dates.last()) {
                (Some(s), Some(last)) => *last <= s,
                _ => false,
            };
            if page.next.is_none() || dates.is_empty() || (newest_first && reached_since) {
                break;
            }
            offset += PAGE_LIMIT;
        }
        Ok(Some((title, out)))
    }

    /// One page of one conversation type: its changed conversations'
    /// messages, and the cursor after it.
    async fn poll_type(
        &self,
        kind: ConversationType,
        stored: Option<&String>,
        batch: &mut Batch,
    ) -> Result<(), ConnectorError> {
        let mut cursor: TypeCursor = match stored {
            None => TypeCursor::default(),
            Some(s) => serde_json::from_str(s).unwrap_or_else(|e| {
                tracing::warn!(conversation_type = kind.as_str(), error = %e, "Unreadable eBay cursor; reading everything again.");
                TypeCursor::default()
            }),
        };
        if kind == ConversationType::FromMembers {
            let mut seller = self.seller();
            match (&*seller, &cursor.seller) {
                (None, Some(s)) => *seller = Some(s.clone()),
                (Some(s), None) => cursor.seller = Some(s.clone()),
                _ => {}
            }
        }
        // A page costs one listing call and up to one call per
        // conversation on it: start it only when all of it fits.
        self.client.reserve_calls(Purpose::Poll, PAGE_LIMIT + 1)?;
        let since = cursor.since;
        let resumed = cursor.scan.clone();
        let scan = cursor.scan.take().unwrap_or(Scan {
            offset: 0,
            top: since,
        });
        let mut query = vec![
            ("conversation_type", kind.as_str().to_owned()),
            ("limit", PAGE_LIMIT.to_string()),
            ("offset", scan.offset.to_string()),
        ];
        if let (Some(s), ConversationType::FromMembers) = (since, kind) {
            // Only FROM_MEMBERS takes a time filter.
            query.push(("start_time", s.to_rfc3339_opts(SecondsFormat::Millis, true)));
        }
        let answer = self
            .client
            .call(Method::GET, "/conversation", &query, None, Purpose::Poll)
            .await?;
        let page = match read_listing(&answer) {
            Ok(p) => p,
            Err(ListingError::Refused(msg)) => {
                return Err(ConnectorError::Other(format!(
                    "eBay getConversations ({}) refused: {msg}",
                    kind.as_str()
                )))
            }
            Err(ListingError::Malformed(e)) => {
                // Keep the cursor: the next poll reads this page again.
                batch.quarantined.push(Quarantined {
                    external_id: None,
                    source: format!("getConversations {} offset {}", kind.as_str(), scan.offset),
                    error: format!("not the documented GetAllMyConversationsResponse: {e}"),
                    raw: answer.body,
                });
                cursor.scan = Some(scan);
                batch
                    .cursors
                    .insert(kind.as_str().to_owned(), cursor_json(&cursor));
                return Ok(());
            }
        };

        let mut top = scan.top;
        let mut reached_since = false;
        // A conversation whose messages came back unreadable (a gateway's
        // HTML page, a cut-off body) holds the cursor where it was.
        let mut unreadable = false;
        let mut fetched: Vec<(ConversationDetail, Option<String>, Vec<MessageDetail>)> = Vec::new();
        let listed = page.conversations.len();
        // The scan may stop at the first conversation not newer than the
        // cursor only if eBay listed this page newest first.
        let latest_dates: Vec<Option<String>> = page
            .conversations
            .iter()
            .map(|c| {
                c.pointer("/latestMessage/createdDate")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        let newest_first = latest_dates
            .iter()
            .map(|d| d.as_deref().and_then(|d| d.parse::<DateTime<Utc>>().ok()))
            .collect::<Option<Vec<_>>>()
            .is_some_and(|d| d.windows(2).all(|w| w[0] >= w[1]));
        // A first sync reads old conversations' latest message only: a
        // large account's history would not fit in the daily call budget.
        let backfill_from = match (since, self.config.backfill_days) {
            (None, days) if days > 0 => Some(Utc::now() - chrono::Duration::days(i64::from(days))),
            _ => None,
        };
        for raw in page.conversations {
            let detail = match ConversationDetail::deserialize(&raw) {
                Ok(d) => d,
                Err(e) => {
                    batch.quarantined.push(Quarantined {
                        external_id: raw
                            .get("conversationId")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        source: format!("getConversations {}", kind.as_str()),
                        error: format!("not the documented ConversationDetail: {e}"),
                        raw: serde_json::to_vec(&raw).unwrap_or_default(),
                    });
                    continue;
                }
            };
            let Some(latest) = detail.latest_message.as_ref().map(|m| m.created_date) else {
                continue;
            };
            if since.is_some_and(|s| latest <= s) {
                reached_since = newest_first;
                continue;
            }
            top = Some(top.map_or(latest, |t| t.max(latest)));
            if backfill_from.is_some_and(|from| latest < from) {
                match raw
                    .get("latestMessage")
                    .cloned()
                    .map(serde_json::from_value::<MessageDetail>)
                {
                    Some(Ok(m)) => fetched.push((detail, None, vec![m])),
                    _ => batch.quarantined.push(Quarantined {
                        external_id: Some(detail.conversation_id.clone()),
                        source: format!("getConversations {}", kind.as_str()),
                        error: "latestMessage is not the documented MessageDetail".to_owned(),
                        raw: serde_json::to_vec(&raw).unwrap_or_default(),
                    }),
                }
                continue;
            }
            let before = batch.quarantined.len();
            match self
                .conversation_messages(
                    &detail.conversation_id,
                    kind,
                    since,
                    &mut batch.quarantined,
                    Purpose::Poll,
                )
                .await?
            {
                Some((title, messages)) => fetched.push((detail, title, messages)),
                None => unreadable |= batch.quarantined.len() > before,
            }
        }

        if kind == ConversationType::FromMembers {
            self.learn_seller(&fetched, &mut cursor);
        }
        let seller = self.seller().clone();
        for (detail, title, messages) in &fetched {
            let conv = normalize::Conversation {
                id: &detail.conversation_id,
                kind,
                title: title.as_deref().or(detail.conversation_title.as_deref()),
                reference_type: detail.reference_type.as_deref(),
                reference_id: detail.reference_id.as_deref(),
                seller: seller.as_deref(),
                marketplace: &self.config.marketplace_id,
            };
            let buyer = match kind {
                ConversationType::FromMembers => {
                    normalize::other_party(messages, seller.as_deref())
                }
                ConversationType::FromEbay => None,
            };
            for m in messages {
                batch
                    .messages
                    .push(normalize::normalize(&conv, buyer.as_deref(), m));
            }
        }

        let next_offset = scan.offset + PAGE_LIMIT;
        let more_pages =
            page.next.is_some() || page.total.is_some_and(|t| u64::from(next_offset) < t);
        if unreadable {
            // Found by the chaos run: moving on would put the cursor past
            // that conversation's new messages for good. The next poll reads
            // this page again; what the others gave is absorbed by the
            // unique key.
            cursor.scan = resumed;
        } else if listed > 0 && more_pages && !reached_since {
            cursor.scan = Some(Scan {
                offset: next_offset,
                top,
            });
            batch.more = true;
        } else {
            cursor.since = top;
            cursor.scan = None;
        }
        batch
            .cursors
            .insert(kind.as_str().to_owned(), cursor_json(&cursor));
        Ok(())
    }

    /// Learns the seller's user ID from the member conversations just
    /// read, unless it is known.
    fn learn_seller(
        &self,
        fetched: &[(ConversationDetail, Option<String>, Vec<MessageDetail>)],
        cursor: &mut TypeCursor,
    ) {
        let mut seller = self.seller();
        if seller.is_some() {
            return;
        }
        let sets: Vec<BTreeSet<String>> = fetched
            .iter()
            .map(|(_, _, m)| normalize::participants(m))
            .collect();
        if let Some(s) = normalize::infer_seller(&sets) {
            tracing::info!(instance = %self.instance, seller = %s, "Learned the seller's eBay user ID from the conversations.");
            cursor.seller = Some(s.clone());
            *seller = Some(s);
        }
    }

    fn conversation_id(reply: &OutgoingReply) -> Option<String> {
        reply
            .in_reply_to_meta
            .get("conversation_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| Some(reply.thread_key.clone()))
            .filter(|s| !s.trim().is_empty())
    }
}

enum ListingError {
    Refused(String),
    Malformed(String),
}

fn read_listing(answer: &Answer) -> Result<ConversationsPage, ListingError> {
    if !answer.is_success() {
        return Err(ListingError::Refused(answer.error_message()));
    }
    serde_json::from_slice(&answer.body).map_err(|e| ListingError::Malformed(e.to_string()))
}

fn cursor_json(c: &TypeCursor) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

#[async_trait]
impl Connector for EbayConnector {
    fn attach_vault(&self, vault: std::sync::Arc<dyn hourglass_connector::Vault>) {
        self.client.attach_vault(vault, &self.instance);
    }

    fn kind(&self) -> &str {
        CHANNEL
    }

    fn channel(&self) -> &str {
        CHANNEL
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

    /// Renews the access token and lists one conversation: proves the
    /// refresh token, the scope and the endpoint.
    async fn health_check(&self) -> Result<(), ConnectorError> {
        let query = [
            (
                "conversation_type",
                ConversationType::FromMembers.as_str().to_owned(),
            ),
            ("limit", "1".to_owned()),
            ("offset", "0".to_owned()),
        ];
        let answer = self
            .client
            .call(Method::GET, "/conversation", &query, None, Purpose::Send)
            .await?;
        read_listing(&answer).map(|_| ()).map_err(|e| match e {
            ListingError::Refused(m) => {
                ConnectorError::Other(format!("eBay getConversations refused: {m}"))
            }
            ListingError::Malformed(m) => ConnectorError::Other(format!(
                "eBay getConversations answered something else than the documented JSON: {m}"
            )),
        })
    }

    fn describe_access(&self) -> Option<String> {
        let g = self.client.granted()?;
        Some(format!(
            "access token renewed from the refresh token, valid for {} s; scopes: {}",
            g.lifetime.as_secs(),
            g.scopes
        ))
    }

    fn api_calls(&self) -> Option<ApiCalls> {
        Some(ApiCalls {
            last_24h: self.calls_last_24h(),
            daily_budget: Some(self.daily_call_budget()),
        })
    }

    fn restore_api_calls(&self, calls: u32, at: std::time::SystemTime) {
        self.client.restore_calls(calls, at);
    }

    fn poll_is_read_only(&self) -> bool {
        // GETs; the cursor is ours, nothing is acknowledged on eBay.
        true
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        let mut batch = Batch::default();
        // While a scan spans several polls, only its type goes on: the
        // other was just read and would cost a call for nothing.
        let scanning: Vec<ConversationType> = ConversationType::ALL
            .into_iter()
            .filter(|k| {
                cursors
                    .get(k.as_str())
                    .and_then(|c| serde_json::from_str::<TypeCursor>(c).ok())
                    .is_some_and(|c| c.scan.is_some())
            })
            .collect();
        let kinds = if scanning.is_empty() {
            ConversationType::ALL.to_vec()
        } else {
            scanning
        };
        for kind in kinds {
            if let Err(e) = self
                .poll_type(kind, cursors.get(kind.as_str()), &mut batch)
                .await
            {
                if batch.cursors.is_empty() {
                    return Err(e);
                }
                // Keep what the other type gave; the next poll, at once,
                // meets the error again.
                tracing::debug!(conversation_type = kind.as_str(), error = %e, "eBay poll cut short.");
                batch.more = true;
                break;
            }
        }
        Ok(batch)
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        check_reply(&reply.text).map_err(ConnectorError::Refused)?;
        let body = match Self::conversation_id(reply) {
            Some(id) => json!({ "conversationId": id, "messageText": reply.text }),
            None => {
                let mut b = json!({ "otherPartyUsername": reply.to, "messageText": reply.text });
                if let Some(item) = reply.order_id.as_deref().filter(|o| !o.is_empty()) {
                    b["reference"] = json!({ "referenceType": "LISTING", "referenceId": item });
                }
                b
            }
        };
        let answer = self
            .client
            .call(
                Method::POST,
                "/send_message",
                &[],
                Some(&body),
                Purpose::Send,
            )
            .await?;
        if !answer.is_success() {
            return Err(match answer.status {
                400 | 404 | 409 | 413 | 422 => ConnectorError::Refused(answer.error_message()),
                _ => ConnectorError::Other(format!("eBay sendMessage: {}", answer.error_message())),
            });
        }
        let sent = match serde_json::from_slice::<SendMessageResponse>(&answer.body) {
            Ok(r) => {
                if let Some(me) = r.sender_user_name.as_deref().filter(|s| !s.is_empty()) {
                    let mut seller = self.seller();
                    if seller.is_none() {
                        *seller = Some(me.to_ascii_lowercase());
                    }
                }
                SentReply {
                    external_id: r.message_id,
                    sent_at: r.created_date.unwrap_or_else(Utc::now),
                }
            }
            Err(e) => {
                // eBay took the message: saying otherwise would send it twice.
                tracing::warn!(outbox_id = %reply.outbox_id, error = %e, "eBay accepted the reply but its answer is not the documented JSON.");
                SentReply {
                    external_id: format!("ebay-outbox-{}", reply.outbox_id),
                    sent_at: Utc::now(),
                }
            }
        };
        if self.config.mark_read {
            if let Some(id) = Self::conversation_id(reply) {
                let body = json!({
                    "conversationId": id,
                    "conversationType": ConversationType::FromMembers.as_str(),
                    "read": true,
                });
                match self
                    .client
                    .call(
                        Method::POST,
                        "/update_conversation",
                        &[],
                        Some(&body),
                        Purpose::Send,
                    )
                    .await
                {
                    Ok(a) if a.is_success() => {}
                    Ok(a) => {
                        tracing::warn!(conversation = %id, error = %a.error_message(), "Could not mark the eBay conversation read.")
                    }
                    Err(e) => {
                        tracing::warn!(conversation = %id, error = %e, "Could not mark the eBay conversation read.")
                    }
                }
            }
        }
        Ok(sent)
    }

    /// eBay takes no client token, so a reply is recognised by reading the
    /// conversation back: a message from the seller with the same text.
    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let Some(id) = Self::conversation_id(reply) else {
            return Ok(SentCheck::CannotTell);
        };
        let mut quarantined = Vec::new();
        let Some((_, messages)) = self
            .conversation_messages(
                &id,
                ConversationType::FromMembers,
                None,
                &mut quarantined,
                Purpose::Send,
            )
            .await?
        else {
            return Ok(if quarantined.is_empty() {
                SentCheck::NotSent
            } else {
                SentCheck::CannotTell
            });
        };
        let seller = self.seller().clone();
        let buyer = normalize::other_party(&messages, seller.as_deref());
        let from_seller = |m: &MessageDetail| match (&m.sender_username, &seller, &buyer) {
            (Some(s), Some(me), _) => s.eq_ignore_ascii_case(me),
            (Some(s), None, Some(b)) => !s.eq_ignore_ascii_case(b),
            _ => false,
        };
        let found = messages
            .iter()
            .filter(|m| from_seller(m))
            .filter(|m| normalize::same_text(m.message_body.as_deref().unwrap_or(""), &reply.text))
            .max_by_key(|m| m.created_date);
        Ok(match found {
            Some(m) => SentCheck::Sent(SentReply {
                external_id: m.message_id.clone(),
                sent_at: m.created_date,
            }),
            None if quarantined.is_empty() => SentCheck::NotSent,
            None => SentCheck::CannotTell,
        })
    }
}
