//! Replies over SMTP (lettre): building a threaded text/plain mail whose
//! Message-ID derives from the outbox id, and sending it.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::{ConnectorError, OutgoingReply};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::SecretString;

use crate::config::{SmtpConfig, TlsMode};
use crate::normalize::address_of;

const SMTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A reply ready to send and to file in the sent folder.
#[derive(Debug, Clone)]
pub struct BuiltReply {
    /// The Message-ID without angle brackets: the `external_id` the copy in
    /// the sent folder is ingested under.
    pub message_id: String,
    pub sent_at: DateTime<Utc>,
    pub message: lettre::Message,
}

impl BuiltReply {
    /// The RFC 5322 bytes (for IMAP APPEND and Maildir).
    pub fn raw(&self) -> Vec<u8> {
        self.message.formatted()
    }
}

/// The Message-ID of the reply with this outbox id, without brackets:
/// `<outbox>@hourglass.<domain of from>`. Deterministic, so `check_sent`
/// can look for it after a crash.
pub fn reply_message_id(outbox_id: &str, from: &str) -> String {
    let local: String = outbox_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let addr = address_of(from);
    let domain = addr
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("localhost");
    format!("{local}@hourglass.{domain}")
}

fn meta_str<'a>(meta: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    meta.get(key)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn bracket(id: &str) -> String {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{id}>")
}

/// Builds the reply: text/plain UTF-8 to `reply.to`, `Re:` subject,
/// In-Reply-To and References from the answered message's `meta`.
pub fn build_reply(
    from: &str,
    reply: &OutgoingReply,
    now: DateTime<Utc>,
) -> Result<BuiltReply, ConnectorError> {
    let from_box: Mailbox = from
        .parse()
        .map_err(|e| ConnectorError::Other(format!("smtp.from {from:?} is not an address: {e}")))?;
    let to_box: Mailbox = reply.to.parse().map_err(|e| {
        ConnectorError::Refused(format!("{:?} is not an e-mail address: {e}", reply.to))
    })?;
    let meta = &reply.in_reply_to_meta;
    let subject = hourglass_connector::reply_subject(
        reply
            .subject
            .as_deref()
            .or_else(|| meta_str(meta, "subject"))
            .unwrap_or_default(),
    );
    let message_id = reply_message_id(&reply.outbox_id, from);
    let sent_at = now;
    let mut builder = lettre::Message::builder()
        .from(from_box)
        .to(to_box)
        .subject(subject)
        .date(SystemTime::from(sent_at))
        .message_id(Some(bracket(&message_id)))
        .header(ContentType::TEXT_PLAIN);
    if let Some(parent) = meta_str(meta, "message_id") {
        let mut refs: Vec<String> = meta
            .get("references")
            .and_then(|r| r.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).map(bracket).collect())
            .unwrap_or_default();
        let parent = bracket(parent);
        if !refs.contains(&parent) {
            refs.push(parent.clone());
        }
        builder = builder.in_reply_to(parent).references(refs.join(" "));
    }
    let message = builder
        .body(reply.text.clone())
        .map_err(|e| ConnectorError::Refused(format!("Cannot build the reply: {e}")))?;
    Ok(BuiltReply {
        message_id,
        sent_at,
        message,
    })
}

/// An SMTP submission account.
pub struct SmtpSender {
    config: SmtpConfig,
    password: Option<SecretString>,
    /// Certificates trusted besides the Mozilla roots (PEM).
    extra_roots: Vec<Vec<u8>>,
}

impl SmtpSender {
    /// Resolves the password reference now, so a missing secret shows at
    /// boot rather than at the first reply.
    pub fn new(config: SmtpConfig) -> Result<SmtpSender, ConnectorError> {
        let password = match &config.password {
            Some(r) => Some(
                r.resolve()
                    .map_err(|e| ConnectorError::Other(format!("SMTP password: {e}")))?,
            ),
            None => None,
        };
        Ok(SmtpSender {
            config,
            password,
            extra_roots: Vec::new(),
        })
    }

    /// Also trusts the certificate in `pem` (a private CA's, or a test
    /// server's), besides the usual roots; the host name is still checked.
    pub fn trusting(mut self, pem: &[u8]) -> Result<SmtpSender, ConnectorError> {
        Certificate::from_pem(pem)
            .map_err(|e| ConnectorError::Other(format!("SMTP CA certificate: {e}")))?;
        self.extra_roots.push(pem.to_vec());
        Ok(self)
    }

