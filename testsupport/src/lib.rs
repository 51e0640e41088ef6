//! Real servers for tests, started on loopback in temp dirs and stopped on
//! drop. A test that needs one starts it; nothing is skipped silently: when a
//! server's binary is missing, the test fails and says what to install.

pub mod dovecot;
pub mod mockplatform;
pub mod net;
pub mod postgres;
pub mod smtp;
pub mod telegram;
