//! `EmailConnector`: an IMAP mailbox in, SMTP out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_imap::imap_proto::{MailboxDatum, Response};
use async_trait::async_trait;
use chrono::Utc;
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, SentCheck, SentReply,
};
use secrecy::SecretString;
use tokio::sync::{watch, Mutex};

use crate::client::{self, connect, map_imap_error, ChangeTracking, FolderCursor, Session};
use crate::config::{ImapConfig, SmtpConfig};
use crate::folders::{plan_folders, FolderPlan, ListedFolder, PlannedFolder, SpecialUse};
use crate::normalize::{address_of, ParseContext};
use crate::smtp::{build_reply, reply_message_id, SmtpSender};

/// Gmail drops idle connections after about 10 minutes and RFC 2177 says
/// to re-issue IDLE within 29; NAT boxes forget quiet connections sooner.
/// Five minutes, as Delta Chat does on millions of phones.
const IDLE_CHUNK: Duration = Duration::from_secs(5 * 60);
/// A poll that hangs longer than this is a dead connection.
const POLL_TIMEOUT: Duration = Duration::from_secs(300);

/// Reconnecting after the IDLE connection dropped: the first try soon (a
/// restart takes a second or two), then doubling up to a minute.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// Filing a sent reply: attempts, the wait before the second (four times
/// longer each time), and the time one attempt may take.
const FILE_ATTEMPTS: u32 = 3;
const FILE_FIRST_RETRY: Duration = Duration::from_secs(2);
const FILE_TIMEOUT: Duration = Duration::from_secs(90);
/// A server that does not answer DONE within this is gone.
const DONE_TIMEOUT: Duration = Duration::from_secs(10);

/// IDLE connections per account at most, one per watched folder: servers
/// limit connections per user (Dovecot 10 per user and address by default,
/// Gmail 15), and the polls and the status checks need one each too.
const MAX_IDLE_FOLDERS: usize = 5;
/// How often folders beyond [`MAX_IDLE_FOLDERS`] are asked for `STATUS`.
const STATUS_EVERY: Duration = Duration::from_secs(30);

