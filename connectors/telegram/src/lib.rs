//! Telegram Bot API (`type = "telegram"`): a bot's private chats and the
//! seller's Telegram Business chats, read with `getUpdates` long polling
//! and answered with `sendMessage`.
//!
//! `getUpdates` is not read-only: asking from `offset` confirms every
//! update below it, and Telegram forgets confirmed updates. So the offset
//! asked for is always the *stored* cursor + 1 — never more than what the
//! daemon has committed — and [`Connector::poll_is_read_only`] stays
//! `false`, so the daemon never polls ahead of its commits.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod config;
mod normalize;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::platform::PlatformOf;
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::{
    constant_time_eq, Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply,
    SentReply,
};
use serde_json::json;

pub use client::{api_error, BotApi, Call};
pub use config::{Mode, TelegramConfig, TelegramSettings, PER_CHAT_QUOTA, SEND_QUOTA};
pub use normalize::{external_id, normalize, read_updates, thread_key, Updates, ALLOWED_UPDATES};

/// `type = "telegram"`.
pub static PLATFORM: PlatformOf<TelegramSettings> = PlatformOf::new("telegram");

/// `sendMessage` takes 1 to 4096 characters.
pub const MAX_TEXT: usize = 4096;

/// Updates per `getUpdates` call: the Bot API's maximum.
const PAGE: usize = 100;

/// A call that is not a long poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One bot.
#[derive(Debug)]
pub struct TelegramConnector {
    instance: String,
    config: TelegramConfig,
    api: BotApi,
    /// Webhook mode: the secret Telegram sends in
    /// `X-Telegram-Bot-Api-Secret-Token`.
    webhook_secret: Option<secrecy::SecretString>,
    /// An answer a long poll received, for the poll that follows from the
    /// same offset (saves a second call, and so a second of latency).
    prefetched: Mutex<Option<Prefetched>>,
}

/// A `getUpdates` answer: the offset asked for, the result, the raw bytes.
type Prefetched = (Option<i64>, serde_json::Value, Vec<u8>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded value is a plain cache; a panic elsewhere cannot break it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The offset to ask for: the stored cursor (the last stored update) + 1.
fn offset(cursors: &Cursors) -> Result<Option<i64>, ConnectorError> {
    match cursors.get("") {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(|id| Some(id + 1))
            .map_err(|_| ConnectorError::BadData {
                reason: format!("stored Telegram cursor {v:?} is not an update id"),
                raw: v.as_bytes().to_vec(),
            }),
    }
}

/// The business connection and chat of a thread key (`b:{conn}:{chat}` or
/// `{chat}`).
fn parse_thread_key(key: &str) -> (Option<&str>, &str) {
    match key
        .strip_prefix("b:")
        .and_then(|rest| rest.rsplit_once(':'))
    {
        Some((conn, chat)) => (Some(conn), chat),
        None => (None, key),
    }
}

/// Whether `sendMessage` takes `text` (1 to 4096 characters): the
/// reason when not. Run before sending, and meant for the check before
/// queueing.
pub fn check_text(text: &str) -> Result<(), String> {
    let length = telegram_length(text);
    if text.trim().is_empty() {
        return Err("Telegram cannot send an empty message".into());
    }
    if length > MAX_TEXT {
        return Err(format!(
            "the reply is {length} characters long and Telegram takes at most {MAX_TEXT} in one message; shorten it or send it in parts"
        ));
    }
    Ok(())
}

/// The most messages one reply is split into (`split_long`).
pub const MAX_PARTS: usize = 20;

/// `text` cut into pieces of at most `max` UTF-16 units (Telegram's
/// measure), each cut at the last paragraph break that fits, else the last
/// line break, else the last space, else inside a word. Pieces are
/// trimmed; none is empty. A text that fits is returned whole.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if telegram_length(rest) <= max {
            parts.push(rest.to_owned());
            break;
        }
        // The longest prefix that fits, in bytes.
        let mut units = 0;
        let mut fits = 0;
        for (i, c) in rest.char_indices() {
            units += c.len_utf16();
            if units > max {
                break;
            }
            fits = i + c.len_utf8();
        }
        let head = &rest[..fits];
        let cut = head
            .rfind("\n\n")
            .or_else(|| head.rfind('\n'))
            .or_else(|| head.rfind(char::is_whitespace))
            .filter(|&at| !head[..at].trim().is_empty())
            .unwrap_or(fits);
        let cut = if cut == 0 { fits.max(1) } else { cut };
        parts.push(rest[..cut].trim_end().to_owned());
        rest = rest[cut..].trim_start();
    }
    parts
}

