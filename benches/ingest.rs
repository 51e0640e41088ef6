//! Ingest benchmark (DESIGN §8): the initial sync of a 20,000-message
//! mailbox from a local Dovecot into a fresh store (parsed, threaded,
//! clocks set) against `mbsync` (isync) copying the same mailbox to a
//! Maildir, which parses nothing.
//!
//! The mailbox is generated (seeded, so every run sees the same bytes) as a
//! Maildir in Dovecot's mail dir before any client logs in: Amazon relay
//! mail from several marketplaces and languages, Amazon's own notices,
//! ordinary customer mail in several charsets and transfer encodings,
//! HTML-only mail, attachments, and the seller's replies in `Sent`, threaded
//! by In-Reply-To/References. One untimed `mbsync` pass warms Dovecot's
//! indexes and the page cache; then hourglass (`hourglass sync --once` of an
//! `amazon` instance over plain IMAP into a fresh SQLite store, the release
//! binary) and mbsync (a fresh Maildir each time; as configured by default,
//! flushing every message to disk, and for reference with `FSync no`, as
//! hourglass's SQLite in WAL mode does not flush per commit) take turns.
//! The ratio is mbsync's median over hourglass's. A third contender is
//! the ceiling of any IMAP ingest: the same folders fetched over one
//! connection and parsed with mail-parser, nothing stored; hourglass's
//! share of it is printed too, with hourglass's CPU time per message and
//! peak RSS (from `wait4`, of the sync process alone: a small copy of
//! this binary spawns it, as Linux would count this one's memory in a
//! child it spawns). Hourglass runs once per store each run: SQLite
//! and PostgreSQL (the tests' throwaway cluster, a fresh database per run;
//! `HOURGLASS_BENCH_STORES=sqlite` for one only). Each run is
//! checked: every message in the store, the expected threads, the expected
//! threads with a running clock; every message in mbsync's Maildir.
//!
//! The same runs then repeat against Cyrus (as Debian sets it up: the
//! `INBOX.` namespace, filled by MULTIAPPEND, as it keeps no Maildir), with
//! mbsync on the same server; `HOURGLASS_BENCH_SERVERS=dovecot` (or
//! `cyrus`) for one only.
//!
//! `cargo bench --bench ingest`; `HOURGLASS_BENCH_MESSAGES=2000` for a
//! quick run, `HOURGLASS_BENCH_RUNS` for the repetitions (default 3),
//! `HOURGLASS_BENCH_WRAP="perf record -o FILE --"` to profile the sync
//! (`RUST_LOG` reaches it too), `HOURGLASS_BENCH_FETCH_BATCH` to override
//! the IMAP `fetch_batch`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, TimeZone, Utc};
use hourglass_testsupport::imap::{ImapServer, ServerKind};

const BIN: &str = env!("CARGO_BIN_EXE_hourglass");
const MBSYNC: &str = "mbsync";
const SEED: u64 = 0x686f_7572_676c_6173; // "hourglas"
const SELLER: &str = "seller@shop.example";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    if let Some(usage_file) = std::env::var_os(MEASURE_ENV) {
        measure_child(Path::new(&usage_file), std::env::args_os().skip(1));
    }
    let n = env_or("HOURGLASS_BENCH_MESSAGES", 20_000).max(10);
    let runs = env_or("HOURGLASS_BENCH_RUNS", 3).max(1);
    let have_mbsync = Command::new(MBSYNC)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(have_mbsync, "mbsync not found: apt-get install isync");

    let t = Instant::now();
    let corpus = Corpus::generate(n);
    let bytes: usize = corpus.mails.iter().map(|m| m.raw.len()).sum();
    println!(
        "ingest: {} messages ({} in Sent), {:.1} MB, {} threads ({} awaiting a reply), generated in {:.1}s",
        corpus.mails.len(),
        corpus.mails.iter().filter(|m| m.sent).count(),
        bytes as f64 / 1e6,
        corpus.threads,
        corpus.awaiting,
        t.elapsed().as_secs_f64()
    );

    let mut stores = Vec::new();
    for name in std::env::var("HOURGLASS_BENCH_STORES")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        stores.push(match name {
            "sqlite" => Store::Sqlite,
            "postgres" => Store::Postgres(hourglass_testsupport::postgres::Postgres::start()?),
            other => bail!("HOURGLASS_BENCH_STORES: unknown store {other:?} (sqlite, postgres)"),
        });
    }
    ensure!(!stores.is_empty(), "HOURGLASS_BENCH_STORES: no store");

    let servers =
        std::env::var("HOURGLASS_BENCH_SERVERS").unwrap_or_else(|_| "dovecot,cyrus".into());
    for name in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "dovecot" => ServerKind::Dovecot,
            "cyrus" => ServerKind::Cyrus,
            other => bail!("HOURGLASS_BENCH_SERVERS: unknown server {other:?} (dovecot, cyrus)"),
        };
        bench_server(kind, name, &corpus, runs, &stores)?;
    }
    Ok(())
}

/// Where hourglass stores what it ingests.
enum Store {
    Sqlite,
    /// The throwaway cluster the tests use; a fresh database per run.
    Postgres(hourglass_testsupport::postgres::Postgres),
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "SQLite",
            Store::Postgres(_) => "PostgreSQL",
        }
    }

    /// A fresh, empty store for one run.
    fn fresh(&self, dir: &Path, name: &str) -> anyhow::Result<String> {
        Ok(match self {
            Store::Sqlite => format!("sqlite://{}/hourglass.db", dir.display()),
            Store::Postgres(pg) => pg.create_database(name)?,
        })
    }
}

/// One store's runs of hourglass.
#[derive(Default)]
struct StoreRuns {
    seconds: Vec<f64>,
    cpu_seconds: Vec<f64>,
    peak_rss_mb: Vec<f64>,
}

