//! One IMAP server for tests that run against every server hourglass is
//! tested with: Dovecot (cPanel hosts and most ISPs) and Cyrus (Fastmail,
//! universities, company servers), each as its Debian package sets it up.

use crate::cyrus::Cyrus;
use crate::dovecot::Dovecot;

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

    pub fn kind(&self) -> ServerKind {
        match self {
            ImapServer::Dovecot(_) => ServerKind::Dovecot,
            ImapServer::Cyrus(_) => ServerKind::Cyrus,
        }
    }

    /// A folder of the user's personal namespace by its name as the
    /// server spells it: Dovecot has it at the root (`Sent`), Debian's
    /// Cyrus below INBOX (`INBOX.Sent`).
    pub fn folder(&self, name: &str) -> String {
        match self {
            ImapServer::Dovecot(_) => name.to_owned(),
            ImapServer::Cyrus(_) if name.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
            ImapServer::Cyrus(_) => format!("INBOX.{}", name.replace('/', ".")),
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
