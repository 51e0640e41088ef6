//! `[alerts]`: sinks, routes and digests.

use hourglass_connector::secret::SecretRef;
use hourglass_email::SmtpConfig;
use serde::Deserialize;

use super::quiet::QuietHours;
use crate::duration::Dur;
use chrono::{DateTime, Utc};

/// `[alerts]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where alerts go (`[[alerts.sinks]]`).
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Which sinks get which alerts (`[[alerts.routes]]`). Without routes,
    /// every sink gets every alert.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Scheduled summaries (`[[alerts.digests]]`).
    #[serde(default)]
    pub digests: Vec<DigestConfig>,
    /// Attempts per delivery before it is given up as failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The silent-channel watchdog (`[alerts.watchdog]`).
    #[serde(default)]
    pub watchdog: super::silence::WatchdogConfig,
    /// Warn before Amazon's Late Response Rate moves
    /// (`[alerts.late_response_rate]`); absent: no such alert.
    #[serde(default)]
    pub late_response_rate: Option<LateResponseAlertConfig>,
}

/// `[alerts.late_response_rate]`: one alert per instance and marketplace
/// when tomorrow's rate, if the messages awaiting now are not answered in
/// time, reaches `level` in any window (7, 30 or 90 days); again only after
/// it went back under. Routed like other alerts, with the route threshold
/// `"late_response_rate"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateResponseAlertConfig {
    /// The rate that alerts, `"10%"` (Amazon's target is under 10 %).
    pub level: String,
    /// How often the forecast is computed (one grouped query).
    #[serde(default = "default_late_response_every")]
    pub every: Dur,
}

fn default_late_response_every() -> Dur {
    Dur::from_secs(5 * 60)
}

fn default_max_attempts() -> u32 {
    12
}

/// One alert sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name, used by routes and digests.
    pub name: String,
    /// `email`, `webhook` or `telegram`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// email: recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// email: the SMTP server (`{ host, port, tls, from, username, password }`).
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// webhook: the URL, plain or by reference (`env:SLACK_WEBHOOK_URL`),
    /// since Slack and Teams URLs carry their own secret.
    #[serde(default)]
    pub url: Option<String>,
    /// webhook: `json` (the alert as JSON), `slack` (`{"text": ...}`) or
    /// `teams` (a MessageCard).
    #[serde(default)]
    pub format: WebhookFormat,
    /// webhook: HMAC-SHA256 key. Each delivery carries
    /// `X-Hourglass-Timestamp: <unix seconds>` and
    /// `X-Hourglass-Signature: sha256=<hex HMAC(secret, timestamp + "." + body)>`.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// telegram: the bot token, by reference.
    #[serde(default)]
    pub bot_token: Option<SecretRef>,
    /// telegram: the agents' chat id.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// telegram: Bot API base URL.
    #[serde(default = "default_telegram_api")]
    pub api_url: String,
}

fn default_telegram_api() -> String {
    "https://api.telegram.org".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Email,
    Webhook,
    Telegram,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Teams,
}

/// A routing rule: alerts matching every non-empty filter go to `sinks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Sinks that receive the matching alerts.
    pub sinks: Vec<String>,
    /// Only these instances.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Only these channels (`amazon`, `email`, ...).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Only these alert points: remaining times like `"1h"`, `"breach"`,
    /// `"error"` (a reply refused or bounced), `"auth"` (an instance's
    /// credentials were refused: the admin's alert), `"silence"` (the
    /// watchdog: an instance stopped delivering messages), `"store"` (the
    /// store's disk is full and ingest is paused: the admin's alert), or
    /// `"late_response_rate"` (the forecast reached its level). A route with `["breach"]` to
    /// other recipients is an escalation.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// Only instances carrying one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Quiet hours, `"22:00-07:00"` in `timezone`: this route's alerts are
    /// held in the store and sent as one summary per sink when they end.
    #[serde(default)]
    pub quiet: Option<String>,
    /// IANA time zone of `quiet` (`Europe/Berlin`); UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Alert points that still go out during quiet hours (`["breach"]`).
    #[serde(default)]
    pub except: Vec<String>,
}

