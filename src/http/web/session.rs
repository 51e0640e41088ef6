//! Web sessions without server-side state: the cookie is
//! `NAME.EXPIRES.MAC`, where MAC is an HMAC-SHA256 keyed with the token's
//! own secret. Restarting the daemon keeps agents signed in; changing or
//! removing a token signs its sessions out. The CSRF token of a session is
//! another MAC over the cookie, so it needs no storage either. Neither ever
//! contains the secret.
//!
//! Failed sign-ins are counted per client address: after a few, each further
//! attempt must wait a doubling delay.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "hg_session";

/// How long a sign-in lasts: a long shift.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

fn mac(secret: &[u8], parts: &[&str]) -> HmacSha256 {
    // HMAC pads a short key with zeros to the block size, so this is HMAC
    // keyed with SHA-256(secret), built without a fallible constructor.
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&Sha256::digest(secret));
    let mut m = <HmacSha256 as KeyInit>::new(&key.into());
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\0");
    }
    m
}

/// The cookie value for `name`, valid until `expires` (Unix seconds).
pub fn issue(name: &str, secret: &[u8], expires: i64) -> String {
    let exp = expires.to_string();
    let tag = mac(secret, &["hourglass-session", name, &exp]).finalize();
    format!("{name}.{exp}.{}", hex::encode(tag.into_bytes()))
}

/// The token name a cookie claims, before it is verified.
pub fn claimed_name(cookie: &str) -> Option<&str> {
    let mut parts = cookie.rsplitn(3, '.');
    let _mac = parts.next()?;
    let _exp = parts.next()?;
    parts.next()
}

/// Checks a cookie against the secret of the token it names.
pub fn verify(cookie: &str, secret: &[u8], now: i64) -> bool {
    let mut parts = cookie.rsplitn(3, '.');
    let (Some(tag), Some(exp), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(expires) = exp.parse::<i64>() else {
        return false;
    };
    let Ok(tag) = hex::decode(tag) else {
        return false;
    };
    if expires <= now {
        return false;
    }
    mac(secret, &["hourglass-session", name, exp])
        .verify_slice(&tag)
        .is_ok()
}

/// The CSRF token of a session.
pub fn csrf(cookie: &str, secret: &[u8]) -> String {
    hex::encode(
        mac(secret, &["hourglass-csrf", cookie])
            .finalize()
            .into_bytes(),
    )
}

/// Checks a form's CSRF token in constant time.
pub fn csrf_ok(cookie: &str, secret: &[u8], token: &str) -> bool {
    let Ok(tag) = hex::decode(token) else {
        return false;
    };
    mac(secret, &["hourglass-csrf", cookie])
        .verify_slice(&tag)
        .is_ok()
}

/// Compares a typed token with a configured secret in constant time (a MAC
/// of each under one key, then a constant-time comparison of the MACs).
pub fn token_matches(typed: &[u8], secret: &[u8]) -> bool {
    let tag = mac(b"hourglass-token-compare", &[])
        .chain_update(secret)
        .finalize();
    mac(b"hourglass-token-compare", &[])
        .chain_update(typed)
        .verify_slice(&tag.into_bytes())
        .is_ok()
}

/// Failed sign-ins allowed before attempts must wait.
const FREE_FAILURES: u32 = 5;
/// The longest wait between attempts.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// A client that stays quiet this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed sign-ins per client address.
#[derive(Debug, Default)]
pub struct SignInThrottle {
    by_client: Mutex<HashMap<IpAddr, Failures>>,
}

/// How long a client must wait after `count` failures.
pub fn wait_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
}

impl SignInThrottle {
    /// `Some(wait)` while `client` must still wait before trying again.
    pub fn check(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.get(&client)?;
        let ready = f.last + wait_after(f.count);
        (ready > now).then(|| ready - now)
    }

    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: old entries go whenever a new failure comes in.
        map.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        let f = map.entry(client).or_insert(Failures {
            count: 0,
            last: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    pub fn succeeded(&self, client: IpAddr) {
        let mut map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_verifies_only_with_its_secret_and_before_it_expires() {
        let c = issue("ana", b"s3cret", 1_000);
        assert_eq!(claimed_name(&c), Some("ana"));
        assert!(!c.contains("s3cret"));
        assert!(verify(&c, b"s3cret", 999));
        assert!(!verify(&c, b"s3cret", 1_000), "expired");
        assert!(!verify(&c, b"other", 999), "another secret");
        let forged = c.replacen("1000", "9999", 1);
        assert!(!verify(&forged, b"s3cret", 999), "a longer life is forged");
        let renamed = c.replacen("ana", "bob", 1);
        assert!(!verify(&renamed, b"s3cret", 999));
        for junk in ["", "ana", "ana.1000", "ana.x.00", "..", "ana.1000.zz"] {
            assert!(!verify(junk, b"s3cret", 0), "{junk:?}");
        }
    }

    #[test]
    fn names_with_dots_survive() {
        let c = issue("ana.b", b"k", 50);
        assert_eq!(claimed_name(&c), Some("ana.b"));
        assert!(verify(&c, b"k", 1));
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let a = issue("ana", b"k", 100);
        let b = issue("ana", b"k", 200);
        let t = csrf(&a, b"k");
        assert!(csrf_ok(&a, b"k", &t));
        assert!(!csrf_ok(&b, b"k", &t));
        assert!(!csrf_ok(&a, b"k", ""));
        assert!(!csrf_ok(&a, b"k", "not hex"));
    }

    #[test]
    fn tokens_compare_by_content() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }

    #[test]
    fn failed_sign_ins_wait_longer_and_longer() {
        let cases = [
            (0, 0),
            (4, 0),
            (5, 1),
            (6, 2),
            (7, 4),
            (12, 128),
            (13, 256),
            (14, 300),
            (1000, 300),
        ];
        for (count, secs) in cases {
            assert_eq!(wait_after(count), Duration::from_secs(secs), "{count}");
        }
    }

    #[test]
    fn the_throttle_is_per_client_and_a_success_clears_it() {
        let t = SignInThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.check(a, now), None);
            t.failed(a, now);
        }
        assert_eq!(t.check(a, now), Some(Duration::from_secs(1)));
        assert_eq!(t.check(a, now + Duration::from_secs(1)), None);
        assert_eq!(t.check(b, now), None);
        t.succeeded(a);
        assert_eq!(t.check(a, now), None);
    }
}
