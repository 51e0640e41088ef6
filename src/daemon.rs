//! The daemon: one poll loop per instance on its cron schedule, reloading
//! on SIGHUP and stopping cleanly on SIGTERM/SIGINT.
//!
//! Work is grouped in *generations*: everything started from one config.
//! A reload builds the next generation from the new file first; only when
//! that succeeds is the old one stopped (letting in-flight polls finish) and
//! the new one started. A bad file leaves the old generation running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use hourglass_connector::{Connector, ConnectorError};
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock;
use crate::config::{Config, InstanceConfig};
use crate::store::{
    plan_leases, Clocking, DaemonInfo, Fence, MigrationStore, PollOutcome, SqlStore, Store,
    StoreError,
};

/// What the outside world asks of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Reload,
    Shutdown,
}

/// Opens the store named in `config` and applies pending migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<SqlStore>> {
    let password = match &config.store.password {
        Some(r) => Some(r.resolve().context("Cannot read store.password")?),
        None => None,
    };
    let store = SqlStore::connect(
        &config.store.url,
        password.as_ref(),
        config.store.max_connections,
    )
    .await
    .with_context(|| {
        format!(
            "Cannot open the store at {}",
            crate::store::sql_redact(&config.store.url)
        )
    })?;
    store.migrate().await.context("Cannot migrate the store")?;
    Ok(Arc::new(store))
}

/// One instance, ready to poll.
#[derive(Clone)]
pub struct Instance {
    pub config: InstanceConfig,
    pub connector: Arc<dyn Connector>,
    pub clocking: Clocking,
    pub schedule: cron::Schedule,
}

/// Builds every enabled instance of `config`. Any failure fails the whole
/// set, so a reload never half-applies.
/// The alert points of the configured thresholds, plus the breach.
pub fn alert_points(config: &Config) -> Vec<clock::Threshold> {
    clock::thresholds(
        &config
            .clock
            .thresholds
            .iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
    )
}

/// The clocking of a thread of `instance` on `channel`, from config alone
/// (no connector is built). An instance no longer configured falls back to
/// the channel's policy and the default window.
pub fn clocking_for(config: &Config, instance: &str, channel: &str) -> Clocking {
    let policy = match config.instance(instance) {
        Some(i) => i.policy(&config.clock, channel),
        None => {
            let p = config.clock.channels.get(channel);
            clock::Policy {
                window: p
                    .and_then(|p| p.window)
                    .unwrap_or(config.clock.window)
                    .chrono(),
                business_hours: p.and_then(|p| p.business_hours.clone()),
            }
        }
    };
    Clocking {
        channel: channel.to_owned(),
        policy,
        points: alert_points(config),
    }
}

pub fn build_instances(config: &Config) -> anyhow::Result<Vec<Instance>> {
    let points = alert_points(config);
    let mut out = Vec::new();
    for inst in config.instances.iter().filter(|i| i.enabled) {
        let connector = inst.build_connector().map_err(anyhow::Error::msg)?;
        let channel = connector.channel().to_owned();
        let schedule = inst.cron_schedule().map_err(anyhow::Error::msg)?;
        out.push(Instance {
            clocking: Clocking {
                policy: inst.policy(&config.clock, &channel),
                channel,
                points: points.clone(),
            },
            config: inst.clone(),
            connector,
            schedule,
        });
    }
    Ok(out)
}

/// The clocking of every configured instance by name (also disabled ones:
/// their threads still exist).
pub fn clockings(config: &Config, instances: &[Instance]) -> HashMap<String, Clocking> {
    let disabled = config.instances.iter().filter(|i| !i.enabled).map(|i| {
        let clocking = clocking_for(config, i.name(), &i.channel());
        (i.name().to_owned(), clocking)
    });
    instances
        .iter()
        .map(|i| (i.config.name().to_owned(), i.clocking.clone()))
        .chain(disabled)
        .collect()
}

/// Backoff before retry number `failures` (1-based): doubling from `min`,
/// capped at `max`, with jitter so that instances failing together do not
/// retry together.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let jitter = rand::rng().random_range(0.5..=1.0);
    base.mul_f64(jitter).max(Duration::from_millis(100))
}

/// How many polls a single pass makes at most when the connector keeps
/// saying there is more: a guard against a connector that never finishes.
const MAX_ROUNDS: usize = 1000;

