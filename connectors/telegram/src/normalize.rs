//! Bot API updates → normalized messages. Pure functions, no I/O.
//!
//! Which updates are read (and so asked for with `allowed_updates`):
//! `message` and `edited_message` (private chats with the bot: thread =
//! chat id), `business_message` and `edited_business_message` (the
//! seller's own Telegram Business chats, answered through the business
//! connection). Group and channel messages are not customer conversations
//! and are skipped.

use chrono::{DateTime, Utc};
use hourglass_connector::{Attachment, CustomerIdentity, Direction, Message, Quarantined};
use serde::Deserialize;

/// The update types hourglass reads; `getUpdates` asks for these only.
pub const ALLOWED_UPDATES: &[&str] = &[
    "message",
    "edited_message",
    "business_message",
    "edited_business_message",
];

#[derive(Debug, Deserialize)]
struct Update {
    update_id: i64,
    #[serde(default)]
    message: Option<TgMessage>,
    #[serde(default)]
    edited_message: Option<TgMessage>,
    #[serde(default)]
    business_message: Option<TgMessage>,
    #[serde(default)]
    edited_business_message: Option<TgMessage>,
}

#[derive(Debug, Deserialize)]
struct TgMessage {
    message_id: i64,
    date: i64,
    chat: Chat,
    #[serde(default)]
    from: Option<User>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    business_connection_id: Option<String>,
    #[serde(default)]
    is_from_offline: Option<bool>,
    #[serde(default)]
    photo: Option<Vec<File>>,
    #[serde(default)]
    document: Option<File>,
    #[serde(default)]
    video: Option<File>,
    #[serde(default)]
    audio: Option<File>,
    #[serde(default)]
    voice: Option<File>,
    #[serde(default)]
    animation: Option<File>,
    #[serde(default)]
    video_note: Option<File>,
    #[serde(default)]
    sticker: Option<Sticker>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    contact: Option<Contact>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
    first_name: String,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    language_code: Option<String>,
}

/// PhotoSize, Document, Video, Audio, Voice, Animation, VideoNote: the
/// fields they share.
#[derive(Debug, Deserialize)]
struct File {
    file_id: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    file_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Sticker {
    file_id: String,
    #[serde(default)]
    emoji: Option<String>,
    #[serde(default)]
    file_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Location {
    latitude: f64,
    longitude: f64,
}

#[derive(Debug, Deserialize)]
struct Contact {
    phone_number: String,
    first_name: String,
}

/// What one `getUpdates` answer holds.
#[derive(Debug, Default)]
pub struct Updates {
    pub messages: Vec<Message>,
    pub quarantined: Vec<Quarantined>,
    /// The highest `update_id` in the answer, read or not: the cursor.
    pub last_update_id: Option<i64>,
    /// How many updates the answer held.
    pub count: usize,
}

/// The key of a message: unique per instance. Message ids are unique per
/// chat, and a business chat with a customer has the same chat id as the
/// bot's own chat with them, so business messages carry their connection.
pub fn external_id(business_connection: Option<&str>, chat_id: i64, message_id: i64) -> String {
    match business_connection {
        Some(c) => format!("b:{c}:{chat_id}:{message_id}"),
        None => format!("{chat_id}:{message_id}"),
    }
}

/// The thread of a chat: the chat id (DESIGN §2), prefixed with the
/// business connection for the seller's own chats.
pub fn thread_key(business_connection: Option<&str>, chat_id: i64) -> String {
    match business_connection {
        Some(c) => format!("b:{c}:{chat_id}"),
        None => chat_id.to_string(),
    }
}

/// Reads the `result` array of `getUpdates`. An update that cannot be read
/// is quarantined with its JSON; the others are unaffected.
pub fn read_updates(result: &serde_json::Value) -> Result<Updates, String> {
    let items = result
        .as_array()
        .ok_or("getUpdates: the result is not an array of updates")?;
    let mut out = Updates {
        count: items.len(),
        ..Updates::default()
    };
    for item in items {
        let id = item.get("update_id").and_then(|v| v.as_i64());
        if let Some(id) = id {
            out.last_update_id = Some(out.last_update_id.map_or(id, |m: i64| m.max(id)));
        }
        match normalize(item) {
            Ok(Some(m)) => out.messages.push(m),
            Ok(None) => {}
            Err(error) => out.quarantined.push(Quarantined {
                external_id: id.map(|i| i.to_string()),
                source: "getUpdates".into(),
                error,
                raw: item.to_string().into_bytes(),
            }),
        }
    }
    Ok(out)
}

/// One update as a message; `None` for updates that are not a customer
/// conversation (a group, a channel, an update type not asked for).
pub fn normalize(update: &serde_json::Value) -> Result<Option<Message>, String> {
    let u: Update = serde_json::from_value(update.clone())
        .map_err(|e| format!("cannot read a Telegram update: {e}"))?;
    let (m, edit) = match (
        u.message,
        u.edited_message,
        u.business_message,
        u.edited_business_message,
    ) {
        (Some(m), ..) => (m, false),
        (_, Some(m), ..) => (m, true),
        (_, _, Some(m), _) => (m, false),
        (_, _, _, Some(m)) => (m, true),
        _ => return Ok(None),
    };
    if m.chat.kind != "private" {
        return Ok(None);
    }
    let sent_at = DateTime::<Utc>::from_timestamp(m.date, 0).ok_or_else(|| {
        format!(
            "update {}: message date {} is not a time",
            u.update_id, m.date
        )
    })?;
    let business = m
        .business_connection_id
        .as_deref()
        .filter(|c| !c.is_empty());
    // In a private chat the chat id is the other party's user id: a
    // message from anyone else is the seller's (their own Telegram app, or
    // a bot on their behalf).
    let from_customer = m.from.as_ref().is_none_or(|f| f.id == m.chat.id);
    let (text, attachments, files) = content(&m);
    let readable = !text.is_empty() || !attachments.is_empty();
    let direction = match (readable, from_customer) {
        (false, _) => Direction::System,
        (true, true) => Direction::Inbound,
        (true, false) => Direction::Outbound,
    };
    let customer_name = name(m.chat.first_name.as_deref(), m.chat.last_name.as_deref())
        .or_else(|| m.chat.username.clone());
    let mut msg = Message::new(
        external_id(business, m.chat.id, m.message_id),
        thread_key(business, m.chat.id),
        direction,
        sent_at,
        if readable {
            text
        } else {
            "[a Telegram message hourglass cannot show]".to_owned()
        },
    );
    msg.edit = edit;
    // Away and greeting messages of a Business account are automatic.
    msg.automatic = direction == Direction::Outbound && m.is_from_offline == Some(true);
    msg.author = m
        .from
        .as_ref()
        .and_then(|f| name(Some(&f.first_name), f.last_name.as_deref()));
    msg.customer = Some(CustomerIdentity {
        channel: "telegram".into(),
        handle: m.chat.id.to_string(),
        display_name: customer_name,
        email: None,
    });
    if from_customer {
        msg.language = m.from.as_ref().and_then(|f| f.language_code.clone());
    }
    msg.reply_to = Some(m.chat.id.to_string());
    msg.attachments = attachments;
    msg.meta = serde_json::json!({
        "chat_id": m.chat.id,
        "message_id": m.message_id,
        "business_connection_id": business,
        "update_id": u.update_id,
        "file_ids": files,
    });
    Ok(Some(msg))
}

fn name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let s = [first, last]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!s.is_empty()).then_some(s)
}

