//! A throwaway Dovecot IMAP server on a free loopback port, with one
//! passwd-file user and a Maildir under a temp dir.
//!
//! Dovecot refuses to run its login and mail processes as root, so logins
//! run as `dovenull`, internal processes as `dovecot`, and mail as a `vmail`
//! system user (created when missing). The temp dir is made 0755: Dovecot's
//! auth process, not root, reads the passwd file, and a 0700 dir gives
//! "Temporary authentication failure".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::net::{free_port, wait_for_port};
use crate::pids::PidFile;
use crate::rawimap::RawImap;

const DOVECOT: &str = "/usr/sbin/dovecot";
const MAIL_USER: &str = "vmail";

/// What a test needs beyond plain IMAP with a password.
#[derive(Debug, Clone, Default)]
pub struct DovecotOptions {
    /// TLS with a fresh certificate for `localhost` and 127.0.0.1, issued by
    /// a fresh private CA ([`Dovecot::ca_file`]): STARTTLS on the IMAP port,
    /// implicit TLS on [`Dovecot::imaps_port`].
    pub tls: bool,
    /// Accept `AUTHENTICATE XOAUTH2` with bearer tokens checked against
    /// this tokeninfo URL (the token is appended); the JSON answer's
    /// `email` names the user.
    pub oauth2_tokeninfo_url: Option<String>,
    /// The name (UTF-8) of the folder set up as `\Sent`, as a localized
    /// client would create it; default `Sent`.
    pub sent_name: Option<String>,
}

/// Writes into `root` a private CA (`ca.pem`) and a server certificate it issued for
/// `localhost` and 127.0.0.1 (`cert.pem`, `key.pem`), with the openssl CLI.
pub fn make_certificates(root: &Path) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(root)
            .output()
            .context("openssl is needed for TLS tests: apt-get install openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=hourglass test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(
        root.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ])?;
    // Dovecot reads the key as root, then drops privileges; the CA stays
    // readable for the tests.
    chmod(&root.join("ca.pem"), "644")
}

/// A running Dovecot. Stopped on drop.
pub struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    imaps_port: Option<u16>,
    options: DovecotOptions,
    child: Option<(Child, PidFile)>,
    user: String,
    password: String,
}

impl Dovecot {
    /// Writes the config and starts Dovecot for user `alice`, password
    /// `secret`, with INBOX and Sent.
    pub fn start() -> anyhow::Result<Dovecot> {
        Dovecot::start_with(DovecotOptions::default())
    }

