//! The contract between the hourglass daemon and its connectors.
//!
//! A connector is a stateless adapter to one platform account (an
//! *instance*). It never touches the store, never schedules itself and never
//! sends alerts: the daemon owns the cursor, the transaction, the retries,
//! the rate limits and the reply clock. A connector only answers three
//! questions: what is new since this cursor (`poll`), has anything changed
//! (`wait_for_change`), and please deliver this reply (`send_reply`).
//!
//! Errors are typed ([`ConnectorError`]) so that the daemon can decide what
//! to do: stop and alert on `Auth`, wait on `RateLimited`, back off on
//! `Transient`, quarantine on `BadData`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod error;
pub mod html;
pub mod limit;
mod model;
pub mod oauth;
mod order;
pub mod platform;
pub mod secret;
mod vault;
mod webhook;

#[cfg(feature = "testkit")]
pub mod testkit;

use std::time::Duration;

use async_trait::async_trait;

pub use error::ConnectorError;
pub use html::html_to_text;
pub use model::reply_subject;
pub use model::{
    ApiCalls, Attachment, Batch, Capabilities, Cursors, CustomerIdentity, DeliveryState,
    DeliveryStatus, Direction, Message, OutgoingReply, Quarantined, SentCheck, SentReply,
    WebhookStatus,
};
pub use order::extract_order_id;
pub use platform::{InstanceSettings, Platform, PlatformOf, RateLimit, SettingsProblem};
pub use vault::Vault;
pub use webhook::{constant_time_eq, WebhookRequest, WebhookVerdict};

