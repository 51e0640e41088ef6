//! What Amazon's Buyer-Seller Messaging accepts, checked before anything
//! is sent: a reply Amazon would bounce later ("Delivery failure") is
//! refused now, with the reason on the thread.

use std::sync::OnceLock;

use regex::Regex;

/// Why Amazon would refuse this reply text, if it would.
pub fn check_reply(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("The reply is empty.".to_owned());
    }
    static LINK: OnceLock<Option<Regex>> = OnceLock::new();
    static TAG: OnceLock<Option<Regex>> = OnceLock::new();
    let link = LINK
        .get_or_init(|| Regex::new(r"(?i)\b(?:https?://|www\.)[^\s]*").ok())
        .as_ref();
    if let Some(found) = link.and_then(|re| re.find(text)) {
        return Err(format!(
            "Amazon does not allow links in messages to buyers: remove {:?}.",
            found.as_str()
        ));
    }
    let tag = TAG
        .get_or_init(|| Regex::new(r"(?i)</?[a-z][a-z0-9]*(?:\s[^<>]*)?/?>").ok())
        .as_ref();
    if let Some(found) = tag.and_then(|re| re.find(text)) {
        return Err(format!(
            "Amazon accepts plain text only: remove the HTML {:?}.",
            found.as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_amazon_would_bounce_are_refused() {
        let ok = [
            "Hello, your parcel left today.",
            "Olá! O prazo é 3 < 5 dias.",
            "Use code 2x>1 at checkout",
            "Mail us at the address on the invoice.",
        ];
        for text in ok {
            assert_eq!(check_reply(text), Ok(()), "{text}");
        }
        let refused = [
            ("Track it: https://track.example/123", "links"),
            ("See http://example.com", "links"),
            ("See www.example.com for details", "links"),
            ("Hello <b>there</b>", "plain text"),
            ("Line<br/>break", "plain text"),
            ("  \n ", "empty"),
        ];
        for (text, why) in refused {
            let err = check_reply(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
