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
use hourglass_connector::{Batch, ConnectorError, Direction, Message, Quarantined};
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

/// Where a folder's sync stands: the cursor value `uidvalidity:lastuid`,
/// with `:highestmodseq` where the server has CONDSTORE (RFC 7162).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderCursor {
    pub uidvalidity: u32,
    pub last_uid: u32,
    pub modseq: Option<u64>,
}

impl FolderCursor {
    pub fn parse(s: &str) -> Option<FolderCursor> {
        let mut parts = s.split(':');
        let uidvalidity = parts.next()?.trim().parse().ok()?;
        let last_uid = parts.next()?.trim().parse().ok()?;
        let modseq = match parts.next() {
            Some(m) => Some(m.trim().parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(FolderCursor {
            uidvalidity,
            last_uid,
            modseq,
        })
    }

    pub fn encode(self) -> String {
        match self.modseq {
            Some(m) => format!("{}:{}:{m}", self.uidvalidity, self.last_uid),
            None => format!("{}:{}", self.uidvalidity, self.last_uid),
        }
    }
}

/// What the server offers for seeing changes to mail already read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeTracking {
    /// Neither: flag changes and expunges go unseen.
    None,
    /// CONDSTORE: flag changes since a MODSEQ (`CHANGEDSINCE`).
    Condstore,
    /// QRESYNC, enabled: flag changes and the UIDs expunged since
    /// (`VANISHED`).
    Qresync,
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
/// name on the server) since `stored`; with CONDSTORE, also the flag
/// changes and (QRESYNC) expunges of mail read before.
pub async fn sync_folder(
    session: &mut Session,
    folder: &str,
    wire: &str,
    stored: Option<&str>,
    batch_size: usize,
    tracking: ChangeTracking,
    ctx_template: &ParseContext<'_>,
) -> Result<FolderSync, ConnectorError> {
    let selected = match tracking {
        ChangeTracking::None => session.select(wire).await,
        _ => session.select_condstore(wire).await,
    };
    let mailbox =
        selected.map_err(|e| map_imap_error(&format!("Selecting folder {folder:?}"), e))?;
    let uidvalidity = mailbox.uid_validity.ok_or_else(|| {
        ConnectorError::Other(format!("The server gave folder {folder:?} no UIDVALIDITY"))
    })?;
    let stored = stored.and_then(FolderCursor::parse);
    let last_uid = resume_after(stored, uidvalidity);
    // HIGHESTMODSEQ as SELECT saw it: a change after it is seen next time.
    let modseq = match tracking {
        ChangeTracking::None => None,
        _ => mailbox.highest_modseq,
    };
    let cursor = |last_uid: u32| {
        FolderCursor {
            uidvalidity,
            last_uid,
            modseq,
        }
        .encode()
    };
    let mut out = FolderSync {
        cursor: Some(cursor(last_uid)),
        ..FolderSync::default()
    };
    let since = stored
        .filter(|c| c.uidvalidity == uidvalidity)
        .and_then(|c| c.modseq);
    if let (Some(since), Some(now)) = (since, modseq) {
        if now > since && last_uid > 0 {
            read_changes(
                session,
                folder,
                last_uid,
                since,
                tracking,
                ctx_template,
                &mut out,
            )
            .await?;
        }
    }
    let settled = |read: u32, more: bool| cursor(settled_uid(read, more, mailbox.uid_next));
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
            "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])",
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
        read_one(
            folder,
            uidvalidity,
            uid,
            fetch,
            ctx_template,
            &mut out.batch,
        );
    }
    // UIDs the server listed but did not return (expunged in between) are
    // gone: step over them too.
    max_uid = max_uid.max(last);
    out.cursor = Some(settled(max_uid, more));
    out.batch.more |= more;
    Ok(out)
}

/// Parses one fetched message into `batch` (or its quarantine); a
/// customer's message the server flags `\Answered` brings its hint.
fn read_one(
    folder: &str,
    uidvalidity: u32,
    uid: u32,
    fetch: &async_imap::types::Fetch,
    ctx_template: &ParseContext<'_>,
    batch: &mut Batch,
) {
    let source = || format!("{folder} (UIDVALIDITY {uidvalidity}, UID {uid})");
    let Some(raw) = fetch.body() else {
        batch.quarantined.push(Quarantined {
            external_id: Some(format!("{folder}/{uidvalidity}/{uid}")),
            source: source(),
            error: "the server returned no body for this message".into(),
            raw: Vec::new(),
        });
        return;
    };
    let internal_date: Option<DateTime<Utc>> = fetch.internal_date().map(|d| d.with_timezone(&Utc));
    let ctx = ParseContext {
        uid: Some(uid),
        internal_date,
        ..ctx_template.clone()
    };
    match parse_mail(raw, &ctx) {
        Ok(m) => {
            if has_flag(fetch, "\\Answered") {
                if let Some(hint) = answered_hint(&m, &ctx) {
                    batch.messages.push(hint);
                }
            }
            batch.messages.push(m);
        }
        Err(e) => batch.quarantined.push(Quarantined {
            external_id: Some(format!("{folder}/{uidvalidity}/{uid}")),
            source: source(),
            error: e.reason,
            raw: raw.to_vec(),
        }),
    }
}

fn has_flag(fetch: &async_imap::types::Fetch, flag: &str) -> bool {
    use async_imap::types::Flag;
    fetch.flags().any(|f| match (&f, flag) {
        (Flag::Answered, "\\Answered") | (Flag::Deleted, "\\Deleted") => true,
        (Flag::Custom(c), _) => c.eq_ignore_ascii_case(flag),
        _ => false,
    })
}

/// The flag changes (and, with QRESYNC, the expunges) since `since` among
/// the messages up to `last_uid`, read before. A customer's message that
/// another mail client flagged `\Answered` brings a hint that stops its
/// clock; deletions are reported in the log, and hourglass keeps its copy.
#[allow(clippy::too_many_arguments)]
async fn read_changes(
    session: &mut Session,
    folder: &str,
    last_uid: u32,
    since: u64,
    tracking: ChangeTracking,
    ctx_template: &ParseContext<'_>,
    out: &mut FolderSync,
) -> Result<(), ConnectorError> {
    let context = format!("Reading flag changes in {folder:?}");
    // Old unsolicited responses are not this command's.
    while session.unsolicited_responses.try_recv().is_ok() {}
    let vanished = if tracking == ChangeTracking::Qresync {
        " VANISHED"
    } else {
        ""
    };
    let changed: Vec<async_imap::types::Fetch> = session
        .uid_fetch(
            format!("1:{last_uid}"),
            format!("(UID FLAGS) (CHANGEDSINCE {since}{vanished})"),
        )
        .await
        .map_err(|e| map_imap_error(&context, e))?
        .try_collect()
        .await
        .map_err(|e| map_imap_error(&context, e))?;
    let mut gone: Vec<u32> = Vec::new();
    while let Ok(r) = session.unsolicited_responses.try_recv() {
        if let async_imap::types::UnsolicitedResponse::Other(data) = r {
            if let Response::Vanished { uids, .. } = data.parsed() {
                gone.extend(uids.iter().flat_map(|r| r.clone()));
            }
        }
    }
    gone.extend(
        changed
            .iter()
            .filter(|f| has_flag(f, "\\Deleted"))
            .filter_map(|f| f.uid),
    );
    if !gone.is_empty() {
        gone.sort_unstable();
        gone.dedup();
        tracing::info!(folder = %folder, uids = ?gone, "Messages deleted on the server since the last poll; hourglass keeps its copies.");
    }
    if ctx_template.is_sent_folder {
        return Ok(());
    }
    let answered: Vec<u32> = changed
        .iter()
        .filter(|f| has_flag(f, "\\Answered") && !has_flag(f, "\\Deleted"))
        .filter_map(|f| f.uid)
        .filter(|u| *u <= last_uid)
        .collect();
    if answered.is_empty() {
        return Ok(());
    }
    let set = answered
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let fetches: Vec<async_imap::types::Fetch> = session
        .uid_fetch(set, "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        .await
        .map_err(|e| map_imap_error(&context, e))?
        .try_collect()
        .await
        .map_err(|e| map_imap_error(&context, e))?;
    for fetch in &fetches {
        let Some(uid) = fetch.uid else { continue };
        let Some(raw) = fetch.body() else { continue };
        let ctx = ParseContext {
            uid: Some(uid),
            internal_date: fetch.internal_date().map(|d| d.with_timezone(&Utc)),
            ..ctx_template.clone()
        };
        // Read before: a mail that cannot be parsed was quarantined then.
        if let Ok(m) = parse_mail(raw, &ctx) {
            out.batch.messages.extend(answered_hint(&m, &ctx));
        }
    }
    Ok(())
}

/// What another mail client's `\Answered` on a customer's message says:
/// the seller replied outside hourglass. An outbound message in the same
/// thread, a second after the one it answers (so later messages of the
/// customer still wait), with a stable id so it is stored once.
pub fn answered_hint(m: &Message, ctx: &ParseContext<'_>) -> Option<Message> {
    if m.direction != Direction::Inbound || m.automatic {
        return None;
    }
    let mut hint = Message::new(
        format!("{}#answered", m.external_id),
        m.thread_key.clone(),
        Direction::Outbound,
        m.sent_at + chrono::Duration::seconds(1),
        "Answered outside hourglass: the mailbox marks the customer's message as answered (\\Answered), as a mail client does after a reply.",
    );
    hint.customer = m.customer.clone();
    hint.subject = m.subject.clone();
    hint.order_id = m.order_id.clone();
    hint.marketplace = m.marketplace.clone();
    // Shaped like a reply found in the sent folder (from the seller, to
    // the customer), so that a platform on top threads it the same way.
    let customer_addr = m.meta.get("from").cloned().unwrap_or_default();
    hint.meta = serde_json::json!({
        "hint": "answered",
        "answers": m.external_id,
        "folder": ctx.folder,
        "uid": ctx.uid,
        "from": ctx.own_addresses.first(),
        "to": [customer_addr],
        "subject": m.meta.get("subject").cloned().unwrap_or_default(),
        "message_id": serde_json::Value::Null,
        "thread_root": m.meta.get("thread_root").cloned().unwrap_or_default(),
    });
    Some(hint)
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
        let mut c = FolderCursor {
            uidvalidity: 1795434995,
            last_uid: 42,
            modseq: None,
        };
        assert_eq!(c.encode(), "1795434995:42");
        assert_eq!(FolderCursor::parse(&c.encode()), Some(c));
        c.modseq = Some(9_000_000_001);
        assert_eq!(c.encode(), "1795434995:42:9000000001");
        assert_eq!(FolderCursor::parse(&c.encode()), Some(c));
        for bad in ["", "42", "a:b", "1:", ":1", "1:2:x", "1:2:3:4", "1:2:"] {
            assert_eq!(FolderCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sync_resumes_only_under_the_same_uidvalidity() {
        let c = |v, u| {
            Some(FolderCursor {
                uidvalidity: v,
                last_uid: u,
                modseq: None,
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
