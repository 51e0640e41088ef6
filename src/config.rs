//! Configuration: one TOML file plus `connectors.d/*.toml`, each of those
//! holding the keys of one `[[instances]]` entry.
//!
//! Unknown keys are errors, every problem is reported as
//! `FILE:LINE:COL: message`, and secrets are only ever references.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use hourglass_connector::secret::SecretRef;
use hourglass_connector::{Connector, InstanceSettings, SettingsProblem};
use serde::Deserialize;
use toml::Spanned;

pub use crate::alerts::AlertsConfig;
use crate::clock::{BusinessHours, Policy};
use crate::duration::Dur;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where threads, messages, the outbox and alerts are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// The reply clock: default window and alert thresholds.
    #[serde(default)]
    pub clock: ClockConfig,
    /// Connector instances: one per platform account.
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// Alert sinks and routing.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The HTTP API, webhooks, metrics and web inbox.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Daemon-wide settings.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Where reply templates live.
    #[serde(default)]
    pub templates: TemplatesConfig,
    /// The reply outbox: lease, polling, retries.
    #[serde(default)]
    pub outbox: crate::outbox::OutboxConfig,
    /// Files the configuration was read from, for messages.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///path/to/hourglass.db` (created if missing) or
    /// `postgres://user@host/db`. Passwords belong in `password`, not here.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Password for PostgreSQL, by reference (`env:PGPASSWORD`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Maximum connections in the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Key that seals secrets hourglass learns at run time (X's rotated
    /// refresh token) before they are stored, by reference.
    #[serde(default)]
    pub secret_key: Option<SecretRef>,
}

fn default_store_url() -> String {
    "sqlite:///var/lib/hourglass/hourglass.db".into()
}
fn default_max_connections() -> u32 {
    8
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
            password: None,
            max_connections: default_max_connections(),
            secret_key: None,
        }
    }
}

/// `[clock]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// Time allowed for a reply, counted from the first unanswered customer
    /// message. Amazon counts 24 h on the wall clock, weekends included.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Remaining times at which alerts fire, besides the breach itself.
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<Dur>,
    /// Policies per channel (`[clock.channels.email]`), overriding `window`.
    #[serde(default)]
    pub channels: BTreeMap<String, PolicyConfig>,
}

fn default_window() -> Dur {
    Dur::from_secs(24 * 3600)
}
fn default_thresholds() -> Vec<Dur> {
    vec![
        Dur::from_secs(6 * 3600),
        Dur::from_secs(3600),
        Dur::from_secs(15 * 60),
    ]
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            window: default_window(),
            thresholds: default_thresholds(),
            channels: BTreeMap::new(),
        }
    }
}

/// A clock policy for a channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Reply window for this channel.
    pub window: Option<Dur>,
    /// Count only business hours instead of the wall clock.
    pub business_hours: Option<BusinessHours>,
}

/// `[[instances]]`: one platform account. The keys every instance shares
/// are here; the rest belong to the platform (`type`), which checks them
/// (unknown keys included) when the config is loaded.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceConfig {
    /// Unique name (`amazon-eu`); used in logs, the CLI and the store.
    pub name: Spanned<String>,
    /// The platform: one of the types in src/registry.rs.
    #[serde(rename = "type", default)]
    pub kind: Option<Spanned<String>>,
    /// When to poll: cron with 5 fields (`*/2 * * * *`) or 6 with seconds.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// Set to false to keep the instance configured but idle.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Reply window for this instance, overriding the channel's.
    #[serde(default)]
    pub window: Option<Dur>,
    /// Business hours for this instance, overriding the channel's.
    #[serde(default)]
    pub business_hours: Option<BusinessHours>,
    /// Free labels for alert routing.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The watchdog alerts when no message has arrived for this long
    /// (`"6h"`), whatever the instance's usual rhythm.
    #[serde(default)]
    pub expect_within: Option<Dur>,
    /// Rate limit for sending replies (`{ per_second = 1.0, burst = 5 }`),
    /// overriding the platform's published quota that hourglass uses by
    /// default.
    #[serde(default)]
    pub rate_limit: Option<crate::outbox::RateLimitConfig>,
    /// The platform's own keys (`[instances.imap]`, `[instances.ebay]`,
    /// ...), read by the platform named in `type` (src/registry.rs).
    #[serde(flatten)]
    pub platform_keys: toml::Table,
    /// `platform_keys` as the platform read them; set by [`Config::load`].
    #[serde(skip)]
    pub settings: Option<Arc<dyn InstanceSettings>>,
    /// The file and line of its `name`, for the admin page; set by
    /// [`Config::load`].
    #[serde(skip)]
    pub location: Option<(PathBuf, usize)>,
}