/// Polls an instance until it has nothing more, committing each batch with
/// its cursor. Returns the number of new messages.
///
/// When the connector's polls are read-only, the next batch is fetched (on
/// another task) while this one is stored, from the cursors this batch
/// moves to: the same polls, overlapped. Its messages still only count once
/// their batch is committed.
pub async fn poll_instance(store: &dyn Store, inst: &Instance) -> Result<usize, PollError> {
    poll_instance_fenced(store, inst, None).await
}

/// [`poll_instance`], committing each batch only while the instance's lease
/// is still held with `fence` (when given).
pub async fn poll_instance_fenced(
    store: &dyn Store,
    inst: &Instance,
    fence: Option<&Fence>,
) -> Result<usize, PollError> {
    let name = inst.config.name();
    let read_only = inst.connector.poll_is_read_only();
    let mut total = 0;
    let mut cursors = store.cursors(name).await.map_err(PollError::Store)?;
    let mut batch = inst
        .connector
        .poll(&cursors)
        .await
        .map_err(PollError::Connector)?;
    for round in 1..=MAX_ROUNDS {
        let more = batch.more && round < MAX_ROUNDS;
        // The cursors once this batch is committed (scopes it does not name
        // keep their value).
        let mut after = cursors.clone();
        after.extend(batch.cursors.clone());
        let next = (more && read_only).then(|| {
            let connector = inst.connector.clone();
            let from = after.clone();
            tokio::spawn(async move { connector.poll(&from).await })
        });
        let report = store
            .ingest_fenced(name, &batch, &inst.clocking, fence)
            .await
            .map_err(PollError::Store)?;
        if report.quarantined > 0 {
            warn!(
                instance = name,
                quarantined = report.quarantined,
                "Some items could not be read and were quarantined with their raw bytes."
            );
        }
        total += report.inserted;
        if !more {
            break;
        }
        batch = match next {
            Some(task) => task
                .await
                .map_err(|e| PollError::Connector(ConnectorError::Other(format!("poll: {e}"))))?,
            None => {
                after = store.cursors(name).await.map_err(PollError::Store)?;
                inst.connector.poll(&after).await
            }
        }
        .map_err(PollError::Connector)?;
        cursors = after;
    }
    if let Some(problem) = inst.connector.partial_failure() {
        // Part of the instance failed (an IMAP folder that does not
        // exist): recorded as its last error, then the caller's Ok marks
        // it running, so `connectors list` shows both.
        let outcome = PollOutcome::Failed {
            kind: "partial".into(),
            error: problem,
            failures: 0,
            next_poll_at: Utc::now(),
        };
        if let Err(e) = store.record_poll(name, &outcome).await {
            warn!(instance = name, error = %e, "Cannot record poll status.");
        }
    }
    Ok(total)
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Connector(ConnectorError),
    #[error(transparent)]
    Store(crate::store::StoreError),
}

impl PollError {
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Connector(e) => e.kind(),
            PollError::Store(_) => "store",
        }
    }
}

