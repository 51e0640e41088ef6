//! Resources running out or going away (issue #15, part 3): PostgreSQL
//! restarted under the daemon, SQLite on a full disk, a 60 MB message and
//! one with 5,000 attachments, and the wall clock jumping.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, TestApp};
use hourglass_testsupport::postgres::Postgres;

const WAIT: Duration = Duration::from_secs(60);

fn query_i64(app: &TestApp, sql: &str) -> i64 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
    })
}

fn external_ids(app: &TestApp) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar::<_, String>(
            "SELECT external_id FROM messages WHERE direction = 'inbound' ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    })
}

fn inbound(app: &TestApp) -> i64 {
    query_i64(
        app,
        "SELECT COUNT(*) FROM messages WHERE direction = 'inbound'",
    )
}

/// sqlx's report, once a connection is had, that getting it took long.
const SLOW_ACQUIRE: &str = "acquired connection, but time to acquire exceeded slow threshold";
/// How long the store's pool waits for a connection (`src/store/sql.rs`).
const ACQUIRE_TIMEOUT: chrono::Duration = chrono::Duration::seconds(30);

/// A line about a wait for a connection that began while the server was
/// down (before `back`), even if it ends, and is logged, after it: a slow
/// acquire that started then, or one that timed out.
fn about_the_outage(v: &serde_json::Value, back: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(at) = v["timestamp"]
        .as_str()
        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
    else {
        return false;
    };
    let began = if v["message"] == SLOW_ACQUIRE {
        let waited = v["aquired_after_secs"].as_f64().unwrap_or(0.0);
        at - chrono::Duration::milliseconds((waited * 1000.0) as i64)
    } else if v["error"]
        .as_str()
        .is_some_and(|e| e.contains("pool timed out while waiting for an open connection"))
    {
        at - ACQUIRE_TIMEOUT
    } else {
        return false;
    };
    began < back
}

/// The JSON log lines at WARN or ERROR from line `from` on, but those
/// about an outage that ended at `back`.
fn problems(
    daemon: &Daemon,
    from: usize,
    back: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<String> {
    daemon
        .log()
        .lines()
        .skip(from)
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| {
                    (v["level"] == "WARN" || v["level"] == "ERROR")
                        && !back.is_some_and(|back| about_the_outage(&v, back))
                })
                .unwrap_or(true)
        })
        .map(str::to_owned)
        .collect()
}

/// Every simulated message `sim-0` .. `sim-{n-1}` stored exactly once.
fn assert_contiguous(ids: &[String]) {
    let mut seen: Vec<u64> = ids
        .iter()
        .map(|id| id.strip_prefix("sim-").unwrap().parse().unwrap())
        .collect();
    seen.sort_unstable();
    let expected: Vec<u64> = (0..seen.len() as u64).collect();
    assert_eq!(seen, expected, "a message lost or stored twice");
}

fn reply_and_wait_sent(app: &TestApp, daemon: &Daemon, body: &str) {
    let threads = app.json(&["threads", "--json"]);
    let thread = threads.as_array().unwrap()[0]["id"].to_string();
    let queued = app.json(&["reply", &thread, "--body", body, "--json"]);
    assert_eq!(queued["state"], "queued", "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_until(WAIT, || {
        app.json(&["show", &thread, "--json"])["outbox"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == id.as_str() && o["state"] == "sent")
    })
    .unwrap_or_else(|_| panic!("reply {id} never sent; log:\n{}", daemon.log()));
}

