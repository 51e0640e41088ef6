//! hourglass: never miss a customer's reply deadline.
//!
//! The daemon pulls messages from every configured platform account into
//! one store, keeps each conversation's reply clock, alerts agents before a
//! deadline passes and sends replies through a durable outbox.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod alerts;
pub mod cli;
pub mod clock;
pub mod config;
pub mod customers;
pub mod daemon;
pub mod deadline;
pub mod demo;
pub mod duration;
pub mod http;
pub mod lrr;
pub mod oauth;
pub mod outbox;
pub mod registry;
pub mod report;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod view;
pub mod watchdog;

/// The workers `hourglass run` starts beside the poll loops.
pub fn workers() -> Vec<daemon::Worker> {
    let mut workers = alerts::WORKERS.to_vec();
    workers.push(outbox::worker);
    workers.push(http::worker);
    workers
}