/// The poll loop of one instance.
async fn poll_loop(
    store: Arc<dyn Store>,
    inst: Instance,
    config: Arc<Config>,
    stop: CancellationToken,
    ingested: Arc<Notify>,
    mut leases: watch::Receiver<HeldLeases>,
    daemon: String,
) {
    let name = inst.config.name().to_owned();
    let caps = inst.connector.capabilities();
    let mut failures: u32 = 0;
    // A granted token's expiry is looked at once an hour, not every poll.
    let mut expiry_checked: Option<std::time::Instant> = None;
    let mut next_at = tokio::time::Instant::now(); // first poll right away
    let mut polled_with: Option<i64> = None;
    // Consecutive failures of `wait_for_change` (a push feed's long poll).
    let mut watch_failures: u32 = 0;
    loop {
        // Only the holder of the instance's lease polls it; a lease (re)taken
        // means a poll right away.
        let token = loop {
            if let Some(t) = leases.borrow_and_update().get(&name).copied() {
                break Some(t);
            }
            tokio::select! {
                _ = stop.cancelled() => break None,
                changed = leases.changed() => if changed.is_err() { break None },
            }
        };
        let Some(token) = token else { break };
        if polled_with != Some(token) {
            polled_with = Some(token);
            next_at = tokio::time::Instant::now();
        }
        let wait = next_at.saturating_duration_since(tokio::time::Instant::now());
        if !wait.is_zero() {
            let cursors = if caps.push && failures == 0 {
                store.cursors(&name).await.ok()
            } else {
                None
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                changed = async {
                    match &cursors {
                        Some(c) => inst.connector.wait_for_change(c, wait).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = changed {
                        // Poll after a backoff, not at the next scheduled
                        // tick: for a push instance the schedule is only a
                        // fallback (a Telegram bot's may be yearly), and one
                        // failed long poll must not stall it until then.
                        watch_failures = watch_failures.saturating_add(1);
                        let delay = wait.min(backoff(
                            watch_failures,
                            config.daemon.min_backoff.0,
                            config.daemon.max_backoff.0,
                        ));
                        warn!(instance = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "Waiting for changes failed; polling after a backoff.");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    } else {
                        watch_failures = 0;
                    }
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
        if leases.borrow().get(&name) != Some(&token) {
            continue;
        }
        let fence = Fence {
            holder: daemon.clone(),
            token,
        };
        // The poll itself is not cancelled: it commits or it does not, and
        // shutdown waits for it (up to the shutdown timeout).
        debug!(instance = %name, "Polling.");
        let busy = crate::watchdog::busy(format!("polling {name}"));
        let started = std::time::Instant::now();
        let polled = poll_instance_fenced(store.as_ref(), &inst, Some(&fence)).await;
        drop(busy);
        crate::http::metrics::record_poll(
            &name,
            started.elapsed(),
            polled.as_ref().err().map(|e| e.kind()),
        );
        record_api_calls(store.as_ref(), &inst).await;
        match polled {
            Ok(n) => {
                if failures > 0 {
                    info!(instance = %name, after_failures = failures, "Instance recovered.");
                }
                if crate::alerts::admin::store_writable() {
                    info!(instance = %name, "The store accepts writes again; ingest resumed.");
                }
                failures = 0;
                if n > 0 {
                    info!(instance = %name, messages = n, "Ingested new messages.");
                    ingested.notify_waiters();
                }
                if let Err(e) = store
                    .record_poll(&name, &PollOutcome::Ok { messages: n })
                    .await
                {
                    warn!(instance = %name, error = %e, "Cannot record poll status.");
                }
                if expiry_checked.is_none_or(|t| t.elapsed() >= EXPIRY_CHECK_EVERY) {
                    expiry_checked = Some(std::time::Instant::now());
                    match crate::alerts::admin::check_expiry(
                        &config,
                        store.as_ref(),
                        &name,
                        inst.connector.kind(),
                        &inst.clocking.channel,
                        Utc::now(),
                    )
                    .await
                    {
                        Ok(Some(sinks)) => {
                            warn!(instance = %name, sinks, "The account's token expires within 30 days; the admin is told how to connect it again.")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            warn!(instance = %name, error = %e, "Cannot check the token's expiry.")
                        }
                    }
                }
                next_at = next_tick(&inst.schedule);
            }
            Err(PollError::Store(StoreError::LeaseLost(_))) => {
                warn!(instance = %name, token, "Another daemon took this instance over (this one was too slow to renew its lease); the batch was not committed and the new holder polls it.");
                // Until the lease loop notices the loss too.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = leases.changed() => {}
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = match &e {
                    PollError::Connector(ConnectorError::RateLimited {
                        retry_after: Some(d),
                    }) => *d,
                    _ => backoff(
                        failures,
                        config.daemon.min_backoff.0,
                        config.daemon.max_backoff.0,
                    ),
                };
                let auth = matches!(e, PollError::Connector(ConnectorError::Auth(_)));
                let next_poll_at = Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
                let outcome = PollOutcome::Failed {
                    kind: e.kind().to_owned(),
                    error: e.to_string(),
                    failures,
                    next_poll_at,
                };
                if let Err(se) = store.record_poll(&name, &outcome).await {
                    warn!(instance = %name, error = %se, "Cannot record poll status.");
                }
                if matches!(&e, PollError::Store(se) if se.is_disk_full()) {
                    if crate::alerts::admin::store_full(
                        &config,
                        &name,
                        &inst.clocking.channel,
                        &e.to_string(),
                    ) {
                        error!(instance = %name, error = %e, "The store's disk is full: ingest is paused and the admin is alerted. Nothing of this batch was written; it is polled again, and ingest resumes by itself once there is room.");
                    } else {
                        warn!(instance = %name, failures, retry_in_ms = delay.as_millis() as u64, "The store's disk is still full; retrying with backoff.");
                    }
                    next_at = tokio::time::Instant::now() + delay;
                    continue;
                }
                if auth {
                    // Retried with backoff (a renewed secret behind the
                    // same reference, or a platform's passing hiccup, then
                    // recovers it), but the admin hears of it once.
                    let raised = crate::alerts::admin::raise_auth_alert(
                        &config,
                        store.as_ref(),
                        &name,
                        inst.connector.kind(),
                        &inst.clocking.channel,
                        &e.to_string(),
                        Utc::now(),
                    )
                    .await;
                    match raised {
                        Ok(Some(sinks)) => {
                            error!(instance = %name, error = %e, sinks, retry_in_ms = delay.as_millis() as u64, "Credentials refused; the admin is alerted. Retrying with backoff.")
                        }
                        Ok(None) => {
                            warn!(instance = %name, failures, retry_in_ms = delay.as_millis() as u64, "Credentials still refused (the admin was alerted); retrying with backoff.")
                        }
                        Err(se) => {
                            error!(instance = %name, error = %e, store_error = %se, "Credentials refused, and the admin alert cannot be queued.")
                        }
                    }
                    next_at = tokio::time::Instant::now() + delay;
                    continue;
                }
                warn!(
                    instance = %name,
                    kind = e.kind(),
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    "Poll failed; backing off."
                );
                next_at = tokio::time::Instant::now() + delay;
            }
        }
    }
}

/// Records the API calls the connector counted (for platforms with a call
/// budget), for `connectors list`.
async fn record_api_calls(store: &dyn Store, inst: &Instance) {
    let Some(calls) = inst.connector.api_calls() else {
        return;
    };
    if let Err(e) = store
        .record_api_calls(inst.config.name(), calls.last_24h, calls.daily_budget)
        .await
    {
        warn!(instance = inst.config.name(), error = %e, "Cannot record the API call count.");
    }
}

/// Hands freshly built connectors the API calls their predecessors made
/// (the previous daemon or config generation), so that a restart or a
/// reload does not reset a daily call budget.
async fn restore_api_calls(store: &dyn Store, instances: &[Instance]) {
    let known = match store.instances().await {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "Cannot read the API call counts; budgets start at zero.");
            return;
        }
    };
    for inst in instances {
        let Some(row) = known.iter().find(|k| k.name == inst.config.name()) else {
            continue;
        };
        if let (Some(calls), Some(at)) = (row.api_calls_24h, row.api_calls_at) {
            let calls = u32::try_from(calls).unwrap_or(0);
            inst.connector.restore_api_calls(calls, at.into());
        }
    }
}

fn next_tick(schedule: &cron::Schedule) -> tokio::time::Instant {
    let now = Utc::now();
    let wait = schedule
        .after(&now)
        .next()
        .and_then(|t| (t - now).to_std().ok())
        .unwrap_or(Duration::from_secs(60));
    tokio::time::Instant::now() + wait
}

/// Everything started from one config.
struct Generation {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Generation {
    /// Stops the generation, waiting up to `timeout` for in-flight work.
    async fn shutdown(mut self, timeout: Duration) {
        self.stop.cancel();
        let drained = tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                timeout_ms = timeout.as_millis() as u64,
                "Work still in flight after the shutdown timeout; abandoning it (it will be redone)."
            );
            self.tasks.abort_all();
        }
    }
}

/// How often a polling instance looks whether its granted token expires
/// within 30 days.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Context shared by the workers of a generation.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub instances: Arc<Vec<Instance>>,
    pub clockings: Arc<HashMap<String, Clocking>>,
    /// Notified after new messages are committed.
    pub ingested: Arc<Notify>,
    /// This daemon's id among the daemons sharing the store.
    pub daemon_id: String,
    /// The instances whose lease this daemon holds (see [`HeldLeases`]).
    pub leases: watch::Receiver<HeldLeases>,
}

