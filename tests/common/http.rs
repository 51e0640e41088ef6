//! Talking HTTP to a daemon started by a test: find its address in the
//! log (`[http] listen = "127.0.0.1:0"` picks a free port), then send
//! requests with or without a token.

use std::time::Duration;

use super::Daemon;

/// The `[http]` part of a config listening on a free loopback port, with
/// one token per role read from the environment (see [`token_env`]).
pub const HTTP_CONFIG: &str = r#"
[http]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1"

[[http.tokens]]
name = "ana"
secret = "env:TEST_TOKEN_AGENT"
role = "agent"

[[http.tokens]]
name = "root"
secret = "env:TEST_TOKEN_ADMIN"
role = "admin"

[[http.tokens]]
name = "prom"
secret = "env:TEST_TOKEN_METRICS"
role = "metrics"
"#;

pub const AGENT: &str = "agent-token-3f9a1c";
pub const ADMIN: &str = "admin-token-77b0e2";
pub const METRICS: &str = "metrics-token-51d4aa";

/// The environment the tokens of [`HTTP_CONFIG`] are read from.
pub fn token_env() -> Vec<(String, String)> {
    vec![
        ("TEST_TOKEN_AGENT".into(), AGENT.into()),
        ("TEST_TOKEN_ADMIN".into(), ADMIN.into()),
        ("TEST_TOKEN_METRICS".into(), METRICS.into()),
    ]
}

/// Waits until the daemon's HTTP server listens; returns its base URL.
/// The daemon must log JSON (`--log-format json`).
pub fn base_url(daemon: &Daemon) -> String {
    let mut url = None;
    super::wait_until(Duration::from_secs(30), || {
        url = daemon
            .log()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "HTTP server listening.")
            .and_then(|v| v["listen"].as_str().map(|a| format!("http://{a}")));
        url.is_some()
    })
    .unwrap_or_else(|_| panic!("the HTTP server never listened; log:\n{}", daemon.log()));
    url.unwrap_or_default()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET with an optional bearer token; returns status and body as JSON
/// (Null when the body is not JSON).
pub fn get(base: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// POST JSON with an optional bearer token and extra headers.
pub fn post(
    base: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = client().post(format!("{base}{path}")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Asserts an error answer: the status, `error.code`, and that the
/// message mentions `mentions`.
pub fn assert_error(got: &(u16, serde_json::Value), status: u16, code: &str, mentions: &str) {
    assert_eq!(got.0, status, "{:?}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{:?}", got.1);
    let message = got.1["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(mentions),
        "error message {message:?} should mention {mentions:?}"
    );
}

/// Like [`get`], but `None` while nothing listens yet.
pub fn try_get(base: &str, path: &str, token: Option<&str>) -> Option<(u16, serde_json::Value)> {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().ok()?;
    let status = resp.status().as_u16();
    let body = resp.bytes().ok()?;
    Some((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}
