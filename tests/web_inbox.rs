//! The web inbox in a real browser: the real daemon with an `[http]`
//! section, Amazon buyer mail in a Maildir, replies through a real SMTP
//! server (aiosmtpd, the platform's side here), a deadline alert to a local
//! webhook, and Debian's chromium driven by Playwright
//! (`tests/browser/inbox.py`). Screenshots land in
//! `target/browser-artifacts/`.

mod common;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{deliver_mail, wait_until, TestApp, WebhookReceiver};
use hourglass_testsupport::mockplatform::MockPlatform;
use hourglass_testsupport::net::{free_port, wait_for_port};
use hourglass_testsupport::smtp::SmtpSink;

const TOKEN: &str = "ana-web-token-0123456789abcdef";
const REPLY: &str = "Hallo Ana, Ihr Paket ist heute rausgegangen.";

/// Buyers and how long ago each wrote (the window is 24 h): one breached,
/// one due in 30 minutes (its 1 h alert fires), the rest later.
const BUYERS: &[(&str, &str, i64)] = &[
    ("Jürgen Weiß", "q7w8e9r0", 24 * 3600 + 300),
    ("Ana Souza", "a1b2c3d4", 23 * 3600 + 1800),
    ("Chloé Martin", "c5d6e7f8", 20 * 3600),
    ("Emily Clark", "e9f0a1b2", 2 * 3600),
    ("Luca Rossi", "l3m4n5o6", 3600),
    // Jürgen again, about another order: a second thread of one customer.
    ("Jürgen Weiß", "q7w8e9r0", 10 * 3600),
];

fn buyer_mail(i: usize, name: &str, alias: &str, seconds_ago: i64) -> String {
    let date = (chrono::Utc::now() - chrono::Duration::seconds(seconds_ago)).to_rfc2822();
    format!(
        "From: \"{name} - Amazon Marketplace\" <{alias}@marketplace.amazon.de>\r\n\
         To: seller@shop.example\r\n\
         Subject: Anfrage von Amazon-Kunde {name} (Bestellung: 302-765432{i}-123456{i})\r\n\
         Date: {date}\r\n\
         Message-ID: <web-{i}@email.amazonses.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         ------------- Begin message -------------\r\n\r\n\
         Hallo, wo bleibt meine Bestellung? ({name})\r\n\r\n\
         ------------- End message -------------\r\n"
    )
}

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("browser-artifacts")
}

/// Fails (never skips) when the browser or Playwright is missing.
fn require_browser() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium: apt-get install --no-install-recommends chromium"
    );
    let ok = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the browser test needs Playwright for Python: pip install playwright"
    );
}

#[test]
fn an_agent_signs_in_answers_the_alerted_thread_and_sees_the_list_change() {
    require_browser();
    let smtp = SmtpSink::start().unwrap();
    let hooks = WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    for (i, (name, alias, ago)) in BUYERS.iter().enumerate() {
        deliver_mail(&mail, &buyer_mail(i, name, alias, *ago));
    }
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }
    // Jürgen also e-mailed the shop about his late order: the same
    // customer on another channel, linked by the order id.
    let support = dir.path().join("support");
    deliver_mail(
        &support,
        &format!(
            "From: =?utf-8?q?J=C3=BCrgen_Wei=C3=9F?= <juergen@example.de>\r\n\
             To: help@shop.example\r\nSubject: Bestellung 302-7654320-1234560\r\n\
             Date: {}\r\nMessage-ID: <juergen-mail-1@example.de>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n\
             Ich habe auch auf Amazon geschrieben. Wo ist das Paket?\r\n",
            (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc2822()
        ),
    );
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("shipped.txt"),
        "Hallo {{ customer }}, Ihre Bestellung {{ order_id }} ist unterwegs.",
    )
    .unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[clock]
window = "24h"
thresholds = ["1h"]

[daemon]
shutdown_timeout = "3s"

[outbox]
poll_interval = "100ms"

[templates]
dir = "{templates}"

[http]
listen = "127.0.0.1:{port}"
public_url = "{base}"

[[http.tokens]]
name = "ana"
secret = "env:HG_TOKEN_ANA"
role = "agent"

