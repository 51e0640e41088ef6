//! Outbound benchmark (DESIGN §8): 10,000 replies against a mock platform
//! with a quota (200/s, then 1,000/s, burst 10), the same limit configured
//! in hourglass, on SQLite and on PostgreSQL. Reports the 429s hourglass
//! caused (target 0), the rate it achieved as a share of what the quota
//! allowed over the run (target at least 95 %), and the daemon's CPU time
//! per reply, for 3 runs and their median.
//!
//! `cargo bench --bench outbound` (env `OUTBOUND_REPLIES`, `OUTBOUND_RUNS`,
//! `OUTBOUND_QUOTAS` = "200,1000", `OUTBOUND_STORES` = "sqlite,postgres"
//! to change the size; `OUTBOUND_GAPS=1` prints every pause over 15 ms
//! between two arrivals at the mock, where a lost share usually hides).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use hourglass::store::{NewReply, ThreadFilter};
use hourglass_testsupport::mockplatform::{MockPlatform, Quota};

const BIN: &str = env!("CARGO_BIN_EXE_hourglass");
const BURST: u32 = 10;
const THREADS: u32 = 1000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(store: &str, rate: f64, mock: &MockPlatform, per_poll: u32) -> String {
    format!(
        r#"[store]
url = "{store}"

[log]
level = "warn"

[daemon]
shutdown_timeout = "10s"

[[instances]]
name = "shop"
type = "simulated"
schedule = "0 0 1 1 *"
rate_limit = {{ per_second = {rate:.1}, burst = {BURST} }}
[instances.simulated]
channel = "amazon"
per_poll = {per_poll}
threads = {per_poll}
api_url = "{url}"
"#,
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
    cpu_ms_per_reply: f64,
}

/// Where a run keeps its store.
enum StoreKind {
    Sqlite,
    Postgres(hourglass_testsupport::postgres::Postgres),
}

impl StoreKind {
    fn name(&self) -> &'static str {
        match self {
            StoreKind::Sqlite => "SQLite",
            StoreKind::Postgres(_) => "PostgreSQL",
        }
    }

    /// A fresh, empty store for one run.
    fn fresh(&self, dir: &std::path::Path, run: usize, rate: f64) -> anyhow::Result<String> {
        Ok(match self {
            StoreKind::Sqlite => format!("sqlite://{}/hourglass.db", dir.display()),
            StoreKind::Postgres(pg) => pg.create_database(&format!("outbound_{rate:.0}_{run}"))?,
        })
    }
}

fn run_once(store: &StoreKind, rate: f64, run: usize, replies: usize) -> anyhow::Result<RunResult> {
    let mock = MockPlatform::start(Some(Quota {
        per_second: rate,
        burst: f64::from(BURST),
    }))?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hourglass.toml");
    let url = store.fresh(dir.path(), run, rate)?;
    std::fs::write(&path, config(&url, rate, &mock, THREADS))?;
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
    std::fs::write(&path, config(&url, rate, &mock, 0))?;

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
    let ticks_at_start = common::cpu_ticks(daemon.id());
    let deadline = Instant::now() + Duration::from_secs_f64(replies as f64 / rate * 3.0 + 60.0);
    while mock.accepted_count() < replies && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_s = (common::cpu_ticks(daemon.id()) - ticks_at_start) as f64 / common::clk_tck();
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
    if std::env::var("OUTBOUND_GAPS").is_ok() {
        for w in accepted.windows(2) {
            let gap = w[1].at.duration_since(w[0].at);
            if gap > Duration::from_millis(15) {
                eprintln!(
                    "gap {:?} at {:.3}s (#{})",
                    gap,
                    w[0].at.duration_since(first.at).as_secs_f64(),
                    w[0].id
                );
            }
        }
    }
    // What the platform's bucket allowed between the first and the last
    // arrival: the full burst plus the sustained rate.
    let allowed = f64::from(BURST) + rate * seconds;
    Ok(RunResult {
        replies: accepted.len(),
        seconds,
        achieved_per_s: (accepted.len() as f64 - 1.0) / seconds,
        used_pct: accepted.len() as f64 / allowed * 100.0,
        rejected_429: mock.rejected_429(),
        duplicates: mock.duplicates(),
        cpu_ms_per_reply: cpu_s * 1000.0 / accepted.len() as f64,
    })
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let replies = env_or("OUTBOUND_REPLIES", 10_000);
    let runs = env_or("OUTBOUND_RUNS", 3).max(1);
    let quotas: Vec<f64> = list("OUTBOUND_QUOTAS", "200,1000")
        .iter()
        .map(|q| q.parse())
        .collect::<Result<_, _>>()?;
    let mut stores = Vec::new();
    for s in list("OUTBOUND_STORES", "sqlite,postgres") {
        stores.push(match s.as_str() {
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres(hourglass_testsupport::postgres::Postgres::start()?),
            other => anyhow::bail!("OUTBOUND_STORES: unknown store {other:?}"),
        });
    }
    println!(
        "outbound: {replies} replies per run, burst {BURST} (mock and hourglass), {runs} runs each"
    );
    let mut summary = Vec::new();
    for store in &stores {
        for &rate in &quotas {
            let mut results = Vec::new();
            for run in 1..=runs {
                let r = run_once(store, rate, run, replies)?;
                println!(
                    "{} {rate}/s run {run}: {} replies in {:.2}s = {:.1}/s, {:.1} % of the allowed rate, {:.2} ms CPU per reply, 429s caused: {}, duplicates: {}",
                    store.name(), r.replies, r.seconds, r.achieved_per_s, r.used_pct, r.cpu_ms_per_reply, r.rejected_429, r.duplicates
                );
                results.push(r);
            }
            results.sort_by(|a, b| a.used_pct.total_cmp(&b.used_pct));
            let median = &results[results.len() / 2];
            let mut cpu: Vec<f64> = results.iter().map(|r| r.cpu_ms_per_reply).collect();
            cpu.sort_by(f64::total_cmp);
            let total_429: u64 = results.iter().map(|r| r.rejected_429).sum();
            let duplicates: usize = results.iter().map(|r| r.duplicates).sum();
            summary.push(format!(
                "{:<10} quota {rate:>6}/s: median {:.1} % of the allowed rate ({:.1}/s), {:.2} ms CPU per reply; 429s {total_429}, duplicates {duplicates}",
                store.name(), median.used_pct, median.achieved_per_s, cpu[cpu.len() / 2]
            ));
        }
    }
    println!("medians (targets: >= 95 % of the allowed rate, 0 429s, 0 duplicates):");
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}
