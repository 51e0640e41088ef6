//! The reply clock (DESIGN §3), as pure functions.
//!
//! A thread is *awaiting* from its first inbound message after the last
//! human outbound message (or the last "no response needed" mark); its
//! deadline is that instant plus the policy's window, counted on the wall
//! clock or in business hours. Alerts fire when the remaining time crosses
//! a threshold, at most once per threshold and awaiting cycle.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use hourglass_connector::Direction;
use serde::Deserialize;

/// How long a reply may take on one channel or instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub window: Duration,
    pub business_hours: Option<BusinessHours>,
}

impl Policy {
    pub fn wall_clock(window: Duration) -> Policy {
        Policy {
            window,
            business_hours: None,
        }
    }

    /// The deadline for a thread awaiting since `since`.
    pub fn due_at(&self, since: DateTime<Utc>) -> DateTime<Utc> {
        match &self.business_hours {
            None => since + self.window,
            Some(bh) => bh.add(since, self.window),
        }
    }
}

/// Weekly opening hours in a time zone, with holidays. Written in config as
/// `{ timezone = "Europe/Lisbon", days = { mon = "09:00-17:00", ... },
/// holidays = ["2026-12-25"] }`; a day may hold several ranges separated by
/// commas (`"09:00-12:00,13:00-17:00"`), and days not listed are closed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "BusinessHoursConfig")]
pub struct BusinessHours {
    pub timezone: Tz,
    /// Open ranges per weekday, Monday first.
    pub days: [Vec<(NaiveTime, NaiveTime)>; 7],
    pub holidays: Vec<NaiveDate>,
}

/// Business hours as written in config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHoursConfig {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// `mon`..`sun` → `"09:00-17:00"`; missing days are closed.
    pub days: BTreeMap<String, String>,
    /// Closed dates, `YYYY-MM-DD`.
    #[serde(default)]
    pub holidays: Vec<String>,
}

impl TryFrom<BusinessHoursConfig> for BusinessHours {
    type Error = String;

    fn try_from(c: BusinessHoursConfig) -> Result<Self, String> {
        let timezone: Tz = c
            .timezone
            .parse()
            .map_err(|_| format!("unknown time zone {:?}", c.timezone))?;
        let mut days: [Vec<(NaiveTime, NaiveTime)>; 7] = Default::default();
        for (day, ranges) in &c.days {
            let idx = match day.to_ascii_lowercase().as_str() {
                "mon" => 0,
                "tue" => 1,
                "wed" => 2,
                "thu" => 3,
                "fri" => 4,
                "sat" => 5,
                "sun" => 6,
                other => return Err(format!("unknown day {other:?}; use mon, tue, ... sun")),
            };
            for range in ranges.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                let (a, b) = range
                    .split_once('-')
                    .ok_or_else(|| format!("hours {range:?} must look like 09:00-17:00"))?;
                let t = |s: &str| {
                    NaiveTime::parse_from_str(s.trim(), "%H:%M")
                        .map_err(|_| format!("bad time {s:?} in {range:?}"))
                };
                let (open, close) = (t(a)?, t(b)?);
                if close <= open {
                    return Err(format!("{range:?} closes before it opens"));
                }
                days[idx].push((open, close));
            }
            days[idx].sort();
        }
        if days.iter().all(Vec::is_empty) {
            return Err("business hours open on no day".into());
        }
        let holidays = c
            .holidays
            .iter()
            .map(|h| {
                NaiveDate::parse_from_str(h, "%Y-%m-%d")
                    .map_err(|_| format!("holiday {h:?} must be YYYY-MM-DD"))
            })
            .collect::<Result<_, _>>()?;
        Ok(BusinessHours {
            timezone,
            days,
            holidays,
        })
    }
}