[[instances]]
name = "amazon-de"
type = "amazon"
schedule = "* * * * * *"
[instances.maildir]
path = "{mail}"
own_addresses = ["seller@shop.example"]
[instances.smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "seller@shop.example"

[[instances]]
name = "support"
type = "maildir"
schedule = "* * * * * *"
[instances.maildir]
path = "{support}"
own_addresses = ["help@shop.example"]

[[alerts.sinks]]
name = "agents"
type = "webhook"
url = "{hook}"
format = "json"
"#,
            templates = templates.display(),
            mail = mail.display(),
            support = support.display(),
            smtp_port = smtp.port(),
            hook = hooks.url("/agents"),
        ),
    );
    app.env.push(("HG_TOKEN_ANA".into(), TOKEN.into()));

    let mut daemon = app.spawn_daemon();
    wait_for_port(port, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));

    // The 1 h alert of the thread due in 30 minutes links into the inbox.
    let alert = || {
        hooks
            .received()
            .into_iter()
            .map(|r| r.json())
            .find(|a| a["customer"] == "Ana Souza")
    };
    wait_until(Duration::from_secs(30), || alert().is_some())
        .unwrap_or_else(|_| panic!("no alert for Ana; log:\n{}", daemon.log()));
    let alert = alert().unwrap();
    let link = alert["link"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("{base}/threads/")), "{alert}");

    let threads = app.json(&["threads", "--json"]);
    let id_of = |customer: &str| {
        threads
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["customer"] == customer)
            .unwrap_or_else(|| panic!("no thread of {customer}: {threads}"))["id"]
            .as_i64()
            .unwrap()
    };
    let id_of_order = |order: &str| {
        threads
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["order_id"] == order)
            .unwrap_or_else(|| panic!("no thread of order {order}: {threads}"))["id"]
            .as_i64()
            .unwrap()
    };
    let linked_email_id = threads
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["channel"] == "email")
        .unwrap_or_else(|| panic!("no e-mail thread: {threads}"))["id"]
        .as_i64()
        .unwrap();
    let expect = serde_json::json!({
        "order": ["Jürgen Weiß", "Ana Souza", "Chloé Martin", "Jürgen Weiß", "Emily Clark", "Luca Rossi", "Jürgen Weiß"],
        "breached": "Jürgen Weiß",
        "breached_id": id_of_order("302-7654320-1234560"),
        "related_order": "302-7654325-1234565",
        "related_id": id_of_order("302-7654325-1234565"),
        "linked_email_id": linked_email_id,
        "alerted": "Ana Souza",
        "alerted_order": "302-7654321-1234561",
        "template": "shipped",
        "template_contains": "Hallo Ana Souza, Ihre Bestellung 302-7654321-1234561 ist unterwegs.",
        "reply_text": REPLY,
        "mark": "Luca Rossi",
        "alerted_id": id_of("Ana Souza"),
        "mark_id": id_of("Luca Rossi"),
    });

    let out = run_browser(&base, &link, &expect);
    assert!(
        out.0,
        "the browser test failed:\n{}\ndaemon log:\n{}",
        out.1,
        daemon.log()
    );

    // The reply reached the platform's side exactly once, as written.
    let received = smtp.wait_for(1, Duration::from_secs(10)).unwrap();
    assert_eq!(received.len(), 1, "one reply, sent once");
    let raw = String::from_utf8_lossy(&received[0]).into_owned();
    assert!(raw.contains("a1b2c3d4@marketplace.amazon.de"), "{raw}");
    let ana = app.json(&["show", &id_of("Ana Souza").to_string(), "--json"]);
    assert_eq!(ana["status"], "answered", "{ana}");
    assert_eq!(ana["outbox"].as_array().unwrap().len(), 1, "{ana}");
    assert_eq!(ana["outbox"][0]["text"], REPLY, "{ana}");
    let luca = app.json(&["show", &id_of("Luca Rossi").to_string(), "--json"]);
    assert_eq!(luca["status"], "no_response_needed", "{luca}");

    daemon.stop_cleanly();
    assert!(
        !daemon.log().contains(TOKEN),
        "the log shows the token:\n{}",
        daemon.log()
    );
}

/// Runs the Playwright script; returns (passed, its output).
fn run_browser(base: &str, link: &str, expect: &serde_json::Value) -> (bool, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/inbox.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .env("HG_URL", base)
        .env("HG_TOKEN", TOKEN)
        .env("HG_ALERT_LINK", link)
        .env("HG_EXPECT", expect.to_string())
        .env("HG_ARTIFACTS", artifacts())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!(
        "{}{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
        if status.is_none() {
            "\n(killed after 240 s)"
        } else {
            ""
        }
    );
    (status.is_some_and(|s| s.success()), text)
}

