//! E-mail connector: IMAP (async-imap) and Maildir ingest, SMTP (lettre) replies.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod config;
pub mod normalize;

pub use config::{ImapAuth, ImapConfig, MaildirConfig, SmtpConfig, TlsMode};
pub use normalize::{parse_mail, ParseContext, ParseError};
