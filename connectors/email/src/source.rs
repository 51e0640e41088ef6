//! `MailSource`: either mailbox kind behind one type, for connectors that
//! read a platform's mail (Amazon) and post-process the messages.

use std::time::Duration;

use async_trait::async_trait;
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, SentCheck, SentReply,
};

use crate::connector::EmailConnector;
use crate::maildir::MaildirConnector;

/// Where a platform connector reads its mail.
pub enum MailSource {
    Imap(Box<EmailConnector>),
    Maildir(Box<MaildirConnector>),
}

impl MailSource {
    fn inner(&self) -> &dyn Connector {
        match self {
            MailSource::Imap(c) => c.as_ref(),
            MailSource::Maildir(c) => c.as_ref(),
        }
    }

    /// The seller's own addresses (IMAP user, SMTP from, configured ones).
    pub fn own_addresses(&self) -> &[String] {
        match self {
            MailSource::Imap(c) => c.own_addresses(),
            MailSource::Maildir(c) => c.own_addresses(),
        }
    }

    /// Reports `kind` (and channel) instead of `email`/`maildir`.
    pub fn with_kind(self, kind: &str) -> MailSource {
        match self {
            MailSource::Imap(c) => MailSource::Imap(Box::new(c.with_kind(kind))),
            MailSource::Maildir(c) => MailSource::Maildir(Box::new(c.with_kind(kind))),
        }
    }
}

#[async_trait]
impl Connector for MailSource {
    fn kind(&self) -> &str {
        self.inner().kind()
    }
    fn channel(&self) -> &str {
        self.inner().channel()
    }
    fn instance(&self) -> &str {
        self.inner().instance()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }
    async fn health_check(&self) -> Result<(), ConnectorError> {
        self.inner().health_check().await
    }
    fn poll_is_read_only(&self) -> bool {
        self.inner().poll_is_read_only()
    }
    fn partial_failure(&self) -> Option<String> {
        self.inner().partial_failure()
    }
    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        self.inner().poll(cursors).await
    }
    async fn wait_for_change(
        &self,
        cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        self.inner().wait_for_change(cursors, timeout).await
    }
    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        self.inner().send_reply(reply).await
    }
    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        self.inner().check_sent(reply).await
    }
    fn marks_send_start(&self) -> bool {
        self.inner().marks_send_start()
    }
}