fn default_true() -> bool {
    true
}

impl InstanceConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The platform type (`amazon`).
    pub fn kind(&self) -> &str {
        self.kind.as_ref().map_or("", |k| k.get_ref())
    }

    /// The platform's settings, read when the config was loaded.
    pub fn settings(&self) -> Result<&dyn InstanceSettings, String> {
        self.settings.as_deref().ok_or_else(|| {
            format!(
                "instance {:?}: its {} settings were not read",
                self.name(),
                self.kind()
            )
        })
    }

    /// The channel of the instance's threads (`amazon`, `email`, ...).
    pub fn channel(&self) -> String {
        match &self.settings {
            Some(s) => s.channel(self.kind()),
            None => self.kind().to_owned(),
        }
    }

    /// The connector of this instance. Errors name the instance and never
    /// contain a secret.
    pub fn build_connector(&self) -> Result<Arc<dyn Connector>, String> {
        let name = self.name();
        self.settings()?
            .build(self.kind(), name)
            .map_err(|e| format!("instance {name:?}: {e}"))
    }

    /// How fast replies may leave: `rate_limit`, else the platform's quota.
    pub fn send_quota(&self) -> Option<crate::outbox::RateLimitConfig> {
        self.rate_limit
            .or_else(|| self.settings.as_ref().and_then(|s| s.send_quota()))
    }

    /// The clock policy of this instance given the global clock config.
    pub fn policy(&self, clock: &ClockConfig, channel: &str) -> Policy {
        let channel_policy = clock.channels.get(channel);
        let window = self
            .window
            .or_else(|| channel_policy.and_then(|p| p.window))
            .unwrap_or(clock.window);
        let business_hours = self
            .business_hours
            .clone()
            .or_else(|| channel_policy.and_then(|p| p.business_hours.clone()));
        Policy {
            window: window.chrono(),
            business_hours,
        }
    }

    /// The cron schedule in the 6/7-field form the `cron` crate reads.
    pub fn cron_schedule(&self) -> Result<cron::Schedule, String> {
        parse_schedule(self.schedule_text())
    }

    /// The schedule as written: the instance's, else its platform's
    /// default, else the daemon's.
    pub fn schedule_text(&self) -> &str {
        self.schedule
            .as_ref()
            .map(|s| s.get_ref().as_str())
            .or_else(|| self.settings.as_ref().and_then(|s| s.default_schedule()))
            .unwrap_or(DEFAULT_SCHEDULE)
    }
}

/// Poll every two minutes unless told otherwise.
pub const DEFAULT_SCHEDULE: &str = "*/2 * * * *";

/// Accepts the usual 5-field cron form (minute first) as well as the
/// 6/7-field form with seconds that the `cron` crate reads.
pub fn parse_schedule(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let normalized = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_owned()
    };
    normalized
        .parse::<cron::Schedule>()
        .map_err(|e| format!("invalid cron schedule {text:?}: {e}"))
}

