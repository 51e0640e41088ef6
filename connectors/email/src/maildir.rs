//! `MaildirConnector`: a local Maildir (filled by fetchmail, mbsync or a
//! local MTA) in, SMTP out.
//!
//! Maildir has no UIDs. A folder's cursor is the (mtime in nanoseconds,
//! unique name) of the last file read: deliveries get fresh mtimes, and a
//! move from `new/` to `cur/` keeps both the mtime and the unique part of
//! the name, so a message read once is never read again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hourglass_connector::{
    Batch, Capabilities, Connector, ConnectorError, Cursors, OutgoingReply, Quarantined, SentCheck,
    SentReply,
};

use crate::config::{MaildirConfig, SmtpConfig};
use crate::normalize::{address_of, parse_mail, ParseContext};
use crate::smtp::{build_reply, reply_message_id, SmtpSender};

/// A file in a Maildir folder, in reading order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MaildirEntry {
    pub mtime_ns: u128,
    /// The file name up to the `:2,FLAGS` info.
    pub unique: String,
    pub path: PathBuf,
}

/// Cursor value: `mtime_ns/unique`.
pub fn encode_cursor(e: &MaildirEntry) -> String {
    format!("{}/{}", e.mtime_ns, e.unique)
}

pub fn parse_cursor(s: &str) -> Option<(u128, String)> {
    let (t, u) = s.split_once('/')?;
    Some((t.parse().ok()?, u.to_owned()))
}

/// One local Maildir.
pub struct MaildirConnector {
    instance: String,
    kind: String,
    config: MaildirConfig,
    smtp: Option<SmtpSender>,
    own_addresses: Vec<String>,
}

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

impl MaildirConnector {
    pub fn new(
        instance: &str,
        config: MaildirConfig,
        smtp: Option<SmtpConfig>,
    ) -> Result<MaildirConnector, ConnectorError> {
        let smtp = smtp.map(SmtpSender::new).transpose()?;
        let mut own_addresses: Vec<String> =
            config.own_addresses.iter().map(|a| address_of(a)).collect();
        if let Some(s) = &smtp {
            let a = address_of(s.from());
            if !own_addresses.contains(&a) {
                own_addresses.push(a);
            }
        }
        Ok(MaildirConnector {
            instance: instance.to_owned(),
            kind: "maildir".to_owned(),
            config,
            smtp,
            own_addresses,
        })
    }

    /// Reports another kind (`amazon`) when wrapped by a platform connector.
    pub fn with_kind(mut self, kind: &str) -> Self {
        kind.clone_into(&mut self.kind);
        self
    }

    pub fn own_addresses(&self) -> &[String] {
        &self.own_addresses
    }

    fn sent_folder(&self) -> &str {
        self.config.sent_folder.as_deref().unwrap_or("Sent")
    }

    /// The folders read: configured, else INBOX plus Sent when `.Sent`
    /// exists.
    pub fn folders(&self) -> Vec<String> {
        if let Some(f) = &self.config.folders {
            return f.clone();
        }
        let mut out = vec!["INBOX".to_owned()];
        let sent = self.sent_folder().to_owned();
        if self.folder_path(&sent).is_dir() {
            out.push(sent);
        }
        out
    }

    /// INBOX is the root; other folders are Maildir++ `.Name` directories.
    pub fn folder_path(&self, folder: &str) -> PathBuf {
        if folder.eq_ignore_ascii_case("INBOX") {
            self.config.path.clone()
        } else {
            self.config
                .path
                .join(format!(".{}", folder.replace('/', ".")))
        }
    }

    fn list(&self, folder: &str) -> Result<Vec<MaildirEntry>, ConnectorError> {
        let dir = self.folder_path(folder);
        let mut entries = Vec::new();
        for sub in ["new", "cur"] {
            let path = dir.join(sub);
            let read = match std::fs::read_dir(&path) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && sub == "new" => continue,
                Err(e) => {
                    return Err(ConnectorError::Other(format!(
                        "Reading Maildir folder {}: {e}",
                        path.display()
                    )))
                }
            };
            for entry in read.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                // A file moved between new/ and cur/ while we list is
                // found again on the next poll.
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                let unique = name.split(':').next().unwrap_or(&name).to_owned();
                entries.push(MaildirEntry {
                    mtime_ns,
                    unique,
                    path: entry.path(),
                });
            }
        }
        entries.sort();
        entries.dedup_by(|a, b| a.unique == b.unique);
        Ok(entries)
    }

    fn deliver_to_sent(&self, raw: &[u8]) -> Result<(), ConnectorError> {
        let dir = self.folder_path(self.sent_folder());
        let io =
            |e: std::io::Error| ConnectorError::Other(format!("Writing to {}: {e}", dir.display()));
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let unique = format!(
            "{}.M{}P{}Q{}.hourglass",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            DELIVERIES.fetch_add(1, Ordering::Relaxed)
        );
        // Maildir delivery: write in tmp/, then rename, so a reader never
        // sees half a message.
        let tmp = dir.join("tmp").join(&unique);
        std::fs::write(&tmp, raw).map_err(io)?;
        std::fs::rename(&tmp, dir.join("cur").join(format!("{unique}:2,S"))).map_err(io)?;
        Ok(())
    }

    fn find_in_sent(&self, message_id: &str) -> Result<Option<DateTime<Utc>>, ConnectorError> {
        let sent = self.sent_folder().to_owned();
        if !self.folder_path(&sent).is_dir() {
            return Ok(None);
        }
        for e in self.list(&sent)? {
            let Ok(raw) = std::fs::read(&e.path) else {
                continue;
            };
            let Some(headers) = mail_parser::MessageParser::default().parse_headers(&raw) else {
                continue;
            };
            if headers.message_id() == Some(message_id) {
                return Ok(Some(mtime_of(&e)));
            }
        }
        Ok(None)
    }
}

