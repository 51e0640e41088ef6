//! The consent side of OAuth 2.0 that the platform mocks share: the
//! authorize endpoint (the page where the seller signs in and clicks
//! "Agree", here agreeing at once) and the authorization codes it issues,
//! redeemed at the token endpoint once.
//!
//! Shaped after RFC 6749 §4.1 and RFC 7636 (PKCE) as the platforms
//! document them: `response_type=code`, `client_id`, `redirect_uri`
//! (eBay: a RuName that the developer console maps to the accept URL),
//! `scope`, `state`, and for X `code_challenge` with
//! `code_challenge_method=S256`. A code is single use: a second exchange
//! gets `invalid_grant`, as a redirect_uri or a verifier that does not
//! match.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// A code the desk issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub redirect_uri: String,
    pub challenge: Option<String>,
    pub scope: String,
    pub used: bool,
}

/// Issues and redeems authorization codes for one app.
#[derive(Debug, Default)]
pub struct ConsentDesk {
    client_id: String,
    pkce: bool,
    /// eBay: RuName → accept URL.
    redirects: HashMap<String, String>,
    codes: HashMap<String, Issued>,
    next: u64,
    /// Every authorize request's query, for assertions.
    pub authorize_requests: Vec<HashMap<String, String>>,
}

fn page(status: StatusCode, text: &str) -> Response {
    (
        status,
        [("content-type", "text/html; charset=utf-8")],
        format!("<!doctype html><title>Consent</title><p>{text}</p>"),
    )
        .into_response()
}

impl ConsentDesk {
    pub fn new(client_id: &str, pkce: bool) -> ConsentDesk {
        ConsentDesk {
            client_id: client_id.to_owned(),
            pkce,
            ..ConsentDesk::default()
        }
    }

    /// Maps a redirect name (eBay's RuName) to the URL the browser goes to.
    pub fn map_redirect(&mut self, name: &str, url: &str) {
        self.redirects.insert(name.to_owned(), url.to_owned());
    }

    /// The authorize endpoint: the seller agrees at once and the browser
    /// is sent to the redirect with `code` and `state`.
    pub fn authorize(&mut self, q: &HashMap<String, String>, named_redirects: bool) -> Response {
        self.authorize_requests.push(q.clone());
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        if get("client_id") != self.client_id {
            return page(StatusCode::BAD_REQUEST, "Unknown client_id.");
        }
        if get("response_type") != "code" {
            return page(StatusCode::BAD_REQUEST, "response_type must be code.");
        }
        if get("state").is_empty() {
            return page(StatusCode::BAD_REQUEST, "state is required.");
        }
        if get("scope").is_empty() {
            return page(StatusCode::BAD_REQUEST, "scope is required.");
        }
        let challenge = if self.pkce {
            if get("code_challenge_method") != "S256" || get("code_challenge").len() < 43 {
                return page(
                    StatusCode::BAD_REQUEST,
                    "code_challenge with code_challenge_method=S256 is required.",
                );
            }
            Some(get("code_challenge").to_owned())
        } else {
            None
        };
        let redirect_uri = get("redirect_uri").to_owned();
        let target = if named_redirects {
            match self.redirects.get(&redirect_uri) {
                Some(u) => u.clone(),
                None => return page(StatusCode::BAD_REQUEST, "Unknown redirect_uri (RuName)."),
            }
        } else if redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://") {
            redirect_uri.clone()
        } else {
            return page(StatusCode::BAD_REQUEST, "redirect_uri must be a URL.");
        };
        self.next += 1;
        let code = format!("code-{}-{}", self.next, std::process::id());
        self.codes.insert(
            code.clone(),
            Issued {
                redirect_uri,
                challenge,
                scope: get("scope").to_owned(),
                used: false,
            },
        );
        let sep = if target.contains('?') { '&' } else { '?' };
        let location = format!(
            "{target}{sep}code={}&state={}",
            encode(&code),
            encode(get("state"))
        );
        (StatusCode::FOUND, [("location", location)]).into_response()
    }

    /// Redeems `code` once. The error is the `error_description`.
    pub fn redeem(
        &mut self,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<Issued, &'static str> {
        let issued = self
            .codes
            .get_mut(code)
            .ok_or("The authorization code is invalid.")?;
        if issued.used {
            return Err("The authorization code has already been used.");
        }
        issued.used = true;
        if issued.redirect_uri != redirect_uri {
            return Err("The redirect_uri does not match the one of the authorization request.");
        }
        if let Some(challenge) = &issued.challenge {
            let verifier = verifier.ok_or("code_verifier is required.")?;
            let digest = Sha256::digest(verifier.as_bytes());
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            if &computed != challenge {
                return Err("The code_verifier does not match the code_challenge.");
            }
        }
        Ok(issued.clone())
    }
}

/// A query string or form body, percent-decoded.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
