//! `hourglass report`: per instance, channel and agent over a period:
//! volume, first-response p50/p90, breaches, the Late Response Rate and
//! the busiest hours; as CSV, JSON, or one self-contained HTML page with
//! inline SVG charts (no script, no external asset) to forward to a
//! manager.
//!
//! What is counted: the awaiting cycles opened in the period (see
//! `crate::lrr`: a customer message that opened one). *Volume* is their
//! number, and for an agent the number of cycles their reply closed. A
//! *breach* is a cycle answered after the thread's own deadline (its
//! policy: window, business hours), or unanswered past it; a cycle marked
//! "no response needed" in time is neither. The *Late Response Rate* is
//! Amazon's 24 h measure over the same cycles. The *agent* of a reply is
//! the token or CLI user that queued it; replies sent from the mailbox or
//! the platform itself count as "sent elsewhere".

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::lrr::{percent, standing, Standing};
use crate::store::ReportCycle;

/// The agent of replies not queued through hourglass.
pub const ELSEWHERE: &str = "sent elsewhere";

/// The figures of one instance, channel or agent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Row {
    pub name: String,
    /// Customer messages that opened a cycle; for an agent, the cycles
    /// their reply closed.
    pub volume: i64,
    pub answered: i64,
    pub first_response_p50_s: Option<i64>,
    pub first_response_p90_s: Option<i64>,
    /// Past the thread's own deadline, answered late or not at all.
    pub breaches: i64,
    /// Amazon's measure: answered after 24 h or not at all.
    pub late: i64,
    pub on_time: i64,
    pub late_response_rate: Option<f64>,
    /// Cycles opened (agents: replies) per hour of the day, 0..23, in the
    /// report's time zone.
    pub hours: Vec<i64>,
    /// The three busiest hours, busiest first.
    pub busiest_hours: Vec<u32>,
}

/// One day of the period.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Day {
    /// `YYYY-MM-DD` in the report's time zone.
    pub day: String,
    pub volume: i64,
    pub late: i64,
}

/// `hourglass report`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The IANA time zone of days and hours.
    pub timezone: String,
    pub total: Row,
    pub instances: Vec<Row>,
    pub channels: Vec<Row>,
    pub agents: Vec<Row>,
    pub days: Vec<Day>,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[derive(Default)]
struct Acc {
    volume: i64,
    times: Vec<i64>,
    breaches: i64,
    late: i64,
    on_time: i64,
    hours: [i64; 24],
}

impl Acc {
    fn row(mut self, name: &str) -> Row {
        self.times.sort_unstable();
        let mut order: Vec<u32> = (0..24).filter(|h| self.hours[*h as usize] > 0).collect();
        order.sort_by_key(|h| (std::cmp::Reverse(self.hours[*h as usize]), *h));
        order.truncate(3);
        Row {
            name: name.to_owned(),
            volume: self.volume,
            answered: self.times.len() as i64,
            first_response_p50_s: percentile(&self.times, 0.5),
            first_response_p90_s: percentile(&self.times, 0.9),
            breaches: self.breaches,
            late: self.late,
            on_time: self.on_time,
            late_response_rate: (self.late + self.on_time > 0)
                .then(|| self.late as f64 / (self.late + self.on_time) as f64),
            hours: self.hours.to_vec(),
            busiest_hours: order,
        }
    }
}

