//! Several processes opening one new store at once: each migrates it or
//! finds it migrated, none fails (issue: `table instances already exists`).

mod common;

use common::TestApp;

fn three_at_once(app: &TestApp) {
    let children: Vec<_> = (0..3)
        .map(|_| {
            app.command(&["threads", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a process failed on the new store: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    }
}

#[test]
fn three_processes_creating_one_new_sqlite_store_all_succeed() {
    // A race is not lost every time: twenty new stores.
    for _ in 0..20 {
        let app = TestApp::new(None, "");
        three_at_once(&app);
    }
}

#[test]
fn three_processes_creating_one_new_postgres_store_all_succeed() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    for i in 0..10 {
        let url = pg.create_database(&format!("race{i}")).unwrap();
        let app = TestApp::new(Some(&url), "");
        three_at_once(&app);
    }
}
