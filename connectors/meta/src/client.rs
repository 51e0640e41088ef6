//! HTTP to the Graph API: `GET`/`POST {api_url}/{path}` with the access
//! token as a bearer token, answers JSON or `{"error": {"message", "type",
//! "code", "error_subcode", "fbtrace_id"}}`, and the mapping of Meta's
//! error codes and usage headers to [`ConnectorError`] and pacing.
//!
//! The token travels in a header, never in a URL, so no error message
//! or log line can carry it.

use std::time::Duration;

use hourglass_connector::limit::Limiter;
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::{ConnectorError, RateLimit};
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::Value;
use tokio::time::Instant;

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Conversations API: 2 calls per second per Page (DESIGN §9). Calls
/// every 0.55 s, one at a time: network jitter can never put three in
/// one second.
pub const READ_QUOTA: RateLimit = RateLimit {
    per_second: 1.8,
    burst: 1,
};

/// Usage at which hourglass slows down before Meta throttles it.
const SLOW_DOWN_PERCENT: f64 = 90.0;
/// How long calls wait once usage passes [`SLOW_DOWN_PERCENT`].
const SLOW_DOWN: Duration = Duration::from_secs(1);

/// What a call is for: the same error means different things when
/// reading and when sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Read,
    Send,
}

/// Meta's throttling codes: application (4), user (17), Pages API (32),
/// a call rate (613), Instagram (80007 and kin), WhatsApp throughput
/// (130429) and pair rate (131056).
pub const THROTTLING_CODES: &[i64] = &[4, 17, 32, 613, 80007, 130429, 131056];

/// A Graph API client for one Page, Instagram account or number.
pub struct GraphApi {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    /// Reads (backfill) at the conversations API's 2 calls/s; paused by
    /// usage headers above 90 % and by throttling errors.
    reads: Limiter,
    /// Sends are paced by the daemon's outbox; this only holds the pause
    /// that usage headers ask for.
    sends: Limiter,
}

impl std::fmt::Debug for GraphApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphApi")
            .field("base", &self.base)
            .finish()
    }
}

impl GraphApi {
    pub fn new(api_url: &str, token: SecretString) -> Result<GraphApi, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))?;
        Ok(GraphApi {
            http,
            base: api_url.trim_end_matches('/').to_owned(),
            token,
            reads: Limiter::new(Some(READ_QUOTA)),
            sends: Limiter::new(None),
        })
    }

    /// `GET {path}?{query}`, paced at the read quota.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ConnectorError> {
        self.reads.acquire().await;
        let req = self.http.get(format!("{}/{path}", self.base)).query(query);
        self.send(Call::Read, path, req).await
    }

    /// `POST {path}` with a JSON body (a send).
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ConnectorError> {
        self.sends.acquire().await;
        let req = self.http.post(format!("{}/{path}", self.base)).json(body);
        self.send(Call::Send, path, req).await
    }

    async fn send(
        &self,
        call: Call,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, ConnectorError> {
        let resp = req
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("{what}: {}", e.without_url())))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp
            .bytes()
            .await
            .map_err(|e| ConnectorError::Transient(format!("{what}: {}", e.without_url())))?;
        let usage = Usage::of(&headers);
        if let Some(pause) = usage.pause() {
            // Both directions count against the same app and Page.
            let until = Instant::now() + pause;
            self.reads.pause_until(until);
            self.sends.pause_until(until);
        }
        if status == 429 {
            // Meta throttles with 400/403 and a code, but a gateway in front
            // of it answers 429 in its own words: slow down all the same,
            // never give up on the reply (found by the chaos run).
            let d = retry_after(&headers).or(usage.regain);
            self.reads
                .pause_until(Instant::now() + d.unwrap_or(Duration::from_secs(60)));
            return Err(ConnectorError::RateLimited { retry_after: d });
        }
        let body: Value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(_) if status >= 500 => {
                return Err(ConnectorError::Transient(format!(
                    "{what}: HTTP {status} from the Graph API"
                )))
            }
            Err(e) => {
                return Err(ConnectorError::BadData {
                    reason: format!(
                        "{what}: the Graph API answer is not JSON ({e}), HTTP {status}"
                    ),
                    raw: raw.to_vec(),
                })
            }
        };
        if let Some(err) = body
            .get("error")
            .filter(|_| status >= 400 || !(200..300).contains(&status))
        {
            let code = err
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(i64::from(status));
            let subcode = err.get("error_subcode").and_then(Value::as_i64);
            let message = err
                .get("error_user_msg")
                .or_else(|| err.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let retry_after = retry_after(&headers).or(usage.regain);
            let e = graph_error(call, what, status, code, subcode, message, retry_after);
            if let ConnectorError::RateLimited { retry_after } = &e {
                // Reads wait too: the same Page is throttled.
                let d = retry_after.unwrap_or(Duration::from_secs(60));
                self.reads.pause_until(Instant::now() + d);
            }
            return Err(e);
        }
        if status >= 500 {
            return Err(ConnectorError::Transient(format!("{what}: HTTP {status}")));
        }
        if status >= 400 {
            return Err(ConnectorError::Other(format!("{what}: HTTP {status}")));
        }
        Ok(body)
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What `X-App-Usage`, `X-Page-Usage` and `X-Business-Use-Case-Usage`
/// say: the highest percentage of any quota used, and how long until
/// access returns when Meta says so.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub percent: f64,
    pub regain: Option<Duration>,
}

