//! `hourglass demo`: the daemon on a realistic seller week, on a fresh
//! machine, with nothing to configure.
//!
//! It writes a temp Maildir with Amazon relay mail from several
//! marketplaces and languages and ordinary customer mail (some answered,
//! some close to the deadline, one breached), a temp SQLite store and a
//! config, starts a local webhook capture as the alert sink, runs the real
//! daemon on it, prints the deadline table and every alert the capture
//! receives, and stops on Ctrl-C.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::alerts::sinks::{verify_signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::config::Config;
use crate::daemon::{self, Signal};
use crate::store::{ThreadFilter, ThreadStore};

const SECRET: &str = "demo-webhook-secret";

/// One mail of the demo week.
struct Mail {
    folder: &'static str,
    mailbox: &'static str,
    raw: String,
}

fn rfc2822(t: DateTime<Utc>) -> String {
    t.to_rfc2822()
}

#[allow(clippy::too_many_arguments)] // demo data reads best as one call per mail
fn relay(
    id: &str,
    buyer: &str,
    alias: &str,
    tld: &str,
    subject: &str,
    body: &str,
    seconds_ago: i64,
    now: DateTime<Utc>,
) -> Mail {
    let date = rfc2822(now - chrono::Duration::seconds(seconds_ago));
    Mail {
        folder: "INBOX",
        mailbox: "amazon",
        raw: format!(
            "From: \"{buyer} - Amazon Marketplace\" <{alias}@marketplace.amazon.{tld}>\r\n\
             To: seller@demo-shop.example\r\n\
             Subject: {subject}\r\n\
             Date: {date}\r\n\
             Message-ID: <{id}@email.amazonses.com>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\
             \r\n\
             ------------- Begin message -------------\r\n\
             \r\n\
             {body}\r\n\
             \r\n\
             ------------- End message -------------\r\n\
             \r\n\
             [commMgrTok:{id}]\r\n"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn plain(
    folder: &'static str,
    id: &str,
    from: &str,
    to: &str,
    subject: &str,
    extra_headers: &str,
    body: &str,
    seconds_ago: i64,
    now: DateTime<Utc>,
) -> Mail {
    let date = rfc2822(now - chrono::Duration::seconds(seconds_ago));
    Mail {
        folder,
        mailbox: "shop",
        raw: format!(
            "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\
             Message-ID: <{id}@demo.example>\r\n{extra_headers}MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
        ),
    }
}

/// The seller week. Deadlines are 24 h; thresholds 6 h, 1 h and 15 min.
fn seller_week(now: DateTime<Utc>) -> Vec<Mail> {
    let h = 3600;
    let m = 60;
    let mut mails = vec![
        // Breached: asked 26 h ago, never answered.
        relay(
            "ES26", "Lucía Fernández", "x3k9lucia7", "es",
            "Consulta del cliente de Amazon Lucía Fernández (Pedido: 404-1111111-2222222)",
            "Hola, el paquete llegó abierto y falta una pieza. ¿Pueden enviarla?",
            26 * h, now,
        ),
        // 50 minutes left: the 1 h alert fires at once (late, once).
        relay(
            "DE2310", "Jürgen Weiß", "q7w8e9r0t1y2", "de",
            "Anfrage von Amazon-Kunde Jürgen Weiß (Bestellung: 302-7654321-1234567)",
            "Hallo, die Schuhe sind zu klein. Ich möchte sie gegen Größe 45 umtauschen.",
            23 * h + 10 * m, now,
        ),
        // 1 h 0 min 30 s left: the 6 h alert now, the 1 h alert 30 s later.
        relay(
            "BR2259", "Ana Souza", "a1b2c3d4ana", "com.br",
            "Pergunta do cliente da Amazon Ana Souza (Pedido: 701-2345678-3456789)",
            "Olá! O meu pedido ainda não chegou. Vocês podem verificar a entrega, por favor?",
            23 * h - 30, now,
        ),
        // 19 h left: awaiting, no alert yet.
        relay(
            "FR5", "Chloé Martin", "zz9chloe", "fr",
            "Demande de renseignements de la part du client Amazon Chloé Martin (Commande : 171-9876543-2109876)",
            "Bonjour, puis-je modifier l'adresse de livraison ? Je déménage vendredi.",
            5 * h, now,
        ),
        // Answered from the seller's mail client: the clock stopped.
        relay(
            "UK30", "Emily Clark", "em1lyc", "co.uk",
            "Inquiry from Amazon customer Emily Clark (Order: 203-5555555-4444444)",
            "Hi, does this kettle come with a UK plug?",
            30 * h, now,
        ),
    ];
    mails.push(Mail {
        folder: "Sent",
        mailbox: "amazon",
        raw: format!(
            "From: seller@demo-shop.example\r\nTo: em1lyc@marketplace.amazon.co.uk\r\n\
             Subject: RE: Inquiry from Amazon customer Emily Clark (Order: 203-5555555-4444444)\r\n\
             Date: {}\r\nMessage-ID: <sent-uk30@demo-shop.example>\r\n\
             In-Reply-To: <UK30@email.amazonses.com>\r\nReferences: <UK30@email.amazonses.com>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             Hi Emily, yes: it ships with a UK plug. Best regards\r\n",
            rfc2822(now - chrono::Duration::seconds(28 * h))
        ),
    });
    // Amazon's own notification: a system message, no clock.
    mails.push(Mail {
        folder: "INBOX",
        mailbox: "amazon",
        raw: format!(
            "From: \"Amazon Seller Central\" <seller-notification@amazon.de>\r\n\
             To: seller@demo-shop.example\r\nSubject: Verkauft, jetzt versenden: [302-5555555-6666666] Wanderschuhe\r\n\
             Date: {}\r\nMessage-ID: <notif-1@email.amazonses.com>\r\nPrecedence: bulk\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             Sie haben einen Artikel verkauft. Bitte versenden Sie ihn jetzt.\r\n",
            rfc2822(now - chrono::Duration::seconds(3 * h))
        ),
    });
    // The shop's own mailbox: ordinary customers.
    mails.push(plain(
        "INBOX",
        "ro-20",
        "Ioana Popescu <ioana.popescu@example.ro>",
        "help@demo-shop.example",
        "Comanda 1042 – produs deteriorat",
        "",
        "Bună ziua, am primit vaza spartă. Puteți să îmi trimiteți una nouă? Mulțumesc, Ioana",
        20 * h,
        now,
    ));
    mails.push(plain(
        "INBOX",
        "en-40",
        "Tom Baker <tom@example.com>",
        "help@demo-shop.example",
        "Invoice for order 1038",
        "",
        "Hello, could you send me an invoice with my company name? Thanks, Tom",
        40 * h,
        now,
    ));
    mails.push(plain(
        "Sent",
        "en-40-reply",
        "Demo Shop <help@demo-shop.example>",
        "Tom Baker <tom@example.com>",
        "Re: Invoice for order 1038",
        "In-Reply-To: <en-40@demo.example>\r\nReferences: <en-40@demo.example>\r\n",
        "Hi Tom, the invoice is attached. Kind regards",
        39 * h,
        now,
    ));
    mails.push(plain(
        "INBOX",
        "pt-2",
        "Marta Ribeiro <marta@example.pt>",
        "help@demo-shop.example",
        "Devolução",
        "",
        "Boa tarde, gostaria de devolver o casaco. Qual é o procedimento?",
        2 * h,
        now,
    ));
    mails
}

fn write_week(root: &Path, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let mails = seller_week(now);
    for m in &mails {
        let base = root.join(m.mailbox);
        let dir = if m.folder == "INBOX" {
            base
        } else {
            base.join(format!(".{}", m.folder))
        };
        hourglass_email::maildir::deliver(&dir, m.raw.as_bytes())
            .with_context(|| format!("Cannot write the demo Maildir under {}", dir.display()))?;
    }
    // The Sent folders exist even when empty, so replies have a home.
    for mailbox in ["amazon", "shop"] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(mailbox).join(".Sent").join(sub))?;
        }
    }
    Ok(mails.len())
}

