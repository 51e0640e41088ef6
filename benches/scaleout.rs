//! Scale-out benchmark (issue #14): alert delay p99 and outbox throughput
//! with 1, 2 and 3 daemons on one PostgreSQL store, against one daemon on
//! SQLite measured in the same run, all with the same number of open
//! threads.
//!
//! Each setup gets a fresh store seeded with `HOURGLASS_BENCH_THREADS` open
//! threads (deadlines days away), `SCALEOUT_CROSSINGS` more whose 1 h alert
//! point falls within a 20 s window after the daemons are up, and
//! `6 x 200` simulated buyer threads. Once every daemon is ready,
//! `SCALEOUT_REPLIES_PER_THREAD` replies per buyer thread are queued in one
//! statement; the daemons send them to a mock platform without a quota
//! (so the outbox, the store and the daemons are what is measured). A
//! webhook receiver in this process timestamps every alert.
//!
//!   cargo bench --bench scaleout                              # 20,000 threads, a few minutes
//!   HOURGLASS_BENCH_THREADS=1000000 cargo bench --bench scaleout   # the issue's size
//!
//! The PostgreSQL cluster is a throwaway one (testsupport), on this machine.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use hourglass::store::{Backend, MigrationStore, SqlStore};
use hourglass_testsupport::mockplatform::MockPlatform;
use hourglass_testsupport::postgres::Postgres;

const INSTANCES: usize = 6;
const THREADS_PER_INSTANCE: usize = 200;
/// Alert crossings spread over this many seconds.
const WINDOW_S: i64 = 20;

type Arrivals = Arc<Mutex<Vec<(DateTime<Utc>, serde_json::Value)>>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sizes {
    threads: usize,
    crossings: usize,
    replies_per_thread: usize,
}

struct Outcome {
    label: String,
    alerts: usize,
    duplicate_alerts: usize,
    p50_ms: i64,
    p99_ms: i64,
    replies: usize,
    duplicate_replies: usize,
    replies_per_s: f64,
}

fn config(url: &str, hook: &str, mock: &MockPlatform, per_poll: usize) -> String {
    let mut text = format!(
        "[store]\nurl = \"{url}\"\n\n[log]\nlevel = \"warn\"\n\n[clock]\nthresholds = [\"1h\"]\n\n\
         [outbox]\npoll_interval = \"200ms\"\n\n\
         [[alerts.sinks]]\nname = \"bench\"\ntype = \"webhook\"\nurl = \"{hook}\"\nformat = \"json\"\n"
    );
    for i in 0..INSTANCES {
        text.push_str(&format!(
            "\n[[instances]]\nname = \"shop-{i}\"\ntype = \"simulated\"\nschedule = \"0 0 1 1 *\"\n\
             rate_limit = {{ per_second = 100000.0, burst = 1000 }}\n\
             [instances.simulated]\nchannel = \"amazon\"\nper_poll = {per_poll}\nthreads = {per_poll}\n\
             api_url = \"{}\"\n",
            mock.url()
        ));
    }
    text
}

/// `1..=$1` as a CTE named `seq(n)`.
fn sequence(store: &SqlStore) -> &'static str {
    match store.backend() {
        Backend::Sqlite => {
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)"
        }
        Backend::Postgres => "WITH seq(n) AS (SELECT generate_series(1, $1::bigint))",
    }
}

/// `threads` open threads due in 2 to 30 days, on instance `bench` (not
/// configured: only the alert engine looks at them).
async fn seed(store: &SqlStore, threads: usize) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    let hour = 3_600_000i64;
    let seq = sequence(store);
    sqlx::query(&format!(
        "{seq}
         INSERT INTO threads (instance, thread_key, channel, subject, awaiting_since, due_at,
            next_alert_at, message_count, created_at, updated_at)
         SELECT 'bench', 'far-' || n, 'amazon', 'Question ' || n,
            $2 + (n % 2419200) * 1000 - 24 * $3, $2 + (n % 2419200) * 1000 + 48 * $3,
            $2 + (n % 2419200) * 1000 + 47 * $3, 1, $2, $2
         FROM seq"
    ))
    .bind(threads as i64)
    .bind(now)
    .bind(hour)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// `crossings` threads whose alert point falls in `[start, start + WINDOW_S)`.
