//! The Late Response Rate, computed the way Amazon describes it, and its
//! forecast for tomorrow.
//!
//! **What is counted.** Every customer message that opened an awaiting
//! cycle (DESIGN §3: the first inbound message after the last human reply
//! or "no response needed" mark) is one *cycle*. Auto-responses do not
//! close a cycle, `system` messages do not open one.
//!
//! **Late.** A cycle is *late* when its first human reply came more than
//! 24 h after it opened, or when it is still unanswered more than 24 h
//! after it opened. 24 h on the wall clock, weekends and holidays
//! included, whatever the thread's own policy says: this is Amazon's
//! measure, not the help desk's deadline. A reply at exactly 24 h is on
//! time. A cycle marked "no response needed" before its 24 h were up is
//! *excluded*; one marked after that was already late and stays late.
//! A cycle less than 24 h old and unanswered is *pending*: neither late
//! nor on time yet, and not in the rate.
//!
//! **Windows.** The rate over N days at `now` counts the cycles opened in
//! `(now − N×24 h, now]`: late ÷ (late + on time).
//!
//! **Tomorrow.** The forecast is the same window shifted by 24 h,
//! `(now − (N−1)×24 h, now + 24 h]`, assuming nobody writes in between:
//! the cycles of the window's oldest day fall out, and every cycle pending
//! now reaches its 24 h. Two figures: if every pending cycle is answered
//! at its deadline (they all count on time), and if none is answered
//! (they all count late). Cycles already late stay late either way.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use hourglass_connector::Direction;
use serde::Serialize;

use crate::clock::Fact;

/// The windows of Amazon's Account Health, in days.
pub const WINDOWS: [i64; 3] = [7, 30, 90];

/// How long a customer may wait before the answer counts as late.
pub fn late_after() -> Duration {
    Duration::hours(24)
}

/// One awaiting cycle of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cycle {
    pub started_at: DateTime<Utc>,
    /// The first human reply at or after `started_at`.
    pub answered_at: Option<DateTime<Utc>>,
    /// The "no response needed" mark that closed the cycle instead.
    pub no_response_needed_at: Option<DateTime<Utc>>,
}

/// Every awaiting cycle of a thread, oldest first, from its messages and
/// its "no response needed" marks. Agrees with [`crate::clock::evaluate`]:
/// the last cycle, when open, starts at the thread's `awaiting_since`. At
/// equal instants an inbound message comes first and a reply or mark at
/// the same instant answers it, as the clock has it (a customer message is
/// awaiting only when it is later than the last reply).
pub fn cycles(facts: &[Fact], marks: &[DateTime<Utc>]) -> Vec<Cycle> {
    // 0: inbound, 1: reply, 2: mark, so that ties sort as described.
    let mut events: Vec<(DateTime<Utc>, u8)> = facts
        .iter()
        .filter_map(|f| match f.direction {
            Direction::Outbound if !f.automatic => Some((f.sent_at, 1)),
            Direction::Inbound => Some((f.sent_at, 0)),
            _ => None,
        })
        .chain(marks.iter().map(|m| (*m, 2)))
        .collect();
    events.sort_unstable();
    let mut out = Vec::new();
    let mut open: Option<DateTime<Utc>> = None;
    for (at, kind) in events {
        match (kind, open) {
            (0, None) => open = Some(at),
            (1, Some(started_at)) => {
                out.push(Cycle {
                    started_at,
                    answered_at: Some(at),
                    no_response_needed_at: None,
                });
                open = None;
            }
            (2, Some(started_at)) => {
                out.push(Cycle {
                    started_at,
                    answered_at: None,
                    no_response_needed_at: Some(at),
                });
                open = None;
            }
            _ => {}
        }
    }
    if let Some(started_at) = open {
        out.push(Cycle {
            started_at,
            answered_at: None,
            no_response_needed_at: None,
        });
    }
    out
}

