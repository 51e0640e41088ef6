//! Connecting accounts with `hourglass connectors authorize NAME --listen`
//! through the real binary, against the platform mocks' consent pages and
//! token endpoints. The test plays the seller's browser: it opens the
//! printed URL, the mock's consent page redirects to the one-shot
//! listener, and the binary exchanges the code and keeps the token.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ChildStdout, Stdio};

use chrono::{Duration as Days, Utc};
use common::TestApp;
use hourglass_testsupport::ebay::{MockEbay, CLIENT_ID, CLIENT_SECRET, SELLER};
use hourglass_testsupport::meta::MockGraph;
use hourglass_testsupport::net::free_port;
use hourglass_testsupport::x::MockX;

const RU_NAME: &str = "Bright_Shop-BrightSh-hourgl-xqzwpl";

/// A running `connectors authorize` and the URL it printed.
struct Authorize {
    child: Child,
    stdout: BufReader<ChildStdout>,
    url: String,
    callback: String,
}

fn authorize(app: &TestApp, name: &str, port: u16) -> Authorize {
    let listen = format!("127.0.0.1:{port}");
    let mut child = app
        .command(&["connectors", "authorize", name, "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    stdout.read_line(&mut url).unwrap();
    if url.is_empty() {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("authorize printed no URL: {err}");
    }
    Authorize {
        child,
        stdout,
        url: url.trim().to_owned(),
        callback: format!("http://{listen}/oauth/callback"),
    }
}

impl Authorize {
    /// Waits for the exit: (success, stdout after the URL, stderr).
    fn finish(mut self) -> (bool, String, String) {
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.success(), out, err)
    }
}

fn browser() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Opens the consent URL; the mock agrees at once and redirects.
fn consent(url: &str) -> String {
    let resp = browser().get(url).send().unwrap();
    assert_eq!(
        resp.status().as_u16(),
        302,
        "{}",
        resp.text().unwrap_or_default()
    );
    resp.headers()["location"].to_str().unwrap().to_owned()
}

fn param(url: &str, name: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

fn open(url: &str) -> (u16, String) {
    let resp = browser().get(url).send().unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn ebay_app(mock: &MockEbay) -> (TestApp, std::path::PathBuf) {
    let app = TestApp::new(None, "");
    let secret = app.path().join("ebay.client");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    // The refresh token does not exist yet: connecting writes it.
    let refresh = app.path().join("ebay.refresh");
    let body = format!(
        "[[instances]]\nname = \"ebay-de\"\ntype = \"ebay\"\nschedule = \"0 0 1 1 *\"\n\
         [instances.ebay]\napi_url = \"{}\"\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\n\
         ru_name = \"{RU_NAME}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"file:{}\"\n\
         refresh_token = \"file:{}\"\nmarketplace_id = \"EBAY_DE\"\nusername = \"{SELLER}\"\n",
        mock.url(),
        mock.token_url(),
        mock.authorize_url(),
        secret.display(),
        refresh.display(),
    );
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();
    (app, refresh)
}

#[test]
fn ebay_is_connected_from_the_cli_and_the_token_file_is_private() {
    let mock = MockEbay::start().unwrap();
    let conv = mock.add_conversation("anna_k", None, "Lieferzeit?");
    mock.buyer_writes(&conv, "Wann kommt mein Paket?", Utc::now() - Days::hours(2));
    let (app, refresh) = ebay_app(&mock);
    let port = free_port();
    mock.set_ru_name(RU_NAME, &format!("http://127.0.0.1:{port}/oauth/callback"));

    let flow = authorize(&app, "ebay-de", port);
    assert!(flow.url.starts_with(&mock.authorize_url()), "{}", flow.url);
    assert_eq!(param(&flow.url, "redirect_uri"), RU_NAME);
    assert_eq!(
        param(&flow.url, "scope"),
        "https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope%2Fcommerce.message"
    );
    let back = consent(&flow.url);
    assert!(back.starts_with(&flow.callback), "{back}");

    // A redirect with another state (a forged link) is refused, and the
    // flow in progress goes on waiting.
    let forged = back.replace(&param(&back, "state"), "forged-state");
    let (status, page) = open(&forged);
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("matches no connection"), "{page}");
    assert!(!refresh.exists());

    let (status, page) = open(&back);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected"), "{page}");
    let (ok, out, err) = flow.finish();
    assert!(ok, "{out}\n{err}");
    let token = mock.refresh_token();
    assert!(
        out.contains("ebay-de: connected to eBay as brightshop_de"),
        "{out}"
    );
    assert!(out.contains("commerce.message"), "{out}");
    // 18 months from now, and the warning that comes before.
    let year = (Utc::now() + Days::days(547))
        .format("%Y-%m-%d")
        .to_string();
    assert!(out.contains(&format!("expires: {year}")), "{out}");
    assert!(out.contains("30 days before"), "{out}");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "the token was printed"
    );
    assert!(!page.contains(&token), "the token was shown in the browser");
    assert_eq!(std::fs::read_to_string(&refresh).unwrap().trim(), token);
    assert_eq!(mode(&refresh), 0o600);

    // The connected account polls.
    let sync = app.run(&["sync", "--once", "--connector", "ebay-de"]);
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let threads = app.json(&["threads", "--json"]);
    assert_eq!(threads.as_array().unwrap().len(), 1, "{threads}");
    assert_eq!(threads[0]["customer"], "anna_k");

    // A code used once is refused by eBay when it comes again, and the
    // admin is told so; the kept token stays.
    let port = free_port();
    mock.set_ru_name(RU_NAME, &format!("http://127.0.0.1:{port}/oauth/callback"));
    let again = authorize(&app, "ebay-de", port);
    let fresh = consent(&again.url);
    let replay = format!(
        "{}?code={}&state={}",
        again.callback,
        param(&back, "code"),
        param(&fresh, "state")
    );
    let (status, page) = open(&replay);
    assert_eq!(status, 502, "{page}");
    let (ok, _, err) = again.finish();
    assert!(!ok);
    assert!(
        err.contains("eBay refused the authorization code")
            && err.contains("already been used")
            && err.contains("Start the connection again"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&refresh).unwrap().trim(), token);
    assert_eq!(mock.consents(), 1);
}

#[test]
fn x_is_connected_with_pkce_and_the_token_is_sealed_in_the_store() {
    const KEY: &str = "store-key-for-the-oauth-test";
    let mock = MockX::start("xrt-configured-long-ago").unwrap();
    mock.push_dm("2244994945", "Dana", "Is the blue one back in stock?");
    let app = {
        let mut app = TestApp::new(
            None,
            &format!(
                r#"[[instances]]
name = "shop-x"
type = "x"
schedule = "0 0 1 1 *"
[instances.x]
api_url = "{url}"
token_url = "{url}/2/oauth2/token"
authorize_url = "{authorize}"
client_id = "{client}"
refresh_token = "env:HG_X_REFRESH"
"#,
                url = mock.url(),
                authorize = mock.authorize_url(),
                client = hourglass_testsupport::x::CLIENT_ID,
            ),
        );
        let text = std::fs::read_to_string(&app.config).unwrap();
        let text = text.replacen(
            "[store]\n",
            "[store]\nsecret_key = \"env:HG_STORE_KEY\"\n",
            1,
        );
        std::fs::write(&app.config, text).unwrap();
        // What the environment holds is an old token X no longer takes.
        app.env.push(("HG_X_REFRESH".into(), "xrt-revoked".into()));
        app.env.push(("HG_STORE_KEY".into(), KEY.into()));
        app
    };
    let migrate = app.run(&["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let port = free_port();
    let flow = authorize(&app, "shop-x", port);
    assert_eq!(param(&flow.url, "code_challenge_method"), "S256");
    assert_eq!(param(&flow.url, "code_challenge").len(), 43, "{}", flow.url);
    assert_eq!(
        param(&flow.url, "scope"),
        "dm.read%20dm.write%20tweet.read%20users.read%20offline.access"
    );
    let back = consent(&flow.url);
    let (status, page) = open(&back);
    assert_eq!(status, 200, "{page}");
    let (ok, out, err) = flow.finish();
    assert!(ok, "{out}\n{err}");
    let token = mock.refresh_token();
    assert!(
        out.contains("shop-x: connected to X as @mapleshop"),
        "{out}"
    );
    assert!(out.contains("dm.read dm.write"), "{out}");
    assert!(out.contains("kept in the store, encrypted"), "{out}");
    assert!(!out.contains(&token) && !err.contains(&token));
    let db = std::fs::read(app.path().join("hourglass.db")).unwrap();
    assert!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is in the store in clear"
    );

    // Each run is a new process: the sealed token survives, and the
    // connector prefers it over the stale one in the environment (X then
    // rotates it; the successor is kept too).
    for _ in 0..2 {
        let sync = app.run(&["sync", "--once", "--connector", "shop-x"]);
        assert!(
            sync.status.success(),
            "{}",
            String::from_utf8_lossy(&sync.stderr)
        );
    }
    let threads = app.json(&["threads", "--json"]);
    assert_eq!(threads.as_array().unwrap().len(), 1, "{threads}");
    assert!(mock.refreshes() >= 1);
}

#[test]
fn a_facebook_page_is_connected_and_subscribed_to_the_app() {
    const PAGE: &str = "104857600000001";
    const PAGE_TOKEN: &str = "EAAG-page-token-from-consent";
    const APP_ID: &str = "880011223344556";
    const APP_SECRET: &str = "meta-app-secret-9b1d";
    let mock = MockGraph::start(PAGE_TOKEN, PAGE).unwrap();
    mock.enable_login(APP_ID, APP_SECRET);
    let app = TestApp::new(None, "");
    let secret = app.path().join("meta.secret");
    std::fs::write(&secret, APP_SECRET).unwrap();
    let verify = app.path().join("meta.verify");
    std::fs::write(&verify, "verify-77c2").unwrap();
    let token_file = app.path().join("meta.page-token");
    let body = format!(
        "[[instances]]\nname = \"shop-messenger\"\ntype = \"messenger\"\nschedule = \"0 0 1 1 *\"\n\
         [instances.meta]\napi_url = \"{}\"\nauthorize_url = \"{}\"\napp_id = \"{APP_ID}\"\n\
         app_secret = \"file:{}\"\nverify_token = \"file:{}\"\naccess_token = \"file:{}\"\n\
         page_id = \"{PAGE}\"\n",
        mock.url(),
        mock.authorize_url(),
        secret.display(),
        verify.display(),
        token_file.display(),
    );
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();

    let port = free_port();
    let flow = authorize(&app, "shop-messenger", port);
    assert_eq!(param(&flow.url, "client_id"), APP_ID);
    let back = consent(&flow.url);
    let (status, page) = open(&back);
    assert_eq!(status, 200, "{page}");
    let (ok, out, err) = flow.finish();
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!("connected to Meta as Page Shop ({PAGE})")),
        "{out}"
    );
    assert!(out.contains("subscribed to the app's webhooks"), "{out}");
    assert!(!out.contains(PAGE_TOKEN) && !err.contains(PAGE_TOKEN));
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        PAGE_TOKEN
    );
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(
        mock.subscribed_apps(),
        vec![(PAGE.to_owned(), "messages,messaging_postbacks".to_owned())]
    );
    let test = app.run(&["connectors", "test", "shop-messenger"]);
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn platforms_without_a_flow_and_unkeepable_references_are_refused_up_front() {
    let mock = MockGraph::start("t", "1").unwrap();
    let mut app = TestApp::new(
        None,
        &format!(
            "[[instances]]\nname = \"wa\"\ntype = \"whatsapp\"\n[instances.meta]\napi_url = \"{}\"\n\
             app_secret = \"env:A\"\nverify_token = \"env:V\"\naccess_token = \"env:T\"\n\
             phone_number_id = \"109876543210987\"\n\n\
             [[instances]]\nname = \"fb\"\ntype = \"messenger\"\n[instances.meta]\n\
             app_id = \"1\"\napp_secret = \"env:A\"\nverify_token = \"env:V\"\n\
             access_token = \"env:T\"\npage_id = \"1\"\n",
            mock.url()
        ),
    );
    for k in ["A", "V", "T"] {
        app.env.push((k.into(), "x".into()));
    }
    let out = app.run(&["connectors", "authorize", "wa", "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("system user token"), "{err}");
    let out = app.run(&["connectors", "authorize", "fb", "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("meta.access_token = \"env:T\" is not a file"),
        "{err}"
    );
}

fn artifacts() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("browser-artifacts")
}

/// Fails (never skips) when the browser or Playwright is missing.
fn require_browser() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium: apt-get install --no-install-recommends chromium"
    );
    let ok = std::process::Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the browser test needs Playwright for Python: pip install playwright"
    );
}

