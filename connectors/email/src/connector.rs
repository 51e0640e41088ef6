//! `EmailConnector`: an IMAP mailbox in, SMTP out.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_imap::imap_proto::{MailboxDatum, Response};
use async_trait::async_trait;
use chrono::Utc;
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, SentCheck, SentReply,
};
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::client::{self, connect, map_imap_error, FolderCursor, Session};
use crate::config::{ImapConfig, SmtpConfig};
use crate::normalize::{address_of, ParseContext};
use crate::smtp::{build_reply, reply_message_id, SmtpSender};

/// Gmail drops idle connections after about 10 minutes and RFC 2177 says
/// to re-issue IDLE within 29; NAT boxes forget quiet connections sooner.
/// Five minutes, as Delta Chat does on millions of phones.
const IDLE_CHUNK: Duration = Duration::from_secs(5 * 60);
/// A poll that hangs longer than this is a dead connection.
const POLL_TIMEOUT: Duration = Duration::from_secs(300);

const IDLE_UNKNOWN: u8 = 0;
const IDLE_YES: u8 = 1;
const IDLE_NO: u8 = 2;

/// One IMAP account (and optionally the SMTP account replies go out by).
pub struct EmailConnector {
    instance: String,
    kind: String,
    imap: ImapConfig,
    password: Option<SecretString>,
    smtp: Option<SmtpSender>,
    own_addresses: Vec<String>,
    /// The session polls, sends and checks share; `None` after an error,
    /// so the next call reconnects.
    session: Mutex<Option<Session>>,
    /// IDLE blocks its connection, so it gets its own.
    idle_session: Mutex<Option<Session>>,
    idle_supported: AtomicU8,
}

impl EmailConnector {
    /// Resolves the secrets now; connects on first use.
    pub fn new(
        instance: &str,
        imap: ImapConfig,
        smtp: Option<SmtpConfig>,
    ) -> Result<EmailConnector, ConnectorError> {
        let password = match &imap.password {
            Some(r) => Some(
                r.resolve()
                    .map_err(|e| ConnectorError::Other(format!("IMAP password: {e}")))?,
            ),
            None => None,
        };
        let smtp = smtp.map(SmtpSender::new).transpose()?;
        let mut own_addresses = Vec::new();
        if imap.username.contains('@') {
            own_addresses.push(address_of(&imap.username));
        }
        if let Some(s) = &smtp {
            let a = address_of(s.from());
            if !own_addresses.contains(&a) {
                own_addresses.push(a);
            }
        }
        Ok(EmailConnector {
            instance: instance.to_owned(),
            kind: "email".to_owned(),
            imap,
            password,
            smtp,
            own_addresses,
            session: Mutex::new(None),
            idle_session: Mutex::new(None),
            idle_supported: AtomicU8::new(IDLE_UNKNOWN),
        })
    }

    /// Reports another kind (`amazon`) when wrapped by a platform connector.
    pub fn with_kind(mut self, kind: &str) -> Self {
        kind.clone_into(&mut self.kind);
        self
    }

    /// The seller's own addresses: mail from them is outbound.
    pub fn own_addresses(&self) -> &[String] {
        &self.own_addresses
    }

    pub fn config(&self) -> &ImapConfig {
        &self.imap
    }

    async fn open(&self) -> Result<Session, ConnectorError> {
        let mut session = connect(&self.imap, self.password.as_ref()).await?;
        let caps = session
            .capabilities()
            .await
            .map_err(|e| map_imap_error("CAPABILITY", e))?;
        let idle = if caps.has_str("IDLE") {
            IDLE_YES
        } else {
            IDLE_NO
        };
        self.idle_supported.store(idle, Ordering::Relaxed);
        Ok(session)
    }

    /// The cached session, or a new one. The caller puts it back only
    /// after a clean finish: a session dropped mid-command (an error, or
    /// the caller's future cancelled) would hold half a response.
    /// Also says whether the session is fresh: a cached one may have died
    /// with the server since its last use (a restart, an idle timeout), and
    /// an operation that fails on it deserves one retry on a new one.
    async fn checkout(
        &self,
        slot: &mut Option<Session>,
    ) -> Result<(Session, bool), ConnectorError> {
        match slot.take() {
            Some(s) => Ok((s, false)),
            None => Ok((self.open().await?, true)),
        }
    }

    async fn timed_poll(
        &self,
        session: &mut Session,
        cursors: &Cursors,
    ) -> Result<Batch, ConnectorError> {
        tokio::time::timeout(POLL_TIMEOUT, self.poll_inner(session, cursors))
            .await
            .map_err(|_| ConnectorError::Transient("IMAP poll timed out".into()))?
    }