fn bench_server(
    kind: ServerKind,
    label: &str,
    corpus: &Corpus,
    runs: usize,
    stores: &[Store],
) -> anyhow::Result<()> {
    let n = corpus.mails.len();
    let server = ImapServer::start(kind)?;
    let t = Instant::now();
    fill(&server, corpus)?;
    println!();
    println!(
        "{label}: mailbox filled in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let work = tempfile::Builder::new().prefix("hg-ingest-").tempdir()?;
    // Warm-up: the server indexes the mailbox on first access; neither
    // side should pay for that.
    let t = Instant::now();
    let warm = run_mbsync(&server, &work.path().join("warmup"), false)?;
    ensure!(
        warm.copied == n,
        "warm-up mbsync copied {} of {n} messages",
        warm.copied
    );
    println!(
        "warm-up (untimed): mbsync {:.2}s",
        t.elapsed().as_secs_f64()
    );

    let mut hg: Vec<StoreRuns> = stores.iter().map(|_| StoreRuns::default()).collect();
    let mut mb = Vec::new();
    let mut mb_nofsync = Vec::new();
    let mut ceiling = Vec::new();
    for run in 1..=runs {
        let (seconds, parsed) = run_fetch_parse(&server)?;
        ensure!(parsed == n, "fetch + parse read {parsed} of {n} messages");
        println!("run {run}: fetch + mail-parser {seconds:>7.2}s  ({parsed} messages, no store)");
        ceiling.push(seconds);
        for (store, times) in stores.iter().zip(hg.iter_mut()) {
            let dir = work.path().join(format!("hg{run}-{}", store.name()));
            std::fs::create_dir_all(&dir)?;
            let url = store.fresh(&dir, &format!("ingest_{label}_{run}"))?;
            let h = run_hourglass(&server, &dir, &url, corpus)?;
            println!(
                "run {run}: hourglass {:<11}{:>5.2}s  ({} messages, {} threads, {} awaiting, verified; CPU {:.2}s, peak RSS {:.1} MB)",
                store.name(),
                h.seconds,
                h.messages,
                h.threads,
                h.awaiting,
                h.cpu_seconds,
                h.peak_rss_mb
            );
            times.seconds.push(h.seconds);
            times.cpu_seconds.push(h.cpu_seconds);
            times.peak_rss_mb.push(h.peak_rss_mb);
        }
        for (fsync, times) in [(true, &mut mb), (false, &mut mb_nofsync)] {
            let dir = work.path().join(format!("mb{run}-{fsync}"));
            let m = run_mbsync(&server, &dir, fsync)?;
            ensure!(m.copied == n, "mbsync copied {} of {n} messages", m.copied);
            println!(
                "run {run}: mbsync{:<12}{:>7.2}s  ({} messages, verified)",
                if fsync { "" } else { " (FSync no)" },
                m.seconds,
                m.copied
            );
            times.push(m.seconds);
            // Its Maildir is not needed any more: keep the page cache for
            // the next contender.
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let (m, m_nofsync) = (median(&mut mb), median(&mut mb_nofsync));
    let c = median(&mut ceiling);
    println!();
    println!("Ingest of {n} messages from local {label}, median of {runs}:");
    println!(
        "  {:<34} {:>9} {:>12} {:>13} {:>9}",
        "", "seconds", "messages/s", "CPU µs/msg", "peak RSS"
    );
    let mut medians = Vec::new();
    for (store, runs) in stores.iter().zip(hg.iter_mut()) {
        let h = median(&mut runs.seconds);
        let cpu = median(&mut runs.cpu_seconds);
        let rss = runs.peak_rss_mb.iter().copied().fold(0.0, f64::max);
        println!(
            "  {:<34} {h:>9.2} {:>12.0} {:>13.0} {:>6.1} MB",
            format!("hourglass sync --once, {}", store.name()),
            n as f64 / h,
            cpu * 1e6 / n as f64,
            rss
        );
        medians.push((store.name(), h, rss));
    }
    for (name, t) in [
        ("mbsync (copy to Maildir)", m),
        ("mbsync, FSync no (no flush/msg)", m_nofsync),
        ("fetch + mail-parser, no store", c),
    ] {
        println!("  {name:<34} {t:>9.2} {:>12.0}", n as f64 / t);
    }
    for (name, h, rss) in medians {
        let ratio = m / h;
        println!(
            "  {name}: ratio mbsync/hourglass {ratio:.2} ({}; target >= 1.00), with FSync no {:.2}; \
             at {:.0} % of the fetch + parse ceiling (target >= 50 %); peak RSS {rss:.1} MB (target < 100 MB)",
            if ratio >= 1.0 {
                "hourglass is faster"
            } else {
                "hourglass is slower"
            },
            m_nofsync / h,
            c / h * 100.0
        );
    }
    Ok(())
}

/// The ceiling for any IMAP ingest: fetch every message of the folders
/// hourglass reads, over one plain connection, and parse each with
/// mail-parser; nothing normalized, nothing stored.
fn run_fetch_parse(server: &ImapServer) -> anyhow::Result<(f64, usize)> {
    use futures::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect((server.host(), server.port())).await?;
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.context("no IMAP greeting")??;
        let mut session = client
            .login(server.user(), server.password())
            .await
            .map_err(|(e, _)| e)?;
        let parser = mail_parser::MessageParser::default();
        let mut parsed = 0;
        for folder in [server.folder("INBOX"), server.sent_folder()] {
            let mailbox = session.select(&folder).await?;
            if mailbox.exists == 0 {
                continue;
            }
            let mut fetches = session.uid_fetch("1:*", "BODY.PEEK[]").await?;
            while let Some(fetch) = fetches.next().await {
                if fetch?.body().and_then(|b| parser.parse(b)).is_some() {
                    parsed += 1;
                }
            }
        }
        session.logout().await?;
        Ok((t.elapsed().as_secs_f64(), parsed))
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

// ---------------------------------------------------------------------------
// The two contenders.

struct HourglassRun {
    seconds: f64,
    /// User + system CPU time of the sync process.
    cpu_seconds: f64,
    /// Its peak resident set size, in MB.
    peak_rss_mb: f64,
    messages: usize,
    threads: usize,
    awaiting: usize,
}

/// The environment variable that makes this binary the measuring parent
/// of a command (see [`measure_child`]): the file it writes the usage to.
const MEASURE_ENV: &str = "HG_BENCH_MEASURE_TO";

/// Runs `command` to its end like `Command::output`, and also returns its
/// CPU time (user + system, seconds) and peak RSS (MB) as `wait4` reports
/// them.
///
/// Not spawned from this process: Linux counts the memory of the process
/// that spawns a child in the child's `ru_maxrss` (the high-water mark of
/// the address space an `exec` replaces is kept), and this one holds the
/// whole corpus, so `/bin/true` spawned from here "peaks" at ~100 MB. A
/// fresh copy of this binary, still small, spawns the command instead and
/// reports its `wait4` figures ([`measure_child`]).
fn output_with_usage(command: &Command) -> anyhow::Result<(std::process::Output, f64, f64)> {
    let usage_file = tempfile::NamedTempFile::new()?;
    let mut measured = Command::new(std::env::current_exe()?);
    measured
        .env(MEASURE_ENV, usage_file.path())
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(v) => measured.env(key, v),
            None => measured.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        measured.current_dir(dir);
    }
    let output = measured.output()?;
    let usage = std::fs::read_to_string(usage_file.path())?;
    let (cpu, rss_mb) = usage
        .split_once(' ')
        .and_then(|(c, r)| Some((c.trim().parse().ok()?, r.trim().parse().ok()?)))
        .with_context(|| format!("no usage from the measuring parent: {usage:?}"))?;
    Ok((output, cpu, rss_mb))
}

/// The measuring parent: runs the command in `args`, with this process's
/// stdin, stdout and stderr, and writes its CPU seconds and peak RSS (MB)
/// to `usage_file`; exits with its exit code.
fn measure_child(usage_file: &Path, mut args: impl Iterator<Item = std::ffi::OsString>) -> ! {
    use std::os::unix::process::ExitStatusExt;
    let run = || -> anyhow::Result<i32> {
        let program = args.next().context("no command to measure")?;
        let child = Command::new(program)
            .args(args)
            .env_remove(MEASURE_ENV)
            .spawn()?;
        let pid = libc::pid_t::try_from(child.id())?;
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own child, not yet waited for; both pointers
        // point to live values of the types wait4 expects.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        ensure!(waited == pid, "wait4: {}", std::io::Error::last_os_error());
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
        // Linux reports ru_maxrss in kilobytes.
        let rss_mb = usage.ru_maxrss as f64 / 1024.0;
        std::fs::write(usage_file, format!("{cpu} {rss_mb}"))?;
        let status = std::process::ExitStatus::from_raw(status);
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    };
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("measuring parent: {e:#}");
            std::process::exit(125)
        }
    }
}

fn run_hourglass(
    dovecot: &ImapServer,
    dir: &Path,
    store: &str,
    corpus: &Corpus,
) -> anyhow::Result<HourglassRun> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("hourglass.toml");
    std::fs::write(
        &config,
        format!(
            r#"[store]
url = "{store}"

[log]
level = "warn"

[[instances]]
name = "shop"
type = "amazon"
schedule = "0 0 1 1 *"
[instances.imap]
host = "{host}"
port = {port}
tls = "none"
username = "{user}"
password = "env:HG_BENCH_IMAP_PASSWORD"
folders = ["INBOX", "Sent"]
sent_folder = "Sent"
idle = false
{fetch_batch}"#,
            host = dovecot.host(),
            port = dovecot.port(),
            user = dovecot.user(),
            // The connector's default unless HOURGLASS_BENCH_FETCH_BATCH.
            fetch_batch = std::env::var("HOURGLASS_BENCH_FETCH_BATCH")
                .map(|n| format!("fetch_batch = {n}\n"))
                .unwrap_or_default(),
        ),
    )?;
    let hourglass = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("HG_BENCH_IMAP_PASSWORD", dovecot.password())
            .env_remove("RUST_LOG")
            .env_remove("HOURGLASS_CONFIG");
        c
    };
    // HOURGLASS_BENCH_WRAP runs the sync under a profiler, e.g.
    // "perf record -o /tmp/hg.perf --" (its time is then not comparable).
    let mut sync = match std::env::var("HOURGLASS_BENCH_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut words = wrap.split_whitespace();
            let mut c = Command::new(words.next().unwrap_or_default());
            c.args(words).arg(BIN);
            c
        }
        _ => Command::new(BIN),
    };
    sync.arg("--config")
        .arg(&config)
        .args(["sync", "--once", "--json"])
        .env("HG_BENCH_IMAP_PASSWORD", dovecot.password())
        .env_remove("HOURGLASS_CONFIG");
    let t = Instant::now();
    let (out, cpu_seconds, peak_rss_mb) = output_with_usage(&sync)?;
    let seconds = t.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "hourglass sync failed: {}{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        dovecot.logs()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("sync output: {}", String::from_utf8_lossy(&out.stdout)))?;
    let reported = report[0]["messages"].as_u64().unwrap_or(0) as usize;

    // Check the work: every message stored, threaded as generated, with the
    // clock running on exactly the threads whose last word is the customer's.
    let out = hourglass(&["threads", "--json"]).output()?;
    ensure!(
        out.status.success(),
        "hourglass threads failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let threads: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let messages: usize = threads
        .iter()
        .map(|t| t["message_count"].as_u64().unwrap_or(0) as usize)
        .sum();
    let awaiting = threads.iter().filter(|t| !t["due_at"].is_null()).count();
    let n = corpus.mails.len();
    ensure!(
        reported == n && messages == n,
        "hourglass stored {messages} messages (sync reported {reported}) of {n}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        threads.len() == corpus.threads,
        "hourglass made {} threads, expected {}",
        threads.len(),
        corpus.threads
    );
    ensure!(
        awaiting == corpus.awaiting,
        "{awaiting} threads have a running clock, expected {}",
        corpus.awaiting
    );
    Ok(HourglassRun {
        seconds,
        cpu_seconds,
        peak_rss_mb,
        messages,
        threads: threads.len(),
        awaiting,
    })
}