/// Extra workers run beside the poll loops (alert engine, outbox, HTTP).
pub type Worker = fn(Context, CancellationToken) -> futures::future::BoxFuture<'static, ()>;

async fn start_generation(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    instances: Vec<Instance>,
    workers: &[Worker],
    me: &DaemonInfo,
) -> Generation {
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (held_tx, held_rx) = watch::channel(HeldLeases::new());
    tasks.spawn(lease_loop(
        store.clone(),
        me.clone(),
        instances
            .iter()
            .map(|i| i.config.name().to_owned())
            .collect(),
        config.daemon.lease.0,
        held_tx,
        stop.child_token(),
    ));
    let ingested = Arc::new(Notify::new());
    for inst in &instances {
        let name = inst.config.name();
        if let Err(e) = store
            .register_instance(name, inst.connector.kind(), &inst.clocking.channel)
            .await
        {
            warn!(instance = name, error = %e, "Cannot register instance.");
        }
    }
    let connectors: Vec<_> = instances.iter().map(|i| i.connector.clone()).collect();
    if let Err(e) = crate::vault::attach(&config, &store, &connectors) {
        error!(error = %format!("{e:#}"), "Connectors that rotate their credentials cannot keep them and will refuse to renew them.");
    }
    restore_api_calls(store.as_ref(), &instances).await;
    let ctx = Context {
        clockings: Arc::new(clockings(&config, &instances)),
        config: config.clone(),
        store: store.clone(),
        instances: Arc::new(instances.clone()),
        ingested: ingested.clone(),
        daemon_id: me.id.clone(),
        leases: held_rx.clone(),
    };
    for inst in instances {
        tasks.spawn(poll_loop(
            store.clone(),
            inst,
            config.clone(),
            stop.child_token(),
            ingested.clone(),
            held_rx.clone(),
            me.id.clone(),
        ));
    }
    for w in workers {
        tasks.spawn(w(ctx.clone(), stop.child_token()));
    }
    Generation { stop, tasks }
}

