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

/// aiosmtpd behind TLS: implicit (SMTPS, port 465 style) or STARTTLS,
/// required before MAIL (port 587 style), with a certificate for
/// `localhost` issued by a CA made for the test.
const TLS_SINK_PY: &str = r#"
import sys, ssl, asyncio
from aiosmtpd.smtp import SMTP
from aiosmtpd.handlers import Mailbox
port, maildir, mode, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
handler = Mailbox(maildir)
def factory():
    if mode == "implicit":
        return SMTP(handler, hostname="localhost")
    return SMTP(handler, hostname="localhost", tls_context=ctx, require_starttls=True)
async def main():
    srv = await asyncio.get_running_loop().create_server(
        factory, "127.0.0.1", port, ssl=ctx if mode == "implicit" else None)
    await srv.serve_forever()
asyncio.run(main())
"#;

/// How an [`SmtpSink::start_tls`] server speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTls {
    Implicit,
    Starttls,
}

impl SmtpSink {
    /// A sink behind TLS with a certificate for `localhost` from a CA
    /// made now ([`SmtpSink::ca_pem`]) with the openssl CLI.
    pub fn start_tls(mode: SinkTls) -> anyhow::Result<SmtpSink> {
        SmtpSink::spawn_with(None, Some(mode))
    }

    /// The PEM of the CA that issued a TLS sink's certificate.
    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(self.dir.path().join("ca.pem")).context("the sink has no TLS")
    }

    /// An open relay on loopback: no AUTH.
    pub fn start() -> anyhow::Result<SmtpSink> {
        SmtpSink::spawn(None)
    }

    /// A sink that requires AUTH (PLAIN or LOGIN) as `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<SmtpSink> {
        SmtpSink::spawn(Some((user, password)))
    }

    fn spawn(auth: Option<(&str, &str)>) -> anyhow::Result<SmtpSink> {
        SmtpSink::spawn_with(auth, None)
    }

    fn spawn_with(auth: Option<(&str, &str)>, tls: Option<SinkTls>) -> anyhow::Result<SmtpSink> {
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
        match (auth, tls) {
            (_, Some(mode)) => {
                make_certificate(dir.path())?;
                cmd.args(["-c", TLS_SINK_PY])
                    .arg(port.to_string())
                    .arg(&maildir)
                    .arg(match mode {
                        SinkTls::Implicit => "implicit",
                        SinkTls::Starttls => "starttls",
                    })
                    .arg(dir.path().join("cert.pem"))
                    .arg(dir.path().join("key.pem"));
            }
            (None, None) => {
                // -n: stay root rather than setuid nobody (the Maildir is ours).
                cmd.args(["-m", "aiosmtpd", "-n", "-l"])
                    .arg(format!("127.0.0.1:{port}"))
                    .args(["-c", "aiosmtpd.handlers.Mailbox"])
                    .arg(&maildir);
            }
            (Some((user, password)), None) => {
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

/// A CA (`ca.pem`) and a server certificate for `localhost` it signed
/// (`cert.pem`, `key.pem`) in `dir`: a leaf, not a self-signed CA, as
/// rustls will not take a CA certificate as the server's own.
fn make_certificate(dir: &std::path::Path) -> anyhow::Result<()> {
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=hourglass test CA",
            "-days",
            "2",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("openssl is needed for the TLS test server: apt-get install openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