#[test]
fn an_admin_connects_a_revoked_ebay_account_from_the_admin_page() {
    require_browser();
    let mock = MockEbay::start().unwrap();
    let conv = mock.add_conversation("lena_m", Some("296512345678"), "Farbe?");
    mock.buyer_writes(
        &conv,
        "Gibt es das auch in Blau?",
        Utc::now() - Days::minutes(30),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    mock.set_ru_name(RU_NAME, &format!("{base}/oauth/callback"));
    let (mut app, refresh) = ebay_app(&mock);
    // The token the seller pasted long ago, revoked since.
    std::fs::write(&refresh, "v^1.1#i^1#r^1#f^0#revoked-long-ago").unwrap();
    let text = std::fs::read_to_string(&app.config)
        .unwrap()
        .replace("schedule = \"0 0 1 1 *\"", "schedule = \"* * * * * *\"");
    let http = common::http::HTTP_CONFIG
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("\"http://127.0.0.1\"", &format!("\"{base}\""));
    let text = text.replacen("[[instances]]", &format!("{http}\n[[instances]]"), 1);
    std::fs::write(&app.config, text).unwrap();
    app.env.extend(common::http::token_env());

    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    common::wait_until(std::time::Duration::from_secs(30), || {
        let list = app.json(&["connectors", "list", "--json"]);
        list[0]["state"] == "auth_failed"
    })
    .expect("the revoked token never showed as auth_failed");

    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/admin.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .env("HG_URL", &base)
        .env("HG_TOKEN", common::http::ADMIN)
        .env("HG_AGENT", common::http::AGENT)
        .env("HG_INSTANCE", "ebay-de")
        .env("HG_CUSTOMER", "lena_m")
        .env("HG_ARTIFACTS", artifacts())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{said}\n--- daemon log ---\n{}",
        daemon.log()
    );

    let token = mock.refresh_token();
    assert_eq!(std::fs::read_to_string(&refresh).unwrap().trim(), token);
    assert_eq!(mode(&refresh), 0o600);
    assert!(!daemon.log().contains(&token), "the log shows the token");

    // The connection survives a restart: the next daemon polls with it.
    daemon.stop_cleanly();
    mock.buyer_writes(&conv, "Und in Grün?", Utc::now() - Days::minutes(1));
    let daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    common::wait_until(std::time::Duration::from_secs(30), || {
        let t = app.json(&["threads", "--json"]);
        t.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["message_count"] == 2)
    })
    .unwrap_or_else(|_| panic!("no poll after the restart:\n{}", daemon.log()));
    assert_eq!(mock.consents(), 1);
}

