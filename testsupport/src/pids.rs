//! Pid files of the processes tests start (servers, daemons), so that a
//! runner (`.ci/run`, `scripts/stress`) can stop exactly those when a test
//! binary dies before its destructors run — never by a name pattern that
//! would also hit a seller's own PostgreSQL or aiosmtpd.
//!
//! One file per process in [`dir`], named by its pid and holding its start
//! time (field 22 of `/proc/PID/stat`) and what it is. A pid the kernel
//! has since given to another process has another start time and is left
//! alone. The file is removed when the process has been stopped.

use std::path::PathBuf;

/// `$HOURGLASS_TEST_PID_DIR`, or `hourglass-test-pids` in the temp dir.
/// Runners set the variable to a fresh dir of their own, so that two
/// runs on one machine never stop each other's servers.
pub fn dir() -> PathBuf {
    std::env::var_os("HOURGLASS_TEST_PID_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hourglass-test-pids"))
}

/// The start time of `pid` in clock ticks since boot, from `/proc`.
pub fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// A process's pid file; removed on drop (drop it after the process has
/// exited).
#[derive(Debug)]
pub struct PidFile {
    path: Option<PathBuf>,
}

impl PidFile {
    /// Records `pid` as `what` (e.g. "dovecot /tmp/hg-dovecot-x"). Best
    /// effort: a test does not fail because its pid cannot be written.
    pub fn record(pid: u32, what: &str) -> PidFile {
        let dir = dir();
        let path = dir.join(pid.to_string());
        let written = start_time(pid).is_some_and(|start| {
            std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(&path, format!("{start} {what}\n")).is_ok()
        });
        PidFile {
            path: written.then_some(path),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