/// One configured platform account, seen from the daemon.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The platform kind, as written in config (`type = "amazon"`).
    fn kind(&self) -> &str;

    /// The channel threads of this instance belong to (`amazon`, `email`,
    /// `ebay`, `messenger`, ...). Clock policies and alert routing use it.
    fn channel(&self) -> &str {
        self.kind()
    }

    /// The configured instance name (`amazon-eu`).
    fn instance(&self) -> &str;

    /// What this connector can do.
    fn capabilities(&self) -> Capabilities;

    /// A cheap check that the credentials and the endpoint work. Run at boot,
    /// by `check-config --online` and `connectors test NAME`.
    async fn health_check(&self) -> Result<(), ConnectorError>;

    /// Everything new since `cursors`. The returned batch carries the cursor
    /// values that cover exactly its messages; the daemon commits both in one
    /// transaction, so a crash re-polls and never loses a message. Returning
    /// already-seen messages is harmless (ingest is idempotent by
    /// `external_id`), missing one is not.
    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError>;

    /// Polling changes nothing on the platform: asking for what follows a
    /// cursor acknowledges nothing (IMAP `BODY.PEEK`, a Maildir). The
    /// daemon may then fetch the next batch while it stores this one. Not
    /// so for a `getUpdates`-style API, where the next offset confirms the
    /// previous updates: a crash before the commit would lose them.
    fn poll_is_read_only(&self) -> bool {
        false
    }

    /// What failed in the last poll that still succeeded in part (one
    /// IMAP folder of several does not exist): the daemon shows it as the
    /// instance's last error while the rest keeps being ingested.
    fn partial_failure(&self) -> Option<String> {
        None
    }

    /// What the last successful [`Connector::health_check`] learned about
    /// the credentials, for `connectors test` to print: the scopes granted,
    /// how long the access token lives. Never a secret. `None` by default.
    fn describe_access(&self) -> Option<String> {
        None
    }

    /// The API calls this connector made in the last 24 hours, for
    /// platforms that count them against a budget; `None` (the default)
    /// for those that do not. The daemon records it after every poll.
    fn api_calls(&self) -> Option<ApiCalls> {
        None
    }

    /// Tells a freshly built connector about `calls` made in the 24 hours
    /// before `at` (recorded by the previous daemon or generation), so that
    /// a restart or a reload does not hand it a fresh budget.
    fn restore_api_calls(&self, _calls: u32, _at: std::time::SystemTime) {}

    /// Waits until the platform signals a change (IMAP IDLE, a long poll) or
    /// `timeout` passes. Returns `true` when something changed. Connectors
    /// without push return `Ok(false)` after the timeout; the daemon then
    /// relies on the schedule alone.
    async fn wait_for_change(
        &self,
        _cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        tokio::time::sleep(timeout).await;
        Ok(false)
    }

    /// Delivers one reply. `reply.outbox_id` is the idempotency key: a
    /// connector that can pass it to the platform (a Message-ID, a client
    /// token) does so, so that [`Connector::check_sent`] can find it later.
    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError>;

    /// Delivers a reply an agent wrote from hourglass's template
    /// `template` (`reply --template NAME`); `vars` are the thread's
    /// template variables (`customer`, `order_id`, ...). A platform with
    /// approved templates of its own (WhatsApp) sends its template of that
    /// name instead of the text; the default sends the text.
    async fn send_templated(
        &self,
        reply: &OutgoingReply,
        _template: &str,
        _vars: &std::collections::BTreeMap<String, String>,
    ) -> Result<SentReply, ConnectorError> {
        self.send_reply(reply).await
    }

    /// After a crash during a send, looks for the reply on the platform.
    /// The default cannot tell, and the daemon marks the reply `uncertain`.
    async fn check_sent(&self, _reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        Ok(SentCheck::CannotTell)
    }

    /// Whether [`Connector::check_sent`] can only find a reply, never prove
    /// it absent (SMTP: the Sent copy is filed after the send, so a crash
    /// between the server's 250 and the record leaves no trace). Then the
    /// daemon records in the store that a send started before the request
    /// goes out: a reply recovered without that mark is sent without
    /// asking, one with it is looked up and, not found, left `uncertain`.
    fn marks_send_start(&self) -> bool {
        false
    }

    /// Whether the platform pushes to `/webhooks/{instance}`. When false
    /// (the default) that route answers 404 for this instance.
    fn accepts_webhooks(&self) -> bool {
        false
    }

    /// Checks that a pushed request comes from the platform (a signature
    /// over the raw body, a secret token, the handshake's verify token).
    /// `Err(ConnectorError::Auth)` for a forged or unsigned request: the
    /// daemon answers 401 and stores nothing. Cheap and synchronous: it
    /// runs before the platform gets its answer.
    fn verify_webhook(
        &self,
        _request: &WebhookRequest<'_>,
    ) -> Result<WebhookVerdict, ConnectorError> {
        Err(ConnectorError::Other(
            "this connector takes no webhooks".to_owned(),
        ))
    }

    /// Turns a verified, stored delivery into messages. Called after the
    /// 200, and again after a crash or a platform's redelivery: the same
    /// body must give the same `external_id`s. A body that cannot be read is
    /// `BadData` (the daemon quarantines it). The batch's cursors are
    /// ignored: pushes never move the poll cursor.
    fn parse_webhook(&self, _body: &[u8]) -> Result<Batch, ConnectorError> {
        Err(ConnectorError::Other(
            "this connector takes no webhooks".to_owned(),
        ))
    }

    /// The platform's view of the webhook (`connectors webhook NAME`):
    /// where it pushes, what it holds back, its last delivery error.
    /// `None` when the platform has no webhook to show.
    async fn webhook_status(&self) -> Result<Option<WebhookStatus>, ConnectorError> {
        Ok(None)
    }

    /// Registers `url` (`{public_url}/webhooks/{instance}`) with the
    /// platform, with the instance's secret (`connectors webhook NAME
    /// --set`). Refused where the platform has no such call or the
    /// instance is not set up for webhooks.
    async fn register_webhook(&self, _url: &str) -> Result<(), ConnectorError> {
        Err(ConnectorError::Other(
            "this platform has no webhook to register from hourglass".to_owned(),
        ))
    }

    /// Gives the connector the encrypted store of secrets it learns at run
    /// time (a rotated refresh token). The daemon calls it once, before the
    /// first poll, when `[store] secret_key` is set. Most connectors keep
    /// nothing and ignore it.
    fn attach_vault(&self, _vault: std::sync::Arc<dyn Vault>) {}
}