/// Runs the daemon until `Signal::Shutdown`. Returns when everything has
/// stopped.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    mut signals: mpsc::Receiver<Signal>,
    workers: &[Worker],
) -> anyhow::Result<()> {
    info!("Starting.");
    // Opening the store can wait on an unreachable database for a while:
    // a stop asked for meanwhile ends it at once, and a reload is applied
    // as soon as the daemon runs.
    let mut reload_asked = false;
    let (store, instances, _sqlite_lock) = {
        let startup = async {
            // Held until we return: a second daemon on this SQLite file is
            // refused.
            let sqlite_lock = lock_sqlite_store(&config.store.url)?;
            let store: Arc<dyn Store> = open_store(&config).await?;
            if sqlite_lock.is_some() {
                // The only daemon on this file: a crashed predecessor's
                // leases need not run out before its instances are polled
                // again.
                store
                    .forget_daemons()
                    .await
                    .context("Cannot clear the leases of a previous daemon")?;
            }
            let instances = build_instances(&config)?;
            anyhow::Ok((store, instances, sqlite_lock))
        };
        tokio::pin!(startup);
        loop {
            tokio::select! {
                started = &mut startup => break started?,
                signal = signals.recv() => match signal {
                    Some(Signal::Reload) => reload_asked = true,
                    Some(Signal::Shutdown) | None => {
                        notify_systemd("STOPPING=1");
                        info!("Stopped before startup finished.");
                        return Ok(());
                    }
                },
            }
        }
    };
    let mut config = Arc::new(config);
    let me = this_daemon(config.daemon.lease.0);
    info!(
        instances = instances.len(),
        daemon = %me.id,
        store = %crate::store::sql_redact(&config.store.url),
        "hourglass is running."
    );
    let mut generation =
        start_generation(config.clone(), store.clone(), instances, workers, &me).await;
    notify_systemd("READY=1");
    if let Some(interval) = crate::watchdog::interval_from_env() {
        info!(interval = ?interval, "systemd watchdog on.");
        tokio::spawn(crate::watchdog::run(
            interval,
            config.daemon.watchdog_busy_limit.0,
            notify_systemd,
        ));
    }
    loop {
        let signal = if reload_asked {
            reload_asked = false;
            Signal::Reload
        } else {
            match signals.recv().await {
                Some(s) => s,
                None => break,
            }
        };
        match signal {
            Signal::Shutdown => break,
            Signal::Reload => {
                // systemd 253+ (Type=notify-reload) wants the time of the
                // reload request with it.
                notify_systemd(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
                match reload(&config_path, &config) {
                    Ok((new_config, instances)) => {
                        info!(instances = instances.len(), "Configuration reloaded.");
                        generation.shutdown(config.daemon.shutdown_timeout.0).await;
                        leave(store.as_ref(), &me.id).await;
                        config = Arc::new(new_config);
                        generation = start_generation(
                            config.clone(),
                            store.clone(),
                            instances,
                            workers,
                            &me,
                        )
                        .await;
                    }
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "The new configuration is invalid; keeping the running one.");
                    }
                }
                notify_systemd("READY=1");
            }
        }
    }
    notify_systemd("STOPPING=1");
    info!("Shutting down: finishing in-flight work.");
    generation.shutdown(config.daemon.shutdown_timeout.0).await;
    leave(store.as_ref(), &me.id).await;
    info!("Stopped.");
    Ok(())
}

