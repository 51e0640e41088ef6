//! TLS (implicit and STARTTLS) and XOAUTH2 against a real Dovecot.

use hourglass_connector::secret::SecretRef;
use hourglass_connector::{Connector, Cursors};
use hourglass_email::{EmailConnector, ImapAuth, ImapConfig, TlsMode};
use hourglass_testsupport::dovecot::{Dovecot, DovecotOptions, TokenInfo};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn secret_file(dir: &tempfile::TempDir, value: &str) -> SecretRef {
    let path = dir.path().join("secret");
    std::fs::write(&path, value).unwrap();
    SecretRef::File(path.display().to_string())
}

fn config(d: &Dovecot, password: SecretRef) -> ImapConfig {
    ImapConfig {
        host: "localhost".to_owned(),
        port: d.port(),
        tls: TlsMode::None,
        username: d.user().to_owned(),
        password: Some(password),
        auth: ImapAuth::Login,
        folders: vec!["INBOX".to_owned()],
        sent_folder: None,
        idle: false,
        fetch_batch: 200,
        ca_file: None,
        accept_invalid_certs: false,
    }
}

#[tokio::test]
async fn implicit_tls_and_starttls_read_the_mailbox() {
    let d = Dovecot::start_with(DovecotOptions {
        tls: true,
        ..DovecotOptions::default()
    })
    .unwrap();
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut implicit = config(&d, secret_file(&dir, d.password()));
    implicit.tls = TlsMode::Implicit;
    implicit.port = d.imaps_port().unwrap();
    implicit.accept_invalid_certs = true;
    let conn = EmailConnector::new("tls", implicit.clone(), None).unwrap();
    let b = conn
        .poll(&Cursors::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(b.messages.len(), 1);

    let mut starttls = implicit.clone();
    starttls.tls = TlsMode::Starttls;
    starttls.port = d.port();
    let conn = EmailConnector::new("starttls", starttls, None).unwrap();
    let b = conn
        .poll(&Cursors::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(b.messages.len(), 1);

    // A self-signed certificate is refused unless the config says
    // otherwise: not an auth problem, and not silently accepted.
    let mut strict = implicit;
    strict.accept_invalid_certs = false;
    let conn = EmailConnector::new("strict", strict, None).unwrap();
    let err = conn.poll(&Cursors::new()).await.unwrap_err();
    assert_ne!(err.kind(), "auth", "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn xoauth2_logs_in_with_a_bearer_token_and_a_bad_token_is_an_auth_error() {
    let tokeninfo = TokenInfo::start("ya29.good-token", "alice").unwrap();
    let d = Dovecot::start_with(DovecotOptions {
        oauth2_tokeninfo_url: Some(tokeninfo.url()),
        ..DovecotOptions::default()
    })
    .unwrap();
    d.append("INBOX", &fixture("ro_utf8_qp.eml")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut cfg = config(&d, secret_file(&dir, "ya29.good-token"));
    cfg.auth = ImapAuth::Xoauth2;
    let conn = EmailConnector::new("oauth", cfg.clone(), None).unwrap();
    let b = conn
        .poll(&Cursors::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(b.messages.len(), 1);

    let bad_dir = tempfile::tempdir().unwrap();
    cfg.password = Some(secret_file(&bad_dir, "ya29.expired-token"));
    let conn = EmailConnector::new("oauth", cfg, None).unwrap();
    let err = conn.poll(&Cursors::new()).await.unwrap_err();
    assert_eq!(err.kind(), "auth", "{err}\n{}", d.logs());
    assert!(!err.to_string().contains("expired-token"), "{err}");
}
