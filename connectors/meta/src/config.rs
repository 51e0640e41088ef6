//! `[instances.meta]`: the keys of DESIGN §6 "Connectors", a public
//! contract, shared by `type = "messenger"`, `"instagram"` and
//! `"whatsapp"`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use hourglass_connector::platform::{window_closed, InstanceSettings, RateLimit, SettingsProblem};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::Connector;
use serde::Deserialize;

use crate::{Kind, MetaConnector};

/// Send API: 300 messages per second per Page (Messenger Platform rate
/// limits). Ten at once, 290/s sustained: no second holds more than 300.
pub const MESSENGER_SEND_QUOTA: RateLimit = RateLimit::per_window(300, 1.0, 10);

/// Instagram messaging: 100 calls per second per professional account.
pub const INSTAGRAM_SEND_QUOTA: RateLimit = RateLimit::per_window(100, 1.0, 4);

/// Cloud API: 80 messages per second per business phone number.
pub const WHATSAPP_SEND_QUOTA: RateLimit = RateLimit::per_window(80, 1.0, 4);

/// Cloud API: about one message every 6 s to one WhatsApp user; faster
/// is answered with error 131056 (pair rate limit).
pub const WHATSAPP_PER_USER_QUOTA: RateLimit = RateLimit {
    per_second: 1.0 / 6.0,
    burst: 1,
};

/// How long after the customer's last message Messenger takes a reply
/// tagged `HUMAN_AGENT` (the free window is 24 h).
pub const HUMAN_AGENT_WINDOW: Duration = Duration::days(7);

/// The keys of a Meta instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSettings {
    /// `[instances.meta]`: the app, the Page or number (required).
    #[serde(default)]
    pub meta: Option<MetaConfig>,
}

/// `[instances.meta]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Graph API base URL, with its version.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The App ID of the Meta app: needed to connect a Page from hourglass
    /// (`connectors authorize NAME`, the admin page's Connect button).
    #[serde(default)]
    pub app_id: Option<String>,
    /// The Facebook Login dialog the seller is sent to when connecting.
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    /// The app secret, by reference: verifies `X-Hub-Signature-256` on
    /// every delivery.
    pub app_secret: SecretRef,
    /// The token the webhook subscription handshake must echo, by
    /// reference.
    pub verify_token: SecretRef,
    /// A Page access token (Messenger, Instagram) or a system user token
    /// (WhatsApp), by reference.
    pub access_token: SecretRef,
    /// Messenger: the Page id; Instagram: the Instagram account id.
    #[serde(default)]
    pub page_id: Option<String>,
    /// WhatsApp: the business phone number id.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    /// Messenger and Instagram: read the conversations API on start and
    /// on each scheduled poll, so that what came while hourglass was down
    /// is not missed.
    #[serde(default = "default_true")]
    pub backfill: bool,
    /// WhatsApp: approved message templates that `reply --template NAME`
    /// may send, also after the 24 h window.
    #[serde(default)]
    pub templates: BTreeMap<String, WhatsAppTemplate>,
}

/// `[instances.meta.templates.NAME]`: an approved WhatsApp template. The
/// text shown on the thread is hourglass's template NAME (the
/// `[templates]` folder); WhatsApp sends its own approved text with the
/// parameters filled in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppTemplate {
    /// The template's name at Meta, when it differs from NAME.
    #[serde(default)]
    pub name: Option<String>,
    /// Its language code at Meta (`en_US`, `de`).
    pub language: String,
    /// Thread variables (`customer`, `order_id`, ...) whose values fill
    /// the body's `{{1}}`, `{{2}}`, ... in this order.
    #[serde(default)]
    pub parameters: Vec<String>,
}

fn default_authorize_url() -> String {
    "https://www.facebook.com/v23.0/dialog/oauth".into()
}

fn default_api_url() -> String {
    "https://graph.facebook.com/v23.0".into()
}

fn default_true() -> bool {
    true
}

impl MetaSettings {
    fn kind(kind: &str) -> Kind {
        match kind {
            "whatsapp" => Kind::WhatsApp,
            "instagram" => Kind::Instagram,
            _ => Kind::Messenger,
        }
    }
}

