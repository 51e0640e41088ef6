//! `type = "email"` and `type = "maildir"` as the daemon registers them:
//! their config tables, quotas and constructors.

use std::sync::Arc;

use hourglass_connector::platform::{InstanceSettings, PlatformOf, RateLimit, SettingsProblem};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::Connector;
use serde::Deserialize;

use crate::{EmailConnector, ImapConfig, MaildirConfig, MaildirConnector, SmtpConfig};

/// `type = "email"`: an IMAP mailbox, replies by SMTP.
pub static EMAIL: PlatformOf<EmailSettings> = PlatformOf::new("email");
/// `type = "maildir"`: a local Maildir, replies by SMTP.
pub static MAILDIR: PlatformOf<MaildirSettings> = PlatformOf::new("maildir");

/// SMTP has no published quota; mail providers throttle senders that
/// burst. A conservative 5 messages/s keeps us clear of that.
pub const SMTP_QUOTA: RateLimit = RateLimit {
    per_second: 5.0,
    burst: 5,
};

/// The keys of an `email` instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// `[instances.imap]`: the mailbox (required).
    #[serde(default)]
    pub imap: Option<ImapConfig>,
    /// `[instances.smtp]`: where replies leave (optional: without it the
    /// instance only reads).
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// The keys of a `maildir` instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaildirSettings {
    /// `[instances.maildir]`: the local Maildir (required).
    #[serde(default)]
    pub maildir: Option<MaildirConfig>,
    /// `[instances.smtp]`: where replies leave (optional).
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// The secret references of mail settings, with their keys.
pub fn mail_secrets<'a>(
    imap: Option<&'a ImapConfig>,
    smtp: Option<&'a SmtpConfig>,
) -> Vec<(&'static str, &'a SecretRef)> {
    let mut out = Vec::new();
    if let Some(pw) = imap.and_then(|i| i.password.as_ref()) {
        out.push(("imap.password", pw));
    }
    if let Some(pw) = smtp.and_then(|s| s.password.as_ref()) {
        out.push(("smtp.password", pw));
    }
    out
}

/// What serde cannot check in mail settings: `accept_invalid_certs` only
/// for loopback hosts (elsewhere a private CA goes in `ca_file`), and every
/// `ca_file` readable and holding a certificate.
pub fn mail_problems(imap: Option<&ImapConfig>, smtp: Option<&SmtpConfig>) -> Vec<SettingsProblem> {
    let mut out = Vec::new();
    if let Some(imap) = imap {
        if imap.accept_invalid_certs && !crate::config::is_loopback_host(&imap.host) {
            out.push(SettingsProblem::new(
                "imap.accept_invalid_certs",
                format!(
                    "accept_invalid_certs is only allowed for loopback hosts, not {:?}; \
                     for a server with a private CA set ca_file to its CA certificate",
                    imap.host
                ),
            ));
        }
    }
    let files = [
        ("imap.ca_file", imap.and_then(|i| i.ca_file.as_ref())),
        ("smtp.ca_file", smtp.and_then(|s| s.ca_file.as_ref())),
    ];
    for (key, file) in files {
        if let Some(Err(e)) = file.map(|f| crate::config::read_ca_file(f)) {
            out.push(SettingsProblem::new(key, e));
        }
    }
    out
}

impl InstanceSettings for EmailSettings {
    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        let mut out = match self.imap {
            Some(_) => Vec::new(),
            None => vec![SettingsProblem::missing_table(kind, "imap")],
        };
        out.extend(mail_problems(self.imap.as_ref(), self.smtp.as_ref()));
        out
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        mail_secrets(self.imap.as_ref(), self.smtp.as_ref())
    }

    fn send_quota(&self) -> Option<RateLimit> {
        Some(SMTP_QUOTA)
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let imap = self
            .imap
            .clone()
            .ok_or_else(|| SettingsProblem::missing_table(kind, "imap").message)?;
        EmailConnector::new(instance, imap, self.smtp.clone())
            .map(|c| Arc::new(c) as Arc<dyn Connector>)
            .map_err(|e| e.to_string())
    }
}

impl InstanceSettings for MaildirSettings {
    /// Mail read from a Maildir is e-mail: same policies, same routing.
    fn channel(&self, _kind: &str) -> String {
        "email".to_owned()
    }

    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        let mut out = match self.maildir {
            Some(_) => Vec::new(),
            None => vec![SettingsProblem::missing_table(kind, "maildir")],
        };
        out.extend(mail_problems(None, self.smtp.as_ref()));
        out
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        mail_secrets(None, self.smtp.as_ref())
    }

    fn send_quota(&self) -> Option<RateLimit> {
        Some(SMTP_QUOTA)
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let maildir = self
            .maildir
            .clone()
            .ok_or_else(|| SettingsProblem::missing_table(kind, "maildir").message)?;
        MaildirConnector::new(instance, maildir, self.smtp.clone())
            .map(|c| Arc::new(c) as Arc<dyn Connector>)
            .map_err(|e| e.to_string())
    }
}