pub use crate::http::config::HttpConfig;

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `hourglass=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// How long shutdown waits for in-flight polls and sends.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// First backoff after a failure; doubles up to `max_backoff`.
    #[serde(default = "default_min_backoff")]
    pub min_backoff: Dur,
    /// Longest backoff between retries of a failing instance.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
    /// Directory of per-instance files; relative to the main file.
    #[serde(default = "default_connectors_dir")]
    pub connectors_dir: PathBuf,
    /// Under systemd's watchdog (`WatchdogSec=`): one poll, alert pass or
    /// send busy for longer than this means the daemon is wedged; it stops
    /// answering the watchdog and systemd restarts it.
    #[serde(default = "default_watchdog_busy_limit")]
    pub watchdog_busy_limit: Dur,
    /// Lease period of an instance when several daemons share one
    /// PostgreSQL store: a daemon that dies or hangs loses its instances to
    /// the others within about this long. Heartbeats and renewals run every
    /// third of it.
    #[serde(default = "default_lease")]
    pub lease: Dur,
}

fn default_shutdown_timeout() -> Dur {
    Dur::from_secs(10)
}
fn default_min_backoff() -> Dur {
    Dur::from_secs(2)
}
fn default_max_backoff() -> Dur {
    Dur::from_secs(300)
}
fn default_watchdog_busy_limit() -> Dur {
    Dur::from_secs(10 * 60)
}
fn default_lease() -> Dur {
    Dur::from_secs(30)
}
fn default_connectors_dir() -> PathBuf {
    PathBuf::from("connectors.d")
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_timeout: default_shutdown_timeout(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            connectors_dir: default_connectors_dir(),
            watchdog_busy_limit: default_watchdog_busy_limit(),
            lease: default_lease(),
        }
    }
}

/// `[templates]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Folder of reply templates (`NAME.LANG.txt` or `NAME.txt`), relative
    /// to the main file.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// A problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// One source file, kept for locating problems.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn diag_at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let (line, col) = line_col(&self.text, offset);
        Diagnostic {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Turns a TOML/serde error into a located diagnostic. For an unknown
    /// field, toml points at the enclosing table; we find the key itself.
    fn diag_from_toml(&self, err: &toml::de::Error) -> Diagnostic {
        let span = err.span().unwrap_or(0..0);
        let mut message = err.message().trim().to_owned();
        if message.is_empty() {
            // toml gives no words for some bytes it refuses (a bare
            // carriage return, found by tests/fuzz.rs): name the character.
            message = match self.text.get(span.start..).and_then(|t| t.chars().next()) {
                Some(c) if c.is_control() => {
                    format!(
                        "invalid TOML: control character U+{:04X} is not allowed here",
                        u32::from(c)
                    )
                }
                Some(c) => format!("invalid TOML: unexpected {c:?}"),
                None => "invalid TOML: unexpected end of file".to_owned(),
            };
        }
        let mut offset = span.start;
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            let region = self.text.get(span.clone()).unwrap_or("");
            if let Some(pos) = find_key(region, field) {
                offset = span.start + pos;
            } else if let Some(pos) = find_key(&self.text, field) {
                offset = pos;
            }
        }
        self.diag_at(offset, message)
    }

    /// The place of a string value, for errors found after parsing.
    fn find_value(&self, value: &str) -> usize {
        self.text.find(&format!("\"{value}\"")).unwrap_or(0)
    }
}

