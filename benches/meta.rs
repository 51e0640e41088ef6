//! Meta webhooks (DESIGN §8 Webhooks, issue #11): signed Messenger
//! deliveries per second accepted by the daemon (signature checked, body
//! durable before the 200) against a bare HTTP server that only checks
//! the signature, in the same run and over the same loopback; and the
//! latency from the 200 to the new thread being listed by the API (the
//! shape of `threads --json`), one delivery at a time.
//!
//!   cargo bench --bench meta
//!   HOURGLASS_BENCH_WEBHOOKS=2000 HOURGLASS_BENCH_VISIBLE=100 cargo bench --bench meta

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use hourglass_testsupport::meta::{customer_text, page_delivery, sign, MockGraph};

const PAGE: &str = "104857600000001";
const APP_SECRET: &str = "bench-meta-app-secret";
const TOKEN: &str = "bench-agent-token";

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

/// The bare server: checks `X-Hub-Signature-256` and answers 200.
async fn bare(headers: HeaderMap, body: Bytes) -> StatusCode {
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match hourglass_meta::verify_signature(APP_SECRET.as_bytes(), &body, Some(sig)) {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

/// `n` signed deliveries (body, signature), each one message of its own
/// customer, `prefix` keeping them apart between runs.
fn deliveries(n: usize, prefix: &str) -> Vec<(Vec<u8>, String)> {
    (0..n)
        .map(|i| {
            let d = page_delivery(
                "page",
                PAGE,
                vec![vec![customer_text(
                    PAGE,
                    &format!("{prefix}{}", 10_000 + i % 500),
                    &format!("m_{prefix}_{i}"),
                    "Hi, where is my parcel?",
                    Utc::now(),
                )]],
            );
            let body = d.to_string().into_bytes();
            let sig = sign(APP_SECRET, &body);
            (body, sig)
        })
        .collect()
}

/// POSTs every delivery to `url`, `concurrency` at a time; requests/s.
async fn blast(
    client: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<(Vec<u8>, String)>>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, bodies) = (client.clone(), url.to_owned(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < bodies.len() {
                let (body, sig) = &bodies[i];
                let resp = client
                    .post(&url)
                    .header("X-Hub-Signature-256", sig)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(bodies.len() as f64 / t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pushes = env_usize("HOURGLASS_BENCH_WEBHOOKS", 5_000);
    // Each adds a thread; the API lists at most 1,000 (550 come before).
    let visible_n = env_usize("HOURGLASS_BENCH_VISIBLE", 200).min(400);
    let concurrency = 8;
    let bin = std::env::var("HOURGLASS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hourglass").to_owned());
    let dir = tempfile::tempdir()?;
    let mock = MockGraph::start("bench-page-token", PAGE)?;
    let config = dir.path().join("hourglass.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}/hourglass.db\"\n\n[log]\nlevel = \"info\"\nformat = \"json\"\n\n\
             [[instances]]\nname = \"shop\"\ntype = \"messenger\"\nschedule = \"0 0 1 1 *\"\n\
             [instances.meta]\napi_url = \"{}\"\napp_secret = \"env:BENCH_META_APP_SECRET\"\n\
             verify_token = \"env:BENCH_META_APP_SECRET\"\naccess_token = \"env:BENCH_META_PAGE_TOKEN\"\n\
             page_id = \"{PAGE}\"\nbackfill = false\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[[http.tokens]]\nname = \"bench\"\nsecret = \"env:BENCH_TOKEN\"\nrole = \"admin\"\n",
            dir.path().display(),
            mock.url()
        ),
    )?;
    std::env::set_var("BENCH_META_APP_SECRET", APP_SECRET);
    std::env::set_var("BENCH_META_PAGE_TOKEN", "bench-page-token");
    std::env::set_var("BENCH_TOKEN", TOKEN);
    let log = dir.path().join("daemon.log");
    let (mut child, _sock) = common::spawn_ready(
        &bin,
        &config,
        std::fs::File::create(&log)?.into(),
        dir.path(),
    )?;
    let listen = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "HTTP server listening.")
            .and_then(|v| v["listen"].as_str().map(str::to_owned))
        {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let daemon_url = format!("http://{listen}/webhooks/shop");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let app = Router::new().route("/hook", post(bare));
        let _ = axum::serve(listener, app).await;
    });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    // Warm both up.
    blast(
        &client,
        &bare_url,
        Arc::new(deliveries(50, "w")),
        concurrency,
    )
    .await?;
    blast(
        &client,
        &daemon_url,
        Arc::new(deliveries(50, "w")),
        concurrency,
    )
    .await?;

    let bare_rate = blast(
        &client,
        &bare_url,
        Arc::new(deliveries(pushes, "b")),
        concurrency,
    )
    .await?;
    let daemon_rate = blast(
        &client,
        &daemon_url,
        Arc::new(deliveries(pushes, "d")),
        concurrency,
    )
    .await?;

    // 200 to visible: a new customer each time, so a new thread, with the
    // next id. Polling that one thread (`GET /api/v1/threads/{id}`, the
    // shape of `show --json`) keeps the probe itself cheap.
    let list = format!("http://{listen}/api/v1/threads?instance=shop&limit=1000");
    let listed = || async {
        let r = client.get(&list).bearer_auth(TOKEN).send().await?;
        anyhow::ensure!(r.status().is_success(), "thread list: HTTP {}", r.status());
        let v: serde_json::Value = r.json().await?;
        let ids: Vec<i64> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_i64())
            .collect();
        Ok::<_, anyhow::Error>((ids.len(), ids.into_iter().max().unwrap_or(0)))
    };
    // Everything before has been processed once the list is stable.
    let mut have = listed().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = listed().await?;
        if now == have {
            break;
        }
        have = now;
    }
    let mut visible = Vec::with_capacity(visible_n);
    for (i, next) in (have.1 + 1..).take(visible_n).enumerate() {
        let d = page_delivery(
            "page",
            PAGE,
            vec![vec![customer_text(
                PAGE,
                &format!("v{i}"),
                &format!("m_v_{i}"),
                "Hello?",
                Utc::now(),
            )]],
        );
        let body = d.to_string().into_bytes();
        let sig = sign(APP_SECRET, &body);
        let resp = client
            .post(&daemon_url)
            .header("X-Hub-Signature-256", sig)
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
        let t = Instant::now();
        let url = format!("http://{listen}/api/v1/threads/{next}");
        loop {
            let r = client.get(&url).bearer_auth(TOKEN).send().await?;
            if r.status().is_success() {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "delivery {i} never became thread {next}"
            );
        }
        visible.push(t.elapsed().as_micros() as i64);
    }
    let (after, _) = listed().await?;
    anyhow::ensure!(
        after == have.0 + visible_n,
        "{} threads listed, expected {}",
        after,
        have.0 + visible_n
    );
    let (v50, v99) = p50_p99(visible);
    let _ = child.kill();
    let _ = child.wait();

    println!("Meta webhooks: {pushes} signed Messenger deliveries, {concurrency} at a time");
    println!(
        "  daemon (signature checked, stored durably before the 200): {daemon_rate:.0}/s | bare server (signature only): {bare_rate:.0}/s | ratio {:.2}",
        daemon_rate / bare_rate
    );
    println!(
        "  200 to the new thread visible in the API ({visible_n}, one at a time): p50 {v50:.1} ms  p99 {v99:.1} ms; target p99 under 100 ms: {}",
        if v99 < 100.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