/// The demo's configuration: `config/demo.toml` with its placeholders
/// filled in.
fn demo_config(dir: &Path, capture: &str, listen: &str) -> String {
    include_str!("../config/demo.toml")
        .replace("@DIR@", &dir.display().to_string())
        .replace("@CAPTURE@", capture)
        .replace("@LISTEN@", listen)
}

/// Where the demo's HTTP server listens: 127.0.0.1:8080 when free, else
/// a free port.
fn demo_listen() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:8080")
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .context("Cannot find a free port for the demo's HTTP server")?;
    Ok(listener.local_addr()?)
}

/// Starts the local alert capture; returns its URL and a stream of what it
/// receives (already checked against the HMAC signature).
async fn start_capture() -> anyhow::Result<(String, mpsc::Receiver<(bool, serde_json::Value)>)> {
    let (tx, rx) = mpsc::channel(64);
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                // What a receiver should do: a recent timestamp, and the
                // signature over it and the body, compared in constant time.
                let signed = verify_signature(
                    SECRET.as_bytes(),
                    &header(TIMESTAMP_HEADER),
                    &header(SIGNATURE_HEADER),
                    &body,
                    Utc::now().timestamp(),
                    300,
                );
                let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let _ = tx.send((signed, value)).await;
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/alerts"), rx))
}