struct MbsyncRun {
    seconds: f64,
    copied: usize,
}

/// `fsync`: mbsync's default (`FSync yes`) flushes every message to disk;
/// without it, it copies as the store writes (SQLite WAL, synchronous =
/// NORMAL: no flush per commit).
fn run_mbsync(dovecot: &ImapServer, dir: &Path, fsync: bool) -> anyhow::Result<MbsyncRun> {
    let target = dir.join("Maildir");
    std::fs::create_dir_all(&target)?;
    let rc = dir.join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            r#"FSync {fsync}

IMAPAccount bench
Host {host}
Port {port}
User {user}
Pass {pass}
SSLType None
AuthMechs LOGIN

IMAPStore far
Account bench
{prefix}
MaildirStore near
Path {target}/
Inbox {target}/INBOX
SubFolders Verbatim

Channel bench
Far :far:
Near :near:
Patterns INBOX Sent
Sync Pull
Create Near
SyncState *
"#,
            host = dovecot.host(),
            port = dovecot.port(),
            user = dovecot.user(),
            pass = dovecot.password(),
            target = target.display(),
            fsync = if fsync { "yes" } else { "no" },
            // Cyrus keeps personal folders below INBOX: INBOX.Sent is Sent.
            prefix = match dovecot.kind() {
                ServerKind::Cyrus => "Path INBOX.\n",
                ServerKind::Dovecot => "",
            },
        ),
    )?;
    let t = Instant::now();
    let out = Command::new(MBSYNC).arg("-c").arg(&rc).arg("-a").output()?;
    let seconds = t.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "mbsync failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut copied = 0;
    for folder in ["INBOX", "Sent"] {
        for sub in ["cur", "new"] {
            if let Ok(entries) = std::fs::read_dir(target.join(folder).join(sub)) {
                copied += entries.count();
            }
        }
    }
    Ok(MbsyncRun { seconds, copied })
}

