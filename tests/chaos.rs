//! The chaos run (issue #15, part 1): the daemon with Amazon (relay mail
//! over IMAP), plain e-mail, eBay, Telegram, X and Messenger, while every
//! HTTP platform answers through a fault-injecting proxy
//! (testsupport/src/chaos.rs: 401, 429 with and without Retry-After, 500,
//! 503, resets, slow bodies, truncated JSON, HTML instead of JSON), customers
//! keep writing, agents keep replying, and the daemon is SIGKILLed and
//! SIGHUPed at random. Then the platforms recover, and:
//!
//! - every message the platforms served is stored exactly once;
//! - every reply was accepted by its platform exactly once, or is `failed`
//!   or `uncertain` with a reason (and a `failed` one was not accepted);
//! - every threshold alert reached the webhook once per (thread,
//!   threshold, awaiting cycle);
//! - every instance polls successfully again (none stays paused);
//! - the daemon's peak RSS stayed under a bound.
//!
//! `HOURGLASS_CHAOS_SECS` (default 120, the short form CI runs) sets how
//! long the faults last, `HOURGLASS_CHAOS_SEED` replays a run (the seed is
//! printed). The long form:
//! `HOURGLASS_CHAOS_SECS=600 cargo test --test chaos -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{wait_until, Daemon, TestApp, WebhookReceiver};
use hourglass_testsupport::chaos::{Chaos, ChaosProxy};
use hourglass_testsupport::dovecot::Dovecot;
use hourglass_testsupport::ebay::{MockEbay, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SELLER};
use hourglass_testsupport::meta::MockGraph;
use hourglass_testsupport::smtp::SmtpSink;
use hourglass_testsupport::telegram::MockBotApi;
use hourglass_testsupport::x::{MockX, SELLER_ID};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const TG_TOKEN: &str = "700001:AAH-chaos-test-token";
const X_REFRESH: &str = "xrt-chaos-refresh";
const META_TOKEN: &str = "EAAG-chaos-page-token";
const PAGE: &str = "104857600000001";
const STORE_KEY: &str = "a store key only the chaos run knows";
/// Share of requests the proxies fault while the chaos lasts.
const FAULT_RATE: f64 = 0.3;
/// Peak resident memory the daemon may reach (VmHWM), generous: the
/// footprint target of an idle daemon is 30 MB.
const RSS_BOUND_KB: u64 = 200 * 1024;
/// How long the platforms may take to be drained after they recover.
const SETTLE: Duration = Duration::from_secs(240);

const PLATFORMS: [&str; 6] = ["amazon", "email", "ebay", "telegram", "x", "messenger"];

struct World {
    dovecot: Dovecot,
    smtp: SmtpSink,
    ebay: MockEbay,
    telegram: MockBotApi,
    x: MockX,
    meta: MockGraph,
    ebay_convs: HashMap<usize, String>,
}

impl World {
    /// Customer `who` of `platform` writes `text`; returns when the
    /// platform holds it.
    fn customer_writes(&mut self, platform: &str, who: usize, text: &str) {
        let now = Utc::now();
        match platform {
            "amazon" => {
                let id = format!("{}-{}", who, text.replace(' ', "-"));
                let raw = format!(
                    "From: \"Buyer {who} - Amazon Marketplace\" <buyer{who}@marketplace.amazon.de>\r\n\
                     To: seller@shop.example\r\n\
                     Subject: Anfrage von Amazon-Kunde Buyer {who} (Bestellung: 302-0000000-{:07})\r\n\
                     Date: {}\r\nMessage-ID: <{id}@email.amazonses.com>\r\nMIME-Version: 1.0\r\n\
                     Content-Type: text/plain; charset=utf-8\r\n\r\n\
                     ------------- Begin message -------------\r\n\r\n{text}\r\n\r\n\
                     ------------- End message -------------\r\n\r\n[commMgrTok:{id}]\r\n",
                    1_000_000 + who,
                    now.to_rfc2822()
                );
                self.dovecot.append("INBOX", raw.as_bytes()).unwrap();
            }
            "email" => {
                let id = format!("mail-{}", text.replace(' ', "-"));
                let raw = format!(
                    "From: Customer {who} <customer{who}@example.com>\r\nTo: help@shop.example\r\n\
                     Subject: Order question {who}\r\nDate: {}\r\nMessage-ID: <{id}@example.com>\r\n\
                     MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n",
                    now.to_rfc2822()
                );
                self.dovecot.append("Support", raw.as_bytes()).unwrap();
            }
            "ebay" => {
                let conv = self
                    .ebay_convs
                    .entry(who)
                    .or_insert_with(|| {
                        self.ebay.add_conversation(
                            &format!("buyer_{who}"),
                            None,
                            &format!("Item {who}"),
                        )
                    })
                    .clone();
                // eBay's timestamps carry milliseconds at most.
                let at = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap();
                self.ebay.buyer_writes(&conv, text, at);
            }
            "telegram" => {
                self.telegram
                    .push_message(5_000_000 + who as i64, &format!("Tg{who}"), text);
            }
            "x" => {
                self.x.push_dm(
                    &format!("17000000000000{who:05}"),
                    &format!("Xer{who}"),
                    text,
                );
            }
            "messenger" => {
                self.meta.add_message(
                    "messenger",
                    (&format!("70000000000{who:04}"), &format!("Fb{who}")),
                    true,
                    text,
                    now,
                );
            }
            other => panic!("no platform {other}"),
        }
    }