/// Hands an instance's own keys to its platform and keeps what it read;
/// every problem is located at its key.
fn read_platform_keys(inst: &mut InstanceConfig, src: &Source, diags: &mut Vec<Diagnostic>) {
    let name = inst.name().to_owned();
    // The instance's table starts at its `[[instances]]` header (in a
    // connectors.d file, at the top).
    let start = src.text[..inst.name.span().start]
        .rfind("[[instances]]")
        .unwrap_or(0);
    let Some(kind_at) = inst.kind.as_ref().map(|k| k.span().start) else {
        // A misspelt `type` is more likely than a forgotten one: show both.
        for (key, value) in &inst.platform_keys {
            if !value.is_table() {
                let at = locate(&src.text, start, key, None).unwrap_or(start);
                diags.push(src.diag_at(at, format!("unknown field `{key}`")));
            }
        }
        diags.push(src.diag_at(
            inst.name.span().start,
            format!(
                "instance {name:?} has no `type`; one of {}",
                crate::registry::kinds().join(", ")
            ),
        ));
        return;
    };
    let kind = inst.kind().to_owned();
    let Some(platform) = crate::registry::platform(&kind) else {
        diags.push(src.diag_at(
            kind_at,
            format!(
                "instance {name:?}: unknown type {kind:?}; this build knows {}",
                crate::registry::kinds().join(", ")
            ),
        ));
        return;
    };
    let problem_at = |p: &SettingsProblem| -> Diagnostic {
        let offset = locate(&src.text, start, &p.path, unknown_field(&p.message))
            .unwrap_or(inst.name.span().start);
        let message = p.message.trim().replace('\n', " ");
        let message = message.as_str();
        match unknown_field(message) {
            // At the top of the instance, the shared keys are known too.
            Some(key) if p.path.is_empty() => src.diag_at(
                offset,
                format!(
                    "unknown field `{key}` in instance {name:?} of type {kind} (known: {}{})",
                    SHARED_INSTANCE_KEYS.join(", "),
                    match platform_tables(message) {
                        t if t.is_empty() => String::new(),
                        t => format!(", {t}"),
                    }
                ),
            ),
            Some(_) => src.diag_at(offset, format!("{message} in instance {name:?}")),
            None => src.diag_at(offset, format!("instance {name:?}: {message}")),
        }
    };
    let settings = match platform.parse(inst.platform_keys.clone()) {
        Ok(s) => s,
        Err(p) => {
            diags.push(problem_at(&p));
            return;
        }
    };
    for p in settings.check(&kind) {
        diags.push(problem_at(&p));
    }
    // The token a consent flow writes may not exist before the account
    // is connected: say how to connect it, and let `connectors authorize`
    // run without it.
    let granted = settings
        .consent(&kind, &name)
        .and_then(Result::ok)
        .map(|c| c.target().0);
    for (key, r) in settings.secrets() {
        if let Err(e) = r.resolve() {
            if granted == Some(key) && CONNECTING.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let hint = if granted == Some(key) {
                format!(" (connect the account with `hourglass connectors authorize {name}`)")
            } else {
                String::new()
            };
            let at = locate(&src.text, start, key, None).unwrap_or(src.find_value(&r.to_string()));
            diags.push(src.diag_at(at, format!("instance {name:?}: {key}: {e}{hint}")));
        }
    }
    inst.settings = Some(settings);
}

/// Set by `connectors authorize`: the token its flow is about to write
/// need not resolve yet.
static CONNECTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets [`Config::load`] accept a missing token that a consent flow
/// writes (`hourglass connectors authorize`).
pub fn allow_missing_granted_tokens() {
    CONNECTING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The keys every instance has, whatever its type.
const SHARED_INSTANCE_KEYS: &[&str] = &[
    "name",
    "type",
    "schedule",
    "enabled",
    "window",
    "business_hours",
    "tags",
    "rate_limit",
];

/// `x` of serde's "unknown field `x`, expected ...".
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
}

/// The tables a platform knows, from serde's "expected one of `a`, `b`".
fn platform_tables(message: &str) -> String {
    message
        .split_once("expected ")
        .map(|(_, rest)| rest.trim_start_matches("one of ").replace('`', ""))
        .unwrap_or_default()
}

/// The offset of dotted key `path` (then of `field` inside it) in the
/// instance whose table starts at `start`: `imap.port` is found in
/// `[instances.imap]` or `imap = { port = ... }`.
fn locate(text: &str, start: usize, path: &str, field: Option<&str>) -> Option<usize> {
    let mut at = start;
    let mut found = false;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        at += find_key_or_table(&text[at..], seg)?;
        found = true;
    }
    if let Some(field) = field {
        if let Some(pos) = find_key_or_table(&text[at..], field) {
            return Some(at + pos);
        }
    }
    found.then_some(at)
}

