//! eBay first sync: messages per second from the mock Message API into the
//! store (`hourglass sync --once` of an `ebay` instance into a fresh SQLite
//! store: conversations listed 50 a page, each read whole, normalized,
//! threaded, clocks set, the cursor committed with each page) against the
//! same conversations fetched and parsed with no store (the connector's own
//! poll loop, in process), in the same run.
//!
//! The ratio says what the store costs on top of the API round trips. The
//! store side also pays for process start and migrations (a few ms). Each
//! run is checked: every message stored, one thread per conversation, no
//! request that breaks the spec.
//!
//! `cargo bench --bench ebay`; `HOURGLASS_BENCH_EBAY_CONVERSATIONS`
//! (default 10,000, of 5 messages each), `HOURGLASS_BENCH_RUNS` (default 3).

mod common;

use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use chrono::{Duration, Utc};
use hourglass_connector::secret::SecretRef;
use hourglass_ebay::{EbayConfig, EbayConnector};
use hourglass_testsupport::ebay::{MockEbay, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SELLER};

const BIN: &str = env!("CARGO_BIN_EXE_hourglass");
const PER_CONVERSATION: usize = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A mock holding `n` conversations of buyer questions and seller answers.
fn filled_mock(n: usize) -> anyhow::Result<MockEbay> {
    let mock = MockEbay::start()?;
    let start = Utc::now() - Duration::days(3);
    for i in 0..n {
        let c = mock.add_conversation(
            &format!("buyer_{i}"),
            Some(&format!("{}", 300_000_000_000u64 + i as u64)),
            "Question",
        );
        for k in 0..PER_CONVERSATION {
            let at = start + Duration::seconds((i * PER_CONVERSATION + k) as i64);
            if k % 2 == 0 {
                mock.buyer_writes(
                    &c,
                    &format!("Question {k} about item {i}: still available?"),
                    at,
                );
            } else {
                mock.seller_writes(&c, &format!("Answer {k}: yes, it ships today."), at);
            }
        }
    }
    Ok(mock)
}

/// Secrets in files, as a seller would keep them.
fn secrets(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let secret = dir.join("client_secret");
    let refresh = dir.join("refresh_token");
    std::fs::write(&secret, CLIENT_SECRET)?;
    std::fs::write(&refresh, REFRESH_TOKEN)?;
    Ok((
        secret.to_string_lossy().into_owned(),
        refresh.to_string_lossy().into_owned(),
    ))
}

/// Fetch and parse only: the connector's poll loop, cursor kept in memory.
fn fetch_and_parse(n: usize) -> anyhow::Result<f64> {
    let mock = filled_mock(n)?;
    let dir = tempfile::tempdir()?;
    let (secret, refresh) = secrets(dir.path())?;
    let mut config = EbayConfig::new(CLIENT_ID, SecretRef::File(secret), SecretRef::File(refresh));
    config.api_url = mock.url().to_owned();
    config.token_url = mock.token_url();
    config.username = Some(SELLER.to_owned());
    config.daily_call_budget = 1_000_000;
    config.backfill_days = 0;
    let connector = EbayConnector::new("bench", config).map_err(anyhow::Error::msg)?;
    let (read, seconds) = common::poll_to_end(&connector)?;
    ensure!(
        read == n * PER_CONVERSATION,
        "parsed {read} of {} messages",
        n * PER_CONVERSATION
    );
    ensure!(mock.violations().is_empty(), "{:?}", mock.violations());
    Ok(seconds)
}

/// Into the store: `hourglass sync --once`.
fn into_store(n: usize) -> anyhow::Result<f64> {
    let mock = filled_mock(n)?;
    let dir = tempfile::tempdir()?;
    let (secret, refresh) = secrets(dir.path())?;
    let config = dir.path().join("hourglass.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}/hourglass.db\"\n\n[[instances]]\nname = \"bench-ebay\"\n\
             type = \"ebay\"\n[instances.ebay]\napi_url = \"{}\"\ntoken_url = \"{}\"\n\
             client_id = \"{CLIENT_ID}\"\nclient_secret = \"file:{secret}\"\n\
             refresh_token = \"file:{refresh}\"\nusername = \"{SELLER}\"\n\
             daily_call_budget = 1000000\nbackfill_days = 0\n",
            dir.path().display(),
            mock.url(),
            mock.token_url(),
        ),
    )?;
    let hourglass = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("HOURGLASS_CONFIG");
        c
    };
    let t = Instant::now();
    let out = hourglass(&["sync", "--once", "--json"]).output()?;
    let seconds = t.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("sync output")?;
    ensure!(
        report[0]["messages"].as_u64() == Some((n * PER_CONVERSATION) as u64),
        "stored {} of {}",
        report[0]["messages"],
        n * PER_CONVERSATION
    );
    let out = hourglass(&["threads", "--json"]).output()?;
    let threads: serde_json::Value = serde_json::from_slice(&out.stdout).context("threads")?;
    ensure!(
        threads.as_array().map(Vec::len) == Some(n),
        "expected {n} threads"
    );
    ensure!(mock.violations().is_empty(), "{:?}", mock.violations());
    Ok(seconds)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let n = env_usize("HOURGLASS_BENCH_EBAY_CONVERSATIONS", 10_000);
    let runs = env_usize("HOURGLASS_BENCH_RUNS", 3).max(1);
    let messages = (n * PER_CONVERSATION) as f64;
    let mut parse = Vec::new();
    let mut store = Vec::new();
    for run in 1..=runs {
        let p = fetch_and_parse(n)?;
        let s = into_store(n)?;
        println!(
            "run {run}: fetch+parse {:.0} messages/s, into the store {:.0} messages/s",
            messages / p,
            messages / s
        );
        parse.push(p);
        store.push(s);
    }
    let (p, s) = (median(parse), median(store));
    println!(
        "ebay first sync, {n} conversations, {messages} messages (median of {runs}): fetch+parse {:.0}/s, into the store {:.0}/s, store/parse time ratio {:.2}",
        messages / p,
        messages / s,
        s / p
    );
    Ok(())
}
