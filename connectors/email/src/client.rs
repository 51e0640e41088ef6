//! The IMAP side: connecting (implicit TLS, STARTTLS, plain), logging in
//! (LOGIN, AUTHENTICATE PLAIN, XOAUTH2), and the per-folder incremental
//! sync whose cursor is `uidvalidity:lastuid`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_imap::error::Error as ImapError;
use async_imap::imap_proto::Response;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::{Batch, ConnectorError, Quarantined};
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use crate::config::{ImapAuth, ImapConfig, TlsMode};
use crate::normalize::{parse_mail, ParseContext};

/// The transport under an IMAP session: TLS, or plain TCP on loopback.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Session = async_imap::Session<ImapStream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Network trouble is worth a retry; the server's own refusals are not.
pub fn map_imap_error(context: &str, e: ImapError) -> ConnectorError {
    match e {
        ImapError::Io(e) => ConnectorError::Transient(format!("{context}: {e}")),
        ImapError::ConnectionLost => {
            ConnectorError::Transient(format!("{context}: connection lost"))
        }
        ImapError::Parse(e) => {
            ConnectorError::Transient(format!("{context}: unreadable server response: {e}"))
        }
        ImapError::No(m) | ImapError::Bad(m) if is_temporary(&m) => {
            ConnectorError::Transient(format!("{context}: {}", server_text(&m)))
        }
        ImapError::No(m) | ImapError::Bad(m) => {
            ConnectorError::Other(format!("{context}: {}", server_text(&m)))
        }
        other => ConnectorError::Other(format!("{context}: {other}")),
    }
}

/// The server's own words from async-imap's `code: .., info: Some("..")`
/// rendering of a NO or BAD, with the response code in brackets.
pub fn server_text(m: &str) -> String {
    let unquote = |s: &str| {
        s.strip_prefix("Some(\"")
            .and_then(|s| s.strip_suffix("\")"))
            .map(|s| s.replace("\\\"", "\"").replace("\\\\", "\\"))
    };
    let Some((code, info)) = m
        .strip_prefix("code: ")
        .and_then(|rest| rest.split_once(", info: "))
    else {
        return m.trim().to_owned();
    };
    let info = unquote(info.trim()).unwrap_or_default();
    let code = code.trim();
    let code = match code {
        "None" => String::new(),
        c => {
            let name = c
                .trim_start_matches("Some(")
                .trim_end_matches(')')
                .split(['(', ' '])
                .next()
                .unwrap_or_default()
                .to_uppercase();
            format!("[{name}] ")
        }
    };
    let text = format!("{code}{info}");
    if text.trim().is_empty() {
        m.trim().to_owned()
    } else {
        text
    }
}

/// RFC 5530 response codes (and Dovecot's wording) for "try again later".
/// `[SERVERBUG]` is one too: a session that outlived a server-side change
/// of the mailbox (a restore, a UIDVALIDITY reset) gets it until it
/// reconnects.
fn is_temporary(msg: &str) -> bool {
    ["[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]", "Temporary"]
        .iter()
        .any(|code| msg.contains(code))
}

struct PlainAuth<'a> {
    user: &'a str,
    password: &'a str,
}

impl async_imap::Authenticator for PlainAuth<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        format!("\0{}\0{}", self.user, self.password).into_bytes()
    }
}

struct XOAuth2<'a> {
    user: &'a str,
    token: &'a str,
    sent: bool,
}

impl async_imap::Authenticator for XOAuth2<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        // After a failure the server sends a JSON error as a challenge and
        // expects an empty response before its tagged NO (RFC 7628 §3.2.3).
        if self.sent {
            return Vec::new();
        }
        self.sent = true;
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token).into_bytes()
    }
}

/// Opens, secures and authenticates one IMAP session.
pub async fn connect(
    cfg: &ImapConfig,
    password: Option<&SecretString>,
) -> Result<Session, ConnectorError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(cfg, password)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectorError::Transient(format!(
            "IMAP connection to {}:{} timed out",
            cfg.host, cfg.port
        ))),
    }
}

