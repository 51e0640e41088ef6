//! The outbox worker: one sender per instance claims that instance's
//! replies, sends them within its rate limit and records the outcome.
//!
//! Never twice: a reply is in `sending` while it may be on the wire. If the
//! daemon dies there, the reply's lease runs out and the next claim sees
//! `previous_state = "sending"`: the platform is asked whether the reply
//! arrived (`check_sent`) before anything is resent, and a platform that
//! cannot tell gets the reply marked `uncertain` for a human. Whenever the
//! outcome of a call is unknown (a timeout, a store error after a send), the
//! reply is left in `sending` on purpose so that this same check happens.
//!
//! Never lost: a reply leaves `sending` only through `complete_outbox`
//! (sent, retry, failed, uncertain) or `release_outbox` (claimed but never
//! handed to the platform).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use futures::StreamExt;
use hourglass_connector::{ConnectorError, OutgoingReply, SentCheck};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::config::OutboxConfig;
use super::limits::{limiter_for, per_thread_limiter, Limiter};
use crate::daemon::{backoff, Context, Instance};
use crate::deadline::{before, Late};
use crate::store::{OutboxItem, OutboxOutcome, Store, ThreadDetail};

fn enqueued() -> &'static Notify {
    static ENQUEUED: OnceLock<Notify> = OnceLock::new();
    ENQUEUED.get_or_init(Notify::new)
}

/// Wakes the outbox senders of this process (a reply was just queued).
pub(crate) fn notify_enqueued() {
    enqueued().notify_waiters();
}

/// The outbox worker, run by the daemon beside the poll loops.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(run(ctx, stop))
}

