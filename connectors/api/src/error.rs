use std::time::Duration;

/// Why a connector call failed, typed so the daemon can choose what to do.
///
/// Messages must never contain a secret (a password, a token): they end up
/// in logs, in `connectors list --json` and in alerts to the admin.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The credentials were refused (a revoked or expired token, a wrong
    /// password). The daemon alerts the admin once per episode, shows the
    /// instance as `auth_failed` and retries it with backoff (up to
    /// `daemon.max_backoff`), so that a secret renewed behind the same
    /// reference is picked up; the other instances are not affected.
    #[error("Authentication failed: {0}")]
    Auth(String),

    /// The platform asked us to slow down. `retry_after` is the platform's
    /// own hint (`Retry-After`, Telegram's `retry_after`) when it gave one.
    #[error("Rate limited by the platform{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },

    /// A network error, a timeout, a 5xx: worth retrying after a backoff.
    #[error("Transient failure: {0}")]
    Transient(String),

    /// The platform returned something we cannot read. The raw bytes go to
    /// the quarantine table; the rest of the batch is unaffected.
    #[error("Bad data: {reason}")]
    BadData { reason: String, raw: Vec<u8> },

    /// The platform refused this reply for good (reply window closed, text
    /// too long, attachment type, the buyer opted out). Not retried; shown on
    /// the thread.
    #[error("Refused by the platform: {0}")]
    Refused(String),

    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl ConnectorError {
    /// Short machine name of the kind, as shown in `connectors list --json`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectorError::Auth(_) => "auth",
            ConnectorError::RateLimited { .. } => "rate_limited",
            ConnectorError::Transient(_) => "transient",
            ConnectorError::BadData { .. } => "bad_data",
            ConnectorError::Refused(_) => "refused",
            ConnectorError::Other(_) => "other",
        }
    }

    /// Whether a later retry of the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. } | ConnectorError::Transient(_)
        )
    }
}
