//! Test support: a scriptable in-memory connector, a simulated marketplace
//! for `hourglass demo` and daemon tests, and the conformance suite every
//! real connector runs in its own tests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, CustomerIdentity, Direction, Message,
    OutgoingReply, SentCheck, SentReply, WebhookRequest, WebhookVerdict,
};

/// Which error a failing connector returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    Transient,
    Auth,
    RateLimited,
    Other,
}

impl FailMode {
    pub fn error(self) -> ConnectorError {
        match self {
            FailMode::Transient => ConnectorError::Transient("simulated outage".into()),
            FailMode::Auth => ConnectorError::Auth("simulated credentials refused".into()),
            FailMode::RateLimited => ConnectorError::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
            FailMode::Other => ConnectorError::Other("simulated failure".into()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned test platform is still usable: the data is plain.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The in-memory "platform" behind a [`ScriptedConnector`]: tests append
/// messages and queue errors, and read the replies that were sent.
#[derive(Debug, Default)]
pub struct ScriptedPlatform {
    messages: Mutex<Vec<Message>>,
    errors: Mutex<Vec<ConnectorError>>,
    sent: Mutex<Vec<OutgoingReply>>,
    /// Messages returned per poll at most (pagination).
    page_size: Mutex<Option<usize>>,
}

impl ScriptedPlatform {
    pub fn new() -> Arc<ScriptedPlatform> {
        Arc::new(ScriptedPlatform::default())
    }

    pub fn push(&self, message: Message) {
        lock(&self.messages).push(message);
    }

    /// The next poll (or send) fails with `error`, once.
    pub fn fail_next(&self, error: ConnectorError) {
        lock(&self.errors).push(error);
    }

    pub fn set_page_size(&self, size: usize) {
        *lock(&self.page_size) = Some(size);
    }

    pub fn sent(&self) -> Vec<OutgoingReply> {
        lock(&self.sent).clone()
    }

    fn take_error(&self) -> Option<ConnectorError> {
        let mut errors = lock(&self.errors);
        if errors.is_empty() {
            None
        } else {
            Some(errors.remove(0))
        }
    }
}

/// A connector over a [`ScriptedPlatform`]. Its cursor is the index of the
/// next message.
#[derive(Debug, Clone)]
pub struct ScriptedConnector {
    instance: String,
    channel: String,
    platform: Arc<ScriptedPlatform>,
}

impl ScriptedConnector {
    pub fn new(instance: &str, channel: &str, platform: Arc<ScriptedPlatform>) -> Self {
        ScriptedConnector {
            instance: instance.to_owned(),
            channel: channel.to_owned(),
            platform,
        }
    }
}

fn cursor_index(cursors: &Cursors) -> Result<usize, ConnectorError> {
    match cursors.get("") {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| ConnectorError::BadData {
            reason: format!("cursor {v:?} is not an index"),
            raw: v.as_bytes().to_vec(),
        }),
    }
}

#[async_trait]
impl Connector for ScriptedConnector {
    fn kind(&self) -> &str {
        "scripted"
    }

    fn channel(&self) -> &str {
        &self.channel
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
        Ok(())
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        if let Some(err) = self.platform.take_error() {
            return Err(err);
        }
        let start = cursor_index(cursors)?;
        let all = lock(&self.platform.messages);
        let page = lock(&self.platform.page_size).unwrap_or(usize::MAX);
        let end = all.len().min(start.saturating_add(page));
        let messages = all
            .get(start..end)
            .map(<[Message]>::to_vec)
            .unwrap_or_default();
        let mut batch = Batch {
            messages,
            more: end < all.len(),
            ..Batch::default()
        };
        batch.cursors.insert(String::new(), end.to_string());
        Ok(batch)
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        if let Some(err) = self.platform.take_error() {
            return Err(err);
        }
        lock(&self.platform.sent).push(reply.clone());
        Ok(SentReply {
            external_id: format!("scripted-{}", reply.outbox_id),
            sent_at: Utc::now(),
        })
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let sent = lock(&self.platform.sent);
        Ok(match sent.iter().find(|r| r.outbox_id == reply.outbox_id) {
            Some(r) => SentCheck::Sent(SentReply {
                external_id: format!("scripted-{}", r.outbox_id),
                sent_at: Utc::now(),
            }),
            None => SentCheck::NotSent,
        })
    }
}

/// Settings of a simulated marketplace (`type = "simulated"` in config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// The channel the simulated threads belong to (`amazon`, `ebay`, ...).
    #[serde(default = "default_sim_channel")]
    pub channel: String,
    /// New buyer messages that appear on every poll.
    #[serde(default = "default_per_poll")]
    pub per_poll: u32,
    /// Number of distinct buyers (threads) the messages spread over.
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// Every poll fails with this error kind (for tests and drills).
    #[serde(default)]
    pub fail: Option<FailMode>,
    /// Each poll takes this long (e.g. "2s"), to exercise shutdown.
    #[serde(default)]
    pub poll_delay_ms: u64,
    /// Base URL of an HTTP mock platform (tests, benchmarks, drills). When
    /// set, replies are POSTed to `{api_url}/messages` with the outbox id as
    /// `Idempotency-Key`, and `check_sent` asks `{api_url}/messages/{id}`:
    /// what was sent lives outside the daemon and survives its crash.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Webhook mode: the simulated platform also pushes messages to
    /// `/webhooks/{instance}`, signed with this secret (HMAC-SHA256 of the
    /// raw body, hex, in `X-Simulated-Signature: sha256=...`), and checks
    /// the subscription like Meta (`GET ?hub.mode=subscribe&
    /// hub.verify_token=SECRET&hub.challenge=...`).
    #[serde(default)]
    pub webhook_secret: Option<crate::secret::SecretRef>,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            channel: default_sim_channel(),
            per_poll: default_per_poll(),
            threads: default_threads(),
            fail: None,
            poll_delay_ms: 0,
            api_url: None,
            webhook_secret: None,
        }
    }
}

