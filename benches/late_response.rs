//! The Late Response Rate on a big store: 1,000,000 threads with about
//! 1.3 million awaiting cycles spread over 120 days. Times, p50/p99 over a
//! few runs: the grouped query behind `stats`, `/metrics` and the alert
//! (7/30/90 days and the forecast, `StatsStore::late_response_counts`),
//! and the 30-day `report` read; against a bare `COUNT(*)` of the same
//! 90 days in the same run. Prints the query plan, to show the range scan
//! on `reply_cycles_started`.
//!
//!   cargo bench --bench late_response
//!   HOURGLASS_BENCH_THREADS=100000 cargo bench --bench late_response   # quicker

mod common;

use std::time::Instant;

use chrono::{Duration, Utc};
use hourglass::store::{MigrationStore, SqlStore, StatsStore};
use sqlx::Row;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn p50_p99(mut micros: Vec<i64>) -> (f64, f64) {
    micros.sort_unstable();
    (
        common::percentile(&micros, 0.5) as f64 / 1000.0,
        common::percentile(&micros, 0.99) as f64 / 1000.0,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let threads = env_usize("HOURGLASS_BENCH_THREADS", 1_000_000);
    let runs = env_usize("HOURGLASS_BENCH_RUNS", 20);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/hourglass.db", dir.path().display());
    let store = SqlStore::connect(&url, None, 4).await?;
    store.migrate().await?;
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let day = 86_400_000i64;

    println!("Seeding {threads} threads and their cycles ...");
    let seed = Instant::now();
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)
         INSERT INTO threads (instance, thread_key, channel, marketplace, created_at, updated_at)
         SELECT CASE n % 4 WHEN 0 THEN 'amazon-eu' WHEN 1 THEN 'amazon-us' WHEN 2 THEN 'ebay' ELSE 'shop' END,
            'k-' || n, CASE n % 4 WHEN 0 THEN 'amazon' WHEN 1 THEN 'amazon' WHEN 2 THEN 'ebay' ELSE 'email' END,
            CASE n % 4 WHEN 0 THEN CASE n % 3 WHEN 0 THEN 'amazon.de' WHEN 1 THEN 'amazon.fr' ELSE 'amazon.it' END
                       WHEN 1 THEN 'amazon.com' ELSE NULL END,
            $2, $2
         FROM seq",
    )
    .bind(threads as i64)
    .bind(now_ms)
    .execute(store.pool())
    .await?;
    // One cycle per thread over the last 120 days, a second for 30 % of
    // them; answered after 0..47 h, 5 % unanswered, 2 % marked.
    for (offset, every) in [(0i64, 1i64), (7, 3)] {
        sqlx::query(
            "INSERT INTO reply_cycles (thread_id, started_at, instance, channel, marketplace,
                answered_at, no_response_needed_at)
             SELECT id, $1 - ((id * 7919 + $2) % (120 * $3)), instance, channel, COALESCE(marketplace, ''),
                CASE WHEN id % 20 = 0 OR id % 50 = 1 THEN NULL
                     ELSE $1 - ((id * 7919 + $2) % (120 * $3)) + (id % 48) * 3600000 END,
                CASE WHEN id % 50 = 1 THEN $1 - ((id * 7919 + $2) % (120 * $3)) + 3600000 END
             FROM threads WHERE id % $4 = 0
             ON CONFLICT DO NOTHING",
        )
        .bind(now_ms)
        .bind(offset * 3_600_000 + 1)
        .bind(day)
        .bind(every)
        .execute(store.pool())
        .await?;
    }
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    let cycles: i64 = sqlx::query("SELECT COUNT(*) AS n FROM reply_cycles")
        .fetch_one(store.pool())
        .await?
        .try_get("n")?;
    println!(
        "  {cycles} cycles, seeded in {:.1} s",
        seed.elapsed().as_secs_f64()
    );

    let plan = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT instance, marketplace, ($1 - started_at) / $2, COUNT(*)
         FROM reply_cycles WHERE started_at > $3 AND started_at <= $1 GROUP BY 1, 2, 3",
    )
    .bind(now_ms)
    .bind(day)
    .bind(now_ms - 90 * day)
    .fetch_all(store.pool())
    .await?;
    for r in &plan {
        println!("  plan: {}", r.try_get::<String, _>("detail")?);
    }

    // Warm up.
    store.late_response_counts(now).await?;
    let mut grouped = Vec::new();
    let mut groups = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let counts = store.late_response_counts(now).await?;
        groups = hourglass::lrr::compute(&counts).len();
        grouped.push(t.elapsed().as_micros() as i64);
    }
    let mut bare = Vec::new();
    let mut in_90 = 0i64;
    for _ in 0..runs {
        let t = Instant::now();
        in_90 = sqlx::query(
            "SELECT COUNT(*) AS n FROM reply_cycles WHERE started_at > $1 AND started_at <= $2",
        )
        .bind(now_ms - 90 * day)
        .bind(now_ms)
        .fetch_one(store.pool())
        .await?
        .try_get("n")?;
        bare.push(t.elapsed().as_micros() as i64);
    }
    let mut report = Vec::new();
    let mut in_30 = 0;
    for _ in 0..runs.min(5) {
        let t = Instant::now();
        in_30 = store
            .report_cycles(now - Duration::days(30), now)
            .await?
            .len();
        report.push(t.elapsed().as_micros() as i64);
    }
    let (g50, g99) = p50_p99(grouped);
    let (b50, b99) = p50_p99(bare);
    let (r50, r99) = p50_p99(report);
    println!("\nLate Response Rate over {in_90} cycles in 90 days ({groups} instance/marketplace groups):");
    println!("  7/30/90 d + forecast (grouped query + compute): p50 {g50:.1} ms, p99 {g99:.1} ms");
    println!(
        "  bare COUNT(*) of the same 90 days:                p50 {b50:.1} ms, p99 {b99:.1} ms"
    );
    println!("  ratio: {:.1}x the bare count", g50 / b50.max(0.001));
    println!(
        "  report read, 30 days ({in_30} cycles):            p50 {r50:.1} ms, p99 {r99:.1} ms"
    );
    Ok(())
}