/// Runs the demo until Ctrl-C, or for `duration` when given.
pub async fn run(duration: Option<Duration>, keep: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("hourglass-demo-")
        .tempdir()?;
    // Listen for Ctrl-C from the start: a SIGINT while the demo sets up
    // stops it cleanly too (and removes its temp directory).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let now = Utc::now();
    let count = write_week(&dir.path().join("mail"), now)?;
    let (capture_url, mut captured) = start_capture().await?;
    let config_path = dir.path().join("hourglass.toml");
    let listen = demo_listen()?;
    std::fs::write(
        &config_path,
        demo_config(dir.path(), &capture_url, &listen.to_string()),
    )?;
    // The sink's secret goes by reference, as in production.
    std::fs::write(dir.path().join("webhook-secret"), SECRET)?;
    // So does the demo's API token: a fresh one per run.
    let token = format!("demo-{:016x}", rand::random::<u64>());
    std::fs::write(dir.path().join("demo-token"), &token)?;
    let config = Config::load(&config_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    crate::telemetry::init(config.log.format, &config.log.level);

    println!("hourglass demo");
    println!("  store    {}/hourglass.db (SQLite)", dir.path().display());
    println!(
        "  mail     {count} messages in {}/mail (Amazon relay mailbox + shop mailbox)",
        dir.path().display()
    );
    println!("  alerts   webhook capture at {capture_url} (HMAC-signed)");
    println!("  inbox    http://{listen}/  (sign in with the token {token})");
    println!("  api      curl -H 'Authorization: Bearer {token}' http://{listen}/api/v1/threads");
    println!("  config   {}", config_path.display());
    println!("Press Ctrl-C to stop.\n");

    let store = daemon::open_store(&config).await?;
    let (tx, rx) = mpsc::channel(4);
    let daemon_config = config.clone();
    let path = config_path.clone();
    let daemon =
        tokio::spawn(async move { daemon::run(path, daemon_config, rx, &crate::workers()).await });

    // The deadline table once the first poll is in.
    for _ in 0..100 {
        if store
            .threads(&ThreadFilter::default(), Utc::now())
            .await?
            .len()
            >= 7
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let threads =
        crate::view::threads(store.as_ref(), &ThreadFilter::default(), Utc::now()).await?;
    println!("Deadlines:");
    print!("{}", crate::view::text::threads(&threads));
    println!("\nAlerts as they reach the capture (Ana Souza's 1h alert follows about 30 s in):");

    // Ctrl-C stops it, also before `--for` is over.
    let stop = async {
        let limit = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = limit => {}
            _ = interrupt.recv() => {}
        }
    };
    tokio::pin!(stop);
    let mut received = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            got = captured.recv() => {
                let Some((signed, alert)) = got else { break };
                received += 1;
                let rendered = crate::alerts::engine::render(&alert, Utc::now());
                println!(
                    "  {} [{}] {}",
                    Utc::now().format("%H:%M:%S"),
                    if signed { "signature ok" } else { "BAD SIGNATURE" },
                    rendered.text.replace('\n', " | ")
                );
            }
        }
    }
    let _ = tx.send(Signal::Shutdown).await;
    daemon.await.context("The daemon task failed")??;
    println!("\nStopped. {received} alerts delivered to the capture.");
    if keep {
        let kept = dir.keep();
        println!("Kept the demo files in {}", kept.display());
    }
    Ok(())
}
