//! `ca_file`: a mail server whose certificate comes from a private CA is
//! reached by naming that CA, and refused without it (no
//! `accept_invalid_certs` needed). Real servers: Dovecot (IMAPS and
//! STARTTLS) and aiosmtpd (SMTPS), with certificates from a CA made fresh
//! by the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hourglass_connector::secret::SecretRef;
use hourglass_connector::{Connector, Cursors};
use hourglass_email::{EmailConnector, ImapAuth, ImapConfig, SmtpConfig, SmtpSender, TlsMode};
use hourglass_testsupport::dovecot::{make_certificates, Dovecot, DovecotOptions};
use hourglass_testsupport::net::{free_port, wait_for_port};
use hourglass_testsupport::pids::PidFile;

const MAIL: &[u8] = b"From: Ana <ana@example.com>\r\nTo: shop@example.com\r\n\
Subject: Where is my parcel?\r\nMessage-ID: <ca-file-1@example.com>\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nHello, where is it?\r\n";

fn imap(d: &Dovecot, dir: &tempfile::TempDir) -> ImapConfig {
    let password = dir.path().join("password");
    std::fs::write(&password, d.password()).unwrap();
    ImapConfig {
        host: "localhost".to_owned(),
        port: d.imaps_port().unwrap(),
        tls: TlsMode::Implicit,
        username: d.user().to_owned(),
        password: Some(SecretRef::File(password.display().to_string())),
        auth: ImapAuth::Login,
        folders: vec!["INBOX".to_owned()],
        sent_folder: None,
        idle: false,
        fetch_batch: 100,
        ca_file: None,
        accept_invalid_certs: false,
    }
}

/// A second, unrelated private CA.
fn other_ca() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path()).unwrap();
    let ca = dir.path().join("ca.pem");
    (dir, ca)
}

#[tokio::test]
async fn imap_with_the_private_ca_reads_the_mailbox_and_without_it_is_refused() {
    let d = Dovecot::start_with(DovecotOptions {
        tls: true,
        ..DovecotOptions::default()
    })
    .unwrap();
    d.append("INBOX", MAIL).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut implicit = imap(&d, &dir);
    implicit.ca_file = d.ca_file();
    let conn = EmailConnector::new("private-ca", implicit.clone(), None).unwrap();
    conn.health_check()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let batch = conn
        .poll(&Cursors::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(batch.messages.len(), 1);

    let mut starttls = implicit.clone();
    starttls.tls = TlsMode::Starttls;
    starttls.port = d.port();
    let conn = EmailConnector::new("private-ca-starttls", starttls, None).unwrap();
    let batch = conn
        .poll(&Cursors::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(batch.messages.len(), 1);

    // Without ca_file the public roots do not know the CA.
    let mut public_roots = implicit.clone();
    public_roots.ca_file = None;
    let conn = EmailConnector::new("public-roots", public_roots, None).unwrap();
    let err = conn.health_check().await.unwrap_err();
    assert_ne!(err.kind(), "auth", "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");

    // Another CA is no better: ca_file replaces the roots, it does not
    // widen them.
    let (_other_dir, other) = other_ca();
    let mut wrong = implicit;
    wrong.ca_file = Some(other);
    let conn = EmailConnector::new("wrong-ca", wrong, None).unwrap();
    let err = conn.health_check().await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn a_ca_file_that_is_not_a_certificate_says_so() {
    let d = Dovecot::start_with(DovecotOptions {
        tls: true,
        ..DovecotOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("not-a-ca.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let mut cfg = imap(&d, &dir);
    cfg.ca_file = Some(garbage.clone());
    let conn = EmailConnector::new("garbage", cfg, None).unwrap();
    let err = conn.health_check().await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains(&garbage.display().to_string()), "{shown}");
    assert!(shown.contains("no certificate"), "{shown}");
}

/// aiosmtpd speaking implicit TLS (SMTPS) with a certificate of `ca_dir`'s
/// CA, delivering into a Maildir.
struct Smtps {
    _dir: tempfile::TempDir,
    port: u16,
    maildir: PathBuf,
    child: Child,
    _pid: PidFile,
}

const SMTPS_PY: &str = r#"
import sys, ssl, threading
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
port, maildir, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, ssl_context=ctx).start()
threading.Event().wait()
"#;

impl Smtps {
    fn start(ca_dir: &Path) -> Smtps {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let maildir = dir.path().join("maildir");
        let log = std::fs::File::create(dir.path().join("aiosmtpd.log")).unwrap();
        let child = Command::new("python3")
            .args(["-c", SMTPS_PY])
            .arg(port.to_string())
            .arg(&maildir)
            .arg(ca_dir.join("cert.pem"))
            .arg(ca_dir.join("key.pem"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        let pid = PidFile::record(child.id(), "aiosmtpd smtps (ca_file test)");
        wait_for_port(port, Duration::from_secs(20)).unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(dir.path().join("aiosmtpd.log")).unwrap_or_default()
            )
        });
        Smtps {
            _dir: dir,
            port,
            maildir,
            child,
            _pid: pid,
        }
    }

    fn delivered(&self) -> usize {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Smtps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn smtp_with_the_private_ca_sends_and_without_it_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path()).unwrap();
    let server = Smtps::start(certs.path());
    let config = SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: server.port,
        tls: TlsMode::Implicit,
        username: None,
        password: None,
        from: "shop@example.com".to_owned(),
        ca_file: Some(certs.path().join("ca.pem")),
    };

    let sender = SmtpSender::new(config.clone()).unwrap();
    sender.check().await.unwrap();
    let message = lettre::Message::builder()
        .from("shop@example.com".parse().unwrap())
        .to("ana@example.com".parse().unwrap())
        .subject("Re: Where is my parcel?")
        .body("It left today.".to_owned())
        .unwrap();
    sender.send(message.clone()).await.unwrap();
    assert_eq!(server.delivered(), 1);

    let mut public_roots = config.clone();
    public_roots.ca_file = None;
    let sender = SmtpSender::new(public_roots).unwrap();
    let err = sender.send(message.clone()).await.unwrap_err();
    assert_ne!(err.kind(), "auth", "{err}");

    let (_other_dir, other) = other_ca();
    let mut wrong = config;
    wrong.ca_file = Some(other);
    let sender = SmtpSender::new(wrong).unwrap();
    assert!(sender.send(message).await.is_err());
    assert_eq!(server.delivered(), 1, "nothing left without a trusted TLS");
}