/// The report from the cycles opened in `(from, to]`; `due_of` gives a
/// cycle's deadline under its thread's policy.
pub fn compute(
    cycles: &[ReportCycle],
    due_of: &mut dyn FnMut(&ReportCycle) -> DateTime<Utc>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
) -> Report {
    let mut total = Acc::default();
    let mut instances: BTreeMap<String, Acc> = BTreeMap::new();
    let mut channels: BTreeMap<String, Acc> = BTreeMap::new();
    let mut agents: BTreeMap<String, Acc> = BTreeMap::new();
    let mut days: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    // Every day of the period, also the quiet ones.
    let mut d = from.with_timezone(&tz).date_naive();
    let last = to.with_timezone(&tz).date_naive();
    while d <= last {
        days.insert(d.format("%Y-%m-%d").to_string(), (0, 0));
        d = match d.succ_opt() {
            Some(n) => n,
            None => break,
        };
    }
    for rc in cycles {
        let c = &rc.cycle;
        let due = due_of(rc);
        let breach = match (c.answered_at, c.no_response_needed_at) {
            (Some(a), _) => a > due,
            (None, Some(m)) => m > due,
            (None, None) => to > due,
        };
        let st = standing(c, to);
        let opened = c.started_at.with_timezone(&tz);
        let hour = opened.hour() as usize;
        let key = opened.date_naive().format("%Y-%m-%d").to_string();
        let day = days.entry(key).or_default();
        day.0 += 1;
        if st == Some(Standing::Late) {
            day.1 += 1;
        }
        for acc in [
            &mut total,
            instances.entry(rc.instance.clone()).or_default(),
            channels.entry(rc.channel.clone()).or_default(),
        ] {
            acc.volume += 1;
            acc.hours[hour] += 1;
            add(acc, c.answered_at.map(|a| a - c.started_at), breach, st);
        }
        if let Some(a) = c.answered_at {
            let agent = rc.agent.as_deref().unwrap_or(ELSEWHERE);
            let acc = agents.entry(agent.to_owned()).or_default();
            acc.volume += 1;
            acc.hours[a.with_timezone(&tz).hour() as usize] += 1;
            add(acc, Some(a - c.started_at), breach, st);
        }
    }
    let rows = |m: BTreeMap<String, Acc>| m.into_iter().map(|(k, a)| a.row(&k)).collect();
    Report {
        from,
        to,
        timezone: tz.name().to_owned(),
        total: total.row("all"),
        instances: rows(instances),
        channels: rows(channels),
        agents: rows(agents),
        days: days
            .into_iter()
            .map(|(day, (volume, late))| Day { day, volume, late })
            .collect(),
    }
}

fn add(acc: &mut Acc, took: Option<Duration>, breach: bool, st: Option<Standing>) {
    if let Some(t) = took {
        acc.times.push(t.num_seconds());
    }
    if breach {
        acc.breaches += 1;
    }
    match st {
        Some(Standing::Late) => acc.late += 1,
        Some(Standing::OnTime) => acc.on_time += 1,
        _ => {}
    }
}

fn secs(v: Option<i64>) -> String {
    v.map(|s| crate::duration::format_compact(std::time::Duration::from_secs(s.max(0) as u64)))
        .unwrap_or_else(|| "-".into())
}