    /// Every text each platform accepted as a reply so far.
    fn accepted(&self) -> HashMap<&'static str, Vec<String>> {
        let mut out: HashMap<&'static str, Vec<String>> = HashMap::new();
        let mails: Vec<String> = self
            .smtp
            .messages()
            .unwrap()
            .into_iter()
            .map(|m| String::from_utf8_lossy(&m).into_owned())
            .collect();
        // Both mail instances send through the one SMTP server; the
        // marker says which one a reply came from.
        out.insert("amazon", mails.clone());
        out.insert("email", mails);
        out.insert(
            "ebay",
            self.ebay.sent().into_iter().map(|s| s.text).collect(),
        );
        out.insert(
            "telegram",
            self.telegram.sent().into_iter().map(|s| s.text).collect(),
        );
        out.insert("x", self.x.sent().into_iter().map(|s| s.text).collect());
        out.insert(
            "messenger",
            self.meta
                .sent()
                .into_iter()
                .map(|b| b["message"]["text"].as_str().unwrap_or("").to_owned())
                .collect(),
        );
        out
    }
}

fn config(world: &World, proxies: &BTreeMap<&str, ChaosProxy>, hook: &WebhookReceiver) -> String {
    let via = |platform: &str, url: &str| -> String {
        let proxy = proxies[platform].url();
        // The mock's URL with the proxy's host:port (token endpoints keep
        // their path).
        let rest = url.splitn(4, '/').nth(3).unwrap_or("");
        if rest.is_empty() {
            proxy.to_owned()
        } else {
            format!("{proxy}/{rest}")
        }
    };
    let imap = |name: &str, kind: &str, folder: &str, extra: &str| {
        format!(
            "[[instances]]\nname = \"{name}\"\ntype = \"{kind}\"\nschedule = \"* * * * * *\"\n\
             [instances.imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\n\
             password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"{folder}\"]\n{extra}\
             [instances.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"seller@shop.example\"\n\n",
            world.dovecot.port(),
            world.dovecot.user(),
            world.smtp.port(),
        )
    };
    format!(
        r#"[daemon]
min_backoff = "200ms"
max_backoff = "2s"
shutdown_timeout = "5s"

[outbox]
lease = "3s"
poll_interval = "100ms"

[clock]
window = "150s"
thresholds = ["100s", "50s"]

[[alerts.sinks]]
name = "hook"
type = "webhook"
url = "{hook}"
format = "json"

{amazon}{email}
[[instances]]
name = "ebay"
type = "ebay"
schedule = "* * * * * *"
[instances.ebay]
api_url = "{ebay_api}"
token_url = "{ebay_token}"
client_id = "{CLIENT_ID}"
client_secret = "env:HG_EBAY_SECRET"
refresh_token = "env:HG_EBAY_REFRESH"
marketplace_id = "EBAY_DE"
username = "{SELLER}"

[[instances]]
name = "telegram"
type = "telegram"
schedule = "0 0 1 1 *"
[instances.telegram]
api_url = "{tg}"
bot_token = "env:HG_TG_TOKEN"
mode = "poll"
long_poll_secs = 2

[[instances]]
name = "x"
type = "x"
schedule = "* * * * * *"
# X's DM quota allows about one send a minute: the replies of a run would
# take longer to drain than the run itself. The mock enforces none.
rate_limit = {{ per_second = 2.0, burst = 5 }}
[instances.x]
api_url = "{x_api}"
token_url = "{x_api}/2/oauth2/token"
client_id = "aGVsbG8tY2xpZW50LWlk"
refresh_token = "env:HG_X_REFRESH"
user_id = "{SELLER_ID}"
# Every poll re-reads the last events; the run must not stop on X's bill.
daily_read_budget = 1000000

[[instances]]
name = "messenger"
type = "messenger"
schedule = "* * * * * *"
[instances.meta]
api_url = "{meta}"
app_secret = "env:HG_META_SECRET"
verify_token = "env:HG_META_VERIFY"
access_token = "env:HG_META_TOKEN"
page_id = "{PAGE}"
"#,
        hook = hook.url("/alerts"),
        amazon = imap("amazon", "amazon", "INBOX", ""),
        email = imap("email", "email", "Support", ""),
        ebay_api = via("ebay", world.ebay.url()),
        ebay_token = via("ebay", &world.ebay.token_url()),
        tg = via("telegram", world.telegram.url()),
        x_api = via("x", world.x.url()),
        meta = via("messenger", world.meta.url()),
    )
}

