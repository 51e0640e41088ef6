//! Meta webhook deliveries → normalized messages. Pure functions, no I/O.
//!
//! Messenger (`"object": "page"`) and Instagram (`"object": "instagram"`)
//! deliveries carry `entry[].messaging[]` (and `entry[].standby[]` while
//! another app holds the conversation): messages, echoes of the Page's
//! own messages, reactions, read receipts, postbacks and handovers.
//! WhatsApp (`"object": "whatsapp_business_account"`) carries
//! `entry[].changes[]` with `field = "messages"`: customer messages and
//! the `statuses` of what the business sent.
//!
//! One app has one callback URL per object, so a delivery may concern
//! another Page or number of the same app: those entries are skipped.
//! The thread of a conversation is the customer's id on the channel
//! (PSID, Instagram-scoped id, WhatsApp id): Meta keeps one conversation
//! per customer and Page or number, and webhooks name the customer, not
//! the conversation.

use chrono::{DateTime, TimeZone, Utc};
use hourglass_connector::{
    Attachment, Batch, CustomerIdentity, DeliveryState, DeliveryStatus, Direction, Message,
    Quarantined,
};
use serde_json::{json, Value};

use crate::Kind;

/// A delivery as a batch: messages, delivery statuses, and the events
/// that could not be read (quarantined with their JSON). `own_id` is the
/// instance's Page, Instagram account or phone number id.
pub fn parse_delivery(kind: Kind, own_id: &str, body: &[u8]) -> Result<Batch, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("a Meta webhook delivery is not JSON: {e}"))?;
    let object = v.get("object").and_then(Value::as_str).unwrap_or("");
    if object != kind.webhook_object() {
        return Err(format!(
            "a delivery for object {object:?} reached a {} instance, which takes {:?}: check the app's webhook subscriptions",
            kind.as_str(),
            kind.webhook_object()
        ));
    }
    let entries = v
        .get("entry")
        .and_then(Value::as_array)
        .ok_or("a Meta webhook delivery without an entry array")?;
    let mut batch = Batch::default();
    for entry in entries {
        match kind {
            Kind::WhatsApp => whatsapp_entry(own_id, entry, &mut batch),
            _ => messaging_entry(kind, own_id, entry, &mut batch),
        }
    }
    Ok(batch)
}

fn quarantine(batch: &mut Batch, event: &Value, id: Option<String>, error: String) {
    batch.quarantined.push(Quarantined {
        external_id: id,
        source: "webhook event".into(),
        error,
        raw: event.to_string().into_bytes(),
    });
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn time_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn messaging_entry(kind: Kind, own_id: &str, entry: &Value, batch: &mut Batch) {
    if entry
        .get("id")
        .and_then(Value::as_str)
        .is_some_and(|id| id != own_id)
    {
        return;
    }
    for list in ["messaging", "standby"] {
        for event in entry
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match messaging_event(kind, own_id, event) {
                Ok(Some(m)) => batch.messages.push(m),
                Ok(None) => {}
                Err((id, e)) => quarantine(batch, event, id, e),
            }
        }
    }
}

type EventError = (Option<String>, String);