/// A digest: on a cron schedule, what is due soon and what is breached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// Name, shown in the digest's title.
    pub name: String,
    /// Cron, 5 fields (`0 9 * * MON-FRI`) or 6 with seconds; UTC.
    pub schedule: String,
    /// Sinks that receive it.
    pub sinks: Vec<String>,
    /// Threads due within this much time are listed (breached ones always).
    #[serde(default = "default_digest_window")]
    pub due_within: Dur,
}

fn default_digest_window() -> Dur {
    Dur::from_secs(24 * 3600)
}

/// The canonical label of a route threshold (`"60m"` → `"1h"`).
pub fn normalize_threshold(label: &str) -> Result<String, String> {
    for special in [
        "breach",
        "error",
        "auth",
        "silence",
        "store",
        "late_response_rate",
    ] {
        if label.eq_ignore_ascii_case(special) {
            return Ok(special.into());
        }
    }
    let d: Dur = label.parse()?;
    Ok(crate::duration::format_compact(d.0))
}

impl RouteConfig {
    /// The route's quiet hours, if any (checked by [`AlertsConfig::problems`]).
    pub fn quiet_hours(&self) -> Option<QuietHours> {
        let spec = self.quiet.as_deref()?;
        QuietHours::parse(spec, self.timezone.as_deref()).ok()
    }

    /// When this route holds an alert at `threshold` fired at `now`: the
    /// end of its quiet hours; `None` to send now.
    pub fn held_until(&self, threshold: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let excepted = self
            .except
            .iter()
            .any(|e| normalize_threshold(e).is_ok_and(|e| e == threshold));
        if excepted {
            return None;
        }
        self.quiet_hours()?.ends_after(now)
    }

    pub fn matches(&self, instance: &str, channel: &str, threshold: &str, tags: &[String]) -> bool {
        (self.instances.is_empty() || self.instances.iter().any(|i| i == instance))
            && (self.channels.is_empty() || self.channels.iter().any(|c| c == channel))
            && (self.thresholds.is_empty()
                || self
                    .thresholds
                    .iter()
                    .any(|t| normalize_threshold(t).is_ok_and(|t| t == threshold)))
            && (self.tags.is_empty() || self.tags.iter().any(|t| tags.contains(t)))
    }
}