    async fn poll_inner(
        &self,
        session: &mut Session,
        cursors: &Cursors,
    ) -> Result<Batch, ConnectorError> {
        let now = Utc::now();
        let mut batch = Batch::default();
        for folder in self.imap.poll_folders() {
            let ctx = ParseContext {
                folder: &folder,
                uid: None,
                internal_date: None,
                is_sent_folder: self.imap.effective_sent_folder() == Some(folder.as_str()),
                own_addresses: &self.own_addresses,
                now,
            };
            let sync = client::sync_folder(
                session,
                &folder,
                cursors.get(&folder).map(String::as_str),
                self.imap.fetch_batch.max(1) as usize,
                &ctx,
            )
            .await?;
            batch.messages.extend(sync.batch.messages);
            batch.quarantined.extend(sync.batch.quarantined);
            batch.more |= sync.batch.more;
            if let Some(c) = sync.cursor {
                batch.cursors.insert(folder.clone(), c);
            }
        }
        Ok(batch)
    }

    /// Files a sent reply in the sent folder, as a mail client would.
    async fn append_sent(&self, raw: &[u8]) -> Result<(), ConnectorError> {
        let Some(folder) = self.imap.effective_sent_folder() else {
            return Ok(());
        };
        let mut slot = self.session.lock().await;
        let (mut session, fresh) = self.checkout(&mut slot).await?;
        let context = format!("Appending the reply to {folder:?}");
        match session.append(folder, Some("(\\Seen)"), None, raw).await {
            Ok(()) => {}
            Err(e) => {
                let e = map_imap_error(&context, e);
                if fresh || !e.is_retryable() {
                    return Err(e);
                }
                session = self.open().await?;
                session
                    .append(folder, Some("(\\Seen)"), None, raw)
                    .await
                    .map_err(|e| map_imap_error(&context, e))?;
            }
        }
        *slot = Some(session);
        Ok(())
    }

    async fn find_in_sent(
        &self,
        message_id: &str,
    ) -> Result<Option<chrono::DateTime<Utc>>, ConnectorError> {
        let Some(folder) = self.imap.effective_sent_folder().map(str::to_owned) else {
            return Err(ConnectorError::Other("no sent folder configured".into()));
        };
        let mut slot = self.session.lock().await;
        let (mut session, fresh) = self.checkout(&mut slot).await?;
        let found = match search_header(&mut session, &folder, message_id).await {
            Err(e) if !fresh && e.is_retryable() => {
                session = self.open().await?;
                search_header(&mut session, &folder, message_id).await?
            }
            other => other?,
        };
        *slot = Some(session);
        Ok(found)
    }

    async fn idle_wait(
        &self,
        slot: &mut Option<Session>,
        cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut session, _) = self.checkout(slot).await?;
        if self.idle_supported.load(Ordering::Relaxed) != IDLE_YES {
            *slot = Some(session);
            tokio::time::sleep_until(deadline).await;
            return Ok(false);
        }
        let folder = self
            .imap
            .folders
            .first()
            .cloned()
            .unwrap_or_else(|| "INBOX".to_owned());
        let mailbox = session
            .select(&folder)
            .await
            .map_err(|e| map_imap_error(&format!("Selecting {folder:?} for IDLE"), e))?;
        // Mail that arrived between the last poll and now would not raise
        // an EXISTS during IDLE: answer at once.
        let stored = cursors.get(&folder).and_then(|c| FolderCursor::parse(c));
        let behind = match (stored, mailbox.uid_validity, mailbox.uid_next) {
            (Some(c), Some(v), _) if c.uidvalidity != v => true,
            (Some(c), _, Some(next)) => next > c.last_uid.saturating_add(1),
            (None, _, _) => mailbox.exists > 0,
            _ => false,
        };
        if behind {
            *slot = Some(session);
            return Ok(true);
        }
        // What was queued before the SELECT is already accounted for.
        let _ = drain_exists(&mut session);
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                *slot = Some(session);
                return Ok(false);
            }
            let chunk = (deadline - now).min(IDLE_CHUNK);
            let mut idle = session.idle();
            idle.init()
                .await
                .map_err(|e| map_imap_error("Starting IDLE", e))?;
            let outcome = {
                let (wait, _stop) = idle.wait_with_timeout(chunk);
                tokio::time::timeout(chunk, wait).await
            };
            session = idle
                .done()
                .await
                .map_err(|e| map_imap_error("Ending IDLE", e))?;
            match outcome {
                Ok(Ok(async_imap::extensions::idle::IdleResponse::NewData(data)))
                    if matches!(
                        data.parsed(),
                        Response::MailboxData(MailboxDatum::Exists(_))
                    ) =>
                {
                    *slot = Some(session);
                    return Ok(true);
                }
                Ok(Err(e)) => return Err(map_imap_error("Waiting in IDLE", e)),
                // Flag changes, expunges, keepalives, our own timeout: keep
                // waiting until the deadline.
                _ => {}
            }
            // An EXISTS that came with the DONE's completion lands in the
            // unsolicited queue, not in the IDLE stream.
            if drain_exists(&mut session) {
                *slot = Some(session);
                return Ok(true);
            }
        }
    }
}