// ---------------------------------------------------------------------------
// The mailbox.

/// Puts the corpus into INBOX and Sent: on Dovecot as its Maildir before any
/// client logged in, on Cyrus (which has no Maildir) by MULTIAPPEND.
fn fill(server: &ImapServer, corpus: &Corpus) -> anyhow::Result<()> {
    match server {
        ImapServer::Dovecot(d) => write_maildir(&d.maildir(), corpus),
        ImapServer::Cyrus(_) => {
            for sent in [false, true] {
                let folder = if sent {
                    server.sent_folder()
                } else {
                    "INBOX".to_owned()
                };
                let mails = corpus.mails.iter().filter(|m| m.sent == sent);
                server.deliver_many(&folder, mails.map(|m| m.raw.clone()))?;
            }
            Ok(())
        }
    }
}

/// Writes the corpus as Dovecot's user Maildir (INBOX and `.Sent`), before
/// any client has logged in.
fn write_maildir(root: &Path, corpus: &Corpus) -> anyhow::Result<()> {
    let root = root.to_path_buf();
    let sent = root.join(".Sent");
    for dir in [&root, &sent] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
    }
    let base = 1_790_000_000u64;
    for (i, m) in corpus.mails.iter().enumerate() {
        let dir: &PathBuf = if m.sent { &sent } else { &root };
        let name = format!("{}.M{i}P1.hgbench,S={}:2,S", base + i as u64, m.raw.len());
        std::fs::write(dir.join("cur").join(name), &m.raw)?;
    }
    let home = root.parent().context("maildir has no parent")?;
    let status = Command::new("chown")
        .arg("-R")
        .arg("vmail:vmail")
        .arg(home)
        .status()?;
    if !status.success() {
        bail!("chown vmail {} failed", home.display());
    }
    Ok(())
}

pub(crate) struct Mail {
    pub(crate) sent: bool,
    pub(crate) raw: Vec<u8>,
}

pub(crate) struct Corpus {
    pub(crate) mails: Vec<Mail>,
    /// Conversations, i.e. the threads hourglass must make.
    threads: usize,
    /// Conversations whose last message is the customer's: a running clock.
    awaiting: usize,
}

/// SplitMix64: small, fast, and the same sequence on every platform and
/// crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn alnum(&mut self, len: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len).map(|_| A[self.below(A.len())] as char).collect()
    }
    fn lower(&mut self, len: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| A[self.below(A.len())] as char).collect()
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// How a text part is written.
#[derive(Clone, Copy)]
enum Enc {
    Utf8Bit8,
    Utf8Qp,
    Utf8B64,
    Latin1Qp,
    Latin1Bit8,
    Latin2Qp,
}

impl Enc {
    fn charset(self) -> &'static str {
        match self {
            Enc::Utf8Bit8 | Enc::Utf8Qp | Enc::Utf8B64 => "utf-8",
            Enc::Latin1Qp | Enc::Latin1Bit8 => "ISO-8859-1",
            Enc::Latin2Qp => "ISO-8859-2",
        }
    }
    fn cte(self) -> &'static str {
        match self {
            Enc::Utf8Bit8 | Enc::Latin1Bit8 => "8bit",
            Enc::Utf8B64 => "base64",
            Enc::Utf8Qp | Enc::Latin1Qp | Enc::Latin2Qp => "quoted-printable",
        }
    }
    /// The part's body, encoded.
    fn body(self, text: &str) -> Vec<u8> {
        let text = text.replace('\n', "\r\n");
        let bytes = match self {
            Enc::Utf8Bit8 | Enc::Utf8Qp | Enc::Utf8B64 => text.into_bytes(),
            Enc::Latin1Qp | Enc::Latin1Bit8 => latin1(&text),
            Enc::Latin2Qp => latin2(&text),
        };
        match self {
            Enc::Utf8B64 => base64_lines(&bytes).into_bytes(),
            Enc::Utf8Qp | Enc::Latin1Qp | Enc::Latin2Qp => qp(&bytes).into_bytes(),
            Enc::Utf8Bit8 | Enc::Latin1Bit8 => bytes,
        }
    }

    /// A single-part body: its MIME headers and the encoded text.
    fn part(self, content_type: &str, text: &str) -> Vec<u8> {
        let mut out = format!(
            "MIME-Version: 1.0\r\nContent-Type: {content_type}; charset=\"{}\"\r\nContent-Transfer-Encoding: {}\r\n\r\n",
            self.charset(),
            self.cte()
        )
        .into_bytes();
        out.extend(self.body(text));
        out
    }

    /// The encoded text of a part inside a multipart (never 8bit there).
    fn ascii(self, text: &str) -> String {
        String::from_utf8_lossy(&self.body(text)).into_owned()
    }
}

fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
        .collect()
}

fn latin2(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            'ą' => 0xB1,
            'ć' => 0xE6,
            'ę' => 0xEA,
            'ł' => 0xB3,
            'ń' => 0xF1,
            'ó' => 0xF3,
            'ś' => 0xB6,
            'ź' => 0xBC,
            'ż' => 0xBF,
            'Ł' => 0xA3,
            'Ś' => 0xA6,
            'Ż' => 0xAF,
            'ă' => 0xE3,
            'â' => 0xE2,
            'î' => 0xEE,
            'ș' | 'ş' => 0xBA,
            'ț' | 'ţ' => 0xFE,
            c if (c as u32) < 128 => c as u8,
            _ => b'?',
        })
        .collect()
}