/// The text (or caption), the media as attachment metadata (bytes stay on
/// Telegram: `file_id` in `meta` fetches them), and the file ids.
fn content(m: &TgMessage) -> (String, Vec<Attachment>, Vec<String>) {
    let mut attachments = Vec::new();
    let mut files = Vec::new();
    let mut add = |f: &File, default_type: &str, what: &str| {
        attachments.push(Attachment {
            filename: f.file_name.clone(),
            content_type: f
                .mime_type
                .clone()
                .unwrap_or_else(|| default_type.to_owned()),
            size: f.file_size.unwrap_or(0),
            data: None,
        });
        files.push(f.file_id.clone());
        what.to_owned()
    };
    let mut kinds = Vec::new();
    // Telegram sends every size of a photo; the largest is the photo.
    if let Some(p) = m
        .photo
        .as_ref()
        .and_then(|p| p.iter().max_by_key(|s| s.file_size.unwrap_or(0)))
    {
        kinds.push(add(p, "image/jpeg", "photo"));
    }
    for (f, t, what) in [
        (&m.document, "application/octet-stream", "document"),
        (&m.video, "video/mp4", "video"),
        (&m.audio, "audio/mpeg", "audio"),
        (&m.voice, "audio/ogg", "voice message"),
        (&m.animation, "video/mp4", "animation"),
        (&m.video_note, "video/mp4", "video message"),
    ] {
        if let Some(f) = f {
            kinds.push(add(f, t, what));
        }
    }
    if let Some(s) = &m.sticker {
        add(
            &File {
                file_id: s.file_id.clone(),
                file_name: None,
                mime_type: Some("image/webp".into()),
                file_size: s.file_size,
            },
            "image/webp",
            "sticker",
        );
        kinds.push(
            format!("sticker {}", s.emoji.clone().unwrap_or_default())
                .trim()
                .to_owned(),
        );
    }
    let mut text = m
        .text
        .clone()
        .or_else(|| m.caption.clone())
        .unwrap_or_default();
    if let Some(l) = &m.location {
        text = format!("[location {:.6}, {:.6}]", l.latitude, l.longitude);
    } else if let Some(c) = &m.contact {
        text = format!("[contact {} {}]", c.first_name, c.phone_number);
    } else if text.is_empty() && !kinds.is_empty() {
        text = format!("[{}]", kinds.join(", "));
    }
    (text, attachments, files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn private(update_id: i64, key: &str, message: serde_json::Value) -> serde_json::Value {
        let mut u = json!({ "update_id": update_id });
        u[key] = message;
        u
    }

    fn text_message(chat: i64, from: i64, text: &str) -> serde_json::Value {
        json!({
            "message_id": 7, "date": 1_767_000_000,
            "chat": { "id": chat, "type": "private", "first_name": "Ana", "last_name": "Souza" },
            "from": { "id": from, "is_bot": false, "first_name": "Ana", "language_code": "pt-BR" },
            "text": text
        })
    }

    #[test]
    fn a_private_message_is_inbound_on_the_chat_thread() {
        let m = normalize(&private(10, "message", text_message(42, 42, "Olá")))
            .unwrap()
            .unwrap();
        assert_eq!(m.thread_key, "42");
        assert_eq!(m.external_id, "42:7");
        assert_eq!(m.direction, Direction::Inbound);
        assert_eq!(m.text, "Olá");
        assert_eq!(m.reply_to.as_deref(), Some("42"));
        assert_eq!(m.language.as_deref(), Some("pt-BR"));
        assert_eq!(
            m.customer.unwrap().display_name.as_deref(),
            Some("Ana Souza")
        );
        assert!(!m.edit);
        assert_eq!(m.sent_at.timestamp(), 1_767_000_000);
    }

    #[test]
    fn edits_keep_the_key_and_say_so() {
        let m = normalize(&private(11, "edited_message", text_message(42, 42, "Olá!")))
            .unwrap()
            .unwrap();
        assert_eq!(m.external_id, "42:7");
        assert!(m.edit);
    }

    #[test]
    fn business_messages_carry_their_connection_and_the_seller_is_outbound() {
        let mut msg = text_message(42, 42, "Is it in stock?");
        msg["business_connection_id"] = json!("bc-1");
        let m = normalize(&private(12, "business_message", msg.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(m.thread_key, "b:bc-1:42");
        assert_eq!(m.external_id, "b:bc-1:42:7");
        assert_eq!(m.meta["business_connection_id"], "bc-1");
        assert_eq!(m.direction, Direction::Inbound);
        msg["from"]["id"] = json!(900);
        msg["is_from_offline"] = json!(true);
        let m = normalize(&private(13, "business_message", msg))
            .unwrap()
            .unwrap();
        assert_eq!(m.direction, Direction::Outbound);
        assert!(m.automatic, "an away message is automatic");
    }

    #[test]
    fn media_become_attachments_and_captions_text() {
        let mut msg = text_message(42, 42, "");
        msg.as_object_mut().unwrap().remove("text");
        msg["caption"] = json!("the box arrived like this");
        msg["photo"] = json!([
            { "file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 1000 },
            { "file_id": "big", "file_unique_id": "b", "width": 1280, "height": 1280, "file_size": 90000 }
        ]);
        msg["document"] = json!({ "file_id": "doc", "file_unique_id": "d", "file_name": "invoice.pdf", "mime_type": "application/pdf", "file_size": 5000 });
        let m = normalize(&private(14, "message", msg)).unwrap().unwrap();
        assert_eq!(m.text, "the box arrived like this");
        assert_eq!(m.attachments.len(), 2);
        assert_eq!(m.attachments[0].size, 90000);
        assert_eq!(m.attachments[1].filename.as_deref(), Some("invoice.pdf"));
        assert_eq!(m.meta["file_ids"], json!(["big", "doc"]));

        let mut sticker = text_message(42, 42, "");
        sticker.as_object_mut().unwrap().remove("text");
        sticker["sticker"] = json!({ "file_id": "st", "file_unique_id": "u", "emoji": "👍", "width": 1, "height": 1, "is_animated": false, "is_video": false, "type": "regular" });
        let m = normalize(&private(15, "message", sticker))
            .unwrap()
            .unwrap();
        assert_eq!(m.text, "[sticker 👍]");
        assert_eq!(m.direction, Direction::Inbound);
    }

    #[test]
    fn groups_are_skipped_and_unreadable_updates_quarantined() {
        let mut group = text_message(-100, 42, "hi all");
        group["chat"]["type"] = json!("supergroup");
        let result = json!([
            private(20, "message", group),
            { "update_id": 21, "message": { "message_id": "not a number" } },
            private(22, "message", text_message(42, 42, "hello")),
        ]);
        let u = read_updates(&result).unwrap();
        assert_eq!(u.count, 3);
        assert_eq!(u.last_update_id, Some(22));
        assert_eq!(u.messages.len(), 1);
        assert_eq!(u.quarantined.len(), 1);
        assert_eq!(u.quarantined[0].external_id.as_deref(), Some("21"));
        assert!(String::from_utf8_lossy(&u.quarantined[0].raw).contains("not a number"));
        assert!(read_updates(&json!({"x": 1})).is_err());
    }

    #[test]
    fn a_message_without_content_is_a_system_message() {
        let mut msg = text_message(42, 42, "");
        msg.as_object_mut().unwrap().remove("text");
        msg["pinned_message"] =
            json!({ "message_id": 1, "date": 0, "chat": { "id": 42, "type": "private" } });
        let m = normalize(&private(30, "message", msg)).unwrap().unwrap();
        assert_eq!(m.direction, Direction::System);
    }
}
