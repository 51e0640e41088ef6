//! A throwaway Cyrus IMAP server on a free loopback port, configured as a
//! Debian install is (the `INBOX.` personal namespace, `.` as hierarchy
//! separator), with one sasldb user and INBOX.Sent marked `\Sent`.
//!
//! Debian's `cyrus-imapd` conflicts with `dovecot-imapd`, so it is not
//! installed: `.ci/run` unpacks the packages with `dpkg -x` into
//! [`cyrus_dir`] and this runs `master` from there with a private
//! `imapd.conf` and `cyrus.conf`. Every `cmd=` gets its own `-C` (Cyrus
//! otherwise reads /etc/imapd.conf), `conf/socket` must exist for `idled`
//! (IDLE notifications), and `munge8bit: no` keeps raw 8-bit headers as
//! they came. As root, master drops to the `cyrus` user (created when
//! missing), which must be able to read the unpacked tree. Services log to
//! syslog only.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::dovecot::{chmod, ensure_system_user};
use crate::net::free_port;
use crate::rawimap::{wait_for_greeting, RawImap};

const CYRUS_USER: &str = "cyrus";
const ADMIN: &str = "cyrus";

/// Where the unpacked Debian packages are: `HOURGLASS_CYRUS_DIR`, or
/// `/var/cache/hourglass-cyrus` (world-readable, unlike root's home, as
/// the `cyrus` user runs the binaries).
pub fn cyrus_dir() -> PathBuf {
    std::env::var_os("HOURGLASS_CYRUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hourglass-cyrus"))
}

/// A running Cyrus. Stopped on drop.
pub struct Cyrus {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// So that a killed test binary's leftover master is stopped by pid
    /// (scripts/stop-test-processes).
    pid_file: Option<crate::pids::PidFile>,
    user: String,
    password: String,
}

impl Cyrus {
    /// Writes the config and starts Cyrus for user `alice`, password
    /// `secret`, with INBOX and INBOX.Sent (`\Sent`).
    pub fn start() -> anyhow::Result<Cyrus> {
        Cyrus::start_with_sent("INBOX.Sent")
    }

    /// Like [`Cyrus::start`], with `sent` (its name on the wire, modified
    /// UTF-7) as the `\Sent` folder, as a localized client would create it.
    pub fn start_with_sent(sent: &str) -> anyhow::Result<Cyrus> {
        let bin = cyrus_dir().join("usr/lib/cyrus/bin");
        if !bin.join("master").exists() {
            bail!(
                "Cyrus not found in {}: run .ci/run, or `apt-get download cyrus-common cyrus-imapd` \
                 and `dpkg -x` both there (plus apt-get install sasl2-bin libical3 libpcre3 libxapian30)",
                cyrus_dir().display()
            );
        }
        if !Path::new("/usr/sbin/saslpasswd2").exists() {
            bail!("/usr/sbin/saslpasswd2 not found: apt-get install sasl2-bin");
        }
        ensure_system_user(CYRUS_USER)?;
        let dir = tempfile::Builder::new().prefix("hg-cyrus-").tempdir()?;
        let root = dir.path().to_path_buf();
        // What Debian's postinst makes below /var/lib/cyrus.
        for sub in [
            "conf/socket",
            "conf/db",
            "conf/proc",
            "conf/lock",
            "conf/log",
            "conf/msg",
            "conf/ptclient",
            "spool",
            "sieve",
            "run",
        ] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let mut cyrus = Cyrus {
            dir,
            port: free_port(),
            child: None,
            pid_file: None,
            user: "alice".to_owned(),
            password: "secret".to_owned(),
        };
        cyrus.write_config(&bin)?;
        for user in [ADMIN, cyrus.user.as_str()] {
            cyrus.set_password(user)?;
        }
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{CYRUS_USER}:"))
            .arg(&root)
            .status()?;
        if !status.success() {
            bail!("chown {CYRUS_USER} of {} failed", root.display());
        }
        chmod(&root, "755")?;
        cyrus.spawn()?;
        // The admin creates the user's INBOX, as `cyradm` would; the user
        // creates Sent with its special use, as a mail client would.
        let mut admin = RawImap::login(cyrus.port, ADMIN, &cyrus.password)?;
        admin.command(&format!("CREATE \"user.{}\"", cyrus.user))?;
        admin.logout()?;
        let mut imap = cyrus.login()?;
        imap.command(&format!("CREATE \"{sent}\" (USE (\\Sent))"))?;
        imap.logout()?;
        Ok(cyrus)
    }

