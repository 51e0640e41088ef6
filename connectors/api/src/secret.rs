//! Secrets in config are references, never values: `env:NAME`,
//! `file:/path` or `credential:NAME` (a systemd credential, read from
//! `$CREDENTIALS_DIRECTORY/NAME`). The value is read once, held in a
//! [`SecretString`] and never printed: `Debug` and `Display` show the
//! reference only.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use secrecy::ExposeSecret;

/// A reference to a secret, as written in config.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(String),
    Credential(String),
}

/// Why a secret could not be read. Names the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {error}")]
    File { path: String, error: String },
    #[error(
        "systemd credential {0} not found (is $CREDENTIALS_DIRECTORY set by LoadCredential=?)"
    )]
    MissingCredential(String),
    #[error("secret {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Parses `env:NAME`, `file:/path` or `credential:NAME`.
    pub fn parse(s: &str) -> Result<SecretRef, String> {
        let bad = || {
            "secrets are given by reference: \"env:NAME\", \"file:/path\" or \"credential:NAME\", never as the value itself"
                .to_owned()
        };
        let (scheme, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match scheme {
            "env" => Ok(SecretRef::Env(rest.to_owned())),
            "file" => Ok(SecretRef::File(rest.to_owned())),
            "credential" => Ok(SecretRef::Credential(rest.to_owned())),
            _ => Err(bad()),
        }
    }

    /// Reads the secret's value.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        let value = match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?
            }
            SecretRef::File(path) => read_trimmed(path).map_err(|e| SecretError::File {
                path: path.clone(),
                error: e.kind().to_string(),
            })?,
            SecretRef::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::MissingCredential(name.clone()))?;
                let path = std::path::Path::new(&dir).join(name);
                read_trimmed(&path.to_string_lossy())
                    .map_err(|_| SecretError::MissingCredential(name.clone()))?
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(SecretString::from(value))
    }
}

fn read_trimmed(path: &str) -> std::io::Result<String> {
    let s = std::fs::read_to_string(path)?;
    // A trailing newline from `echo secret > file` is not part of it.
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{p}"),
            SecretRef::Credential(n) => write!(f, "credential:{n}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_refuses_values() {
        assert_eq!(SecretRef::parse("env:PW"), Ok(SecretRef::Env("PW".into())));
        assert_eq!(
            SecretRef::parse("file:/run/pw"),
            Ok(SecretRef::File("/run/pw".into()))
        );
        assert_eq!(
            SecretRef::parse("credential:imap"),
            Ok(SecretRef::Credential("imap".into()))
        );
        for bad in ["hunter2", "env:", "plain:hunter2", ""] {
            let err = SecretRef::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn resolves_files_without_the_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("hg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let r = SecretRef::File(path.to_string_lossy().into_owned());
        assert_eq!(r.resolve().unwrap().expose_secret(), "s3cret");
        assert!(!format!("{r:?}").contains("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