fn default_sim_channel() -> String {
    "simulated".into()
}
fn default_per_poll() -> u32 {
    1
}
fn default_threads() -> u32 {
    5
}

const SIM_BUYERS: &[(&str, &str)] = &[
    ("Ana Souza", "pt"),
    ("Ioana Popescu", "ro"),
    ("Jürgen Weiß", "de"),
    ("Chloé Martin", "fr"),
    ("Emily Clark", "en"),
    ("Marta Nowak", "pl"),
    ("Luca Rossi", "it"),
];

const SIM_TEXTS: &[&str] = &[
    "Olá, o meu pedido ainda não chegou. Podem verificar?",
    "Bună ziua, am primit produsul deteriorat. Ce pot face?",
    "Hallo, wann wird meine Bestellung versandt?",
    "Bonjour, puis-je modifier l'adresse de livraison ?",
    "Hi, the size is wrong, can I exchange it?",
    "Dzień dobry, czy mogę zwrócić ten produkt?",
    "Buongiorno, avete ricevuto il mio reso?",
];

/// A simulated marketplace: every poll, `per_poll` new buyer messages
/// appear, spread over `threads` buyers. Deterministic: message `i` is
/// always the same, so re-polling is idempotent.
#[derive(Debug)]
pub struct SimulatedConnector {
    instance: String,
    config: SimulatedConfig,
    sent: Mutex<Vec<OutgoingReply>>,
    /// Client for `api_url`, when set.
    http: Option<reqwest::Client>,
    /// The resolved `webhook_secret` (or why it could not be read).
    webhook_key: Option<Result<secrecy::SecretString, String>>,
}