/// The cycles after one more human reply sent `at`, from the cycles
/// before it (oldest first, as [`cycles`] gives them), without the
/// thread's messages: what [`cycles`] gives over the messages plus the
/// reply, with the same marks. `None` when the messages are needed: a
/// reply older than the customer's last message (`last_inbound`), or
/// older than (or tied with a mark at) the end of the last cycle, which
/// it would then have answered instead.
pub fn cycles_after_reply(
    before: &[Cycle],
    last_inbound: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Option<Vec<Cycle>> {
    if last_inbound.is_some_and(|last_in| at < last_in) {
        return None;
    }
    let mut out = before.to_vec();
    let Some(last) = out.last_mut() else {
        // No cycle: no customer message at all.
        return Some(out);
    };
    match (last.answered_at, last.no_response_needed_at) {
        // Open: nothing answered it yet, the reply does.
        (None, None) if at >= last.started_at => last.answered_at = Some(at),
        (None, None) => return None,
        // Answered or marked before the reply: the reply answers nothing.
        (Some(end), _) if at >= end => {}
        (None, Some(end)) if at > end => {}
        _ => return None,
    }
    Some(out)
}

/// Where a cycle stands at `now`; `None`: excluded (no response needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    Late,
    OnTime,
    Pending,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Late => "late",
            Standing::OnTime => "on_time",
            Standing::Pending => "pending",
        }
    }

    pub fn parse(s: &str) -> Option<Standing> {
        match s {
            "late" => Some(Standing::Late),
            "on_time" => Some(Standing::OnTime),
            "pending" => Some(Standing::Pending),
            _ => None,
        }
    }
}

/// The standing of one cycle at `now` (see the module docs). The SQL in
/// `store::stats` computes the same; the table tests hold both to it.
pub fn standing(c: &Cycle, now: DateTime<Utc>) -> Option<Standing> {
    let due = c.started_at + late_after();
    match (c.answered_at, c.no_response_needed_at) {
        (Some(a), _) if a > due => Some(Standing::Late),
        (Some(_), _) => Some(Standing::OnTime),
        (None, Some(m)) if m <= due => None,
        (None, Some(_)) => Some(Standing::Late),
        (None, None) if now > due => Some(Standing::Late),
        (None, None) => Some(Standing::Pending),
    }
}

/// Cycles of one instance and marketplace opened `age_days` whole days
/// before `now` (`(now − started_at) / 24 h`, rounded down), by standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCount {
    pub instance: String,
    pub marketplace: Option<String>,
    pub age_days: i64,
    pub standing: Standing,
    pub count: i64,
}

/// The rate over one window, now and tomorrow.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowRate {
    pub days: i64,
    /// Cycles answered late or unanswered past 24 h.
    pub late: i64,
    /// Cycles answered within 24 h.
    pub on_time: i64,
    /// Cycles under 24 h old and unanswered: not in the rate yet.
    pub pending: i64,
    /// late ÷ (late + on time), 0..1; null without any decided cycle.
    pub rate: Option<f64>,
    /// The rate tomorrow if every pending cycle is answered at its deadline.
    pub forecast_if_answered: Option<f64>,
    /// The rate tomorrow if no pending cycle is answered.
    pub forecast_if_unanswered: Option<f64>,
}

/// The Late Response Rate of one instance and marketplace.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LateResponseRate {
    pub instance: String,
    /// Amazon's marketplace (`amazon.de`); null for other platforms.
    pub marketplace: Option<String>,
    /// One per window of [`WINDOWS`], shortest first.
    pub windows: Vec<WindowRate>,
}

impl LateResponseRate {
    /// The highest "if unanswered" forecast of any window, with its window.
    pub fn worst_forecast(&self) -> Option<(&WindowRate, f64)> {
        // The shortest window among equals: it moves first.
        self.windows
            .iter()
            .filter_map(|w| w.forecast_if_unanswered.map(|f| (w, f)))
            .fold(
                None,
                |best: Option<(&WindowRate, f64)>, (w, f)| match best {
                    Some((_, b)) if b >= f => best,
                    _ => Some((w, f)),
                },
            )
    }

    /// "amazon-eu (amazon.de)" or "amazon-eu".
    pub fn label(&self) -> String {
        match &self.marketplace {
            Some(m) => format!("{} ({m})", self.instance),
            None => self.instance.clone(),
        }
    }
}

fn ratio(late: i64, decided: i64) -> Option<f64> {
    (decided > 0).then(|| late as f64 / decided as f64)
}

