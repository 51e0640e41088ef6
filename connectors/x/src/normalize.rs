//! X's `GET /2/dm_events` pages into normalized messages.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hourglass_connector::{Attachment, CustomerIdentity, Direction, Message, Quarantined};
use serde::Deserialize;
use serde_json::{json, Value};

/// The channel (and connector kind) of X threads.
pub const CHANNEL: &str = "x";

/// One page of `GET /2/dm_events` (GetDirectMessagesEventsResponse).
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub data: Vec<Value>,
    #[serde(default)]
    pub includes: Includes,
    #[serde(default)]
    pub meta: Meta,
}

#[derive(Debug, Default, Deserialize)]
pub struct Includes {
    #[serde(default)]
    pub users: Vec<User>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub result_count: Option<u32>,
}

/// A `DmEvent` with what hourglass reads of it.
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    text: Option<String>,
    created_at: DateTime<Utc>,
    dm_conversation_id: String,
    sender_id: String,
    #[serde(default)]
    attachments: Option<EventAttachments>,
}

#[derive(Debug, Deserialize)]
struct EventAttachments {
    #[serde(default)]
    media_keys: Vec<String>,
}

/// Compares X ids (snowflakes: decimal, growing with time) by value.
pub fn cmp_ids(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// What one page gave.
#[derive(Debug, Default)]
pub struct PageRead {
    pub messages: Vec<Message>,
    pub quarantined: Vec<Quarantined>,
    /// The newest event id on the page.
    pub newest: Option<String>,
    /// An event at or before `stop_at` was reached: the rest is stored.
    pub reached: bool,
}

/// Normalizes a page, newest first, up to (not including) the first event
/// at or before `stop_at`. `me` is the seller's user id: their events are
/// outbound.
pub fn read_page(page: &Page, me: &str, stop_at: Option<&str>) -> PageRead {
    let users: HashMap<&str, &User> = page
        .includes
        .users
        .iter()
        .map(|u| (u.id.as_str(), u))
        .collect();
    let mut out = PageRead::default();
    for raw in &page.data {
        let id = raw.get("id").and_then(Value::as_str);
        if let (Some(id), Some(stop)) = (id, stop_at) {
            if cmp_ids(id, stop) != Ordering::Greater {
                out.reached = true;
                break;
            }
        }
        if let Some(id) = id {
            if out
                .newest
                .as_deref()
                .is_none_or(|n| cmp_ids(id, n) == Ordering::Greater)
            {
                out.newest = Some(id.to_owned());
            }
        }
        let event = match Event::deserialize(raw) {
            Ok(e) => e,
            Err(e) => {
                out.quarantined.push(Quarantined {
                    external_id: id.map(str::to_owned),
                    source: "GET /2/dm_events".into(),
                    error: format!("not the documented DmEvent: {e}"),
                    raw: serde_json::to_vec(raw).unwrap_or_default(),
                });
                continue;
            }
        };
        if event
            .event_type
            .as_deref()
            .is_some_and(|t| t != "MessageCreate")
        {
            continue;
        }
        out.messages.push(message(event, me, &users));
    }
    out
}

/// The other participant of a one-to-one conversation (`{low}-{high}`).
fn counterpart(conversation: &str, me: &str) -> Option<String> {
    let (a, b) = conversation.split_once('-')?;
    if a == me {
        Some(b.to_owned())
    } else if b == me {
        Some(a.to_owned())
    } else {
        None
    }
}

fn message(e: Event, me: &str, users: &HashMap<&str, &User>) -> Message {
    let outbound = e.sender_id == me;
    let customer_id = if outbound {
        counterpart(&e.dm_conversation_id, me)
    } else {
        Some(e.sender_id.clone())
    };
    let name_of = |id: &str| -> Option<String> {
        users.get(id).and_then(|u| {
            u.name
                .clone()
                .or_else(|| u.username.as_ref().map(|n| format!("@{n}")))
        })
    };
    let mut m = Message::new(
        e.id.clone(),
        e.dm_conversation_id.clone(),
        if outbound {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        e.created_at,
        e.text.clone().unwrap_or_default(),
    );
    m.author = name_of(&e.sender_id).or_else(|| Some(e.sender_id.clone()));
    m.customer = customer_id.map(|id| CustomerIdentity {
        channel: CHANNEL.into(),
        display_name: name_of(&id)
            .or_else(|| users.get(id.as_str()).and_then(|u| u.username.clone())),
        handle: id,
        email: None,
    });
    m.reply_to = Some(e.dm_conversation_id.clone());
    if let Some(a) = e.attachments {
        m.attachments = a
            .media_keys
            .iter()
            .map(|k| Attachment {
                filename: Some(k.clone()),
                content_type: "application/octet-stream".into(),
                size: 0,
                data: None,
            })
            .collect();
    }
    m.meta = json!({
        "dm_conversation_id": e.dm_conversation_id,
        "dm_event_id": e.id,
        "sender_id": e.sender_id,
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(v: Value) -> Page {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ids_compare_as_numbers() {
        assert_eq!(cmp_ids("9", "10"), Ordering::Less);
        assert_eq!(
            cmp_ids("1582838223355244544", "1582838223355244544"),
            Ordering::Equal
        );
        assert_eq!(
            cmp_ids("1582838223355244545", "982838223355244545"),
            Ordering::Greater
        );
    }

    #[test]
    fn a_page_stops_at_the_stored_event_and_knows_directions() {
        let p = page(json!({
            "data": [
                {"id": "105", "event_type": "MessageCreate", "text": "Thanks!", "created_at": "2026-11-30T10:05:00.000Z",
                 "dm_conversation_id": "7-9000", "sender_id": "9000"},
                {"id": "104", "event_type": "MessageCreate", "text": "Shipped today.", "created_at": "2026-11-30T10:04:00.000Z",
                 "dm_conversation_id": "7-9000", "sender_id": "7"},
                {"id": "103", "event_type": "ParticipantsJoin", "created_at": "2026-11-30T10:03:00.000Z",
                 "dm_conversation_id": "7-9000", "sender_id": "9000"},
                {"id": "102", "text": "broken"},
                {"id": "101", "event_type": "MessageCreate", "text": "old", "created_at": "2026-11-30T10:01:00.000Z",
                 "dm_conversation_id": "7-9000", "sender_id": "9000"}
            ],
            "includes": {"users": [{"id": "9000", "name": "Mia Chen", "username": "mia"}]},
            "meta": {"result_count": 5, "next_token": "NEXT0000000000000"}
        }));
        let r = read_page(&p, "7", Some("101"));
        assert!(r.reached);
        assert_eq!(r.newest.as_deref(), Some("105"));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].direction, Direction::Inbound);
        assert_eq!(r.messages[0].author.as_deref(), Some("Mia Chen"));
        assert_eq!(r.messages[1].direction, Direction::Outbound);
        let c = r.messages[1].customer.as_ref().unwrap();
        assert_eq!(c.handle, "9000");
        assert_eq!(c.display_name.as_deref(), Some("Mia Chen"));
        assert_eq!(r.messages[1].thread_key, "7-9000");
        assert_eq!(r.quarantined.len(), 1);
        assert_eq!(r.quarantined[0].external_id.as_deref(), Some("102"));
    }
}