fn qp(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 11 / 10);
    let mut col = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            out.push_str("\r\n");
            col = 0;
            i += 2;
            continue;
        }
        let next_is_eol = matches!(bytes.get(i + 1), None | Some(b'\r'));
        let literal =
            (b == b'\t' || b == b' ') && !next_is_eol || (33..=126).contains(&b) && b != b'=';
        let width = if literal { 1 } else { 3 };
        if col + width > 75 {
            out.push_str("=\r\n");
            col = 0;
        }
        if literal {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
        col += width;
        i += 1;
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn base64_lines(bytes: &[u8]) -> String {
    let b = base64(bytes);
    let mut out = String::with_capacity(b.len() + b.len() / 76 * 2 + 2);
    for chunk in b.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// A header value, as an RFC 2047 encoded word when it is not ASCII.
fn header_word(s: &str, latin: bool) -> String {
    if s.is_ascii() {
        return s.to_owned();
    }
    if latin && s.chars().all(|c| (c as u32) < 256) {
        let mut q = String::new();
        for b in latin1(s) {
            match b {
                b' ' => q.push('_'),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => q.push(b as char),
                _ => {
                    let _ = write!(q, "={b:02X}");
                }
            }
        }
        format!("=?ISO-8859-1?Q?{q}?=")
    } else {
        format!("=?UTF-8?B?{}?=", base64(s.as_bytes()))
    }
}

fn mailbox(name: &str, addr: &str, latin: bool) -> String {
    if name.is_ascii() {
        format!("\"{name}\" <{addr}>")
    } else {
        format!("{} <{addr}>", header_word(name, latin))
    }
}

struct Lang {
    code: &'static str,
    tld: &'static str,
    names: &'static [&'static str],
    subject: &'static str,
    inquiry: &'static [&'static str],
    filler: &'static [&'static str],
    reply: &'static [&'static str],
    footer: &'static str,
    sold: &'static str,
    latin: bool,
}

const LANGS: &[Lang] = &[
    Lang {
        code: "en",
        tld: "co.uk",
        names: &["Emily Clark", "Oliver Smith", "Amelia Jones", "Harry Taylor", "Isla Brown", "Jack Wilson"],
        subject: "Inquiry from Amazon customer {name} (Order: {order})",
        inquiry: &[
            "Hi, does this kettle work with 110 V? I'd like to take it to Canada.",
            "Hello, my parcel has not arrived yet although tracking says delivered. Could you check?",
            "The lid of the teapot was cracked when I opened the box. Can you send a replacement?",
            "Could you tell me whether the jacket runs small? I normally wear a medium.",
            "I ordered two but only received one. Please advise.",
        ],
        filler: &[
            "I have attached a photo of the label and the packaging so you can see what I mean. The outer box looked fine, so it must have happened before it was packed.",
            "We are travelling on the 12th, so it would be great to sort this out before then. I am happy to return the item if that is easier for you.",
            "Thanks in advance for your help, and sorry for the trouble. I have bought from your shop before and was always very happy.",
        ],
        reply: &[
            "Thank you for your message. We are sorry to hear that; a replacement is on its way and you will receive the tracking number by e-mail.",
            "Thanks for getting in touch. Yes, the item works from 100 to 240 V; you only need a plug adapter.",
        ],
        footer: "Reply to this e-mail to respond to the customer. Do not include links to other websites or personal contact details. Amazon monitors messages to protect buyers and sellers from fraud; messages that violate our policies may be blocked.",
        sold: "Sold, ship now: [{order}] {item}",
        latin: true,
    },
    Lang {
        code: "de",
        tld: "de",
        names: &["Jürgen Weiß", "Sabine Müller", "Jörg Schäfer", "Anna Becker", "Lukas Hoffmann", "Käthe Groß"],
        subject: "Anfrage von Amazon-Kunde {name} (Bestellung: {order})",
        inquiry: &[
            "Hallo, die Schuhe sind zu klein. Ich möchte sie gegen Größe 45 umtauschen. Wie soll ich das Paket zurückschicken?",
            "Guten Tag, die Lieferung ist leider beschädigt angekommen. Der Deckel ist gesprungen.",
            "Können Sie mir sagen, ob der Artikel auch in Grün lieferbar ist? Ich würde gern zwei Stück bestellen.",
            "Ich habe die Rechnung nicht erhalten. Könnten Sie mir bitte eine Rechnung mit ausgewiesener Mehrwertsteuer schicken?",
        ],
        filler: &[
            "Ich habe Fotos vom Karton und vom Etikett gemacht, damit Sie sehen, was ich meine. Der Karton sah von außen unbeschädigt aus.",
            "Wir fahren am Wochenende in den Urlaub, deshalb wäre eine schnelle Lösung schön. Gern schicke ich den Artikel auch zurück.",
            "Vielen Dank im Voraus für Ihre Hilfe. Ich habe schon öfter bei Ihnen bestellt und war immer sehr zufrieden.",
        ],
        reply: &[
            "Vielen Dank für Ihre Nachricht. Gerne tauschen wir den Artikel um; Sie erhalten in Kürze ein Rücksendeetikett.",
            "Guten Tag, es tut uns leid. Ein Ersatz ist bereits unterwegs, die Sendungsnummer folgt per E-Mail.",
        ],
        footer: "Antworten Sie auf diese E-Mail, um dem Kunden zu antworten. Geben Sie keine Links zu anderen Websites oder persönliche Kontaktdaten an. Amazon überwacht Nachrichten, um Käufer und Verkäufer vor Betrug zu schützen.",
        sold: "Verkauft, jetzt versenden: [{order}] {item}",
        latin: true,
    },
    Lang {
        code: "fr",
        tld: "fr",
        names: &["Chloé Martin", "Élodie Lefèvre", "François Dubois", "Hélène Moreau", "Loïc Bernard"],
        subject: "Demande de renseignements d'un client Amazon (Commande : {order})",
        inquiry: &[
            "Bonjour, la housse de couette est arrivée déchirée. Pouvez-vous m'envoyer un remplacement ?",
            "Bonjour, le colis n'est toujours pas arrivé alors que le suivi indique « livré ». Que faire ?",
            "La taille M est trop petite. Puis-je l'échanger contre un L ? Merci d'avance.",
        ],
        filler: &[
            "Je peux vous envoyer des photos du carton et de l'étiquette si nécessaire. L'emballage extérieur semblait intact.",
            "Nous partons en vacances samedi, une réponse rapide serait donc très appréciée. Je peux aussi renvoyer l'article.",
            "Merci d'avance pour votre aide. J'ai déjà commandé chez vous plusieurs fois et j'ai toujours été satisfaite.",
        ],
        reply: &[
            "Bonjour, merci pour votre message. Un remplacement est en route ; vous recevrez le numéro de suivi par e-mail.",
            "Bonjour, bien sûr, nous vous envoyons une étiquette de retour pour l'échange.",
        ],
        footer: "Répondez à cet e-mail pour répondre au client. N'incluez pas de liens vers d'autres sites ni de coordonnées personnelles. Amazon surveille les messages afin de protéger les acheteurs et les vendeurs contre la fraude.",
        sold: "Vendu, expédiez maintenant : [{order}] {item}",
        latin: true,
    },
    Lang {
        code: "it",
        tld: "it",
        names: &["Luca Rossi", "Giulia Bianchi", "Niccolò Ferrari", "Chiara Romano"],
        subject: "Richiesta da cliente Amazon {name} (Ordine: {order})",
        inquiry: &[
            "Buongiorno, il pacco è arrivato danneggiato e il coperchio è rotto. Potete inviarmi un sostituto?",
            "Salve, è possibile avere la fattura intestata alla mia società? Grazie.",
            "La taglia è troppo piccola, vorrei cambiarla con una più grande. Come devo procedere?",
        ],
        filler: &[
            "Ho fatto alcune foto della scatola e dell'etichetta, così potete vedere il problema. La scatola esterna sembrava intatta.",
            "Partiamo per le vacanze sabato, quindi una risposta veloce sarebbe molto gradita. Posso anche restituire l'articolo.",
        ],
        reply: &[
            "Buongiorno, grazie per il messaggio. Un sostituto è già in viaggio; riceverà il numero di tracciamento via e-mail.",
        ],
        footer: "Rispondi a questa e-mail per rispondere al cliente. Non includere link ad altri siti o dati di contatto personali. Amazon controlla i messaggi per proteggere acquirenti e venditori dalle frodi.",
        sold: "Venduto, spedisci ora: [{order}] {item}",
        latin: true,
    },
    Lang {
        code: "es",
        tld: "es",
        names: &["Luis García", "María Fernández", "José Martínez", "Lucía Sánchez", "Íñigo Muñoz"],
        subject: "Consulta del cliente de Amazon {name} (Pedido: {order})",
        inquiry: &[
            "Hola, el paquete llegó dañado y la tapa está rota. ¿Pueden enviarme un reemplazo?",
            "Buenas tardes, ¿el producto es compatible con enchufes españoles? Gracias.",
            "La talla me queda pequeña. ¿Puedo cambiarla por una talla más grande?",
        ],
        filler: &[
            "He hecho fotos de la caja y de la etiqueta para que vean el problema. La caja exterior parecía intacta.",
            "Nos vamos de vacaciones el sábado, así que agradecería una respuesta rápida. También puedo devolver el artículo.",
        ],
        reply: &[
            "Hola, gracias por su mensaje. Le enviamos un reemplazo hoy mismo; recibirá el número de seguimiento por correo.",
        ],
        footer: "Responde a este correo electrónico para responder al cliente. No incluyas enlaces a otros sitios web ni datos de contacto personales. Amazon supervisa los mensajes para proteger a compradores y vendedores del fraude.",
        sold: "Vendido, envía ahora: [{order}] {item}",
        latin: true,
    },
    Lang {
        code: "pl",
        tld: "pl",
        names: &["Marta Nowak", "Paweł Kowalski", "Łukasz Wiśniewski", "Zofia Wójcik"],
        subject: "Zapytanie od klienta Amazon {name} (Zamówienie: {order})",
        inquiry: &[
            "Dzień dobry, czy mogę zwrócić ten produkt? Paczka przyszła uszkodzona.",
            "Dzień dobry, przesyłka jeszcze nie dotarła, chociaż śledzenie pokazuje doręczenie.",
        ],
        filler: &[
            "Zrobiłam zdjęcia kartonu i etykiety, żeby pokazać, o co chodzi. Karton z zewnątrz wyglądał dobrze.",
            "Z góry dziękuję za pomoc. Zamawiałam u Państwa już kilka razy i zawsze byłam zadowolona.",
        ],
        reply: &[
            "Dzień dobry, dziękujemy za wiadomość. Wysyłamy nowy produkt; numer przesyłki otrzyma Pani e-mailem.",
        ],
        footer: "Odpowiedz na tę wiadomość, aby odpowiedzieć klientowi. Nie podawaj linków do innych stron ani osobistych danych kontaktowych. Amazon monitoruje wiadomości, aby chronić kupujących i sprzedających przed oszustwami.",
        sold: "Sprzedano, wyślij teraz: [{order}] {item}",
        latin: false,
    },
];

