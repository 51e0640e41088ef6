//! HTTP benchmark (DESIGN §8): with 1,000,000 threads in the store, the
//! first page of the thread list through the API and a `/metrics` scrape,
//! p50/p99 over 1,000 requests each, against the bare SQL query for the
//! same rows in the same run; the daemon's RSS; and webhook intake
//! (verified, durable before the 200) in requests per second against the
//! same insert done directly.
//!
//! The real release binary runs as a child process on a seeded SQLite
//! store; requests come from this process over loopback with keep-alive.
//!
//!   cargo bench --bench http
//!   HOURGLASS_BENCH_THREADS=100000 cargo bench --bench http   # quicker

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use hourglass::store::{MigrationStore, SqlStore, ThreadStore};
use hourglass_simulated::simulated_signature;
use sqlx::Row;

const TOKEN: &str = "bench-agent-token";
const SECRET: &str = "bench-webhook-secret";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50 and p99 in milliseconds of `durations`.
fn p50_p99(mut micros: Vec<i64>) -> (f64, f64) {
    micros.sort_unstable();
    (
        common::percentile(&micros, 0.5) as f64 / 1000.0,
        common::percentile(&micros, 0.99) as f64 / 1000.0,
    )
}

/// The thread list's first page as the store reads it (src/store/sql.rs):
/// the same columns, join, order and limit.
const FIRST_PAGE_SQL: &str =
    "SELECT t.id, t.instance, t.channel, t.thread_key, t.subject, t.order_id, \
    t.marketplace, t.language, t.reply_to, t.awaiting_since, t.due_at, t.reply_window_closes_at, \
    t.last_outbound_at, t.handled_at, t.snoozed_until, t.message_count, t.last_error, \
    t.alerted_remaining_ms, t.next_alert_at, c.display_name AS customer \
    FROM threads t LEFT JOIN customers c ON c.id = t.customer_id WHERE 1 = 1 \
    ORDER BY (t.due_at IS NULL), t.due_at, t.updated_at DESC, t.id LIMIT 100";