async fn run(ctx: Context, stop: CancellationToken) {
    // Unique per process and generation: `release_outbox` only touches rows
    // this worker claimed.
    let worker_id = format!(
        "{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    );
    // SQLite has one writer, and a deferred transaction that reads before it
    // writes fails at once when another commit slipped in between: the
    // senders of this process take turns for their writes.
    let writes = Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    for inst in ctx.instances.iter() {
        let name = inst.config.name().to_owned();
        if !inst.connector.capabilities().send {
            debug!(instance = %name, "The connector cannot send; no outbox sender.");
            continue;
        }
        let limit = inst.config.send_quota();
        let sender = Arc::new(Sender {
            store: ctx.store.clone(),
            inst: inst.clone(),
            send_limit: limiter_for(&name, "send", limit),
            check_limit: limiter_for(&name, "check", limit),
            per_thread: per_thread_limiter(
                inst.config
                    .settings()
                    .ok()
                    .and_then(|s| s.per_thread_quota()),
            ),
            name,
            worker_id: worker_id.clone(),
            config: ctx.config.outbox.clone(),
            min_backoff: ctx.config.daemon.min_backoff.0,
            max_backoff: ctx.config.daemon.max_backoff.0,
            writes: writes.clone(),
            in_flight: tokio::sync::Semaphore::new(ctx.config.outbox.concurrency.max(1)),
            pending: std::sync::Mutex::new(Vec::new()),
            last_record: std::sync::Mutex::new(Instant::now()),
            auth_failed: AtomicBool::new(false),
            put_backs: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            progress: Notify::new(),
            leases: ctx.leases.clone(),
            app: ctx.config.clone(),
        });
        tasks.spawn(sender.run(stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hourglass".into())
}

/// The sender of one instance.
struct Sender {
    store: Arc<dyn Store>,
    inst: Instance,
    name: String,
    send_limit: Arc<Limiter>,
    check_limit: Arc<Limiter>,
    /// Keyed by thread, where the platform limits each conversation too.
    per_thread: Option<governor::DefaultKeyedRateLimiter<i64>>,
    worker_id: String,
    config: OutboxConfig,
    min_backoff: Duration,
    max_backoff: Duration,
    writes: Arc<tokio::sync::Mutex<()>>,
    /// Calls to the platform under way (`concurrency` permits).
    in_flight: tokio::sync::Semaphore,
    /// Outcomes waiting for the next write turn (see `complete`).
    pending: std::sync::Mutex<Vec<Pending>>,
    /// When the last group of outcomes was recorded.
    last_record: std::sync::Mutex<Instant>,
    /// The platform refused our credentials: nothing more is sent until the
    /// configuration is reloaded.
    auth_failed: AtomicBool,
    /// Claimed replies given back unsent, to notice a batch that made no
    /// progress (the store failing) and not spin on it.
    put_backs: AtomicUsize,
    /// Claimed replies not yet done with, over all batches under way.
    outstanding: AtomicUsize,
    /// Notified whenever one of them is done.
    progress: Notify,
    /// The instances this daemon holds the lease of: only the holder sends
    /// an instance's replies, so that several daemons together keep to the
    /// platform's rate limit.
    leases: tokio::sync::watch::Receiver<crate::daemon::HeldLeases>,
    /// The whole configuration, for the admin alert's routing.
    app: Arc<crate::config::Config>,
}

/// An outcome waiting to be recorded, and the sender waiting for it.
struct Pending {
    id: String,
    outcome: OutboxOutcome,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What to do with a reply after looking for it on the platform.
enum Checked {
    Send,
    /// Not to be sent; the outcome to record, if any.
    Done(Option<OutboxOutcome>),
}

/// Outcomes recorded within this long of the last group wait until it has
/// passed, to be recorded together (see `Sender::complete`)...
const GATHER: Duration = Duration::from_millis(10);
/// ... unless this many are waiting already.
const GATHER_MOST: usize = 100;

/// How long a sender whose credentials were refused waits before it
/// tries again (at least; `max_backoff` when that is longer).
const AUTH_RETRY: Duration = Duration::from_secs(30);

impl Sender {
    fn lease(&self) -> Duration {
        self.config.lease.0.max(Duration::from_secs(1))
    }

    fn halted(&self, stop: &CancellationToken) -> bool {
        stop.is_cancelled() || self.auth_failed.load(Ordering::Relaxed)
    }

    /// How many replies to hold claimed at once (over the batches under
    /// way): what the rate limit lets us send in half a lease, so that no
    /// claimed reply waits until its lease runs out; and at most about a
    /// second's worth (200 at least), so that a claim stays a short
    /// transaction. The next claim comes when half of them are done.
    fn claim_limit(&self) -> i64 {
        let half_lease = self.lease().as_secs_f64() / 2.0;
        let (n, most) = match self.send_limit.config() {
            Some(c) => (
                f64::from(c.burst.div_ceil(2)) + c.per_second * half_lease,
                (c.per_second.ceil() as i64).clamp(200, 2000),
            ),
            None => ((self.config.concurrency.max(1) * 16) as f64, 200),
        };
        (n.floor() as i64).clamp(1, most)
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let poll = self.config.poll_interval.0.max(Duration::from_millis(10));
        info!(
            instance = %self.name,
            rate_limit = ?self.send_limit.config(),
            "Outbox sender started."
        );
        // Batches being sent. The next batch is claimed while the current
        // one still has replies to send, so that sending never stops for
        // the claim: the rate limiter's burst covers only a few
        // milliseconds of a fast quota, and a pause between two batches (the
        // last outcomes, the claim, the threads' read) cost 5 to 8 % of
        // 1,000 sends a second.
        let mut batches: tokio::task::JoinSet<bool> = tokio::task::JoinSet::new();
        loop {
            loop {
                if self.halted(&stop) {
                    break;
                }
                // A batch that gave every reply back unsent (the store
                // failing): wait before claiming them again.
                let mut stalled = false;
                while let Some(done) = batches.try_join_next() {
                    stalled |= done.unwrap_or(false);
                }
                if stalled {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
                // The platform asked us to wait: claiming now would only make
                // replies sit out their lease.
                if let Some(until) = self.send_limit.paused_until() {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep_until(until) => {}
                    }
                    continue;
                }
                if !self.leases.borrow().contains_key(&self.name) {
                    let mut leases = self.leases.clone();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = leases.changed() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
                // Claimed ahead, but not more than one claim's worth: the
                // next claim waits until half the replies at hand are done.
                let limit = self.claim_limit();
                let at_hand = self.outstanding.load(Ordering::Acquire);
                let half = (limit as usize).div_ceil(2);
                if at_hand >= half {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.outstanding_at_most(half - 1) => {}
                    }
                    continue;
                }
                // Registered before the claim, so that a reply queued between an
                // empty claim and the wait still wakes us.
                let notified = enqueued().notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let claimed_at = Instant::now();
                let claimed = {
                    let _w = self.writes.lock().await;
                    let _busy = crate::watchdog::busy(format!("claiming replies of {}", self.name));
                    self.store
                        .claim_outbox_for(
                            &self.name,
                            &self.worker_id,
                            self.lease(),
                            (limit - at_hand as i64).max(1),
                            Utc::now(),
                        )
                        .await
                };
                let items = match claimed {
                    Ok(items) => items,
                    Err(e) => {
                        warn!(instance = %self.name, error = %e, "Cannot claim replies from the outbox; trying again.");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(poll) => {}
                        }
                        continue;
                    }
                };
                if items.is_empty() {
                    // Replies still queued may wait behind an earlier reply of
                    // their thread that is being sent: try again once a
                    // quarter of the replies at hand are done.
                    let fewer = at_hand.saturating_sub((limit as usize / 4).max(1));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = self.outstanding_at_most(fewer), if at_hand > 0 => {}
                    }
                    continue;
                }
                let claimed = items.len();
                self.outstanding.fetch_add(claimed, Ordering::AcqRel);
                let me = self.clone();
                let stop = stop.clone();
                batches.spawn(async move {
                    let before = me.put_backs.load(Ordering::Relaxed);
                    me.send_batch(items, claimed_at, &stop).await;
                    // Counts the put-backs of concurrent batches too: at
                    // worst a pause of `poll` that was not needed.
                    me.put_backs.load(Ordering::Relaxed) - before >= claimed
                });
            }
            // Every claimed reply is sent, recorded or given back before the
            // sender stops or waits.
            while batches.join_next().await.is_some() {}
            if stop.is_cancelled() {
                break;
            }
            // Credentials refused: quiet for a while (no hammering an account
            // whose token is refused), then one more try. A reload or restart
            // tries at once; this try is for a platform's passing refusal and
            // a secret renewed behind the same reference, which the chaos run
            // showed would otherwise leave replies queued for good.
            let delay = self.max_backoff.max(AUTH_RETRY);
            info!(instance = %self.name, retry_in_ms = delay.as_millis() as u64, "Sending waits for the credentials to be accepted again.");
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            self.auth_failed.store(false, Ordering::Relaxed);
        }
        debug!(instance = %self.name, "Outbox sender stopped.");
    }

    /// Waits until at most `n` claimed replies are not yet done.
    async fn outstanding_at_most(&self, n: usize) {
        loop {
            let done = self.progress.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.outstanding.load(Ordering::Acquire) <= n {
                return;
            }
            done.await;
        }
    }

    /// One claimed reply is done with (sent, recorded, given back or left
    /// for the check after its lease).
    fn one_done(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.progress.notify_waiters();
    }

    /// Sends a claimed batch: threads concurrently, the replies of one
    /// thread in order.
    async fn send_batch(
        &self,
        items: Vec<OutboxItem>,
        claimed_at: Instant,
        stop: &CancellationToken,
    ) {
        let mut groups: Vec<(i64, Vec<OutboxItem>)> = Vec::new();
        let mut index: HashMap<i64, usize> = HashMap::new();
        for item in items {
            match index.get(&item.thread_id) {
                Some(&i) => groups[i].1.push(item),
                None => {
                    index.insert(item.thread_id, groups.len());
                    groups.push((item.thread_id, vec![item]));
                }
            }
        }
        // The threads of the whole batch in two reads, not two per reply.
        let ids: Vec<i64> = groups.iter().map(|(id, _)| *id).collect();
        let details = match self.store.threads_for_reply(&ids, Utc::now()).await {
            Ok(d) => d,
            Err(e) => {
                warn!(instance = %self.name, error = %e, "Cannot read the threads of claimed replies; trying again.");
                for item in groups.iter().flat_map(|(_, items)| items) {
                    self.put_back(item, item.previous_state != "sending").await;
                    self.one_done();
                }
                return;
            }
        };
        let details = &details;
        futures::stream::iter(groups)
            // Every thread of the batch at once: `in_flight` keeps the
            // platform's calls to `concurrency`, and a thread whose reply
            // is being recorded does not hold a place another could send in.
            .for_each_concurrent(None, |(thread_id, items)| async move {
                let detail = details.get(&thread_id);
                for item in &items {
                    self.process(item, detail, claimed_at, stop).await;
                    self.one_done();
                }
            })
            .await;
        if let Some(per_thread) = &self.per_thread {
            // Forget conversations whose bucket is full again.
            per_thread.retain_recent();
        }
    }

    /// Sends one reply and records how that ended. The platform sees at
    /// most `concurrency` calls of this instance at once (`in_flight`);
    /// the outcome is recorded after the call has given its place up, so
    /// that the next send never waits for this one's commit.
    async fn process(
        &self,
        item: &OutboxItem,
        detail: Option<&ThreadDetail>,
        claimed_at: Instant,
        stop: &CancellationToken,
    ) {
        let outcome = {
            // Never closed: an error cannot happen, and would only lift the bound.
            let _in_flight = self.in_flight.acquire().await.ok();
            self.attempt(item, detail, claimed_at, stop).await
        };
        if let Some(outcome) = outcome {
            self.complete(item, outcome).await;
        }
    }

    /// Sends one reply, or finds out it must not be sent now: the outcome
    /// to record, if any (a reply put back, or left in `sending` on
    /// purpose, has none).
    async fn attempt(
        &self,
        item: &OutboxItem,
        detail: Option<&ThreadDetail>,
        claimed_at: Instant,
        stop: &CancellationToken,
    ) -> Option<OutboxOutcome> {
        let lease = self.lease();
        // A send starts in the first half of the lease and must end before
        // the lease does, or another claim could take the reply meanwhile.
        let start_by = claimed_at + lease / 2;
        let finish_by = claimed_at + lease - lease / 10;
        let recovering = item.previous_state == "sending";
        if self.halted(stop) || Instant::now() >= start_by {
            self.put_back(item, !recovering).await;
            return None;
        }
        let Some(detail) = detail else {
            return Some(OutboxOutcome::Failed {
                error: format!("Thread {} no longer exists", item.thread_id),
            });
        };
        let reply = match build_reply(item, detail) {
            Ok(r) => r,
            Err(error) => return Some(OutboxOutcome::Failed { error }),
        };
        // A platform that cannot prove a reply absent (SMTP) is asked only
        // when the interrupted attempt had started its send: one that
        // never did cannot have arrived.
        let marks = self.inst.connector.marks_send_start();
        if recovering && (item.send_started || !marks) {
            match self.check(item, &reply, start_by, finish_by, stop).await {
                Checked::Done(outcome) => return outcome,
                Checked::Send => {}
            }
        }
        // Counted as under way until the platform answered (`_call`).
        let ready = tokio::select! {
            call = async {
                if let Some(per_thread) = &self.per_thread {
                    per_thread.until_key_ready(&item.thread_id).await;
                }
                self.send_limit.acquire_call().await
            } => Some(call),
            _ = tokio::time::sleep_until(start_by) => None,
            _ = stop.cancelled() => None,
        };
        // Not handed to the platform (and, when recovering, known to be
        // absent from it): back in the queue as it was.
        let Some(_call) = ready.filter(|_| !self.halted(stop)) else {
            self.put_back(item, true).await;
            return None;
        };
        if marks {
            let marked = {
                let _w = self.writes.lock().await;
                self.store
                    .mark_send_started(&item.id, &self.worker_id, Utc::now())
                    .await
            };
            if let Err(e) = marked {
                // Not sent: without the mark a crash could send it twice.
                warn!(instance = %self.name, reply = %item.id, error = %e, "Cannot record that a reply's send starts; it is not sent now and is claimed again.");
                self.put_back(item, true).await;
                return None;
            }
        }
        let busy = crate::watchdog::busy(format!("sending a reply of {}", self.name));
        let connector = &self.inst.connector;
        let send = async {
            match &item.template {
                // The platform may have an approved template of that name
                // (WhatsApp), filled from the thread's variables.
                Some(name) => {
                    let vars = super::template_vars(&detail.thread, &[]);
                    connector.send_templated(&reply, name, &vars).await
                }
                None => connector.send_reply(&reply).await,
            }
        };
        let sent = before(finish_by, send).await;
        drop(busy);
        match sent {
            Err(Late::BeforeStart) => {
                // The daemon was held up (stopped, starved) between the rate
                // limit and the send: the lease may be gone and another
                // daemon may be checking this reply. Nothing was handed to
                // the platform, so it goes back as it was.
                warn!(instance = %self.name, reply = %item.id, "A reply's lease ran short before it could be sent; not sent now, it goes back to the queue.");
                self.put_back(item, true).await;
                None
            }
            Err(Late::Midway) => {
                warn!(
                    instance = %self.name,
                    reply = %item.id,
                    "The platform did not answer in time; whether the reply arrived is unknown. It stays in sending and is looked up on the platform after its lease."
                );
                None
            }
            Ok(Ok(sent)) => {
                info!(instance = %self.name, reply = %item.id, thread = item.thread_id, external_id = %sent.external_id, "Reply sent.");
                Some(OutboxOutcome::Sent {
                    external_id: sent.external_id,
                    sent_at: sent.sent_at,
                })
            }
            // The platform answered, but not in a form we can read (a
            // gateway's HTML page with 200, a cut-off body): the reply may
            // well have arrived. Found by the chaos run, where such replies
            // were marked failed although the platform had them, inviting
            // an agent to send them again. Like a send that timed out, it
            // stays in sending and is looked up on the platform.
            Ok(Err(ConnectorError::BadData { reason, .. })) => {
                warn!(
                    instance = %self.name,
                    reply = %item.id,
                    error = %reason,
                    "The platform's answer to a reply cannot be read; whether the reply arrived is unknown. It stays in sending and is looked up on the platform after its lease."
                );
                None
            }
            Ok(Err(e)) => Some(self.send_failed(item, e).await),
        }
    }

    /// After a crash mid-send: is the reply on the platform?
    async fn check(
        &self,
        item: &OutboxItem,
        reply: &OutgoingReply,
        start_by: Instant,
        finish_by: Instant,
        stop: &CancellationToken,
    ) -> Checked {
        let ready = tokio::select! {
            _ = self.check_limit.acquire() => true,
            _ = tokio::time::sleep_until(start_by) => false,
            _ = stop.cancelled() => false,
        };
        if !ready {
            // Still unknown; it stays in sending and is checked next time.
            return Checked::Done(None);
        }
        let found = before(finish_by, self.inst.connector.check_sent(reply))
            .await
            .unwrap_or_else(|_| {
                Err(ConnectorError::Transient(
                    "the platform did not answer the check in time".into(),
                ))
            });
        match found {
            Ok(SentCheck::Sent(sent)) => {
                info!(instance = %self.name, reply = %item.id, external_id = %sent.external_id, "A reply interrupted by a stop is on the platform; recorded as sent, not resent.");
                Checked::Done(Some(OutboxOutcome::Sent {
                    external_id: sent.external_id,
                    sent_at: sent.sent_at,
                }))
            }
            Ok(SentCheck::NotSent) => {
                info!(instance = %self.name, reply = %item.id, "A reply interrupted by a stop is not on the platform; sending it.");
                Checked::Send
            }
            Ok(SentCheck::CannotTell) => {
                warn!(instance = %self.name, reply = %item.id, "A reply was interrupted mid-send and the platform cannot tell whether it arrived; marked uncertain for a human.");
                Checked::Done(Some(OutboxOutcome::Uncertain {
                    error: format!(
                        "hourglass stopped while sending this reply and {} cannot tell whether it arrived; check the conversation on the platform before sending it again",
                        self.inst.connector.kind()
                    ),
                }))
            }
            Err(e) => {
                if let ConnectorError::RateLimited {
                    retry_after: Some(d),
                } = &e
                {
                    self.check_limit.pause_until(Instant::now() + *d);
                }
                let attempt = item.attempts + 1;
                if attempt >= i64::from(self.config.max_attempts) {
                    warn!(instance = %self.name, reply = %item.id, error = %e, "Cannot find out whether an interrupted reply arrived; marked uncertain for a human.");
                    Checked::Done(Some(OutboxOutcome::Uncertain {
                        error: format!(
                            "hourglass stopped while sending this reply and could not check it after {attempt} attempts: {e}"
                        ),
                    }))
                } else {
                    warn!(instance = %self.name, reply = %item.id, error = %e, "Cannot check whether an interrupted reply arrived; it stays in sending and is checked again after its lease.");
                    Checked::Done(None)
                }
            }
        }
    }

    /// What to record after the platform refused a reply or failed.
    async fn send_failed(&self, item: &OutboxItem, e: ConnectorError) -> OutboxOutcome {
        let attempt = item.attempts + 1;
        let failures = u32::try_from(attempt).unwrap_or(u32::MAX);
        let now = Utc::now();
        let at =
            |d: Duration| now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        let outcome = match &e {
            ConnectorError::RateLimited { retry_after } => {
                let delay = retry_after
                    .unwrap_or_else(|| backoff(failures, self.min_backoff, self.max_backoff));
                // The whole instance waits, not just this reply: the platform
                // counts every call against the same quota.
                self.send_limit.pause_until(Instant::now() + delay);
                warn!(instance = %self.name, reply = %item.id, retry_in_ms = delay.as_millis() as u64, "The platform asked us to slow down; sending pauses for this instance.");
                OutboxOutcome::Retry {
                    error: e.to_string(),
                    at: at(delay),
                }
            }
            ConnectorError::Transient(_) if attempt >= i64::from(self.config.max_attempts) => {
                warn!(instance = %self.name, reply = %item.id, attempts = attempt, error = %e, "Giving up on a reply after repeated failures; marked failed.");
                OutboxOutcome::Failed {
                    error: format!("Gave up after {attempt} attempts: {e}"),
                }
            }
            ConnectorError::Transient(_) => {
                let delay = backoff(failures, self.min_backoff, self.max_backoff);
                warn!(instance = %self.name, reply = %item.id, attempts = attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "Sending failed; retrying later.");
                OutboxOutcome::Retry {
                    error: e.to_string(),
                    at: at(delay),
                }
            }
            ConnectorError::Auth(_) => {
                self.auth_failed.store(true, Ordering::Relaxed);
                error!(instance = %self.name, error = %e, "Credentials refused while sending; replies of this instance wait in the outbox until the credentials are accepted again (tried every 30 s, and at once on a reload).");
                if let Err(se) = self
                    .store
                    .set_instance_state(&self.name, "auth_failed")
                    .await
                {
                    warn!(instance = %self.name, error = %se, "Cannot record the instance state.");
                }
                // The same one alert per episode as a refused poll.
                if let Err(se) = crate::alerts::admin::raise_auth_alert(
                    &self.app,
                    self.store.as_ref(),
                    &self.name,
                    self.inst.connector.kind(),
                    &self.inst.clocking.channel,
                    &e.to_string(),
                    now,
                )
                .await
                {
                    warn!(instance = %self.name, error = %se, "Cannot queue the admin alert.");
                }
                OutboxOutcome::Retry {
                    error: format!("Not sent yet: {e}"),
                    at: now,
                }
            }
            ConnectorError::Refused(_)
            | ConnectorError::BadData { .. }
            | ConnectorError::Other(_) => {
                warn!(instance = %self.name, reply = %item.id, thread = item.thread_id, error = %e, "The platform refused a reply; marked failed and shown on the thread.");
                OutboxOutcome::Failed {
                    error: e.to_string(),
                }
            }
        };
        outcome
    }

    /// Records an outcome, retrying briefly on store errors. If it still
    /// cannot be written, the reply stays in `sending` and its outcome is
    /// looked up on the platform after the lease.
    ///
    /// Outcomes are committed in groups: while one sender holds the write
    /// turn, the outcomes of the others gather in `pending`, and the next
    /// to take the turn records all of them in one transaction. Under load
    /// a group is recorded at most every `GATHER`, so that one commit
    /// serves many replies; a lone outcome is recorded at once.
    async fn complete(&self, item: &OutboxItem, outcome: OutboxOutcome) {
        const TRIES: u64 = 6;
        for attempt in 1..=TRIES {
            let (done, mut result) = tokio::sync::oneshot::channel();
            lock(&self.pending).push(Pending {
                id: item.id.clone(),
                outcome: outcome.clone(),
                done,
            });
            // Whoever holds the write turn next records ours too: no need
            // to wait for a turn of our own then.
            let recorded = tokio::select! {
                biased;
                r = &mut result => Some(r),
                _w = self.writes.lock() => {
                    // Under load (the last group was recorded moments
                    // ago), the outcomes gather a few milliseconds longer:
                    // each statement is a hand-off to the store's thread,
                    // and groups of two or three replies made those
                    // hand-offs most of the CPU a reply cost at 1,000 sends
                    // a second. Sends go on meanwhile.
                    let wait = GATHER.saturating_sub(lock(&self.last_record).elapsed());
                    if !wait.is_zero() && lock(&self.pending).len() < GATHER_MOST {
                        tokio::time::sleep(wait).await;
                    }
                    let batch = std::mem::take(&mut *lock(&self.pending));
                    if !batch.is_empty() {
                        self.record(batch).await;
                        *lock(&self.last_record) = Instant::now();
                    }
                    None
                }
            };
            let result = match recorded {
                Some(r) => r,
                None => result.await,
            };
            match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) if attempt < TRIES => {
                    debug!(reply = %item.id, error = %e, "Cannot record a reply's outcome yet; retrying.");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Ok(Err(e)) => warn!(
                    instance = %self.name,
                    reply = %item.id,
                    error = %e,
                    "Cannot record a reply's outcome; it stays in sending and is looked up on the platform after its lease."
                ),
                // The sender that took our outcome is gone (shutdown).
                Err(_) => return,
            }
        }
    }

    /// Writes a group of outcomes: in one transaction, or, if that fails,
    /// one by one, so that one bad entry does not hold back the others.
    /// The caller holds the write turn.
    async fn record(&self, batch: Vec<Pending>) {
        let clocking = &self.inst.clocking;
        let all: Vec<(&str, &OutboxOutcome)> =
            batch.iter().map(|p| (p.id.as_str(), &p.outcome)).collect();
        let together = self.store.complete_outbox_many(&all, clocking).await;
        if together.is_ok() || batch.len() == 1 {
            let result = together.map_err(|e| e.to_string());
            for p in batch {
                let _ = p.done.send(result.clone());
            }
            return;
        }
        for p in batch {
            let result = self
                .store
                .complete_outbox(&p.id, &p.outcome, clocking)
                .await
                .map_err(|e| e.to_string());
            let _ = p.done.send(result);
        }
    }

    /// Gives back a claimed reply that was not handed to the platform.
    /// `known_unsent` is false for a reply whose earlier send is still
    /// unexplained: that one stays in `sending` so the next claim checks it.
    async fn put_back(&self, item: &OutboxItem, known_unsent: bool) {
        self.put_backs.fetch_add(1, Ordering::Relaxed);
        if !known_unsent {
            return;
        }
        let result = {
            let _w = self.writes.lock().await;
            self.store.release_outbox(&item.id, &self.worker_id).await
        };
        if let Err(e) = result {
            // Harmless: the lease runs out and the reply is claimed again.
            debug!(reply = %item.id, error = %e, "Cannot release a claimed reply.");
        }
    }
}

/// The reply as the connector needs it: addressed to the last inbound
/// message's `reply_to` (else the thread's), answering its `meta`.
fn build_reply(item: &OutboxItem, detail: &ThreadDetail) -> Result<OutgoingReply, String> {
    let last_inbound = detail
        .messages
        .iter()
        .rev()
        .find(|m| m.direction == "inbound");
    let to = last_inbound
        .and_then(|m| m.reply_to.clone())
        .or_else(|| detail.thread.reply_to.clone())
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            "The thread has no address to reply to (no customer message carries one)".to_owned()
        })?;
    let subject = last_inbound
        .and_then(|m| m.subject.clone())
        .or_else(|| detail.thread.subject.clone())
        .map(|s| hourglass_connector::reply_subject(&s));
    Ok(OutgoingReply {
        outbox_id: item.id.clone(),
        thread_key: detail.thread.thread_key.clone(),
        to,
        subject,
        text: item.body.clone(),
        in_reply_to_meta: last_inbound
            .map(|m| m.meta.clone())
            .unwrap_or(serde_json::Value::Null),
        order_id: detail.thread.order_id.clone(),
    })
}
