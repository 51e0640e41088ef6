//! `type = "amazon"` as the daemon registers it: its config tables, its
//! send quota and its constructor.

use std::sync::Arc;

use hourglass_connector::platform::{InstanceSettings, PlatformOf, RateLimit, SettingsProblem};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::Connector;
use hourglass_email::platform::{mail_problems, mail_secrets};
use hourglass_email::{ImapConfig, MaildirConfig, SmtpConfig};
use serde::Deserialize;

use crate::{AmazonConnector, SpApiConfig};

/// `type = "amazon"`.
pub static AMAZON: PlatformOf<AmazonSettings> = PlatformOf::new("amazon");

/// SP-API Messaging: 1 request/s with a burst of 5 per operation (the
/// "Usage Plan" table of the Messaging API reference); 429 QuotaExceeded
/// comes without Retry-After.
pub const SEND_QUOTA: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 5,
};

/// The keys of an `amazon` instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmazonSettings {
    /// `[instances.imap]`: the mailbox Seller Central sends buyer messages
    /// to. This or `maildir` is required.
    #[serde(default)]
    pub imap: Option<ImapConfig>,
    /// `[instances.maildir]`: the same mailbox, delivered to a local
    /// Maildir.
    #[serde(default)]
    pub maildir: Option<MaildirConfig>,
    /// `[instances.smtp]`: replies leave through the relay by e-mail, from
    /// the registered sender address.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// `[instances.sp_api]`: optional order enrichment.
    #[serde(default)]
    pub sp_api: Option<SpApiConfig>,
}

impl InstanceSettings for AmazonSettings {
    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        let mut out = match (&self.imap, &self.maildir) {
            (None, None) => vec![SettingsProblem::missing_table(kind, "imap")],
            _ => Vec::new(),
        };
        out.extend(mail_problems(self.imap.as_ref(), self.smtp.as_ref()));
        out
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        let mut out = mail_secrets(self.imap.as_ref(), self.smtp.as_ref());
        if let Some(sp) = &self.sp_api {
            out.push(("sp_api.client_secret", &sp.client_secret));
            out.push(("sp_api.refresh_token", &sp.refresh_token));
        }
        out
    }

    fn send_quota(&self) -> Option<RateLimit> {
        Some(SEND_QUOTA)
    }

    fn check_reply(&self, text: &str) -> Result<(), String> {
        crate::rules::check_reply(text)
    }

    fn consent(
        &self,
        _kind: &str,
        _instance: &str,
    ) -> Option<Result<Box<dyn hourglass_connector::oauth::Consent>, String>> {
        let sp = self.sp_api.as_ref()?;
        Some(
            crate::consent::AmazonConsent::new(sp)
                .map(|c| Box::new(c) as Box<dyn hourglass_connector::oauth::Consent>),
        )
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let built = match (&self.imap, &self.maildir) {
            (Some(imap), _) => {
                AmazonConnector::with_imap(instance, imap.clone(), self.smtp.clone())
            }
            (None, Some(maildir)) => {
                AmazonConnector::with_maildir(instance, maildir.clone(), self.smtp.clone())
            }
            (None, None) => return Err(SettingsProblem::missing_table(kind, "imap").message),
        };
        let built = match &self.sp_api {
            Some(sp) => built.and_then(|c| c.with_sp_api(sp.clone())),
            None => built,
        };
        built
            .map(|c| Arc::new(c) as Arc<dyn Connector>)
            .map_err(|e| e.to_string())
    }
}