/// One window's figures from the day counts of one group.
pub fn window(counts: &[&DayCount], days: i64) -> WindowRate {
    let (mut late, mut on_time, mut pending) = (0, 0, 0);
    // What falls out tomorrow: the window's oldest day.
    let (mut late_out, mut on_time_out) = (0, 0);
    for c in counts
        .iter()
        .filter(|c| c.age_days >= 0 && c.age_days < days)
    {
        let oldest = c.age_days == days - 1;
        match c.standing {
            Standing::Late => {
                late += c.count;
                if oldest {
                    late_out += c.count;
                }
            }
            Standing::OnTime => {
                on_time += c.count;
                if oldest {
                    on_time_out += c.count;
                }
            }
            // Pending cycles are under a day old: never on the oldest day
            // of a window of two days or more.
            Standing::Pending => pending += c.count,
        }
    }
    let (late_kept, on_time_kept) = (late - late_out, on_time - on_time_out);
    WindowRate {
        days,
        late,
        on_time,
        pending,
        rate: ratio(late, late + on_time),
        forecast_if_answered: ratio(late_kept, late_kept + on_time_kept + pending),
        forecast_if_unanswered: ratio(late_kept + pending, late_kept + on_time_kept + pending),
    }
}

/// The rate of every instance and marketplace over [`WINDOWS`].
pub fn compute(counts: &[DayCount]) -> Vec<LateResponseRate> {
    let mut groups: BTreeMap<(&str, Option<&str>), Vec<&DayCount>> = BTreeMap::new();
    for c in counts {
        groups
            .entry((c.instance.as_str(), c.marketplace.as_deref()))
            .or_default()
            .push(c);
    }
    groups
        .into_iter()
        .map(|((instance, marketplace), v)| LateResponseRate {
            instance: instance.to_owned(),
            marketplace: marketplace.map(str::to_owned),
            windows: WINDOWS.iter().map(|d| window(&v, *d)).collect(),
        })
        .collect()
}