impl Usage {
    pub fn of(headers: &HeaderMap) -> Usage {
        let mut u = Usage::default();
        for name in ["x-app-usage", "x-page-usage", "x-ad-account-usage"] {
            if let Some(v) = header_json(headers, name) {
                u.add(&v);
            }
        }
        if let Some(Value::Object(by_business)) = header_json(headers, "x-business-use-case-usage")
        {
            for entries in by_business.values() {
                for e in entries.as_array().into_iter().flatten() {
                    u.add(e);
                    let minutes = e
                        .get("estimated_time_to_regain_access")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0);
                    if minutes > 0.0 {
                        let d = Duration::from_secs_f64(minutes * 60.0);
                        u.regain = Some(u.regain.map_or(d, |r| r.max(d)));
                    }
                }
            }
        }
        u
    }

    fn add(&mut self, v: &Value) {
        for key in [
            "call_count",
            "total_cputime",
            "total_time",
            "acc_id_util_pct",
        ] {
            if let Some(p) = v.get(key).and_then(Value::as_f64) {
                self.percent = self.percent.max(p);
            }
        }
    }

    /// How long to hold calls: until access returns, or a short pause
    /// per call once usage passes 90 %.
    pub fn pause(&self) -> Option<Duration> {
        match self.regain {
            Some(d) => Some(d),
            None if self.percent >= SLOW_DOWN_PERCENT => Some(SLOW_DOWN),
            None => None,
        }
    }
}

fn header_json(headers: &HeaderMap, name: &str) -> Option<Value> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
}