const ITEMS: &[&str] = &[
    "Wasserkocher 1,7 l",
    "Hiking boots size 44",
    "Housse de couette 240x220",
    "Teapot 1.2 l ceramic",
    "Rain jacket M",
    "Zaino 30 l",
];

const EMAIL_SUBJECTS: &[(&str, &str)] = &[
    ("en", "Where is my parcel?"),
    ("en", "Missing lid"),
    ("en", "Question about the warranty"),
    ("de", "Rücksendung Größe"),
    ("de", "Frage zur Lieferung"),
    ("fr", "Échange taille"),
    ("fr", "Colis endommagé"),
    ("pt", "Encomenda não chegou"),
    ("ro", "Comandă întârziată"),
    ("pl", "Zwrot produktu"),
];

struct Gen {
    rng: Rng,
    seq: usize,
    base: DateTime<Utc>,
}

fn rfc2822(t: DateTime<Utc>) -> String {
    t.to_rfc2822()
}

impl Gen {
    fn order(&mut self) -> String {
        format!(
            "{:03}-{:07}-{:07}",
            self.rng.range(111, 407),
            self.rng.below(10_000_000),
            self.rng.below(10_000_000)
        )
    }

    /// Filler paragraphs up to about `target` bytes.
    fn padding(&mut self, paras: &[&str], target: usize) -> String {
        let mut out = String::new();
        while out.len() < target {
            out.push_str(paras[self.rng.below(paras.len())]);
            out.push_str("\n\n");
        }
        out
    }

    /// A size in bytes for a mail body: mostly a few KB, some larger.
    fn body_size(&mut self) -> usize {
        match self.rng.below(100) {
            0..=59 => self.rng.range(1_200, 4_000),
            60..=89 => self.rng.range(4_000, 10_000),
            _ => self.rng.range(10_000, 16_000),
        }
    }

    fn id(&mut self, domain: &str) -> String {
        self.seq += 1;
        format!("{}.{}@{domain}", self.rng.lower(12), self.seq)
    }

    fn attachment(&mut self, boundary: &str, size: usize) -> String {
        let (name, ct) = *self.rng.pick(&[
            ("photo.jpg", "image/jpeg"),
            ("invoice.pdf", "application/pdf"),
            ("label.png", "image/png"),
        ]);
        format!(
            "--{boundary}\r\nContent-Type: {ct}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            base64_lines(&self.rng.bytes(size))
        )
    }

