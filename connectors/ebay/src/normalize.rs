//! eBay's JSON (the schemas of `commerce_message_v1_oas3.json`) and its
//! translation into normalized messages. Pure functions.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use hourglass_connector::{Attachment, CustomerIdentity, Direction, Message};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::CHANNEL;

/// eBay's two kinds of conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationType {
    /// Buyers and other members writing to the seller.
    FromMembers,
    /// eBay's own notices to the seller: `system` messages.
    FromEbay,
}

impl ConversationType {
    pub const ALL: [ConversationType; 2] =
        [ConversationType::FromMembers, ConversationType::FromEbay];

    pub fn as_str(self) -> &'static str {
        match self {
            ConversationType::FromMembers => "FROM_MEMBERS",
            ConversationType::FromEbay => "FROM_EBAY",
        }
    }
}

/// `GetAllMyConversationsResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationsPage {
    #[serde(default)]
    pub conversations: Vec<Value>,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
}

/// `ConversationDetail`, the parts we use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationDetail {
    pub conversation_id: String,
    #[serde(default)]
    pub conversation_title: Option<String>,
    #[serde(default)]
    pub reference_id: Option<String>,
    #[serde(default)]
    pub reference_type: Option<String>,
    /// Absent in a conversation with nothing in it.
    #[serde(default)]
    pub latest_message: Option<LatestMessage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatestMessage {
    pub created_date: DateTime<Utc>,
}

/// `GetMessagesByConversationIdResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
    #[serde(default)]
    pub conversation_title: Option<String>,
    #[serde(default)]
    pub messages: Vec<Value>,
    #[serde(default)]
    pub next: Option<String>,
}

/// `MessageDetail`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDetail {
    pub message_id: String,
    pub created_date: DateTime<Utc>,
    #[serde(default)]
    pub message_body: Option<String>,
    #[serde(default)]
    pub sender_username: Option<String>,
    #[serde(default)]
    pub recipient_username: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub read_status: Option<bool>,
    #[serde(default)]
    pub message_media: Vec<MessageMedia>,
}

/// `MessageMedia`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageMedia {
    #[serde(default)]
    pub media_name: Option<String>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub media_url: Option<String>,
}

/// `SendMessageResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageResponse {
    pub message_id: String,
    #[serde(default)]
    pub created_date: Option<DateTime<Utc>>,
    #[serde(default, rename = "senderUserName")]
    pub sender_user_name: Option<String>,
}

/// Everything about a conversation that each of its messages carries.
#[derive(Debug, Clone)]
pub struct Conversation<'a> {
    pub id: &'a str,
    pub kind: ConversationType,
    pub title: Option<&'a str>,
    pub reference_type: Option<&'a str>,
    pub reference_id: Option<&'a str>,
    /// The seller's eBay user ID, when known.
    pub seller: Option<&'a str>,
    pub marketplace: &'a str,
}

fn same_user(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The users taking part in a conversation.
pub fn participants(messages: &[MessageDetail]) -> BTreeSet<String> {
    messages
        .iter()
        .flat_map(|m| [&m.sender_username, &m.recipient_username])
        .flatten()
        .map(|u| u.to_ascii_lowercase())
        .filter(|u| !u.is_empty())
        .collect()
}

/// The seller is the one user who takes part in every member
/// conversation. Needs two conversations with different buyers to tell.
pub fn infer_seller<'a>(
    conversations: impl IntoIterator<Item = &'a BTreeSet<String>>,
) -> Option<String> {
    let mut common: Option<BTreeSet<String>> = None;
    for p in conversations {
        if p.len() < 2 {
            continue;
        }
        common = Some(match common {
            None => p.clone(),
            Some(c) => c.intersection(p).cloned().collect(),
        });
    }
    let common = common?;
    if common.len() == 1 {
        common.into_iter().next()
    } else {
        None
    }
}

/// The buyer of a member conversation: whoever is not the seller; when the
/// seller is unknown, the author of the first message (buyers start
/// conversations: "Ask a question", "Contact seller").
pub fn other_party(messages: &[MessageDetail], seller: Option<&str>) -> Option<String> {
    match seller {
        Some(seller) => messages
            .iter()
            .flat_map(|m| [&m.sender_username, &m.recipient_username])
            .flatten()
            .find(|u| !u.is_empty() && !same_user(u, seller))
            .cloned(),
        None => messages
            .iter()
            .min_by_key(|m| m.created_date)
            .and_then(|m| m.sender_username.clone()),
    }
}