#[test]
fn postgres_restarted_mid_run_the_daemon_reconnects_and_loses_nothing() {
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("restart").unwrap();
    let app = TestApp::new(
        Some(&url),
        r#"[daemon]
min_backoff = "100ms"
max_backoff = "1s"
shutdown_timeout = "5s"

[[instances]]
name = "shop"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "ebay"
per_poll = 1
threads = 3
"#,
    );
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    wait_until(WAIT, || inbound(&app) >= 3)
        .unwrap_or_else(|_| panic!("no ingest; log:\n{}", daemon.log()));
    reply_and_wait_sent(&app, &daemon, "Before the restart.");
    assert_eq!(problems(&daemon, 0, None), Vec::<String>::new());

    // The operator restarts PostgreSQL: while it is down the daemon says
    // so, and keeps running.
    let before = inbound(&app);
    let lines_before = daemon.log().lines().count();
    pg.stop().unwrap();
    wait_until(WAIT, || problems(&daemon, lines_before, None).len() >= 2)
        .unwrap_or_else(|_| panic!("the outage went unnoticed; log:\n{}", daemon.log()));
    assert!(daemon.is_running(), "exited; log:\n{}", daemon.log());
    pg.restart().unwrap();
    let restarted_at = chrono::Utc::now();

    // Back: ingest and the outbox go on, and from the first message
    // stored after the restart on, no more warnings.
    wait_until(WAIT, || inbound(&app) > before)
        .unwrap_or_else(|_| panic!("no ingest after the restart; log:\n{}", daemon.log()));
    let lines_back = daemon.log().lines().count();
    let back = inbound(&app);
    wait_until(WAIT, || inbound(&app) >= back + 3)
        .unwrap_or_else(|_| panic!("ingest stalled; log:\n{}", daemon.log()));
    reply_and_wait_sent(&app, &daemon, "After the restart.");
    assert!(daemon.is_running(), "exited; log:\n{}", daemon.log());
    daemon.stop_cleanly();
    assert_eq!(
        problems(&daemon, lines_back, Some(restarted_at)),
        Vec::<String>::new(),
        "warnings after the store came back"
    );
    assert_contiguous(&external_ids(&app));
}

/// A small tmpfs mounted for one test; unmounted on drop. Mounting needs
/// root: as another user the test asks `sudo -n` (as `.ci/run` does for
/// its installs) and fails, saying so, when that is refused.
struct Tmpfs {
    dir: tempfile::TempDir,
}

/// `program` as root: directly when we are root, else through `sudo -n`.
fn as_root(program: &str) -> std::process::Command {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        std::process::Command::new(program)
    } else {
        let mut c = std::process::Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = as_root("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a {size} tmpfs to fill it, which needs root or password-less sudo: \
             mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the file system refuses more.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 512] {
            let block = vec![0u8; chunk];
            while f.write_all(&block).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = as_root("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn text_problems(daemon: &Daemon, needle: &str) -> usize {
    daemon.log().matches(needle).count()
}

#[test]
fn sqlite_on_a_full_disk_pauses_ingest_alerts_the_admin_and_resumes_with_nothing_lost() {
    let disk = Tmpfs::mount("24m");
    let hooks = common::WebhookReceiver::start();
    let url = format!("sqlite://{}/hourglass.db", disk.path().display());
    let app = TestApp::new(
        Some(&url),
        &format!(
            r#"[daemon]
min_backoff = "100ms"
max_backoff = "500ms"
shutdown_timeout = "5s"

[[instances]]
name = "shop"
type = "simulated"
schedule = "* * * * * *"
[instances.simulated]
channel = "ebay"
per_poll = 200
threads = 40

[[alerts.sinks]]
name = "admin"
type = "webhook"
url = "{admin}"
format = "json"

[[alerts.routes]]
thresholds = ["store"]
sinks = ["admin"]
"#,
            admin = hooks.url("/admin"),
        ),
    );
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    wait_until(WAIT, || inbound(&app) >= 400)
        .unwrap_or_else(|_| panic!("no ingest; log:\n{}", daemon.log()));

    // The disk fills up: ingest stops with a clear error, the admin hears
    // of it once, the daemon goes on retrying.
    let filler = disk.fill();
    daemon.wait_for_log("The store's disk is full: ingest is paused", WAIT);
    daemon.wait_for_log_count("The store's disk is still full", 3, WAIT);
    wait_until(WAIT, || !hooks.received().is_empty())
        .unwrap_or_else(|_| panic!("no admin alert; log:\n{}", daemon.log()));
    let alert = hooks.received()[0].json();
    assert_eq!(alert["kind"], "store", "{alert}");
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .starts_with("Action needed: the store's disk is full, ingest is paused"),
        "{alert}"
    );
    assert!(
        alert["error"]
            .as_str()
            .unwrap()
            .contains("database or disk is full"),
        "{alert}"
    );
    assert!(daemon.is_running(), "exited; log:\n{}", daemon.log());
    let while_full = inbound(&app);

    // Space returns: ingest resumes by itself.
    std::fs::remove_file(filler).unwrap();
    daemon.wait_for_log("The store accepts writes again; ingest resumed.", WAIT);
    wait_until(WAIT, || inbound(&app) >= while_full + 400)
        .unwrap_or_else(|_| panic!("ingest did not resume; log:\n{}", daemon.log()));
    daemon.stop_cleanly();

    assert_eq!(
        text_problems(&daemon, "The store's disk is full: ingest is paused"),
        1
    );
    assert_eq!(hooks.received().len(), 1, "one admin alert per episode");
    // Nothing half-written: every message once, each in its thread, and
    // the database intact.
    assert_contiguous(&external_ids(&app));
    assert_eq!(
        query_i64(
            &app,
            "SELECT COUNT(*) FROM messages WHERE thread_id NOT IN (SELECT id FROM threads)"
        ),
        0
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = hourglass::config::Config::load(&app.config).unwrap();
    let check: String = runtime.block_on(async {
        let store = hourglass::daemon::open_store(&config).await.unwrap();
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(store.pool())
            .await
            .unwrap()
    });
    assert_eq!(check, "ok");
}

/// libfaketime, which the clock-jump test preloads into the daemon.
fn libfaketime() -> std::path::PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("this test jumps the daemon's wall clock with libfaketime: apt-get install faketime")
    })
}