/// One `messaging[]` event; `None` for events that say nothing a seller
/// needs (delivery receipts, unknown kinds).
fn messaging_event(kind: Kind, own_id: &str, e: &Value) -> Result<Option<Message>, EventError> {
    let sender = str_of(e, &["sender", "id"]);
    let recipient = str_of(e, &["recipient", "id"]);
    let ts = e.get("timestamp").and_then(Value::as_i64).and_then(time_ms);
    let mid = str_of(e, &["message", "mid"]).map(str::to_owned);
    let (Some(sender), Some(recipient), Some(at)) = (sender, recipient, ts) else {
        return Err((
            mid,
            format!(
                "{} event without sender.id, recipient.id or timestamp",
                kind.as_str()
            ),
        ));
    };
    let channel = kind.as_str();
    if let Some(msg) = e.get("message") {
        let Some(mid) = mid else {
            return Err((None, format!("{channel} message without mid")));
        };
        let echo = msg.get("is_echo").and_then(Value::as_bool).unwrap_or(false);
        if msg.get("is_deleted").and_then(Value::as_bool) == Some(true) {
            // Instagram: the customer unsent a message.
            let mut m = Message::new(
                format!("deleted:{mid}"),
                sender,
                Direction::System,
                at,
                "The customer unsent a message.",
            );
            m.customer = Some(identity(kind, sender, None));
            return Ok(Some(m));
        }
        let customer = if echo { recipient } else { sender };
        let (text, attachments) = message_text(msg);
        let mut m = Message::new(
            mid.clone(),
            customer,
            if echo {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            at,
            text,
        );
        m.attachments = attachments;
        m.customer = Some(identity(kind, customer, None));
        m.reply_to = Some(customer.to_owned());
        m.meta = json!({ "mid": mid, "timestamp_ms": at.timestamp_millis(), "page_id": own_id });
        if let Some(app) = msg.get("app_id") {
            m.meta["app_id"] = app.clone();
        }
        return Ok(Some(m));
    }
    if let Some(r) = e.get("reaction") {
        let target = r.get("mid").and_then(Value::as_str).unwrap_or("");
        let action = r.get("action").and_then(Value::as_str).unwrap_or("react");
        let emoji = r
            .get("emoji")
            .or_else(|| r.get("reaction"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let who = if sender == own_id {
            "The Page"
        } else {
            "The customer"
        };
        let text = if action == "unreact" {
            format!("{who} removed a reaction.")
        } else {
            format!("{who} reacted {emoji} to a message.")
        };
        let customer = if sender == own_id { recipient } else { sender };
        let mut m = Message::new(
            format!("reaction:{target}:{sender}:{}", at.timestamp_millis()),
            customer,
            Direction::System,
            at,
            text,
        );
        m.customer = Some(identity(kind, customer, None));
        return Ok(Some(m));
    }
    if let Some(r) = e.get("read") {
        let watermark = r
            .get("watermark")
            .and_then(Value::as_i64)
            .unwrap_or(at.timestamp_millis());
        let reader = if sender == own_id {
            "The Page"
        } else {
            "The customer"
        };
        let customer = if sender == own_id { recipient } else { sender };
        let mut m = Message::new(
            format!("read:{sender}:{watermark}"),
            customer,
            Direction::System,
            at,
            format!("{reader} read the conversation."),
        );
        m.customer = Some(identity(kind, customer, None));
        return Ok(Some(m));
    }
    if let Some(p) = e.get("postback") {
        // A button the customer tapped: a message from them.
        let title = p
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("(a button)");
        let id = p
            .get("mid")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("postback:{sender}:{}", at.timestamp_millis()));
        let mut m = Message::new(
            id,
            sender,
            Direction::Inbound,
            at,
            format!("[tapped] {title}"),
        );
        m.customer = Some(identity(kind, sender, None));
        m.reply_to = Some(sender.to_owned());
        m.meta = json!({ "timestamp_ms": at.timestamp_millis(), "page_id": own_id });
        return Ok(Some(m));
    }
    for (field, what) in [
        ("pass_thread_control", "was handed to this app"),
        ("take_thread_control", "was taken by another app"),
        ("request_thread_control", "is requested by another app"),
    ] {
        if e.get(field).is_some() {
            let customer = if sender == own_id { recipient } else { sender };
            let mut m = Message::new(
                format!("{field}:{customer}:{}", at.timestamp_millis()),
                customer,
                Direction::System,
                at,
                format!("The conversation {what}."),
            );
            m.customer = Some(identity(kind, customer, None));
            return Ok(Some(m));
        }
    }
    Ok(None)
}

fn identity(kind: Kind, handle: &str, name: Option<&str>) -> CustomerIdentity {
    CustomerIdentity {
        channel: kind.as_str().to_owned(),
        handle: handle.to_owned(),
        display_name: name.map(str::to_owned),
        email: None,
    }
}

/// The text of a Messenger or Instagram message and its attachments as
/// metadata; what is not text is described in brackets.
fn message_text(msg: &Value) -> (String, Vec<Attachment>) {
    let mut parts = Vec::new();
    if let Some(story) = msg.get("reply_to").and_then(|r| r.get("story")) {
        let url = story.get("url").and_then(Value::as_str).unwrap_or("");
        parts.push(format!("[replying to your story {url}]").replace(" ]", "]"));
    }
    let mut attachments = Vec::new();
    for a in msg
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = a.get("type").and_then(Value::as_str).unwrap_or("file");
        let payload = a.get("payload").cloned().unwrap_or(Value::Null);
        let url = payload.get("url").and_then(Value::as_str);
        match kind {
            "image" | "video" | "audio" | "file" => {
                attachments.push(Attachment {
                    filename: url
                        .and_then(|u| u.split('?').next())
                        .and_then(|u| u.rsplit('/').next())
                        .map(str::to_owned),
                    content_type: match kind {
                        "file" => "application/octet-stream".into(),
                        k => format!("{k}/*"),
                    },
                    size: 0,
                    data: None,
                });
                parts.push(format!(
                    "[{kind}{}]",
                    url.map(|u| format!(" {u}")).unwrap_or_default()
                ));
            }
            // A post or reel the customer shared or replied to.
            "share" | "ig_post" | "ig_reel" | "reel" | "story_mention" | "template"
            | "fallback" => {
                let title = payload
                    .get("title")
                    .and_then(Value::as_str)
                    .or_else(|| a.get("title").and_then(Value::as_str));
                let what = match kind {
                    "story_mention" => "mentioned you in a story",
                    _ => "shared a post",
                };
                let mut s = format!("[{what}");
                if let Some(t) = title {
                    s.push_str(&format!(": {t}"));
                }
                if let Some(u) = url {
                    s.push_str(&format!(" {u}"));
                }
                s.push(']');
                parts.push(s);
            }
            "location" => {
                let c = payload.get("coordinates");
                let lat = c.and_then(|c| c.get("lat")).and_then(Value::as_f64);
                let long = c.and_then(|c| c.get("long")).and_then(Value::as_f64);
                match (lat, long) {
                    (Some(lat), Some(long)) => parts.push(format!("[location {lat},{long}]")),
                    _ => parts.push("[location]".into()),
                }
            }
            other => parts.push(format!("[{other}]")),
        }
    }
    if let Some(t) = msg.get("text").and_then(Value::as_str) {
        parts.push(t.to_owned());
    }
    if parts.is_empty() && msg.get("is_unsupported").and_then(Value::as_bool) == Some(true) {
        parts.push("[a message Meta cannot show through its API]".into());
    }
    (parts.join("\n"), attachments)
}

fn whatsapp_entry(own_id: &str, entry: &Value, batch: &mut Batch) {
    for change in entry
        .get("changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = change.get("field").and_then(Value::as_str).unwrap_or("");
        let Some(value) = change.get("value") else {
            continue;
        };
        if str_of(value, &["metadata", "phone_number_id"]).is_some_and(|id| id != own_id) {
            continue;
        }
        match field {
            "messages" => {
                let names: Vec<(&str, &str)> = value
                    .get("contacts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some((c.get("wa_id")?.as_str()?, str_of(c, &["profile", "name"])?))
                    })
                    .collect();
                for m in value
                    .get("messages")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let from = m.get("from").and_then(Value::as_str).unwrap_or("");
                    let name = names.iter().find(|(id, _)| *id == from).map(|(_, n)| *n);
                    match whatsapp_message(own_id, m, name, Direction::Inbound) {
                        Ok(msg) => batch.messages.push(msg),
                        Err((id, e)) => quarantine(batch, m, id, e),
                    }
                }
                for s in value
                    .get("statuses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match whatsapp_status(s) {
                        Ok(Some(st)) => batch.statuses.push(st),
                        Ok(None) => {}
                        Err((id, e)) => quarantine(batch, s, id, e),
                    }
                }
            }
            // Coexistence: what the business sent from the WhatsApp
            // Business app stops the clock like a reply from hourglass.
            "smb_message_echoes" => {
                for m in value
                    .get("message_echoes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match whatsapp_message(own_id, m, None, Direction::Outbound) {
                        Ok(msg) => batch.messages.push(msg),
                        Err((id, e)) => quarantine(batch, m, id, e),
                    }
                }
            }
            _ => {}
        }
    }
}