/// The leases this daemon holds: instance name to fencing token.
pub type HeldLeases = HashMap<String, i64>;

/// This process as the other daemons on the store see it.
fn this_daemon(lease: Duration) -> DaemonInfo {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let pid = std::process::id();
    let now = Utc::now();
    DaemonInfo {
        id: format!("{host}:{pid}:{:04x}", rand::rng().random::<u16>()),
        host,
        pid: i64::from(pid),
        started_at: now,
        heartbeat_at: now,
        expires_at: now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::zero()),
    }
}

/// Gives back every lease at once, so that the other daemons take over
/// without waiting for the expiry.
async fn leave(store: &dyn Store, daemon: &str) {
    // Bounded: a store that does not answer must not hold up the exit.
    match tokio::time::timeout(Duration::from_secs(3), store.leave(daemon)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "Cannot give back this daemon's leases; the other daemons take them over when they expire.")
        }
        Err(_) => warn!(
            "The store did not answer; the other daemons take this daemon's leases over when they expire."
        ),
    }
}

/// Every third of a lease period: a heartbeat, renewal of the leases held,
/// and taking or giving back leases so that each live daemon polls its
/// share of the instances (see [`plan_leases`]). What is held is published
/// on `held` for the poll loops.
async fn lease_loop(
    store: Arc<dyn Store>,
    mut me: DaemonInfo,
    instances: Vec<String>,
    lease: Duration,
    held: watch::Sender<HeldLeases>,
    stop: CancellationToken,
) {
    let lease = lease.max(Duration::from_millis(300));
    let period = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
    loop {
        // Store calls wait on a store that does not answer (a PostgreSQL
        // that is down) for the pool's timeout: a stop does not wait for
        // them. Leases taken and not yet published are given back by
        // `leave` on the way out.
        let round = async {
            let now = Utc::now();
            let until = now + period;
            me.heartbeat_at = now;
            me.expires_at = until;
            if let Err(e) = store.heartbeat(&me).await {
                warn!(error = %e, "Cannot write this daemon's heartbeat.");
            }
            let mut mine = held.borrow().clone();
            let mut lost = Vec::new();
            for (instance, token) in &mine {
                let fence = Fence {
                    holder: me.id.clone(),
                    token: *token,
                };
                match store.renew_lease(instance, &fence, now, until).await {
                    Ok(true) => {}
                    Ok(false) => lost.push(instance.clone()),
                    // Kept: the fence stops its commits if it is taken meanwhile.
                    Err(e) => warn!(instance = %instance, error = %e, "Cannot renew a lease."),
                }
            }
            for instance in lost {
                mine.remove(&instance);
                warn!(instance = %instance, "Another daemon took this instance over: this daemon did not renew its lease in time.");
            }
            let plan = match (store.daemons().await, store.leases().await) {
                (Ok(daemons), Ok(leases)) => {
                    let live: Vec<String> = daemons
                        .into_iter()
                        .filter(|d| d.expires_at > now)
                        .map(|d| d.id)
                        .collect();
                    let plan = plan_leases(&me.id, &instances, &live, &leases, now);
                    Some((plan, leases))
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "Cannot read the leases; keeping the ones held.");
                    None
                }
            };
            if let Some((plan, leases)) = plan {
                for instance in &plan.release {
                    mine.remove(instance);
                }
                // The poll loops stop before the leases are given back.
                held.send_if_modified(|h| {
                    let changed = *h != mine;
                    h.clone_from(&mine);
                    changed
                });
                for instance in &plan.release {
                    let Some(l) = leases.iter().find(|l| &l.instance == instance) else {
                        continue;
                    };
                    let fence = Fence {
                        holder: me.id.clone(),
                        token: l.token,
                    };
                    match store.release_lease(instance, &fence).await {
                        Ok(()) => {
                            info!(instance = %instance, "Gave a lease back to even out the work between daemons.")
                        }
                        Err(e) => {
                            warn!(instance = %instance, error = %e, "Cannot give a lease back.")
                        }
                    }
                }
                for instance in &plan.take {
                    match store.acquire_lease(instance, &me.id, now, until).await {
                        Ok(Some(token)) => {
                            info!(instance = %instance, token, "Took the lease of an instance.");
                            mine.insert(instance.clone(), token);
                        }
                        Ok(None) => {}
                        Err(e) => warn!(instance = %instance, error = %e, "Cannot take a lease."),
                    }
                }
            }
            held.send_if_modified(|h| {
                let changed = *h != mine;
                h.clone_from(&mine);
                changed
            });
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            () = round => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(lease / 3) => {}
        }
    }
}