/// A daemon with the inbox on a free port and one Amazon thread, without a
/// browser: what the server itself promises.
fn inbox_daemon(public_url: &str) -> (TestApp, common::Daemon, String, i64) {
    let mut app = TestApp::new(None, "");
    let mail = app.path().join("mail");
    deliver_mail(&mail, &buyer_mail(0, "Jürgen Weiß", "q7w8e9r0", 3600));
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }
    let port = free_port();
    let mut config = std::fs::read_to_string(&app.config).unwrap();
    config.push_str(&format!(
        r#"[http]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"

[[http.tokens]]
name = "ana"
secret = "env:HG_TOKEN_ANA"
role = "agent"

[[http.tokens]]
name = "scraper"
secret = "env:HG_TOKEN_METRICS"
role = "metrics"

[[instances]]
name = "amazon-de"
type = "amazon"
schedule = "* * * * * *"
[instances.maildir]
path = "{mail}"
own_addresses = ["seller@shop.example"]
"#,
        mail = mail.display(),
    ));
    std::fs::write(&app.config, config).unwrap();
    app.env.push(("HG_TOKEN_ANA".into(), TOKEN.into()));
    app.env
        .push(("HG_TOKEN_METRICS".into(), "metrics-token-0123456789".into()));
    let daemon = app.spawn_daemon();
    wait_for_port(port, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));
    wait_until(Duration::from_secs(30), || {
        app.json(&["threads", "--json"])
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .unwrap_or_else(|_| panic!("no thread; log:\n{}", daemon.log()));
    let id = app.json(&["threads", "--json"])[0]["id"].as_i64().unwrap();
    (app, daemon, format!("http://127.0.0.1:{port}"), id)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    http.post(format!("{base}/login"))
        .form(&[("token", token), ("next", "/threads")])
        .send()
        .await
        .unwrap()
}

/// The `name=value` of a Set-Cookie header, and its attributes.
fn set_cookie(resp: &reqwest::Response) -> (String, String) {
    let v = resp
        .headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {:?}", resp.headers()))
        .to_str()
        .unwrap()
        .to_owned();
    let (pair, attrs) = v.split_once(';').unwrap();
    (pair.to_owned(), attrs.to_owned())
}

/// The value of the hidden form field `name`.
fn field(html: &str, name: &str) -> String {
    let start = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&start)
        .unwrap_or_else(|| panic!("no field {name}"))
        + start.len();
    let value = html[at..].split('"').next().unwrap().to_owned();
    assert!(!value.is_empty(), "field {name} is empty");
    value
}

