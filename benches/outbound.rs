//! Outbound benchmark (DESIGN §8): 10,000 replies against a mock platform
//! with a quota of 200/s and a burst of 10, the same limit configured in
//! hourglass. Reports the 429s hourglass caused (target 0) and the rate it
//! achieved as a share of what the quota allowed over the run (target at
//! least 95 %), for 3 runs and their median.
//!
//! `cargo bench --bench outbound` (env `OUTBOUND_REPLIES`, `OUTBOUND_RUNS`
//! to change the size).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use hourglass::store::{NewReply, ThreadFilter};
use hourglass_testsupport::mockplatform::{MockPlatform, Quota};

const BIN: &str = env!("CARGO_BIN_EXE_hourglass");
const RATE: f64 = 200.0;
const BURST: u32 = 10;
const THREADS: u32 = 1000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &std::path::Path, mock: &MockPlatform, per_poll: u32) -> String {
    format!(
        r#"[store]
url = "sqlite://{dir}/hourglass.db"

[log]
level = "warn"

[daemon]
shutdown_timeout = "10s"

[[instances]]
name = "shop"
type = "simulated"
schedule = "0 0 1 1 *"
rate_limit = {{ per_second = {RATE:.1}, burst = {BURST} }}
[instances.simulated]
channel = "amazon"
per_poll = {per_poll}
threads = {per_poll}
api_url = "{url}"
"#,
        dir = dir.display(),
        url = mock.url()
    )
}

struct RunResult {
    replies: usize,
    seconds: f64,
    achieved_per_s: f64,
    used_pct: f64,
    rejected_429: u64,
    duplicates: usize,
}

fn run_once(replies: usize) -> anyhow::Result<RunResult> {
    let mock = MockPlatform::start(Some(Quota {
        per_second: RATE,
        burst: f64::from(BURST),
    }))?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hourglass.toml");
    std::fs::write(&path, config(dir.path(), &mock, THREADS))?;
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["sync", "--once"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No new buyer messages from here on: the daemon polls once at start.
    std::fs::write(&path, config(dir.path(), &mock, 0))?;

    let runtime = tokio::runtime::Runtime::new()?;
    let cfg = hourglass::config::Config::load(&path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let store = runtime.block_on(hourglass::cli::store_for(&cfg))?;
    let threads = runtime.block_on(store.threads(&ThreadFilter::default(), Utc::now()))?;
    anyhow::ensure!(
        threads.len() == THREADS as usize,
        "{} threads",
        threads.len()
    );
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..replies {
            let t = &threads[i % threads.len()];
            store
                .enqueue_reply(&NewReply {
                    id: format!("{:016x}", rand::random::<u64>()),
                    thread_id: t.id,
                    body: format!("Reply {i}: obrigado pela paciência, mulțumim."),
                    template: None,
                    created_by: "bench".into(),
                })
                .await?;
        }
        anyhow::Ok(())
    })?;
    eprintln!(
        "  queued {replies} replies in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let (mut daemon, _notify) = common::spawn_ready(BIN, &path, Stdio::null(), dir.path())?;
    let deadline = Instant::now() + Duration::from_secs_f64(replies as f64 / RATE * 3.0 + 60.0);
    while mock.accepted().len() < replies && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    let accepted = mock.accepted();
    anyhow::ensure!(
        accepted.len() >= replies,
        "only {} of {replies} replies arrived",
        accepted.len()
    );
    let (Some(first), Some(last)) = (accepted.first(), accepted.last()) else {
        anyhow::bail!("nothing arrived");
    };
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    // What the platform's bucket allowed between the first and the last
    // arrival: the full burst plus the sustained rate.
    let allowed = f64::from(BURST) + RATE * seconds;
    Ok(RunResult {
        replies: accepted.len(),
        seconds,
        achieved_per_s: (accepted.len() as f64 - 1.0) / seconds,
        used_pct: accepted.len() as f64 / allowed * 100.0,
        rejected_429: mock.rejected_429(),
        duplicates: mock.duplicates(),
    })
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let replies = env_or("OUTBOUND_REPLIES", 10_000);
    let runs = env_or("OUTBOUND_RUNS", 3).max(1);
    println!(
        "outbound: {replies} replies per run, quota {RATE}/s burst {BURST} (mock and hourglass)"
    );
    let mut results = Vec::new();
    for run in 1..=runs {
        let r = run_once(replies)?;
        println!(
            "run {run}: {} replies in {:.2}s = {:.1}/s, {:.1} % of the allowed rate, 429s caused: {}, duplicates: {}",
            r.replies, r.seconds, r.achieved_per_s, r.used_pct, r.rejected_429, r.duplicates
        );
        results.push(r);
    }
    results.sort_by(|a, b| a.used_pct.total_cmp(&b.used_pct));
    let median = &results[results.len() / 2];
    let total_429: u64 = results.iter().map(|r| r.rejected_429).sum();
    println!(
        "median: {:.1} % of the allowed rate ({:.1}/s of {RATE}/s); 429s over all runs: {total_429} (targets: >= 95 %, 0)",
        median.used_pct, median.achieved_per_s
    );
    Ok(())
}