    /// An Amazon buyer conversation: buyer messages through the relay and
    /// the seller's replies in Sent. Returns (mails, awaiting).
    fn amazon(&mut self, max: usize, t: &mut DateTime<Utc>) -> (Vec<Mail>, bool) {
        let lang = &LANGS[self.rng.below(LANGS.len())];
        let name = *self.rng.pick(lang.names);
        let alias = self.rng.lower(15);
        let relay = format!("{alias}@marketplace.amazon.{}", lang.tld);
        let order = self.rng.chance(85).then(|| self.order());
        let subject = match &order {
            Some(o) => lang.subject.replace("{name}", name).replace("{order}", o),
            None => format!("Product details inquiry from Amazon customer {name}"),
        };
        let len = self.rng.range(1, 4).min(max);
        let mut mails = Vec::new();
        let mut last_id: Option<String> = None;
        let mut awaiting = false;
        for k in 0..len {
            *t += chrono::Duration::minutes(self.rng.range(20, 30 * 60) as i64);
            let seller_turn = k % 2 == 1;
            let id = self.id(if seller_turn {
                "shop.example"
            } else {
                "email.amazonses.com"
            });
            let mut h = String::new();
            let body;
            if seller_turn {
                let _ = write!(
                    h,
                    "From: Shop <{SELLER}>\r\nTo: {relay}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{id}>\r\n",
                    header_word(&format!("Re: {subject}"), false),
                    rfc2822(*t)
                );
                if let Some(p) = &last_id {
                    let _ = write!(h, "In-Reply-To: <{p}>\r\nReferences: <{p}>\r\n");
                }
                let pad = self.rng.range(300, 1500);
                let text = format!(
                    "{}\n\n{}",
                    self.rng.pick(lang.reply),
                    self.padding(lang.filler, pad)
                );
                body = Enc::Utf8Qp.part("text/plain", &text);
                awaiting = false;
            } else {
                let from = mailbox(&format!("{name} - Amazon Marketplace"), &relay, lang.latin);
                let _ = write!(
                    h,
                    "From: {from}\r\nTo: {SELLER}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{id}>\r\nReturn-Path: <bounces@email.amazonses.com>\r\nX-SES-Outgoing: 2026.11.20-54.240.3.1\r\nFeedback-ID: 1.eu-west-1.abcdefg:AmazonSES\r\n",
                    header_word(&subject, lang.latin),
                    rfc2822(*t)
                );
                let token = format!("{}{}", lang.code.to_uppercase(), self.rng.alnum(14));
                let size = self.body_size();
                let buyer = format!(
                    "{}\n\n{}",
                    self.rng.pick(lang.inquiry),
                    self.padding(lang.filler, size / 3)
                );
                let order_line = order
                    .as_ref()
                    .map(|o| format!("Order ID: {o}\n1 x {}\n\n", self.rng.pick(ITEMS)))
                    .unwrap_or_default();
                let footer_pad = self.padding(&[lang.footer], size / 2);
                let text = format!(
                    "{order_line}------------- Begin message -------------\n\n{buyer}\n------------- End message -------------\n\n{footer_pad}[commMgrTok:{token}]\n"
                );
                body = match self.rng.below(10) {
                    // Newer HTML mail: the buyer's text in the one <pre>.
                    0..=1 => {
                        let html = format!(
                            "<html><head><meta charset=\"utf-8\"><style>.x{{color:#111}} td{{font-family:Arial}}</style></head><body>\n<table><tr><td><img src=\"https://m.media-amazon.com/images/logo.png\" alt=\"Amazon\"></td></tr>\n<tr><td>{}</td></tr>\n<tr><td><pre style=\"white-space: pre-wrap\">{}</pre></td></tr>\n<tr><td><a href=\"https://sellercentral.amazon.{}/messaging/no-response-needed.html?msg={token}\">No response needed</a></td></tr>\n<tr><td style=\"color:#555\">{}</td></tr>\n<tr><td style=\"color:#fff\">[commMgrTok:{token}]</td></tr>\n</table></body></html>\n",
                            order_line.trim(),
                            buyer.trim().replace('&', "&amp;").replace('<', "&lt;"),
                            lang.tld,
                            footer_pad.trim(),
                        );
                        Enc::Utf8B64.part("text/html", &html)
                    }
                    // With an attachment (a photo of the damage).
                    2 => {
                        let b = format!("b1_{}", self.rng.alnum(20));
                        let size = self.rng.range(3_000, 9_000);
                        let att = self.attachment(&b, size);
                        format!(
                            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n{att}\r\n--{b}--\r\n",
                            Enc::Utf8Qp.ascii(&text)
                        )
                        .into_bytes()
                    }
                    k => {
                        let enc = match (k, lang.latin) {
                            (3..=5, true) => Enc::Latin1Qp,
                            (3..=5, false) => Enc::Latin2Qp,
                            (6..=7, _) => Enc::Utf8Qp,
                            _ => Enc::Utf8B64,
                        };
                        enc.part("text/plain", &text)
                    }
                };
                awaiting = true;
            }
            last_id = Some(id);
            mails.push(assemble(seller_turn, &h, &body));
        }
        (mails, awaiting)
    }

    /// One of Amazon's own notices: system mail, no clock, its own thread.
    fn notice(&mut self, t: &mut DateTime<Utc>) -> Mail {
        let lang = &LANGS[self.rng.below(LANGS.len())];
        let order = self.order();
        let item = *self.rng.pick(ITEMS);
        let subject = lang.sold.replace("{order}", &order).replace("{item}", item);
        *t += chrono::Duration::minutes(self.rng.range(1, 600) as i64);
        let id = self.id("email.amazonses.com");
        let h = format!(
            "From: \"Amazon Seller Central\" <seller-notification@amazon.{}>\r\nTo: {SELLER}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{id}>\r\nPrecedence: bulk\r\n",
            lang.tld,
            header_word(&subject, false),
            rfc2822(*t)
        );
        let size = self.rng.range(1_500, 4_000);
        let text = format!(
            "{}\n\nOrder ID: {order}\nItem: {item}\nQuantity: 1\nShip by: {}\n\n{}",
            subject,
            (*t + chrono::Duration::days(2)).format("%Y-%m-%d"),
            self.padding(&[lang.footer], size)
        );
        assemble(false, &h, &Enc::Utf8Qp.part("text/plain", &text))
    }

