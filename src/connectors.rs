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
        other => Err(format!(
            "instance {name:?}: connector type {other} is not available in this build"
        )),
    }
}
