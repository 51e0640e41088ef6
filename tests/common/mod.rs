//! The integration harness: a temp directory with a config, the real
//! `hourglass` binary, and helpers to run its commands and the daemon.

#![allow(dead_code)]

pub mod http;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hourglass");

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
}

impl TestApp {
    /// A temp dir with `hourglass.toml` = `[store]` on a fresh SQLite file
    /// (or `store_url`) followed by `body`.
    pub fn new(store_url: Option<&str>, body: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = store_url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}/hourglass.db", dir.path().display()));
        let config = dir.path().join("hourglass.toml");
        std::fs::write(&config, format!("[store]\nurl = \"{url}\"\n\n{body}")).unwrap();
        TestApp {
            dir,
            config,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("RUST_LOG")
            .env_remove("HOURGLASS_CONFIG")
            .env_remove("NOTIFY_SOCKET");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command with `--json` output and parses it.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Starts `hourglass run` in the background, capturing its stderr, and
    /// returns once it has told its (test) `NOTIFY_SOCKET` `READY=1`.
    pub fn spawn_daemon(&self) -> Daemon {
        self.spawn_daemon_with(&[])
    }

    /// `hourglass run` with extra arguments, once ready.
    pub fn spawn_daemon_with(&self, extra: &[&str]) -> Daemon {
        let mut daemon = self.spawn_daemon_unready(extra);
        daemon.wait_ready(READY_TIMEOUT);
        daemon
    }

    /// `hourglass run` without waiting for readiness: only for tests of
    /// startup itself.
    pub fn spawn_daemon_unready(&self, extra: &[&str]) -> Daemon {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let socket = notify_socket(self.path(), notices.clone());
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .env("NOTIFY_SOCKET", &socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = hourglass_testsupport::pids::PidFile::record(
            child.id(),
            &format!("hourglass {}", self.path().display()),
        );
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
            notices,
            ready: false,
            _pid: pid,
        }
    }
}

/// How long a daemon may take to report `READY=1` (generous: the machine
/// may be loaded; a healthy start takes milliseconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds a datagram socket the daemon can notify (as systemd's
/// `NOTIFY_SOCKET`) in `dir`, and collects what it receives into
/// `notices` until that is no longer shared (the daemon handle is gone).
/// Returns the value for `NOTIFY_SOCKET`.
fn notify_socket(dir: &Path, notices: Arc<Mutex<Vec<String>>>) -> String {
    use std::os::unix::net::UnixDatagram;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("notify-{n}.sock"));
    // A socket path is limited to 107 bytes; a long temp dir gets an
    // abstract name instead.
    let (socket, name) = if path.as_os_str().len() < 100 {
        let socket = UnixDatagram::bind(&path).unwrap();
        (socket, path.display().to_string())
    } else {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hourglass-test-{}-{n}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
    };
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while Arc::strong_count(&notices) > 1 {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                notices
                    .lock()
                    .unwrap()
                    .extend(text.lines().map(str::to_owned));
            }
        }
    });
    name
}

pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    /// Copies stderr into `log` until the daemon closes it.
    reader: Option<std::thread::JoinHandle<()>>,
    /// What the daemon told its `NOTIFY_SOCKET`, one `KEY=VALUE` a line.
    notices: Arc<Mutex<Vec<String>>>,
    ready: bool,
    _pid: hourglass_testsupport::pids::PidFile,
}

impl Daemon {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Every `KEY=VALUE` the daemon sent to its `NOTIFY_SOCKET` so far.
    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().unwrap().clone()
    }

    /// Waits until the daemon reports `READY=1`; fails the test with its
    /// log when it exits first or takes longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while !self.notices().iter().any(|n| n == "READY=1") {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) before READY=1; log:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "daemon not READY=1 within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ready = true;
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 1, timeout);
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        wait_until(timeout, || self.log().matches(needle).count() >= count).unwrap_or_else(|_| {
            panic!(
                "log never showed {needle:?} {count} times; log:\n{}",
                self.log()
            )
        });
    }

    /// Sends `sig` (TERM, INT, HUP, KILL). Only to a daemon that reported
    /// READY=1: before that it may not handle signals yet.
    pub fn signal(&self, sig: &str) {
        assert!(
            self.ready,
            "signalling a daemon that has not reported READY=1; log:\n{}",
            self.log()
        );
        self.send_signal(sig);
    }

    /// Sends `sig` whether or not the daemon is ready: for tests of what
    /// happens during startup.
    pub fn signal_during_startup(&self, sig: &str) {
        self.send_signal(sig);
    }

    fn send_signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit; returns the exit code. The log is complete then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon did not exit within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// SIGTERM, then asserts a clean exit (code 0) within 15 s.
    pub fn stop_cleanly(&mut self) {
        self.signal("TERM");
        let code = self.wait_exit(Duration::from_secs(15));
        assert_eq!(code, Some(0), "unclean exit; log:\n{}", self.log());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if cond() {
        Ok(())
    } else {
        Err(())
    }
}

/// A request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local HTTP endpoint that records every POST (a stand-in for Slack,
/// Teams or an agent's webhook), answering 204.
pub struct WebhookReceiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub fn start() -> WebhookReceiver {
        WebhookReceiver::start_with(0, 0)
    }

    /// A receiver on `port`: a sink configured for it was down until now.
    pub fn start_on(port: u16) -> WebhookReceiver {
        WebhookReceiver::start_with(port, 0)
    }

    /// Like [`WebhookReceiver::start`], but the first `failures` requests
    /// (recorded all the same) get `503` with `Retry-After: 1`, as a sink
    /// that is briefly down.
    pub fn start_failing_first(failures: usize) -> WebhookReceiver {
        WebhookReceiver::start_with(0, failures)
    }

    fn start_with(port: u16, failures: usize) -> WebhookReceiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, content_length) = loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break (None, 0),
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0usize);
                        break (Some(pos + 4), len);
                    }
                };
                let Some(head_end) = head_end else { continue };
                while buf.len() < head_end + content_length {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("")
                    .to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let body = buf[head_end..(head_end + content_length).min(buf.len())].to_vec();
                let answer: &[u8] = {
                    let mut got = sink.lock().unwrap();
                    got.push(Received {
                        path,
                        headers,
                        body,
                    });
                    if got.len() <= failures {
                        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else {
                        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    }
                };
                let _ = stream.write_all(answer);
            }
        });
        WebhookReceiver { port, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Writes a mail into a Maildir folder the way an MTA delivers it.
pub fn deliver_mail(maildir: &Path, raw: &str) {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "{}.{}.{}.test",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    std::fs::write(maildir.join("tmp").join(&name), raw).unwrap();
    std::fs::rename(
        maildir.join("tmp").join(&name),
        maildir.join("new").join(&name),
    )
    .unwrap();
}
