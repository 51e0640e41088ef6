//! The systemd watchdog (`WatchdogSec=`): `WATCHDOG=1` is sent only while
//! the daemon makes progress, so that systemd restarts a wedged one.
//!
//! Progress is judged per unit of work, not per wake-up: the scheduler's
//! polls, the alert engine's passes and the outbox's sends each mark
//! themselves busy while they work ([`busy`]). A component that waits (for
//! its next cron tick, the next deadline, a queued reply) is healthy however
//! long it waits; one that has been busy with one unit of work for longer
//! than `[daemon] watchdog_busy_limit` is wedged (a poll hung on a dead
//! socket, a store call that never returns). A blocked runtime sends
//! nothing at all, which systemd notices the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::{error, info};

/// One unit of work in progress; dropping it marks the work done.
pub struct Busy {
    slot: Arc<Slot>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slot.busy_since_ms.store(0, Ordering::Relaxed);
    }
}

struct Slot {
    what: String,
    /// Milliseconds since [`epoch`] + 1 when the work began; 0 when idle.
    busy_since_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn slots() -> &'static Mutex<Vec<Weak<Slot>>> {
    static SLOTS: OnceLock<Mutex<Vec<Weak<Slot>>>> = OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

/// Marks `what` (e.g. `poll amazon-eu`) busy until the returned guard is
/// dropped.
pub fn busy(what: impl Into<String>) -> Busy {
    let since = epoch().elapsed().as_millis() as u64 + 1;
    let slot = Arc::new(Slot {
        what: what.into(),
        busy_since_ms: AtomicU64::new(since),
    });
    let mut all = slots().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&slot));
    Busy { slot }
}

/// The work that has been busy for longer than `limit`, with how long.
pub fn wedged(limit: Duration) -> Vec<(String, Duration)> {
    let now = epoch().elapsed();
    let all = slots().lock().unwrap_or_else(|p| p.into_inner());
    all.iter()
        .filter_map(Weak::upgrade)
        .filter_map(|s| {
            let since = s.busy_since_ms.load(Ordering::Relaxed);
            if since == 0 {
                return None;
            }
            let busy_for = now.saturating_sub(Duration::from_millis(since - 1));
            (busy_for > limit).then(|| (s.what.clone(), busy_for))
        })
        .collect()
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` is set), if any.
pub fn interval_from_env() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half interval while nothing is wedged; stops
/// (and says why, once) when something is, and resumes if it recovers.
pub async fn run(interval: Duration, busy_limit: Duration, notify: fn(&str)) {
    let period = (interval / 2).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held_back = false;
    loop {
        ticker.tick().await;
        let stuck = wedged(busy_limit);
        if stuck.is_empty() {
            if held_back {
                info!("The daemon makes progress again; watchdog pings resume.");
                held_back = false;
            }
            notify("WATCHDOG=1");
        } else if !held_back {
            held_back = true;
            let list = stuck
                .iter()
                .map(|(what, d)| format!("{what} for {}s", d.as_secs()))
                .collect::<Vec<_>>()
                .join(", ");
            error!(busy = %list, "Work is stuck; no more watchdog pings, so systemd restarts the daemon.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_busy_past_the_limit_is_wedged() {
        let limit = Duration::from_millis(50);
        let a = busy("unit-test a");
        let mine = |l: Duration| {
            wedged(l)
                .into_iter()
                .filter(|(w, _)| w.starts_with("unit-test"))
                .map(|(w, _)| w)
                .collect::<Vec<_>>()
        };
        assert!(mine(limit).is_empty());
        std::thread::sleep(Duration::from_millis(80));
        let b = busy("unit-test b");
        assert_eq!(mine(limit), vec!["unit-test a".to_owned()]);
        drop(a);
        assert!(mine(limit).is_empty(), "done work is not wedged");
        drop(b);
    }
}
