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
