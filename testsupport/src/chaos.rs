//! Fault injection for the HTTP mocks: a proxy that sits in front of any
//! mock (or any HTTP server) and, until it is told the platform recovered,
//! answers a seeded random share of requests with what real platforms and
//! the networks in front of them produce on a bad day:
//!
//! - 401, 429 with and without `Retry-After`, 500 and 503, without asking
//!   the mock (the platform refused before doing anything);
//! - connection resets (the socket is closed with `SO_LINGER` 0, no answer);
//! - slow bodies, truncated JSON and a wrong content type (an HTML page
//!   with 200), *after* the mock handled the request: a send that comes back
//!   as garbage did reach the platform, which is what makes replies
//!   "uncertain" in real life.
//!
//! One [`Chaos`] is shared by every proxy of a run: one seeded RNG, one
//! switch ([`Chaos::recover`]) and one count of faults by kind. The proxy
//! speaks HTTP/1.1 one request per connection (`Connection: close`), which
//! is all reqwest needs.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Forwarded and answered as the mock answered.
    None,
    Unauthorized,
    TooManyWithRetryAfter,
    TooManyWithoutRetryAfter,
    ServerError,
    Unavailable,
    Reset,
    SlowBody,
    TruncatedJson,
    WrongContentType,
}

impl Fault {
    const FAULTS: [Fault; 9] = [
        Fault::Unauthorized,
        Fault::TooManyWithRetryAfter,
        Fault::TooManyWithoutRetryAfter,
        Fault::ServerError,
        Fault::Unavailable,
        Fault::Reset,
        Fault::SlowBody,
        Fault::TruncatedJson,
        Fault::WrongContentType,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fault::None => "passed",
            Fault::Unauthorized => "401",
            Fault::TooManyWithRetryAfter => "429+retry-after",
            Fault::TooManyWithoutRetryAfter => "429",
            Fault::ServerError => "500",
            Fault::Unavailable => "503",
            Fault::Reset => "reset",
            Fault::SlowBody => "slow-body",
            Fault::TruncatedJson => "truncated-json",
            Fault::WrongContentType => "wrong-content-type",
        }
    }
}

struct Inner {
    rng: StdRng,
    counts: BTreeMap<&'static str, u64>,
}

/// The shared state of a chaos run. Cheap to clone.
#[derive(Clone)]
pub struct Chaos {
    seed: u64,
    /// Every faulted request gets this one (a focused test), else a random kind.
    only: Option<Fault>,
    /// Share of requests that get a fault, 0.0 to 1.0.
    rate: f64,
    recovered: Arc<AtomicBool>,
    inner: Arc<Mutex<Inner>>,
}

impl Chaos {
    /// A run with `seed`, faulting `rate` of the requests.
    pub fn new(seed: u64, rate: f64) -> Chaos {
        Chaos {
            seed,
            only: None,
            rate: rate.clamp(0.0, 1.0),
            recovered: Arc::new(AtomicBool::new(false)),
            inner: Arc::new(Mutex::new(Inner {
                rng: StdRng::seed_from_u64(seed),
                counts: BTreeMap::new(),
            })),
        }
    }

    /// Every request gets `fault` until [`Chaos::recover`].
    pub fn always(fault: Fault) -> Chaos {
        Chaos {
            only: Some(fault),
            ..Chaos::new(0, 1.0)
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// From now on every request passes untouched.
    pub fn recover(&self) {
        self.recovered.store(true, Ordering::SeqCst);
    }

    pub fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
    }

    /// Requests so far by what was done with them ("passed" for none).
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.lock().counts.clone()
    }

    /// Faults injected so far (every kind but "passed").
    pub fn faults(&self) -> u64 {
        self.lock()
            .counts
            .iter()
            .filter(|(k, _)| **k != Fault::None.label())
            .map(|(_, n)| n)
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Draws the fault for one request and counts it. `spare`: no fault
    /// after the platform acted.
    fn draw(&self, spare: bool) -> (Fault, u64) {
        let mut i = self.lock();
        let mut fault = if self.is_recovered() || !i.rng.random_bool(self.rate) {
            Fault::None
        } else if let Some(only) = self.only {
            only
        } else {
            Fault::FAULTS[i.rng.random_range(0..Fault::FAULTS.len())]
        };
        if spare
            && matches!(
                fault,
                Fault::SlowBody | Fault::TruncatedJson | Fault::WrongContentType
            )
        {
            fault = Fault::Unavailable;
        }
        let slow_ms = i.rng.random_range(300..3000);
        *i.counts.entry(fault.label()).or_default() += 1;
        (fault, slow_ms)
    }
}

/// A fault-injecting proxy in front of one upstream server, on its own
/// thread and runtime; stops when dropped.
pub struct ChaosProxy {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChaosProxy {
    /// Proxies the server of `upstream` (a mock's `url()`, any path).
    pub fn start(upstream: &str, chaos: &Chaos) -> anyhow::Result<ChaosProxy> {
        ChaosProxy::start_sparing(upstream, chaos, &[])
    }

