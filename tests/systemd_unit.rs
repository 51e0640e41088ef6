//! The shipped unit file as systemd reads it: it must load (`systemd-analyze
//! verify`, with the unit's binary path pointed at the one just built) and
//! keep its hardening (`systemd-analyze security` exposure 2.0 or less).

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hourglass.service");

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze runs (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_unit_loads_and_its_exposure_is_at_most_2() {
    let (ok, text) = analyze(&[
        "security",
        "--offline=yes",
        "--threshold=20",
        "--no-pager",
        UNIT,
    ]);
    assert!(ok, "exposure above 2.0:\n{text}");
    let exposure = text
        .lines()
        .find_map(|l| l.split("hourglass.service: ").nth(1))
        .unwrap_or_default()
        .to_owned();
    assert!(!exposure.is_empty(), "no exposure line:\n{text}");

    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/local/bin/hourglass", env!("CARGO_BIN_EXE_hourglass"));
    let copy = dir.path().join("hourglass.service");
    std::fs::write(&copy, unit).unwrap();
    let (ok, text) = analyze(&["verify", copy.to_str().unwrap()]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    assert!(Path::new(env!("CARGO_BIN_EXE_hourglass")).exists());
}