/// Length as Telegram counts it for its limits (UTF-16 code units): never
/// less than the number of characters, so a text we accept is never
/// refused for its length.
pub fn telegram_length(text: &str) -> usize {
    text.encode_utf16().count()
}

impl TelegramConnector {
    /// Resolves the bot token; errors name the reference, never the value.
    pub fn new(instance: &str, config: TelegramConfig) -> Result<TelegramConnector, String> {
        let token = config
            .bot_token
            .resolve()
            .map_err(|e| format!("telegram.bot_token: {e}"))?;
        let api = BotApi::new(&config.api_url, &token)?;
        let webhook_secret = match &config.webhook_secret {
            Some(r) => Some(
                r.resolve()
                    .map_err(|e| format!("telegram.webhook_secret: {e}"))?,
            ),
            None => None,
        };
        Ok(TelegramConnector {
            instance: instance.to_owned(),
            config,
            api,
            webhook_secret,
            prefetched: Mutex::new(None),
        })
    }

    /// Webhook mode: whether a pushed request carries the configured
    /// secret in `X-Telegram-Bot-Api-Secret-Token` (pass the header's
    /// value). Compared in constant time. A forged or unsigned request is
    /// `Auth`; so is every request when no `webhook_secret` is configured,
    /// since then anyone could post updates.
    pub fn verify_secret_token(&self, header: Option<&str>) -> Result<(), ConnectorError> {
        let Some(secret) = &self.webhook_secret else {
            return Err(ConnectorError::Auth(
                "webhook deliveries need telegram.webhook_secret".into(),
            ));
        };
        match header {
            Some(h) if constant_time_eq(h.as_bytes(), secret.expose_secret().as_bytes()) => Ok(()),
            Some(_) => Err(ConnectorError::Auth(
                "wrong X-Telegram-Bot-Api-Secret-Token".into(),
            )),
            None => Err(ConnectorError::Auth(
                "no X-Telegram-Bot-Api-Secret-Token header".into(),
            )),
        }
    }

    /// Webhook mode: one delivered Update (the body Telegram POSTs) as a
    /// batch, with the same `external_id`s polling would give. No cursor:
    /// pushes never move the poll offset.
    pub fn parse_update_body(&self, body: &[u8]) -> Result<Batch, ConnectorError> {
        let bad = |reason: String| ConnectorError::BadData {
            reason,
            raw: body.to_vec(),
        };
        let update: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| bad(format!("a webhook delivery is not JSON: {e}")))?;
        let message = normalize(&update).map_err(bad)?;
        Ok(Batch {
            messages: message.into_iter().collect(),
            ..Batch::default()
        })
    }

    async fn get_updates(
        &self,
        offset: Option<i64>,
        wait_secs: u64,
    ) -> Result<(serde_json::Value, Vec<u8>), ConnectorError> {
        let mut params = json!({
            "limit": PAGE,
            "timeout": wait_secs,
            "allowed_updates": ALLOWED_UPDATES,
        });
        if let Some(o) = offset {
            params["offset"] = json!(o);
        }
        self.api
            .call(
                Call::Read,
                "getUpdates",
                &params,
                Duration::from_secs(wait_secs) + CALL_TIMEOUT,
            )
            .await
    }
}

