//! `[instances.ebay]` as written in config (DESIGN §6 "Connectors").

use hourglass_ebay::{EbayConfig, EbayConnector, DAILY_CALL_BUDGET, SEND_BURST, SEND_PER_SECOND};

const DESIGN_EXAMPLE: &str = r#"
api_url = "https://api.ebay.com"          # Message API under /commerce/message/v1
token_url = "https://api.ebay.com/identity/v1/oauth2/token"
client_id = "MyShop-hourglass-PRD-0123456789"
client_secret = "env:EBAY_CLIENT_SECRET"
refresh_token = "env:EBAY_REFRESH_TOKEN"
marketplace_id = "EBAY_US"                # X-EBAY-C-MARKETPLACE-ID
"#;

#[test]
fn the_documented_keys_parse() {
    let c: EbayConfig = toml::from_str(DESIGN_EXAMPLE).unwrap();
    assert_eq!(c.client_id, "MyShop-hourglass-PRD-0123456789");
    assert_eq!(c.client_secret.to_string(), "env:EBAY_CLIENT_SECRET");
    assert_eq!(c.refresh_token.to_string(), "env:EBAY_REFRESH_TOKEN");
    assert_eq!(c.marketplace_id, "EBAY_US");
    assert_eq!(c.daily_call_budget, DAILY_CALL_BUDGET);
    assert!(!c.mark_read);
    assert!(c.validate().is_ok());
    // eBay's member-message limit: 75 per 60 s; the default never exceeds it.
    assert!(f64::from(SEND_BURST) + SEND_PER_SECOND * 60.0 <= 75.0);
}

#[test]
fn unknown_keys_and_plain_secrets_are_refused() {
    let typo = format!("{DESIGN_EXAMPLE}\nmarketplace = \"EBAY_DE\"\n");
    let err = toml::from_str::<EbayConfig>(&typo).unwrap_err().to_string();
    assert!(err.contains("unknown field `marketplace`"), "{err}");

    let plain = DESIGN_EXAMPLE.replace("env:EBAY_CLIENT_SECRET", "PRD-hunter2");
    let err = toml::from_str::<EbayConfig>(&plain)
        .unwrap_err()
        .to_string();
    assert!(err.contains("by reference"), "{err}");
}

#[test]
fn a_missing_secret_is_named_by_its_reference() {
    let mut c: EbayConfig = toml::from_str(DESIGN_EXAMPLE).unwrap();
    c.client_secret = hourglass_connector::secret::SecretRef::Env("HG_EBAY_TEST_UNSET_1".into());
    let err = EbayConnector::new("ebay-us", c).err().unwrap();
    assert!(
        err.contains("client_secret") && err.contains("HG_EBAY_TEST_UNSET_1"),
        "{err}"
    );
}

#[test]
fn the_readme_documents_every_key_and_only_real_ones() {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let table: String = block
        .split("[instances.ebay]")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| r.contains(" = "))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c: EbayConfig = toml::from_str(&table).unwrap();
    assert_eq!(c.username.as_deref(), Some("myshop"));
    // Every field of EbayConfig appears in the README.
    let keys = table.parse::<toml::Table>().unwrap();
    for field in [
        "api_url",
        "token_url",
        "client_id",
        "client_secret",
        "refresh_token",
        "marketplace_id",
        "username",
        "mark_read",
        "daily_call_budget",
        "backfill_days",
    ] {
        assert!(keys.contains_key(field), "README lacks {field}");
    }
}
