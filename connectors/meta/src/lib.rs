//! Meta's messaging channels: Facebook Messenger (`type = "messenger"`),
//! Instagram (`type = "instagram"`) and the WhatsApp Cloud API
//! (`type = "whatsapp"`).
//!
//! Meta pushes and does not let anyone read old messages freely, so
//! webhooks are the feed: `GET /webhooks/{instance}` answers the
//! subscription handshake, `POST` deliveries are accepted only with a
//! valid `X-Hub-Signature-256`, and the daemon stores them before the
//! 200 and parses them afterwards ([`Connector::parse_webhook`]). The
//! Graph API sends replies and, for Messenger and Instagram, backfills
//! what arrived while hourglass was down (`GET /{page-id}/conversations`
//! at 2 calls/s).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod config;
pub mod consent;
mod normalize;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use hourglass_connector::platform::PlatformOf;
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::{
    constant_time_eq, Batch, Capabilities, Connector, ConnectorError, Cursors, CustomerIdentity,
    Direction, Message, OutgoingReply, SentReply, WebhookRequest, WebhookVerdict,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::Sha256;

pub use client::{graph_error, Call, GraphApi, Usage, READ_QUOTA, THROTTLING_CODES};
pub use config::{
    InstagramSettings, MessengerSettings, MetaConfig, MetaSettings, SettingsOf, WhatsAppSettings,
    WhatsAppTemplate, HUMAN_AGENT_WINDOW, INSTAGRAM_SEND_QUOTA, MESSENGER_SEND_QUOTA,
    WHATSAPP_PER_USER_QUOTA, WHATSAPP_SEND_QUOTA,
};
pub use normalize::parse_delivery;

/// `type = "messenger"`.
pub static MESSENGER: PlatformOf<MessengerSettings> = PlatformOf::new("messenger");
/// `type = "instagram"`.
pub static INSTAGRAM: PlatformOf<InstagramSettings> = PlatformOf::new("instagram");
/// `type = "whatsapp"`.
pub static WHATSAPP: PlatformOf<WhatsAppSettings> = PlatformOf::new("whatsapp");

/// The Send API takes at most 2,000 characters of text (Messenger and
/// Instagram).
pub const MESSENGER_MAX_TEXT: usize = 2000;
/// The Cloud API takes at most 4,096 characters in a text message.
pub const WHATSAPP_MAX_TEXT: usize = 4096;

/// The free reply window after the customer's last message.
const FREE_WINDOW: Duration = Duration::hours(24);

/// How far back the first backfill reads.
const FIRST_BACKFILL: Duration = Duration::days(7);
/// Backfill reads again this much before its cursor: the conversations
/// API orders by `updated_time`, which is not a strict sequence.
const BACKFILL_OVERLAP: Duration = Duration::minutes(5);
/// Conversations per backfill page, and pages per poll at most.
const PAGE: &str = "25";
const MAX_PAGES: usize = 40;

/// Which of Meta's channels an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Messenger,
    Instagram,
    WhatsApp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Messenger => "messenger",
            Kind::Instagram => "instagram",
            Kind::WhatsApp => "whatsapp",
        }
    }

    /// The `object` of this channel's webhook deliveries.
    pub fn webhook_object(self) -> &'static str {
        match self {
            Kind::Messenger => "page",
            Kind::Instagram => "instagram",
            Kind::WhatsApp => "whatsapp_business_account",
        }
    }

    fn max_text(self) -> usize {
        match self {
            Kind::WhatsApp => WHATSAPP_MAX_TEXT,
            _ => MESSENGER_MAX_TEXT,
        }
    }
}