fn csrf_of(html: &str) -> String {
    field(html, "csrf")
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_is_slowed_forms_need_their_csrf_token_and_no_secret_shows() {
    let (app, mut daemon, base, id) = inbox_daemon("https://inbox.shop.example");
    let http = client();

    // Pages send a strict CSP and load their script from a file.
    let login = http.get(format!("{base}/login")).send().await.unwrap();
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = login.text().await.unwrap();
    assert!(
        html.contains("<label for=\"token\">Token</label>"),
        "{html}"
    );
    assert!(html.contains(">Sign in</button>"), "{html}");
    assert!(!html.contains("<script>"), "an inline script: {html}");

    // Not signed in: pages send you to the sign-in, fragments say 401.
    let page = http
        .get(format!("{base}/threads/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(
        page.headers()["location"],
        format!("/login?next=/threads/{id}")
    );
    let rows = http
        .get(format!("{base}/threads/rows"))
        .send()
        .await
        .unwrap();
    assert_eq!(rows.status(), 401);

    // A metrics token cannot open the inbox.
    let resp = sign_in(&http, &base, "metrics-token-0123456789").await;
    assert_eq!(resp.status(), 401);

    // The session cookie: HttpOnly, SameSite=Strict, Secure under https,
    // and it carries no secret.
    let resp = sign_in(&http, &base, TOKEN).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/threads");
    let (cookie, attrs) = set_cookie(&resp);
    assert!(attrs.contains("HttpOnly"), "{attrs}");
    assert!(attrs.contains("SameSite=Strict"), "{attrs}");
    assert!(attrs.contains("Secure"), "{attrs}");
    assert!(!cookie.contains(TOKEN), "{cookie}");

    let thread = http
        .get(format!("{base}/threads/{id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(thread.status(), 200);
    let headers = format!("{:?}", thread.headers());
    let html = thread.text().await.unwrap();
    assert!(!html.contains(TOKEN) && !headers.contains(TOKEN));
    for needle in [
        "<label for=\"reply\">Reply</label>",
        ">Send</button>",
        ">No response needed</button>",
        ">Snooze</button>",
    ] {
        assert!(html.contains(needle), "{needle} missing: {html}");
    }
    let csrf = csrf_of(&html);

    // A form without its CSRF token, or from another site, changes nothing.
    let mark = |csrf: String, origin: Option<&'static str>| {
        let mut req = http
            .post(format!("{base}/threads/{id}/mark"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str()), ("action", "no_response_needed")]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    assert_eq!(mark(String::new(), None).await.unwrap().status(), 403);
    assert_eq!(mark("00".repeat(32), None).await.unwrap().status(), 403);
    assert_eq!(
        mark(csrf.clone(), Some("https://evil.example"))
            .await
            .unwrap()
            .status(),
        403
    );
    let shown = app.json(&["show", &id.to_string(), "--json"]);
    assert_eq!(shown["status"], "awaiting", "{shown}");
    let ok = mark(csrf, None).await.unwrap();
    assert_eq!(ok.status(), 303);
    let shown = app.json(&["show", &id.to_string(), "--json"]);
    assert_eq!(shown["status"], "no_response_needed", "{shown}");
    assert_eq!(shown["audit"][0]["actor"], "ana", "{shown}");

    // Five wrong tokens are answered; then each try must wait, even with
    // the right token, and is told how long.
    for _ in 0..5 {
        assert_eq!(sign_in(&http, &base, "wrong-token").await.status(), 401);
    }
    let slowed = sign_in(&http, &base, TOKEN).await;
    assert_eq!(slowed.status(), 429);
    let wait: u64 = slowed.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert!(slowed
        .text()
        .await
        .unwrap()
        .contains("Too many failed sign-ins"));

    daemon.stop_cleanly();
    let log = daemon.log();
    assert!(
        !log.contains(TOKEN) && !log.contains("wrong-token"),
        "{log}"
    );
}

fn simulated_shop(mock: &MockPlatform, per_poll: u32, port: u16) -> String {
    format!(
        r#"[outbox]
poll_interval = "100ms"

[http]
listen = "127.0.0.1:{port}"

[[http.tokens]]
name = "ana"
secret = "env:HG_TOKEN_ANA"
role = "agent"

[[instances]]
name = "shop"
type = "simulated"
schedule = "0 0 1 1 *"
[instances.simulated]
channel = "amazon"
per_poll = {per_poll}
threads = 1
api_url = "{url}"
"#,
        url = mock.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reply_shows_on_the_thread_in_plain_words_and_a_double_send_queues_once() {
    let mock = MockPlatform::start(None).unwrap();
    mock.refuse_to("buyer0@shop.sim", "the reply window has closed");
    let port = free_port();
    let mut app = TestApp::new(None, "");
    let store = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        format!("{store}{}", simulated_shop(&mock, 1, port)),
    )
    .unwrap();
    app.env.push(("HG_TOKEN_ANA".into(), TOKEN.into()));
    app.json(&["sync", "--once", "--json"]);
    std::fs::write(
        &app.config,
        format!("{store}{}", simulated_shop(&mock, 0, port)),
    )
    .unwrap();
    let id = app.json(&["threads", "--json"])[0]["id"].as_i64().unwrap();

    let mut daemon = app.spawn_daemon();
    wait_for_port(port, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let (cookie, _) = set_cookie(&sign_in(&http, &base, TOKEN).await);
    let page = |http: reqwest::Client, cookie: String, base: String| async move {
        http.get(format!("{base}/threads/{id}"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let html = page(http.clone(), cookie.clone(), base.clone()).await;
    let csrf = csrf_of(&html);
    let key = field(&html, "idempotency_key");

    // The same form sent twice (a double click, a resubmit) queues once.
    for _ in 0..2 {
        let resp = http
            .post(format!("{base}/threads/{id}/reply"))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("idempotency_key", key.as_str()),
                ("body", "Bom dia, já seguiu."),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
    }
    let outbox = || app.json(&["show", &id.to_string(), "--json"])["outbox"].clone();
    wait_until(Duration::from_secs(20), || outbox()[0]["state"] == "failed")
        .unwrap_or_else(|_| panic!("never failed: {}\nlog:\n{}", outbox(), daemon.log()));
    assert_eq!(outbox().as_array().unwrap().len(), 1, "{}", outbox());

    let html = page(http.clone(), cookie.clone(), base.clone()).await;
    for needle in [
        "The last reply did not go through.",
        "The platform refused this reply: ",
        "the reply window has closed",
        ">Not sent<",
    ] {
        assert!(html.contains(needle), "{needle:?} missing:\n{html}");
    }

    // An empty reply is refused on the page, with nothing queued.
    let resp = http
        .post(format!("{base}/threads/{id}/reply"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("body", "   ")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Nothing was sent: the reply is empty"));
    assert_eq!(outbox().as_array().unwrap().len(), 1);
    assert!(mock.accepted().is_empty());
    daemon.stop_cleanly();
}