#[async_trait]
impl Connector for TelegramConnector {
    fn kind(&self) -> &str {
        "telegram"
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        // In webhook mode updates come to /webhooks/{instance}; getUpdates
        // would be refused (409) while the webhook is set.
        let polling = self.config.mode == Mode::Poll;
        Capabilities {
            poll: polling,
            push: polling,
            send: true,
            check_sent: false,
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        self.api
            .call(Call::Read, "getMe", &json!({}), CALL_TIMEOUT)
            .await?;
        let (info, _) = self
            .api
            .call(Call::Read, "getWebhookInfo", &json!({}), CALL_TIMEOUT)
            .await?;
        let url = info.get("url").and_then(|u| u.as_str()).unwrap_or("");
        if self.config.mode == Mode::Poll && !url.is_empty() {
            return Err(ConnectorError::Auth(
                "a webhook is set for this bot, so getUpdates is refused; delete it (deleteWebhook) or use mode = \"webhook\"".into(),
            ));
        }
        Ok(())
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        if self.config.mode == Mode::Webhook {
            return Ok(Batch::default());
        }
        let offset = offset(cursors)?;
        let cached = {
            let mut p = lock(&self.prefetched);
            match p.take() {
                Some((o, result, raw)) if o == offset => Some((result, raw)),
                _ => None,
            }
        };
        let (result, raw) = match cached {
            Some(r) => r,
            None => self.get_updates(offset, 0).await?,
        };
        let updates = read_updates(&result).map_err(|reason| ConnectorError::BadData {
            reason,
            raw: raw.clone(),
        })?;
        let mut batch = Batch {
            more: updates.count >= PAGE,
            messages: updates.messages,
            quarantined: updates.quarantined,
            ..Batch::default()
        };
        if let Some(last) = updates.last_update_id {
            // Committed with these messages; the next getUpdates from
            // last + 1 is what confirms them to Telegram.
            batch.cursors.insert(String::new(), last.to_string());
        }
        Ok(batch)
    }

    fn poll_is_read_only(&self) -> bool {
        false
    }

    fn accepts_webhooks(&self) -> bool {
        self.config.mode == Mode::Webhook
    }

    fn verify_webhook(
        &self,
        request: &hourglass_connector::WebhookRequest<'_>,
    ) -> Result<hourglass_connector::WebhookVerdict, ConnectorError> {
        if request.method != "POST" {
            return Err(ConnectorError::Auth(
                "Telegram delivers updates by POST only".into(),
            ));
        }
        self.verify_secret_token(request.header("x-telegram-bot-api-secret-token"))?;
        Ok(hourglass_connector::WebhookVerdict::Accept)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Batch, ConnectorError> {
        self.parse_update_body(body)
    }

    async fn wait_for_change(
        &self,
        cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        if self.config.mode == Mode::Webhook {
            tokio::time::sleep(timeout).await;
            return Ok(false);
        }
        let offset = offset(cursors)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let secs = left.as_secs().min(self.config.long_poll_secs);
            if secs == 0 {
                tokio::time::sleep(left).await;
                return Ok(false);
            }
            let (result, raw) = self.get_updates(offset, secs).await?;
            if result.as_array().is_some_and(|a| a.is_empty()) {
                continue;
            }
            *lock(&self.prefetched) = Some((offset, result, raw));
            return Ok(true);
        }
    }

    async fn webhook_status(
        &self,
    ) -> Result<Option<hourglass_connector::WebhookStatus>, ConnectorError> {
        let (info, raw) = self
            .api
            .call(Call::Read, "getWebhookInfo", &json!({}), CALL_TIMEOUT)
            .await?;
        let Some(url) = info.get("url").and_then(|u| u.as_str()) else {
            return Err(ConnectorError::BadData {
                reason: "getWebhookInfo: no url in the WebhookInfo".into(),
                raw,
            });
        };
        Ok(Some(hourglass_connector::WebhookStatus {
            url: url.to_owned(),
            pending_updates: info.get("pending_update_count").and_then(|v| v.as_u64()),
            last_error: info
                .get("last_error_message")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            last_error_at: info
                .get("last_error_date")
                .and_then(|v| v.as_i64())
                .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
        }))
    }

    /// `setWebhook` with the secret Telegram is to send back, and only the
    /// update types hourglass reads.
    async fn register_webhook(&self, url: &str) -> Result<(), ConnectorError> {
        if self.config.mode != Mode::Webhook {
            return Err(ConnectorError::Other(
                "the instance polls (mode = \"poll\"); a webhook would make Telegram refuse getUpdates. Set mode = \"webhook\" and webhook_secret first".into(),
            ));
        }
        let Some(secret) = &self.webhook_secret else {
            return Err(ConnectorError::Other(
                "webhook mode needs telegram.webhook_secret: deliveries without it are refused"
                    .into(),
            ));
        };
        let params = json!({
            "url": url,
            "secret_token": secret.expose_secret(),
            "allowed_updates": ALLOWED_UPDATES,
        });
        self.api
            .call(Call::Read, "setWebhook", &params, CALL_TIMEOUT)
            .await?;
        Ok(())
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        check_text(&reply.text).map_err(ConnectorError::Refused)?;
        let (business, chat) = parse_thread_key(&reply.thread_key);
        let chat_id = chat
            .parse::<i64>()
            .or_else(|_| reply.to.parse::<i64>())
            .map_err(|_| {
                ConnectorError::Refused(format!(
                    "thread {:?} is not a Telegram chat id",
                    reply.thread_key
                ))
            })?;
        let mut params = json!({ "chat_id": chat_id, "text": reply.text });
        if let Some(message_id) = reply
            .in_reply_to_meta
            .get("message_id")
            .and_then(|v| v.as_i64())
        {
            params["reply_parameters"] = json!({
                "message_id": message_id,
                // The customer may have deleted their message meanwhile.
                "allow_sending_without_reply": true,
            });
        }
        if let Some(conn) = business {
            params["business_connection_id"] = json!(conn);
        }
        let (sent, raw) = self
            .api
            .call(Call::Send, "sendMessage", &params, CALL_TIMEOUT)
            .await?;
        let message_id = sent.get("message_id").and_then(|v| v.as_i64());
        let date = sent.get("date").and_then(|v| v.as_i64());
        let (Some(message_id), Some(date)) = (message_id, date) else {
            return Err(ConnectorError::BadData {
                reason: "sendMessage: the sent message has no message_id or date".into(),
                raw,
            });
        };
        Ok(SentReply {
            external_id: external_id(business, chat_id, message_id),
            sent_at: DateTime::<Utc>::from_timestamp(date, 0).unwrap_or_else(Utc::now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_keys_name_the_business_connection() {
        assert_eq!(parse_thread_key("42"), (None, "42"));
        assert_eq!(parse_thread_key("b:AbC:d-1:42"), (Some("AbC:d-1"), "42"));
        assert_eq!(thread_key(Some("x"), 5), "b:x:5");
    }

    #[test]
    fn offsets_follow_the_stored_cursor() {
        let mut c = Cursors::new();
        assert_eq!(offset(&c).unwrap(), None);
        c.insert(String::new(), "41".into());
        assert_eq!(offset(&c).unwrap(), Some(42));
        c.insert(String::new(), "x".into());
        assert!(matches!(offset(&c), Err(ConnectorError::BadData { .. })));
    }

    #[test]
    fn texts_are_checked_before_sending() {
        assert!(check_text("hi").is_ok());
        assert!(check_text(&"é".repeat(4096)).is_ok());
        assert!(check_text(&"x".repeat(4097)).unwrap_err().contains("4097"));
        assert!(check_text("  ").is_err());
    }

    #[test]
    fn long_texts_split_at_the_best_boundary() {
        assert_eq!(split_text("short", 10), vec!["short"]);
        assert_eq!(
            split_text("one two\n\nthree four", 12),
            vec!["one two", "three four"]
        );
        assert_eq!(
            split_text("aaa bbb\nccc ddd eee", 12),
            vec!["aaa bbb", "ccc ddd eee"]
        );
        assert_eq!(split_text("aaa bbb ccc", 8), vec!["aaa bbb", "ccc"]);
        assert_eq!(split_text("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        // Counted in UTF-16 units: an emoji is two, and never cut in half.
        assert_eq!(split_text("😀😀😀", 4), vec!["😀😀", "😀"]);
        let long = format!("{}\n\n{}", "a ".repeat(3000), "b ".repeat(3000));
        let parts = split_text(&long, MAX_TEXT);
        assert!(parts.iter().all(|p| telegram_length(p) <= MAX_TEXT));
        assert_eq!(
            parts.concat().replace([' ', '\n'], ""),
            long.replace([' ', '\n'], "")
        );
    }

    #[test]
    fn lengths_count_like_telegram() {
        assert_eq!(telegram_length("abc"), 3);
        assert_eq!(telegram_length("😀"), 2);
    }
}
