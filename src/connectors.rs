//! Builds connectors from config. Adding a platform touches this match, the
//! `InstanceType` enum, the instance's config table and Cargo.toml.

use std::sync::Arc;

use hourglass_connector::testkit::SimulatedConnector;
use hourglass_connector::Connector;

use crate::config::{InstanceConfig, InstanceType};

/// Creates the connector of one configured instance. Errors name the
/// instance and never contain a secret.
pub fn build(inst: &InstanceConfig) -> Result<Arc<dyn Connector>, String> {
    let name = inst.name();
    match inst.kind {
        InstanceType::Simulated => Ok(Arc::new(SimulatedConnector::new(
            name,
            inst.simulated.clone().unwrap_or_default(),
        ))),
        InstanceType::Email => {
            let imap = inst.imap.clone().ok_or_else(|| missing(name, "imap"))?;
            hourglass_email::EmailConnector::new(name, imap, inst.smtp.clone())
                .map(|c| Arc::new(c) as Arc<dyn Connector>)
                .map_err(|e| format!("instance {name:?}: {e}"))
        }
        InstanceType::Maildir => {
            let maildir = inst
                .maildir
                .clone()
                .ok_or_else(|| missing(name, "maildir"))?;
            hourglass_email::MaildirConnector::new(name, maildir, inst.smtp.clone())
                .map(|c| Arc::new(c) as Arc<dyn Connector>)
                .map_err(|e| format!("instance {name:?}: {e}"))
        }
        InstanceType::Amazon => {
            let built = match (&inst.imap, &inst.maildir) {
                (Some(imap), _) => hourglass_amazon::AmazonConnector::with_imap(
                    name,
                    imap.clone(),
                    inst.smtp.clone(),
                ),
                (None, Some(maildir)) => hourglass_amazon::AmazonConnector::with_maildir(
                    name,
                    maildir.clone(),
                    inst.smtp.clone(),
                ),
                (None, None) => return Err(missing(name, "imap")),
            };
            let built = match &inst.sp_api {
                Some(sp) => built.and_then(|c| c.with_sp_api(sp.clone())),
                None => built,
            };
            built
                .map(|c| Arc::new(c) as Arc<dyn Connector>)
                .map_err(|e| format!("instance {name:?}: {e}"))
        }
        other => Err(format!(
            "instance {name:?}: connector type {other} is not available in this build"
        )),
    }
}

fn missing(name: &str, table: &str) -> String {
    format!("instance {name:?} needs an [instances.{table}] table")
}
