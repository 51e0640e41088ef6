//! Replies over SMTP with TLS against a real TLS server: aiosmtpd with a
//! certificate for `localhost` from a CA made for the test, implicit TLS
//! (SMTPS) and STARTTLS (required by the server before MAIL).

use std::time::Duration;

use hourglass_email::{SmtpConfig, SmtpSender, TlsMode};
use hourglass_testsupport::smtp::{SinkTls, SmtpSink};

fn message(subject: &str) -> lettre::Message {
    lettre::Message::builder()
        .from("seller@shop.example".parse().unwrap())
        .to("buyer@example.com".parse().unwrap())
        .subject(subject)
        .body("Bonjour, le colis part aujourd'hui.".to_owned())
        .unwrap()
}

async fn over_tls(mode: SinkTls, tls: TlsMode) {
    let sink = SmtpSink::start_tls(mode).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, sink.ca_pem().unwrap()).unwrap();
    let config = SmtpConfig {
        host: "localhost".to_owned(),
        port: sink.port(),
        tls,
        username: None,
        password: None,
        from: "seller@shop.example".to_owned(),
        ca_file: Some(ca_file),
    };
    let sender = SmtpSender::new(config.clone()).unwrap();
    sender
        .check()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.logs()));
    sender
        .send(message("Re: commande 171-9876543-2109876"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.logs()));
    let got = sink.wait_for(1, Duration::from_secs(10)).unwrap();
    let mail = String::from_utf8_lossy(&got[0]).into_owned();
    assert!(mail.contains("Re: commande 171-9876543-2109876"), "{mail}");

    // A certificate nobody vouches for is refused: a TLS error, not an
    // authentication problem, and nothing is delivered.
    let strict = SmtpSender::new(SmtpConfig {
        ca_file: None,
        ..config
    })
    .unwrap();
    let err = strict.send(message("never")).await.unwrap_err();
    assert_ne!(err.kind(), "auth", "{err}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{err}"
    );
    assert_eq!(sink.messages().unwrap().len(), 1);
}

#[tokio::test]
async fn a_reply_goes_out_over_implicit_tls_with_a_verified_certificate() {
    over_tls(SinkTls::Implicit, TlsMode::Implicit).await;
}

#[tokio::test]
async fn a_reply_goes_out_over_starttls_with_a_verified_certificate() {
    over_tls(SinkTls::Starttls, TlsMode::Starttls).await;
}
