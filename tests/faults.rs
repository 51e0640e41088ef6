//! Faults (DESIGN §8): the daemon killed with SIGKILL at random points
//! while it ingests, 50 times. No message may be lost or stored twice.

mod common;

use std::time::Duration;

use common::{deliver_mail, TestApp};
use rand::Rng;

const MESSAGES: usize = 1500;

#[test]
fn kill_9_during_ingest_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mail.join(".Sent").join(sub)).unwrap();
    }
    for i in 0..MESSAGES {
        let date = (chrono::Utc::now() - chrono::Duration::minutes(i as i64)).to_rfc2822();
        deliver_mail(
            &mail,
            &format!(
                "From: Customer {n} <c{n}@example.com>\r\nTo: help@shop.example\r\n\
                 Subject: Question {i}\r\nDate: {date}\r\nMessage-ID: <kill-{i}@t.example>\r\n\
                 MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
                 Message {i} from customer {n}.\r\n",
                n = i % 300
            ),
        );
    }
    // Small batches, so that every kill lands between or inside commits.
    let app = TestApp::new(
        None,
        &format!(
            "[[instances]]\nname = \"shop\"\ntype = \"maildir\"\nschedule = \"* * * * * *\"\n\
             [instances.maildir]\npath = \"{}\"\nown_addresses = [\"help@shop.example\"]\nfetch_batch = 20\n",
            mail.display()
        ),
    );
    let mut rng = rand::rng();
    let mut kills_mid_ingest = 0;
    for _ in 0..50 {
        let mut daemon = app.spawn_daemon();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..120)));
        assert!(daemon.is_running(), "{}", daemon.log());
        daemon.signal("KILL");
        daemon.wait_exit(Duration::from_secs(10));
        let stored = app.json(&["threads", "--json"]).as_array().unwrap().len();
        if stored < MESSAGES {
            kills_mid_ingest += 1;
        }
    }
    assert!(
        kills_mid_ingest >= 10,
        "only {kills_mid_ingest} kills landed during ingest"
    );
    let sync = app.json(&["sync", "--once", "--json"]);
    assert_eq!(sync[0]["ok"], true, "{sync}");

    let threads = app.json(&["threads", "--json"]);
    let stored: i64 = threads
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_count"].as_i64().unwrap())
        .sum();
    let mut ids = Vec::new();
    for t in threads.as_array().unwrap() {
        let show = app.json(&["show", &t["id"].to_string(), "--json"]);
        for m in show["messages"].as_array().unwrap() {
            ids.push(m["text"].as_str().unwrap().to_owned());
        }
    }
    ids.sort();
    let before = ids.len();
    ids.dedup();
    println!(
        "ingest kill loop: 50 SIGKILLs, {kills_mid_ingest} before the mailbox was read, {stored} of {MESSAGES} stored, {} duplicated, {} lost",
        before - ids.len(),
        MESSAGES as i64 - stored
    );
    assert_eq!(before, ids.len(), "a message was stored twice");
    assert_eq!(stored, MESSAGES as i64, "messages were lost");
    assert_eq!(
        threads.as_array().unwrap().len(),
        MESSAGES,
        "one thread per subject and customer"
    );
}