const TRACK_NONE: u8 = 0;
const TRACK_CONDSTORE: u8 = 1;
const TRACK_QRESYNC: u8 = 2;

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
    /// IDLE blocks its connection and watches one folder, so each watched
    /// folder gets its own, by folder key.
    idle_sessions: Mutex<BTreeMap<String, Session>>,
    /// For the `STATUS` of folders beyond [`MAX_IDLE_FOLDERS`].
    status_session: Mutex<Option<Session>>,
    idle_supported: AtomicU8,
    /// CONDSTORE/QRESYNC as the last connect found them (`TRACK_*`).
    tracking: AtomicU8,
    /// The folders polls read, resolved against the server's `LIST` at
    /// every connect.
    plan: std::sync::Mutex<Arc<FolderPlan>>,
    /// Replies SMTP took, by Message-ID: `check_sent` knows them even when
    /// their copy never reached the sent folder.
    accepted: std::sync::Mutex<BTreeMap<String, SentReply>>,
    /// Folders whose last read failed, by key: logged when the error
    /// first appears, shown as the instance's last error.
    folder_errors: std::sync::Mutex<BTreeMap<String, String>>,
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
            password,
            smtp,
            own_addresses,
            session: Mutex::new(None),
            idle_sessions: Mutex::new(BTreeMap::new()),
            status_session: Mutex::new(None),
            idle_supported: AtomicU8::new(IDLE_UNKNOWN),
            tracking: AtomicU8::new(TRACK_NONE),
            plan: std::sync::Mutex::new(Arc::new(FolderPlan::unresolved(&imap))),
            folder_errors: std::sync::Mutex::new(BTreeMap::new()),
            accepted: std::sync::Mutex::new(BTreeMap::new()),
            imap,
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
        // QRESYNC (RFC 7162) must be enabled per session; it implies
        // CONDSTORE and adds the UIDs expunged since a MODSEQ.
        let mut tracking = TRACK_NONE;
        if caps.has_str("QRESYNC") {
            match session.run_command_and_check_ok("ENABLE QRESYNC").await {
                Ok(()) => tracking = TRACK_QRESYNC,
                Err(e) => {
                    let e = map_imap_error("ENABLE QRESYNC", e);
                    if e.is_retryable() {
                        return Err(e);
                    }
                }
            }
        }
        if tracking == TRACK_NONE && caps.has_str("CONDSTORE") {
            tracking = TRACK_CONDSTORE;
        }
        self.tracking.store(tracking, Ordering::Relaxed);
        self.resolve_folders(&mut session).await?;
        Ok(session)
    }

    fn change_tracking(&self) -> ChangeTracking {
        match self.tracking.load(Ordering::Relaxed) {
            TRACK_QRESYNC => ChangeTracking::Qresync,
            TRACK_CONDSTORE => ChangeTracking::Condstore,
            _ => ChangeTracking::None,
        }
    }

    /// The folders as last resolved (as configured before the first
    /// connect).
    pub fn folder_plan(&self) -> Arc<FolderPlan> {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the server which folders there are (`LIST`, whose answers
    /// carry RFC 6154 special-use attributes where the server has them)
    /// and matches the configured names and the sent folder against them.
    async fn resolve_folders(&self, session: &mut Session) -> Result<(), ConnectorError> {
        use futures::TryStreamExt;
        let listed: Result<Vec<async_imap::types::Name>, _> =
            match session.list(Some(""), Some("*")).await {
                Ok(stream) => stream.try_collect().await,
                Err(e) => Err(e),
            };
        let listed = match listed {
            Ok(names) => names.iter().map(listed_folder).collect::<Vec<_>>(),
            Err(e) => {
                let e = map_imap_error("Listing folders", e);
                if e.is_retryable() {
                    return Err(e);
                }
                tracing::warn!(instance = %self.instance, error = %e, "The server did not list its folders; using the configured names as they are.");
                return Ok(());
            }
        };
        let plan = plan_folders(&self.imap, &listed);
        let mut slot = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        if **slot != plan {
            tracing::info!(instance = %self.instance, folders = %describe(&plan), "IMAP folders resolved.");
        }
        *slot = Arc::new(plan);
        Ok(())
    }

    fn folder_failed(&self, key: &str, error: &str) {
        let mut errors = self
            .folder_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if errors.get(key).map(String::as_str) != Some(error) {
            tracing::warn!(instance = %self.instance, folder = %key, error = %error, "Cannot read this folder; the others are read.");
            errors.insert(key.to_owned(), error.to_owned());
        }
    }

    fn folder_ok(&self, key: &str) {
        let mut errors = self
            .folder_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if errors.remove(key).is_some() {
            tracing::info!(instance = %self.instance, folder = %key, "Folder readable again.");
        }
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
        if self.folder_plan().folders.iter().any(|f| f.wire.is_err()) {
            // A missing folder may have been created since: look again.
            self.resolve_folders(session).await?;
        }
        let plan = self.folder_plan();
        let mut failed: Vec<String> = Vec::new();
        let mut read_any = false;
        for folder in &plan.folders {
            let wire = match &folder.wire {
                Ok(w) => w,
                Err(e) => {
                    self.folder_failed(&folder.key, e);
                    failed.push(e.clone());
                    continue;
                }
            };
            let ctx = ParseContext {
                folder: &folder.key,
                uid: None,
                internal_date: None,
                is_sent_folder: folder.is_sent,
                own_addresses: &self.own_addresses,
                now,
            };
            let sync = match client::sync_folder(
                session,
                &folder.key,
                wire,
                cursors.get(&folder.key).map(String::as_str),
                self.imap.fetch_batch.max(1) as usize,
                self.change_tracking(),
                &ctx,
            )
            .await
            {
                Ok(sync) => sync,
                // The server's refusal of this one folder (gone since the
                // LIST, no right to read it): the others are still read.
                Err(ConnectorError::Other(e)) => {
                    self.folder_failed(&folder.key, &e);
                    failed.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.folder_ok(&folder.key);
            read_any = true;
            batch.messages.extend(sync.batch.messages);
            batch.quarantined.extend(sync.batch.quarantined);
            batch.more |= sync.batch.more;
            if let Some(c) = sync.cursor {
                batch.cursors.insert(folder.key.clone(), c);
            }
        }
        if !read_any && !failed.is_empty() {
            return Err(ConnectorError::Other(failed.join("; ")));
        }
        Ok(batch)
    }

    /// Files a sent reply in the sent folder, as a mail client would: in
    /// the background on a connection of its own, retried a few times;
    /// a copy that cannot be filed is logged, never a reason to resend.
    fn file_in_sent(&self, raw: Vec<u8>) {
        // Before the first connect the plan knows only a configured sent
        // folder; otherwise the filing asks the server's LIST itself.
        let known = sent_of(&self.folder_plan());
        let imap = self.imap.clone();
        let password = self.password.clone();
        let instance = self.instance.clone();
        tokio::spawn(async move {
            let mut delay = FILE_FIRST_RETRY;
            for attempt in 1..=FILE_ATTEMPTS {
                let filed = tokio::time::timeout(
                    FILE_TIMEOUT,
                    append_to_sent(&imap, password.as_ref(), known.clone(), &raw),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectorError::Transient(
                        "appending the reply to the sent folder timed out".into(),
                    ))
                });
                match filed {
                    Ok(()) => return,
                    Err(e) if e.is_retryable() && attempt < FILE_ATTEMPTS => {
                        tracing::debug!(instance = %instance, error = %e, attempt, "Filing the sent reply failed; retrying.");
                        tokio::time::sleep(delay).await;
                        delay *= 4;
                    }
                    Err(e) => {
                        tracing::warn!(instance = %instance, error = %e, "Reply sent but not filed in the sent folder.");
                        return;
                    }
                }
            }
        });
    }

    async fn find_in_sent(
        &self,
        message_id: &str,
    ) -> Result<Option<chrono::DateTime<Utc>>, ConnectorError> {
        let mut slot = self.session.lock().await;
        let (mut session, fresh) = self.checkout(&mut slot).await?;
        let Some((_, folder)) = sent_of(&self.folder_plan()) else {
            *slot = Some(session);
            return Err(ConnectorError::Other(
                "the server has no sent folder and none is configured".into(),
            ));
        };
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

    /// Waits until new mail in any watched folder, `timeout`, or a dropped
    /// connection. Each folder (up to [`MAX_IDLE_FOLDERS`]) waits in IDLE
    /// on a connection of its own, as RFC 2177 allows one mailbox per
    /// IDLE; the rest are asked for their `STATUS` every [`STATUS_EVERY`].
    /// The first change ends every wait (the others send DONE and keep
    /// their connections for the next one).
    async fn idle_wait(
        &self,
        cursors: &Cursors,
        timeout: Duration,
    ) -> Result<bool, ConnectorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let plan = self.folder_plan();
        let mut readable: Vec<(String, String)> = plan
            .folders
            .iter()
            .filter_map(|f| f.wire.as_ref().ok().map(|w| (f.key.clone(), w.clone())))
            .collect();
        if readable.is_empty() {
            readable.push(("INBOX".to_owned(), "INBOX".to_owned()));
        }
        let (idled, rest) = readable.split_at(readable.len().min(MAX_IDLE_FOLDERS));
        let mut pool = self.idle_sessions.lock().await;
        // Folders no longer watched give their connections up.
        pool.retain(|k, _| idled.iter().any(|(key, _)| key == k));
        let mut slots: Vec<Option<Session>> = idled.iter().map(|(k, _)| pool.remove(k)).collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        let waits = idled
            .iter()
            .zip(slots.iter_mut())
            .map(|((key, wire), slot)| {
                let mut stop_rx = stop_rx.clone();
                let stop_tx = &stop_tx;
                async move {
                    let r = self
                        .idle_folder(slot, key, wire, cursors, deadline, &mut stop_rx)
                        .await;
                    if !matches!(r, Ok(false)) {
                        let _ = stop_tx.send(true);
                    }
                    r
                }
            });
        let status = async {
            if rest.is_empty() {
                return Ok(false);
            }
            let r = self
                .status_watch(rest, cursors, deadline, &mut stop_rx.clone())
                .await;
            if !matches!(r, Ok(false)) {
                let _ = stop_tx.send(true);
            }
            r
        };
        let (results, status) = futures::join!(futures::future::join_all(waits), status);
        for ((key, _), slot) in idled.iter().zip(slots) {
            if let Some(s) = slot {
                pool.insert(key.clone(), s);
            }
        }
        let mut changed = false;
        let mut error = None;
        for r in results.into_iter().chain(std::iter::once(status)) {
            match r {
                Ok(c) => changed |= c,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            Some(e) if !changed => Err(e),
            _ => Ok(changed),
        }
    }

    /// One folder's IDLE until a change, `deadline` or `stop`. A drop (a
    /// server restart, a NAT timeout) is reconnected with backoff within
    /// the same wait, and a successful reconnect reports a change: mail
    /// that came while the connection was down raised no EXISTS, so the
    /// daemon polls at once and then waits the time left. A folder the
    /// server refuses to IDLE on waits quietly: the schedule polls it.
    async fn idle_folder(
        &self,
        slot: &mut Option<Session>,
        key: &str,
        wire: &str,
        cursors: &Cursors,
        deadline: tokio::time::Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConnectorError> {
        let mut dropped: Option<ConnectorError> = None;
        let mut delay = RECONNECT_FIRST;
        loop {
            let session = match slot.take() {
                Some(s) => s,
                None => {
                    let opened = tokio::select! {
                        r = self.open() => r,
                        _ = tokio::time::sleep_until(deadline) => return Ok(false),
                        _ = stopped(stop) => return Ok(false),
                    };
                    match opened {
                        Ok(s) if dropped.is_some() => {
                            tracing::info!(instance = %self.instance, folder = %key, "IMAP connection for IDLE re-established.");
                            *slot = Some(s);
                            return Ok(true);
                        }
                        Ok(s) => s,
                        Err(e) if e.is_retryable() => {
                            tracing::debug!(instance = %self.instance, folder = %key, error = %e, retry_in_ms = delay.as_millis() as u64, "IDLE reconnect failed.");
                            tokio::select! {
                                _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)) => {}
                                _ = stopped(stop) => return Ok(false),
                            }
                            if tokio::time::Instant::now() >= deadline {
                                return Ok(false);
                            }
                            delay = (delay * 2).min(RECONNECT_MAX);
                            dropped.get_or_insert(e);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            if self.idle_supported.load(Ordering::Relaxed) != IDLE_YES {
                *slot = Some(session);
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = stopped(stop) => {}
                }
                return Ok(false);
            }
            match self
                .idle_once(session, key, wire, cursors, deadline, stop)
                .await
            {
                Ok((session, changed)) => {
                    *slot = Some(session);
                    return Ok(changed);
                }
                Err(e) if e.is_retryable() => {
                    tracing::info!(instance = %self.instance, folder = %key, error = %e, "IMAP connection for IDLE dropped; reconnecting.");
                    dropped = Some(e);
                    delay = RECONNECT_FIRST;
                }
                Err(ConnectorError::Other(e)) => {
                    // This folder only (gone since the LIST, no right to
                    // read it): the polls report it; the others idle on.
                    tracing::debug!(instance = %self.instance, folder = %key, error = %e, "No IDLE on this folder; it is polled on schedule.");
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = stopped(stop) => {}
                    }
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Folders beyond the IDLE connections: `STATUS` on one more
    /// connection every [`STATUS_EVERY`] until one is behind its cursor.
    async fn status_watch(
        &self,
        folders: &[(String, String)],
        cursors: &Cursors,
        deadline: tokio::time::Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConnectorError> {
        let mut slot = self.status_session.lock().await;
        loop {
            let next = tokio::time::Instant::now() + STATUS_EVERY;
            if next >= deadline {
                // The daemon polls at the deadline anyway.
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = stopped(stop) => {}
                }
                return Ok(false);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stopped(stop) => return Ok(false),
            }
            let mut session = match slot.take() {
                Some(s) => s,
                None => match self.open().await {
                    Ok(s) => s,
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err(e),
                },
            };
            let mut behind = false;
            let mut lost = false;
            for (key, wire) in folders {
                let items = match self.change_tracking() {
                    ChangeTracking::None => "(MESSAGES UIDNEXT UIDVALIDITY)",
                    _ => "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
                };
                let status = match session.status(wire, items).await {
                    Ok(m) => m,
                    Err(e) => match map_imap_error(&format!("STATUS of {key:?}"), e) {
                        ConnectorError::Other(_) => continue,
                        e if e.is_retryable() => {
                            lost = true;
                            break;
                        }
                        e => return Err(e),
                    },
                };
                let stored = cursors.get(key).and_then(|c| FolderCursor::parse(c));
                behind |= is_behind(stored, &status);
            }
            if !lost {
                *slot = Some(session);
            }
            if behind {
                return Ok(true);
            }
        }
    }

    /// One IDLE on a live session, re-issued every [`IDLE_CHUNK`] until
    /// `deadline` or `stop`; the session comes back unless the connection
    /// failed.
    async fn idle_once(
        &self,
        mut session: Session,
        key: &str,
        wire: &str,
        cursors: &Cursors,
        deadline: tokio::time::Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(Session, bool), ConnectorError> {
        let tracking = self.change_tracking();
        let selected = match tracking {
            ChangeTracking::None => session.select(wire).await,
            _ => session.select_condstore(wire).await,
        };
        let mailbox =
            selected.map_err(|e| map_imap_error(&format!("Selecting {key:?} for IDLE"), e))?;
        // Mail that arrived between the last poll and now would not raise
        // an EXISTS during IDLE: answer at once.
        let stored = cursors.get(key).and_then(|c| FolderCursor::parse(c));
        if is_behind(stored, &mailbox) {
            return Ok((session, true));
        }
        tracing::info!(instance = %self.instance, folder = %key, "Waiting for new mail with IMAP IDLE.");
        // What was queued before the SELECT is already accounted for.
        let _ = drain_exists(&mut session);
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline || *stop.borrow() {
                return Ok((session, false));
            }
            let chunk = (deadline - now).min(IDLE_CHUNK);
            let mut idle = session.idle();
            idle.init()
                .await
                .map_err(|e| map_imap_error("Starting IDLE", e))?;
            let outcome = {
                let (wait, _stop) = idle.wait_with_timeout(chunk);
                tokio::select! {
                    r = tokio::time::timeout(chunk, wait) => Some(r),
                    _ = stopped(stop) => None,
                }
            };
            use async_imap::extensions::idle::IdleResponse;
            match &outcome {
                // The stream ended or the server said BYE: the connection
                // is gone, and a DONE would wait on it.
                Some(Ok(Ok(IdleResponse::ManualInterrupt))) => {
                    return Err(ConnectorError::Transient(
                        "the server closed the IDLE connection".into(),
                    ))
                }
                Some(Ok(Ok(IdleResponse::NewData(data))))
                    if matches!(
                        data.parsed(),
                        Response::Data {
                            status: async_imap::imap_proto::Status::Bye,
                            ..
                        }
                    ) =>
                {
                    return Err(ConnectorError::Transient(
                        "the server ended the IDLE connection (BYE)".into(),
                    ))
                }
                Some(Ok(Err(_))) => {
                    if let Some(Ok(Err(e))) = outcome {
                        return Err(map_imap_error("Waiting in IDLE", e));
                    }
                }
                _ => {}
            }
            session = match tokio::time::timeout(DONE_TIMEOUT, idle.done()).await {
                Ok(r) => r.map_err(|e| map_imap_error("Ending IDLE", e))?,
                Err(_) => {
                    return Err(ConnectorError::Transient(
                        "the server did not answer DONE".into(),
                    ))
                }
            };
            if let Some(Ok(Ok(IdleResponse::NewData(data)))) = &outcome {
                match data.parsed() {
                    Response::MailboxData(MailboxDatum::Exists(_)) => return Ok((session, true)),
                    // A flag changed (another client answered, deleted):
                    // with a MODSEQ cursor the poll reads just that.
                    Response::Fetch(..) | Response::Vanished { .. }
                        if tracking != ChangeTracking::None =>
                    {
                        return Ok((session, true))
                    }
                    _ => {}
                }
            }
            // Flag changes, expunges, keepalives, our own timeout, another
            // folder's change: keep waiting until the deadline or the stop.
            // An EXISTS that came with the DONE's completion lands in the
            // unsolicited queue.
            if drain_exists(&mut session) {
                return Ok((session, true));
            }
        }
    }
}

/// Resolves once `stop` is set (never, when its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether a folder (as SELECT or STATUS shows it) changed past the
/// stored cursor: a new UIDVALIDITY, a UIDNEXT beyond the last UID read, a
/// HIGHESTMODSEQ beyond the cursor's (flags changed, mail expunged), or
/// mail in a folder never read.
fn is_behind(stored: Option<FolderCursor>, mailbox: &async_imap::types::Mailbox) -> bool {
    let modseq_moved = |c: &FolderCursor| match (c.modseq, mailbox.highest_modseq) {
        (Some(seen), Some(now)) => now > seen,
        _ => false,
    };
    match (stored, mailbox.uid_validity, mailbox.uid_next) {
        (Some(c), Some(v), _) if c.uidvalidity != v => true,
        (Some(c), _, Some(next)) => next > c.last_uid.saturating_add(1) || modseq_moved(&c),
        (Some(c), _, None) => modseq_moved(&c),
        (None, _, _) => mailbox.exists > 0,
    }
}

/// Appends `raw` to the sent folder (`known`, else the one the server's
/// LIST shows) on a connection of its own.
async fn append_to_sent(
    imap: &ImapConfig,
    password: Option<&SecretString>,
    known: Option<(String, String)>,
    raw: &[u8],
) -> Result<(), ConnectorError> {
    let mut session = connect(imap, password).await?;
    let sent = match known {
        Some(k) => Some(k),
        None => {
            use futures::TryStreamExt;
            let names: Vec<async_imap::types::Name> = session
                .list(Some(""), Some("*"))
                .await
                .map_err(|e| map_imap_error("Listing folders", e))?
                .try_collect()
                .await
                .map_err(|e| map_imap_error("Listing folders", e))?;
            let listed: Vec<ListedFolder> = names.iter().map(listed_folder).collect();
            sent_of(&plan_folders(imap, &listed))
        }
    };
    let Some((key, wire)) = sent else {
        let _ = session.logout().await;
        return Ok(());
    };
    session
        .append(&wire, Some("(\\Seen)"), None, raw)
        .await
        .map_err(|e| map_imap_error(&format!("Appending the reply to {key:?}"), e))?;
    let _ = session.logout().await;
    Ok(())
}

/// The sent folder of a plan: its key and its name on the wire.
fn sent_of(plan: &FolderPlan) -> Option<(String, String)> {
    plan.sent()
        .and_then(|f| Some((f.key.clone(), f.wire.clone().ok()?)))
}

/// `INBOX, Sent = INBOX.Sent (sent), Archive: error` for the log.
fn describe(plan: &FolderPlan) -> String {
    plan.folders
        .iter()
        .map(|f: &PlannedFolder| {
            let sent = if f.is_sent { " (sent)" } else { "" };
            match &f.wire {
                Ok(w) if *w == f.key => format!("{}{sent}", f.key),
                Ok(w) => format!("{} = {w}{sent}", f.key),
                Err(e) => format!("{}: {e}", f.key),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn listed_folder(name: &async_imap::types::Name) -> ListedFolder {
    use async_imap::imap_proto::types::NameAttribute;
    let mut special_use = None;
    let mut selectable = true;
    for a in name.attributes() {
        match a {
            NameAttribute::Sent => special_use = Some(SpecialUse::Sent),
            NameAttribute::Drafts | NameAttribute::Trash | NameAttribute::Junk => {
                special_use = special_use.or(Some(SpecialUse::NotSent))
            }
            NameAttribute::NoSelect => selectable = false,
            NameAttribute::Extension(x) if x.eq_ignore_ascii_case("\\NonExistent") => {
                selectable = false
            }
            _ => {}
        }
    }
    ListedFolder {
        wire: name.name().to_owned(),
        delimiter: name.delimiter().map(str::to_owned),
        special_use,
        selectable,
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
            // The sent folder is known only after LIST; without one,
            // check_sent answers CannotTell.
            check_sent: self.smtp.is_some(),
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        {
            let mut slot = self.session.lock().await;
            // A fresh login proves the credentials, not a cached session.
            *slot = None;
            let mut session = self.open().await?;
            let plan = self.folder_plan();
            tracing::info!(instance = %self.instance, folders = %describe(&plan), "IMAP folders resolved.");
            let mut problems = Vec::new();
            for folder in &plan.folders {
                let opened = match &folder.wire {
                    Ok(wire) => session.examine(wire).await.map(|_| ()).map_err(|e| {
                        map_imap_error(&format!("Opening folder {:?}", folder.key), e)
                    }),
                    Err(e) => Err(ConnectorError::Other(e.clone())),
                };
                match opened {
                    Ok(()) => {}
                    Err(ConnectorError::Other(e)) => problems.push(e),
                    Err(e) => return Err(e),
                }
            }
            *slot = Some(session);
            if !problems.is_empty() {
                return Err(ConnectorError::Other(format!(
                    "{} (resolved: {})",
                    problems.join("; "),
                    describe(&plan)
                )));
            }
        }
        if let Some(smtp) = &self.smtp {
            smtp.check().await?;
        }
        Ok(())
    }

    fn poll_is_read_only(&self) -> bool {
        true // BODY.PEEK: not even \Seen is set
    }

    fn partial_failure(&self) -> Option<String> {
        let errors = self
            .folder_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (!errors.is_empty()).then(|| errors.values().cloned().collect::<Vec<_>>().join("; "))
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
        self.idle_wait(cursors, timeout).await
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
        let sent = SentReply {
            external_id: built.message_id,
            sent_at: built.sent_at,
        };
        // The mail is out. The daemon records that as soon as this
        // returns, before the copy is filed: a sent folder that fails or
        // hangs must not leave the reply's fate unknown (and so sent
        // again after a lookup that finds no copy).
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sent.external_id.clone(), sent.clone());
        self.file_in_sent(raw);
        Ok(sent)
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let Some(smtp) = &self.smtp else {
            return Ok(SentCheck::CannotTell);
        };
        if self.imap.sent_folder.is_none() && self.folder_plan().sent().is_none() {
            // Before the first connect the plan is a guess: connect first.
            let mut slot = self.session.lock().await;
            let (session, _) = self.checkout(&mut slot).await?;
            *slot = Some(session);
            if self.folder_plan().sent().is_none() {
                return Ok(SentCheck::CannotTell);
            }
        }
        let id = reply_message_id(&reply.outbox_id, smtp.from());
        // Taken by SMTP in this process's lifetime, filed or not.
        let accepted = self
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        if let Some(sent) = accepted {
            return Ok(SentCheck::Sent(sent));
        }
        Ok(match self.find_in_sent(&id).await? {
            Some(sent_at) => SentCheck::Sent(SentReply {
                external_id: id,
                sent_at,
            }),
            // The copy is filed after the send: its absence proves nothing
            // (the daemon asks only when the send had started).
            None => SentCheck::CannotTell,
        })
    }

    fn marks_send_start(&self) -> bool {
        true
    }
}
