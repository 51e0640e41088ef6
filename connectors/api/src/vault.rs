//! Secrets a connector learns at run time and must not lose: X rotates its
//! OAuth refresh token on every use, so the new one has to outlive the
//! process. The daemon implements [`Vault`] over the store, encrypted with
//! `[store] secret_key`; a connector only sees this trait, and never the
//! store.

use async_trait::async_trait;
use secrecy::SecretString;

/// Encrypted storage of an instance's run-time secrets, by name.
#[async_trait]
pub trait Vault: Send + Sync {
    /// The secret saved under `name` for `instance`, if any. An error
    /// (unreadable, wrong key) names what failed, never a value.
    async fn load(&self, instance: &str, name: &str) -> Result<Option<SecretString>, String>;

    /// Saves (replaces) the secret under `name`; durable when it returns.
    async fn save(&self, instance: &str, name: &str, value: &SecretString) -> Result<(), String>;
}