/// The one place where the Graph API's errors become
/// [`ConnectorError`]s.
pub fn graph_error(
    call: Call,
    what: &str,
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: &str,
    retry_after: Option<Duration>,
) -> ConnectorError {
    let sub = subcode.map(|s| format!("/{s}")).unwrap_or_default();
    match code {
        190 | 102 => ConnectorError::Auth(format!(
            "Meta refused the access token (code {code}{sub}: {message}); generate a new one and point access_token at it"
        )),
        c if THROTTLING_CODES.contains(&c) => ConnectorError::RateLimited { retry_after },
        // Permissions missing on the token.
        10 | 200..=299 if call == Call::Read => ConnectorError::Auth(format!(
            "{what}: the access token lacks a permission (code {code}{sub}: {message})"
        )),
        10 if subcode == Some(2_018_278) => ConnectorError::Refused(format!(
            "Meta refused the reply: it falls outside the allowed window (code 10/2018278: {message})"
        )),
        551 => ConnectorError::Refused(format!(
            "the customer cannot be reached on this channel now (Meta code 551: {message})"
        )),
        131_047 => ConnectorError::Refused(format!(
            "more than 24 h have passed since the customer last wrote; WhatsApp takes only a template now (code 131047: {message})"
        )),
        1 | 2 => ConnectorError::Transient(format!("{what}: Meta code {code}: {message}")),
        _ if status >= 500 => {
            ConnectorError::Transient(format!("{what}: HTTP {status}, Meta code {code}: {message}"))
        }
        _ if call == Call::Send => ConnectorError::Refused(format!(
            "Meta refused the reply (code {code}{sub}: {message})"
        )),
        _ => ConnectorError::Other(format!("{what}: Meta code {code}{sub}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn errors_are_classified_for_the_daemon() {
        let e = graph_error(
            Call::Send,
            "messages",
            400,
            190,
            Some(463),
            "Session has expired",
            None,
        );
        assert!(
            matches!(&e, ConnectorError::Auth(m) if m.contains("access token") && m.contains("190/463")),
            "{e}"
        );
        for code in THROTTLING_CODES {
            let e = graph_error(
                Call::Send,
                "messages",
                400,
                *code,
                None,
                "slow down",
                Some(Duration::from_secs(3)),
            );
            assert!(
                matches!(e, ConnectorError::RateLimited { retry_after: Some(d) } if d.as_secs() == 3),
                "{code}"
            );
        }
        let e = graph_error(
            Call::Send,
            "messages",
            400,
            10,
            Some(2_018_278),
            "outside window",
            None,
        );
        assert!(
            matches!(&e, ConnectorError::Refused(m) if m.contains("window")),
            "{e}"
        );
        let e = graph_error(
            Call::Send,
            "messages",
            400,
            551,
            None,
            "This person isn't available right now.",
            None,
        );
        assert!(
            matches!(&e, ConnectorError::Refused(m) if m.contains("cannot be reached")),
            "{e}"
        );
        let e = graph_error(
            Call::Read,
            "conversations",
            403,
            200,
            None,
            "Requires pages_messaging",
            None,
        );
        assert!(matches!(e, ConnectorError::Auth(_)));
        let e = graph_error(
            Call::Read,
            "conversations",
            500,
            1,
            None,
            "An unknown error occurred",
            None,
        );
        assert!(e.is_retryable());
        let e = graph_error(
            Call::Send,
            "messages",
            400,
            100,
            None,
            "Invalid parameter",
            None,
        );
        assert!(matches!(e, ConnectorError::Refused(_)));
    }

    #[test]
    fn usage_headers_slow_down_above_ninety_percent() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-app-usage",
            HeaderValue::from_static(r#"{"call_count":28,"total_time":25,"total_cputime":25}"#),
        );
        assert_eq!(Usage::of(&h).pause(), None);
        h.insert(
            "x-app-usage",
            HeaderValue::from_static(r#"{"call_count":91,"total_time":25,"total_cputime":25}"#),
        );
        assert_eq!(Usage::of(&h).pause(), Some(SLOW_DOWN));
        let mut h = HeaderMap::new();
        h.insert(
            "x-business-use-case-usage",
            HeaderValue::from_static(r#"{"104857600000001":[{"type":"messenger","call_count":100,"total_cputime":20,"total_time":20,"estimated_time_to_regain_access":2}]}"#),
        );
        let u = Usage::of(&h);
        assert_eq!(u.percent, 100.0);
        assert_eq!(u.pause(), Some(Duration::from_secs(120)));
        h.insert("x-app-usage", HeaderValue::from_static("not json"));
        assert_eq!(Usage::of(&h).regain, Some(Duration::from_secs(120)));
    }
}