/// SQLite serves one daemon: an exclusive lock on `<db>.lock`, held for the
/// daemon's life, refuses a second one on the same file (commands such as
/// `sync --once` do not take it). `None` for other stores.
pub(crate) fn lock_sqlite_store(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    let lock_path = PathBuf::from(format!("{path}.lock"));
    if let Some(parent) = lock_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("Cannot create the store directory {}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("Cannot open the store lock {}", lock_path.display()))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor that `file` owns for the whole call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        return Ok(Some(file));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        anyhow::bail!(
            "Another hourglass daemon is already running on the SQLite store {path} (it holds {}). \
             SQLite serves one daemon; stop the other one, or use a PostgreSQL store to run several.",
            lock_path.display()
        );
    }
    Err(err).with_context(|| format!("Cannot lock {}", lock_path.display()))
}

fn reload(path: &Path, current: &Config) -> anyhow::Result<(Config, Vec<Instance>)> {
    let config = Config::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    if config.store.url != current.store.url {
        anyhow::bail!("store.url changed: that needs a restart, not a reload");
    }
    let instances = build_instances(&config)?;
    Ok((config, instances))
}

/// Forwards SIGTERM, SIGINT and SIGHUP into `tx`. `run` calls this before
/// anything else (config, store, connectors), so that a stop asked for at
/// any moment is a clean exit and never the default "killed by signal".
pub fn forward_unix_signals(tx: mpsc::Sender<Signal>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = term.recv() => Signal::Shutdown,
                _ = int.recv() => Signal::Shutdown,
                _ = hup.recv() => Signal::Reload,
            };
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as sd_notify's MONOTONIC_USEC wants.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Tells systemd (Type=notify) about our state, when run under it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        warn!(error = %e, "Cannot notify systemd.");
    }
}