/// Whether the channel takes `text` in one message: the reason when not.
/// Run before queueing and again before sending.
pub fn check_text(kind: Kind, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{} cannot send an empty message", kind.as_str()));
    }
    let length = text.chars().count();
    let max = kind.max_text();
    if length > max {
        return Err(format!(
            "the reply is {length} characters long and {} takes at most {max} in one message; shorten it or send it in parts",
            kind.as_str()
        ));
    }
    Ok(())
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` with `secret`: the value
/// of `X-Hub-Signature-256` Meta sends.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks `X-Hub-Signature-256` over the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), String> {
    let header = header.ok_or("no X-Hub-Signature-256 header")?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or("X-Hub-Signature-256 is not sha256=<hex>")?;
    let sig = hex::decode(hex_sig).map_err(|_| "X-Hub-Signature-256 is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable app secret")?;
    mac.update(body);
    mac.verify_slice(&sig)
        .map_err(|_| "X-Hub-Signature-256 does not match the body".into())
}

/// One Page, Instagram account or WhatsApp number.
#[derive(Debug)]
pub struct MetaConnector {
    kind: Kind,
    instance: String,
    config: MetaConfig,
    /// The Page, Instagram account or phone number id.
    own_id: String,
    app_secret: SecretString,
    verify_token: SecretString,
    api: GraphApi,
}

impl MetaConnector {
    /// Resolves the secrets; errors name the reference, never the value.
    pub fn new(kind: Kind, instance: &str, config: MetaConfig) -> Result<MetaConnector, String> {
        let resolve = |key: &str, r: &hourglass_connector::secret::SecretRef| {
            r.resolve().map_err(|e| format!("meta.{key}: {e}"))
        };
        let app_secret = resolve("app_secret", &config.app_secret)?;
        let verify_token = resolve("verify_token", &config.verify_token)?;
        let token = resolve("access_token", &config.access_token)?;
        let own_id = match kind {
            Kind::WhatsApp => config.phone_number_id.clone(),
            _ => config.page_id.clone(),
        }
        .ok_or_else(|| {
            format!(
                "meta: a {} instance needs {}",
                kind.as_str(),
                if kind == Kind::WhatsApp {
                    "phone_number_id"
                } else {
                    "page_id"
                }
            )
        })?;
        let api = GraphApi::new(&config.api_url, token)?;
        Ok(MetaConnector {
            kind,
            instance: instance.to_owned(),
            config,
            own_id,
            app_secret,
            verify_token,
            api,
        })
    }

    /// The subscription handshake: `hub.challenge` echoed when
    /// `hub.verify_token` matches, 403 otherwise.
    fn handshake(&self, request: &WebhookRequest<'_>) -> WebhookVerdict {
        let mode = request.query_param("hub.mode");
        let token = request.query_param("hub.verify_token").unwrap_or("");
        let challenge = request.query_param("hub.challenge");
        let token_ok = constant_time_eq(
            token.as_bytes(),
            self.verify_token.expose_secret().as_bytes(),
        );
        match (mode, challenge) {
            (Some("subscribe"), Some(challenge)) if token_ok => WebhookVerdict::Respond {
                status: 200,
                content_type: "text/plain".into(),
                body: challenge.as_bytes().to_vec(),
            },
            _ => WebhookVerdict::Respond {
                status: 403,
                content_type: "text/plain".into(),
                body: b"verification failed".to_vec(),
            },
        }
    }

    /// How long ago the customer last wrote, from the answered message.
    fn since_customer(reply: &OutgoingReply, now: DateTime<Utc>) -> Option<Duration> {
        let ms = reply.in_reply_to_meta.get("timestamp_ms")?.as_i64()?;
        Some(now - DateTime::<Utc>::from_timestamp_millis(ms)?)
    }

    async fn send_messenger(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        let now = Utc::now();
        let mut body = json!({
            "recipient": { "id": reply.thread_key },
            "message": { "text": reply.text, "metadata": reply.outbox_id },
        });
        match Self::since_customer(reply, now) {
            Some(d) if d >= HUMAN_AGENT_WINDOW => {
                return Err(ConnectorError::Refused(format!(
                    "the customer's last message is more than 7 days old: {} takes no reply after that, not even one tagged HUMAN_AGENT",
                    self.kind.as_str()
                )))
            }
            // A person answers: the human agent tag extends the window to
            // 7 days (hourglass sends only what an agent wrote).
            Some(d) if d >= FREE_WINDOW => {
                body["messaging_type"] = json!("MESSAGE_TAG");
                body["tag"] = json!("HUMAN_AGENT");
            }
            _ => body["messaging_type"] = json!("RESPONSE"),
        }
        let answer = self
            .api
            .post(&format!("{}/messages", self.own_id), &body)
            .await?;
        let id = answer
            .get("message_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::BadData {
                reason: "Send API: the answer has no message_id".into(),
                raw: answer.to_string().into_bytes(),
            })?;
        Ok(SentReply {
            external_id: id.to_owned(),
            sent_at: now,
        })
    }

    async fn send_whatsapp(
        &self,
        reply: &OutgoingReply,
        template: Option<(&str, &Vars)>,
    ) -> Result<SentReply, ConnectorError> {
        let now = Utc::now();
        let template =
            template.and_then(|(name, vars)| Some((name, self.config.templates.get(name)?, vars)));
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": reply.thread_key,
            // Comes back in this message's statuses.
            "biz_opaque_callback_data": reply.outbox_id,
        });
        match template {
            Some((name, t, vars)) => {
                let parameters: Vec<Value> = t
                    .parameters
                    .iter()
                    .map(|var| {
                        let text = vars.get(var).cloned().unwrap_or_default();
                        json!({ "type": "text", "text": text })
                    })
                    .collect();
                let mut template = json!({
                    "name": t.name.as_deref().unwrap_or(name),
                    "language": { "code": t.language },
                });
                if !parameters.is_empty() {
                    template["components"] = json!([{ "type": "body", "parameters": parameters }]);
                }
                body["type"] = json!("template");
                body["template"] = template;
            }
            None => {
                if Self::since_customer(reply, now).is_some_and(|d| d >= FREE_WINDOW) {
                    return Err(ConnectorError::Refused(
                        "more than 24 h have passed since the customer last wrote; WhatsApp takes only an approved template now (reply --template NAME)".into(),
                    ));
                }
                body["type"] = json!("text");
                body["text"] = json!({ "body": reply.text, "preview_url": false });
                if let Some(ctx) = reply.in_reply_to_meta.get("wamid") {
                    body["context"] = json!({ "message_id": ctx });
                }
            }
        }
        let answer = self
            .api
            .post(&format!("{}/messages", self.own_id), &body)
            .await?;
        let id = answer
            .get("messages")
            .and_then(|m| m.get(0))
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::BadData {
                reason: "Cloud API: the answer has no messages[0].id".into(),
                raw: answer.to_string().into_bytes(),
            })?;
        Ok(SentReply {
            external_id: id.to_owned(),
            sent_at: now,
        })
    }

    /// Conversations updated since `since`, newest first, and their
    /// messages since then.
    async fn backfill(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<Message>, Option<DateTime<Utc>>), ConnectorError> {
        let platform = self.kind.as_str();
        let path = format!("{}/conversations", self.own_id);
        let mut after: Option<String> = None;
        let mut newest: Option<DateTime<Utc>> = None;
        let mut messages = Vec::new();
        'pages: for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("platform", platform),
                ("fields", "id,updated_time,participants"),
                ("limit", PAGE),
            ];
            if let Some(a) = &after {
                query.push(("after", a.as_str()));
            }
            let page = self.api.get(&path, &query).await?;
            let data = page.get("data").and_then(Value::as_array).ok_or_else(|| {
                ConnectorError::BadData {
                    reason: "conversations: the answer has no data array".into(),
                    raw: page.to_string().into_bytes(),
                }
            })?;
            for conv in data {
                let updated = conv
                    .get("updated_time")
                    .and_then(Value::as_str)
                    .and_then(graph_time);
                let Some(updated) = updated else { continue };
                if updated < since {
                    break 'pages;
                }
                newest = Some(newest.map_or(updated, |n| n.max(updated)));
                let Some(id) = conv.get("id").and_then(Value::as_str) else {
                    continue;
                };
                self.conversation_messages(id, conv, since, &mut messages)
                    .await?;
            }
            after = page
                .get("paging")
                .filter(|p| p.get("next").is_some())
                .and_then(|p| p.get("cursors"))
                .and_then(|c| c.get("after"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        Ok((messages, newest))
    }

    async fn conversation_messages(
        &self,
        id: &str,
        conv: &Value,
        since: DateTime<Utc>,
        out: &mut Vec<Message>,
    ) -> Result<(), ConnectorError> {
        // The customer: the participant that is not us.
        let customer = conv
            .get("participants")
            .and_then(|p| p.get("data"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("id").and_then(Value::as_str) != Some(self.own_id.as_str()))
            .cloned()
            .unwrap_or(Value::Null);
        let Some(customer_id) = customer.get("id").and_then(Value::as_str) else {
            return Ok(());
        };
        let name = customer
            .get("name")
            .or_else(|| customer.get("username"))
            .and_then(Value::as_str);
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("fields", "id,created_time,from,to,message"),
                ("limit", PAGE),
            ];
            if let Some(a) = &after {
                query.push(("after", a.as_str()));
            }
            let page = self.api.get(&format!("{id}/messages"), &query).await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for m in &data {
                let (Some(mid), Some(at)) = (
                    m.get("id").and_then(Value::as_str),
                    m.get("created_time")
                        .and_then(Value::as_str)
                        .and_then(graph_time),
                ) else {
                    continue;
                };
                if at < since {
                    return Ok(());
                }
                let from = m
                    .get("from")
                    .and_then(|f| f.get("id"))
                    .and_then(Value::as_str);
                let direction = if from == Some(self.own_id.as_str()) {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                let text = m.get("message").and_then(Value::as_str).unwrap_or("");
                let mut msg = Message::new(mid, customer_id, direction, at, text);
                msg.customer = Some(CustomerIdentity {
                    channel: self.kind.as_str().to_owned(),
                    handle: customer_id.to_owned(),
                    display_name: name.map(str::to_owned),
                    email: None,
                });
                if direction == Direction::Inbound {
                    msg.author = name.map(str::to_owned);
                }
                msg.reply_to = Some(customer_id.to_owned());
                msg.meta = json!({ "mid": mid, "timestamp_ms": at.timestamp_millis(), "page_id": self.own_id, "conversation_id": id });
                out.push(msg);
            }
            after = page
                .get("paging")
                .filter(|p| p.get("next").is_some())
                .and_then(|p| p.get("cursors"))
                .and_then(|c| c.get("after"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// The Graph API's times: `2026-11-30T21:00:00+0000`.
fn graph_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[async_trait]
impl Connector for MetaConnector {
    fn kind(&self) -> &str {
        self.kind.as_str()
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            poll: self.kind != Kind::WhatsApp && self.config.backfill,
            push: false,
            send: true,
            check_sent: false,
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        self.api
            .get(&self.own_id, &[("fields", "id")])
            .await
            .map(|_| ())
    }

    /// Backfill (Messenger, Instagram): messages of the conversations
    /// updated since the cursor; webhooks bring the rest. WhatsApp has no
    /// API to read messages: nothing to poll.
    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        if !self.capabilities().poll {
            return Ok(Batch::default());
        }
        let now = Utc::now();
        let since = cursors
            .get("conversations")
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&Utc) - BACKFILL_OVERLAP)
            .unwrap_or(now - FIRST_BACKFILL);
        let (messages, newest) = self.backfill(since).await?;
        let mut batch = Batch {
            messages,
            ..Batch::default()
        };
        if let Some(n) = newest {
            batch.cursors.insert("conversations".into(), n.to_rfc3339());
        }
        Ok(batch)
    }

    fn poll_is_read_only(&self) -> bool {
        true
    }

    fn accepts_webhooks(&self) -> bool {
        true
    }

    fn verify_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<WebhookVerdict, ConnectorError> {
        match request.method {
            "GET" => Ok(self.handshake(request)),
            "POST" => {
                verify_signature(
                    self.app_secret.expose_secret().as_bytes(),
                    request.body,
                    request.header("x-hub-signature-256"),
                )
                .map_err(ConnectorError::Auth)?;
                Ok(WebhookVerdict::Accept)
            }
            m => Err(ConnectorError::Auth(format!(
                "Meta does not send {m} requests"
            ))),
        }
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Batch, ConnectorError> {
        parse_delivery(self.kind, &self.own_id, body).map_err(|reason| ConnectorError::BadData {
            reason,
            raw: body.to_vec(),
        })
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        check_text(self.kind, &reply.text).map_err(ConnectorError::Refused)?;
        match self.kind {
            Kind::WhatsApp => self.send_whatsapp(reply, None).await,
            _ => self.send_messenger(reply).await,
        }
    }

    /// WhatsApp: a template configured under `[instances.meta.templates]`
    /// goes out as that approved template, with its parameters from the
    /// thread's variables; anything else as text.
    async fn send_templated(
        &self,
        reply: &OutgoingReply,
        template: &str,
        vars: &Vars,
    ) -> Result<SentReply, ConnectorError> {
        if self.kind == Kind::WhatsApp && self.config.templates.contains_key(template) {
            return self.send_whatsapp(reply, Some((template, vars))).await;
        }
        self.send_reply(reply).await
    }
}

/// Template variables by name.
pub type Vars = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let body = br#"{"object":"page","entry":[]}"#;
        let sig = signature(b"app-secret", body);
        assert!(sig.starts_with("sha256="));
        assert!(verify_signature(b"app-secret", body, Some(&sig)).is_ok());
        assert!(verify_signature(b"other", body, Some(&sig)).is_err());
        assert!(verify_signature(
            b"app-secret",
            br#"{"object":"page","entry":[1]}"#,
            Some(&sig)
        )
        .is_err());
        assert!(verify_signature(b"app-secret", body, None)
            .unwrap_err()
            .contains("no X-Hub"));
        assert!(verify_signature(b"app-secret", body, Some("sha1=abc")).is_err());
        assert!(verify_signature(b"app-secret", body, Some("sha256=zz")).is_err());
    }

    #[test]
    fn texts_are_checked_per_channel() {
        assert!(check_text(Kind::Messenger, &"é".repeat(2000)).is_ok());
        assert!(check_text(Kind::Instagram, &"x".repeat(2001))
            .unwrap_err()
            .contains("2001"));
        assert!(check_text(Kind::WhatsApp, &"x".repeat(4096)).is_ok());
        assert!(check_text(Kind::WhatsApp, " ").is_err());
    }

    #[test]
    fn graph_times_parse() {
        assert_eq!(
            graph_time("2026-11-30T21:00:00+0000").map(|t| t.to_rfc3339()),
            Some("2026-11-30T21:00:00+00:00".to_owned())
        );
        assert!(graph_time("yesterday").is_none());
    }
}
