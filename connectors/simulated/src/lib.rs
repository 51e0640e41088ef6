//! A simulated marketplace (`type = "simulated"`): the platform behind
//! `hourglass demo`, the daemon tests and the benchmarks. Every poll, new
//! buyer messages appear; replies are kept in memory or, with `api_url`,
//! POSTed to an HTTP mock platform whose record survives a crash of the
//! daemon.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::platform::{InstanceSettings, PlatformOf, RateLimit};
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, CustomerIdentity, Direction, Message,
    OutgoingReply, SentCheck, SentReply, WebhookRequest, WebhookVerdict,
};
use serde::{Deserialize, Serialize};

/// `type = "simulated"`.
pub static PLATFORM: PlatformOf<SimulatedSettings> = PlatformOf::new("simulated");

/// The keys of a simulated instance besides the shared ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSettings {
    /// `[instances.simulated]`; optional, every key has a default.
    #[serde(default)]
    pub simulated: SimulatedConfig,
}

impl InstanceSettings for SimulatedSettings {
    fn secrets(&self) -> Vec<(&'static str, &hourglass_connector::secret::SecretRef)> {
        match &self.simulated.webhook_secret {
            Some(r) => vec![("simulated.webhook_secret", r)],
            None => Vec::new(),
        }
    }

    fn channel(&self, _kind: &str) -> String {
        self.simulated.channel.clone()
    }

    /// The in-memory simulation has no limit; one with an `api_url` is
    /// given its mock's quota in config (`rate_limit`).
    fn send_quota(&self) -> Option<RateLimit> {
        None
    }

    fn build(&self, _kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        Ok(Arc::new(SimulatedConnector::new(
            instance,
            self.simulated.clone(),
        )))
    }
}

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

fn cursor_index(cursors: &Cursors) -> Result<usize, ConnectorError> {
    match cursors.get("") {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| ConnectorError::BadData {
            reason: format!("cursor {v:?} is not an index"),
            raw: v.as_bytes().to_vec(),
        }),
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
    pub webhook_secret: Option<hourglass_connector::secret::SecretRef>,
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
                    if hourglass_connector::constant_time_eq(token.as_bytes(), key) =>
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
        if hourglass_connector::constant_time_eq(
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

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_connector::testkit::conformance;

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
