use std::sync::OnceLock;

use regex::Regex;

/// Finds an Amazon-style order id (`NNN-NNNNNNN-NNNNNNN`) in free text.
///
/// The pattern must stand alone: digits glued to either side (a phone
/// number, a tracking number) do not count.
pub fn extract_order_id(text: &str) -> Option<String> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| Regex::new(r"(?:^|[^0-9])([0-9]{3}-[0-9]{7}-[0-9]{7})(?:$|[^0-9])").ok())
        .as_ref()?;
    re.captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "Inquiry from Amazon customer Ana (Order: 114-1234567-7654321)",
                Some("114-1234567-7654321"),
            ),
            (
                "Bestellnummer 302-0000001-0000002.",
                Some("302-0000001-0000002"),
            ),
            ("114-1234567-7654321", Some("114-1234567-7654321")),
            ("tracking 9114-1234567-76543210", None),
            ("Product details inquiry", None),
            ("114-123456-7654321", None),
        ];
        for (text, want) in cases {
            assert_eq!(extract_order_id(text).as_deref(), *want, "{text}");
        }
    }
}
