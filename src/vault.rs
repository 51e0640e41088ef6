//! The daemon's [`Vault`]: run-time secrets of connectors (X's rotated
//! refresh token) kept in the store, sealed with `[store] secret_key`.
//!
//! ChaCha20-Poly1305 with a key derived from the configured secret by
//! SHA-256, a random nonce per save, and `instance` + `name` as associated
//! data, so a sealed value copied to another instance or name does not
//! open. A wrong key is an error that says so, never a garbled token.

use std::sync::Arc;

use async_trait::async_trait;
use hourglass_connector::secret::ExposeSecret;
use hourglass_connector::Vault;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::store::Store;

/// Seals and opens secrets with one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

fn aad(instance: &str, name: &str) -> Vec<u8> {
    format!("hourglass-vault-v1\0{instance}\0{name}").into_bytes()
}

impl Sealer {
    /// A sealer keyed by `secret` (any length; it is hashed to 256 bits).
    pub fn new(secret: &SecretString) -> Result<Sealer, String> {
        let mut h = Sha256::new();
        h.update(b"hourglass-vault-v1\0");
        h.update(secret.expose_secret().as_bytes());
        let bytes = h.finalize();
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| "cannot build the store.secret_key cipher".to_owned())?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
        })
    }

    /// The hex of nonce || ciphertext.
    pub fn seal(&self, instance: &str, name: &str, value: &SecretString) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut data = value.expose_secret().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(instance, name)),
                &mut data,
            )
            .map_err(|_| "cannot seal the secret".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(hex::encode(out))
    }

    /// Opens what [`Sealer::seal`] gave for the same instance and name.
    pub fn open(&self, instance: &str, name: &str, sealed: &str) -> Result<SecretString, String> {
        let wrong = || {
            format!(
                "the stored {name} of instance {instance} does not open with store.secret_key (was the key changed?)"
            )
        };
        let bytes = hex::decode(sealed.trim()).map_err(|_| wrong())?;
        if bytes.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(instance, name)), &mut data)
            .map_err(|_| wrong())?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| wrong())?;
        Ok(SecretString::from(text))
    }
}

/// [`Vault`] over the store.
pub struct StoreVault {
    store: Arc<dyn Store>,
    sealer: Sealer,
}

impl StoreVault {
    pub fn new(store: Arc<dyn Store>, sealer: Sealer) -> StoreVault {
        StoreVault { store, sealer }
    }
}

#[async_trait]
impl Vault for StoreVault {
    async fn load(&self, instance: &str, name: &str) -> Result<Option<SecretString>, String> {
        let sql = self
            .store
            .as_sql()
            .ok_or_else(|| "this store keeps no secrets".to_owned())?;
        let sealed = sql
            .sealed_secret(instance, name)
            .await
            .map_err(|e| format!("cannot read the stored {name}: {e}"))?;
        match sealed {
            Some(s) => self.sealer.open(instance, name, &s).map(Some),
            None => Ok(None),
        }
    }

    async fn save(&self, instance: &str, name: &str, value: &SecretString) -> Result<(), String> {
        let sql = self
            .store
            .as_sql()
            .ok_or_else(|| "this store keeps no secrets".to_owned())?;
        let sealed = self.sealer.seal(instance, name, value)?;
        sql.save_sealed_secret(instance, name, &sealed)
            .await
            .map_err(|e| format!("cannot store the new {name}: {e}"))
    }
}

/// Gives every connector the store's vault when `[store] secret_key` is
/// set. A key that cannot be read is an error: a connector that rotates
/// its credentials must not run without a place to keep them.
pub fn attach(
    config: &crate::config::Config,
    store: &Arc<dyn Store>,
    connectors: &[Arc<dyn hourglass_connector::Connector>],
) -> anyhow::Result<()> {
    let Some(reference) = &config.store.secret_key else {
        return Ok(());
    };
    let secret = reference
        .resolve()
        .map_err(|e| anyhow::anyhow!("Cannot read store.secret_key: {e}"))?;
    let sealer = Sealer::new(&secret).map_err(anyhow::Error::msg)?;
    let vault: Arc<dyn Vault> = Arc::new(StoreVault::new(store.clone(), sealer));
    for c in connectors {
        c.attach_vault(vault.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_place() {
        let s = Sealer::new(&SecretString::from("k1")).unwrap();
        let v = SecretString::from("refresh-abc");
        let sealed = s.seal("shop-x", "refresh_token", &v).unwrap();
        assert!(!sealed.contains("refresh-abc"));
        assert_ne!(sealed, s.seal("shop-x", "refresh_token", &v).unwrap());
        let opened = s.open("shop-x", "refresh_token", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "refresh-abc");
        let e = s.open("other", "refresh_token", &sealed).unwrap_err();
        assert!(e.contains("secret_key"), "{e}");
        let other = Sealer::new(&SecretString::from("k2")).unwrap();
        assert!(other.open("shop-x", "refresh_token", &sealed).is_err());
        assert!(s.open("shop-x", "refresh_token", "zz").is_err());
    }
}