async fn connect_inner(
    cfg: &ImapConfig,
    password: Option<&SecretString>,
) -> Result<Session, ConnectorError> {
    let where_ = format!("IMAP {}:{}", cfg.host, cfg.port);
    let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| ConnectorError::Transient(format!("Connecting to {where_}: {e}")))?;
    let client = match cfg.tls {
        TlsMode::None => greet(async_imap::Client::new(ImapStream::Plain(tcp)), &where_).await?,
        TlsMode::Implicit => {
            let tls = tls_wrap(cfg, tcp).await?;
            greet(async_imap::Client::new(tls), &where_).await?
        }
        TlsMode::Starttls => {
            let mut client =
                greet(async_imap::Client::new(ImapStream::Plain(tcp)), &where_).await?;
            client
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|e| map_imap_error(&format!("STARTTLS on {where_}"), e))?;
            let ImapStream::Plain(tcp) = client.into_inner() else {
                return Err(ConnectorError::Other("STARTTLS on a TLS stream".into()));
            };
            // No greeting follows STARTTLS (RFC 3501 §6.2.1).
            async_imap::Client::new(tls_wrap(cfg, tcp).await?)
        }
    };
    let secret = password.map(|p| p.expose_secret()).unwrap_or_default();
    let user = cfg.username.as_str();
    let result = match cfg.auth {
        ImapAuth::Login => client.login(user, secret).await,
        ImapAuth::Plain => {
            client
                .authenticate(
                    "PLAIN",
                    PlainAuth {
                        user,
                        password: secret,
                    },
                )
                .await
        }
        ImapAuth::Xoauth2 => {
            client
                .authenticate(
                    "XOAUTH2",
                    XOAuth2 {
                        user,
                        token: secret,
                        sent: false,
                    },
                )
                .await
        }
    };
    result.map_err(|(e, _client)| match e {
        // The message would name the offending character of the password.
        ImapError::Validate(_) => ConnectorError::Auth(format!(
            "The password of {user} has a character IMAP LOGIN cannot carry; use auth = \"plain\""
        )),
        ImapError::No(m) | ImapError::Bad(m) if !is_temporary(&m) => ConnectorError::Auth(format!(
            "{where_} refused the login of {user}: {} (check the user name and the password it refers to)",
            server_text(&m)
        )),
        other => map_imap_error(&format!("Logging in to {where_}"), other),
    })
}

async fn greet(
    mut client: async_imap::Client<ImapStream>,
    where_: &str,
) -> Result<async_imap::Client<ImapStream>, ConnectorError> {
    match client.read_response().await {
        Some(Ok(greeting)) => {
            if let Response::Data {
                status: async_imap::imap_proto::Status::Bye,
                ..
            } = greeting.parsed()
            {
                return Err(ConnectorError::Transient(format!(
                    "{where_} said BYE instead of a greeting"
                )));
            }
            Ok(client)
        }
        Some(Err(e)) => Err(ConnectorError::Transient(format!("{where_}: {e}"))),
        None => Err(ConnectorError::Transient(format!(
            "{where_} closed the connection before its greeting"
        ))),
    }
}

async fn tls_wrap(cfg: &ImapConfig, tcp: TcpStream) -> Result<ImapStream, ConnectorError> {
    let connector = tls_connector(cfg.accept_invalid_certs, cfg.ca_file.as_deref())?;
    let name = rustls::pki_types::ServerName::try_from(cfg.host.clone()).map_err(|_| {
        ConnectorError::Other(format!("{:?} is not a valid TLS server name", cfg.host))
    })?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectorError::Transient(format!("TLS with {}: {e}", cfg.host)))?;
    Ok(ImapStream::Tls(Box::new(tls)))
}

