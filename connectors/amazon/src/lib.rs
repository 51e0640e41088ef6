//! Amazon buyer-seller messages, read from the seller's mailbox.
//!
//! No Amazon API reads buyer messages: the seller routes them to a mailbox
//! (Seller Central, notification preferences) and this connector reads it
//! through the e-mail connector ([`MailSource`]: IMAP or Maildir), then
//! turns relay mail into Amazon messages ([`normalize::normalize`]) and
//! checks replies against Amazon's rules before sending them through the
//! relay ([`rules::check_reply`]).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod consent;
pub mod normalize;
pub mod platform;
pub mod rules;
pub mod sp_api;

use std::time::Duration;

use async_trait::async_trait;
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, SentCheck, SentReply,
};
use hourglass_email::{
    EmailConnector, ImapConfig, MailSource, MaildirConfig, MaildirConnector, SmtpConfig,
};

pub use platform::{AmazonSettings, AMAZON};
pub use sp_api::SpApiConfig;

/// One Amazon seller account (one marketplace region's mailbox).
pub struct AmazonConnector {
    source: MailSource,
    sp_api: Option<sp_api::SpApi>,
}

impl AmazonConnector {
    /// Wraps a mail source; it reports kind and channel `amazon`.
    pub fn new(source: MailSource) -> AmazonConnector {
        AmazonConnector {
            source: source.with_kind("amazon"),
            sp_api: None,
        }
    }

    /// Adds SP-API order enrichment (`[instances.sp_api]`): buyer messages
    /// with an order id get `meta.order` (status, dates, total).
    pub fn with_sp_api(mut self, config: SpApiConfig) -> Result<AmazonConnector, ConnectorError> {
        self.sp_api = Some(sp_api::SpApi::new(config)?);
        Ok(self)
    }

    /// Buyer messages from an IMAP mailbox (`[instances.imap]`), replies
    /// through `[instances.smtp]`.
    pub fn with_imap(
        instance: &str,
        imap: ImapConfig,
        smtp: Option<SmtpConfig>,
    ) -> Result<AmazonConnector, ConnectorError> {
        let conn = EmailConnector::new(instance, imap, smtp)?;
        Ok(AmazonConnector::new(MailSource::Imap(Box::new(conn))))
    }

    /// Buyer messages from a local Maildir (`[instances.maildir]`).
    pub fn with_maildir(
        instance: &str,
        maildir: MaildirConfig,
        smtp: Option<SmtpConfig>,
    ) -> Result<AmazonConnector, ConnectorError> {
        let conn = MaildirConnector::new(instance, maildir, smtp)?;
        Ok(AmazonConnector::new(MailSource::Maildir(Box::new(conn))))
    }
}

#[async_trait]
impl Connector for AmazonConnector {
    fn kind(&self) -> &str {
        "amazon"
    }

    fn channel(&self) -> &str {
        "amazon"
    }

    fn instance(&self) -> &str {
        self.source.instance()
    }

    fn capabilities(&self) -> Capabilities {
        self.source.capabilities()
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        self.source.health_check().await
    }

    fn poll_is_read_only(&self) -> bool {
        // SP-API enrichment only reads orders.
        self.source.poll_is_read_only()
    }

    fn partial_failure(&self) -> Option<String> {
        self.source.partial_failure()
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        let mut batch = self.source.poll(cursors).await?;
        batch.messages = batch
            .messages
            .into_iter()
            .map(normalize::normalize)
            .collect();
        if let Some(api) = &self.sp_api {
            api.enrich(&mut batch.messages).await;
        }
        Ok(batch)
    }

    async fn wait_for_change(
        &self,
        cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        self.source.wait_for_change(cursors, timeout).await
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        rules::check_reply(&reply.text).map_err(ConnectorError::Refused)?;
        self.source.send_reply(reply).await
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        self.source.check_sent(reply).await
    }

    fn marks_send_start(&self) -> bool {
        self.source.marks_send_start()
    }
}
