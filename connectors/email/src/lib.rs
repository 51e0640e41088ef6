//! E-mail connector: IMAP (async-imap) and Maildir ingest, SMTP (lettre) replies.
