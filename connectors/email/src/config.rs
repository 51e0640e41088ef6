//! The configuration the daemon embeds as `[instances.imap]`,
//! `[instances.smtp]` and `[instances.maildir]`. The shape of `SmtpConfig`
//! is a public contract (DESIGN §6): alert sinks reuse it as
//! `smtp = { host, port, tls, from }`.

use std::path::{Path, PathBuf};

use hourglass_connector::secret::SecretRef;
use serde::Deserialize;

/// How the connection to a mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS (IMAP 143, submission 587).
    Starttls,
    /// No encryption. Only for loopback servers and tests.
    None,
}

/// How hourglass authenticates to the IMAP server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapAuth {
    /// The IMAP `LOGIN` command.
    #[default]
    Login,
    /// SASL `AUTHENTICATE PLAIN`.
    Plain,
    /// SASL `AUTHENTICATE XOAUTH2` (Gmail, Microsoft 365); `password` names
    /// the bearer token.
    Xoauth2,
}

/// An IMAP mailbox to read (`[instances.imap]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Server host name; also the name the TLS certificate must carry.
    pub host: String,
    /// Server port (993 for `implicit`, 143 for `starttls` and `none`).
    #[serde(default = "default_imap_port")]
    pub port: u16,
    /// `implicit`, `starttls` or `none` (loopback only).
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// Login name; when it is an e-mail address, mail from it is outbound.
    pub username: String,
    /// Password (or, with `auth = "xoauth2"`, the access token), by
    /// reference: `env:NAME`, `file:/path` or `credential:NAME`.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// `login`, `plain` or `xoauth2`.
    #[serde(default)]
    pub auth: ImapAuth,
    /// Folders to read, as the mail client shows them (UTF-8; hourglass
    /// sends them in IMAP's modified UTF-7). `/` may stand for the
    /// server's hierarchy separator, and a name is also looked for below
    /// INBOX (`Sent` finds `INBOX.Sent` on Cyrus and Courier). A folder
    /// that does not exist is an error for that folder only. The sent
    /// folder is read as well when it is not listed.
    #[serde(default = "default_folders")]
    pub folders: Vec<String>,
    /// The folder holding the seller's sent mail: messages there are
    /// outbound (they stop the reply clock), and replies sent by hourglass
    /// are appended there. Default: the folder the server marks `\Sent`
    /// (RFC 6154 special use, whatever its localized name), else one with a
    /// usual sent-mail name (`Sent`, `Sent Items`, `[Gmail]/Sent Mail`,
    /// `Gesendet`, ...); it is read even when not in `folders`.
    #[serde(default)]
    pub sent_folder: Option<String>,
    /// Wait for new mail with IMAP IDLE when the server offers it.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Messages fetched per folder and poll at most; the daemon polls again
    /// at once when more are waiting. Each poll costs a SELECT and a UID
    /// SEARCH per folder: 500 syncs a large mailbox about twice as fast as
    /// 200 (benches/ingest.rs) while a batch stays a few MB of ordinary mail.
    #[serde(default = "default_fetch_batch")]
    pub fetch_batch: u32,
    /// PEM file with the certificate(s) of a private CA: the server's
    /// certificate must chain to one of them (instead of the public roots).
    /// The way to reach a server with a company or self-made CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate. Only for tests against loopback servers:
    /// `check-config` refuses it for any other host (use `ca_file`).
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

/// The SMTP server replies (and alert e-mails) are sent through
/// (`[instances.smtp]`, `smtp = { ... }` in an alert sink).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name; also the name the TLS certificate must carry.
    pub host: String,
    /// Server port (465 for `implicit`, 587 for `starttls`).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `implicit`, `starttls` or `none` (loopback only).
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// Login name; without it no AUTH is attempted.
    #[serde(default)]
    pub username: Option<String>,
    /// Password by reference (`env:NAME`, `file:/path`, `credential:NAME`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The sender address (`seller@example.com` or
    /// `Shop <seller@example.com>`). Amazon only relays mail from the
    /// registered or approved sender.
    pub from: String,
    /// PEM file with the certificate(s) of a private CA: the server's
    /// certificate must chain to one of them (instead of the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A local Maildir to read (`[instances.maildir]`), e.g. one filled by
/// fetchmail, mbsync or a local MTA.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaildirConfig {
    /// The Maildir root (the one holding `cur/`, `new/`, `tmp/`).
    pub path: std::path::PathBuf,
    /// Folders to read: `INBOX` is the root, anything else a Maildir++
    /// subfolder (`Sent` is `.Sent`). Default: `INBOX`, plus `Sent` when
    /// `.Sent` exists.
    #[serde(default)]
    pub folders: Option<Vec<String>>,
    /// The folder holding sent mail (default `Sent`): messages there are
    /// outbound, and replies are written there.
    #[serde(default)]
    pub sent_folder: Option<String>,
    /// The seller's own addresses: mail from them is outbound wherever it
    /// lies.
    #[serde(default)]
    pub own_addresses: Vec<String>,
    /// Messages read per folder and poll at most.
    #[serde(default = "default_fetch_batch")]
    pub fetch_batch: u32,
}