/// Like [`find_key`], also finding `key` as the last part of a table
/// header (`[instances.key]`).
fn find_key_or_table(text: &str, key: &str) -> Option<usize> {
    let header = format!(".{key}]");
    let as_header = text.find(&header).map(|p| p + 1);
    match (find_key(text, key), as_header) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Byte offset of `key` written as a key (at a line start or after `{`/`,`).
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = text[from..].find(key) {
        let at = from + pos;
        let before = text[..at].trim_end_matches([' ', '\t']);
        let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
        let starts_key = before.is_empty()
            || before.ends_with('\n')
            || before.ends_with('{')
            || before.ends_with(',')
            || before.ends_with('.');
        if starts_key && (after.starts_with('=') || after.starts_with('.')) {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

impl Config {
    /// Reads the main file and `connectors.d/*.toml` beside it, checking
    /// everything that can be checked without the network.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let mut diags = Vec::new();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_owned(),
                line: 1,
                col: 1,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        let main = Source {
            path: path.to_owned(),
            text,
        };
        let mut config: Config = match toml::from_str(&main.text) {
            Ok(c) => c,
            Err(e) => return Err(Diagnostics(vec![main.diag_from_toml(&e)])),
        };
        let mut sources = vec![main];
        let mut origin: Vec<usize> = vec![0; config.instances.len()];

        let base = path.parent().unwrap_or(Path::new("."));
        let dir = base.join(&config.daemon.connectors_dir);
        if dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            for file in files {
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        diags.push(Diagnostic {
                            file: file.clone(),
                            line: 1,
                            col: 1,
                            message: format!("cannot read: {e}"),
                        });
                        continue;
                    }
                };
                let src = Source { path: file, text };
                match toml::from_str::<InstanceConfig>(&src.text) {
                    Ok(inst) => {
                        config.instances.push(inst);
                        origin.push(sources.len());
                    }
                    Err(e) => diags.push(src.diag_from_toml(&e)),
                }
                sources.push(src);
            }
        }
        if let Some(dir) = &config.templates.dir {
            if dir.is_relative() {
                config.templates.dir = Some(base.join(dir));
            }
        }

        validate(&mut config, &sources, &origin, &mut diags);
        config.sources = sources.iter().map(|s| s.path.clone()).collect();
        if diags.is_empty() {
            Ok(config)
        } else {
            Err(Diagnostics(diags))
        }
    }

    pub fn instance(&self, name: &str) -> Option<&InstanceConfig> {
        self.instances.iter().find(|i| i.name() == name)
    }
}

