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
    OutgoingReply, SentCheck, SentReply,
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
}

impl SimulatedConnector {
    pub fn new(instance: &str, config: SimulatedConfig) -> Self {
        let http = config.api_url.as_ref().map(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default()
        });
        SimulatedConnector {
            instance: instance.to_owned(),
            config,
            sent: Mutex::new(Vec::new()),
            http,
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