/// Empties the session's unsolicited responses; true when one was EXISTS.
fn drain_exists(session: &mut Session) -> bool {
    let mut exists = false;
    while let Ok(r) = session.unsolicited_responses.try_recv() {
        exists |= matches!(r, async_imap::types::UnsolicitedResponse::Exists(_));
    }
    exists
}

async fn search_header(
    session: &mut Session,
    folder: &str,
    message_id: &str,
) -> Result<Option<chrono::DateTime<Utc>>, ConnectorError> {
    session
        .select(folder)
        .await
        .map_err(|e| map_imap_error(&format!("Selecting {folder:?}"), e))?;
    let quoted = message_id.replace(['"', '\\'], "");
    let uids = session
        .uid_search(format!("HEADER Message-ID \"{quoted}\""))
        .await
        .map_err(|e| map_imap_error(&format!("Searching {folder:?}"), e))?;
    let Some(uid) = uids.into_iter().min() else {
        return Ok(None);
    };
    use futures::TryStreamExt;
    let fetches: Vec<async_imap::types::Fetch> = session
        .uid_fetch(uid.to_string(), "(UID INTERNALDATE)")
        .await
        .map_err(|e| map_imap_error(&format!("Fetching from {folder:?}"), e))?
        .try_collect()
        .await
        .map_err(|e| map_imap_error(&format!("Fetching from {folder:?}"), e))?;
    Ok(Some(
        fetches
            .iter()
            .find_map(|f| f.internal_date())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(Utc::now),
    ))
}

#[async_trait]
impl Connector for EmailConnector {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn channel(&self) -> &str {
        &self.kind
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            poll: true,
            push: self.imap.idle && self.idle_supported.load(Ordering::Relaxed) != IDLE_NO,
            send: self.smtp.is_some(),
            check_sent: self.smtp.is_some() && self.imap.effective_sent_folder().is_some(),
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        {
            let mut slot = self.session.lock().await;
            // A fresh login proves the credentials, not a cached session.
            *slot = None;
            let mut session = self.open().await?;
            for folder in self.imap.poll_folders() {
                session
                    .examine(&folder)
                    .await
                    .map_err(|e| map_imap_error(&format!("Opening folder {folder:?}"), e))?;
            }
            *slot = Some(session);
        }
        if let Some(smtp) = &self.smtp {
            smtp.check().await?;
        }
        Ok(())
    }

    fn poll_is_read_only(&self) -> bool {
        true // BODY.PEEK: not even \Seen is set
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        let mut slot = self.session.lock().await;
        let (mut session, fresh) = self.checkout(&mut slot).await?;
        let batch = match self.timed_poll(&mut session, cursors).await {
            Err(e) if !fresh && e.is_retryable() => {
                tracing::debug!(instance = %self.instance, error = %e, "Cached IMAP session failed, reconnecting.");
                session = self.open().await?;
                self.timed_poll(&mut session, cursors).await?
            }
            other => other?,
        };
        *slot = Some(session);
        Ok(batch)
    }

    async fn wait_for_change(
        &self,
        cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        if !self.imap.idle {
            tokio::time::sleep(timeout).await;
            return Ok(false);
        }
        let mut slot = self.idle_session.lock().await;
        self.idle_wait(&mut slot, cursors, timeout).await
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        let Some(smtp) = &self.smtp else {
            return Err(ConnectorError::Other(format!(
                "instance {} has no [smtp] to send with",
                self.instance
            )));
        };
        let built = build_reply(smtp.from(), reply, Utc::now())?;
        let raw = built.raw();
        smtp.send(built.message.clone()).await?;
        // The mail is out: failing to file the copy must not make the
        // daemon send it again, so it is only logged.
        if let Err(e) = self.append_sent(&raw).await {
            tracing::warn!(instance = %self.instance, error = %e, "Reply sent but not filed in the sent folder.");
        }
        Ok(SentReply {
            external_id: built.message_id,
            sent_at: built.sent_at,
        })
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let (Some(smtp), Some(_)) = (&self.smtp, self.imap.effective_sent_folder()) else {
            return Ok(SentCheck::CannotTell);
        };
        let id = reply_message_id(&reply.outbox_id, smtp.from());
        Ok(match self.find_in_sent(&id).await? {
            Some(sent_at) => SentCheck::Sent(SentReply {
                external_id: id,
                sent_at,
            }),
            None => SentCheck::NotSent,
        })
    }
}