fn buyer_mail(n: u32, name: &str, remaining: chrono::Duration) -> String {
    // Sent so that `remaining` is left of its 24 h window now.
    let date = (chrono::Utc::now() - chrono::Duration::hours(24) + remaining).to_rfc2822();
    format!(
        "From: \"{name} - Amazon Marketplace\" <buyer{n}@marketplace.amazon.de>\r\n\
         To: seller@shop.example\r\n\
         Subject: Anfrage von Amazon-Kunde {name} (Bestellung: 302-765432{n}-1234567)\r\n\
         Date: {date}\r\n\
         Message-ID: <clock-jump-{n}@email.amazonses.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         ------------- Begin message -------------\r\n\r\n\
         Wo bleibt meine Bestellung?\r\n\r\n\
         ------------- End message -------------\r\n"
    )
}

#[test]
fn the_wall_clock_jumping_forward_and_back_fires_each_alert_once() {
    let hooks = common::WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }
    // 1 h 30 min left: the 6 h point has passed, 1 h and 15 min are ahead.
    common::deliver_mail(
        &mail,
        &buyer_mail(1, "Jürgen Weiß", chrono::Duration::minutes(90)),
    );
    let mut app = TestApp::new(
        None,
        &format!(
            r#"[clock]
window = "24h"
thresholds = ["6h", "1h", "15m"]

[daemon]
shutdown_timeout = "3s"

[[instances]]
name = "amazon-de"
type = "amazon"
schedule = "* * * * * *"
[instances.maildir]
path = "{mail}"
own_addresses = ["seller@shop.example"]

[[alerts.sinks]]
name = "agents"
type = "webhook"
url = "{url}"
format = "json"
"#,
            mail = mail.display(),
            url = hooks.url("/agents"),
        ),
    );
    // The daemon's wall clock is the real one plus the offset in this
    // file, re-read every second; its monotonic clock (timers) runs on.
    let offset = dir.path().join("faketime");
    let jump = |to: &str| std::fs::write(&offset, to).unwrap();
    jump("+0");
    for (k, v) in [
        ("LD_PRELOAD", libfaketime().display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_CACHE_DURATION", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ] {
        app.env.push((k.into(), v));
    }
    let fired = |customer: &str| -> Vec<String> {
        hooks
            .received()
            .iter()
            .map(|r| r.json())
            .filter(|a| a["customer"] == customer)
            .map(|a| a["threshold"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut daemon = app.spawn_daemon();
    let until = |customer: &str, want: &[&str]| {
        wait_until(WAIT, || fired(customer).len() >= want.len()).unwrap_or_else(|_| {
            panic!(
                "{customer}: {:?}, waiting for {want:?}; log:\n{}",
                fired(customer),
                daemon.log()
            )
        });
    };

    // Started after the 6 h point: it fires, late, once.
    until("Jürgen Weiß", &["6h"]);
    // The clock jumps an hour ahead, across the 1 h point: it fires.
    jump("+1h");
    until("Jürgen Weiß", &["6h", "1h"]);
    // And an hour back, where 1 h 30 min are left again: nothing fires
    // again. A new message proves the engine has looked meanwhile (its 6 h
    // point is already past at any of these times).
    jump("+0");
    common::deliver_mail(
        &mail,
        &buyer_mail(2, "Cleo Martin", chrono::Duration::hours(5)),
    );
    until("Cleo Martin", &["6h"]);
    // Forward again, 10 min left: the 15 min point fires, once.
    jump("+80m");
    until("Jürgen Weiß", &["6h", "1h", "15m"]);
    daemon.stop_cleanly();

    assert_eq!(fired("Jürgen Weiß"), ["6h", "1h", "15m"], "each point once");
    // The jumps reached the daemon: the 1 h alert was fired an hour ahead.
    let one_hour = hooks
        .received()
        .iter()
        .map(|r| r.json())
        .find(|a| a["threshold"] == "1h")
        .unwrap();
    let fired_at: chrono::DateTime<chrono::Utc> =
        one_hour["fired_at"].as_str().unwrap().parse().unwrap();
    assert!(
        fired_at > chrono::Utc::now() + chrono::Duration::minutes(50),
        "fired at {fired_at}: the daemon's clock did not jump"
    );
    assert_eq!(fired("Cleo Martin"), ["6h"]);
}

fn plain_mail(n: u32, body: &str) -> Vec<u8> {
    let date = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc2822();
    format!(
        "From: Buyer {n} <buyer{n}@example.net>\r\n\
         To: seller@shop.example\r\n\
         Subject: Question {n}\r\n\
         Date: {date}\r\n\
         Message-ID: <big-batch-{n}@example.net>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         {body}\r\n"
    )
    .into_bytes()
}

/// A message whose text body is `mb` MiB.
fn huge_mail(n: u32, mb: usize) -> Vec<u8> {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    let mut raw = plain_mail(n, "It starts here.");
    raw.truncate(raw.len() - 2);
    raw.extend_from_slice(b"\r\n");
    while raw.len() < mb << 20 {
        raw.extend_from_slice(line.as_bytes());
    }
    raw.extend_from_slice(b"It ends here.\r\n");
    raw
}

/// A message with `count` small attachments.
fn many_attachments_mail(n: u32, count: usize) -> Vec<u8> {
    let date = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc2822();
    let mut raw = format!(
        "From: Buyer {n} <buyer{n}@example.net>\r\n\
         To: seller@shop.example\r\n\
         Subject: Question {n}\r\n\
         Date: {date}\r\n\
         Message-ID: <big-batch-{n}@example.net>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b0undary\"\r\n\r\n\
         --b0undary\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Photos of every item attached.\r\n"
    );
    for i in 0..count {
        raw.push_str(&format!(
            "--b0undary\r\n\
             Content-Type: text/plain; name=\"item-{i}.txt\"\r\n\
             Content-Disposition: attachment; filename=\"item-{i}.txt\"\r\n\r\n\
             item {i}\r\n"
        ));
    }
    raw.push_str("--b0undary--\r\n");
    raw.into_bytes()
}

/// The peak resident memory of process `pid` so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_60_mb_message_and_one_with_5000_attachments_are_stored_in_bounded_memory_with_their_batch() {
    use hourglass_testsupport::dovecot::Dovecot;
    let dovecot = Dovecot::start().unwrap();
    for raw in [
        plain_mail(1, "Before the big ones."),
        huge_mail(2, 60),
        many_attachments_mail(3, 5000),
        plain_mail(4, "After the big ones."),
    ] {
        dovecot.append("INBOX", &raw).unwrap();
    }
    let mut app = TestApp::new(
        None,
        &format!(
            "[[instances]]\nname = \"mail\"\ntype = \"email\"\nschedule = \"* * * * * *\"\n\
             [instances.imap]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"{}\"\n\
             password = \"env:HG_IMAP_PASSWORD\"\nfolders = [\"INBOX\"]\n",
            dovecot.port(),
            dovecot.user()
        ),
    );
    app.env
        .push(("HG_IMAP_PASSWORD".into(), dovecot.password().into()));
    let mut daemon = app.spawn_daemon();
    wait_until(Duration::from_secs(120), || inbound_email(&app) >= 4)
        .unwrap_or_else(|_| panic!("not all four stored; log:\n{}", daemon.log()));
    let peak = peak_rss_kib(daemon.child.id());
    println!("peak RSS of the daemon: {} MiB", peak / 1024);
    daemon.stop_cleanly();

    // The whole batch is stored: the small ones as they are, the big body
    // capped with a note saying so, every attachment kept with its bytes.
    let bodies = sql_rows(&app, "SELECT subject, body FROM messages ORDER BY subject");
    let body = |subject: &str| {
        bodies
            .iter()
            .find(|(s, _)| s == subject)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no {subject:?} stored"))
    };
    assert_eq!(body("Question 1"), "Before the big ones.");
    assert_eq!(body("Question 4"), "After the big ones.");
    let big = body("Question 2");
    assert!(big.starts_with("It starts here."), "{}", &big[..80]);
    assert!(big.len() < 2 << 20, "{} bytes kept", big.len());
    assert!(
        big.ends_with(
            "[hourglass: this message's text is 62.9 MB; only its first 1 MB is kept here. \
             The complete message stays where it came from (the mailbox or the platform).]"
        ),
        "{}",
        &big[big.len() - 300..]
    );
    assert_eq!(body("Question 3"), "Photos of every item attached.");
    let attachments = sql_rows(
        &app,
        "SELECT filename, CAST(data AS TEXT) FROM attachments ORDER BY id",
    );
    assert_eq!(attachments.len(), 5000);
    assert_eq!(
        attachments[4999],
        ("item-4999.txt".into(), "item 4999".into())
    );
    // The bound: the largest single message, held while it is fetched
    // (IMAP's read buffer grows by doubling: up to 128 MiB for 60 MiB) and
    // its text decoded (60 MiB), over an idle daemon's ~20 MiB; never the
    // batch or the mailbox, and the store gets 1 MB of it. Before the body
    // was capped, the copies bound for the store took it past 400 MiB.
    assert!(peak < 300 * 1024, "peak RSS {} MiB", peak / 1024);
}

/// Rows of two text columns, read from the daemon's SQLite file.
fn sql_rows(app: &TestApp, sql: &str) -> Vec<(String, String)> {
    let url = format!("sqlite://{}/hourglass.db", app.path().display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = hourglass::store::SqlStore::connect(&url, None, 1)
            .await
            .unwrap();
        sqlx::query_as::<_, (String, String)>(sql)
            .fetch_all(store.pool())
            .await
            .unwrap()
    })
}

/// Messages stored, as `threads --json` counts them.
fn inbound_email(app: &TestApp) -> i64 {
    app.json(&["threads", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum()
}