/// The media types eBay names, as MIME types.
fn content_type(media_type: Option<&str>, name: Option<&str>) -> String {
    let by_name = name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match (media_type.unwrap_or(""), by_name.as_deref()) {
        ("IMAGE", Some("png")) => "image/png",
        ("IMAGE", Some("gif")) => "image/gif",
        ("IMAGE", Some("webp")) => "image/webp",
        ("IMAGE", _) => "image/jpeg",
        ("PDF", _) => "application/pdf",
        ("DOC", Some("docx")) => {
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        }
        ("DOC", _) => "application/msword",
        ("TXT", _) => "text/plain",
        _ => "application/octet-stream",
    }
    .to_owned()
}

/// Whether a body is HTML rather than text that happens to hold a `<`.
fn looks_like_html(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    [
        "<br", "<p>", "<p ", "</p>", "<div", "</div>", "<html", "&nbsp;", "<b>", "<a href",
    ]
    .iter()
    .any(|t| lower.contains(t))
}

/// HTML to readable text (see [`hourglass_connector::html`]).
pub use hourglass_connector::html_to_text;

/// One eBay message, normalized. `buyer` is the other party of a member
/// conversation.
pub fn normalize(conv: &Conversation<'_>, buyer: Option<&str>, m: &MessageDetail) -> Message {
    let sender = m.sender_username.as_deref().filter(|s| !s.is_empty());
    let direction = match conv.kind {
        ConversationType::FromEbay => Direction::System,
        ConversationType::FromMembers => match (sender, buyer, conv.seller) {
            (Some(s), _, Some(seller)) if same_user(s, seller) => Direction::Outbound,
            (Some(_), _, Some(_)) => Direction::Inbound,
            (Some(s), Some(b), None) if !same_user(s, b) => Direction::Outbound,
            _ => Direction::Inbound,
        },
    };
    let body = m.message_body.clone().unwrap_or_default();
    let (text, html) = if looks_like_html(&body) {
        (html_to_text(&body), Some(body))
    } else {
        (body.trim().to_owned(), None)
    };
    let mut msg = Message::new(
        m.message_id.clone(),
        conv.id,
        direction,
        m.created_date,
        text,
    );
    msg.html = html;
    msg.author = Some(
        sender
            .map(str::to_owned)
            .unwrap_or_else(|| "eBay".to_owned()),
    );
    if conv.kind == ConversationType::FromMembers {
        msg.customer = buyer.filter(|b| !b.is_empty()).map(|b| CustomerIdentity {
            channel: CHANNEL.to_owned(),
            handle: b.to_owned(),
            display_name: Some(b.to_owned()),
            email: None,
        });
        msg.reply_to = buyer.map(str::to_owned);
    }
    msg.subject = m
        .subject
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| conv.title.map(str::to_owned));
    msg.order_id = conv
        .reference_id
        .filter(|r| !r.trim().is_empty())
        .map(str::to_owned);
    msg.marketplace = Some(conv.marketplace.to_owned());
    msg.attachments = m
        .message_media
        .iter()
        .map(|media| Attachment {
            filename: media.media_name.clone(),
            content_type: content_type(media.media_type.as_deref(), media.media_name.as_deref()),
            size: 0,
            data: None,
        })
        .collect();
    let media: Vec<Value> = m
        .message_media
        .iter()
        .map(|media| {
            json!({
                "name": media.media_name,
                "type": media.media_type,
                "url": media.media_url,
            })
        })
        .collect();
    msg.meta = json!({
        "conversation_id": conv.id,
        "conversation_type": conv.kind.as_str(),
        "reference_type": conv.reference_type,
        "reference_id": conv.reference_id,
        "media": media,
    });
    msg
}

/// The longest text eBay accepts in one message.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// Checks a reply against eBay's limits before it is queued or sent.
pub fn check_reply(text: &str) -> Result<(), String> {
    let n = text.chars().count();
    if text.trim().is_empty() {
        return Err("an eBay message needs text".to_owned());
    }
    if n > MAX_MESSAGE_CHARS {
        return Err(format!(
            "eBay accepts at most {MAX_MESSAGE_CHARS} characters per message; this reply has {n}: shorten it"
        ));
    }
    Ok(())
}

