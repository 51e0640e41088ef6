//! Quiet hours of a route (`quiet = "22:00-07:00"`, `timezone = ...`): the
//! alerts a route would send in that span are held in the store and sent
//! as one summary per sink when the span ends. Pure functions, table
//! tested; the store keeps what is held (`held_until`), so a crash during
//! quiet hours loses nothing.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A daily span in a time zone; it may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub timezone: Tz,
}

fn parse_time(s: &str, spec: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s.trim(), "%H:%M:%S"))
        .map_err(|_| format!("quiet {spec:?}: {s:?} is not a time like 22:00"))
}

impl QuietHours {
    /// `"22:00-07:00"` (seconds allowed: `"22:00:00-07:00:30"`) in the IANA
    /// time zone `timezone` (`None`: UTC).
    pub fn parse(spec: &str, timezone: Option<&str>) -> Result<QuietHours, String> {
        let (a, b) = spec
            .split_once('-')
            .ok_or_else(|| format!("quiet {spec:?} must look like \"22:00-07:00\""))?;
        let (start, end) = (parse_time(a, spec)?, parse_time(b, spec)?);
        if start == end {
            return Err(format!("quiet {spec:?} starts and ends at the same time"));
        }
        let timezone = match timezone {
            None => Tz::UTC,
            Some(tz) => tz
                .parse()
                .map_err(|_| format!("unknown time zone {tz:?}"))?,
        };
        Ok(QuietHours {
            start,
            end,
            timezone,
        })
    }

    /// When `now` falls in quiet hours, the instant they end; else `None`.
    pub fn ends_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.timezone);
        let (date, t) = (local.date_naive(), local.time());
        let end_day = if self.start < self.end {
            // Within one day (12:00-14:00).
            (self.start <= t && t < self.end).then_some(date)?
        } else if t >= self.start {
            // Over midnight (22:00-07:00), evening part: ends tomorrow.
            date.succ_opt()?
        } else if t < self.end {
            date
        } else {
            return None;
        };
        Some(self.instant(end_day, self.end))
    }

    /// `date` at `time` in the zone; a time skipped by a DST change is
    /// taken an hour later, an ambiguous one at its first occurrence.
    fn instant(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let naive = date.and_time(time);
        self.timezone
            .from_local_datetime(&naive)
            .earliest()
            .or_else(|| {
                self.timezone
                    .from_local_datetime(&(naive + Duration::hours(1)))
                    .earliest()
            })
            .map(|d| d.with_timezone(&Utc))
            // No zone skips two hours; UTC reading as the last resort.
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn quiet_hours_table() {
        let berlin = QuietHours::parse("22:00-07:00", Some("Europe/Berlin")).unwrap();
        let lunch = QuietHours::parse("12:00-13:30", None).unwrap();
        let cases = [
            // 02:00 in Berlin (winter, UTC+1): held until 07:00 Berlin.
            (
                &berlin,
                "2026-12-01T01:00:00Z",
                Some("2026-12-01T06:00:00Z"),
            ),
            // 23:30 Berlin: held until tomorrow 07:00.
            (
                &berlin,
                "2026-12-01T22:30:00Z",
                Some("2026-12-02T06:00:00Z"),
            ),
            // 21:59 and 07:00 Berlin: not quiet.
            (&berlin, "2026-12-01T20:59:00Z", None),
            (&berlin, "2026-12-01T06:00:00Z", None),
            // 22:00 exactly: quiet.
            (
                &berlin,
                "2026-12-01T21:00:00Z",
                Some("2026-12-02T06:00:00Z"),
            ),
            // Summer time (UTC+2): 02:00 Berlin ends at 05:00 UTC.
            (
                &berlin,
                "2026-07-01T00:00:00Z",
                Some("2026-07-01T05:00:00Z"),
            ),
            // The night the clocks go forward (29 March 2026).
            (
                &berlin,
                "2026-03-28T23:00:00Z",
                Some("2026-03-29T05:00:00Z"),
            ),
            (&lunch, "2026-12-01T12:15:00Z", Some("2026-12-01T13:30:00Z")),
            (&lunch, "2026-12-01T13:30:00Z", None),
            (&lunch, "2026-12-01T11:59:59Z", None),
        ];
        for (q, now, want) in cases {
            assert_eq!(q.ends_after(at(now)), want.map(at), "at {now}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = QuietHours::parse("22-07", None).unwrap_err();
        assert!(e.contains("\"22\" is not a time"), "{e}");
        let e = QuietHours::parse("22:00", None).unwrap_err();
        assert!(e.contains("must look like"), "{e}");
        let e = QuietHours::parse("22:00-22:00", None).unwrap_err();
        assert!(e.contains("same time"), "{e}");
        let e = QuietHours::parse("22:00-07:00", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
    }
}
