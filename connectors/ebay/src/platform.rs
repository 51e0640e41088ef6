//! `type = "ebay"` as the daemon registers it: the `[instances.ebay]`
//! table, eBay's send quota and the constructor.

use std::sync::Arc;

use hourglass_connector::platform::{InstanceSettings, PlatformOf, RateLimit, SettingsProblem};
use hourglass_connector::secret::SecretRef;
use hourglass_connector::Connector;
use serde::Deserialize;

use crate::{EbayConfig, EbayConnector, SEND_BURST, SEND_PER_SECOND};

/// `type = "ebay"`.
pub static EBAY: PlatformOf<EbaySettings> = PlatformOf::new("ebay");

/// The keys of an `ebay` instance besides the shared ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbaySettings {
    /// `[instances.ebay]`: the Message API account (required).
    #[serde(default)]
    pub ebay: Option<EbayConfig>,
}

impl InstanceSettings for EbaySettings {
    fn check(&self, kind: &str) -> Vec<SettingsProblem> {
        match self.ebay {
            Some(_) => Vec::new(),
            None => vec![SettingsProblem::missing_table(kind, "ebay")],
        }
    }

    fn secrets(&self) -> Vec<(&'static str, &SecretRef)> {
        match &self.ebay {
            Some(e) => vec![
                ("ebay.client_secret", &e.client_secret),
                ("ebay.refresh_token", &e.refresh_token),
            ],
            None => Vec::new(),
        }
    }

    /// Member messages: at most 75 per 60 s per seller, then blocked for
    /// 100 s (DESIGN §9).
    fn send_quota(&self) -> Option<RateLimit> {
        Some(RateLimit {
            per_second: SEND_PER_SECOND,
            burst: SEND_BURST,
        })
    }

    fn check_reply(&self, text: &str) -> Result<(), String> {
        crate::check_reply(text)
    }

    fn consent(
        &self,
        kind: &str,
        _instance: &str,
    ) -> Option<Result<Box<dyn hourglass_connector::oauth::Consent>, String>> {
        Some(match &self.ebay {
            Some(config) => crate::consent::EbayConsent::new(config)
                .map(|c| Box::new(c) as Box<dyn hourglass_connector::oauth::Consent>),
            None => Err(SettingsProblem::missing_table(kind, "ebay").message),
        })
    }

    fn build(&self, kind: &str, instance: &str) -> Result<Arc<dyn Connector>, String> {
        let config = self
            .ebay
            .clone()
            .ok_or_else(|| SettingsProblem::missing_table(kind, "ebay").message)?;
        EbayConnector::new(instance, config).map(|c| Arc::new(c) as Arc<dyn Connector>)
    }
}