impl BusinessHours {
    /// The instant of a local wall-clock time on `day`. In a DST gap the
    /// time does not exist and we take the first instant after the gap; in
    /// an overlap, the earlier one.
    fn instant(&self, day: NaiveDate, t: NaiveTime) -> DateTime<Utc> {
        let naive = day.and_time(t);
        let mut local = self.timezone.from_local_datetime(&naive);
        let mut shifted = naive;
        for _ in 0..4 {
            if let Some(dt) = local.earliest() {
                return dt.with_timezone(&Utc);
            }
            shifted += Duration::minutes(30);
            local = self.timezone.from_local_datetime(&shifted);
        }
        Utc.from_utc_datetime(&naive)
    }

    /// `start` plus `work` of business time.
    pub fn add(&self, start: DateTime<Utc>, work: Duration) -> DateTime<Utc> {
        let mut remaining = work;
        let mut day = start.with_timezone(&self.timezone).date_naive() - Duration::days(1);
        // Ten years of days is more than any window; the bound only guards
        // against a policy that is open on no day after its holidays.
        for _ in 0..3660 {
            day = day.succ_opt().unwrap_or(day);
            if self.holidays.contains(&day) {
                continue;
            }
            let idx = day.weekday().num_days_from_monday() as usize;
            for &(open, close) in &self.days[idx] {
                let open_at = self.instant(day, open);
                let close_at = self.instant(day, close);
                let from = open_at.max(start);
                if from >= close_at {
                    continue;
                }
                let available = close_at - from;
                if remaining <= available {
                    return from + remaining;
                }
                remaining -= available;
            }
        }
        start + work
    }
}

/// What the clock needs to know about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    pub direction: Direction,
    pub automatic: bool,
    pub sent_at: DateTime<Utc>,
}

/// The clock of one thread, derived from its messages and marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockState {
    pub awaiting_since: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub last_inbound_at: Option<DateTime<Utc>>,
    pub last_outbound_at: Option<DateTime<Utc>>,
    /// When the platform stops accepting free replies (Meta's 24 h).
    pub reply_window_closes_at: Option<DateTime<Utc>>,
}

/// The platform's own free-reply window, a hard limit apart from the
/// policy deadline: Messenger, Instagram and WhatsApp accept a normal reply
/// only within 24 h of the customer's last message.
pub fn platform_reply_window(channel: &str) -> Option<Duration> {
    match channel {
        "messenger" | "instagram" | "whatsapp" => Some(Duration::hours(24)),
        _ => None,
    }
}

/// Derives a thread's clock.
///
/// - Only human outbound messages stop the clock: an auto-responder does
///   not count (Amazon does not count it either).
/// - `system` messages never start it.
/// - A "no response needed" mark at `handled_at` stops it like a reply.
pub fn evaluate(
    facts: &[Fact],
    handled_at: Option<DateTime<Utc>>,
    policy: &Policy,
    channel: &str,
) -> ClockState {
    let last_outbound_at = facts
        .iter()
        .filter(|f| f.direction == Direction::Outbound && !f.automatic)
        .map(|f| f.sent_at)
        .max();
    let last_inbound_at = facts
        .iter()
        .filter(|f| f.direction == Direction::Inbound)
        .map(|f| f.sent_at)
        .max();
    let stopped_at = last_outbound_at.max(handled_at);
    let awaiting_since = facts
        .iter()
        .filter(|f| f.direction == Direction::Inbound)
        .map(|f| f.sent_at)
        .filter(|t| stopped_at.is_none_or(|s| *t > s))
        .min();
    let reply_window_closes_at = platform_reply_window(channel)
        .zip(last_inbound_at)
        .map(|(w, t)| t + w);
    // The platform's window is the harder limit: a deadline past it (a
    // business-hours policy over a weekend) would warn after the reply can
    // no longer be sent freely. The thresholds and the breach then count
    // down to the window instead.
    let due_at = awaiting_since
        .map(|s| policy.due_at(s))
        .map(|due| reply_window_closes_at.map_or(due, |w| due.min(w)));
    ClockState {
        awaiting_since,
        due_at,
        last_inbound_at,
        last_outbound_at,
        reply_window_closes_at,
    }
}