    /// An ordinary customer conversation by e-mail.
    fn email(&mut self, max: usize, t: &mut DateTime<Utc>) -> (Vec<Mail>, bool) {
        let (code, topic) = *self.rng.pick(EMAIL_SUBJECTS);
        let lang = LANGS.iter().find(|l| l.code == code).unwrap_or(&LANGS[0]);
        let name = *self.rng.pick(lang.names);
        let domain = *self.rng.pick(&[
            "example.com",
            "example.de",
            "example.fr",
            "mail.example.pt",
            "example.ro",
            "example.pl",
        ]);
        let customer = format!(
            "{}.{}@{domain}",
            name.split(' ').next().unwrap_or("x").to_lowercase(),
            self.rng.lower(8)
        );
        let subject = format!("{topic} #{}", self.rng.range(1000, 99999));
        let len = self.rng.range(1, 4).min(max);
        let mut mails = Vec::new();
        let mut refs: Vec<String> = Vec::new();
        let mut quoted = String::new();
        let mut awaiting = false;
        for k in 0..len {
            *t += chrono::Duration::minutes(self.rng.range(10, 40 * 60) as i64);
            let seller_turn = k % 2 == 1;
            let id = self.id(if seller_turn { "shop.example" } else { domain });
            let subj = if k == 0 {
                subject.clone()
            } else {
                format!("Re: {subject}")
            };
            let (from, to) = if seller_turn {
                (
                    format!("Shop <{SELLER}>"),
                    mailbox(name, &customer, lang.latin),
                )
            } else {
                (mailbox(name, &customer, lang.latin), SELLER.to_owned())
            };
            let latin = lang.latin && !seller_turn && self.rng.chance(50);
            let mut h = format!(
                "From: {from}\r\nTo: {to}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{id}>\r\n",
                header_word(&subj, latin),
                rfc2822(*t)
            );
            if !refs.is_empty() {
                let _ = write!(
                    h,
                    "In-Reply-To: <{}>\r\nReferences: {}\r\n",
                    refs.last().map(String::as_str).unwrap_or_default(),
                    refs.iter()
                        .map(|r| format!("<{r}>"))
                        .collect::<Vec<_>>()
                        .join("\r\n ")
                );
            }
            if !seller_turn && self.rng.chance(30) {
                let _ = write!(
                    h,
                    "Content-Language: {code}\r\nUser-Agent: Mozilla/5.0 Thunderbird/128.4\r\n"
                );
            }
            let size = self.body_size();
            let own = if seller_turn {
                format!("{}\n\n", self.rng.pick(lang.reply))
            } else {
                format!(
                    "{}\n\n{}",
                    self.rng.pick(lang.inquiry),
                    self.padding(lang.filler, size / 2)
                )
            };
            let text = format!(
                "{own}{}\n\n{}",
                if seller_turn { "Shop Team" } else { name },
                quoted
                    .lines()
                    .map(|l| format!("> {l}\n"))
                    .collect::<String>()
            );
            let body = if seller_turn {
                Enc::Utf8Bit8.part("text/plain", &text)
            } else {
                match self.rng.below(10) {
                    // HTML only.
                    0..=1 => {
                        let html = format!(
                            "<html><head><style>p {{color: #222; font-family: Helvetica}}</style></head><body>\n{}<div class=\"sig\">{name}</div>\n<blockquote>{}</blockquote></body></html>\n",
                            own.split("\n\n")
                                .filter(|p| !p.is_empty())
                                .map(|p| format!("<p>{p}</p>\n"))
                                .collect::<String>(),
                            quoted.replace('\n', "<br>\n")
                        );
                        let enc = if self.rng.chance(50) {
                            Enc::Utf8B64
                        } else {
                            Enc::Utf8Qp
                        };
                        enc.part("text/html", &html)
                    }
                    // Alternative with attachments.
                    2 => {
                        let outer = format!("outer_{}", self.rng.alnum(16));
                        let alt = format!("alt_{}", self.rng.alnum(16));
                        let html = format!("<p>{}</p>", own.trim().replace("\n\n", "</p><p>"));
                        let mut b = format!(
                            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{outer}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n--{outer}\r\nContent-Type: multipart/alternative; boundary=\"{alt}\"\r\n\r\n--{alt}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--{alt}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--{alt}--\r\n\r\n",
                            Enc::Utf8Qp.ascii(&text),
                            Enc::Utf8Qp.ascii(&html)
                        );
                        for _ in 0..self.rng.range(1, 2) {
                            let size = self.rng.range(2_000, 6_000);
                            b.push_str(&self.attachment(&outer, size));
                            b.push_str("\r\n");
                        }
                        let _ = write!(b, "--{outer}--\r\n");
                        b.into_bytes()
                    }
                    k => {
                        let enc = match (k, lang.latin) {
                            (3..=4, true) => Enc::Latin1Qp,
                            (3..=4, false) => Enc::Latin2Qp,
                            (5, true) => Enc::Latin1Bit8,
                            (5, false) | (6, _) => Enc::Utf8B64,
                            (7, _) => Enc::Utf8Qp,
                            _ => Enc::Utf8Bit8,
                        };
                        enc.part("text/plain", &text)
                    }
                }
            };
            awaiting = !seller_turn;
            quoted = own;
            refs.push(id);
            mails.push(assemble(seller_turn, &h, &body));
        }
        (mails, awaiting)
    }
}

/// Trace headers, the message headers, then the body (MIME headers and
/// payload).
fn assemble(sent: bool, headers: &str, body: &[u8]) -> Mail {
    let mut raw = Vec::with_capacity(headers.len() + body.len() + 160);
    raw.extend_from_slice(
        b"Received: from mx.example.net (mx.example.net [192.0.2.25])\r\n\tby imap.shop.example with ESMTPS; Fri, 20 Nov 2026 10:00:00 +0000\r\n",
    );
    raw.extend_from_slice(headers.as_bytes());
    raw.extend_from_slice(body);
    Mail { sent, raw }
}

impl Corpus {
    pub(crate) fn generate(n: usize) -> Corpus {
        let mut g = Gen {
            rng: Rng(SEED),
            seq: 0,
            base: Utc
                .with_ymd_and_hms(2026, 9, 1, 8, 0, 0)
                .single()
                .unwrap_or_default(),
        };
        let mut corpus = Corpus {
            mails: Vec::with_capacity(n),
            threads: 0,
            awaiting: 0,
        };
        // Conversations start over about 60 days, in order.
        let span_min = 60 * 24 * 60;
        let mut i = 0usize;
        while corpus.mails.len() < n {
            let left = n - corpus.mails.len();
            let mut t = g.base
                + chrono::Duration::minutes((i * span_min / (n / 2).max(1)) as i64)
                + chrono::Duration::minutes(g.rng.below(120) as i64);
            i += 1;
            let (mails, awaiting) = match g.rng.below(100) {
                0..=44 => g.amazon(left, &mut t),
                45..=51 => (vec![g.notice(&mut t)], false),
                _ => g.email(left, &mut t),
            };
            corpus.threads += 1;
            corpus.awaiting += usize::from(awaiting);
            corpus.mails.extend(mails);
        }
        corpus
    }
}