    fn tls_parameters(&self) -> Result<TlsParameters, ConnectorError> {
        let mut params = TlsParameters::builder(self.config.host.clone());
        for pem in &self.extra_roots {
            let cert = Certificate::from_pem(pem)
                .map_err(|e| ConnectorError::Other(format!("SMTP CA certificate: {e}")))?;
            params = params.add_root_certificate(cert);
        }
        params
            .build_rustls()
            .map_err(|e| ConnectorError::Other(format!("SMTP TLS setup: {e}")))
    }

    pub fn from(&self) -> &str {
        &self.config.from
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, ConnectorError> {
        let host = self.config.host.as_str();
        let mut builder = match self.config.tls {
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            tls if !self.extra_roots.is_empty() => {
                let params = self.tls_parameters()?;
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).tls(match tls {
                    TlsMode::Implicit => Tls::Wrapper(params),
                    _ => Tls::Required(params),
                })
            }
            TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| ConnectorError::Other(format!("SMTP TLS setup: {e}")))?,
            TlsMode::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| ConnectorError::Other(format!("SMTP TLS setup: {e}")))?,
        }
        .port(self.config.port)
        .timeout(Some(SMTP_TIMEOUT));
        if let Some(user) = &self.config.username {
            let password = self
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(builder.build())
    }

    /// Sends one message.
    pub async fn send(&self, message: lettre::Message) -> Result<(), ConnectorError> {
        self.transport()?
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| map_smtp_error(&self.config, e))
    }

    /// Connects and says EHLO (and logs in): the cheap health check.
    pub async fn check(&self) -> Result<(), ConnectorError> {
        match self.transport()?.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ConnectorError::Transient(format!(
                "SMTP {}:{} did not answer",
                self.config.host, self.config.port
            ))),
            Err(e) => Err(map_smtp_error(&self.config, e)),
        }
    }
}

fn map_smtp_error(cfg: &SmtpConfig, e: lettre::transport::smtp::Error) -> ConnectorError {
    let where_ = format!("SMTP {}:{}", cfg.host, cfg.port);
    let code = e.status().map(|c| c.to_string()).unwrap_or_default();
    if e.is_permanent() {
        // 530/534/535: authentication required or refused (RFC 4954).
        if code.starts_with("53") {
            return ConnectorError::Auth(format!("{where_} refused the login: {e}"));
        }
        return ConnectorError::Refused(format!("{where_} refused the message: {e}"));
    }
    ConnectorError::Transient(format!("{where_}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(meta: serde_json::Value) -> OutgoingReply {
        OutgoingReply {
            outbox_id: "ob 42/x".into(),
            thread_key: "t".into(),
            to: "Ioana Popescu <ioana.popescu@example.ro>".into(),
            subject: None,
            text: "Bună ziua, coletul a plecat.".into(),
            in_reply_to_meta: meta,
            order_id: None,
        }
    }

    #[test]
    fn message_ids_derive_from_the_outbox_id_and_the_sender_domain() {
        assert_eq!(
            reply_message_id("ob 42/x", "Shop <seller@Shop.example>"),
            "ob_42_x@hourglass.shop.example"
        );
        assert_eq!(reply_message_id("7", "nobody"), "7@hourglass.localhost");
    }

    #[test]
    fn replies_thread_under_the_answered_message() {
        let built = build_reply(
            "Shop <seller@shop.example>",
            &reply(json!({
                "message_id": "b@x",
                "references": ["a@x"],
                "subject": "Comandă întârziată",
            })),
            Utc::now(),
        )
        .unwrap();
        let raw = String::from_utf8(built.raw()).unwrap();
        assert!(
            raw.contains("Message-ID: <ob_42_x@hourglass.shop.example>"),
            "{raw}"
        );
        assert!(raw.contains("In-Reply-To: <b@x>"), "{raw}");
        assert!(raw.contains("References: <a@x> <b@x>"), "{raw}");
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(parsed.subject(), Some("Re: Comandă întârziată"));
        assert_eq!(
            parsed.body_text(0).unwrap().trim(),
            "Bună ziua, coletul a plecat."
        );
    }

    #[test]
    fn a_subject_that_is_already_a_reply_is_kept() {
        let mut r = reply(json!({}));
        r.subject = Some("RE: Order".into());
        let built = build_reply("seller@shop.example", &r, Utc::now()).unwrap();
        let raw = String::from_utf8(built.raw()).unwrap();
        assert!(raw.contains("Subject: RE: Order\r\n"), "{raw}");
        assert!(!raw.contains("In-Reply-To"), "{raw}");
    }

    #[test]
    fn a_bad_recipient_is_refused() {
        let mut r = reply(json!({}));
        r.to = "not an address".into();
        let err = build_reply("seller@shop.example", &r, Utc::now()).unwrap_err();
        assert_eq!(err.kind(), "refused");
    }
}