fn hours_label(h: &[u32]) -> String {
    h.iter()
        .map(|h| format!("{h:02}:00"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One line per row, `group` being `total`, `instance`, `channel` or
/// `agent`; times in seconds, the rate as a fraction.
pub fn csv(r: &Report) -> String {
    let mut out = String::from(
        "group,name,volume,answered,first_response_p50_s,first_response_p90_s,breaches,late,on_time,late_response_rate,busiest_hours\n",
    );
    let groups = [
        ("total", std::slice::from_ref(&r.total)),
        ("instance", r.instances.as_slice()),
        ("channel", r.channels.as_slice()),
        ("agent", r.agents.as_slice()),
    ];
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    for (group, rows) in groups {
        for row in rows {
            let _ = writeln!(
                out,
                "{group},{},{},{},{},{},{},{},{},{},{}",
                csv_field(&row.name),
                row.volume,
                row.answered,
                opt(row.first_response_p50_s),
                opt(row.first_response_p90_s),
                row.breaches,
                row.late,
                row.on_time,
                row.late_response_rate
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_default(),
                hours_label(&row.busiest_hours),
            );
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart: the bars in inline SVG stretched to the width, the labels
/// in HTML under it (so that text is never stretched with the bars). One
/// bar per value; the second value is drawn over the first's foot (the
/// late part); a label under every `label_every`th bar.
fn bar_chart(title: &str, bars: &[(String, i64, i64)], label_every: usize) -> String {
    let (w, h) = (600.0_f64, 150.0_f64);
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let n = bars.len().max(1);
    let slot = w / n as f64;
    let bar = (slot * 0.75).max(1.0);
    let mut svg = format!(
        "<div class=\"chart-wrap\"><div class=\"ymax\">{max}</div>\
         <svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\" \
         preserveAspectRatio=\"none\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#bbb\" stroke-width=\"2\"/>",
        esc(title),
    );
    for (i, (label, v, late)) in bars.iter().enumerate() {
        let x = i as f64 * slot + (slot - bar) / 2.0;
        let bh = *v as f64 / max as f64 * h;
        let lh = *late as f64 / max as f64 * h;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"#4a7bd0\"><title>{}: {v}</title></rect>",
            h - bh,
            esc(label)
        );
        if *late > 0 {
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{lh:.1}\" fill=\"#d0443a\"><title>{}: {late} late</title></rect>",
                h - lh,
                esc(label)
            );
        }
    }
    svg.push_str("</svg><div class=\"axis\">");
    let step = label_every.max(1);
    for (i, (label, _, _)) in bars.iter().enumerate().filter(|(i, _)| i % step == 0) {
        // Centred under its bar; at the edges, flush with the chart.
        let centre = (i as f64 + 0.5) / n as f64 * 100.0;
        let place = if centre < 6.0 {
            "left:0;transform:none".to_owned()
        } else if centre > 94.0 {
            "right:0;transform:none".to_owned()
        } else {
            format!("left:{centre:.2}%")
        };
        let _ = write!(svg, "<span style=\"{place}\">{}</span>", esc(label));
    }
    svg.push_str("</div></div>");
    svg
}

fn rate_cell(v: Option<f64>) -> String {
    let class = match v {
        Some(x) if x >= 0.10 => "bad",
        Some(x) if x >= 0.04 => "warn",
        Some(_) => "ok",
        None => "none",
    };
    format!("<td class=\"num rate {class}\">{}</td>", percent(v))
}

fn table(title: &str, first: &str, rows: &[Row]) -> String {
    let mut t = format!(
        "<section><h2>{}</h2><div class=\"scroll\"><table><thead><tr><th>{}</th>\
         <th class=\"num\">Messages</th><th class=\"num\">Late Response Rate</th>\
         <th class=\"num\">Breaches</th><th class=\"num\">Answered</th>\
         <th class=\"num\">First reply p50</th><th class=\"num\">p90</th>\
         <th>Busiest hours</th></tr></thead><tbody>",
        esc(title),
        esc(first)
    );
    if rows.is_empty() {
        t.push_str("<tr><td colspan=\"8\">None in this period.</td></tr>");
    }
    for r in rows {
        let _ = write!(
            t,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td>{}<td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&r.name),
            r.volume,
            rate_cell(r.late_response_rate),
            r.breaches,
            r.answered,
            secs(r.first_response_p50_s),
            secs(r.first_response_p90_s),
            hours_label(&r.busiest_hours),
        );
    }
    t.push_str("</tbody></table></div></section>");
    t
}

/// One self-contained page: inline CSS and SVG, no script.
pub fn html(r: &Report) -> String {
    let period = format!(
        "{} – {} ({})",
        r.from.with_timezone(&tz_of(r)).format("%Y-%m-%d %H:%M"),
        r.to.with_timezone(&tz_of(r)).format("%Y-%m-%d %H:%M"),
        r.timezone
    );
    let t = &r.total;
    let card = |label: &str, value: String, class: &str| {
        format!(
            "<div class=\"card {class}\"><div class=\"label\">{}</div><div class=\"value\">{}</div></div>",
            esc(label),
            esc(&value)
        )
    };
    let lrr_class = match t.late_response_rate {
        Some(x) if x >= 0.10 => "bad",
        Some(x) if x >= 0.04 => "warn",
        _ => "",
    };
    let days: Vec<(String, i64, i64)> = r
        .days
        .iter()
        .map(|d| {
            (
                d.day.get(5..).unwrap_or(&d.day).to_owned(),
                d.volume,
                d.late,
            )
        })
        .collect();
    let label_every = (days.len() / 4).max(1);
    let hours: Vec<(String, i64, i64)> = t
        .hours
        .iter()
        .enumerate()
        .map(|(h, v)| (format!("{h:02}"), *v, 0))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>hourglass report {period}</title><style>{CSS}</style></head><body><main>\
<h1>Customer replies report</h1><p class=\"period\">{period}</p>\
<div class=\"cards\">{}{}{}{}{}</div>\
<section><h2>Customer messages per day</h2><p class=\"legend\"><span class=\"sw blue\"></span>messages \
<span class=\"sw red\"></span>answered after 24 h or not at all</p>{}</section>\
<section><h2>Busiest hours</h2><p class=\"legend\">Customer messages by hour of the day ({})</p>{}</section>\
{}{}{}\
<footer>Late Response Rate: share of customer messages answered after 24 h or not at all (Amazon's measure; \
target under 10 %), messages marked “no response needed” in time excluded, auto-responses not counted as answers. \
Breaches: past each thread's own deadline. Generated by hourglass.</footer>\
</main></body></html>\n",
        card("Customer messages", t.volume.to_string(), ""),
        card("Answered", t.answered.to_string(), ""),
        card("First reply (median)", secs(t.first_response_p50_s), ""),
        card("Breaches", t.breaches.to_string(), if t.breaches > 0 { "warn" } else { "" }),
        card("Late Response Rate", percent(t.late_response_rate), lrr_class),
        bar_chart("Customer messages per day", &days, label_every),
        esc(&r.timezone),
        bar_chart("Busiest hours", &hours, 3),
        table("By instance", "Instance", &r.instances),
        table("By channel", "Channel", &r.channels),
        table("By agent", "Agent", &r.agents),
    )
}

fn tz_of(r: &Report) -> Tz {
    r.timezone.parse().unwrap_or(Tz::UTC)
}

const CSS: &str = "\
body{margin:0;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;background:#f6f7f9}\
main{max-width:960px;margin:0 auto;padding:16px}\
h1{font-size:1.4em;margin:0 0 4px}h2{font-size:1.1em;margin:0 0 8px}\
.period{color:#555;margin:0 0 16px}\
.cards{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:16px}\
*{box-sizing:border-box}\
.card{flex:1 1 130px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}\
.card .label{font-size:.8em;color:#555}.card .value{font-size:1.5em;font-weight:600}\
.card.warn .value{color:#a65f00}.card.bad .value{color:#c0271c}\
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin-bottom:16px}\
.chart-wrap{position:relative;padding:16px 0 22px}\
.chart{width:100%;height:150px;display:block}\
.ymax{position:absolute;top:0;left:0;font-size:.75em;color:#666}\
.ymax::before{content:'max '}\
.axis{position:relative;height:18px;font-size:.75em;color:#444}\
.axis span{position:absolute;top:4px;transform:translateX(-50%);white-space:nowrap}\
.legend{font-size:.85em;color:#555;margin:0 0 6px}\
.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px}.sw.blue{background:#4a7bd0}.sw.red{background:#d0443a}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.9em}\
th,td{padding:6px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}\
thead th{font-size:.8em;color:#555}\
.num{text-align:right}\
.rate.bad{color:#c0271c;font-weight:600}.rate.warn{color:#a65f00}.rate.ok{color:#22753a}\
footer{font-size:.8em;color:#666;padding:8px 0}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lrr::Cycle;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    fn rc(
        instance: &str,
        channel: &str,
        s: i64,
        a: Option<i64>,
        agent: Option<&str>,
    ) -> ReportCycle {
        ReportCycle {
            instance: instance.into(),
            channel: channel.into(),
            marketplace: None,
            cycle: Cycle {
                started_at: t(s),
                answered_at: a.map(t),
                no_response_needed_at: None,
            },
            agent: agent.map(str::to_owned),
        }
    }

    #[test]
    fn figures_per_instance_channel_and_agent() {
        let cycles = vec![
            rc("amazon-eu", "amazon", 1, Some(2), Some("ana")), // 1 h, on time
            rc("amazon-eu", "amazon", 1, Some(31), Some("ana")), // 30 h: late, breach
            rc("amazon-eu", "amazon", 10, None, None),          // unanswered, late
            rc("shop", "email", 14, Some(18), None),            // 4 h, sent elsewhere
            rc("shop", "email", 95, None, None),                // pending at the end
        ];
        // Email threads have an 8 h deadline here, Amazon 24 h.
        let mut due = |c: &ReportCycle| {
            c.cycle.started_at + Duration::hours(if c.channel == "email" { 8 } else { 24 })
        };
        let r = compute(&cycles, &mut due, t(0), t(100), Tz::UTC);
        assert_eq!(r.total.volume, 5);
        assert_eq!(r.total.answered, 3);
        assert_eq!((r.total.late, r.total.on_time), (2, 2));
        assert_eq!(r.total.late_response_rate, Some(0.5));
        assert_eq!(r.total.breaches, 2);
        assert_eq!(r.total.first_response_p50_s, Some(4 * 3600));
        assert_eq!(r.total.first_response_p90_s, Some(30 * 3600));
        assert_eq!(r.total.busiest_hours, vec![1, 10, 14]);
        let amazon = &r.instances[0];
        assert_eq!(
            (amazon.name.as_str(), amazon.volume, amazon.breaches),
            ("amazon-eu", 3, 2)
        );
        assert_eq!(amazon.late_response_rate, Some(2.0 / 3.0));
        let email = &r.channels[1];
        assert_eq!(
            (email.name.as_str(), email.volume, email.late),
            ("email", 2, 0)
        );
        assert_eq!(email.late_response_rate, Some(0.0));
        let names: Vec<&str> = r.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["ana", ELSEWHERE]);
        assert_eq!((r.agents[0].volume, r.agents[0].breaches), (2, 1));
        assert_eq!(r.agents[0].busiest_hours, vec![2, 7]);
        // Every day of the period, the quiet ones too.
        assert_eq!(r.days.len(), 5);
        assert_eq!((r.days[0].volume, r.days[0].late), (4, 2));
        assert_eq!(r.days[2].volume, 0);

        let csv = csv(&r);
        assert!(
            csv.contains("\ninstance,amazon-eu,3,2,3600,108000,2,2,1,0.6667,01:00 10:00\n"),
            "{csv}"
        );
        assert!(
            csv.contains("\nagent,sent elsewhere,1,1,14400,14400,0,0,1,0.0000,18:00\n"),
            "{csv}"
        );
        let html = html(&r);
        assert!(html.contains("<svg"), "charts inline");
        assert!(!html.contains("<script"), "no script");
        assert!(!html.contains("src=\"http"), "no external asset");
        assert!(html.contains("66.7%"));
    }

    #[test]
    fn days_and_hours_follow_the_time_zone() {
        let cycles = vec![rc("a", "amazon", 23, Some(24), Some("bo"))];
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let r = compute(
            &cycles,
            &mut |c| c.cycle.started_at + Duration::hours(24),
            t(0),
            t(48),
            tz,
        );
        // 23:00 UTC on March 1st is midnight on March 2nd in Berlin.
        assert_eq!(r.total.busiest_hours, vec![0]);
        let day = r.days.iter().find(|d| d.volume == 1).unwrap();
        assert_eq!(day.day, "2026-03-02");
    }
}
