//! A real SMTP server that keeps what it receives: Python's aiosmtpd with
//! its `Mailbox` handler, which delivers every message into a Maildir the
//! test reads back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::net::{free_port, wait_for_port};
use crate::pids::PidFile;

/// A running aiosmtpd. Stopped on drop.
pub struct SmtpSink {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    _pid: PidFile,
}

/// aiosmtpd with AUTH PLAIN/LOGIN for one user, allowed without TLS on
/// loopback (its default refuses AUTH before STARTTLS).
const AUTH_SINK_PY: &str = r#"
import sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
port, maildir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def check(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login.decode() == user and data.password.decode() == password
    return AuthResult(success=ok, handled=False)
Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, authenticator=check,
           auth_require_tls=False, auth_required=True).start()
threading.Event().wait()
"#;

impl SmtpSink {
    /// An open relay on loopback: no AUTH.
    pub fn start() -> anyhow::Result<SmtpSink> {
        SmtpSink::spawn(None)
    }

    /// A sink that requires AUTH (PLAIN or LOGIN) as `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<SmtpSink> {
        SmtpSink::spawn(Some((user, password)))
    }

    fn spawn(auth: Option<(&str, &str)>) -> anyhow::Result<SmtpSink> {
        let probe = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("python3 is needed for the SMTP test server: apt-get install python3")?;
        if !probe.success() {
            bail!("the SMTP test server needs aiosmtpd: pip install aiosmtpd");
        }
        let dir = tempfile::Builder::new().prefix("hg-smtp-").tempdir()?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("aiosmtpd.log"))?;
        let maildir = dir.path().join("maildir");
        let mut cmd = Command::new("python3");
        match auth {
            None => {
                // -n: stay root rather than setuid nobody (the Maildir is ours).
                cmd.args(["-m", "aiosmtpd", "-n", "-l"])
                    .arg(format!("127.0.0.1:{port}"))
                    .args(["-c", "aiosmtpd.handlers.Mailbox"])
                    .arg(&maildir);
            }
            Some((user, password)) => {
                cmd.args(["-c", AUTH_SINK_PY])
                    .arg(port.to_string())
                    .arg(&maildir)
                    .arg(user)
                    .arg(password);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("Starting aiosmtpd")?;
        let pid = PidFile::record(child.id(), &format!("aiosmtpd {}", dir.path().display()));
        let sink = SmtpSink {
            dir,
            port,
            child,
            _pid: pid,
        };
        if let Err(e) = wait_for_port(port, Duration::from_secs(20)) {
            bail!("{e}; aiosmtpd said:\n{}", sink.logs());
        }
        Ok(sink)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("aiosmtpd.log")).unwrap_or_default()
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    /// Every message received so far, oldest first, as delivered (aiosmtpd
    /// adds `X-Peer`, `X-MailFrom` and `X-RcptTo` headers).
    pub fn messages(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir().join(sub)) else {
                continue;
            };
            for e in entries {
                let e = e?;
                files.push((e.metadata()?.modified()?, e.path()));
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| std::fs::read(&p).with_context(|| p.display().to_string()))
            .collect()
    }

    /// Waits until at least `n` messages arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        let start = Instant::now();
        loop {
            let msgs = self.messages()?;
            if msgs.len() >= n {
                return Ok(msgs);
            }
            if start.elapsed() > timeout {
                bail!("{} of {n} messages after {timeout:?}", msgs.len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