fn mtime_of(e: &MaildirEntry) -> DateTime<Utc> {
    let secs = (e.mtime_ns / 1_000_000_000) as i64;
    let nanos = (e.mtime_ns % 1_000_000_000) as u32;
    DateTime::from_timestamp(secs, nanos).unwrap_or_else(Utc::now)
}

#[async_trait]
impl Connector for MaildirConnector {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn channel(&self) -> &str {
        if self.kind == "maildir" {
            "email"
        } else {
            &self.kind
        }
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            poll: true,
            push: false,
            send: self.smtp.is_some(),
            check_sent: self.smtp.is_some(),
        }
    }

    async fn health_check(&self) -> Result<(), ConnectorError> {
        for folder in self.folders() {
            let path = self.folder_path(&folder);
            if !path.join("cur").is_dir() {
                return Err(ConnectorError::Other(format!(
                    "{} is not a Maildir folder (no cur/)",
                    path.display()
                )));
            }
        }
        if let Some(smtp) = &self.smtp {
            smtp.check().await?;
        }
        Ok(())
    }

    fn poll_is_read_only(&self) -> bool {
        true // files are read where they lie
    }

    async fn poll(&self, cursors: &Cursors) -> Result<Batch, ConnectorError> {
        let now = Utc::now();
        let batch_size = self.config.fetch_batch.max(1) as usize;
        let mut batch = Batch::default();
        for folder in self.folders() {
            let after = cursors.get(&folder).and_then(|c| parse_cursor(c));
            let mut entries = self.list(&folder)?;
            if let Some((t, u)) = &after {
                entries.retain(|e| (e.mtime_ns, &e.unique) > (*t, u));
            }
            if entries.len() > batch_size {
                entries.truncate(batch_size);
                batch.more = true;
            }
            let is_sent = folder == self.sent_folder();
            for e in &entries {
                let source = format!("{folder}/{}", e.unique);
                let raw = match std::fs::read(&e.path) {
                    Ok(r) => r,
                    // Moved from new/ to cur/ since the listing: read it
                    // under its new name.
                    Err(_) => match self
                        .list(&folder)?
                        .into_iter()
                        .find(|x| x.unique == e.unique)
                        .and_then(|x| std::fs::read(x.path).ok())
                    {
                        Some(r) => r,
                        None => continue,
                    },
                };
                let ctx = ParseContext {
                    folder: &folder,
                    uid: None,
                    internal_date: Some(mtime_of(e)),
                    is_sent_folder: is_sent,
                    own_addresses: &self.own_addresses,
                    now,
                };
                match parse_mail(&raw, &ctx) {
                    Ok(mut m) => {
                        if let Some(obj) = m.meta.as_object_mut() {
                            obj.insert("file".into(), e.unique.clone().into());
                        }
                        batch.messages.push(m);
                    }
                    Err(err) => batch.quarantined.push(Quarantined {
                        external_id: Some(source.clone()),
                        source,
                        error: err.reason,
                        raw,
                    }),
                }
            }
            if let Some(last) = entries.last() {
                batch.cursors.insert(folder.clone(), encode_cursor(last));
            }
        }
        Ok(batch)
    }

    async fn send_reply(&self, reply: &OutgoingReply) -> Result<SentReply, ConnectorError> {
        let Some(smtp) = &self.smtp else {
            return Err(ConnectorError::Other(format!(
                "instance {} has no [smtp] to send with",
                self.instance
            )));
        };
        let built = build_reply(smtp.from(), reply, Utc::now())?;
        let raw = built.raw();
        smtp.send(built.message.clone()).await?;
        if let Err(e) = self.deliver_to_sent(&raw) {
            tracing::warn!(instance = %self.instance, error = %e, "Reply sent but not filed in the sent folder.");
        }
        Ok(SentReply {
            external_id: built.message_id,
            sent_at: built.sent_at,
        })
    }

    async fn check_sent(&self, reply: &OutgoingReply) -> Result<SentCheck, ConnectorError> {
        let Some(smtp) = &self.smtp else {
            return Ok(SentCheck::CannotTell);
        };
        let id = reply_message_id(&reply.outbox_id, smtp.from());
        Ok(match self.find_in_sent(&id)? {
            Some(sent_at) => SentCheck::Sent(SentReply {
                external_id: id,
                sent_at,
            }),
            // The copy is filed after the send: its absence proves nothing
            // (the daemon asks only when the send had started).
            None => SentCheck::CannotTell,
        })
    }

    fn marks_send_start(&self) -> bool {
        true
    }
}

/// Writes `raw` into `folder_dir/new/` the way an MTA delivers, for tests
/// and tools. Returns the file's path.
pub fn deliver(folder_dir: &Path, raw: &[u8]) -> std::io::Result<PathBuf> {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(folder_dir.join(sub))?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let unique = format!(
        "{}.M{}P{}Q{}.hourglass-test",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        DELIVERIES.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = folder_dir.join("tmp").join(&unique);
    std::fs::write(&tmp, raw)?;
    let dest = folder_dir.join("new").join(&unique);
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let e = MaildirEntry {
            mtime_ns: 1_763_900_000_123_456_789,
            unique: "1763900000.M1P2Q3.host".into(),
            path: PathBuf::new(),
        };
        assert_eq!(
            parse_cursor(&encode_cursor(&e)),
            Some((e.mtime_ns, e.unique.clone()))
        );
        assert_eq!(parse_cursor("garbage"), None);
    }
}