    fn set_password(&self, user: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("/usr/sbin/saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(self.dir.path().join("sasldb2"))
            .arg(user)
            .stdin(Stdio::piped())
            .spawn()
            .context("Running saslpasswd2")?;
        if let Some(stdin) = child.stdin.as_mut() {
            stdin.write_all(self.password.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("saslpasswd2 failed for {user}");
        }
        Ok(())
    }

    fn write_config(&self, bin: &Path) -> anyhow::Result<()> {
        let root = self.dir.path().display();
        let conf = format!(
            "configdirectory: {root}/conf
partition-default: {root}/spool
sievedir: {root}/sieve
cyrus_user: {CYRUS_USER}
admins: {ADMIN}
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {root}/sasldb2
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
munge8bit: no
altnamespace: no
unixhierarchysep: no
idlesocket: {root}/conf/socket/idle
lmtpsocket: {root}/conf/socket/lmtp
notifysocket: {root}/conf/socket/notify
syslog_prefix: hg-cyrus-{port}
",
            port = self.port
        );
        std::fs::write(self.dir.path().join("imapd.conf"), conf)?;
        let c = format!("-C {root}/imapd.conf");
        let bin = bin.display();
        let services = format!(
            "START {{
  recover cmd=\"{bin}/ctl_cyrusdb {c} -r\"
  idled cmd=\"{bin}/idled {c}\"
}}
SERVICES {{
  imap cmd=\"{bin}/imapd {c}\" listen=\"127.0.0.1:{port}\" prefork=0
}}
EVENTS {{
  checkpoint cmd=\"{bin}/ctl_cyrusdb {c} -c\" period=30
}}
",
            port = self.port
        );
        std::fs::write(self.dir.path().join("cyrus.conf"), services)?;
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let root = self.dir.path();
        let out = std::fs::File::create(root.join("master.log"))?;
        let child = Command::new(cyrus_dir().join("usr/lib/cyrus/bin/master"))
            .arg("-C")
            .arg(root.join("imapd.conf"))
            .arg("-M")
            .arg(root.join("cyrus.conf"))
            .arg("-p")
            .arg(root.join("run/master.pid"))
            .env(
                "LD_LIBRARY_PATH",
                cyrus_dir().join("usr/lib/x86_64-linux-gnu"),
            )
            .current_dir(root)
            // master ends a shutdown by signalling its process group: in
            // the test's group it would stop every other test's Cyrus.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("Starting Cyrus master")?;
        self.pid_file = Some(crate::pids::PidFile::record(
            child.id(),
            &format!("cyrus master {}", self.dir.path().display()),
        ));
        self.child = Some(child);
        if let Err(e) = wait_for_greeting(self.port, Duration::from_secs(20)) {
            bail!("{e}; Cyrus said:\n{}", self.logs());
        }
        Ok(())
    }

    fn login(&self) -> anyhow::Result<RawImap> {
        RawImap::login(self.port, &self.user, &self.password)
    }

    /// What master printed, for failure messages (the services log to
    /// syslog).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
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

    /// Stops master (SIGTERM, which ends its services; SIGKILL after 10 s)
    /// and waits until the port is closed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let _pid_file = self.pid_file.take();
        crate::net::stop_server(self.child.take(), self.port, "Cyrus")
    }

    /// Stops and starts Cyrus on the same port; connections drop.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Appends a raw message to `folder` over IMAP, as a delivery would.
    /// Cyrus refuses messages with NUL bytes (and bare newlines in
    /// headers).
    pub fn append(&self, folder: &str, raw: &[u8]) -> anyhow::Result<()> {
        let mut imap = self.login()?;
        imap.append(folder, raw)?;
        imap.logout()
    }

    /// Puts many messages into `folder` over one IMAP connection, 200 to
    /// a MULTIAPPEND.
    pub fn deliver_many<I>(&self, folder: &str, messages: I) -> anyhow::Result<usize>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        let mut imap = self.login()?;
        let mut n = 0;
        let mut chunk = Vec::new();
        for raw in messages {
            chunk.push(raw);
            if chunk.len() == 200 {
                imap.append_many(folder, &chunk)?;
                n += chunk.len();
                chunk.clear();
            }
        }
        imap.append_many(folder, &chunk)?;
        n += chunk.len();
        imap.logout()?;
        Ok(n)
    }

    /// Deletes the message with `uid` from `folder` for good.
    pub fn expunge(&self, folder: &str, uid: u32) -> anyhow::Result<()> {
        let mut imap = self.login()?;
        imap.command(&format!("SELECT \"{folder}\""))?;
        imap.command(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"))?;
        imap.command("EXPUNGE")?;
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
        let mut imap = self.login()?;
        imap.command(&format!("SELECT \"{folder}\""))?;
        imap.command(&format!("UID STORE {uid} {change}FLAGS.SILENT ({flag})"))?;
        imap.logout()
    }

    /// Creates a folder; `folder` is the name on the wire (modified UTF-7),
    /// `special_use` e.g. `\Sent`.
    pub fn create_folder(&self, folder: &str, special_use: Option<&str>) -> anyhow::Result<()> {
        let mut imap = self.login()?;
        match special_use {
            Some(u) => imap.command(&format!("CREATE \"{folder}\" (USE ({u}))"))?,
            None => imap.command(&format!("CREATE \"{folder}\""))?,
        };
        imap.logout()
    }

    /// The UIDVALIDITY of `folder` as the server reports it.
    pub fn uidvalidity(&self, folder: &str) -> anyhow::Result<u32> {
        let mut imap = self.login()?;
        let lines = imap.command(&format!("SELECT \"{folder}\""))?;
        imap.logout()?;
        crate::rawimap::uidvalidity_of(&lines)
    }
}

impl Drop for Cyrus {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