/// The settings of one `type`: [`MetaSettings`] that know their channel,
/// for what depends on it before an instance is built (text limits,
/// quotas). `K` is a [`Kind`] as `u8`.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct SettingsOf<const K: u8>(pub MetaSettings);

/// `type = "messenger"`.
pub type MessengerSettings = SettingsOf<{ Kind::Messenger as u8 }>;
/// `type = "instagram"`.
pub type InstagramSettings = SettingsOf<{ Kind::Instagram as u8 }>;
/// `type = "whatsapp"`.
pub type WhatsAppSettings = SettingsOf<{ Kind::WhatsApp as u8 }>;

impl<const K: u8> From<MetaSettings> for SettingsOf<K> {
    fn from(s: MetaSettings) -> Self {
        SettingsOf(s)
    }
}

impl<const K: u8> SettingsOf<K> {
    fn channel() -> Kind {
        match K {
            k if k == Kind::WhatsApp as u8 => Kind::WhatsApp,
            k if k == Kind::Instagram as u8 => Kind::Instagram,
            _ => Kind::Messenger,
        }
    }
}

impl<const K: u8> InstanceSettings for SettingsOf<K> {
    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        self.0.check(kind)
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        self.0.secrets()
    }

    /// Messenger and Instagram take 2,000 characters, WhatsApp 4,096:
    /// longer is refused before it is queued.
    fn check_reply(&self, text: &str) -> Result<(), String> {
        crate::check_text(Self::channel(), text)
    }

    fn check_reply_window(
        &self,
        kind: &str,
        closes_at: DateTime<Utc>,
        now: DateTime<Utc>,
        template: Option<&str>,
    ) -> Result<(), String> {
        self.0.check_reply_window(kind, closes_at, now, template)
    }

    fn send_quota(&self) -> Option<RateLimit> {
        Some(match Self::channel() {
            Kind::WhatsApp => WHATSAPP_SEND_QUOTA,
            Kind::Instagram => INSTAGRAM_SEND_QUOTA,
            Kind::Messenger => MESSENGER_SEND_QUOTA,
        })
    }

    fn per_thread_quota(&self) -> Option<RateLimit> {
        (Self::channel() == Kind::WhatsApp).then_some(WHATSAPP_PER_USER_QUOTA)
    }

    fn consent(
        &self,
        kind: &str,
        _instance: &str,
    ) -> Option<Result<Box<dyn hourglass_connector::oauth::Consent>, String>> {
        let m = match &self.0.meta {
            Some(m) => m,
            None => return Some(Err(SettingsProblem::missing_table(kind, "meta").message)),
        };
        Some(match MetaSettings::kind(kind) {
            Kind::Messenger => crate::consent::MetaConsent::new(m)
                .map(|c| Box::new(c) as Box<dyn hourglass_connector::oauth::Consent>),
            Kind::Instagram => Err("connecting an Instagram account from hourglass is not built yet: connect its Facebook Page, then point meta.access_token at that Page's token".to_owned()),
            Kind::WhatsApp => Err("WhatsApp has no consent flow: create a system user token in Meta Business Manager (whatsapp_business_messaging), point meta.access_token at it and run `hourglass connectors test NAME`".to_owned()),
        })
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        self.0.build(kind, instance)
    }
}