/// A TLS client trusting the Mozilla roots, or only the CA certificates in
/// `ca_file` (a private CA), or accepting any certificate
/// (`accept_invalid_certs`, loopback tests only).
pub fn tls_connector(
    accept_invalid_certs: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<TlsConnector, ConnectorError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::Other(format!("TLS setup: {e}")))?;
    let config = if accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = crate::config::read_ca_file(path).map_err(ConnectorError::Other)?;
                let (_, ignored) = roots.add_parsable_certificates(certs);
                if roots.is_empty() {
                    return Err(ConnectorError::Other(format!(
                        "ca_file {}: none of its {ignored} certificate(s) can be used as a CA",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where a folder's sync stands: the cursor value `uidvalidity:lastuid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderCursor {
    pub uidvalidity: u32,
    pub last_uid: u32,
}

impl FolderCursor {
    pub fn parse(s: &str) -> Option<FolderCursor> {
        let (v, u) = s.split_once(':')?;
        Some(FolderCursor {
            uidvalidity: v.trim().parse().ok()?,
            last_uid: u.trim().parse().ok()?,
        })
    }

    pub fn encode(self) -> String {
        format!("{}:{}", self.uidvalidity, self.last_uid)
    }
}

/// The last UID already read, given the stored cursor and the server's
/// UIDVALIDITY: a changed UIDVALIDITY means the old UIDs mean nothing, so
/// the folder is read again from the start (the store absorbs the
/// duplicates, as `external_id` is the Message-ID, not the UID).
pub fn resume_after(stored: Option<FolderCursor>, server_uidvalidity: u32) -> u32 {
    match stored {
        Some(c) if c.uidvalidity == server_uidvalidity => c.last_uid,
        _ => 0,
    }
}

/// The UIDs to fetch now: those above `last_uid` (a `UID SEARCH n:*`
/// always returns the newest message, even when it is older than n),
/// oldest first, at most `batch`; and whether more are waiting.
pub fn plan_fetch(mut uids: Vec<u32>, last_uid: u32, batch: usize) -> (Vec<u32>, bool) {
    uids.retain(|u| *u > last_uid);
    uids.sort_unstable();
    uids.dedup();
    let more = uids.len() > batch;
    uids.truncate(batch.max(1));
    (uids, more)
}

/// The last UID the cursor may record after reading up to `read`.
///
/// When the search found nothing more, every UID below the UIDNEXT seen at
/// SELECT is read or gone (expunged before we saw it), so the cursor moves
/// up to it. Otherwise a message appended and expunged at once would leave
/// UIDNEXT ahead of the cursor forever, and IDLE, which compares the two,
/// would report a change on every wait.
pub fn settled_uid(read: u32, more: bool, uid_next: Option<u32>) -> u32 {
    match uid_next {
        Some(next) if !more => read.max(next.saturating_sub(1)),
        _ => read,
    }
}

/// What one folder's sync produced.
#[derive(Debug, Default)]
pub struct FolderSync {
    pub batch: Batch,
    pub cursor: Option<String>,
}

/// Reads what is new in `folder` (SELECTed as `wire`, its modified-UTF-7
/// name on the server) since `stored`.
pub async fn sync_folder(
    session: &mut Session,
    folder: &str,
    wire: &str,
    stored: Option<&str>,
    batch_size: usize,
    ctx_template: &ParseContext<'_>,
) -> Result<FolderSync, ConnectorError> {
    let mailbox = session
        .select(wire)
        .await
        .map_err(|e| map_imap_error(&format!("Selecting folder {folder:?}"), e))?;
    let uidvalidity = mailbox.uid_validity.ok_or_else(|| {
        ConnectorError::Other(format!("The server gave folder {folder:?} no UIDVALIDITY"))
    })?;
    let stored = stored.and_then(FolderCursor::parse);
    let last_uid = resume_after(stored, uidvalidity);
    let mut out = FolderSync {
        cursor: Some(
            FolderCursor {
                uidvalidity,
                last_uid,
            }
            .encode(),
        ),
        ..FolderSync::default()
    };
    let settled = |read: u32, more: bool| {
        FolderCursor {
            uidvalidity,
            last_uid: settled_uid(read, more, mailbox.uid_next),
        }
        .encode()
    };
    if mailbox.exists == 0
        || mailbox
            .uid_next
            .is_some_and(|n| n <= last_uid.saturating_add(1))
    {
        out.cursor = Some(settled(last_uid, false));
        return Ok(out);
    }
    let found = session
        .uid_search(format!("UID {}:*", last_uid.saturating_add(1)))
        .await
        .map_err(|e| map_imap_error(&format!("Searching folder {folder:?}"), e))?;
    let (uids, more) = plan_fetch(found.into_iter().collect(), last_uid, batch_size);
    let (Some(first), Some(last)) = (uids.first().copied(), uids.last().copied()) else {
        out.cursor = Some(settled(last_uid, false));
        return Ok(out);
    };
    let fetches: Vec<async_imap::types::Fetch> = session
        .uid_fetch(
            format!("{first}:{last}"),
            "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[])",
        )
        .await
        .map_err(|e| map_imap_error(&format!("Fetching from {folder:?}"), e))?
        .try_collect()
        .await
        .map_err(|e| map_imap_error(&format!("Fetching from {folder:?}"), e))?;
    let mut max_uid = last_uid;
    let mut items: Vec<(u32, &async_imap::types::Fetch)> = fetches
        .iter()
        .filter_map(|f| f.uid.map(|u| (u, f)))
        .filter(|(u, _)| *u > last_uid && *u <= last)
        .collect();
    items.sort_by_key(|(u, _)| *u);
    for (uid, fetch) in items {
        max_uid = max_uid.max(uid);
        let source = format!("{folder} (UIDVALIDITY {uidvalidity}, UID {uid})");
        let Some(raw) = fetch.body() else {
            out.batch.quarantined.push(Quarantined {
                external_id: Some(format!("{folder}/{uidvalidity}/{uid}")),
                source,
                error: "the server returned no body for this message".into(),
                raw: Vec::new(),
            });
            continue;
        };
        let internal_date: Option<DateTime<Utc>> =
            fetch.internal_date().map(|d| d.with_timezone(&Utc));
        let ctx = ParseContext {
            uid: Some(uid),
            internal_date,
            ..ctx_template.clone()
        };
        match parse_mail(raw, &ctx) {
            Ok(m) => out.batch.messages.push(m),
            Err(e) => out.batch.quarantined.push(Quarantined {
                external_id: Some(format!("{folder}/{uidvalidity}/{uid}")),
                source,
                error: e.reason,
                raw: raw.to_vec(),
            }),
        }
    }
    // UIDs the server listed but did not return (expunged in between) are
    // gone: step over them too.
    max_uid = max_uid.max(last);
    out.cursor = Some(settled(max_uid, more));
    out.batch.more = more;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_shown_in_the_servers_words() {
        assert_eq!(
            server_text("code: None, info: Some(\"Mailbox does not exist\")"),
            "Mailbox does not exist"
        );
        assert_eq!(
            server_text("code: Some(TryCreate), info: Some(\"Mailbox \\\"x\\\" does not exist\")"),
            "[TRYCREATE] Mailbox \"x\" does not exist"
        );
        assert_eq!(server_text("something else"), "something else");
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = FolderCursor {
            uidvalidity: 1795434995,
            last_uid: 42,
        };
        assert_eq!(FolderCursor::parse(&c.encode()), Some(c));
        for bad in ["", "42", "a:b", "1:", ":1", "1:2:3"] {
            assert_eq!(FolderCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sync_resumes_only_under_the_same_uidvalidity() {
        let c = |v, u| {
            Some(FolderCursor {
                uidvalidity: v,
                last_uid: u,
            })
        };
        assert_eq!(resume_after(None, 7), 0);
        assert_eq!(resume_after(c(7, 40), 7), 40);
        assert_eq!(resume_after(c(7, 40), 8), 0);
    }

    #[test]
    fn the_cursor_steps_over_uids_that_are_gone() {
        assert_eq!(settled_uid(5, false, Some(8)), 7);
        assert_eq!(settled_uid(5, true, Some(8)), 5);
        assert_eq!(settled_uid(5, false, None), 5);
        assert_eq!(settled_uid(5, false, Some(6)), 5);
        assert_eq!(settled_uid(5, false, Some(1)), 5);
        assert_eq!(settled_uid(0, false, Some(0)), 0);
    }

    #[test]
    fn fetch_plans_skip_what_was_read_and_batch_the_rest() {
        // `UID SEARCH 41:*` answers 40 when 40 is the newest message.
        assert_eq!(plan_fetch(vec![40], 40, 10), (vec![], false));
        assert_eq!(
            plan_fetch(vec![43, 41, 42], 40, 10),
            (vec![41, 42, 43], false)
        );
        assert_eq!(plan_fetch(vec![1, 2, 3, 4, 5], 0, 2), (vec![1, 2], true));
        assert_eq!(plan_fetch(vec![1, 2], 0, 2), (vec![1, 2], false));
        assert_eq!(plan_fetch(vec![], 0, 2), (vec![], false));
    }
}
