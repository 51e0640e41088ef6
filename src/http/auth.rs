//! Bearer tokens from `[[http.tokens]]`. Secrets are read once per server
//! start, compared in constant time, and never logged or echoed.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hourglass_connector::secret::ExposeSecret as _;
use sha2::{Digest, Sha256};
use tracing::{error, warn};

use super::config::{Role, TokenConfig};
use super::error::ApiError;
use super::AppState;

/// A token the server knows: its name, role and the SHA-256 of its value.
/// Comparing fixed-length digests keeps the comparison's time independent
/// of the token's length and content.
pub struct KnownToken {
    pub name: String,
    pub role: Role,
    digest: [u8; 32],
}

/// Reads every configured token. One that cannot be read is left out (and
/// logged by name): the others keep working.
pub fn load_tokens(tokens: &[TokenConfig]) -> Vec<KnownToken> {
    tokens
        .iter()
        .filter_map(|t| match t.secret.resolve() {
            Ok(secret) => Some(KnownToken {
                name: t.name.clone(),
                role: t.role,
                digest: Sha256::digest(secret.expose_secret().as_bytes()).into(),
            }),
            Err(e) => {
                error!(token = %t.name, error = %e, "Cannot read an HTTP token; it will be refused.");
                None
            }
        })
        .collect()
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Finds the token `presented` among `known`, looking at every entry so
/// that the time taken does not tell which one matched.
pub fn verify(known: &[KnownToken], presented: &str) -> Option<Principal> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in known {
        if hourglass_connector::constant_time_eq(&t.digest, &digest) && found.is_none() {
            found = Some(Principal {
                name: t.name.clone(),
                role: t.role,
            });
        }
    }
    found
}

/// The bearer token of a request, if it carries one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates a request and checks its role: 401 without a valid
/// token, 403 with a token of another role.
pub fn authorize(state: &AppState, parts: &Parts, needed: Role) -> Result<Principal, ApiError> {
    let Some(token) = bearer(parts) else {
        return Err(ApiError::unauthorized(
            "send a token: Authorization: Bearer <token>",
        ));
    };
    let Some(principal) = state.verify_token(token) else {
        warn!(path = %parts.uri.path(), "Refused an unknown HTTP token.");
        return Err(ApiError::unauthorized("unknown token"));
    };
    if !principal.role.allows(needed) {
        return Err(ApiError::forbidden(format!(
            "token {:?} has role {}; this needs {}",
            principal.name,
            principal.role.as_str(),
            needed.as_str()
        )));
    }
    Ok(principal)
}

/// An authenticated caller with role `agent` (or `admin`).
pub struct Agent(pub Principal);

/// An authenticated caller with role `admin`.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, parts, Role::Agent).map(Agent)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, parts, Role::Admin).map(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, value: &str, role: Role) -> KnownToken {
        KnownToken {
            name: name.into(),
            role,
            digest: Sha256::digest(value.as_bytes()).into(),
        }
    }

    #[test]
    fn verify_finds_the_matching_token_only() {
        let known = [
            token("ana", "s3cret-ana", Role::Agent),
            token("ops", "s3cret-ops", Role::Admin),
        ];
        assert_eq!(
            verify(&known, "s3cret-ops"),
            Some(Principal {
                name: "ops".into(),
                role: Role::Admin
            })
        );
        assert_eq!(verify(&known, "s3cret-an"), None);
        assert_eq!(verify(&known, ""), None);
        assert!(Role::Admin.allows(Role::Agent));
        assert!(!Role::Metrics.allows(Role::Agent));
        assert!(!Role::Agent.allows(Role::Admin));
    }
}