/// `sync --once`: one pass over the chosen instances. Returns per-instance
/// results; a failing instance does not stop the others.
pub async fn sync_once(
    store: &dyn Store,
    instances: &[Instance],
    only: Option<&str>,
) -> Vec<(String, Result<usize, PollError>)> {
    let mut out = Vec::new();
    restore_api_calls(store, instances).await;
    for inst in instances {
        let name = inst.config.name();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Err(e) = store
            .register_instance(name, inst.connector.kind(), &inst.clocking.channel)
            .await
        {
            warn!(instance = name, error = %e, "Cannot register instance.");
        }
        let result = poll_instance(store, inst).await;
        record_api_calls(store, inst).await;
        let outcome = match &result {
            Ok(n) => PollOutcome::Ok { messages: *n },
            Err(e) => PollOutcome::Failed {
                kind: e.kind().to_owned(),
                error: e.to_string(),
                failures: 1,
                next_poll_at: Utc::now(),
            },
        };
        let _ = store.record_poll(name, &outcome).await;
        out.push((name.to_owned(), result));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InstanceStore, ThreadStore};

    /// A scripted platform whose polls are read-only: the daemon fetches
    /// ahead. Records the cursor of every poll; fails once at `fail_at`.
    struct ReadAhead {
        inner: hourglass_connector::testkit::ScriptedConnector,
        polled: std::sync::Mutex<Vec<Option<String>>>,
        fail_at: std::sync::Mutex<Option<String>>,
    }

    #[async_trait::async_trait]
    impl Connector for ReadAhead {
        fn kind(&self) -> &str {
            "scripted"
        }
        fn instance(&self) -> &str {
            self.inner.instance()
        }
        fn capabilities(&self) -> hourglass_connector::Capabilities {
            self.inner.capabilities()
        }
        async fn health_check(&self) -> Result<(), ConnectorError> {
            Ok(())
        }
        fn poll_is_read_only(&self) -> bool {
            true
        }
        async fn poll(
            &self,
            cursors: &hourglass_connector::Cursors,
        ) -> Result<hourglass_connector::Batch, ConnectorError> {
            let at = cursors.get("").cloned();
            self.polled.lock().unwrap().push(at.clone());
            // Slow enough that the store commits while the next poll runs.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if at.is_some() && *self.fail_at.lock().unwrap() == at {
                *self.fail_at.lock().unwrap() = None;
                return Err(ConnectorError::Transient("dropped".into()));
            }
            self.inner.poll(cursors).await
        }
        async fn send_reply(
            &self,
            reply: &hourglass_connector::OutgoingReply,
        ) -> Result<hourglass_connector::SentReply, ConnectorError> {
            self.inner.send_reply(reply).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_polls_the_same_cursors_and_commits_only_what_it_stored() {
        use hourglass_connector::testkit::{ScriptedConnector, ScriptedPlatform};
        use hourglass_connector::{Direction, Message};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hourglass.toml");
        std::fs::write(
            &path,
            format!(
                "[store]\nurl = \"sqlite://{}/s.db\"\n\n[[instances]]\nname = \"shop\"\ntype = \"simulated\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let store = open_store(&config).await.unwrap();
        let mut inst = build_instances(&config).unwrap().remove(0);
        let platform = ScriptedPlatform::new();
        platform.set_page_size(4);
        for i in 0..25 {
            platform.push(Message::new(
                format!("m{i}"),
                format!("t{}", i % 5),
                Direction::Inbound,
                Utc::now(),
                "hello",
            ));
        }
        let connector = Arc::new(ReadAhead {
            inner: ScriptedConnector::new("shop", "email", platform.clone()),
            polled: std::sync::Mutex::new(Vec::new()),
            fail_at: std::sync::Mutex::new(Some("12".to_owned())),
        });
        inst.connector = connector.clone();
        let stored = |store: Arc<crate::store::SqlStore>| async move {
            store
                .threads(&crate::store::ThreadFilter::default(), Utc::now())
                .await
                .unwrap()
                .iter()
                .map(|t| t.message_count)
                .sum::<i64>()
        };

        // The poll from cursor 12 fails while batch 8..12 is stored: that
        // batch is committed, nothing after it.
        let err = poll_instance(store.as_ref(), &inst).await.unwrap_err();
        assert!(matches!(
            err,
            PollError::Connector(ConnectorError::Transient(_))
        ));
        assert_eq!(stored(store.clone()).await, 12);
        assert_eq!(store.cursors("shop").await.unwrap()[""], "12");

        assert_eq!(poll_instance(store.as_ref(), &inst).await.unwrap(), 13);
        assert_eq!(stored(store.clone()).await, 25);
        let polled: Vec<Option<String>> = connector.polled.lock().unwrap().clone();
        let at = |v: &[Option<u32>]| {
            v.iter()
                .map(|c| c.map(|c| c.to_string()))
                .collect::<Vec<_>>()
        };
        // Exactly the polls a poll-then-store loop makes.
        assert_eq!(
            polled,
            at(&[
                None,
                Some(4),
                Some(8),
                Some(12),
                Some(12),
                Some(16),
                Some(20),
                Some(24)
            ])
        );
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(60));
        for _ in 0..50 {
            let first = backoff(1, min, max);
            assert!(first >= Duration::from_secs(1) && first <= min, "{first:?}");
            let third = backoff(3, min, max);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8));
            let late = backoff(30, min, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
