//! `[http]`: the HTTP server in the daemon (DESIGN §6 "HTTP"). These keys
//! are a public contract: extend, never rename.

use std::net::SocketAddr;

use hourglass_connector::secret::SecretRef;
use serde::{Deserialize, Serialize};

use crate::duration::Dur;

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the server listens on, e.g. `127.0.0.1:8080`. Absent: no
    /// HTTP server. Keep it on loopback behind a reverse proxy that
    /// terminates TLS.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Base URL for links to threads in alerts (your help desk or inbox),
    /// e.g. `https://hourglass.example.com`; alerts link `{public_url}/threads/ID`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `/metrics` needs a token with role `metrics` (or `admin`). When
    /// false, `/metrics` is open to clients on loopback only.
    #[serde(default)]
    pub metrics_require_token: bool,
    /// Largest request body accepted, in bytes (webhook deliveries, replies).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A request taking longer than this is answered 408.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// API tokens, sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            public_url: None,
            metrics_require_token: false,
            max_body_bytes: default_max_body_bytes(),
            request_timeout: default_request_timeout(),
            tokens: Vec::new(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_request_timeout() -> Dur {
    Dur::from_secs(30)
}

impl HttpConfig {
    /// What is wrong with `[http]`, as (a value to locate it by, message).
    /// Token values are read here (as every secret is by `check-config`)
    /// and never shown.
    pub fn problems(&self) -> Vec<(String, String)> {
        use hourglass_connector::secret::ExposeSecret as _;
        let mut out = Vec::new();
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                out.push((
                    url.clone(),
                    format!("public_url {url:?} must start with http:// or https://"),
                ));
            }
        }
        if self.max_body_bytes == 0 {
            out.push((
                "max_body_bytes".into(),
                "max_body_bytes must be more than 0".into(),
            ));
        }
        let mut seen: Vec<(&str, Option<String>)> = Vec::new();
        for t in &self.tokens {
            let here = t.secret.to_string();
            if t.name.trim().is_empty() {
                out.push((here.clone(), "a token needs a name".into()));
            }
            if seen.iter().any(|(n, _)| *n == t.name) {
                out.push((
                    t.name.clone(),
                    format!("token name {:?} is used twice", t.name),
                ));
            }
            let value = match t.secret.resolve() {
                Ok(v) => Some(v.expose_secret().to_owned()),
                Err(e) => {
                    out.push((here.clone(), format!("token {:?}: {e}", t.name)));
                    None
                }
            };
            if let Some(v) = &value {
                if v.len() < 16 {
                    out.push((
                        here.clone(),
                        format!(
                            "token {:?} is too short to be safe: use at least 16 characters",
                            t.name
                        ),
                    ));
                }
                if let Some((other, _)) = seen.iter().find(|(_, o)| o.as_ref() == Some(v)) {
                    out.push((
                        here.clone(),
                        format!("tokens {other:?} and {:?} have the same value", t.name),
                    ));
                }
            }
            seen.push((&t.name, value));
        }
        if self.metrics_require_token
            && !self
                .tokens
                .iter()
                .any(|t| matches!(t.role, Role::Metrics | Role::Admin))
        {
            out.push((
                "metrics_require_token".into(),
                "metrics_require_token = true, but no token has role \"metrics\" or \"admin\""
                    .into(),
            ));
        }
        out
    }
}

/// `[[http.tokens]]`: one API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it; recorded as the actor of replies and marks.
    pub name: String,
    /// The token itself, by reference (`env:HOURGLASS_TOKEN_ANA`).
    pub secret: SecretRef,
    /// `agent` (threads, replies, marks, stats), `admin` (everything,
    /// connectors too) or `metrics` (`/metrics` only).
    pub role: Role,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Admin,
    Metrics,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
        }
    }

    /// Whether this role may do what `needed` may. An admin may do
    /// everything; the others only their own.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_problems_are_found_without_showing_values() {
        std::env::set_var("HG_TEST_TOKEN_A", "0123456789abcdef-a");
        std::env::set_var("HG_TEST_TOKEN_SHORT", "short");
        let config: HttpConfig = toml::from_str(
            r#"
            public_url = "hourglass.example.com"
            metrics_require_token = true
            [[tokens]]
            name = "ana"
            secret = "env:HG_TEST_TOKEN_A"
            role = "agent"
            [[tokens]]
            name = "ana"
            secret = "env:HG_TEST_TOKEN_A"
            role = "agent"
            [[tokens]]
            name = "bob"
            secret = "env:HG_TEST_TOKEN_SHORT"
            role = "agent"
            [[tokens]]
            name = "cy"
            secret = "env:HG_TEST_TOKEN_MISSING"
            role = "agent"
            "#,
        )
        .unwrap();
        let problems: Vec<String> = config.problems().into_iter().map(|(_, m)| m).collect();
        let all = problems.join("\n");
        assert!(all.contains("must start with http"), "{all}");
        assert!(all.contains("\"ana\" is used twice"), "{all}");
        assert!(all.contains("have the same value"), "{all}");
        assert!(all.contains("\"bob\" is too short"), "{all}");
        assert!(all.contains("HG_TEST_TOKEN_MISSING is not set"), "{all}");
        assert!(all.contains("no token has role"), "{all}");
        assert!(
            !all.contains("0123456789abcdef") && !all.contains("short\""),
            "{all}"
        );
        assert!(toml::from_str::<HttpConfig>("listen = \"127.0.0.1:8080\"")
            .unwrap()
            .problems()
            .is_empty());
    }
}
