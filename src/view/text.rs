//! The views as text tables for a terminal. Rendering only: the data comes
//! from [`super`]'s builders.

use crate::duration::format_left;

use super::{ConnectorStatus, Thread, ThreadDetail};

/// The deadline table of `hourglass threads` (and the demo).
pub fn threads(threads: &[Thread]) -> String {
    let mut out = format!(
        "{:>5}  {:<18}  {:<20}  {:<10}  {:<14}  {:<22}  {:<19}  {}\n",
        "ID", "STATUS", "DUE", "CHANNEL", "INSTANCE", "CUSTOMER", "ORDER", "SUBJECT"
    );
    for t in threads {
        let due = t
            .time_left_ms
            .map(format_left)
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:>5}  {:<18}  {:<20}  {:<10}  {:<14}  {:<22}  {:<19}  {}\n",
            t.id,
            t.status.as_str(),
            due,
            t.channel,
            truncate(&t.instance, 14),
            truncate(t.customer.as_deref().unwrap_or("-"), 22),
            t.order_id.as_deref().unwrap_or("-"),
            truncate(t.subject.as_deref().unwrap_or(""), 50),
        ));
    }
    out
}

/// `hourglass show ID`: the thread's header, its conversation, its outbox
/// entries and its audit log.
pub fn thread(detail: &ThreadDetail) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let t = &detail.thread;
    line(format!(
        "Thread {} · {} · {} · {}",
        t.id,
        t.instance,
        t.channel,
        t.status.as_str()
    ));
    line(format!(
        "Customer: {}",
        t.customer.as_deref().unwrap_or("-")
    ));
    if let Some(o) = &t.order_id {
        line(format!(
            "Order:    {o}{}",
            t.marketplace
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
    }
    line(format!("Subject:  {}", t.subject.as_deref().unwrap_or("-")));
    if let (Some(due), Some(left)) = (t.due_at, t.time_left_ms) {
        line(format!(
            "Due:      {} ({})",
            due.format("%Y-%m-%d %H:%M UTC"),
            format_left(left)
        ));
    }
    if let Some(w) = t.reply_window_closes_at {
        line(format!(
            "Platform reply window closes {}",
            w.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    if let Some(err) = &t.last_error {
        line(format!("Error:    {err}"));
    }
    for m in &detail.messages {
        line(format!(
            "\n--- {} {} {}{}",
            m.sent_at.format("%Y-%m-%d %H:%M"),
            m.direction,
            m.author.as_deref().unwrap_or(""),
            if m.automatic { " (automatic)" } else { "" }
        ));
        line(m.text.trim_end().to_owned());
        if let Some(at) = m.delivery_failed_at {
            line(format!(
                "[not delivered: {} (reported {})]",
                m.delivery_error
                    .as_deref()
                    .unwrap_or("the platform refused it"),
                at.format("%Y-%m-%d %H:%M UTC")
            ));
        }
    }
    for o in &detail.outbox {
        line(format!(
            "\n[outbox {} {}{}]",
            o.id,
            o.state,
            o.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    for a in &detail.audit {
        line(format!(
            "[{} {} {} {}]",
            a.at.format("%Y-%m-%d %H:%M"),
            a.actor,
            a.action,
            a.detail
        ));
    }
    out
}

/// `hourglass customers show`: who the customer is on each channel, and
/// their threads on all of them.
pub fn customer(c: &super::Customer) -> String {
    let mut out = format!(
        "Customer {} · {}\n",
        c.id,
        c.display_name.as_deref().unwrap_or("-")
    );
    for i in &c.identities {
        out.push_str(&format!(
            "  {}:{}{}  [{}]\n",
            i.channel,
            i.handle,
            i.display_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            i.keys.join(", ")
        ));
    }
    for s in &c.splits {
        out.push_str(&format!(
            "  split from {} (customer {}) by {} on {}\n",
            s.other,
            s.other_customer_id,
            s.actor,
            s.at.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    out.push('\n');
    out.push_str(&threads(&c.threads));
    out
}

/// `hourglass connectors list`.
pub fn connectors(rows: &[ConnectorStatus]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:<12} {:>8} {:>12}  LAST ERROR\n",
        "NAME", "TYPE", "STATE", "MESSAGES", "CALLS/24H"
    );
    for r in rows {
        let calls = match (r.api_calls_24h, r.api_call_budget) {
            (Some(n), Some(b)) => format!("{n}/{b}"),
            (Some(n), None) => n.to_string(),
            _ => "-".to_owned(),
        };
        let mut error = r.last_error.clone().unwrap_or_default();
        if let Some(at) = r.auth_alerted_at {
            error = format!(
                "{error} [admin alerted {}]",
                at.format("%Y-%m-%d %H:%M UTC")
            );
        }
        out.push_str(&format!(
            "{:<20} {:<10} {:<12} {:>8} {:>12}  {}\n",
            r.name, r.kind, r.state, r.messages_total, calls, error
        ));
        if let Some(u) = &r.usage {
            let n = |k: &str| u.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            out.push_str(&format!(
                "{:<20} today: {} calls, {} events read of a budget of {}\n",
                "",
                n("calls"),
                n("events"),
                n("budget")
            ));
        }
    }
    out
}

/// `s` cut to `n` characters, with an ellipsis when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `check-config --online`: one `OK`/`FAIL` line per item.
pub fn online_checks(checks: &[super::OnlineCheck]) -> String {
    let mut out = String::new();
    for c in checks {
        match (&c.error_kind, &c.error) {
            (_, None) => out.push_str(&format!("OK    {} {}\n", c.kind, c.name)),
            (kind, Some(e)) => out.push_str(&format!(
                "FAIL  {} {}: {}{e}\n",
                c.kind,
                c.name,
                kind.as_deref()
                    .map(|k| format!("{k}: "))
                    .unwrap_or_default()
            )),
        }
    }
    out
}