impl SimulatedConnector {
    pub fn new(instance: &str, config: SimulatedConfig) -> Self {
        let http = config.api_url.as_ref().map(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default()
        });
        let webhook_key = config
            .webhook_secret
            .as_ref()
            .map(|r| r.resolve().map_err(|e| e.to_string()));
        SimulatedConnector {
            instance: instance.to_owned(),
            config,
            sent: Mutex::new(Vec::new()),
            http,
            webhook_key,
        }
    }

    /// Sends through the mock platform's HTTP API.
    async fn send_http(
        &self,
        http: &reqwest::Client,
        base: &str,
        reply: &OutgoingReply,
    ) -> Result<SentReply, ConnectorError> {
        let body = serde_json::json!({
            "idempotency_key": reply.outbox_id,
            "to": reply.to,
            "subject": reply.subject,
            "text": reply.text,
            "thread_key": reply.thread_key,
            "order_id": reply.order_id,
        });
        let resp = http
            .post(format!("{}/messages", base.trim_end_matches('/')))
            .header("Idempotency-Key", &reply.outbox_id)
            .json(&body)
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("mock platform: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return read_sent(resp).await;
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        Err(match status.as_u16() {
            429 => ConnectorError::RateLimited { retry_after },
            401 | 403 => ConnectorError::Auth(message),
            400 | 404 | 409 | 413 | 422 => ConnectorError::Refused(message),
            s if s >= 500 => ConnectorError::Transient(format!("HTTP {s}: {message}")),
            s => ConnectorError::Other(format!("HTTP {s}: {message}")),
        })
    }

    async fn check_http(
        &self,
        http: &reqwest::Client,
        base: &str,
        reply: &OutgoingReply,
    ) -> Result<SentCheck, ConnectorError> {
        let resp = http
            .get(format!(
                "{}/messages/{}",
                base.trim_end_matches('/'),
                reply.outbox_id
            ))
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("mock platform: {e}")))?;
        match resp.status().as_u16() {
            200 => Ok(SentCheck::Sent(read_sent(resp).await?)),
            404 => Ok(SentCheck::NotSent),
            429 => Err(ConnectorError::RateLimited { retry_after: None }),
            s => Err(ConnectorError::Transient(format!(
                "mock platform answered HTTP {s}"
            ))),
        }
    }

    fn message(&self, i: u64, now: DateTime<Utc>) -> Message {
        let threads = u64::from(self.config.threads.max(1));
        let buyer = (i % threads) as usize;
        let (name, lang) = SIM_BUYERS[buyer % SIM_BUYERS.len()];
        let text = SIM_TEXTS[buyer % SIM_TEXTS.len()];
        let handle = format!("buyer{buyer}@{}.sim", self.instance);
        let mut m = Message::new(
            format!("sim-{i}"),
            format!("buyer{buyer}"),
            Direction::Inbound,
            now,
            text,
        );
        m.author = Some(name.to_owned());
        m.customer = Some(CustomerIdentity {
            channel: self.config.channel.clone(),
            handle: handle.clone(),
            display_name: Some(name.to_owned()),
            email: None,
        });
        m.subject = Some(format!("Question from {name}"));
        m.order_id = Some(format!(
            "{:03}-{:07}-{:07}",
            100 + buyer,
            1_000_000 + buyer,
            i
        ));
        m.language = Some(lang.to_owned());
        m.reply_to = Some(handle);
        m
    }
}

#[async_trait]
impl Connector for SimulatedConnector {
    fn kind(&self) -> &str {
        "simulated"
    }

    fn channel(&self) -> &str {
        &self.config.channel
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            poll: true,
            push: false,
            send: true,
            check_sent: self.config.api_url.is_some(),
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        match self.config.fail {
            Some(mode) => Err(mode.error()),
            None => Ok(()),
        }
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        if self.config.poll_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.poll_delay_ms)).await;
        }
        if let Some(mode) = self.config.fail {
            return Err(mode.error());
        }
        let start = cursor_index(cursors)? as u64;
        let end = start + u64::from(self.config.per_poll);
        let now = Utc::now();
        let mut batch = Batch {
            messages: (start..end).map(|i| self.message(i, now)).collect(),
            ..Batch::default()
        };
        batch.cursors.insert(String::new(), end.to_string());
        Ok(batch)
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        if let Some(mode) = self.config.fail {
            return Err(mode.error());
        }
        if let (Some(http), Some(base)) = (&self.http, &self.config.api_url) {
            return self.send_http(http, base, reply).await;
        }
        lock(&self.sent).push(reply.clone());
        Ok(SentReply {
            external_id: format!("sim-sent-{}", reply.outbox_id),
            sent_at: Utc::now(),
        })
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        match (&self.http, &self.config.api_url) {
            (Some(http), Some(base)) => self.check_http(http, base, reply).await,
            // In memory, nothing survives a crash: the daemon cannot know.
            _ => Ok(SentCheck::CannotTell),
        }
    }

    fn accepts_webhooks(&self) -> bool {
        self.webhook_key.is_some()
    }

    fn verify_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<WebhookVerdict, ConnectorError> {
        use secrecy::ExposeSecret as _;
        let key = match &self.webhook_key {
            Some(Ok(key)) => key.expose_secret().as_bytes(),
            Some(Err(e)) => return Err(ConnectorError::Other(format!("webhook_secret: {e}"))),
            None => return Err(ConnectorError::Other("webhooks are not enabled".into())),
        };
        if request.method == "GET" {
            let token = request.query_param("hub.verify_token").unwrap_or("");
            return match (
                request.query_param("hub.mode"),
                request.query_param("hub.challenge"),
            ) {
                (Some("subscribe"), Some(challenge))
                    if crate::constant_time_eq(token.as_bytes(), key) =>
                {
                    Ok(WebhookVerdict::Respond {
                        status: 200,
                        content_type: "text/plain".into(),
                        body: challenge.as_bytes().to_vec(),
                    })
                }
                _ => Err(ConnectorError::Auth(
                    "the subscription handshake does not match".into(),
                )),
            };
        }
        let given = request
            .header("x-simulated-signature")
            .and_then(|v| v.strip_prefix("sha256="))
            .ok_or_else(|| ConnectorError::Auth("no X-Simulated-Signature header".into()))?;
        if crate::constant_time_eq(
            given.as_bytes(),
            simulated_signature(key, request.body).as_bytes(),
        ) {
            Ok(WebhookVerdict::Accept)
        } else {
            Err(ConnectorError::Auth(
                "the signature does not match the body".into(),
            ))
        }
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Batch, ConnectorError> {
        #[derive(Deserialize)]
        struct Push {
            messages: Vec<Pushed>,
        }
        #[derive(Deserialize)]
        struct Pushed {
            id: String,
            buyer: String,
            name: Option<String>,
            text: String,
            sent_at: DateTime<Utc>,
        }
        let push: Push = serde_json::from_slice(body).map_err(|e| ConnectorError::BadData {
            reason: format!("unreadable webhook body: {e}"),
            raw: body.to_vec(),
        })?;
        let messages = push
            .messages
            .into_iter()
            .map(|p| {
                let handle = format!("{}@{}.sim", p.buyer, self.instance);
                let mut m = Message::new(p.id, p.buyer, Direction::Inbound, p.sent_at, p.text);
                m.author = p.name.clone();
                m.customer = Some(CustomerIdentity {
                    channel: self.config.channel.clone(),
                    handle: handle.clone(),
                    display_name: p.name,
                    email: None,
                });
                m.reply_to = Some(handle);
                m
            })
            .collect();
        Ok(Batch {
            messages,
            ..Batch::default()
        })
    }
}