impl AlertsConfig {
    /// The sinks an alert goes to, each with the time until which quiet
    /// hours hold it (`None`: send now). A sink is held only when every
    /// matching route that names it holds the alert; then until the
    /// latest of their ends.
    pub fn route_at(
        &self,
        instance: &str,
        channel: &str,
        threshold: &str,
        tags: &[String],
        now: DateTime<Utc>,
    ) -> Vec<(String, Option<DateTime<Utc>>)> {
        if self.routes.is_empty() {
            return self.sinks.iter().map(|s| (s.name.clone(), None)).collect();
        }
        let mut out: Vec<(String, Option<DateTime<Utc>>)> = Vec::new();
        for r in self
            .routes
            .iter()
            .filter(|r| r.matches(instance, channel, threshold, tags))
        {
            let held = r.held_until(threshold, now);
            for s in &r.sinks {
                match out.iter_mut().find(|(name, _)| name == s) {
                    None => out.push((s.clone(), held)),
                    Some((_, until)) => {
                        *until = match (*until, held) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        }
                    }
                }
            }
        }
        out
    }

    /// The sinks an alert goes to.
    pub fn route(
        &self,
        instance: &str,
        channel: &str,
        threshold: &str,
        tags: &[String],
    ) -> Vec<String> {
        if self.routes.is_empty() {
            return self.sinks.iter().map(|s| s.name.clone()).collect();
        }
        let mut out: Vec<String> = Vec::new();
        for r in self
            .routes
            .iter()
            .filter(|r| r.matches(instance, channel, threshold, tags))
        {
            for s in &r.sinks {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// Problems found without the network, as (value to locate, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(l) = &self.late_response_rate {
            if let Err(e) = crate::lrr::parse_level(&l.level) {
                out.push((
                    l.level.clone(),
                    format!("alerts.late_response_rate.level: {e}"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sinks {
            if !names.insert(s.name.clone()) {
                out.push((
                    s.name.clone(),
                    format!("sink name {:?} is used twice", s.name),
                ));
            }
            let need = |ok: bool, what: &str, out: &mut Vec<(String, String)>| {
                if !ok {
                    out.push((s.name.clone(), format!("sink {:?} needs {what}", s.name)));
                }
            };
            match s.kind {
                SinkType::Email => {
                    need(!s.to.is_empty(), "`to` (recipients)", &mut out);
                    need(
                        s.smtp.is_some(),
                        "`smtp = { host, port, tls, from }`",
                        &mut out,
                    );
                }
                SinkType::Webhook => need(s.url.is_some(), "`url`", &mut out),
                SinkType::Telegram => {
                    need(s.bot_token.is_some(), "`bot_token`", &mut out);
                    need(s.chat_id.is_some(), "`chat_id`", &mut out);
                }
            }
            for secret in [&s.secret, &s.bot_token].into_iter().flatten() {
                if let Err(e) = secret.resolve() {
                    out.push((secret.to_string(), format!("sink {:?}: {e}", s.name)));
                }
            }
            for problem in hourglass_email::platform::mail_problems(None, s.smtp.as_ref()) {
                let value = s
                    .smtp
                    .as_ref()
                    .and_then(|m| m.ca_file.as_ref())
                    .map_or_else(|| s.name.clone(), |f| f.display().to_string());
                out.push((value, format!("sink {:?}: {}", s.name, problem.message)));
            }
            if let Some(pw) = s.smtp.as_ref().and_then(|m| m.password.as_ref()) {
                if let Err(e) = pw.resolve() {
                    out.push((pw.to_string(), format!("sink {:?}: {e}", s.name)));
                }
            }
            if let Some(url) = &s.url {
                if let Ok(r) = SecretRef::parse(url) {
                    if let Err(e) = r.resolve() {
                        out.push((url.clone(), format!("sink {:?}: {e}", s.name)));
                    }
                } else if !url.starts_with("http://") && !url.starts_with("https://") {
                    out.push((
                        url.clone(),
                        format!(
                            "sink {:?}: url must be http(s):// or a reference like env:NAME",
                            s.name
                        ),
                    ));
                }
            }
        }
        let known = |n: &String| self.sinks.iter().any(|s| &s.name == n);
        for r in &self.routes {
            for s in r.sinks.iter().filter(|s| !known(s)) {
                out.push((s.clone(), format!("route names unknown sink {s:?}")));
            }
            for t in r.thresholds.iter().chain(&r.except) {
                if let Err(e) = normalize_threshold(t) {
                    out.push((t.clone(), e));
                }
            }
            match &r.quiet {
                Some(q) => {
                    if let Err(e) = QuietHours::parse(q, r.timezone.as_deref()) {
                        let at = if e.starts_with("unknown time zone") {
                            r.timezone.clone().unwrap_or_default()
                        } else {
                            q.clone()
                        };
                        out.push((at, e));
                    }
                }
                None if r.timezone.is_some() || !r.except.is_empty() => out.push((
                    r.sinks.first().cloned().unwrap_or_default(),
                    "a route's `timezone` and `except` only apply with `quiet = \"22:00-07:00\"`"
                        .into(),
                )),
                None => {}
            }
        }
        for d in &self.digests {
            for s in d.sinks.iter().filter(|s| !known(s)) {
                out.push((
                    s.clone(),
                    format!("digest {:?} names unknown sink {s:?}", d.name),
                ));
            }
            if let Err(e) = crate::config::parse_schedule(&d.schedule) {
                out.push((d.schedule.clone(), e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_with_escalation() {
        let cfg: AlertsConfig = toml::from_str(
            r#"
            [[sinks]]
            name = "agents"
            type = "webhook"
            url = "http://127.0.0.1:1/a"
            [[sinks]]
            name = "managers"
            type = "webhook"
            url = "http://127.0.0.1:1/m"
            [[sinks]]
            name = "ebay-team"
            type = "webhook"
            url = "http://127.0.0.1:1/e"
            [[routes]]
            sinks = ["agents"]
            [[routes]]
            thresholds = ["breach"]
            sinks = ["managers"]
            [[routes]]
            channels = ["ebay"]
            thresholds = ["60m"]
            sinks = ["ebay-team"]
            "#,
        )
        .unwrap();
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        assert_eq!(cfg.route("a", "amazon", "1h", &[]), ["agents"]);
        assert_eq!(
            cfg.route("a", "amazon", "breach", &[]),
            ["agents", "managers"]
        );
        assert_eq!(cfg.route("e", "ebay", "1h", &[]), ["agents", "ebay-team"]);
        assert_eq!(cfg.route("e", "ebay", "6h", &[]), ["agents"]);
    }

    #[test]
    fn problems_are_found() {
        let cfg: AlertsConfig = toml::from_str(
            r#"
            [[sinks]]
            name = "mail"
            type = "email"
            [[routes]]
            sinks = ["nobody"]
            thresholds = ["soon"]
            [[digests]]
            name = "morning"
            schedule = "0 9 * * MON-FRI"
            sinks = ["mail"]
            "#,
        )
        .unwrap();
        let p: Vec<String> = cfg.problems().into_iter().map(|(_, m)| m).collect();
        assert!(p.iter().any(|m| m.contains("needs `to`")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needs `smtp")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("unknown sink \"nobody\"")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("invalid duration \"soon\"")),
            "{p:?}"
        );
    }

    #[test]
    fn quiet_hours_hold_a_sink_unless_excepted_or_routed_loudly_elsewhere() {
        let cfg: AlertsConfig = toml::from_str(
            r#"
            [[sinks]]
            name = "agents"
            type = "webhook"
            url = "http://127.0.0.1:1/a"
            [[sinks]]
            name = "oncall"
            type = "webhook"
            url = "http://127.0.0.1:1/o"
            [[routes]]
            sinks = ["agents"]
            quiet = "22:00-07:00"
            timezone = "Europe/Berlin"
            except = ["breach"]
            [[routes]]
            channels = ["ebay"]
            sinks = ["agents"]
            [[routes]]
            thresholds = ["auth"]
            sinks = ["oncall"]
            quiet = "23:00-06:00"
            "#,
        )
        .unwrap();
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let two_am = at("2026-12-01T01:00:00Z");
        let seven = Some(at("2026-12-01T06:00:00Z"));
        assert_eq!(
            cfg.route_at("a", "amazon", "1h", &[], two_am),
            [("agents".to_string(), seven)]
        );
        // A breach still pages.
        assert_eq!(
            cfg.route_at("a", "amazon", "breach", &[], two_am),
            [("agents".to_string(), None)]
        );
        // Another route without quiet hours sends to the same sink now.
        assert_eq!(
            cfg.route_at("e", "ebay", "1h", &[], two_am),
            [("agents".to_string(), None)]
        );
        // Daytime: nothing held.
        assert_eq!(
            cfg.route_at("a", "amazon", "1h", &[], at("2026-12-01T10:00:00Z")),
            [("agents".to_string(), None)]
        );
        // Admin alerts follow their own route's quiet hours (UTC).
        assert_eq!(
            cfg.route_at("a", "amazon", "auth", &[], two_am),
            [
                ("agents".to_string(), seven),
                ("oncall".to_string(), Some(at("2026-12-01T06:00:00Z")))
            ]
        );
    }

    #[test]
    fn bad_quiet_hours_are_problems() {
        let cfg: AlertsConfig = toml::from_str(
            r#"
            [[sinks]]
            name = "agents"
            type = "webhook"
            url = "http://127.0.0.1:1/a"
            [[routes]]
            sinks = ["agents"]
            quiet = "22:00-07:00"
            timezone = "Europe/Berlln"
            except = ["braech"]
            [[routes]]
            sinks = ["agents"]
            except = ["breach"]
            "#,
        )
        .unwrap();
        let p = cfg.problems();
        assert!(
            p.contains(&(
                "Europe/Berlln".into(),
                "unknown time zone \"Europe/Berlln\"".into()
            )),
            "{p:?}"
        );
        assert!(p.iter().any(|(v, _)| v == "braech"), "{p:?}");
        assert!(
            p.iter().any(|(_, m)| m.contains("only apply with `quiet")),
            "{p:?}"
        );
    }
}