impl MetaSettings {
    pub fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        let Some(m) = &self.meta else {
            return vec![SettingsProblem::missing_table(kind, "meta")];
        };
        let mut out = Vec::new();
        match Self::kind(kind) {
            Kind::WhatsApp => {
                if m.phone_number_id.is_none() {
                    out.push(SettingsProblem::new(
                        "meta",
                        "type = \"whatsapp\" needs phone_number_id (the business number's id in WhatsApp Manager)",
                    ));
                }
                if m.page_id.is_some() {
                    out.push(SettingsProblem::new(
                        "meta.page_id",
                        "page_id is for messenger and instagram; a whatsapp instance takes phone_number_id",
                    ));
                }
            }
            k => {
                if m.page_id.is_none() {
                    out.push(SettingsProblem::new(
                        "meta",
                        format!(
                            "type = \"{kind}\" needs page_id ({})",
                            if k == Kind::Instagram {
                                "the Instagram account id"
                            } else {
                                "the Facebook Page id"
                            }
                        ),
                    ));
                }
                if m.phone_number_id.is_some() {
                    out.push(SettingsProblem::new(
                        "meta.phone_number_id",
                        "phone_number_id is for whatsapp; this instance takes page_id",
                    ));
                }
                if !m.templates.is_empty() {
                    out.push(SettingsProblem::new(
                        "meta.templates",
                        "message templates are a WhatsApp feature; Messenger and Instagram replies after 24 h go out with the HUMAN_AGENT tag",
                    ));
                }
            }
        }
        for (path, id) in [
            ("meta.page_id", &m.page_id),
            ("meta.phone_number_id", &m.phone_number_id),
        ] {
            if let Some(id) = id {
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
                    out.push(SettingsProblem::new(
                        path,
                        format!("{path} must be the numeric id Meta shows, not {id:?}"),
                    ));
                }
            }
        }
        for (name, t) in &m.templates {
            if t.language.trim().is_empty() {
                out.push(SettingsProblem::new(
                    format!("meta.templates.{name}.language"),
                    "a WhatsApp template needs its language code (en_US, de, ...)",
                ));
            }
        }
        if !(m.api_url.starts_with("https://") || m.api_url.starts_with("http://")) {
            out.push(SettingsProblem::new(
                "meta.api_url",
                format!(
                    "api_url must start with https:// or http://, not {:?}",
                    m.api_url
                ),
            ));
        }
        out
    }

    pub fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        match &self.meta {
            Some(m) => vec![
                ("meta.app_secret", &m.app_secret),
                ("meta.verify_token", &m.verify_token),
                ("meta.access_token", &m.access_token),
            ],
            None => Vec::new(),
        }
    }

    pub fn check_reply_window(
        &self,
        kind: &str,
        closes_at: DateTime<Utc>,
        now: DateTime<Utc>,
        template: Option<&str>,
    ) -> Result<(), String> {
        if closes_at > now {
            return Ok(());
        }
        match Self::kind(kind) {
            Kind::WhatsApp => {
                let templates = self.meta.as_ref().map(|m| &m.templates);
                match (template, templates) {
                    (Some(t), Some(ts)) if ts.contains_key(t) => Ok(()),
                    _ => {
                        let known: Vec<&str> = templates
                            .map(|ts| ts.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        Err(format!(
                            "{}; after 24 h WhatsApp takes only an approved template: reply with --template NAME ({})",
                            window_closed(kind, closes_at),
                            if known.is_empty() {
                                "none is configured under [instances.meta.templates]".to_owned()
                            } else {
                                format!("configured: {}", known.join(", "))
                            }
                        ))
                    }
                }
            }
            _ => {
                // The customer wrote 24 h before the window closed; a
                // human agent may answer for 7 days after that.
                let human_agent_until = closes_at - Duration::hours(24) + HUMAN_AGENT_WINDOW;
                if now < human_agent_until {
                    Ok(())
                } else {
                    Err(format!(
                        "the customer's last message is more than 7 days old: {kind} takes no reply after that, not even one tagged HUMAN_AGENT (closed at {})",
                        human_agent_until.format("%Y-%m-%d %H:%M UTC")
                    ))
                }
            }
        }
    }

    pub fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let config = self
            .meta
            .clone()
            .ok_or_else(|| SettingsProblem::missing_table(kind, "meta").message)?;
        MetaConnector::new(Self::kind(kind), instance, config)
            .map(|c| Arc::new(c) as Arc<dyn Connector>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_connector::Platform;

    fn settings(kind: &str, body: &str) -> Result<Vec<String>, String> {
        let platform: &dyn Platform = match kind {
            "whatsapp" => &crate::WHATSAPP,
            "instagram" => &crate::INSTAGRAM,
            _ => &crate::MESSENGER,
        };
        let table: toml::Table = toml::from_str(body).map_err(|e| e.to_string())?;
        let s = platform.parse(table).map_err(|e| e.message)?;
        Ok(s.check(kind).into_iter().map(|p| p.message).collect())
    }

    const SECRETS: &str =
        "app_secret = \"env:A\"\nverify_token = \"env:V\"\naccess_token = \"env:T\"\n";

    #[test]
    fn each_type_needs_its_id() {
        let p = settings("messenger", &format!("[meta]\n{SECRETS}")).unwrap();
        assert!(p[0].contains("needs page_id"), "{p:?}");
        let p = settings("whatsapp", &format!("[meta]\n{SECRETS}page_id = \"1\"\n")).unwrap();
        assert!(
            p.iter().any(|m| m.contains("needs phone_number_id")),
            "{p:?}"
        );
        let p = settings(
            "instagram",
            &format!("[meta]\n{SECRETS}page_id = \"17841400000000001\"\n"),
        )
        .unwrap();
        assert!(p.is_empty(), "{p:?}");
        let p = settings(
            "messenger",
            &format!("[meta]\n{SECRETS}page_id = \"my-page\"\n"),
        )
        .unwrap();
        assert!(p[0].contains("numeric id"), "{p:?}");
        let p = settings("messenger", "").unwrap();
        assert!(p[0].contains("[instances.meta]"), "{p:?}");
        assert!(settings("messenger", &format!("[meta]\n{SECRETS}page = \"1\"\n")).is_err());
    }

    fn wa() -> MetaSettings {
        toml::from_str(&format!(
            "[meta]\n{SECRETS}phone_number_id = \"109876543210987\"\n[meta.templates.order_update]\nlanguage = \"en_US\"\nparameters = [\"customer\"]\n"
        ))
        .unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_window_table() {
        let m: MetaSettings =
            toml::from_str(&format!("[meta]\n{SECRETS}page_id = \"1\"\n")).unwrap();
        let closes = t("2026-11-02T10:00:00Z");
        // Open: anything goes.
        assert!(m
            .check_reply_window("messenger", closes, t("2026-11-02T09:00:00Z"), None)
            .is_ok());
        // Closed, within 7 days of the customer's message: HUMAN_AGENT.
        assert!(m
            .check_reply_window("messenger", closes, t("2026-11-05T09:00:00Z"), None)
            .is_ok());
        assert!(m
            .check_reply_window("instagram", closes, t("2026-11-07T09:59:00Z"), None)
            .is_ok());
        let e = m
            .check_reply_window("messenger", closes, t("2026-11-08T10:00:00Z"), None)
            .unwrap_err();
        assert!(e.contains("more than 7 days"), "{e}");
        // WhatsApp: a template only.
        let w = wa();
        assert!(w
            .check_reply_window("whatsapp", closes, t("2026-11-02T09:00:00Z"), None)
            .is_ok());
        let e = w
            .check_reply_window("whatsapp", closes, t("2026-11-02T11:00:00Z"), None)
            .unwrap_err();
        assert!(
            e.contains("--template") && e.contains("order_update"),
            "{e}"
        );
        assert!(w
            .check_reply_window(
                "whatsapp",
                closes,
                t("2026-11-20T11:00:00Z"),
                Some("order_update")
            )
            .is_ok());
        assert!(w
            .check_reply_window(
                "whatsapp",
                closes,
                t("2026-11-02T11:00:00Z"),
                Some("thanks")
            )
            .is_err());
    }

    #[test]
    fn quotas_and_limits_follow_the_channel() {
        let w = WhatsAppSettings::from(wa());
        assert_eq!(w.send_quota(), Some(WHATSAPP_SEND_QUOTA));
        assert_eq!(w.per_thread_quota(), Some(WHATSAPP_PER_USER_QUOTA));
        assert!(w.check_reply(&"x".repeat(4096)).is_ok());
        assert!(w.check_reply(&"x".repeat(4097)).is_err());
        let m: MetaSettings =
            toml::from_str(&format!("[meta]\n{SECRETS}page_id = \"1\"\n")).unwrap();
        let messenger = MessengerSettings::from(m.clone());
        assert_eq!(messenger.send_quota(), Some(MESSENGER_SEND_QUOTA));
        assert_eq!(messenger.per_thread_quota(), None);
        assert!(messenger.check_reply(&"x".repeat(2000)).is_ok());
        assert!(messenger
            .check_reply(&"x".repeat(2001))
            .unwrap_err()
            .contains("2000"));
        let instagram = InstagramSettings::from(m);
        assert_eq!(instagram.send_quota(), Some(INSTAGRAM_SEND_QUOTA));
        assert!(instagram.check_reply(&"x".repeat(2001)).is_err());
    }
}