/// The signature the simulated platform puts on a webhook body: hex of
/// HMAC-SHA256(secret, body). Tests sign their pushes with it.
pub fn simulated_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Reads `{"id": ..., "sent_at": ...}` from the mock platform.
async fn read_sent(resp: reqwest::Response) -> Result<SentReply, ConnectorError> {
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| ConnectorError::Transient(format!("mock platform: unreadable answer: {e}")))?;
    let external_id = v
        .get("id")
        .and_then(|i| i.as_str())
        .ok_or_else(|| ConnectorError::Other("mock platform: answer without an id".into()))?
        .to_owned();
    let sent_at = v
        .get("sent_at")
        .and_then(|t| t.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    Ok(SentReply {
        external_id,
        sent_at,
    })
}

/// The conformance suite. Seed the platform behind `conn` with at least one
/// inbound message first; the suite polls until the connector says there is
/// no more and checks the contract of [`Connector::poll`]. Returns every
/// broken rule, so a test prints them all at once.
pub async fn conformance(conn: &dyn Connector) -> Result<ConformanceReport, Vec<String>> {
    let mut problems = Vec::new();
    if conn.instance().is_empty() {
        problems.push("instance() is empty".to_owned());
    }
    if conn.kind().is_empty() {
        problems.push("kind() is empty".to_owned());
    }
    if let Err(e) = conn.health_check().await {
        problems.push(format!("health_check failed: {e}"));
    }
    if !conn.capabilities().poll {
        problems.push("capabilities().poll is false".to_owned());
        return Err(problems);
    }

    let mut cursors = Cursors::new();
    let mut seen = HashSet::new();
    let mut report = ConformanceReport::default();
    for round in 0..1000 {
        let batch = match conn.poll(&cursors).await {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("poll {round} failed: {e}"));
                break;
            }
        };
        for m in &batch.messages {
            check_message(m, &mut problems);
            if !seen.insert(m.external_id.clone()) {
                problems.push(format!(
                    "poll {round} returned {:?} again although its cursor was committed",
                    m.external_id
                ));
            }
        }
        report.messages += batch.messages.len();
        report.quarantined += batch.quarantined.len();
        report.polls += 1;
        let progressed = !batch.cursors.is_empty();
        cursors.extend(batch.cursors);
        if !batch.more {
            break;
        }
        if !progressed {
            problems.push(format!("poll {round} said more=true but moved no cursor"));
            break;
        }
    }
    if report.messages == 0 {
        problems.push("no message came back from a seeded platform".to_owned());
    }
    // A poll after everything was read returns nothing new.
    match conn.poll(&cursors).await {
        Ok(b) => {
            for m in &b.messages {
                if seen.contains(&m.external_id) {
                    problems.push(format!(
                        "a poll at the end returned {:?} again",
                        m.external_id
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("the final poll failed: {e}")),
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems)
    }
}

/// What the conformance suite saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConformanceReport {
    pub polls: usize,
    pub messages: usize,
    pub quarantined: usize,
}

fn check_message(m: &Message, problems: &mut Vec<String>) {
    let id = &m.external_id;
    if id.trim().is_empty() {
        problems.push("a message has an empty external_id".to_owned());
    }
    if m.thread_key.trim().is_empty() {
        problems.push(format!("{id:?} has an empty thread_key"));
    }
    if m.sent_at > Utc::now() + chrono::Duration::days(1) {
        problems.push(format!("{id:?} is dated in the future: {}", m.sent_at));
    }
    if m.direction == Direction::Inbound && m.customer.is_none() {
        problems.push(format!("inbound {id:?} has no customer identity"));
    }
    if let Some(c) = &m.customer {
        if c.handle.trim().is_empty() {
            problems.push(format!("{id:?} has a customer with an empty handle"));
        }
    }
    if let Some(order) = &m.order_id {
        if order.trim().is_empty() {
            problems.push(format!("{id:?} has an empty order id"));
        }
    }
    for a in &m.attachments {
        if let Some(data) = &a.data {
            if data.len() as u64 != a.size {
                problems.push(format!(
                    "{id:?} has an attachment whose size {} differs from its {} bytes",
                    a.size,
                    data.len()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(i: usize) -> Message {
        let mut m = Message::new(
            format!("m{i}"),
            "t1",
            Direction::Inbound,
            Utc::now(),
            "hello",
        );
        m.customer = Some(CustomerIdentity {
            channel: "test".into(),
            handle: "buyer".into(),
            display_name: None,
            email: None,
        });
        m
    }

    #[tokio::test]
    async fn scripted_connector_passes_conformance_with_pagination() {
        let platform = ScriptedPlatform::new();
        platform.set_page_size(2);
        for i in 0..5 {
            platform.push(inbound(i));
        }
        let conn = ScriptedConnector::new("t", "test", platform);
        let report = conformance(&conn).await.unwrap();
        assert_eq!(report.messages, 5);
        assert_eq!(report.polls, 3);
    }

    #[tokio::test]
    async fn conformance_catches_a_connector_that_repeats_itself() {
        struct Repeats(ScriptedConnector);
        #[async_trait]
        impl Connector for Repeats {
            fn kind(&self) -> &str {
                "repeats"
            }
            fn instance(&self) -> &str {
                "r"
            }
            fn capabilities(&self) -> Capabilities {
                self.0.capabilities()
            }
            async fn health_check(&self) -> Result<(), ConnectorError> {
                Ok(())
            }
            async fn poll(&self, _: &Cursors) -> Result<Batch, ConnectorError> {
                // Ignores the cursor, like an IMAP client that forgets that
                // `UID FETCH n:*` always returns the newest message.
                self.0.poll(&Cursors::new()).await
            }
            async fn send_reply(&self, r: &OutgoingReply) -> Result<SentReply, ConnectorError> {
                self.0.send_reply(r).await
            }
        }
        let platform = ScriptedPlatform::new();
        platform.push(inbound(1));
        let conn = Repeats(ScriptedConnector::new("r", "test", platform));
        let problems = conformance(&conn).await.unwrap_err();
        assert!(problems.iter().any(|p| p.contains("again")), "{problems:?}");
    }

    #[tokio::test]
    async fn simulated_connector_is_deterministic_and_conforms() {
        let conn = SimulatedConnector::new(
            "sim",
            SimulatedConfig {
                channel: "amazon".into(),
                per_poll: 3,
                threads: 2,
                ..SimulatedConfig::default()
            },
        );
        let a = conn.poll(&Cursors::new()).await.unwrap();
        let b = conn.poll(&Cursors::new()).await.unwrap();
        let ids = |b: &Batch| {
            b.messages
                .iter()
                .map(|m| m.external_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.messages[0].thread_key, a.messages[2].thread_key);
        assert!(conformance(&conn).await.is_ok());
    }

    #[tokio::test]
    async fn failing_simulation_returns_its_error_kind() {
        let conn = SimulatedConnector::new(
            "sim",
            SimulatedConfig {
                fail: Some(FailMode::Transient),
                ..SimulatedConfig::default()
            },
        );
        let err = conn.poll(&Cursors::new()).await.unwrap_err();
        assert_eq!(err.kind(), "transient");
    }
}
