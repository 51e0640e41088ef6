//! One customer across channels: which keys link identities, and how an
//! agent names a customer, a thread or an identity on the command line
//! and in the API. Pure functions; the store applies them
//! (`store/customers.rs`).
//!
//! Keys, and why each one is safe to link on:
//! - `email`: a real e-mail address, lowercased. An e-mail identity has
//!   one; an Amazon buyer has one when SP-API's getOrder shows a real
//!   `BuyerInfo.BuyerEmail`.
//! - `relay`: an Amazon relay alias (`…@marketplace.amazon.<tld>`), the
//!   `+suffix` stripped and lowercased. It is a per-buyer alias at this
//!   seller, not a mailbox: it never counts as an e-mail address, but the
//!   same alias reached through a plain e-mail instance, or named by
//!   getOrder as the buyer's (anonymized) address, is the same buyer.
//! - `order`: an Amazon order id a customer wrote about (inbound,
//!   non-automatic messages only: a shop's own notices name many orders).
//! - `phone`: a phone number in E.164 (WhatsApp's `wa_id`).

use hourglass_amazon::normalize::{is_relay_address, relay_handle};
use hourglass_connector::{Direction, Message};

/// A key an identity carries: `(kind, value)`.
pub type Key = (&'static str, String);

/// An e-mail address as a key: `relay` for an Amazon alias, else `email`.
pub fn address_key(address: &str) -> Option<Key> {
    let a = address.trim().trim_matches(|c| c == '<' || c == '>').trim();
    if a.is_empty() || !a.contains('@') {
        return None;
    }
    if is_relay_address(a) {
        return Some(("relay", relay_handle(a)));
    }
    Some(("email", a.to_lowercase()))
}

/// A WhatsApp id (`16315551181`, digits with the country code) in E.164.
pub fn phone_e164(raw: &str) -> Option<String> {
    let digits: String = raw
        .trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let ok = (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| format!("+{digits}"))
}

/// The keys the identity behind `m` carries, from this message.
pub fn keys_of(m: &Message) -> Vec<Key> {
    let Some(ident) = &m.customer else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    match ident.channel.as_str() {
        "amazon" => keys.extend(address_key(&ident.handle)),
        "whatsapp" => keys.extend(phone_e164(&ident.handle).map(|p| ("phone", p))),
        _ => {}
    }
    if let Some(e) = &ident.email {
        keys.extend(address_key(e));
    }
    if m.direction == Direction::Inbound && !m.automatic {
        if let Some(order) = &m.order_id {
            keys.push(("order", order.clone()));
        }
        // getOrder's BuyerInfo.BuyerEmail, through the Amazon connector's
        // enrichment (`meta.order.buyer_email`).
        let buyer = m
            .meta
            .get("order")
            .and_then(|o| o.get("buyer_email"))
            .and_then(|e| e.as_str());
        keys.extend(buyer.and_then(address_key));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// How an agent names a customer: `42` (a customer id), `thread:17` (the
/// customer of a thread), or `CHANNEL:HANDLE` (an identity, e.g.
/// `email:ana@example.com`, `amazon:q7w8…@marketplace.amazon.de`,
/// `whatsapp:4915112345678`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerRef {
    Customer(i64),
    Thread(i64),
    Identity { channel: String, handle: String },
}

impl CustomerRef {
    pub fn parse(s: &str) -> Result<CustomerRef, String> {
        let s = s.trim();
        if let Ok(id) = s.parse::<i64>() {
            return Ok(CustomerRef::Customer(id));
        }
        match s.split_once(':') {
            Some(("thread", id)) => id
                .trim()
                .parse::<i64>()
                .map(CustomerRef::Thread)
                .map_err(|_| format!("{s:?}: thread:ID takes a thread number")),
            Some((channel, handle)) if !channel.is_empty() && !handle.trim().is_empty() => {
                Ok(CustomerRef::Identity {
                    channel: channel.to_owned(),
                    handle: handle.trim().to_owned(),
                })
            }
            _ => Err(format!(
                "{s:?} is not a customer: use a customer id (42), thread:ID or CHANNEL:HANDLE \
                 (email:ana@example.com)"
            )),
        }
    }
}

impl std::fmt::Display for CustomerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CustomerRef::Customer(id) => write!(f, "customer {id}"),
            CustomerRef::Thread(id) => write!(f, "thread:{id}"),
            CustomerRef::Identity { channel, handle } => write!(f, "{channel}:{handle}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use hourglass_connector::CustomerIdentity;
    use serde_json::json;

    fn msg(channel: &str, handle: &str, email: Option<&str>) -> Message {
        let mut m = Message::new("x", "k", Direction::Inbound, Utc::now(), "hi");
        m.customer = Some(CustomerIdentity {
            channel: channel.into(),
            handle: handle.into(),
            display_name: None,
            email: email.map(str::to_owned),
        });
        m
    }

    #[test]
    fn addresses_become_email_or_relay_keys() {
        let cases = [
            ("Ana@Example.COM", Some(("email", "ana@example.com"))),
            (
                "Q7W8+case2@marketplace.amazon.de",
                Some(("relay", "q7w8@marketplace.amazon.de")),
            ),
            (
                "<x@marketplace.amazon.co.uk>",
                Some(("relay", "x@marketplace.amazon.co.uk")),
            ),
            (
                "donotreply@amazon.de",
                Some(("email", "donotreply@amazon.de")),
            ),
            ("no-at-sign", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = address_key(input);
            assert_eq!(got.as_ref().map(|(k, v)| (*k, v.as_str())), want, "{input}");
        }
    }

    #[test]
    fn whatsapp_ids_become_e164() {
        let cases = [
            ("16315551181", Some("+16315551181")),
            ("+49 151 1234 5678", Some("+4915112345678")),
            ("0151123456", None),
            ("123", None),
            ("abc1234567", None),
        ];
        for (input, want) in cases {
            assert_eq!(phone_e164(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn keys_per_channel_and_direction() {
        let mut amazon = msg("amazon", "q7w8@marketplace.amazon.de", None);
        amazon.order_id = Some("302-7654321-1234567".into());
        amazon.meta = json!({"order": {"buyer_email": "Ana@Example.com"}});
        assert_eq!(
            keys_of(&amazon),
            vec![
                ("email", "ana@example.com".to_owned()),
                ("order", "302-7654321-1234567".to_owned()),
                ("relay", "q7w8@marketplace.amazon.de".to_owned()),
            ]
        );
        // The seller's own reply names the order too: no order key.
        amazon.direction = Direction::Outbound;
        assert_eq!(
            keys_of(&amazon),
            vec![("relay", "q7w8@marketplace.amazon.de".to_owned())]
        );

        let mut email = msg("email", "ana@example.com", Some("ana@example.com"));
        email.order_id = Some("302-7654321-1234567".into());
        email.automatic = true;
        assert_eq!(
            keys_of(&email),
            vec![("email", "ana@example.com".to_owned())]
        );

        let wa = msg("whatsapp", "16315551181", None);
        assert_eq!(keys_of(&wa), vec![("phone", "+16315551181".to_owned())]);

        let relay_in_plain_mail = msg(
            "email",
            "q7w8+a@marketplace.amazon.de",
            Some("q7w8+a@marketplace.amazon.de"),
        );
        assert_eq!(
            keys_of(&relay_in_plain_mail),
            vec![("relay", "q7w8@marketplace.amazon.de".to_owned())]
        );
        let mut notice = Message::new("n", "k", Direction::System, Utc::now(), "x");
        notice.order_id = Some("302-7654321-1234567".into());
        assert!(keys_of(&notice).is_empty());
    }

    #[test]
    fn customer_references() {
        assert_eq!(CustomerRef::parse("42"), Ok(CustomerRef::Customer(42)));
        assert_eq!(CustomerRef::parse("thread:7"), Ok(CustomerRef::Thread(7)));
        assert_eq!(
            CustomerRef::parse("email:ana@example.com"),
            Ok(CustomerRef::Identity {
                channel: "email".into(),
                handle: "ana@example.com".into()
            })
        );
        assert!(CustomerRef::parse("thread:x").is_err());
        assert!(CustomerRef::parse("ana").is_err());
        assert!(CustomerRef::parse("email:").is_err());
    }
}