/// The daemon's peak resident set (VmHWM) in kB.
fn peak_rss_kb(daemon: &Daemon) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Every thread with its messages and outbox (`show --json`).
fn all_threads(app: &TestApp) -> Vec<Value> {
    let list = app.json(&["threads", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| app.json(&["show", &t["id"].to_string(), "--json"]))
        .collect()
}

struct Reply {
    platform: &'static str,
    thread: i64,
    outbox_id: String,
    marker: String,
}

#[test]
fn the_daemon_keeps_its_promises_while_platforms_misbehave() {
    let secs: u64 = std::env::var("HOURGLASS_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("HOURGLASS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("chaos run: HOURGLASS_CHAOS_SEED={seed} HOURGLASS_CHAOS_SECS={secs}");
    let chaos = Chaos::new(seed, FAULT_RATE);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);

    let dovecot = Dovecot::start().unwrap();
    dovecot.create_folder("Support", None).unwrap();
    let mut world = World {
        dovecot,
        smtp: SmtpSink::start().unwrap(),
        ebay: MockEbay::start().unwrap(),
        telegram: MockBotApi::start(TG_TOKEN).unwrap(),
        x: MockX::start(X_REFRESH).unwrap(),
        meta: MockGraph::start(META_TOKEN, PAGE).unwrap(),
        ebay_convs: HashMap::new(),
    };
    let mut proxies = BTreeMap::new();
    proxies.insert("ebay", ChaosProxy::start(world.ebay.url(), &chaos).unwrap());
    proxies.insert(
        "telegram",
        ChaosProxy::start(world.telegram.url(), &chaos).unwrap(),
    );
    // X rotates refresh tokens: a grant whose answer is lost cannot be
    // recovered by anyone, so its token endpoint only gets the faults that
    // come before X acts.
    proxies.insert(
        "x",
        ChaosProxy::start_sparing(world.x.url(), &chaos, &["/2/oauth2/token"]).unwrap(),
    );
    proxies.insert(
        "messenger",
        ChaosProxy::start(world.meta.url(), &chaos).unwrap(),
    );
    let hook = WebhookReceiver::start();

    let mut app = TestApp::new(None, &config(&world, &proxies, &hook));
    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        text.replacen(
            "[store]\n",
            "[store]\nsecret_key = \"env:HG_STORE_KEY\"\n",
            1,
        ),
    )
    .unwrap();
    for (k, v) in [
        ("HG_IMAP_PASSWORD", world.dovecot.password()),
        ("HG_EBAY_SECRET", CLIENT_SECRET),
        ("HG_EBAY_REFRESH", REFRESH_TOKEN),
        ("HG_TG_TOKEN", TG_TOKEN),
        ("HG_X_REFRESH", X_REFRESH),
        ("HG_META_SECRET", "chaos-app-secret"),
        ("HG_META_VERIFY", "chaos-verify"),
        ("HG_META_TOKEN", META_TOKEN),
        ("HG_STORE_KEY", STORE_KEY),
    ] {
        app.env.push((k.to_owned(), v.to_owned()));
    }
    let out = app.run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The chaos: customers write, agents reply, the daemon is killed and
    // reloaded, all at random.
    let mut daemon = app.spawn_daemon();
    let mut peak_kb = 0u64;
    let mut served: Vec<(&'static str, String)> = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    let (mut kills, mut reloads) = (0u32, 0u32);
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(secs) {
        n += 1;
        let platform = PLATFORMS[rng.random_range(0..PLATFORMS.len())];
        let who = rng.random_range(0..8usize);
        let text = format!("chaos msg {n} for {platform}");
        world.customer_writes(platform, who, &text);
        served.push((platform, text));

        if rng.random_bool(0.3) {
            let awaiting = app.json(&["threads", "--status", "awaiting", "--json"]);
            let awaiting = awaiting.as_array().unwrap();
            if !awaiting.is_empty() {
                let t = &awaiting[rng.random_range(0..awaiting.len())];
                let platform = PLATFORMS
                    .iter()
                    .find(|p| t["instance"] == **p)
                    .copied()
                    .unwrap();
                let marker = format!("chaos reply {} via {platform}", replies.len() + 1);
                let thread = t["id"].as_i64().unwrap();
                let queued = app.json(&["reply", &thread.to_string(), "--body", &marker, "--json"]);
                replies.push(Reply {
                    platform,
                    thread,
                    outbox_id: queued["id"].as_str().unwrap().to_owned(),
                    marker,
                });
            }
        }

        let roll: f64 = rng.random();
        if roll < 0.06 {
            peak_kb = peak_kb.max(peak_rss_kb(&daemon).unwrap_or(0));
            daemon.signal("KILL");
            daemon.wait_exit(Duration::from_secs(10));
            kills += 1;
            daemon = app.spawn_daemon();
        } else if roll < 0.14 {
            daemon.signal("HUP");
            reloads += 1;
        }
        assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(rng.random_range(100..700)));
    }

    // The platforms recover; everything must settle.
    chaos.recover();
    println!(
        "chaos over after {:?}: {} messages served, {} replies queued, {kills} SIGKILLs, {reloads} SIGHUPs",
        started.elapsed(),
        served.len(),
        replies.len()
    );

    // Every customer writes once more after the recovery: an instance
    // left paused would never store it.
    for platform in PLATFORMS {
        let text = format!("chaos msg after recovery for {platform}");
        world.customer_writes(platform, 0, &text);
        served.push((platform, text));
    }

    // Every served message stored, and every reply in a final state.
    let expected: BTreeMap<&str, usize> = served.iter().fold(BTreeMap::new(), |mut m, (p, _)| {
        *m.entry(*p).or_default() += 1;
        m
    });
    let mut threads = Vec::new();
    let settling = Instant::now();
    let settled = wait_until(SETTLE, || {
        threads = all_threads(&app);
        let stored = threads
            .iter()
            .flat_map(|t| t["messages"].as_array().unwrap().iter())
            .filter(|m| m["text"].as_str().is_some_and(|s| s.contains("chaos msg")))
            .count();
        let open = threads
            .iter()
            .flat_map(|t| t["outbox"].as_array().unwrap().iter())
            .filter(|o| o["state"] == "queued" || o["state"] == "sending")
            .count();
        stored >= served.len() && open == 0
    });
    let settle_time = settling.elapsed();
    let instances = app.json(&["connectors", "list", "--json"]);
    peak_kb = peak_kb.max(peak_rss_kb(&daemon).unwrap_or(0));

    // Messages: each served text exactly once.
    let mut stored_count: HashMap<String, usize> = HashMap::new();
    for t in &threads {
        for m in t["messages"].as_array().unwrap() {
            if let Some(text) = m["text"].as_str() {
                if text.contains("chaos msg") {
                    *stored_count.entry(text.trim().to_owned()).or_default() += 1;
                }
            }
        }
    }
    let lost: Vec<&(&str, String)> = served
        .iter()
        .filter(|(_, t)| !stored_count.contains_key(t))
        .collect();
    let duplicated: Vec<(&String, &usize)> = stored_count.iter().filter(|(_, n)| **n > 1).collect();

    // Replies: accepted once, or failed/uncertain with a reason.
    let accepted = world.accepted();
    let outbox: HashMap<String, Value> = threads
        .iter()
        .flat_map(|t| t["outbox"].as_array().unwrap().iter())
        .map(|o| (o["id"].as_str().unwrap_or("").to_owned(), o.clone()))
        .collect();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for r in &replies {
        let Some(entry) = outbox.get(&r.outbox_id) else {
            problems.push(format!(
                "reply {} ({}) is gone from thread {}",
                r.outbox_id, r.marker, r.thread
            ));
            continue;
        };
        let state = entry["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(state.clone()).or_default() += 1;
        let times = accepted[r.platform]
            .iter()
            .filter(|text| text.contains(&r.marker))
            .count();
        let reason = entry["error"].as_str().unwrap_or("");
        match state.as_str() {
            "sent" if times == 1 => {}
            "failed" | "uncertain" if !reason.is_empty() && times <= 1 => {
                println!("reply {:?}: {state}: {reason}", r.marker);
                if state == "failed" && times == 1 {
                    problems.push(format!(
                        "reply {:?} is failed ({reason}) but {} accepted it",
                        r.marker, r.platform
                    ));
                }
            }
            _ => problems.push(format!(
                "reply {:?} is {state} ({reason:?}) and {} accepted it {times} times",
                r.marker, r.platform
            )),
        }
    }

    // Alerts: one delivery per (thread, threshold, awaiting cycle).
    let mut alerts: BTreeMap<(i64, String, String), usize> = BTreeMap::new();
    for d in hook.received() {
        let v = d.json();
        if v["kind"] == "deadline" || v["kind"] == "breach" {
            let key = (
                v["thread_id"].as_i64().unwrap_or(-1),
                v["threshold"].as_str().unwrap_or("").to_owned(),
                v["awaiting_since"].as_str().unwrap_or("").to_owned(),
            );
            *alerts.entry(key).or_default() += 1;
        }
    }
    let twice: Vec<_> = alerts.iter().filter(|(_, n)| **n > 1).collect();

    println!("faults injected by kind: {:?}", chaos.counts());
    println!("messages served by platform: {expected:?}");
    println!(
        "messages: {} served, {} stored, {} lost, {} duplicated",
        served.len(),
        stored_count.len(),
        lost.len(),
        duplicated.len()
    );
    println!(
        "replies: {} queued, by final state {states:?}; settled {settle_time:?} after the recovery",
        replies.len()
    );
    println!(
        "threshold alerts: {} (thread, threshold, cycle) keys, {} delivered more than once",
        alerts.len(),
        twice.len()
    );
    println!(
        "daemon peak RSS (VmHWM): {} kB, bound {RSS_BOUND_KB} kB",
        peak_kb
    );

    assert!(
        settled.is_ok(),
        "not settled within {SETTLE:?} after recovery; lost so far: {lost:?}\nlog:\n{}",
        daemon.log()
    );
    assert!(lost.is_empty(), "messages lost: {lost:?}");
    for i in instances.as_array().unwrap() {
        assert!(
            i["state"] == "ok" || i["state"] == "idle",
            "an instance stayed paused after its platform recovered: {i:#}"
        );
    }
    assert!(
        duplicated.is_empty(),
        "messages stored twice: {duplicated:?}"
    );
    assert!(problems.is_empty(), "replies: {problems:#?}");
    assert!(twice.is_empty(), "alerts delivered twice: {twice:?}");
    assert!(!alerts.is_empty(), "no threshold alert fired at all");
    assert!(chaos.faults() > 0, "no fault was injected");
    assert!(
        peak_kb > 0 && peak_kb < RSS_BOUND_KB,
        "peak RSS {peak_kb} kB"
    );
    daemon.stop_cleanly();
}