fn default_imap_port() -> u16 {
    993
}
fn default_smtp_port() -> u16 {
    465
}
fn default_tls() -> TlsMode {
    TlsMode::Implicit
}
fn default_folders() -> Vec<String> {
    vec!["INBOX".to_owned()]
}
fn default_true() -> bool {
    true
}
fn default_fetch_batch() -> u32 {
    500
}

/// Whether `host` is this machine (`localhost`, `127.0.0.0/8`, `::1`):
/// the only hosts `accept_invalid_certs` is allowed for.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The certificates in a `ca_file`: at least one, or a message saying what
/// is wrong with the file.
pub fn read_ca_file(
    path: &Path,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("ca_file {} not found", path.display()),
        _ => format!("cannot read ca_file {}: {e}", path.display()),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "ca_file {}: not a PEM certificate file: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Names mail clients and servers give the sent folder.
const SENT_NAMES: &[&str] = &[
    "sent",
    "sent items",
    "sent messages",
    "sent mail",
    "[gmail]/sent mail",
    "[google mail]/sent mail",
    "inbox.sent",
    "inbox/sent",
    "gesendet",
    "gesendete objekte",
    "gesendete elemente",
    "envoyés",
    "éléments envoyés",
    "enviados",
    "elementos enviados",
    "itens enviados",
    "inviata",
    "posta inviata",
    "trimise",
];

/// Whether `name` is one mail clients and servers give the sent folder.
pub(crate) fn is_sent_name(name: &str) -> bool {
    SENT_NAMES.contains(&name.to_lowercase().as_str())
}

impl ImapConfig {
    /// The sent folder: `sent_folder`, else the folder in `folders` with a
    /// usual sent-mail name (the DESIGN example lists `["INBOX", "Sent"]`
    /// and nothing more).
    pub fn effective_sent_folder(&self) -> Option<&str> {
        self.sent_folder.as_deref().or_else(|| {
            self.folders
                .iter()
                .map(String::as_str)
                .find(|f| is_sent_name(f))
        })
    }

    /// The folders one poll reads: `folders`, then the sent folder when it
    /// is not among them.
    pub fn poll_folders(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in self.folders.iter().chain(self.sent_folder.iter()) {
            if !out.iter().any(|o| o == f) {
                out.push(f.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses_with_defaults() {
        let imap: ImapConfig = toml::from_str(
            r#"
            host = "imap.example.com"
            port = 993
            tls = "implicit"
            username = "seller@example.com"
            password = "env:AMAZON_IMAP_PASSWORD"
            folders = ["INBOX", "Sent"]
            "#,
        )
        .unwrap();
        assert_eq!(imap.auth, ImapAuth::Login);
        assert!(imap.idle);
        assert_eq!(imap.fetch_batch, 500);
        assert!(!imap.accept_invalid_certs);
        assert_eq!(imap.poll_folders(), vec!["INBOX", "Sent"]);
        assert_eq!(imap.effective_sent_folder(), Some("Sent"));

        // The alert sink form: no credentials.
        let smtp: SmtpConfig = toml::from_str(
            r#"host = "smtp.example.com"
            port = 587
            tls = "starttls"
            from = "hourglass@example.com""#,
        )
        .unwrap();
        assert_eq!(smtp.tls, TlsMode::Starttls);
        assert!(smtp.username.is_none() && smtp.password.is_none());
    }

    #[test]
    fn refuses_unknown_keys_and_plain_passwords() {
        let unknown =
            toml::from_str::<ImapConfig>("host = \"h\"\nusername = \"u\"\nfolder = \"INBOX\"\n");
        assert!(unknown.is_err());
        // toml quotes the offending line in its error, so only the kind of
        // failure is checked here; the daemon must not log raw TOML errors
        // for secret-bearing lines.
        let plain =
            toml::from_str::<SmtpConfig>("host = \"h\"\nfrom = \"a@b\"\npassword = \"hunter2\"\n");
        assert!(plain.is_err());
    }

    #[test]
    fn sent_folder_is_polled_once() {
        let imap: ImapConfig =
            toml::from_str("host = \"h\"\nusername = \"u\"\nsent_folder = \"Sent\"\n").unwrap();
        assert_eq!(imap.poll_folders(), vec!["INBOX", "Sent"]);
        assert_eq!(imap.effective_sent_folder(), Some("Sent"));
    }

    #[test]
    fn the_sent_folder_is_found_by_its_usual_names() {
        let with = |folders: &[&str]| ImapConfig {
            folders: folders.iter().map(|f| (*f).to_owned()).collect(),
            ..toml::from_str("host = \"h\"\nusername = \"u\"\n").unwrap()
        };
        assert_eq!(with(&["INBOX"]).effective_sent_folder(), None);
        assert_eq!(
            with(&["INBOX", "[Gmail]/Sent Mail"]).effective_sent_folder(),
            Some("[Gmail]/Sent Mail")
        );
        assert_eq!(
            with(&["INBOX", "Gesendete Objekte"]).effective_sent_folder(),
            Some("Gesendete Objekte")
        );
        assert_eq!(with(&["INBOX", "Archive"]).effective_sent_folder(), None);
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST.",
            "imap.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "imap.example.com",
            "10.0.0.1",
            "localhost.example.com",
            "::2",
            "mylocalhost",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
