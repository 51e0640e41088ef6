//! Deadline alerts (DESIGN §4): the engine, the sinks, digests.

pub mod admin;
pub mod config;
pub mod digest;
pub mod engine;
pub mod late;
pub mod quiet;
pub mod relay;
pub mod silence;
pub mod sinks;
pub mod telegram_take;

pub use config::AlertsConfig;

use chrono::Utc;
use serde_json::json;

/// `hourglass alerts test`: one test alert through every sink, and each
/// sink's result.
pub async fn test_all(config: &AlertsConfig) -> Result<Vec<(String, Result<(), String>)>, String> {
    let sinks = sinks::build(config)?;
    let now = Utc::now();
    let payload = json!({
        "kind": "test",
        "threshold": "test",
        "thread_id": 0,
        "instance": "hourglass",
        "channel": "test",
        "customer": "hourglass",
        "subject": "Test alert: if you can read this, this sink works.",
        "due_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
    });
    let rendered = engine::render(&payload, now);
    // A test alert is no stored delivery: a key of its own per run and sink.
    let run = now.timestamp_micros();
    let mut out = Vec::new();
    for s in &config.sinks {
        let key = format!("test-{run}-{}", s.name);
        let result = match sinks.get(&s.name) {
            Some(sink) => sink.send(&rendered, &key).await.map_err(|e| e.message),
            None => Err("not built".into()),
        };
        out.push((s.name.clone(), result));
    }
    Ok(out)
}

/// The workers alerting adds to the daemon.
pub const WORKERS: [crate::daemon::Worker; 6] = [
    engine::engine,
    digest::worker,
    silence::worker,
    relay::worker,
    telegram_take::worker,
    late::worker,
];
