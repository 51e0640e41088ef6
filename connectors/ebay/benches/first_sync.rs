//! First sync of a large eBay account from the mock eBay: the connector
//! (paging, token, normalization) against a plain client that fetches and
//! parses the same JSON and does nothing else. The daemon-level benchmark
//! (messages per second into the store) builds on this mock.
//!
//! `HOURGLASS_BENCH_EBAY_CONVERSATIONS` (default 10,000) conversations of
//! 5 messages each.

use std::time::Instant;

use chrono::{Duration, Utc};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::{Connector, Cursors};
use hourglass_ebay::{EbayConfig, EbayConnector};
use hourglass_testsupport::ebay::{MockEbay, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SCOPE};
use serde_json::Value;

const PER_CONVERSATION: usize = 5;

fn main() -> anyhow::Result<()> {
    let conversations: usize = std::env::var("HOURGLASS_BENCH_EBAY_CONVERSATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mock = MockEbay::start()?;
    let start = Utc::now() - Duration::days(3);
    for i in 0..conversations {
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
                    &format!("Question {k} about item {i}: is it still available?"),
                    at,
                );
            } else {
                mock.seller_writes(&c, &format!("Answer {k}: yes, it ships today."), at);
            }
        }
    }
    let expected = conversations * PER_CONVERSATION;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let t = Instant::now();
    let (plain, plain_calls) = rt.block_on(plain_sync(&mock))?;
    let plain_secs = t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    let refresh = dir.path().join("refresh");
    std::fs::write(&secret, CLIENT_SECRET)?;
    std::fs::write(&refresh, REFRESH_TOKEN)?;
    let mut config = EbayConfig::new(
        CLIENT_ID,
        SecretRef::File(secret.to_string_lossy().into_owned()),
        SecretRef::File(refresh.to_string_lossy().into_owned()),
    );
    config.api_url = mock.url().to_owned();
    config.token_url = mock.token_url();
    config.daily_call_budget = 1_000_000;
    config.backfill_days = 0;
    let conn = EbayConnector::new("bench", config).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let calls_before = mock.requests().len();
    let mut cursors = Cursors::new();
    let mut got = 0usize;
    rt.block_on(async {
        loop {
            let batch = conn.poll(&cursors).await?;
            got += batch.messages.len();
            cursors.extend(batch.cursors);
            if !batch.more {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })?;
    let conn_secs = t.elapsed().as_secs_f64();
    let conn_calls = mock.requests().len() - calls_before;

    anyhow::ensure!(plain == expected, "plain client read {plain} of {expected}");
    anyhow::ensure!(got == expected, "connector read {got} of {expected}");
    anyhow::ensure!(mock.violations().is_empty(), "{:?}", mock.violations());
    println!("ebay first sync: {conversations} conversations, {expected} messages");
    println!(
        "  plain fetch + parse: {plain_secs:.2} s, {:.0} messages/s, {plain_calls} calls",
        expected as f64 / plain_secs
    );
    println!(
        "  connector:           {conn_secs:.2} s, {:.0} messages/s, {conn_calls} calls",
        expected as f64 / conn_secs
    );
    println!("  connector / plain time: {:.2}", conn_secs / plain_secs);
    Ok(())
}

/// The same pages, fetched and parsed, nothing else.
async fn plain_sync(mock: &MockEbay) -> anyhow::Result<(usize, usize)> {
    let http = reqwest::Client::new();
    let token: Value = http
        .post(mock.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH_TOKEN),
            ("scope", SCOPE),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let base = format!("{}/commerce/message/v1", mock.url());
    let get = |url: String, q: Vec<(&'static str, String)>| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let v: Value = http
                .get(url)
                .bearer_auth(token)
                .header("X-EBAY-C-MARKETPLACE-ID", "EBAY_US")
                .query(&q)
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, anyhow::Error>(v)
        }
    };
    let (mut messages, mut calls, mut offset) = (0usize, 0usize, 0usize);
    loop {
        let page = get(
            format!("{base}/conversation"),
            vec![
                ("conversation_type", "FROM_MEMBERS".into()),
                ("limit", "50".into()),
                ("offset", offset.to_string()),
            ],
        )
        .await?;
        calls += 1;
        let convs = page["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in &convs {
            let id = c["conversationId"].as_str().unwrap_or_default();
            let mut moffset = 0usize;
            loop {
                let p = get(
                    format!("{base}/conversation/{id}"),
                    vec![
                        ("conversation_type", "FROM_MEMBERS".into()),
                        ("limit", "50".into()),
                        ("offset", moffset.to_string()),
                    ],
                )
                .await?;
                calls += 1;
                messages += p["messages"].as_array().map_or(0, Vec::len);
                if p.get("next").is_none() {
                    break;
                }
                moffset += 50;
            }
        }
        if page.get("next").is_none() || convs.is_empty() {
            return Ok((messages, calls));
        }
        offset += 50;
    }
}