/// Text compared loosely: eBay may change line endings and trim.
pub fn same_text(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, from: &str, to: &str, at: &str, body: &str) -> MessageDetail {
        MessageDetail {
            message_id: id.into(),
            created_date: at.parse().unwrap(),
            message_body: Some(body.into()),
            sender_username: Some(from.into()),
            recipient_username: Some(to.into()),
            subject: None,
            read_status: None,
            message_media: vec![],
        }
    }

    fn conv(seller: Option<&str>) -> Conversation<'_> {
        Conversation {
            id: "c1",
            kind: ConversationType::FromMembers,
            title: Some("About your item"),
            reference_type: Some("LISTING"),
            reference_id: Some("325478912345"),
            seller,
            marketplace: "EBAY_DE",
        }
    }

    #[test]
    fn direction_comes_from_the_sender() {
        let ms = [
            msg(
                "1",
                "buyer_ana",
                "shop",
                "2026-11-01T10:00:00.000Z",
                "Hello?",
            ),
            msg("2", "Shop", "buyer_ana", "2026-11-01T11:00:00.000Z", "Hi!"),
        ];
        // Known seller, compared without case; unknown seller: the first
        // message's author is the buyer.
        for seller in [Some("shop"), None] {
            let c = conv(seller);
            let buyer = other_party(&ms, seller);
            assert_eq!(buyer.as_deref(), Some("buyer_ana"));
            let a = normalize(&c, buyer.as_deref(), &ms[0]);
            let b = normalize(&c, buyer.as_deref(), &ms[1]);
            assert_eq!(a.direction, Direction::Inbound, "{seller:?}");
            assert_eq!(b.direction, Direction::Outbound, "{seller:?}");
            assert_eq!(a.customer.as_ref().unwrap().handle, "buyer_ana");
            assert_eq!(b.customer.as_ref().unwrap().handle, "buyer_ana");
            assert_eq!(a.order_id.as_deref(), Some("325478912345"));
            assert_eq!(a.thread_key, "c1");
            assert_eq!(a.subject.as_deref(), Some("About your item"));
            assert_eq!(a.marketplace.as_deref(), Some("EBAY_DE"));
        }
    }

    #[test]
    fn ebay_notices_are_system_messages() {
        let mut c = conv(Some("shop"));
        c.kind = ConversationType::FromEbay;
        let m = normalize(
            &c,
            None,
            &msg(
                "9",
                "eBay",
                "shop",
                "2026-11-01T10:00:00Z",
                "Your item sold",
            ),
        );
        assert_eq!(m.direction, Direction::System);
        assert!(m.customer.is_none());
    }

    #[test]
    fn html_bodies_become_text_and_keep_the_original() {
        let body = "<div>Hello,<br>is it <b>new</b>?</div>";
        let m = normalize(
            &conv(Some("shop")),
            Some("b"),
            &msg("1", "b", "shop", "2026-11-01T10:00:00Z", body),
        );
        assert!(m.text.contains("Hello,"), "{}", m.text);
        assert!(!m.text.contains("<br>"), "{}", m.text);
        assert_eq!(m.html.as_deref(), Some(body));
        let plain = normalize(
            &conv(Some("shop")),
            Some("b"),
            &msg("2", "b", "shop", "2026-11-01T10:00:00Z", "a < b"),
        );
        assert_eq!(plain.text, "a < b");
        assert!(plain.html.is_none());
    }

    #[test]
    fn the_seller_is_in_every_conversation() {
        let set = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let a = set(&["shop", "ana"]);
        let b = set(&["shop", "bob"]);
        assert_eq!(infer_seller([&a, &b]), Some("shop".into()));
        assert_eq!(infer_seller([&a]), None);
        assert_eq!(infer_seller([&a, &a.clone()]), None);
    }

    #[test]
    fn replies_over_2000_characters_are_refused_with_the_limit() {
        assert!(check_reply(&"é".repeat(2000)).is_ok());
        let err = check_reply(&"é".repeat(2001)).unwrap_err();
        assert!(err.contains("2000") && err.contains("2001"), "{err}");
        assert!(check_reply("  ").is_err());
    }
}
