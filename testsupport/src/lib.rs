//! Real servers for tests, started on loopback in temp dirs and stopped on
//! drop. A test that needs one starts it; nothing is skipped silently: when a
//! server's binary is missing, the test fails and says what to install.

pub mod chaos;
pub mod consent;
pub mod cyrus;
pub mod dovecot;
pub mod ebay;
pub mod imap;
pub mod lwa;
pub mod meta;
pub mod mockplatform;
pub mod net;
pub mod pids;
pub mod postgres;
mod rawimap;
pub mod smtp;
pub mod spapi;
pub mod telegram;
pub mod x;
