//! Durations as people write them in config and on the command line:
//! `24h`, `90m`, `1h30m`, `7d`, `45s`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written like `24h` or `15m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn from_secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.as_millis_i64())
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write it like \"24h\", \"90m\" or \"1h30m\"")
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_compact(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `1d2h`, `6h`, `15m`, `45s`: the two largest units, for tables.
pub fn format_compact(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, s) = (
        secs / 86_400,
        (secs % 86_400) / 3600,
        (secs % 3600) / 60,
        secs % 60,
    );
    let parts = [(days, "d"), (hours, "h"), (mins, "m"), (s, "s")];
    let mut out = String::new();
    let mut taken = 0;
    for (v, unit) in parts {
        if v > 0 || (taken > 0 && taken < 2) {
            if v > 0 {
                out.push_str(&format!("{v}{unit}"));
            }
            taken += 1;
            if taken == 2 {
                break;
            }
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Time left until a deadline in human form: `3h12m left`, `breached 2h ago`.
pub fn format_left(millis: i64) -> String {
    let d = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        format!("{} left", format_compact(d))
    } else {
        format!("breached {} ago", format_compact(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let cases = [
            ("24h", 86_400, "1d"),
            ("15m", 900, "15m"),
            ("1h30m", 5400, "1h30m"),
            ("7d", 604_800, "7d"),
            ("90s", 90, "1m30s"),
            ("25h", 90_000, "1d1h"),
        ];
        for (input, secs, shown) in cases {
            let d: Dur = input.parse().unwrap();
            assert_eq!(d.0.as_secs(), secs, "{input}");
            assert_eq!(d.to_string(), shown, "{input}");
        }
        assert!("soon".parse::<Dur>().is_err());
    }

    #[test]
    fn time_left() {
        assert_eq!(format_left(3 * 3_600_000 + 12 * 60_000), "3h12m left");
        assert_eq!(format_left(-2 * 3_600_000), "breached 2h ago");
        assert_eq!(format_left(0), "0s left");
    }
}
