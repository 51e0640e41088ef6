//! Telegram ingest: updates per second from a mock Bot API into the store
//! (`hourglass sync --once` of a `telegram` instance into a fresh SQLite
//! store: getUpdates pages of 100, parsed, threaded, clocks set, the offset
//! committed with each page) against fetching and parsing the same updates
//! with no store (the connector's own poll loop, in process).
//!
//! The ratio says what the store costs on top of the Bot API round trips.
//! The store side also pays for process start and migrations (a few ms).
//! Each run is checked: every update stored, one thread per chat.
//!
//! `cargo bench --bench telegram`; `HOURGLASS_BENCH_UPDATES` (default
//! 20,000), `HOURGLASS_BENCH_RUNS` (default 3).

mod common;

use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use hourglass_telegram::{TelegramConfig, TelegramConnector};
use hourglass_testsupport::telegram::MockBotApi;

const BIN: &str = env!("CARGO_BIN_EXE_hourglass");
const TOKEN: &str = "700002:AAH-bench-token";
const CHATS: i64 = 500;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A mock holding `n` customer messages spread over `CHATS` chats.
fn filled_mock(n: usize) -> anyhow::Result<MockBotApi> {
    let mock = MockBotApi::start(TOKEN)?;
    for i in 0..n {
        let chat = 10_000 + (i as i64 % CHATS);
        mock.push_message(
            chat,
            &format!("Customer {chat}"),
            &format!(
                "Message {i}: hello, where is my order 123-4567890-{:07}?",
                i
            ),
        );
    }
    Ok(mock)
}

/// Fetch and parse only: the connector's poll loop, cursor kept in memory.
fn fetch_and_parse(n: usize) -> anyhow::Result<f64> {
    let mock = filled_mock(n)?;
    std::env::set_var("HG_BENCH_TG_TOKEN", TOKEN);
    let config: TelegramConfig = toml::from_str(&format!(
        "api_url = \"{}\"\nbot_token = \"env:HG_BENCH_TG_TOKEN\"\n",
        mock.url()
    ))?;
    let connector = TelegramConnector::new("bench", config).map_err(anyhow::Error::msg)?;
    let (read, seconds) = common::poll_to_end(&connector)?;
    ensure!(read == n, "parsed {read} of {n} updates");
    Ok(seconds)
}

/// Into the store: `hourglass sync --once`.
fn into_store(n: usize) -> anyhow::Result<f64> {
    let mock = filled_mock(n)?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("hourglass.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}/hourglass.db\"\n\n[[instances]]\nname = \"bench-bot\"\ntype = \"telegram\"\n[instances.telegram]\napi_url = \"{}\"\nbot_token = \"env:HG_BENCH_TG_TOKEN\"\n",
            dir.path().display(),
            mock.url()
        ),
    )?;
    let hourglass = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("HG_BENCH_TG_TOKEN", TOKEN)
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
        report[0]["messages"].as_u64() == Some(n as u64),
        "stored {} of {n}",
        report[0]["messages"]
    );
    let out = hourglass(&["threads", "--json"]).output()?;
    let threads: serde_json::Value = serde_json::from_slice(&out.stdout).context("threads")?;
    let expected = (CHATS as usize).min(n);
    ensure!(
        threads.as_array().map(Vec::len) == Some(expected),
        "expected {expected} threads"
    );
    Ok(seconds)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let n = env_usize("HOURGLASS_BENCH_UPDATES", 20_000);
    let runs = env_usize("HOURGLASS_BENCH_RUNS", 3).max(1);
    let mut parse = Vec::new();
    let mut store = Vec::new();
    for run in 1..=runs {
        let p = fetch_and_parse(n)?;
        let s = into_store(n)?;
        println!(
            "run {run}: fetch+parse {:.0} updates/s, into the store {:.0} updates/s",
            n as f64 / p,
            n as f64 / s
        );
        parse.push(p);
        store.push(s);
    }
    let (p, s) = (median(parse), median(store));
    println!(
        "telegram ingest, {n} updates in {CHATS} chats (median of {runs}): fetch+parse {:.0}/s, into the store {:.0}/s, store/parse time ratio {:.2}",
        n as f64 / p,
        n as f64 / s,
        s / p
    );
    Ok(())
}
