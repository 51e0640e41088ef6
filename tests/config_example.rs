//! The shipped example configuration is valid, and says what it does.

mod common;

use std::process::Command;

#[test]
fn example_config_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/hourglass.example.toml");
    let creds = tempfile::tempdir().unwrap();
    for name in [
        "shop-imap-password",
        "shop-smtp-password",
        "hourglass-store-key",
    ] {
        std::fs::write(creds.path().join(name), "x").unwrap();
    }
    let mut cmd = Command::new(common::BIN);
    cmd.args(["--config", example, "check-config"])
        .env("CREDENTIALS_DIRECTORY", creds.path());
    for var in [
        "AMAZON_IMAP_PASSWORD",
        "AMAZON_SMTP_PASSWORD",
        "ALERT_SMTP_PASSWORD",
        "SLACK_WEBHOOK_URL",
        "WEBHOOK_SECRET",
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_SHOP_BOT_TOKEN",
        "SP_API_CLIENT_SECRET",
        "SP_API_REFRESH_TOKEN",
        "EBAY_CLIENT_SECRET",
        "EBAY_REFRESH_TOKEN",
        "X_ACCESS_TOKEN",
        "X_REFRESH_TOKEN",
        "META_APP_SECRET",
        "META_VERIFY_TOKEN",
        "META_PAGE_TOKEN",
        "META_WHATSAPP_TOKEN",
    ] {
        cmd.env(var, "https://hooks.example.com/x");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (9 instances)"));

    // Without the secrets, every missing one is reported with its place.
    let out = Command::new(common::BIN)
        .args(["--config", example, "check-config"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variable AMAZON_IMAP_PASSWORD is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("systemd credential shop-imap-password not found"),
        "{stderr}"
    );
    assert!(stderr.lines().all(|l| l.starts_with(example)), "{stderr}");
}

#[test]
fn every_documented_key_is_a_real_key() {
    // Uncomment every commented `key = value` line of the example: the
    // result must still parse, so no comment documents a key that does not
    // exist (or was renamed).
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/hourglass.example.toml"
    ))
    .unwrap();
    let uncommented: String = example
        .lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    }) =>
                {
                    rest.to_owned()
                }
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hourglass.toml");
    std::fs::write(&path, &uncommented).unwrap();
    let out = Command::new(common::BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Secrets are missing in this environment; that is all that may fail.
    for line in stderr.lines() {
        assert!(
            line.contains("is not set") || line.contains("not found"),
            "a documented key is not accepted: {line}"
        );
    }
}