/// `12.5%`, or `-` without a figure.
pub fn percent(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// Parses an alert level: `"10%"` or `0.1`-style `"0.1"`.
pub fn parse_level(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a rate; write it like \"10%\""))?;
    if !(0.0..=1.0).contains(&v) || v == 0.0 {
        return Err(format!("{s:?} must be above 0% and at most 100%"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    fn fact(direction: Direction, automatic: bool, h: i64) -> Fact {
        Fact {
            direction,
            automatic,
            sent_at: t(h),
        }
    }

    #[test]
    fn cycles_from_messages_and_marks() {
        use Direction::*;
        let facts = [
            fact(Inbound, false, 0),   // opens cycle 1
            fact(Inbound, false, 2),   // same cycle
            fact(Outbound, true, 3),   // auto-response: not an answer
            fact(Outbound, false, 30), // answers cycle 1, late
            fact(System, false, 31),   // a notice opens nothing
            fact(Inbound, false, 40),  // cycle 2
            fact(Inbound, false, 50),  // cycle 3 after the mark at 45
            fact(Outbound, false, 60), // answers cycle 3
            fact(Outbound, false, 61), // a second reply changes nothing
            fact(Inbound, false, 61),  // same instant as that reply: answered by it
            fact(Inbound, false, 70),  // open
        ];
        let c = cycles(&facts, &[t(45)]);
        let want = [
            (0, Some(30), None),
            (40, None, Some(45)),
            (50, Some(60), None),
            (61, Some(61), None),
            (70, None, None),
        ];
        assert_eq!(c.len(), want.len(), "{c:?}");
        for (c, (s, a, m)) in c.iter().zip(want) {
            assert_eq!(c.started_at, t(s));
            assert_eq!(c.answered_at, a.map(t));
            assert_eq!(c.no_response_needed_at, m.map(t));
        }
        // The clock agrees on the open cycle.
        let state = crate::clock::evaluate(
            &facts,
            Some(t(45)),
            &crate::clock::Policy::wall_clock(Duration::hours(24)),
            "amazon",
        );
        assert_eq!(state.awaiting_since, Some(t(70)));
    }

    #[test]
    fn standing_at_the_edges() {
        let now = t(100);
        let c = |s: i64, a: Option<i64>, m: Option<i64>| Cycle {
            started_at: t(s),
            answered_at: a.map(t),
            no_response_needed_at: m.map(t),
        };
        let table = [
            (
                c(0, Some(24), None),
                Some(Standing::OnTime),
                "reply at exactly 24 h",
            ),
            (
                c(0, Some(25), None),
                Some(Standing::Late),
                "reply after 24 h",
            ),
            (c(0, None, Some(10)), None, "marked in time: excluded"),
            (
                c(0, None, Some(30)),
                Some(Standing::Late),
                "marked after 24 h",
            ),
            (
                c(76, None, None),
                Some(Standing::Pending),
                "24 h reached only now",
            ),
            (
                c(75, None, None),
                Some(Standing::Late),
                "unanswered past 24 h",
            ),
            (c(99, None, None), Some(Standing::Pending), "an hour old"),
        ];
        for (cycle, want, why) in table {
            assert_eq!(standing(&cycle, now), want, "{why}");
        }
    }

    fn day(instance: &str, age: i64, s: Standing, n: i64) -> DayCount {
        DayCount {
            instance: instance.into(),
            marketplace: Some("amazon.de".into()),
            age_days: age,
            standing: s,
            count: n,
        }
    }

    #[test]
    fn rate_and_forecast_by_window() {
        use Standing::*;
        // Hand-computed: 7 d holds ages 0..6, 30 d ages 0..29, 90 d 0..89.
        let counts = vec![
            day("a", 0, Pending, 3),
            day("a", 0, OnTime, 5),
            day("a", 2, Late, 1),
            day("a", 6, Late, 2),    // falls out of 7 d tomorrow
            day("a", 6, OnTime, 4),  // falls out of 7 d tomorrow
            day("a", 20, OnTime, 8), // in 30 d and 90 d
            day("a", 29, Late, 5),   // falls out of 30 d tomorrow
            day("a", 89, OnTime, 2), // falls out of 90 d tomorrow
            day("a", 90, Late, 50),  // outside every window
        ];
        let r = compute(&counts);
        assert_eq!(r.len(), 1);
        let w: Vec<&WindowRate> = r[0].windows.iter().collect();
        let f = |x: f64| Some(x);
        // 7 d: late 3, on time 9, pending 3. Tomorrow: late 1, on time 5.
        assert_eq!((w[0].late, w[0].on_time, w[0].pending), (3, 9, 3));
        assert_eq!(w[0].rate, f(3.0 / 12.0));
        assert_eq!(w[0].forecast_if_answered, f(1.0 / 9.0));
        assert_eq!(w[0].forecast_if_unanswered, f(4.0 / 9.0));
        // 30 d: late 8, on time 17. Tomorrow: late 3, on time 17.
        assert_eq!((w[1].late, w[1].on_time), (8, 17));
        assert_eq!(w[1].rate, f(8.0 / 25.0));
        assert_eq!(w[1].forecast_if_answered, f(3.0 / 23.0));
        assert_eq!(w[1].forecast_if_unanswered, f(6.0 / 23.0));
        // 90 d: late 8, on time 19. Tomorrow: late 8, on time 17.
        assert_eq!(w[2].rate, f(8.0 / 27.0));
        assert_eq!(w[2].forecast_if_answered, f(8.0 / 28.0));
        assert_eq!(w[2].forecast_if_unanswered, f(11.0 / 28.0));
        assert_eq!(r[0].worst_forecast().map(|(w, _)| w.days), Some(7));
    }

    #[test]
    fn no_decided_cycle_is_no_rate() {
        let r = compute(&[day("b", 0, Standing::Pending, 2)]);
        let w = &r[0].windows[0];
        assert_eq!(w.rate, None);
        assert_eq!(w.forecast_if_answered, Some(0.0));
        assert_eq!(w.forecast_if_unanswered, Some(1.0));
        assert!(compute(&[]).is_empty());
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("10%"), Ok(0.1));
        assert_eq!(parse_level("0.04"), Ok(0.04));
        assert!(parse_level("0%").is_err());
        assert!(parse_level("ten").unwrap_err().contains("\"10%\""));
        assert_eq!(percent(Some(0.125)), "12.5%");
    }
}
