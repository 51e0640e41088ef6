//! Clock benchmark (DESIGN §8): 1,000,000 open threads; how late does an
//! alert leave after its threshold is crossed (p50/p99), how much CPU does
//! the idle daemon use, how much memory does it hold.
//!
//! The real release binary runs as a child process on a SQLite store seeded
//! with 1,000,000 awaiting threads, of which a few thousand cross their 1 h
//! threshold during the run; a webhook receiver in this process timestamps
//! every alert as it arrives.
//!
//!   cargo bench --bench clock
//!   HOURGLASS_BENCH_THREADS=100000 cargo bench --bench clock   # quicker

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use hourglass::store::{MigrationStore, SqlStore};

/// When each alert reached the receiver, and what it said.
type Arrivals = Arc<Mutex<Vec<(DateTime<Utc>, serde_json::Value)>>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let threads = env_usize("HOURGLASS_BENCH_THREADS", 1_000_000);
    let crossing = env_usize("HOURGLASS_BENCH_CROSSINGS", 3_000);
    let window_s = 30i64;
    let bin = std::env::var("HOURGLASS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hourglass").to_owned());
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("hourglass.db");
    let url = format!("sqlite://{}", db.display());

    // Seed: `threads` awaiting threads due in 2..30 days, and `crossing`
    // more whose 1 h point falls within the measured window.
    println!("Seeding {threads} open threads ...");
    let seed_start = Instant::now();
    let store = SqlStore::connect(&url, None, 1).await?;
    store.migrate().await?;
    let now = Utc::now().timestamp_millis();
    let hour = 3_600_000i64;
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)
         INSERT INTO threads (instance, thread_key, channel, subject, awaiting_since, due_at,
            next_alert_at, message_count, created_at, updated_at)
         SELECT 'bench', 'far-' || n, 'amazon', 'Question ' || n,
            $2 + (n % 2419200) * 1000 - 24 * $3, $2 + (n % 2419200) * 1000 + 48 * $3,
            $2 + (n % 2419200) * 1000 + 47 * $3, 1, $2, $2
         FROM seq",
    )
    .bind(threads as i64)
    .bind(now)
    .bind(hour)
    .execute(store.pool())
    .await?;
    println!("  seeded in {:.1} s", seed_start.elapsed().as_secs_f64());

    // The receiver: when did each alert arrive?
    let arrivals: Arrivals = Arc::default();
    let sink = arrivals.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let at = Utc::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    if let Ok(mut s) = sink.lock() {
                        s.push((at, v));
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let config = dir.path().join("hourglass.toml");
    let log = std::env::var("HOURGLASS_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{url}\"\n\n[clock]\nthresholds = [\"1h\"]\n\n[log]\nlevel = \"{log}\"\n\n\
             [[alerts.sinks]]\nname = \"bench\"\ntype = \"webhook\"\nurl = \"http://{addr}/alerts\"\n"
        ),
    )?;

    // The crossings: spread over `window_s` seconds starting a few seconds
    // after the daemon starts. Nothing else happens meanwhile: the engine
    // is woken by its own timer on the next_alert_at index alone.
    let start = Utc::now().timestamp_millis() + 5_000;
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)
         INSERT INTO threads (instance, thread_key, channel, subject, awaiting_since, due_at,
            next_alert_at, message_count, created_at, updated_at)
         SELECT 'bench', 'soon-' || n, 'amazon', 'Soon ' || n,
            $2 + (n * $3 / $1) - 23 * $4, $2 + (n * $3 / $1) + $4, $2 + (n * $3 / $1), 1, $2, $2
         FROM seq",
    )
    .bind(crossing as i64)
    .bind(start)
    .bind(window_s * 1000)
    .bind(hour)
    .execute(store.pool())
    .await?;
    let (mut child, _notify) = common::spawn_ready(&bin, &config, Stdio::inherit(), dir.path())?;
    let pid = child.id();

    println!("Waiting for {crossing} alerts over {window_s} s ...");
    let deadline = Instant::now() + Duration::from_secs(window_s as u64 + 30);
    while Instant::now() < deadline {
        if arrivals.lock().map(|a| a.len()).unwrap_or(0) >= crossing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy_rss = common::proc_kb(pid, "VmRSS:");

    // Idle: nothing crosses for days, once every delivery is done.
    let settle_by = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE state IN ('queued', 'sending')")
                .fetch_one(store.pool())
                .await?;
        if pending == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < settle_by, "{pending} alerts never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_cpu = tokio::task::spawn_blocking(move || common::cpu_percent_over(pid, 10)).await?;
    let idle_rss = common::proc_kb(pid, "VmRSS:");
    let peak_rss = common::proc_kb(pid, "VmHWM:");
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();

    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let mut delays: Vec<i64> = arrivals
        .iter()
        .filter_map(|(at, v)| {
            let due = DateTime::parse_from_rfc3339(v["due_at"].as_str()?).ok()?;
            let crossed = due.with_timezone(&Utc) - chrono::Duration::hours(1);
            Some((*at - crossed).num_milliseconds())
        })
        .collect();
    delays.sort_unstable();
    let mut ids: Vec<i64> = arrivals
        .iter()
        .filter_map(|(_, v)| v["thread_id"].as_i64())
        .collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();

    println!();
    println!("open threads            {}", threads + crossing);
    println!(
        "alerts received         {} of {crossing} (duplicates: {})",
        arrivals.len(),
        before - ids.len()
    );
    println!(
        "delay after crossing    p50 {} ms   p99 {} ms   max {} ms   (target: p99 < 1000 ms)",
        common::percentile(&delays, 0.5),
        common::percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0)
    );
    println!("idle CPU                {idle_cpu:.2} % of one core over 10 s");
    println!(
        "resident memory         idle {:.1} MB   after the burst {:.1} MB   peak {:.1} MB   (target: < 64 MB)",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    Ok(())
}