#[test]
fn the_admin_is_warned_once_a_month_before_the_ebay_token_expires() {
    let hooks = common::WebhookReceiver::start();
    let mock = MockEbay::start().unwrap();
    // A seller who consented 17 months ago: 20 days are left.
    mock.set_refresh_token_lifetime(20 * 24 * 3600);
    let (app, _) = ebay_app(&mock);
    let text = std::fs::read_to_string(&app.config)
        .unwrap()
        .replace("schedule = \"0 0 1 1 *\"", "schedule = \"* * * * * *\"");
    let text = format!(
        "{text}\n[[alerts.sinks]]\nname = \"admin\"\ntype = \"webhook\"\nurl = \"{}\"\nformat = \"json\"\n\n\
         [[alerts.routes]]\nthresholds = [\"auth\"]\nsinks = [\"admin\"]\n",
        hooks.url("/admin")
    );
    std::fs::write(&app.config, text).unwrap();
    let port = free_port();
    mock.set_ru_name(RU_NAME, &format!("http://127.0.0.1:{port}/oauth/callback"));
    let flow = authorize(&app, "ebay-de", port);
    let (status, _) = open(&consent(&flow.url));
    assert_eq!(status, 200);
    let (ok, out, err) = flow.finish();
    assert!(ok, "{out}{err}");

    let mut daemon = app.spawn_daemon();
    common::wait_until(std::time::Duration::from_secs(30), || {
        !hooks.received().is_empty()
    })
    .unwrap_or_else(|_| panic!("no expiry warning:\n{}", daemon.log()));
    let alert = hooks.received()[0].json();
    assert_eq!(alert["problem"], "expiry", "{alert}");
    assert_eq!(alert["instance"], "ebay-de");
    let action = alert["action"].as_str().unwrap();
    assert!(
        action.contains("hourglass connectors authorize ebay-de"),
        "{action}"
    );
    // Once per connection: a restart does not warn again.
    let polled =
        |app: &TestApp| app.json(&["connectors", "list", "--json"])[0]["last_poll_at"].clone();
    let before = polled(&app);
    daemon.stop_cleanly();
    let mut daemon = app.spawn_daemon();
    for _ in 0..2 {
        let seen = polled(&app);
        common::wait_until(std::time::Duration::from_secs(30), || polled(&app) != seen)
            .unwrap_or_else(|_| panic!("no poll after the restart:\n{}", daemon.log()));
    }
    assert_ne!(polled(&app), before);
    daemon.stop_cleanly();
    let db = format!("sqlite://{}/hourglass.db", app.path().display());
    let queued: i64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&db).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM instance_alerts WHERE problem = 'expiry'")
            .fetch_one(&mut c)
            .await
            .unwrap()
    });
    assert_eq!(queued, 1);
    assert_eq!(hooks.received().len(), 1);
}