/// The clock after one more human reply sent `at`, from the clock before
/// it, without the thread's other messages: what [`evaluate`] gives over
/// the messages plus the reply, with the same mark. `None` when the
/// messages are needed: a reply older than the customer's last message
/// (a later customer message may still await an answer).
pub fn after_reply(before: &ClockState, at: DateTime<Utc>) -> Option<ClockState> {
    if before.last_inbound_at.is_some_and(|last_in| at < last_in) {
        return None;
    }
    // Every customer message is answered (at or before `at`); the window
    // and the last inbound depend on customer messages only.
    Some(ClockState {
        awaiting_since: None,
        due_at: None,
        last_outbound_at: before.last_outbound_at.max(Some(at)),
        ..*before
    })
}

/// A thread's status as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Awaiting,
    Answered,
    Breached,
    Snoozed,
    NoResponseNeeded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Awaiting => "awaiting",
            Status::Answered => "answered",
            Status::Breached => "breached",
            Status::Snoozed => "snoozed",
            Status::NoResponseNeeded => "no_response_needed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "awaiting" => Some(Status::Awaiting),
            "answered" => Some(Status::Answered),
            "breached" => Some(Status::Breached),
            "snoozed" => Some(Status::Snoozed),
            "no_response_needed" | "no-response-needed" => Some(Status::NoResponseNeeded),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status at `now` of a thread whose clock and marks are given.
pub fn status(
    due_at: Option<DateTime<Utc>>,
    handled_at: Option<DateTime<Utc>>,
    last_outbound_at: Option<DateTime<Utc>>,
    snoozed_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Status {
    match due_at {
        None => match handled_at {
            Some(h) if last_outbound_at.is_none_or(|o| h >= o) => Status::NoResponseNeeded,
            _ => Status::Answered,
        },
        Some(_) if snoozed_until.is_some_and(|u| u > now) => Status::Snoozed,
        Some(due) if due <= now => Status::Breached,
        Some(_) => Status::Awaiting,
    }
}

/// An alert point: a remaining time, or the breach (remaining zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold {
    pub remaining_ms: i64,
}

impl Threshold {
    pub const BREACH: Threshold = Threshold { remaining_ms: 0 };

    pub fn is_breach(self) -> bool {
        self.remaining_ms == 0
    }

    /// `6h`, `15m`, or `breach`: the name stored with a fired alert.
    pub fn label(self) -> String {
        if self.is_breach() {
            "breach".to_owned()
        } else {
            crate::duration::format_compact(std::time::Duration::from_millis(
                self.remaining_ms.unsigned_abs(),
            ))
        }
    }
}

/// All alert points of a policy, most distant first, ending with the breach.
pub fn thresholds(remaining: &[std::time::Duration]) -> Vec<Threshold> {
    let mut out: Vec<Threshold> = remaining
        .iter()
        .map(|d| Threshold {
            remaining_ms: i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        })
        .filter(|t| t.remaining_ms > 0)
        .collect();
    out.push(Threshold::BREACH);
    out.sort_by(|a, b| b.cmp(a));
    out.dedup();
    out
}

/// The next alert point not yet fired in this cycle. `fired` is the
/// smallest remaining time already alerted on (None: nothing yet).
fn next_threshold(points: &[Threshold], fired: Option<i64>) -> Option<Threshold> {
    points
        .iter()
        .copied()
        .find(|t| fired.is_none_or(|f| t.remaining_ms < f))
}

/// When the alert engine must next look at a thread: the next threshold's
/// crossing, or the end of a snooze if that is later. None when nothing is
/// left to fire.
pub fn next_alert_at(
    due_at: Option<DateTime<Utc>>,
    points: &[Threshold],
    fired: Option<i64>,
    snoozed_until: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let due = due_at?;
    let next = next_threshold(points, fired)?;
    let crossing = due - Duration::milliseconds(next.remaining_ms);
    Some(match snoozed_until {
        Some(until) if until > crossing => until,
        _ => crossing,
    })
}