async fn seed_crossings(store: &SqlStore, crossings: usize, start: i64) -> anyhow::Result<()> {
    let hour = 3_600_000i64;
    let seq = sequence(store);
    sqlx::query(&format!(
        "{seq}
         INSERT INTO threads (instance, thread_key, channel, subject, awaiting_since, due_at,
            next_alert_at, message_count, created_at, updated_at)
         SELECT 'bench', 'soon-' || n, 'amazon', 'Soon ' || n,
            $2 + (n * $3 / $1) - 23 * $4, $2 + (n * $3 / $1) + $4, $2 + (n * $3 / $1), 1, $2, $2
         FROM seq"
    ))
    .bind(crossings as i64)
    .bind(start)
    .bind(WINDOW_S * 1000)
    .bind(hour)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Queues `per_thread` replies to every buyer thread in one statement, so
/// that all daemons see them at once.
async fn queue_replies(store: &SqlStore, per_thread: usize) -> anyhow::Result<u64> {
    let now = Utc::now().timestamp_millis();
    let rounds = (1..=per_thread.max(1))
        .map(|r| format!("SELECT {r} AS r"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let done = sqlx::query(&format!(
        "INSERT INTO outbox (id, thread_id, instance, body, template, state, attempts,
            next_attempt_at, created_by, created_at, updated_at)
         SELECT 'bench-' || t.id || '-' || rounds.r, t.id, t.instance,
            'Reply ' || rounds.r || ': your parcel left today.', NULL, 'queued', 0,
            $1, 'bench', $1 + rounds.r, $1
         FROM threads t, ({rounds}) rounds
         WHERE t.instance LIKE 'shop-%'"
    ))
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

async fn run_setup(
    label: &str,
    url: &str,
    daemons: usize,
    sizes: &Sizes,
    bin: &str,
) -> anyhow::Result<Outcome> {
    println!("{label}: seeding {} open threads ...", sizes.threads);
    let dir = tempfile::tempdir()?;
    let mock = MockPlatform::start(None)?;
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
    let hook = format!("http://{}/alerts", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let path = dir.path().join("hourglass.toml");
    // The buyer threads: one pass that creates them, then nothing new.
    std::fs::write(&path, config(url, &hook, &mock, THREADS_PER_INSTANCE))?;
    let out = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .args(["sync", "--once"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, config(url, &hook, &mock, 0))?;

    let store = SqlStore::connect(url, None, 2).await?;
    store.migrate().await?;
    let seed_started = Instant::now();
    seed(&store, sizes.threads).await?;
    // The crossings begin once every daemon has had time to start.
    let allowance_ms = 8_000 + 2_000 * daemons as i64 + sizes.threads as i64 / 50;
    let start = Utc::now().timestamp_millis() + allowance_ms;
    seed_crossings(&store, sizes.crossings, start).await?;
    println!(
        "  seeded in {:.1} s; starting {daemons} daemon(s)",
        seed_started.elapsed().as_secs_f64()
    );
    let mut children: Vec<(Child, std::os::unix::net::UnixDatagram)> = Vec::new();
    for _ in 0..daemons {
        children.push(common::spawn_ready(
            bin,
            &path,
            Stdio::inherit(),
            dir.path(),
        )?);
    }
    let ready_at = Utc::now().timestamp_millis();
    anyhow::ensure!(
        ready_at < start,
        "the daemons were ready {} ms after the first alert point: the start allowance is too short",
        ready_at - start
    );

    let queued_at = Instant::now();
    let replies = queue_replies(&store, sizes.replies_per_thread).await? as usize;
    let drain_by = Instant::now() + Duration::from_secs(600);
    while mock.accepted_count() < replies && Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = mock
        .accepted()
        .last()
        .map(|a| a.at.duration_since(queued_at))
        .unwrap_or_default();

    let alerts_by = Instant::now()
        + Duration::from_millis((start - Utc::now().timestamp_millis()).max(0) as u64)
        + Duration::from_secs(WINDOW_S as u64 + 30);
    while arrivals.lock().map(|a| a.len()).unwrap_or(0) < sizes.crossings
        && Instant::now() < alerts_by
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late duplicates would arrive within a moment of the last alert.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (child, _) in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for (child, _) in &mut children {
        let _ = child.wait();
    }
    server.abort();
    store.close().await;

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
    let all = ids.len();
    ids.dedup();
    let accepted = mock.accepted().len();
    Ok(Outcome {
        label: label.to_owned(),
        alerts: ids.len(),
        duplicate_alerts: all - ids.len(),
        p50_ms: common::percentile(&delays, 0.5),
        p99_ms: common::percentile(&delays, 0.99),
        replies: accepted,
        duplicate_replies: mock.duplicates(),
        replies_per_s: accepted as f64 / drained.as_secs_f64().max(1e-3),
    })
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/hourglass.db", dir.display())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes = Sizes {
        threads: env_usize("HOURGLASS_BENCH_THREADS", 20_000),
        crossings: env_usize("SCALEOUT_CROSSINGS", 1_000),
        replies_per_thread: env_usize("SCALEOUT_REPLIES_PER_THREAD", 2),
    };
    let bin = std::env::var("HOURGLASS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hourglass").to_owned());
    println!(
        "scaleout: {} open threads + {} alert crossings over {WINDOW_S} s, {} replies to {} buyer threads",
        sizes.threads,
        sizes.crossings,
        sizes.replies_per_thread * INSTANCES * THREADS_PER_INSTANCE,
        INSTANCES * THREADS_PER_INSTANCE
    );

    let mut outcomes = Vec::new();
    let sqlite_dir = tempfile::tempdir()?;
    outcomes.push(
        run_setup(
            "SQLite, 1 daemon",
            &sqlite_url(sqlite_dir.path()),
            1,
            &sizes,
            &bin,
        )
        .await?,
    );
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    for daemons in 1..=3 {
        let url = pg.create_database(&format!("scaleout{daemons}"))?;
        let label = format!("PostgreSQL, {daemons} daemon(s)");
        outcomes.push(run_setup(&label, &url, daemons, &sizes, &bin).await?);
    }

    let reference = &outcomes[0];
    println!();
    println!(
        "{:<26} {:>8} {:>6} {:>9} {:>9} {:>8} {:>6} {:>10}   vs SQLite (p99, throughput)",
        "setup", "alerts", "dup", "p50 ms", "p99 ms", "replies", "dup", "replies/s"
    );
    for o in &outcomes {
        println!(
            "{:<26} {:>8} {:>6} {:>9} {:>9} {:>8} {:>6} {:>10.0}   x{:.2}, x{:.2}",
            o.label,
            o.alerts,
            o.duplicate_alerts,
            o.p50_ms,
            o.p99_ms,
            o.replies,
            o.duplicate_replies,
            o.replies_per_s,
            o.p99_ms.max(1) as f64 / reference.p99_ms.max(1) as f64,
            o.replies_per_s / reference.replies_per_s.max(1e-9),
        );
    }
    println!(
        "targets: every alert once (p99 < 1000 ms, DESIGN §8), every reply once; \
         PostgreSQL throughput grows with daemons"
    );
    Ok(())
}