    /// Like [`ChaosProxy::start`], but requests whose path starts with one
    /// of `spared` only get the faults that come before the platform acts
    /// (an answer lost after it acted becomes a 503 instead). For an OAuth
    /// endpoint that rotates refresh tokens (X): when its answer is lost,
    /// the old token is already refused and no client can recover without
    /// the seller consenting again, so losing it says nothing about us.
    pub fn start_sparing(
        upstream: &str,
        chaos: &Chaos,
        spared: &[&str],
    ) -> anyhow::Result<ChaosProxy> {
        let spared: Arc<Vec<String>> = Arc::new(spared.iter().map(|s| (*s).to_owned()).collect());
        // Requests keep their path: only the host and port are replaced.
        let upstream = upstream
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let chaos = chaos.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let chaos = chaos.clone();
                            let upstream = upstream.clone();
                            let spared = spared.clone();
                            tokio::spawn(async move {
                                let _ = handle(stream, &upstream, &chaos, &spared).await;
                            });
                        }
                    }
                }
            });
        });
        Ok(ChaosProxy {
            url,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: put it where the mock's
    /// URL would go (keeping the mock's path, e.g. a token endpoint's).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP message head (up to the blank line) and then a body of
/// `Content-Length` bytes or, for a response without one, to the end.
async fn read_message(stream: &mut TcpStream, to_eof: bool) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed inside the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end..].to_vec();
    let length = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked =
        header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if let Some(length) = length {
        while body.len() < length {
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
    } else if chunked || to_eof {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if chunked {
            body = dechunk(&body)?;
        }
    }
    Ok((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow::anyhow!("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(raw.len() >= size, "short chunk");
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
}

/// The head without the headers the proxy sets itself.
fn head_without_framing(head: &str) -> (String, Vec<String>) {
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("").to_owned();
    let rest = lines
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            )
        })
        .map(str::to_owned)
        .collect();
    (first, rest)
}

fn response(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn canned(status: &str, extra: &[&str]) -> Vec<u8> {
    // RFC 9457 problem details: what a gateway in front of the platform
    // answers, not the platform's own error shape.
    let mut headers = vec!["content-type: application/problem+json".to_owned()];
    headers.extend(extra.iter().map(|h| (*h).to_owned()));
    let body = format!(
        "{{\"title\":\"{status}\",\"status\":{}}}",
        status.split(' ').next().unwrap_or("0")
    );
    response(status, &headers, body.as_bytes())
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    chaos: &Chaos,
    spared: &[String],
) -> anyhow::Result<()> {
    let (head, body) = read_message(&mut client, false).await?;
    let path = head.split(' ').nth(1).unwrap_or("");
    let spare = spared.iter().any(|p| path.starts_with(p.as_str()));
    let (fault, slow_ms) = chaos.draw(spare);
    let early = match fault {
        Fault::Unauthorized => Some(canned("401 Unauthorized", &[])),
        Fault::TooManyWithRetryAfter => Some(canned("429 Too Many Requests", &["retry-after: 1"])),
        // No Retry-After, but X's own reset header (ignored by the others):
        // X sends it with every 429, and without it the X connector waits
        // a whole 15-minute window, longer than a run.
        Fault::TooManyWithoutRetryAfter => {
            let reset = format!("x-rate-limit-reset: {}", chrono::Utc::now().timestamp() + 2);
            Some(canned("429 Too Many Requests", &[&reset]))
        }
        Fault::ServerError => Some(canned("500 Internal Server Error", &[])),
        Fault::Unavailable => Some(canned("503 Service Unavailable", &[])),
        Fault::Reset => {
            // RST instead of FIN: what a crashed load balancer does.
            let _ = client.set_zero_linger();
            drop(client);
            return Ok(());
        }
        _ => None,
    };
    if let Some(answer) = early {
        client.write_all(&answer).await?;
        client.shutdown().await?;
        return Ok(());
    }

    // Forward, one request per connection.
    let (request_line, headers) = head_without_framing(&head);
    let mut forwarded = format!("{request_line}\r\n");
    for h in &headers {
        forwarded.push_str(h);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    up.write_all(&body).await?;
    let (up_head, up_body) = read_message(&mut up, true).await?;
    let (status_line, mut up_headers) = head_without_framing(&up_head);
    let status = status_line
        .split_once(' ')
        .map_or("502 Bad Gateway", |(_, s)| s)
        .to_owned();

    let answer = match fault {
        Fault::TruncatedJson => {
            let cut = up_body.len() / 2;
            response(&status, &up_headers, &up_body[..cut])
        }
        Fault::WrongContentType => {
            up_headers.retain(|h| !h.to_ascii_lowercase().starts_with("content-type"));
            up_headers.push("content-type: text/html; charset=utf-8".to_owned());
            response(
                "200 OK",
                &up_headers,
                b"<html><body><h1>Service temporarily overloaded</h1></body></html>",
            )
        }
        _ => response(&status, &up_headers, &up_body),
    };
    if fault == Fault::SlowBody {
        // The head at once, then the body in ten pieces over `slow_ms`.
        let split = answer.len() - up_body.len();
        client.write_all(&answer[..split]).await?;
        let piece = up_body.len().div_ceil(10).max(1);
        for part in up_body.chunks(piece) {
            tokio::time::sleep(Duration::from_millis(slow_ms / 10)).await;
            client.write_all(part).await?;
        }
    } else {
        client.write_all(&answer).await?;
    }
    client.shutdown().await?;
    Ok(())
}