/// The alert to fire now, if any: the most urgent threshold already crossed
/// and not yet fired. Thresholds passed while the daemon was down, or while
/// the thread was snoozed, collapse into this one alert: it fires once,
/// late, and the skipped ones never fire.
pub fn due_alert(
    due_at: DateTime<Utc>,
    points: &[Threshold],
    fired: Option<i64>,
    snoozed_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<Threshold> {
    if snoozed_until.is_some_and(|u| u > now) {
        return None;
    }
    let remaining = (due_at - now).num_milliseconds();
    points
        .iter()
        .copied()
        .filter(|t| fired.is_none_or(|f| t.remaining_ms < f))
        .filter(|t| remaining <= t.remaining_ms)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fact(direction: Direction, at: &str) -> Fact {
        Fact {
            direction,
            automatic: false,
            sent_at: t(at),
        }
    }

    fn auto(direction: Direction, at: &str) -> Fact {
        Fact {
            automatic: true,
            ..fact(direction, at)
        }
    }

    #[test]
    fn wall_clock_table() {
        let p = Policy::wall_clock(Duration::hours(24));
        // (facts, handled_at, expected awaiting_since)
        type Case = (
            &'static str,
            Vec<Fact>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("no messages", vec![], None, None),
            (
                "one buyer message",
                vec![fact(Inbound, "2026-11-20T10:00:00Z")],
                None,
                Some("2026-11-20T10:00:00Z"),
            ),
            (
                "clock runs from the first unanswered message, not the last",
                vec![
                    fact(Inbound, "2026-11-20T10:00:00Z"),
                    fact(Inbound, "2026-11-20T15:00:00Z"),
                ],
                None,
                Some("2026-11-20T10:00:00Z"),
            ),
            (
                "a reply sent elsewhere stops it",
                vec![
                    fact(Inbound, "2026-11-20T10:00:00Z"),
                    fact(Outbound, "2026-11-20T11:00:00Z"),
                ],
                None,
                None,
            ),
            (
                "a new message after the reply starts a new cycle",
                vec![
                    fact(Inbound, "2026-11-20T10:00:00Z"),
                    fact(Outbound, "2026-11-20T11:00:00Z"),
                    fact(Inbound, "2026-11-21T09:00:00Z"),
                ],
                None,
                Some("2026-11-21T09:00:00Z"),
            ),
            (
                "system messages never start a clock",
                vec![fact(System, "2026-11-20T10:00:00Z")],
                None,
                None,
            ),
            (
                "an auto-responder does not stop it",
                vec![
                    fact(Inbound, "2026-11-20T10:00:00Z"),
                    auto(Outbound, "2026-11-20T10:00:05Z"),
                ],
                None,
                Some("2026-11-20T10:00:00Z"),
            ),
            (
                "no response needed stops it",
                vec![fact(Inbound, "2026-11-20T10:00:00Z")],
                Some("2026-11-20T12:00:00Z"),
                None,
            ),
            (
                "a message after no-response-needed starts a new cycle",
                vec![
                    fact(Inbound, "2026-11-20T10:00:00Z"),
                    fact(Inbound, "2026-11-20T13:00:00Z"),
                ],
                Some("2026-11-20T12:00:00Z"),
                Some("2026-11-20T13:00:00Z"),
            ),
            (
                "weekends count on the wall clock (Amazon)",
                vec![fact(Inbound, "2026-11-21T18:00:00Z")],
                None,
                Some("2026-11-21T18:00:00Z"),
            ),
        ];
        for (name, facts, handled, want) in cases {
            let s = evaluate(&facts, handled.map(t), &p, "amazon");
            assert_eq!(s.awaiting_since, want.map(t), "{name}");
            assert_eq!(s.due_at, want.map(|w| t(w) + Duration::hours(24)), "{name}");
            assert_eq!(s.reply_window_closes_at, None, "{name}");
        }
    }

    #[test]
    fn platform_window_follows_the_last_customer_message() {
        let p = Policy::wall_clock(Duration::hours(24));
        let facts = [
            fact(Inbound, "2026-11-20T10:00:00Z"),
            fact(Outbound, "2026-11-20T11:00:00Z"),
            fact(Inbound, "2026-11-20T20:00:00Z"),
        ];
        let s = evaluate(&facts, None, &p, "messenger");
        assert_eq!(s.reply_window_closes_at, Some(t("2026-11-21T20:00:00Z")));
        // The window stays open after our reply: it depends on the customer.
        let s = evaluate(&facts[..2], None, &p, "whatsapp");
        assert_eq!(s.awaiting_since, None);
        assert_eq!(s.reply_window_closes_at, Some(t("2026-11-21T10:00:00Z")));
    }

    #[test]
    fn a_deadline_never_runs_past_the_platform_window() {
        // Friday 15:00Z on Messenger with an 8 h business-hours policy:
        // the policy says Monday, Meta's window closes Saturday 15:00Z.
        let p = Policy {
            window: Duration::hours(8),
            business_hours: Some(berlin_office()),
        };
        let facts = [fact(Inbound, "2026-11-27T15:00:00Z")];
        let s = evaluate(&facts, None, &p, "messenger");
        assert_eq!(s.reply_window_closes_at, Some(t("2026-11-28T15:00:00Z")));
        assert_eq!(s.due_at, Some(t("2026-11-28T15:00:00Z")));
        // E-mail has no such window: the policy's deadline stands.
        let s = evaluate(&facts, None, &p, "email");
        assert_eq!(s.due_at, Some(t("2026-11-30T15:00:00Z")));
    }

    fn berlin_office() -> BusinessHours {
        BusinessHours::try_from(BusinessHoursConfig {
            timezone: "Europe/Berlin".into(),
            days: [
                ("mon", "09:00-17:00"),
                ("tue", "09:00-17:00"),
                ("wed", "09:00-17:00"),
                ("thu", "09:00-17:00"),
                ("fri", "09:00-12:00,13:00-17:00"),
            ]
            .iter()
            .map(|(d, h)| (d.to_string(), h.to_string()))
            .collect(),
            holidays: vec!["2026-12-25".into()],
        })
        .unwrap()
    }

    #[test]
    fn business_hours_table() {
        let p = Policy {
            window: Duration::hours(8),
            business_hours: Some(berlin_office()),
        };
        let cases = [
            // Monday 10:00 Berlin (CET, UTC+1) + 8h of work = Tuesday 10:00.
            ("2026-11-23T09:00:00Z", "2026-11-24T09:00:00Z"),
            // Before opening: the clock starts at 09:00 local.
            ("2026-11-23T05:00:00Z", "2026-11-23T16:00:00Z"),
            // Friday 16:00 local: 1h Friday, lunch break skipped, rest Monday.
            ("2026-11-27T15:00:00Z", "2026-11-30T15:00:00Z"),
            // Saturday: nothing counts until Monday 09:00.
            ("2026-11-28T12:00:00Z", "2026-11-30T16:00:00Z"),
            // Christmas Day is a holiday (Friday): Thursday 16:00 + 8h = Monday 15:00.
            ("2026-12-24T15:00:00Z", "2026-12-28T15:00:00Z"),
        ];
        for (since, due) in cases {
            assert_eq!(p.due_at(t(since)), t(due), "since {since}");
        }
    }

    #[test]
    fn business_hours_across_dst_changes() {
        let p = Policy {
            window: Duration::hours(8),
            business_hours: Some(berlin_office()),
        };
        // Friday 2026-03-27 16:00 CET (15:00Z); clocks go forward on Sunday
        // 29 March. 1h on Friday, 7h on Monday from 09:00 CEST (07:00Z).
        assert_eq!(
            p.due_at(t("2026-03-27T15:00:00Z")),
            t("2026-03-30T14:00:00Z")
        );
        // Friday 2026-10-23 16:00 CEST (14:00Z); clocks go back on 25
        // October. Monday 09:00 is now CET (08:00Z): due 15:00Z.
        assert_eq!(
            p.due_at(t("2026-10-23T14:00:00Z")),
            t("2026-10-26T15:00:00Z")
        );
    }

    #[test]
    fn business_hours_gap_and_bad_config() {
        // An office opening at 02:30 on the night clocks jump 02:00 → 03:00.
        let bh = BusinessHours::try_from(BusinessHoursConfig {
            timezone: "Europe/Berlin".into(),
            days: [("sun".to_string(), "02:30-04:00".to_string())].into(),
            holidays: vec![],
        })
        .unwrap();
        // Sunday 2026-03-29: 02:30 does not exist; the day opens at 03:00 CEST = 01:00Z.
        assert_eq!(
            bh.add(t("2026-03-28T12:00:00Z"), Duration::minutes(30)),
            t("2026-03-29T01:30:00Z")
        );
        let bad = |tz: &str, day: &str, hours: &str| {
            BusinessHours::try_from(BusinessHoursConfig {
                timezone: tz.into(),
                days: [(day.to_string(), hours.to_string())].into(),
                holidays: vec![],
            })
            .is_err()
        };
        assert!(bad("Mars/Olympus", "mon", "09:00-17:00"));
        assert!(bad("UTC", "monday", "09:00-17:00"));
        assert!(bad("UTC", "mon", "17:00-09:00"));
        assert!(bad("UTC", "mon", "9-5"));
    }

    #[test]
    fn status_table() {
        let now = t("2026-11-23T12:00:00Z");
        let cases = [
            (None, None, None, None, Status::Answered),
            (
                None,
                Some("2026-11-23T10:00:00Z"),
                Some("2026-11-23T09:00:00Z"),
                None,
                Status::NoResponseNeeded,
            ),
            (
                Some("2026-11-23T13:00:00Z"),
                None,
                None,
                None,
                Status::Awaiting,
            ),
            (
                Some("2026-11-23T11:00:00Z"),
                None,
                None,
                None,
                Status::Breached,
            ),
            (
                Some("2026-11-23T11:00:00Z"),
                None,
                None,
                Some("2026-11-23T14:00:00Z"),
                Status::Snoozed,
            ),
            (
                Some("2026-11-23T11:00:00Z"),
                None,
                None,
                Some("2026-11-23T11:30:00Z"),
                Status::Breached,
            ),
        ];
        for (due, handled, out, snoozed, want) in cases {
            assert_eq!(
                status(due.map(t), handled.map(t), out.map(t), snoozed.map(t), now),
                want,
                "{due:?} {handled:?} {snoozed:?}"
            );
        }
    }

    #[test]
    fn alerts_fire_once_per_threshold_and_collapse_after_downtime() {
        use std::time::Duration as D;
        let points = thresholds(&[
            D::from_secs(3600),
            D::from_secs(6 * 3600),
            D::from_secs(900),
        ]);
        let labels: Vec<String> = points.iter().map(|p| p.label()).collect();
        assert_eq!(labels, ["6h", "1h", "15m", "breach"]);

        let due = t("2026-11-24T10:00:00Z");
        // Nothing fired yet: the next look is at 6h before the deadline.
        assert_eq!(
            next_alert_at(Some(due), &points, None, None),
            Some(t("2026-11-24T04:00:00Z"))
        );
        // 5h left: the 6h alert fires.
        let fired = due_alert(due, &points, None, None, t("2026-11-24T05:00:00Z"));
        assert_eq!(fired.map(|f| f.label()).as_deref(), Some("6h"));
        let fired_ms = fired.map(|f| f.remaining_ms);
        // ... and not again.
        assert_eq!(
            due_alert(due, &points, fired_ms, None, t("2026-11-24T05:30:00Z")),
            None
        );
        assert_eq!(
            next_alert_at(Some(due), &points, fired_ms, None),
            Some(t("2026-11-24T09:00:00Z"))
        );
        // Down from 05:30 until after the deadline: only the breach fires.
        let late = due_alert(due, &points, fired_ms, None, t("2026-11-24T11:00:00Z"));
        assert_eq!(late, Some(Threshold::BREACH));
        assert_eq!(next_alert_at(Some(due), &points, Some(0), None), None);
        // Snoozed: nothing fires, and the engine looks again when it ends.
        let until = t("2026-11-24T09:30:00Z");
        assert_eq!(
            due_alert(
                due,
                &points,
                fired_ms,
                Some(until),
                t("2026-11-24T09:10:00Z")
            ),
            None
        );
        assert_eq!(
            next_alert_at(Some(due), &points, fired_ms, Some(until)),
            Some(until)
        );
        // Not awaiting: nothing to do.
        assert_eq!(next_alert_at(None, &points, None, None), None);
    }

    /// The clock and the cycles after a sent reply, told from the state
    /// before it (the store's fast path), agree with the full recompute
    /// over every message whenever the fast path answers; and it answers
    /// for the common case, a reply later than every customer message.
    #[test]
    fn a_reply_told_from_the_clock_before_it_agrees_with_the_full_recompute() {
        use proptest::prelude::*;
        let base = t("2026-11-20T10:00:00Z");
        let at = move |minutes: i64| base + Duration::minutes(minutes);
        let fact_s = (0u8..4, 0i64..12).prop_map(move |(kind, m)| Fact {
            direction: match kind {
                0 | 1 => Inbound,
                2 => Outbound,
                _ => System,
            },
            automatic: kind == 3,
            sent_at: at(m),
        });
        let case = (
            proptest::collection::vec(fact_s, 0..8),
            proptest::collection::vec(0i64..12, 0..3),
            0i64..14,
            prop_oneof![Just("amazon"), Just("whatsapp")],
        );
        let policy = Policy::wall_clock(Duration::hours(24));
        let answered = std::cell::Cell::new(0u32);
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        runner
            .run(&case, |(facts, marks, reply, channel)| {
                let marks: Vec<DateTime<Utc>> = marks.into_iter().map(at).collect();
                let handled = marks.iter().max().copied();
                let reply_at = at(reply);
                let mut after = facts.clone();
                after.push(fact(Outbound, &reply_at.to_rfc3339()));
                let before_clock = evaluate(&facts, handled, &policy, channel);
                let full_clock = evaluate(&after, handled, &policy, channel);
                let before_cycles = crate::lrr::cycles(&facts, &marks);
                let full_cycles = crate::lrr::cycles(&after, &marks);
                let fast_clock = after_reply(&before_clock, reply_at);
                let fast_cycles = crate::lrr::cycles_after_reply(
                    &before_cycles,
                    before_clock.last_inbound_at,
                    reply_at,
                );
                if let Some(c) = fast_clock {
                    prop_assert_eq!(c, full_clock);
                }
                if let Some(c) = &fast_cycles {
                    prop_assert_eq!(c, &full_cycles);
                }
                let later_than_every_message = facts.iter().all(|f| f.sent_at < reply_at)
                    && marks.iter().all(|m| *m < reply_at);
                if later_than_every_message {
                    prop_assert!(fast_clock.is_some() && fast_cycles.is_some());
                    answered.set(answered.get() + 1);
                }
                Ok(())
            })
            .unwrap();
        assert!(answered.get() > 0, "the common case was generated");
    }
}
