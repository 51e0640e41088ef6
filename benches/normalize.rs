//! The parse side of the ingest, without IMAP or a store: the CPU time per
//! message of each step hourglass takes on the ingest benchmark's corpus
//! (benches/ingest.rs, the same seeded 20,000 mails), on one thread.
//!
//! - mail-parser alone (`MessageParser::parse`), the ceiling's share;
//! - the e-mail connector's `parse_mail` (MIME, direction, thread key,
//!   bodies, HTML→text, attachments);
//! - that plus the Amazon connector's `normalize` (relay frame, buyer,
//!   language), which is what `hourglass sync` runs per message;
//! - `html_to_text` alone on the HTML of every mail that has some.
//!
//! `cargo bench --bench normalize`; `HOURGLASS_BENCH_MESSAGES` (default
//! 20,000) and `HOURGLASS_BENCH_RUNS` (default 5, the median is printed).
//! Times are the thread's CPU time, so other work on the machine moves
//! them little. Profile with `perf record --call-graph dwarf` on the
//! bench binary; `HOURGLASS_BENCH_ONLY=normalize` runs that step alone.
//! `HOURGLASS_BENCH_DUMP=FILE` writes every normalized message as a line
//! of JSON, to check that a change to the normalization changes no
//! output (diff the files of two builds).

#[path = "ingest.rs"]
#[allow(dead_code)]
mod ingest;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use hourglass_email::normalize::{html_to_text, parse_mail, ParseContext};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero timespec is a valid value for clock_gettime to
    // fill in, and the pointer is to a live one.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or_default(),
        u32::try_from(ts.tv_nsec).unwrap_or_default(),
    )
}

/// The median CPU µs per item of `runs` passes of `f` over `items`, and
/// what `f` returned on the last pass (summed, so nothing is optimized
/// away and the passes can be checked).
fn measure<T>(runs: usize, items: &[T], mut f: impl FnMut(&T) -> usize) -> (f64, usize) {
    let mut per_item = Vec::with_capacity(runs);
    let mut total = 0;
    for _ in 0..runs {
        total = 0;
        let t = thread_cpu();
        for item in items {
            total += f(item);
        }
        per_item.push((thread_cpu() - t).as_secs_f64() * 1e6 / items.len().max(1) as f64);
    }
    per_item.sort_by(f64::total_cmp);
    (per_item[per_item.len() / 2], total)
}

fn main() -> anyhow::Result<()> {
    let n = env_or("HOURGLASS_BENCH_MESSAGES", 20_000).max(10);
    let runs = env_or("HOURGLASS_BENCH_RUNS", 5).max(1);
    let only = std::env::var("HOURGLASS_BENCH_ONLY").unwrap_or_default();
    let corpus = ingest::Corpus::generate(n);
    let bytes: usize = corpus.mails.iter().map(|m| m.raw.len()).sum();
    println!(
        "normalize: {} messages, {:.1} MB, median of {runs} runs, CPU µs per message on one thread",
        corpus.mails.len(),
        bytes as f64 / 1e6
    );
    let own = vec!["seller@shop.example".to_owned()];
    // After the corpus's last mail, the same in every run.
    let now = Utc
        .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let ctx = |sent: bool| ParseContext {
        folder: if sent { "Sent" } else { "INBOX" },
        uid: Some(1),
        internal_date: Some(now),
        is_sent_folder: sent,
        own_addresses: &own,
        now,
    };
    let (inbox, sent) = (ctx(false), ctx(true));
    let pick = |m: &ingest::Mail| if m.sent { &sent } else { &inbox };
    let mails = &corpus.mails;

    if only.is_empty() || only == "mail-parser" {
        let parser = mail_parser::MessageParser::default();
        let (us, ok) = measure(runs, mails, |m| {
            usize::from(parser.parse(m.raw.as_slice()).is_some())
        });
        anyhow::ensure!(
            ok == mails.len(),
            "mail-parser read {ok} of {}",
            mails.len()
        );
        println!("  {:<44} {us:>8.1}", "mail-parser parse");
    }
    if only.is_empty() || only == "parse_mail" {
        let (us, ok) = measure(runs, mails, |m| {
            usize::from(parse_mail(&m.raw, pick(m)).is_ok())
        });
        anyhow::ensure!(ok == mails.len(), "parse_mail read {ok} of {}", mails.len());
        println!("  {:<44} {us:>8.1}", "email parse_mail");
    }
    if only.is_empty() || only == "normalize" {
        let (us, text) = measure(runs, mails, |m| {
            parse_mail(&m.raw, pick(m))
                .map(hourglass_amazon::normalize::normalize)
                .map_or(0, |m| m.text.len())
        });
        println!(
            "  {:<44} {us:>8.1}   ({:.1} MB of text)",
            "email parse_mail + amazon normalize",
            text as f64 / 1e6
        );
    }
    if let Some(path) = std::env::var_os("HOURGLASS_BENCH_DUMP") {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for m in mails {
            match parse_mail(&m.raw, pick(m)).map(hourglass_amazon::normalize::normalize) {
                Ok(msg) => serde_json::to_writer(&mut out, &msg)?,
                Err(e) => write!(out, "error: {}", e.reason)?,
            }
            writeln!(out)?;
        }
        out.flush()?;
        println!(
            "  (normalized messages written to {})",
            path.to_string_lossy()
        );
    }
    if only.is_empty() || only == "html" {
        let html: Vec<String> = mails
            .iter()
            .filter_map(|m| parse_mail(&m.raw, pick(m)).ok()?.html)
            .collect();
        let (us, text) = measure(runs, &html, |h| html_to_text(h).len());
        println!(
            "  {:<44} {us:>8.1}   per HTML body ({} of the messages, {:.1} MB of text)",
            "html_to_text",
            html.len(),
            text as f64 / 1e6
        );
    }
    Ok(())
}
