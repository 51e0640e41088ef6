//! Alert sinks: e-mail (SMTP), webhooks (JSON, Slack, Teams) with an HMAC
//! signature, and Telegram. Secrets are resolved once when the sinks are
//! built and never appear in an error.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use hourglass_connector::secret::{ExposeSecret, SecretRef};
use hourglass_email::SmtpSender;
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::Sha256;

use super::config::{AlertsConfig, SinkConfig, SinkType, WebhookFormat};

/// The header carrying `sha256=HMAC-SHA256(secret, timestamp + "." + body)`.
pub const SIGNATURE_HEADER: &str = "X-Hourglass-Signature";
/// The header carrying the signing time (Unix seconds); it is part of the
/// signed material, so a receiver can refuse a replayed delivery.
pub const TIMESTAMP_HEADER: &str = "X-Hourglass-Timestamp";
/// The header carrying the delivery's idempotency key: the same on every
/// retry of one delivery (also after a crash), different between deliveries.
pub const DELIVERY_HEADER: &str = "X-Hourglass-Delivery";

const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// A sink ready to send.
pub enum Sink {
    Email {
        sender: SmtpSender,
        to: Vec<String>,
    },
    Webhook {
        url: SecretString,
        format: WebhookFormat,
        secret: Option<SecretString>,
        client: reqwest::Client,
    },
    Telegram {
        api_url: String,
        token: SecretString,
        chat_id: String,
        client: reqwest::Client,
    },
}

/// Why a delivery failed, and whether to try again.
#[derive(Debug, Clone)]
pub struct SendError {
    pub message: String,
    pub retry_after: Option<Duration>,
    pub permanent: bool,
}

impl SendError {
    fn transient(message: String) -> SendError {
        SendError {
            message,
            retry_after: None,
            permanent: false,
        }
    }
}

/// The sinks of a config, by name.
pub fn build(config: &AlertsConfig) -> Result<HashMap<String, Sink>, String> {
    let client = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .user_agent(concat!("hourglass/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("Cannot build the HTTP client: {e}"))?;
    config
        .sinks
        .iter()
        .map(|s| Ok((s.name.clone(), build_one(s, &client)?)))
        .collect()
}

fn resolve(r: &SecretRef, sink: &str) -> Result<SecretString, String> {
    r.resolve().map_err(|e| format!("sink {sink:?}: {e}"))
}

fn build_one(s: &SinkConfig, client: &reqwest::Client) -> Result<Sink, String> {
    let missing = |what: &str| format!("sink {:?} needs {what}", s.name);
    Ok(match s.kind {
        SinkType::Email => Sink::Email {
            sender: SmtpSender::new(s.smtp.clone().ok_or_else(|| missing("smtp"))?)
                .map_err(|e| format!("sink {:?}: {e}", s.name))?,
            to: s.to.clone(),
        },
        SinkType::Webhook => {
            let url = s.url.as_deref().ok_or_else(|| missing("url"))?;
            let url = match SecretRef::parse(url) {
                Ok(r) => resolve(&r, &s.name)?,
                Err(_) => SecretString::from(url.to_owned()),
            };
            Sink::Webhook {
                url,
                format: s.format,
                secret: s.secret.as_ref().map(|r| resolve(r, &s.name)).transpose()?,
                client: client.clone(),
            }
        }
        SinkType::Telegram => Sink::Telegram {
            api_url: s.api_url.trim_end_matches('/').to_owned(),
            token: resolve(
                s.bot_token.as_ref().ok_or_else(|| missing("bot_token"))?,
                &s.name,
            )?,
            chat_id: s.chat_id.clone().ok_or_else(|| missing("chat_id"))?,
            client: client.clone(),
        },
    })
}

/// An alert or digest, rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub title: String,
    pub text: String,
    pub html: String,
    /// The machine-readable form (the alert payload).
    pub json: Value,
}

/// HMAC-SHA256 of `body` with `key`, hex.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    hex::encode(mac_of(key, &[body]))
}

fn mac_of(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // Any key length is valid for HMAC, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The `X-Hourglass-Signature` value of a webhook delivery:
/// `sha256=` and the hex HMAC-SHA256 of `timestamp + "." + body`, as
/// Stripe and Slack sign theirs.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    format!(
        "sha256={}",
        hex::encode(mac_of(key, &[ts.as_bytes(), b".", body]))
    )
}

/// What a receiver does with a delivery (the demo's capture does this, and
/// README shows it in Python): the timestamp is recent (within
/// `tolerance_secs` of `now`, either way) and the signature matches, compared
/// in constant time.
pub fn verify_signature(
    key: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    let Ok(ts) = timestamp_header.trim().parse::<i64>() else {
        return false;
    };
    if now.abs_diff(ts) > tolerance_secs.unsigned_abs() {
        return false;
    }
    hourglass_connector::constant_time_eq(
        signature(key, ts, body).as_bytes(),
        signature_header.trim().as_bytes(),
    )
}

