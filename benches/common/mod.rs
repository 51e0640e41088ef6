//! What the benchmarks read off a running daemon, from /proc.

#![allow(dead_code)]

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`).
pub fn proc_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name: state is field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Clock ticks per second (USER_HZ).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Share of one core a process used over `secs` seconds of `sleep`.
pub fn cpu_percent_over(pid: u32, secs: u64) -> f64 {
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(pid));
    std::thread::sleep(std::time::Duration::from_secs(secs));
    (cpu_ticks(pid) - c0) as f64 / clk_tck() / t0.elapsed().as_secs_f64() * 100.0
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Starts `BIN --config CONFIG run` (stdout dropped, stderr to `stderr`)
/// with `NOTIFY_SOCKET` on a fresh socket in `dir`, and returns once it has
/// sent `READY=1`, as systemd does under `Type=notify`: a daemon is only
/// measured or signalled once it is ready. Keep the returned socket as long
/// as the daemon runs: it notifies again when it stops.
pub fn spawn_ready(
    bin: &str,
    config: &std::path::Path,
    stderr: std::process::Stdio,
    dir: &std::path::Path,
) -> anyhow::Result<(std::process::Child, std::os::unix::net::UnixDatagram)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    const TIMEOUT: Duration = Duration::from_secs(60);
    static N: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("notify-{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let sock = std::os::unix::net::UnixDatagram::bind(&path)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut child = std::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()?;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Ok((child, sock));
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the daemon exited ({status}) before READY=1");
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the daemon was not READY=1 within {TIMEOUT:?}");
        }
    }
}

/// Polls `connector` from empty cursors until it has nothing more, in
/// process, no store: the connector's own cost. Returns the messages read
/// and the seconds it took.
pub fn poll_to_end(connector: &dyn hourglass_connector::Connector) -> anyhow::Result<(usize, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = std::time::Instant::now();
    let read = rt.block_on(async {
        let mut cursors = hourglass_connector::Cursors::new();
        let mut read = 0;
        loop {
            let batch = connector.poll(&cursors).await?;
            read += batch.messages.len();
            cursors.extend(batch.cursors);
            if !batch.more {
                break;
            }
        }
        anyhow::Ok(read)
    })?;
    Ok((read, t.elapsed().as_secs_f64()))
}