#[test]
fn an_amazon_seller_authorizes_the_sp_api_app_from_the_cli() {
    use hourglass_testsupport::lwa::{self, MockLwa};
    let mock = MockLwa::start().unwrap();
    let app = TestApp::new(None, "");
    let mail = app.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(sub)).unwrap();
    }
    let secret = app.path().join("lwa.secret");
    std::fs::write(&secret, lwa::CLIENT_SECRET).unwrap();
    let refresh = app.path().join("sp-api.refresh");
    let body = format!(
        "[[instances]]\nname = \"amazon-eu\"\ntype = \"amazon\"\n[instances.maildir]\npath = \"{}\"\n\
         [instances.sp_api]\nendpoint = \"http://127.0.0.1:9\"\ntoken_url = \"{}\"\n\
         authorize_url = \"{}\"\napplication_id = \"{}\"\ndraft_app = true\nclient_id = \"{}\"\n\
         client_secret = \"file:{}\"\nrefresh_token = \"file:{}\"\n",
        mail.display(),
        mock.token_url(),
        mock.authorize_url(),
        lwa::APPLICATION_ID,
        lwa::CLIENT_ID,
        secret.display(),
        refresh.display(),
    );
    let text = std::fs::read_to_string(&app.config).unwrap() + &body;
    std::fs::write(&app.config, text).unwrap();

    let port = free_port();
    let flow = authorize(&app, "amazon-eu", port);
    assert_eq!(param(&flow.url, "version"), "beta");
    let back = consent(&flow.url);
    assert!(back.contains("spapi_oauth_code="), "{back}");
    let (status, page) = open(&back);
    assert_eq!(status, 200, "{page}");
    let (ok, out, err) = flow.finish();
    assert!(ok, "{out}\n{err}");
    let token = mock.refresh_token().unwrap();
    assert!(
        out.contains(&format!(
            "connected to Amazon as selling partner {}",
            lwa::SELLING_PARTNER
        )),
        "{out}"
    );
    assert!(!out.contains(&token) && !err.contains(&token));
    assert_eq!(std::fs::read_to_string(&refresh).unwrap().trim(), token);
    assert_eq!(mode(&refresh), 0o600);
    assert_eq!(mock.draft_consents(), 1);
    // The configuration is complete now: check-config reads the token.
    let check = app.run(&["check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
