//! The push side of a connector: requests a platform sends to
//! `/webhooks/{instance}` (Meta's `X-Hub-Signature-256` deliveries and its
//! `hub.challenge` handshake, Telegram's `secret_token` webhook, ...).
//!
//! The daemon calls [`Connector::verify_webhook`](crate::Connector::verify_webhook)
//! first; only a verified body is stored (raw, durably) before the platform
//! gets its 200. Later, and again after a crash, the daemon hands the stored
//! body to [`Connector::parse_webhook`](crate::Connector::parse_webhook) and
//! ingests the messages like a poll's: idempotently, by `external_id`.

/// A request pushed by a platform, as the connector sees it.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// `GET` (subscription handshakes) or `POST` (deliveries).
    pub method: &'a str,
    /// The decoded query parameters, in order.
    pub query: &'a [(String, String)],
    /// Header names in lower case, values as sent.
    pub headers: &'a [(String, String)],
    /// The raw body, exactly as received: signatures cover these bytes.
    pub body: &'a [u8],
}

impl WebhookRequest<'_> {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to do with a request the connector has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookVerdict {
    /// A delivery: store the body durably, then answer 200.
    Accept,
    /// Answer this and store nothing: a subscription handshake (Meta echoes
    /// `hub.challenge`).
    Respond {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

/// Compares two byte strings in time independent of their content
/// (signatures, tokens, verify tokens, webhook secrets): the one comparison
/// of secrets in hourglass, `subtle`'s, which the optimiser cannot turn into
/// an early exit. Only the lengths may tell apart (as with any such
/// comparison); hash both first where the length itself is secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
