use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Cursor values of one instance, keyed by scope (an IMAP folder, a REST
/// endpoint; `""` when the connector has one). Opaque to the daemon.
pub type Cursors = BTreeMap<String, String>;

/// Who wrote a message, relative to the seller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the customer. Starts the reply clock.
    Inbound,
    /// From the seller (hourglass or elsewhere). Stops the reply clock,
    /// unless it is automatic.
    Outbound,
    /// From the platform: delivery notices, order notifications, auto
    /// acknowledgements. Never starts a clock.
    System,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            "system" => Some(Direction::System),
            _ => None,
        }
    }
}

/// A customer's identity on one channel: an Amazon relay address, an eBay
/// user id, a Messenger PSID, a Telegram user id, an e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerIdentity {
    /// `email`, `amazon`, `ebay`, `messenger`, ...
    pub channel: String,
    /// The stable handle on that channel (for Amazon: the relay address
    /// without its per-case `+suffix`).
    pub handle: String,
    pub display_name: Option<String>,
    /// A real e-mail address, when the platform shows one; identities that
    /// share it may be linked into one customer.
    pub email: Option<String>,
}

/// File attached to a message. `data` is `None` when only metadata is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
    #[serde(skip)]
    pub data: Option<Vec<u8>>,
}

/// One message, normalized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique per instance: ingest is idempotent on it.
    pub external_id: String,
    /// The platform's conversation key (DESIGN §2): Amazon relay address +
    /// order id, eBay conversation id, e-mail thread root, chat id.
    pub thread_key: String,
    pub direction: Direction,
    /// An auto-responder or other automatic message. Automatic outbound
    /// messages never stop the clock.
    pub automatic: bool,
    /// The platform's time of the message.
    pub sent_at: DateTime<Utc>,
    /// Display name of the author.
    pub author: Option<String>,
    /// The customer this conversation is with (the counterpart, whichever
    /// direction the message goes).
    pub customer: Option<CustomerIdentity>,
    pub subject: Option<String>,
    /// Plain text body (HTML converted to text).
    pub text: String,
    /// The original HTML, when there was one.
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    pub order_id: Option<String>,
    /// Marketplace, for marketplaces with several (`amazon.de`).
    pub marketplace: Option<String>,
    /// BCP 47 language tag when known.
    pub language: Option<String>,
    /// Where a reply goes (an e-mail address, a chat id), when it differs
    /// from the customer handle.
    pub reply_to: Option<String>,
    /// Platform-specific data the connector needs back when replying
    /// (Message-ID, References, conversation id). Stored as JSON.
    pub meta: serde_json::Value,
    /// A new version of a message seen before (Telegram's
    /// `edited_message`): when a message with this `external_id` is
    /// stored, ingest replaces its text and leaves the reply clock alone;
    /// when none is, it is stored as a new message.
    #[serde(default)]
    pub edit: bool,
}

impl Message {
    /// A message with the required fields and everything else empty.
    pub fn new(
        external_id: impl Into<String>,
        thread_key: impl Into<String>,
        direction: Direction,
        sent_at: DateTime<Utc>,
        text: impl Into<String>,
    ) -> Message {
        Message {
            external_id: external_id.into(),
            thread_key: thread_key.into(),
            direction,
            automatic: false,
            sent_at,
            author: None,
            customer: None,
            subject: None,
            text: text.into(),
            html: None,
            attachments: Vec::new(),
            order_id: None,
            marketplace: None,
            language: None,
            reply_to: None,
            meta: serde_json::Value::Null,
            edit: false,
        }
    }
}

/// An item the connector could not read: kept with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The platform's id of the item when it could be read (an IMAP UID).
    pub external_id: Option<String>,
    /// Where it came from (a folder, an endpoint), for the operator.
    pub source: String,
    pub error: String,
    pub raw: Vec<u8>,
}

/// What became of a reply after the platform accepted it, as the
/// platform reports it later (WhatsApp's `statuses`: sent, delivered,
/// read, failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// The platform's id of the sent message: the `external_id` its
    /// [`SentReply`] had.
    pub external_id: String,
    pub state: DeliveryState,
    pub at: DateTime<Utc>,
    /// `Failed`: the platform's reason, in words for the agent.
    pub error: Option<String>,
}

/// The states a platform reports for a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Sent,
    Delivered,
    Read,
    /// Accepted, then not delivered: the reply is `failed` on its thread.
    Failed,
}

/// The result of one poll.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub quarantined: Vec<Quarantined>,
    /// Delivery reports about replies sent earlier.
    pub statuses: Vec<DeliveryStatus>,
    /// Cursor values to commit together with `messages`. Scopes not named
    /// here keep their stored value.
    pub cursors: Cursors,
    /// More is waiting: the daemon polls again at once.
    pub more: bool,
}

/// What a connector supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub poll: bool,
    /// `wait_for_change` really waits on the platform (IDLE, long poll).
    pub push: bool,
    pub send: bool,
    /// `check_sent` can find a reply after a crash.
    pub check_sent: bool,
}

/// The platform API calls a connector counted, for platforms that give
/// each account a call budget (eBay: 5,000 a day). `connectors list` shows
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApiCalls {
    /// Calls in the last 24 hours.
    pub last_24h: u32,
    /// The daily budget in force, if any.
    pub daily_budget: Option<u32>,
}

/// A reply the daemon asks a connector to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingReply {
    /// The outbox id: the idempotency key.
    pub outbox_id: String,
    pub thread_key: String,
    /// Where to send it (an address, a chat id): the last inbound message's
    /// `reply_to`, else the customer's handle.
    pub to: String,
    pub subject: Option<String>,
    pub text: String,
    /// The `meta` of the message being answered.
    pub in_reply_to_meta: serde_json::Value,
    pub order_id: Option<String>,
}

/// A reply the platform accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentReply {
    /// The platform's id of the sent message (becomes the outbound
    /// message's `external_id`).
    pub external_id: String,
    pub sent_at: DateTime<Utc>,
}

/// The platform's view of an instance's push subscription, as
/// `hourglass connectors webhook NAME` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookStatus {
    /// Where the platform pushes to; empty when no webhook is set.
    pub url: String,
    /// Deliveries the platform holds back, waiting to be pushed.
    pub pending_updates: Option<u64>,
    /// The platform's words about its last failed delivery.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// What `check_sent` found.
#[derive(Debug, Clone, PartialEq)]
pub enum SentCheck {
    /// The reply is on the platform.
    Sent(SentReply),
    /// The platform has no trace of it: safe to send.
    NotSent,
    /// The platform cannot tell us.
    CannotTell,
}

/// The subject of a reply to a message titled `original`: `Re: original`,
/// without stacking prefixes; the one rule for every connector and the
/// outbox.
pub fn reply_subject(original: &str) -> String {
    let s = original.trim();
    let has_prefix = s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:"));
    if has_prefix {
        s.to_owned()
    } else if s.is_empty() {
        "Re: your message".to_owned()
    } else {
        format!("Re: {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_do_not_stack() {
        assert_eq!(
            reply_subject("Where is my order?"),
            "Re: Where is my order?"
        );
        assert_eq!(
            reply_subject("  RE: Where is my order? "),
            "RE: Where is my order?"
        );
        assert_eq!(reply_subject("re:x"), "re:x");
        assert_eq!(reply_subject("Réclamation"), "Re: Réclamation");
        assert_eq!(reply_subject(""), "Re: your message");
    }
}
