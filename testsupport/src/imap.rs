//! One IMAP server for tests that run against every server hourglass is
//! tested with: Dovecot (cPanel hosts and most ISPs) and Cyrus (Fastmail,
//! universities, company servers), each as its Debian package sets it up.

use crate::cyrus::Cyrus;
use crate::dovecot::{Dovecot, DovecotOptions};

/// Which server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Dovecot,
    Cyrus,
}

/// A running IMAP server with user `alice` and a Sent folder marked
/// `\Sent`. Stopped on drop.
pub enum ImapServer {
    Dovecot(Dovecot),
    Cyrus(Cyrus),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            ImapServer::Dovecot($s) => $e,
            ImapServer::Cyrus($s) => $e,
        }
    };
}

impl ImapServer {
    pub fn start(kind: ServerKind) -> anyhow::Result<ImapServer> {
        Ok(match kind {
            ServerKind::Dovecot => ImapServer::Dovecot(Dovecot::start()?),
            ServerKind::Cyrus => ImapServer::Cyrus(Cyrus::start()?),
        })
    }

    /// Like [`ImapServer::start`], with the `\Sent` folder under a
    /// localized name (UTF-8, in the personal namespace) instead of `Sent`.
    pub fn start_with_sent(kind: ServerKind, sent: &str) -> anyhow::Result<ImapServer> {
        Ok(match kind {
            ServerKind::Dovecot => ImapServer::Dovecot(Dovecot::start_with(DovecotOptions {
                sent_name: Some(sent.to_owned()),
                ..DovecotOptions::default()
            })?),
            ServerKind::Cyrus => {
                ImapServer::Cyrus(Cyrus::start_with_sent(&format!("INBOX.{}", mutf7(sent)))?)
            }
        })
    }

    pub fn kind(&self) -> ServerKind {
        match self {
            ImapServer::Dovecot(_) => ServerKind::Dovecot,
            ImapServer::Cyrus(_) => ServerKind::Cyrus,
        }
    }

    /// The wire name (modified UTF-7) of a folder of the user's personal
    /// namespace: Dovecot has it at the root (`Sent`), Debian's Cyrus
    /// below INBOX (`INBOX.Sent`).
    pub fn folder(&self, name: &str) -> String {
        match self {
            ImapServer::Dovecot(_) => mutf7(name),
            ImapServer::Cyrus(_) if name.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
            ImapServer::Cyrus(_) => format!("INBOX.{}", mutf7(&name.replace('/', "."))),
        }
    }

    /// The folder the server set up as `\Sent`.
    pub fn sent_folder(&self) -> String {
        self.folder("Sent")
    }

    pub fn host(&self) -> &'static str {
        each!(self, s => s.host())
    }

    pub fn port(&self) -> u16 {
        each!(self, s => s.port())
    }

    pub fn user(&self) -> &str {
        each!(self, s => s.user())
    }

    pub fn password(&self) -> &str {
        each!(self, s => s.password())
    }

    pub fn logs(&self) -> String {
        each!(self, s => s.logs())
    }

    /// Whether a client is in IMAP IDLE now. Dovecot shows it in its imap
    /// processes' titles; Cyrus shows nothing comparable, so it answers
    /// true: mail appended just before a client's IDLE begins is reported
    /// when it begins (the connector checks the mailbox first), so a test
    /// that appends at once still sees the change.
    pub fn has_idle_session(&self) -> bool {
        match self {
            ImapServer::Dovecot(d) => d.has_idle_session(),
            ImapServer::Cyrus(_) => true,
        }
    }

    pub fn append(&self, folder: &str, raw: &[u8]) -> anyhow::Result<()> {
        each!(self, s => s.append(folder, raw))
    }

    pub fn deliver_many<I>(&self, folder: &str, messages: I) -> anyhow::Result<usize>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        each!(self, s => s.deliver_many(folder, messages))
    }

    pub fn expunge(&self, folder: &str, uid: u32) -> anyhow::Result<()> {
        each!(self, s => s.expunge(folder, uid))
    }

    /// Sets (`+`) or clears (`-`) `flag` on the message with `uid`, as
    /// another mail client would.
    pub fn store_flag(
        &self,
        folder: &str,
        uid: u32,
        change: char,
        flag: &str,
    ) -> anyhow::Result<()> {
        each!(self, s => s.store_flag(folder, uid, change, flag))
    }

    /// Creates `folder` (its name on the wire, modified UTF-7), marked
    /// with `special_use` (`\Sent`) when given (RFC 6154 CREATE-SPECIAL-USE).
    pub fn create_folder(&self, folder: &str, special_use: Option<&str>) -> anyhow::Result<()> {
        each!(self, s => s.create_folder(folder, special_use))
    }

    pub fn uidvalidity(&self, folder: &str) -> anyhow::Result<u32> {
        each!(self, s => s.uidvalidity(folder))
    }

    pub fn stop(&mut self) -> anyhow::Result<()> {
        each!(self, s => s.stop())
    }

    /// Stops and starts the server on the same port; connections drop.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        each!(self, s => s.restart())
    }
}

/// RFC 3501 §5.1.3 modified UTF-7, written again here so that the tests do
/// not check the connector's encoder against itself.
pub fn mutf7(name: &str) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    let mut out = String::new();
    let mut run: Vec<u8> = Vec::new();
    let flush = |out: &mut String, run: &mut Vec<u8>| {
        if run.is_empty() {
            return;
        }
        out.push('&');
        let mut bits = 0u32;
        let mut n = 0;
        for b in run.iter() {
            bits = (bits << 8) | u32::from(*b);
            n += 8;
            while n >= 6 {
                n -= 6;
                out.push(B64[((bits >> n) & 63) as usize] as char);
            }
        }
        if n > 0 {
            out.push(B64[((bits << (6 - n)) & 63) as usize] as char);
        }
        out.push('-');
        run.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut run);
            out.push_str(if c == '&' { "&-" } else { "" });
            if c != '&' {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                run.extend_from_slice(&u.to_be_bytes());
            }
        }
    }
    flush(&mut out, &mut run);
    out
}