fn validate(
    config: &mut Config,
    sources: &[Source],
    origin: &[usize],
    diags: &mut Vec<Diagnostic>,
) {
    let main = &sources[0];
    for (i, inst) in config.instances.iter_mut().enumerate() {
        let src = &sources[origin.get(i).copied().unwrap_or(0)];
        read_platform_keys(inst, src, diags);
        let (line, _) = line_col(&src.text, inst.name.span().start);
        inst.location = Some((src.path.clone(), line));
    }
    let mut names = HashSet::new();
    for (i, inst) in config.instances.iter().enumerate() {
        let src = &sources[origin.get(i).copied().unwrap_or(0)];
        let name_at = inst.name.span().start;
        let name = inst.name();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            diags.push(src.diag_at(
                name_at,
                format!("instance name {name:?} must be letters, digits, '-', '_' or '.'"),
            ));
        }
        if !names.insert(name.to_owned()) {
            diags.push(src.diag_at(name_at, format!("instance name {name:?} is used twice")));
        }
        if let Some(s) = &inst.schedule {
            if let Err(e) = parse_schedule(s.get_ref()) {
                diags.push(src.diag_at(s.span().start, e));
            }
        }
    }
    for (i, t) in config.clock.thresholds.iter().enumerate() {
        if t.0 >= config.clock.window.0 {
            diags.push(main.diag_at(
                main.text.find("thresholds").unwrap_or(0),
                format!(
                    "threshold {} (#{}) is not shorter than the window {}",
                    t,
                    i + 1,
                    config.clock.window
                ),
            ));
        }
    }
    for (value, message) in config.alerts.problems() {
        diags.push(main.diag_at(main.find_value(&value), format!("alerts: {message}")));
    }
    for (value, message) in config.http.problems() {
        diags.push(main.diag_at(main.find_value(&value), format!("http: {message}")));
    }
    if let Some(pw) = &config.store.password {
        if let Err(e) = pw.resolve() {
            diags.push(main.diag_at(
                main.find_value(&pw.to_string()),
                format!("store.password: {e}"),
            ));
        }
    }
    if let Some(key) = &config.store.secret_key {
        if let Err(e) = key.resolve() {
            diags.push(main.diag_at(
                main.find_value(&key.to_string()),
                format!("store.secret_key: {e}"),
            ));
        }
    } else {
        for (i, inst) in config.instances.iter().enumerate() {
            if inst.settings.as_ref().is_some_and(|s| s.keeps_secrets()) {
                let src = &sources[origin.get(i).copied().unwrap_or(0)];
                diags.push(src.diag_at(
                    inst.name.span().start,
                    format!(
                        "instance {:?} ({}) rotates its refresh token on every use and needs [store] secret_key (by reference, e.g. \"credential:hourglass-store-key\") to keep the new one; without it the account would be locked out after a restart",
                        inst.name(),
                        inst.kind()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_is_reported_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[store]\nurl = \"sqlite:///tmp/x.db\"\n\n[clock]\nwindow = \"24h\"\n\n[[instances]]\nname = \"sim\"\ntype = \"simulated\"\n[instances.simulated]\nchannel = \"amazon\"\ncolour = \"blue\"\n";
        let path = write(dir.path(), "hourglass.toml", text);
        let err = Config::load(&path).unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.line, 12, "{err}");
        assert_eq!(d.col, 1);
        assert!(d.message.contains("colour"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_in_a_connectors_d_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "hourglass.toml", "[clock]\nwindow = \"24h\"\n");
        std::fs::create_dir(dir.path().join("connectors.d")).unwrap();
        write(
            &dir.path().join("connectors.d"),
            "sim.toml",
            "name = \"sim\"\ntype = \"simulated\"\nshedule = \"* * * * *\"\n",
        );
        let err = Config::load(&path).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("sim.toml:3:1:"), "{shown}");
    }

    #[test]
    fn connectors_d_adds_instances_and_names_must_be_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "hourglass.toml",
            "[[instances]]\nname = \"a\"\ntype = \"simulated\"\n",
        );
        std::fs::create_dir(dir.path().join("connectors.d")).unwrap();
        write(
            &dir.path().join("connectors.d"),
            "b.toml",
            "name = \"b\"\ntype = \"simulated\"\nschedule = \"*/5 * * * *\"\n",
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.instances.len(), 2);
        write(
            &dir.path().join("connectors.d"),
            "c.toml",
            "name = \"a\"\ntype = \"simulated\"\n",
        );
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(
            shown.contains("c.toml:1:8: instance name \"a\" is used twice"),
            "{shown}"
        );
    }

    #[test]
    fn bad_schedule_and_plain_secret_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "hourglass.toml",
            "[store]\npassword = \"hunter2\"\n",
        );
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(shown.contains(":2:12:"), "{shown}");
        assert!(!shown.contains("hunter2"), "a secret leaked: {shown}");

        let path = write(
            dir.path(),
            "hourglass.toml",
            "[[instances]]\nname = \"a\"\ntype = \"simulated\"\nschedule = \"every tuesday\"\n",
        );
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(shown.contains(":4:12: invalid cron schedule"), "{shown}");
    }

    #[test]
    fn an_unknown_type_names_the_types_this_build_knows() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "hourglass.toml",
            "[[instances]]\nname = \"a\"\ntype = \"carrier-pigeon\"\n",
        );
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(
            shown.contains(":3:8: instance \"a\": unknown type"),
            "{shown}"
        );
        assert!(
            shown.contains("email, maildir, amazon, ebay, simulated"),
            "{shown}"
        );
    }

    #[test]
    fn a_platform_key_with_a_wrong_value_is_located_at_that_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[instances]]\nname = \"shop\"\ntype = \"email\"\n\n[instances.imap]\nhost = \"imap.example.com\"\nport = \"nine\"\nusername = \"u\"\n";
        let path = write(dir.path(), "hourglass.toml", text);
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(shown.contains(":7:1: instance \"shop\":"), "{shown}");
        assert!(shown.contains("nine"), "{shown}");
    }

    #[test]
    fn a_platform_checks_its_own_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "hourglass.toml",
            "[[instances]]\nname = \"shop\"\ntype = \"email\"\n",
        );
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(shown.contains("needs an [instances.imap] table"), "{shown}");
        // A table of another platform is an unknown key, at its header.
        let path = write(
            dir.path(),
            "hourglass.toml",
            "[[instances]]\nname = \"sim\"\ntype = \"simulated\"\n\n[instances.imap]\nhost = \"h\"\n",
        );
        let shown = Config::load(&path).unwrap_err().to_string();
        assert!(
            shown.contains(":5:12: unknown field `imap` in instance \"sim\" of type simulated"),
            "{shown}"
        );
        assert!(
            shown.contains("schedule"),
            "the shared keys are listed: {shown}"
        );
    }

    #[test]
    fn every_registered_platform_reads_its_settings_and_builds() {
        // The registry is the one place a platform is named: whatever it
        // lists loads from config, has settings and a connector.
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "not-a-real-one").unwrap();
        let tables = |kind: &str| {
            match kind {
            "email" => "[instances.imap]\nhost = \"127.0.0.1\"\nusername = \"u\"\n".to_owned(),
            "maildir" | "amazon" => {
                format!("[instances.maildir]\npath = \"{}\"\n", maildir.display())
            }
            "ebay" => format!(
                "[instances.ebay]\nclient_id = \"app\"\nclient_secret = \"file:{0}\"\nrefresh_token = \"file:{0}\"\n",
                secret.display()
            ),
            "telegram" => {
                let token = dir.path().join("tg-token");
                std::fs::write(&token, "123:abc").unwrap();
                format!(
                    "[instances.telegram]\nbot_token = \"file:{}\"\n",
                    token.display()
                )
            }
            // X rotates refresh tokens: the store must be able to keep them.
            "x" => format!(
                "[instances.x]\nclient_id = \"app\"\nrefresh_token = \"file:{0}\"\n\n[store]\nsecret_key = \"file:{0}\"\n",
                secret.display()
            ),
            "messenger" | "instagram" | "whatsapp" => format!(
                "[instances.meta]\napp_secret = \"file:{0}\"\nverify_token = \"file:{0}\"\naccess_token = \"file:{0}\"\n{1} = \"104857600000001\"\n",
                secret.display(),
                if kind == "whatsapp" { "phone_number_id" } else { "page_id" }
            ),
            _ => String::new(),
        }
        };
        for kind in crate::registry::kinds() {
            let path = write(
                dir.path(),
                "hourglass.toml",
                &format!(
                    "[[instances]]\nname = \"x\"\ntype = \"{kind}\"\n{}",
                    tables(kind)
                ),
            );
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let inst = &config.instances[0];
            let conn = inst
                .build_connector()
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(conn.instance(), "x");
            assert_eq!(conn.channel(), inst.channel(), "{kind}");
        }
    }

    #[test]
    fn five_and_six_field_schedules() {
        assert!(parse_schedule("*/2 * * * *").is_ok());
        assert!(parse_schedule("0 9 * * MON-FRI").is_ok());
        assert!(parse_schedule("*/5 * * * * *").is_ok());
        assert!(parse_schedule("61 * * * *").is_err());
    }

    #[test]
    fn instance_policy_overrides_channel_and_default() {
        let mut clock = ClockConfig::default();
        clock.channels.insert(
            "email".into(),
            PolicyConfig {
                window: Some(Dur::from_secs(8 * 3600)),
                business_hours: None,
            },
        );
        let inst: InstanceConfig = toml::from_str("name = \"m\"\ntype = \"email\"\n").unwrap();
        assert_eq!(
            inst.policy(&clock, "email").window,
            chrono::Duration::hours(8)
        );
        assert_eq!(
            inst.policy(&clock, "amazon").window,
            chrono::Duration::hours(24)
        );
        let inst: InstanceConfig =
            toml::from_str("name = \"m\"\ntype = \"email\"\nwindow = \"2h\"\n").unwrap();
        assert_eq!(
            inst.policy(&clock, "email").window,
            chrono::Duration::hours(2)
        );
    }
}
