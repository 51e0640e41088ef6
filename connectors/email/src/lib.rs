//! E-mail connector: IMAP (async-imap) and Maildir ingest, SMTP (lettre)
//! replies.
//!
//! - [`EmailConnector`] (`type = "email"`): an IMAP account, `[imap]` +
//!   optional `[smtp]`.
//! - [`MaildirConnector`] (`type = "maildir"`): a local Maildir, `[maildir]`
//!   + optional `[smtp]`.
//! - [`MailSource`]: either, for platform connectors that read their
//!   platform's mail and post-process [`parse_mail`]'s messages (Amazon).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod config;
mod connector;
pub mod folders;
pub mod maildir;
pub mod normalize;
pub mod platform;
pub mod smtp;
mod source;

pub use config::{ImapAuth, ImapConfig, MaildirConfig, SmtpConfig, TlsMode};
pub use connector::EmailConnector;
pub use maildir::MaildirConnector;
pub use normalize::{parse_mail, ParseContext, ParseError};
pub use platform::{EmailSettings, MaildirSettings, EMAIL, MAILDIR};
pub use smtp::SmtpSender;
pub use source::MailSource;