/// What `/metrics` counts from the store, as one bare query.
const METRICS_SQL: &str =
    "SELECT channel, due_at IS NULL AS open, COUNT(*) AS n FROM threads GROUP BY 1, 2";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let threads = env_usize("HOURGLASS_BENCH_THREADS", 1_000_000);
    let requests = env_usize("HOURGLASS_BENCH_REQUESTS", 1_000);
    let pushes = env_usize("HOURGLASS_BENCH_WEBHOOKS", 5_000);
    let bin = std::env::var("HOURGLASS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hourglass").to_owned());
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/hourglass.db", dir.path().display());

    println!("Seeding {threads} threads ...");
    let seed_start = Instant::now();
    let store = SqlStore::connect(&url, None, 4).await?;
    store.migrate().await?;
    let now = Utc::now().timestamp_millis();
    let hour = 3_600_000i64;
    // 90 % awaiting (due over the next 4 weeks, some breached), 10 % answered.
    sqlx::query(
        "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)
         INSERT INTO threads (instance, thread_key, channel, subject, awaiting_since, due_at,
            next_alert_at, message_count, created_at, updated_at)
         SELECT 'bench', 'k-' || n, CASE n % 3 WHEN 0 THEN 'amazon' WHEN 1 THEN 'email' ELSE 'ebay' END,
            'Question ' || n,
            CASE WHEN n % 10 = 0 THEN NULL ELSE $2 + (n % 2419200) * 1000 - 30 * $3 END,
            CASE WHEN n % 10 = 0 THEN NULL ELSE $2 + (n % 2419200) * 1000 - 6 * $3 END,
            NULL, 1, $2, $2 + n
         FROM seq",
    )
    .bind(threads as i64)
    .bind(now)
    .bind(hour)
    .execute(store.pool())
    .await?;
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    println!("  seeded in {:.1} s", seed_start.elapsed().as_secs_f64());

    let config = dir.path().join("hourglass.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{url}\"\n\n[log]\nlevel = \"info\"\nformat = \"json\"\n\n\
             [[instances]]\nname = \"chat\"\ntype = \"simulated\"\nschedule = \"0 0 1 1 *\"\n\
             [instances.simulated]\nchannel = \"messenger\"\nper_poll = 0\nwebhook_secret = \"env:BENCH_WEBHOOK_SECRET\"\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[[http.tokens]]\nname = \"bench\"\nsecret = \"env:BENCH_TOKEN\"\nrole = \"admin\"\n"
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("BENCH_TOKEN", TOKEN)
        .env("BENCH_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let listen: Arc<Mutex<Option<String>>> = Arc::default();
    {
        let listen = listen.clone();
        let stderr = child.stderr.take();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "HTTP server listening." {
                        if let (Ok(mut l), Some(a)) = (listen.lock(), v["listen"].as_str()) {
                            *l = Some(a.to_owned());
                        }
                    }
                    if v["level"] == "ERROR" || v["level"] == "WARN" {
                        eprintln!("daemon: {line}");
                    }
                }
            }
        });
    }
    let base = loop {
        if let Some(a) = listen.lock().ok().and_then(|l| l.clone()) {
            break format!("http://{a}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            anyhow::bail!("the daemon's HTTP server never listened");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "Daemon listening at {base} after {} ms",
        started.elapsed().as_millis()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;

    // Warm up both sides (page cache, prepared statements, connections).
    for _ in 0..20 {
        client
            .get(format!("{base}/api/v1/threads"))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .bytes()
            .await?;
        sqlx::query(FIRST_PAGE_SQL).fetch_all(store.pool()).await?;
    }

    // 1. The first page of the thread list.
    let mut api = Vec::with_capacity(requests);
    let mut rows_api = 0;
    for _ in 0..requests {
        let t = Instant::now();
        let resp = client
            .get(format!("{base}/api/v1/threads"))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "threads: HTTP {}",
            resp.status()
        );
        let body: Vec<serde_json::Value> = resp.json().await?;
        api.push(t.elapsed().as_micros() as i64);
        rows_api = body.len();
    }
    let mut bare = Vec::with_capacity(requests);
    let mut rows_bare = 0;
    for _ in 0..requests {
        let t = Instant::now();
        let rows = sqlx::query(FIRST_PAGE_SQL).fetch_all(store.pool()).await?;
        bare.push(t.elapsed().as_micros() as i64);
        rows_bare = rows.len();
    }
    let (api50, api99) = p50_p99(api);
    let (bare50, bare99) = p50_p99(bare);

    // 2. /metrics: the scrape serves cached store counts.
    let mut scrape = Vec::with_capacity(requests);
    let mut scrape_bytes = 0;
    for _ in 0..requests {
        let t = Instant::now();
        let resp = client.get(format!("{base}/metrics")).send().await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "metrics: HTTP {}",
            resp.status()
        );
        scrape_bytes = resp.bytes().await?.len();
        scrape.push(t.elapsed().as_micros() as i64);
    }
    let counts = env_usize("HOURGLASS_BENCH_COUNTS", 20);
    let mut count_sql = Vec::with_capacity(counts);
    for _ in 0..counts {
        let t = Instant::now();
        let rows = sqlx::query(METRICS_SQL).fetch_all(store.pool()).await?;
        let _: i64 = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("n").unwrap_or(0))
            .sum();
        count_sql.push(t.elapsed().as_micros() as i64);
    }
    let (m50, m99) = p50_p99(scrape);
    let (c50, c99) = p50_p99(count_sql);
    let rss = common::proc_kb(pid, "VmRSS:");
    let hwm = common::proc_kb(pid, "VmHWM:");

    // 3. Webhook intake: verified and durable before each 200, 8 at a time.
    let concurrency = 8;
    let bodies: Vec<Vec<u8>> = (0..pushes)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({"messages": [{
                "id": format!("w-{i}"), "buyer": format!("b{}", i % 500), "name": "Buyer",
                "text": "Where is my parcel?", "sent_at": Utc::now().to_rfc3339()}]}))
            .unwrap_or_default()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, base, bodies) = (client.clone(), base.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < bodies.len() {
                let body = bodies[i].clone();
                let sig = simulated_signature(SECRET.as_bytes(), &body);
                let resp = client
                    .post(format!("{base}/webhooks/chat"))
                    .header("X-Simulated-Signature", format!("sha256={sig}"))
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "webhook: HTTP {}",
                    resp.status()
                );
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let intake_s = t.elapsed().as_secs_f64();
    // Wait until the daemon has turned them all into messages.
    let processed_by = loop {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM webhook_events WHERE processed_at IS NULL")
                .fetch_one(store.pool())
                .await?;
        if row.try_get::<i64, _>("n")? == 0 {
            break t.elapsed().as_secs_f64();
        }
        if t.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("webhook deliveries still pending after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Delivery to visible: one at a time, from the POST until the message
    // is in the store (what `threads` reads).
    let visible_n = env_usize("HOURGLASS_BENCH_VISIBLE", 200);
    let mut visible = Vec::with_capacity(visible_n);
    for i in 0..visible_n {
        let id = format!("v-{i}");
        let body = serde_json::to_vec(&serde_json::json!({"messages": [{
            "id": id, "buyer": format!("v{i}"), "name": "Buyer", "text": "Hello?",
            "sent_at": Utc::now().to_rfc3339()}]}))?;
        let sig = simulated_signature(SECRET.as_bytes(), &body);
        let t = Instant::now();
        let resp = client
            .post(format!("{base}/webhooks/chat"))
            .header("X-Simulated-Signature", format!("sha256={sig}"))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "webhook: HTTP {}",
            resp.status()
        );
        loop {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM messages WHERE instance = 'chat' AND external_id = $1",
            )
            .bind(&id)
            .fetch_one(store.pool())
            .await?;
            if row.try_get::<i64, _>("n")? > 0 {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "delivery {id} never became a message"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        visible.push(t.elapsed().as_micros() as i64);
    }
    let (v50, v99) = p50_p99(visible);

    let t = Instant::now();
    let mut tasks = Vec::new();
    let store = Arc::new(store);
    for w in 0..concurrency {
        let (store, bodies) = (store.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < bodies.len() {
                let mut body = bodies[i].clone();
                body.push(b' '); // another body: not absorbed as a redelivery
                store
                    .store_webhook_event("direct", &body, Utc::now())
                    .await?;
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let direct_s = t.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let threads_listed = store
        .threads(
            &hourglass::store::ThreadFilter {
                limit: Some(100),
                ..Default::default()
            },
            Utc::now(),
        )
        .await?
        .len();
    println!();
    println!("HTTP with {threads} threads, {requests} requests each (ms):");
    println!(
        "  thread list, first page ({rows_api} rows)  API p50 {api50:.2}  p99 {api99:.2}  | bare SQL ({rows_bare} rows) p50 {bare50:.2}  p99 {bare99:.2}  | ratio p99 {:.1}x",
        api99 / bare99.max(0.001)
    );
    println!(
        "  /metrics scrape ({scrape_bytes} bytes)        p50 {m50:.2}  p99 {m99:.2}  | bare count SQL ({counts} runs) p50 {c50:.2}  p99 {c99:.2}  | ratio p99 {:.2}x",
        m99 / c99.max(0.001)
    );
    println!(
        "  target: p99 under 50 ms: thread list {}, metrics {}",
        verdict(api99 < 50.0),
        verdict(m99 < 50.0)
    );
    println!(
        "  daemon RSS {} MB (peak {} MB); target under 40 MB: {}",
        rss / 1024,
        hwm / 1024,
        verdict(hwm < 40 * 1024)
    );
    println!(
        "Webhook intake: {pushes} signed deliveries, {concurrency} at a time: {:.0} req/s durable before the 200 (all processed into messages after {processed_by:.1} s) | the same insert directly: {:.0}/s | ratio {:.2}",
        pushes as f64 / intake_s,
        pushes as f64 / direct_s,
        (pushes as f64 / intake_s) / (pushes as f64 / direct_s)
    );
    println!(
        "Webhook to message in the store, one at a time ({visible_n}): p50 {v50:.1} ms  p99 {v99:.1} ms; target p99 under 100 ms: {}",
        verdict(v99 < 100.0)
    );
    anyhow::ensure!(
        threads_listed == 100,
        "the store listed {threads_listed} threads"
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
