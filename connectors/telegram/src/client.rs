//! The Bot API over HTTP: `POST {api_url}/bot{token}/{method}` with a JSON
//! body, answered `{"ok": true, "result": ...}` or `{"ok": false,
//! "error_code": ..., "description": ..., "parameters": {...}}`.
//!
//! The token is part of every URL, so no URL ever reaches an error
//! message or a log line.

use std::time::Duration;

use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::ConnectorError;
use serde::Deserialize;

/// What a call is for: the same answer means different things when
/// reading updates and when sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Read,
    Send,
}

/// The error envelope of a Bot API answer.
#[derive(Debug, Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// A Bot API client for one bot.
#[derive(Clone)]
pub struct BotApi {
    http: reqwest::Client,
    /// `{api_url}/bot{token}`: a secret, never printed.
    base: String,
}

impl std::fmt::Debug for BotApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotApi { .. }")
    }
}

impl BotApi {
    pub fn new(api_url: &str, token: &secrecy::SecretString) -> Result<BotApi, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))?;
        Ok(BotApi {
            http,
            base: format!(
                "{}/bot{}",
                api_url.trim_end_matches('/'),
                token.expose_secret()
            ),
        })
    }

    /// Calls `method` with `params`; `timeout` bounds the whole exchange
    /// (a long poll's own timeout plus slack). Returns the raw answer too,
    /// for the quarantine.
    pub async fn call(
        &self,
        call: Call,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(serde_json::Value, Vec<u8>), ConnectorError> {
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .json(params)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("{method}: {}", e.without_url())))?;
        let status = resp.status().as_u16();
        let raw = resp
            .bytes()
            .await
            .map_err(|e| ConnectorError::Transient(format!("{method}: {}", e.without_url())))?
            .to_vec();
        let envelope: Envelope = match serde_json::from_slice(&raw) {
            Ok(e) => e,
            // A proxy's HTML error page in front of a failing Bot API.
            Err(_) if status >= 500 => {
                return Err(ConnectorError::Transient(format!(
                    "{method}: HTTP {status} from the Bot API"
                )))
            }
            Err(e) => {
                return Err(ConnectorError::BadData {
                    reason: format!(
                        "{method}: the Bot API answer is not JSON ({e}), HTTP {status}"
                    ),
                    raw,
                })
            }
        };
        if envelope.ok {
            return match envelope.result {
                Some(result) => Ok((result, raw)),
                None => Err(ConnectorError::BadData {
                    reason: format!("{method}: the Bot API answer has no result"),
                    raw,
                }),
            };
        }
        let code = envelope.error_code.unwrap_or(i64::from(status));
        let description = envelope.description.unwrap_or_default();
        let retry_after = envelope.parameters.and_then(|p| p.retry_after);
        Err(api_error(call, method, code, &description, retry_after))
    }
}

/// The one place where the Bot API's errors become [`ConnectorError`]s.
pub fn api_error(
    call: Call,
    method: &str,
    code: i64,
    description: &str,
    retry_after: Option<u64>,
) -> ConnectorError {
    match (code, call) {
        (429, _) => ConnectorError::RateLimited {
            retry_after: retry_after.map(Duration::from_secs),
        },
        (401, _) => ConnectorError::Auth(format!(
            "the bot token was refused ({method}: {code} {description}); get the current one from @BotFather"
        )),
        (404, _) => ConnectorError::Auth(format!(
            "{method}: {code} {description}: the bot token is malformed or api_url is not a Bot API"
        )),
        (409, _) => ConnectorError::Auth(conflict(description)),
        (403, Call::Send) if description.contains("blocked by the user") => {
            ConnectorError::Refused(format!(
                "the customer has blocked the bot (Telegram: {description}); no reply can reach them until they unblock it"
            ))
        }
        (400 | 403, Call::Send) => {
            ConnectorError::Refused(format!("Telegram refused the message: {code} {description}"))
        }
        (403, Call::Read) => ConnectorError::Auth(format!("{method}: {code} {description}")),
        (c, _) if c >= 500 => ConnectorError::Transient(format!("{method}: {c} {description}")),
        (c, _) => ConnectorError::Other(format!("{method}: {c} {description}")),
    }
}

/// A 409 on `getUpdates` has two causes that need different fixes.
fn conflict(description: &str) -> String {
    if description.contains("webhook") {
        format!(
            "a webhook is set for this bot, so getUpdates is refused (Telegram: {description}); delete it (deleteWebhook) or use mode = \"webhook\""
        )
    } else if description.contains("other getUpdates") {
        format!(
            "another program is polling this bot with getUpdates (Telegram: {description}); only one poller may use a bot token: stop the other one"
        )
    } else {
        format!("Telegram reports a conflict: {description}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_for_the_daemon() {
        let e = api_error(Call::Read, "getUpdates", 409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first", None);
        assert!(
            matches!(&e, ConnectorError::Auth(m) if m.contains("a webhook is set")),
            "{e}"
        );
        let e = api_error(Call::Read, "getUpdates", 409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running", None);
        assert!(
            matches!(&e, ConnectorError::Auth(m) if m.contains("another program")),
            "{e}"
        );
        let e = api_error(
            Call::Send,
            "sendMessage",
            429,
            "Too Many Requests: retry after 7",
            Some(7),
        );
        assert!(
            matches!(e, ConnectorError::RateLimited { retry_after: Some(d) } if d.as_secs() == 7)
        );
        let e = api_error(
            Call::Send,
            "sendMessage",
            403,
            "Forbidden: bot was blocked by the user",
            None,
        );
        assert!(
            matches!(&e, ConnectorError::Refused(m) if m.contains("blocked the bot")),
            "{e}"
        );
        let e = api_error(
            Call::Send,
            "sendMessage",
            400,
            "Bad Request: message text is empty",
            None,
        );
        assert!(matches!(e, ConnectorError::Refused(_)));
        let e = api_error(Call::Read, "getUpdates", 401, "Unauthorized", None);
        assert!(matches!(e, ConnectorError::Auth(_)));
        let e = api_error(Call::Read, "getUpdates", 502, "Bad Gateway", None);
        assert!(e.is_retryable());
    }
}