impl Sink {
    /// Sends `alert`. `delivery` is its idempotency key
    /// ([`DELIVERY_HEADER`] on webhooks): pass the same key on every retry
    /// of one delivery.
    pub async fn send(&self, alert: &Rendered, delivery: &str) -> Result<(), SendError> {
        match self {
            Sink::Email { sender, to } => {
                use lettre::message::{header::ContentType, MultiPart, SinglePart};
                let mut builder = lettre::Message::builder()
                    .from(sender.from().parse().map_err(|e| SendError {
                        message: format!("bad from address: {e}"),
                        retry_after: None,
                        permanent: true,
                    })?)
                    .subject(format!("[hourglass] {}", alert.title));
                for rcpt in to {
                    builder = builder.to(rcpt.parse().map_err(|e| SendError {
                        message: format!("bad recipient {rcpt:?}: {e}"),
                        retry_after: None,
                        permanent: true,
                    })?);
                }
                let message = builder
                    .multipart(
                        MultiPart::alternative()
                            .singlepart(
                                SinglePart::builder()
                                    .header(ContentType::TEXT_PLAIN)
                                    .body(alert.text.clone()),
                            )
                            .singlepart(
                                SinglePart::builder()
                                    .header(ContentType::TEXT_HTML)
                                    .body(alert.html.clone()),
                            ),
                    )
                    .map_err(|e| SendError {
                        message: format!("cannot build the e-mail: {e}"),
                        retry_after: None,
                        permanent: true,
                    })?;
                sender
                    .send(message)
                    .await
                    .map_err(|e| SendError::transient(e.to_string()))
            }
            Sink::Webhook {
                url,
                format,
                secret,
                client,
            } => {
                let body = match format {
                    WebhookFormat::Json => {
                        let mut v = alert.json.clone();
                        if let Value::Object(m) = &mut v {
                            m.insert("text".into(), Value::String(alert.text.clone()));
                        }
                        v
                    }
                    WebhookFormat::Slack => json!({ "text": alert.text }),
                    WebhookFormat::Teams => json!({
                        "@type": "MessageCard",
                        "@context": "https://schema.org/extensions",
                        "summary": alert.title,
                        "title": alert.title,
                        "text": alert.text.replace('\n', "\n\n"),
                    }),
                };
                let body =
                    serde_json::to_vec(&body).map_err(|e| SendError::transient(e.to_string()))?;
                let mut req = client
                    .post(url.expose_secret())
                    .header("content-type", "application/json")
                    .header(DELIVERY_HEADER, delivery);
                if let Some(key) = secret {
                    // Signed at each attempt: a retry carries a fresh time.
                    let now = chrono::Utc::now().timestamp();
                    req = req.header(TIMESTAMP_HEADER, now.to_string()).header(
                        SIGNATURE_HEADER,
                        signature(key.expose_secret().as_bytes(), now, &body),
                    );
                }
                let resp = req
                    .body(body)
                    .send()
                    .await
                    // The URL may carry a secret (Slack): never show it.
                    .map_err(|e| SendError::transient(format!("webhook: {}", e.without_url())))?;
                check_status(resp, "webhook").await
            }
            Sink::Telegram {
                api_url,
                token,
                chat_id,
                client,
            } => {
                let url = format!("{api_url}/bot{}/sendMessage", token.expose_secret());
                let mut body = json!({ "chat_id": chat_id, "text": alert.text });
                if let Some(markup) = take_button(&alert.json) {
                    body["reply_markup"] = markup;
                }
                let resp =
                    client.post(url).json(&body).send().await.map_err(|e| {
                        SendError::transient(format!("telegram: {}", e.without_url()))
                    })?;
                check_status(resp, "telegram").await
            }
        }
    }
}

/// The `callback_data` of the "Take this thread" button: `take:<thread id>`.
pub const TAKE_PREFIX: &str = "take:";

/// An inline keyboard with "Take this thread" for an alert about a thread
/// (a deadline, a breach or an error), answered by the Telegram sink's
/// update poller (see `telegram_take.rs`).
pub fn take_button(payload: &Value) -> Option<Value> {
    let kind = payload.get("kind").and_then(Value::as_str)?;
    let id = payload.get("thread_id").and_then(Value::as_i64)?;
    (matches!(kind, "deadline" | "breach" | "error") && id > 0).then(|| {
        json!({ "inline_keyboard": [[
            { "text": "Take this thread", "callback_data": format!("{TAKE_PREFIX}{id}") }
        ]] })
    })
}

async fn check_status(resp: reqwest::Response, what: &str) -> Result<(), SendError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let header_retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    // Telegram puts the wait in the body: {"parameters":{"retry_after":N}}.
    let body_retry = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["parameters"]["retry_after"].as_u64())
        .map(Duration::from_secs);
    let snippet: String = body.chars().take(200).collect();
    Err(SendError {
        message: format!("{what} answered {status}: {snippet}"),
        retry_after: header_retry.or(body_retry),
        // 4xx other than 408/429 will not get better by retrying.
        permanent: status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_timestamp_is_inside_the_signed_material() {
        let body = br#"{"kind":"deadline"}"#;
        let sig = signature(b"k", 1_700_000_000, body);
        // Exactly HMAC(key, "1700000000." + body).
        assert_eq!(
            sig,
            format!(
                "sha256={}",
                sign(b"k", br#"1700000000.{"kind":"deadline"}"#)
            )
        );
        let now = 1_700_000_100;
        assert!(verify_signature(b"k", "1700000000", &sig, body, now, 300));
        // Another time with the same signature: a replay dressed up as new.
        assert!(!verify_signature(b"k", "1700000050", &sig, body, now, 300));
        // The right pair, but too old.
        assert!(!verify_signature(
            b"k",
            "1700000000",
            &sig,
            body,
            now + 600,
            300
        ));
        assert!(!verify_signature(b"k", "1700000000", &sig, b"{}", now, 300));
        assert!(!verify_signature(
            b"other",
            "1700000000",
            &sig,
            body,
            now,
            300
        ));
        assert!(!verify_signature(b"k", "soon", &sig, body, now, 300));
    }
}
