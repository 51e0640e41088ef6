//! The platforms this build knows: one line per connector crate.
//!
//! A platform crate owns its config tables, its quotas and its
//! constructor ([`hourglass_connector::Platform`]); adding one is its
//! folder under `connectors/`, a dependency line in Cargo.toml and a line
//! here. The set is closed at compile time: `type = "..."` in config
//! names one of these, and anything else is a config error.

use hourglass_connector::Platform;

/// Every `type` config may name.
pub static PLATFORMS: &[&dyn Platform] = &[
    &hourglass_email::EMAIL,
    &hourglass_email::MAILDIR,
    &hourglass_amazon::AMAZON,
    &hourglass_ebay::EBAY,
    &hourglass_simulated::PLATFORM,
    &hourglass_telegram::PLATFORM,
    &hourglass_x::PLATFORM,
    &hourglass_meta::MESSENGER,
    &hourglass_meta::INSTAGRAM,
    &hourglass_meta::WHATSAPP,
];

/// The platform registered as `kind`.
pub fn platform(kind: &str) -> Option<&'static dyn Platform> {
    PLATFORMS.iter().copied().find(|p| p.kind() == kind)
}

/// The registered types, for messages.
pub fn kinds() -> Vec<&'static str> {
    PLATFORMS.iter().map(|p| p.kind()).collect()
}