    /// Like [`Dovecot::start`], with TLS or XOAUTH2.
    pub fn start_with(options: DovecotOptions) -> anyhow::Result<Dovecot> {
        if !Path::new(DOVECOT).exists() {
            bail!("{DOVECOT} not found: apt-get install dovecot-imapd");
        }
        ensure_system_user(MAIL_USER)?;
        let dir = tempfile::Builder::new().prefix("hg-dovecot-").tempdir()?;
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        chmod(root, "755")?;
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let status = Command::new("chown")
            .arg(format!("{MAIL_USER}:{MAIL_USER}"))
            .arg(root.join("mail"))
            .status()?;
        if !status.success() {
            bail!("chown {MAIL_USER} of the mail dir failed");
        }
        let mut dovecot = Dovecot {
            dir,
            port: free_port(),
            imaps_port: options.tls.then(free_port),
            options: options.clone(),
            child: None,
            user: "alice".to_owned(),
            password: "secret".to_owned(),
        };
        std::fs::write(
            root.join("passwd"),
            format!("{}:{{PLAIN}}{}::::::\n", dovecot.user, dovecot.password),
        )?;
        chmod(&root.join("passwd"), "644")?;
        if options.tls {
            make_certificates(root)?;
        }
        if let Some(url) = &options.oauth2_tokeninfo_url {
            std::fs::write(
                root.join("oauth2.conf.ext"),
                format!("tokeninfo_url = {url}\nusername_attribute = email\n"),
            )?;
        }
        dovecot.write_config()?;
        dovecot.spawn()?;
        Ok(dovecot)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let root = self.dir.path().display();
        let ssl = if self.options.tls {
            format!("ssl = yes\nssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem\n")
        } else {
            "ssl = no\n".to_owned()
        };
        let (mechanisms, oauth2) = match &self.options.oauth2_tokeninfo_url {
            Some(_) => (
                "plain login xoauth2 oauthbearer",
                format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {root}/oauth2.conf.ext\n}}\n"
                ),
            ),
            None => ("plain login", String::new()),
        };
        let conf = format!(
            r#"base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
# Process titles name each session's running command (IDLE).
verbose_proctitle = yes
instance_name = hg-dovecot-{port}
listen = 127.0.0.1
protocols = imap
{ssl}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%u/Maildir
{oauth2}passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_USER} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox "{sent}" {{
    special_use = \Sent
    auto = create
  }}
}}
"#,
            port = self.port,
            imaps_port = self.imaps_port.unwrap_or(0),
            sent = self.options.sent_name.as_deref().unwrap_or("Sent"),
        );
        std::fs::write(self.dir.path().join("dovecot.conf"), conf)?;
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("dovecot.conf");
        let out = std::fs::File::create(self.dir.path().join("stdout.log"))?;
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("Starting dovecot")?;
        let pid = PidFile::record(
            child.id(),
            &format!("dovecot {}", self.dir.path().display()),
        );
        self.child = Some((child, pid));
        if let Err(e) = wait_for_port(self.port, Duration::from_secs(20)) {
            bail!("{e}; dovecot said:\n{}", self.logs());
        }
        Ok(())
    }

    /// Everything Dovecot logged, for failure messages.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("dovecot.log"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM certificate of the private CA that issued the server's
    /// certificate, when started with `tls`.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// The implicit-TLS port, when started with `tls`.
    pub fn imaps_port(&self) -> Option<u16> {
        self.imaps_port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The user's Maildir root (INBOX); `Sent` is `.Sent` below it.
    pub fn maildir(&self) -> PathBuf {
        self.dir
            .path()
            .join("mail")
            .join(&self.user)
            .join("Maildir")
    }

    /// Stops Dovecot (SIGTERM, then SIGKILL) and waits until its port is
    /// closed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let child = self.child.take().map(|(child, _pid)| child);
        crate::net::stop_server(child, self.port, "dovecot")
    }

    /// Stops and starts Dovecot on the same port; connections drop.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Makes every folder get a new UIDVALIDITY, as after a server
    /// migration: with Dovecot stopped, its UID list and indexes are
    /// removed, so it numbers the mail anew.
    pub fn bump_uidvalidity(&mut self) -> anyhow::Result<()> {
        let stopped_at = unix_secs();
        self.stop()?;
        remove_uid_state(&self.maildir())?;
        // UIDVALIDITY is the creation time in seconds: make sure it moves
        // past every value given so far.
        while unix_secs() <= stopped_at {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn()
    }

    /// Whether some client of this server is in IMAP IDLE now (seen in the
    /// title of its imap process, a child of this Dovecot).
    pub fn has_idle_session(&self) -> bool {
        self.imap_sessions().iter().any(|t| t.contains(" IDLE"))
    }

    /// Waits until some client of this server is in IMAP IDLE.
    pub fn wait_for_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.has_idle_session() {
            if start.elapsed() > timeout {
                bail!(
                    "no IMAP session entered IDLE within {timeout:?}; sessions: {:?}",
                    self.imap_sessions()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The process titles of this server's imap processes.
    fn imap_sessions(&self) -> Vec<String> {
        let Some((child, _)) = &self.child else {
            return Vec::new();
        };
        let master = child.id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let (_, rest) = stat.rsplit_once(')')?;
                // Field 4, the parent pid, is the second after the name.
                (rest.split_whitespace().nth(1)? == master).then_some(())?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                title.contains("/imap ").then_some(title)
            })
            .collect()
    }

    /// Appends a raw message to `folder` over IMAP, as a delivery would.
    pub fn append(&self, folder: &str, raw: &[u8]) -> anyhow::Result<()> {
        let mut imap = RawImap::login(self.port, &self.user, &self.password)?;
        imap.append(folder, raw)?;
        imap.logout()
    }

    /// Puts many messages into `folder` at once by writing them into its
    /// Maildir, as a local delivery agent would; Dovecot assigns UIDs when
    /// a client next opens the folder. Much faster than APPEND for filling
    /// a mailbox of thousands (benchmarks). Returns how many were written.
    pub fn deliver_many<I>(&self, folder: &str, messages: I) -> anyhow::Result<usize>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        // A login creates the user's Maildir (and the auto-created Sent).
        RawImap::login(self.port, &self.user, &self.password)?.logout()?;
        let dir = if folder.eq_ignore_ascii_case("INBOX") {
            self.maildir()
        } else {
            self.maildir()
                .join(format!(".{}", folder.replace('/', ".")))
        };
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut n = 0;
        for raw in messages {
            let name = format!("{}.M{n}P{}.hg-test", unix_secs(), std::process::id());
            let tmp = dir.join("tmp").join(&name);
            std::fs::write(&tmp, raw)?;
            std::fs::rename(&tmp, dir.join("new").join(&name))?;
            n += 1;
        }
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{MAIL_USER}:{MAIL_USER}"))
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!("chown {MAIL_USER} of {} failed", dir.display());
        }
        Ok(n)
    }

    /// Deletes the message with `uid` from `folder` for good.
    pub fn expunge(&self, folder: &str, uid: u32) -> anyhow::Result<()> {
        let mut imap = RawImap::login(self.port, &self.user, &self.password)?;
        imap.command(&format!("SELECT \"{folder}\""))?;
        imap.command(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"))?;
        imap.command("EXPUNGE")?;
        imap.logout()
    }

    /// Creates a folder; `folder` is the name on the wire (modified UTF-7),
    /// `special_use` e.g. `\Sent` (RFC 6154 CREATE-SPECIAL-USE).
    pub fn create_folder(&self, folder: &str, special_use: Option<&str>) -> anyhow::Result<()> {
        let mut imap = RawImap::login(self.port, &self.user, &self.password)?;
        match special_use {
            Some(u) => imap.command(&format!("CREATE \"{folder}\" (USE ({u}))"))?,
            None => imap.command(&format!("CREATE \"{folder}\""))?,
        };
        imap.logout()
    }

    /// Sets (`+`) or clears (`-`) `flag` on the message with `uid`.
    pub fn store_flag(
        &self,
        folder: &str,
        uid: u32,
        change: char,
        flag: &str,
    ) -> anyhow::Result<()> {
        let mut imap = RawImap::login(self.port, &self.user, &self.password)?;
        imap.command(&format!("SELECT \"{folder}\""))?;
        imap.command(&format!("UID STORE {uid} {change}FLAGS.SILENT ({flag})"))?;
        imap.logout()
    }

    /// The UIDVALIDITY of `folder` as the server reports it.
    pub fn uidvalidity(&self, folder: &str) -> anyhow::Result<u32> {
        let mut imap = RawImap::login(self.port, &self.user, &self.password)?;
        let lines = imap.command(&format!("SELECT \"{folder}\""))?;
        imap.logout()?;
        crate::rawimap::uidvalidity_of(&lines)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(crate) fn chmod(path: &Path, mode: &str) -> anyhow::Result<()> {
    let status = Command::new("chmod").arg(mode).arg(path).status()?;
    if !status.success() {
        bail!("chmod {mode} {} failed", path.display());
    }
    Ok(())
}

/// Creates the system user `name` when missing (tests that start mail
/// servers run as root; the servers drop to this user).
pub(crate) fn ensure_system_user(name: &str) -> anyhow::Result<()> {
    let exists = Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if exists {
        return Ok(());
    }
    let status = Command::new("useradd")
        .args([
            "-r",
            "-M",
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .context("useradd (tests that start Dovecot run as root)")?;
    // Two test binaries may race to create it; the loser finds it there.
    let exists_now = Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .status()?
        .success();
    if !status.success() && !exists_now {
        bail!("cannot create the {name} system user");
    }
    Ok(())
}

fn remove_uid_state(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            if name.starts_with('.') {
                remove_uid_state(&path)?;
            }
        } else if name.starts_with("dovecot") {
            // dovecot-uidlist, dovecot.index*, and also dovecot.list.index*
            // and dovecot-uidvalidity*, which remember the old UIDVALIDITY
            // and fail the mailbox ("[SERVERBUG]") when they disagree.
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// An OAuth2 tokeninfo endpoint for Dovecot's `oauth2` passdb: one valid
/// bearer token for one user, 401 for anything else.
pub struct TokenInfo {
    port: u16,
    child: Child,
    _pid: PidFile,
}

const TOKENINFO_PY: &str = r#"
import http.server, json, sys, urllib.parse
port, token, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.urlparse(self.path).query
        got = urllib.parse.parse_qs(q).get("access_token", [""])[0]
        auth = self.headers.get("Authorization", "")
        ok = got == token or auth == "Bearer " + token
        body = json.dumps({"email": user, "active": True} if ok else {"error": "invalid_token"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

impl TokenInfo {
    pub fn start(token: &str, user: &str) -> anyhow::Result<TokenInfo> {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", TOKENINFO_PY])
            .arg(port.to_string())
            .arg(token)
            .arg(user)
            .stdin(Stdio::null())
            .spawn()
            .context("python3 is needed for the tokeninfo test server")?;
        let pid = PidFile::record(child.id(), "tokeninfo");
        let info = TokenInfo {
            port,
            child,
            _pid: pid,
        };
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(info)
    }

    /// The URL for [`DovecotOptions::oauth2_tokeninfo_url`].
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/tokeninfo?access_token=", self.port)
    }
}

impl Drop for TokenInfo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