fn whatsapp_time(v: &Value) -> Option<DateTime<Utc>> {
    let secs = match v.get("timestamp")? {
        Value::String(s) => s.parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    Utc.timestamp_opt(secs, 0).single()
}

fn whatsapp_message(
    own_id: &str,
    m: &Value,
    name: Option<&str>,
    direction: Direction,
) -> Result<Message, EventError> {
    let id = m.get("id").and_then(Value::as_str);
    let customer = if direction == Direction::Outbound {
        m.get("to").and_then(Value::as_str)
    } else {
        m.get("from").and_then(Value::as_str)
    };
    let at = whatsapp_time(m);
    let (Some(id), Some(customer), Some(at)) = (id, customer, at) else {
        return Err((
            id.map(str::to_owned),
            "WhatsApp message without id, from/to or timestamp".into(),
        ));
    };
    let kind = m.get("type").and_then(Value::as_str).unwrap_or("unknown");
    let mut attachments = Vec::new();
    let text = match kind {
        "text" => str_of(m, &["text", "body"]).unwrap_or("").to_owned(),
        "image" | "video" | "audio" | "document" | "sticker" => {
            let media = m.get(kind).cloned().unwrap_or(Value::Null);
            attachments.push(Attachment {
                filename: media
                    .get("filename")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                content_type: media
                    .get("mime_type")
                    .and_then(Value::as_str)
                    .unwrap_or("application/octet-stream")
                    .to_owned(),
                size: 0,
                data: None,
            });
            let caption = media.get("caption").and_then(Value::as_str);
            match caption {
                Some(c) => format!("[{kind}]\n{c}"),
                None => format!("[{kind}]"),
            }
        }
        "location" => {
            let l = m.get("location").cloned().unwrap_or(Value::Null);
            let lat = l
                .get("latitude")
                .and_then(Value::as_f64)
                .unwrap_or_default();
            let long = l
                .get("longitude")
                .and_then(Value::as_f64)
                .unwrap_or_default();
            let mut s = format!("[location {lat},{long}]");
            for k in ["name", "address"] {
                if let Some(v) = l.get(k).and_then(Value::as_str) {
                    s.push_str(&format!(" {v}"));
                }
            }
            s
        }
        "interactive" => {
            let i = m.get("interactive").cloned().unwrap_or(Value::Null);
            let reply = i.get("button_reply").or_else(|| i.get("list_reply"));
            let title = reply
                .and_then(|r| r.get("title"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("[chose] {title}")
        }
        "button" => format!("[tapped] {}", str_of(m, &["button", "text"]).unwrap_or("")),
        "reaction" => {
            let emoji = str_of(m, &["reaction", "emoji"]).unwrap_or("");
            let mut msg = Message::new(
                format!("reaction:{id}"),
                customer,
                Direction::System,
                at,
                if emoji.is_empty() {
                    "The customer removed a reaction.".to_owned()
                } else {
                    format!("The customer reacted {emoji} to a message.")
                },
            );
            msg.customer = Some(identity(Kind::WhatsApp, customer, name));
            return Ok(msg);
        }
        "contacts" => "[shared a contact]".into(),
        "order" => "[sent an order from the catalog]".into(),
        other => {
            let detail = m
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .and_then(|e| e.get("title").or_else(|| e.get("message")))
                .and_then(Value::as_str)
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            format!("[a {other} message WhatsApp does not show through its API{detail}]")
        }
    };
    let mut msg = Message::new(id, customer, direction, at, text);
    msg.attachments = attachments;
    msg.author = name.map(str::to_owned);
    msg.customer = Some(identity(Kind::WhatsApp, customer, name));
    msg.reply_to = Some(customer.to_owned());
    msg.meta =
        json!({ "wamid": id, "timestamp_ms": at.timestamp_millis(), "phone_number_id": own_id });
    if let Some(ctx) = m.get("context").and_then(|c| c.get("id")) {
        msg.meta["context_id"] = ctx.clone();
    }
    Ok(msg)
}

fn whatsapp_status(s: &Value) -> Result<Option<DeliveryStatus>, EventError> {
    let id = s.get("id").and_then(Value::as_str);
    let at = whatsapp_time(s);
    let (Some(id), Some(at)) = (id, at) else {
        return Err((
            id.map(str::to_owned),
            "WhatsApp status without id or timestamp".into(),
        ));
    };
    let state = match s.get("status").and_then(Value::as_str).unwrap_or("") {
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "failed" => DeliveryState::Failed,
        // "deleted", "warning", ...: nothing that changes a reply.
        _ => return Ok(None),
    };
    let error = (state == DeliveryState::Failed).then(|| {
        let e = s
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
            .cloned()
            .unwrap_or(Value::Null);
        let code = e.get("code").and_then(Value::as_i64);
        let title = e
            .get("title")
            .or_else(|| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        let details = str_of(&e, &["error_data", "details"]);
        let mut r = match code {
            Some(c) => format!("WhatsApp could not deliver the reply (code {c}: {title})"),
            None => format!("WhatsApp could not deliver the reply ({title})"),
        };
        if let Some(d) = details.filter(|d| *d != title) {
            r.push_str(&format!(": {d}"));
        }
        r
    });
    Ok(Some(DeliveryStatus {
        external_id: id.to_owned(),
        state,
        at,
        error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "104857600000001";

    fn messenger(events: Value) -> Vec<u8> {
        json!({"object": "page", "entry": [{"id": PAGE, "time": 1_764_540_000_000_i64, "messaging": events}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn messenger_messages_echoes_and_non_clock_events() {
        let body = messenger(json!([
            {"sender": {"id": "PSID1"}, "recipient": {"id": PAGE}, "timestamp": 1_764_540_000_000_i64,
             "message": {"mid": "m_1", "text": "Is it in stock?", "reply_to": {"story": {"url": "https://cdn/s.jpg", "id": "s1"}}}},
            {"sender": {"id": PAGE}, "recipient": {"id": "PSID1"}, "timestamp": 1_764_540_060_000_i64,
             "message": {"mid": "m_2", "is_echo": true, "app_id": 263902037430900_i64, "text": "Yes!"}},
            {"sender": {"id": "PSID1"}, "recipient": {"id": PAGE}, "timestamp": 1_764_540_070_000_i64,
             "reaction": {"mid": "m_2", "action": "react", "reaction": "love", "emoji": "❤"}},
            {"sender": {"id": "PSID1"}, "recipient": {"id": PAGE}, "timestamp": 1_764_540_080_000_i64,
             "read": {"watermark": 1_764_540_060_000_i64}},
            {"sender": {"id": "PSID1"}, "recipient": {"id": PAGE}, "timestamp": 1_764_540_090_000_i64,
             "delivery": {"mids": ["m_2"], "watermark": 1}},
            {"sender": {"id": "PSID1"}, "recipient": {"id": PAGE}, "timestamp": 1_764_540_100_000_i64,
             "message": {"mid": "m_3", "attachments": [{"type": "image", "payload": {"url": "https://cdn/x/photo.jpg?x=1"}}]}},
            {"recipient": {"id": PAGE}, "timestamp": 1, "message": {"mid": "m_bad", "text": "no sender"}}
        ]));
        let b = parse_delivery(Kind::Messenger, PAGE, &body).unwrap();
        let m = &b.messages;
        assert_eq!(m.len(), 5, "{m:#?}");
        assert_eq!(m[0].external_id, "m_1");
        assert_eq!(m[0].direction, Direction::Inbound);
        assert_eq!(m[0].thread_key, "PSID1");
        assert!(
            m[0].text.contains("story https://cdn/s.jpg") && m[0].text.ends_with("Is it in stock?"),
            "{}",
            m[0].text
        );
        assert_eq!(m[0].sent_at.timestamp_millis(), 1_764_540_000_000);
        assert_eq!(
            m[1].direction,
            Direction::Outbound,
            "an echo is the Page's reply"
        );
        assert_eq!(m[1].thread_key, "PSID1");
        assert_eq!(m[2].direction, Direction::System);
        assert!(m[2].text.contains("❤"));
        assert_eq!(m[3].direction, Direction::System);
        assert_eq!(m[4].attachments[0].filename.as_deref(), Some("photo.jpg"));
        assert_eq!(b.quarantined.len(), 1);
        assert_eq!(b.quarantined[0].external_id.as_deref(), Some("m_bad"));
        // The same body gives the same ids (redeliveries are absorbed).
        let again = parse_delivery(Kind::Messenger, PAGE, &body).unwrap();
        let ids = |b: &Batch| {
            b.messages
                .iter()
                .map(|m| m.external_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&b), ids(&again));
    }

    #[test]
    fn other_pages_and_wrong_objects() {
        let body = json!({"object": "page", "entry": [{"id": "999", "time": 1, "messaging": [
            {"sender": {"id": "P"}, "recipient": {"id": "999"}, "timestamp": 1, "message": {"mid": "m", "text": "x"}}]}]});
        let b = parse_delivery(Kind::Messenger, PAGE, body.to_string().as_bytes()).unwrap();
        assert!(b.messages.is_empty());
        let e = parse_delivery(Kind::Instagram, PAGE, body.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("\"page\""), "{e}");
        assert!(parse_delivery(Kind::Messenger, PAGE, b"{not json")
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn whatsapp_messages_and_statuses() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "109876543210987"},
            "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "16315551181"}],
            "messages": [
                {"from": "16315551181", "id": "wamid.A", "timestamp": "1764540000", "type": "text", "text": {"body": "Hello"}},
                {"from": "16315551181", "id": "wamid.B", "timestamp": "1764540001", "type": "image", "image": {"id": "1", "mime_type": "image/jpeg", "caption": "broken"}},
                {"from": "16315551181", "id": "wamid.C", "timestamp": "1764540002", "type": "location", "location": {"latitude": 52.5, "longitude": 13.4, "name": "Shop"}},
                {"from": "16315551181", "id": "wamid.D", "timestamp": "1764540003", "type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Refund"}}},
                {"from": "16315551181", "id": "wamid.E", "timestamp": "1764540004", "type": "button", "button": {"payload": "p", "text": "Track order"}}
            ],
            "statuses": [
                {"id": "wamid.OUT", "status": "delivered", "timestamp": "1764540005", "recipient_id": "16315551181"},
                {"id": "wamid.OUT", "status": "failed", "timestamp": "1764540006", "recipient_id": "16315551181",
                 "errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message", "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}]}
            ]
        }}]}]});
        let b = parse_delivery(
            Kind::WhatsApp,
            "109876543210987",
            body.to_string().as_bytes(),
        )
        .unwrap();
        let m = &b.messages;
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].text, "Hello");
        assert_eq!(
            m[0].customer.as_ref().unwrap().display_name.as_deref(),
            Some("Kerry")
        );
        assert_eq!(m[0].thread_key, "16315551181");
        assert_eq!(m[1].attachments[0].content_type, "image/jpeg");
        assert!(m[1].text.contains("broken"));
        assert!(m[2].text.contains("52.5,13.4"));
        assert_eq!(m[3].text, "[chose] Refund");
        assert_eq!(m[4].text, "[tapped] Track order");
        assert_eq!(b.statuses.len(), 2);
        assert_eq!(b.statuses[1].state, DeliveryState::Failed);
        let e = b.statuses[1].error.as_deref().unwrap();
        assert!(e.contains("131047") && e.contains("24 hours"), "{e}");
        // Another number of the same app: skipped.
        let b = parse_delivery(Kind::WhatsApp, "1", body.to_string().as_bytes()).unwrap();
        assert!(b.messages.is_empty() && b.statuses.is_empty());
    }
}
