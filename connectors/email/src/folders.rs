//! Which server folders a poll reads: the configured names (UTF-8, as a
//! seller types them) matched against the server's `LIST` (modified UTF-7
//! on the wire, its own hierarchy delimiter, Debian Cyrus' and Courier's
//! `INBOX.` prefix), and the sent folder found by its RFC 6154 `\Sent`
//! attribute before any guess by name.

use crate::config::{is_sent_name, ImapConfig};

/// RFC 3501 §5.1.3 modified UTF-7: printable ASCII stands for itself
/// (`&` as `&-`), anything else is UTF-16BE in base64 with `,` for `/`,
/// between `&` and `-`.
///
/// Written here because the one crate for it (`utf7-imap`) panics on a
/// malformed name from the server and passes DEL through unencoded.
pub fn encode_mutf7(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush_utf16(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush_utf16(&mut out, &mut pending);
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn flush_utf16(out: &mut String, pending: &mut Vec<u16>) {
    if pending.is_empty() {
        return;
    }
    let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=n {
            out.push(char::from(B64[((v >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out.push('-');
    pending.clear();
}

/// The UTF-8 form of a modified-UTF-7 name; `None` when it is malformed
/// (then the name is shown as the server sent it).
pub fn decode_mutf7(wire: &str) -> Option<String> {
    let mut out = String::with_capacity(wire.len());
    let mut rest = wire;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('-')?;
        let encoded = &after[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let mut bits: u32 = 0;
            let mut nbits = 0;
            let mut bytes = Vec::new();
            for c in encoded.bytes() {
                let v = B64.iter().position(|b| *b == c)? as u32;
                bits = (bits << 6) | v;
                nbits += 6;
                if nbits >= 8 {
                    nbits -= 8;
                    bytes.push(((bits >> nbits) & 0xff) as u8);
                }
            }
            // Whole UTF-16 units, and only zero bits left over.
            if bytes.is_empty()
                || bytes.len() % 2 != 0
                || nbits >= 6
                || bits & ((1 << nbits) - 1) != 0
            {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// What RFC 6154 says a folder is for (only what hourglass acts on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialUse {
    Sent,
    /// Drafts, Trash, Junk: never the sent folder, whatever their name.
    NotSent,
}

/// One `LIST` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFolder {
    /// The name on the wire (modified UTF-7).
    pub wire: String,
    pub delimiter: Option<String>,
    pub special_use: Option<SpecialUse>,
    pub selectable: bool,
}

impl ListedFolder {
    /// The name as a seller reads it.
    pub fn name(&self) -> String {
        decode_mutf7(&self.wire).unwrap_or_else(|| self.wire.clone())
    }
}

/// A folder a poll reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFolder {
    /// The name cursors, messages' `meta.folder` and errors use: the
    /// configured name, or the server's (decoded) name of a sent folder
    /// found by `LIST`.
    pub key: String,
    /// The name to SELECT, or why there is none.
    pub wire: Result<String, String>,
    pub is_sent: bool,
}

/// The folders to read, in config order, the sent folder last when it
/// was not configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FolderPlan {
    pub folders: Vec<PlannedFolder>,
}

impl FolderPlan {
    /// The sent folder, when one was found.
    pub fn sent(&self) -> Option<&PlannedFolder> {
        self.folders.iter().find(|f| f.is_sent && f.wire.is_ok())
    }

    /// Without a `LIST`: every configured name as is, encoded.
    pub fn unresolved(cfg: &ImapConfig) -> FolderPlan {
        let sent = cfg.effective_sent_folder().map(str::to_owned);
        FolderPlan {
            folders: cfg
                .poll_folders()
                .into_iter()
                .map(|f| PlannedFolder {
                    is_sent: sent.as_deref() == Some(f.as_str()),
                    wire: Ok(encode_mutf7(&f)),
                    key: f,
                })
                .collect(),
        }
    }
}

/// Matches a configured name against the listed folders: as the server
/// spells it (or as typed in modified UTF-7), with `/` for the server's
/// delimiter, and below INBOX where the server keeps personal folders
/// there (Debian's Cyrus, Courier: `Sent` is `INBOX.Sent`).
fn resolve(name: &str, listed: &[ListedFolder]) -> Result<String, String> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".to_owned());
    }
    let selectable = || listed.iter().filter(|f| f.selectable);
    let find = |candidate: &str| {
        selectable()
            .find(|f| f.name() == candidate || f.wire == candidate)
            .map(|f| f.wire.clone())
    };
    if let Some(w) = find(name) {
        return Ok(w);
    }
    let delimiter = listed
        .iter()
        .find_map(|f| f.delimiter.clone())
        .unwrap_or_else(|| "/".to_owned());
    let with_delim = name.replace('/', &delimiter);
    let below_inbox = format!("INBOX{delimiter}{with_delim}");
    for candidate in [&with_delim, &below_inbox] {
        if let Some(w) = find(candidate) {
            return Ok(w);
        }
    }
    let mut known: Vec<String> = selectable().map(ListedFolder::name).collect();
    known.sort();
    Err(format!(
        "Folder {name:?} does not exist on the server (it has: {})",
        known.join(", ")
    ))
}

/// The folders one poll reads, given the config and the server's `LIST`.
pub fn plan_folders(cfg: &ImapConfig, listed: &[ListedFolder]) -> FolderPlan {
    let mut folders: Vec<PlannedFolder> = cfg
        .folders
        .iter()
        .map(|f| PlannedFolder {
            key: f.clone(),
            wire: resolve(f, listed),
            is_sent: false,
        })
        .collect();
    let sent_index = |folders: &[PlannedFolder], wire: &str| {
        folders.iter().position(|f| f.wire.as_deref() == Ok(wire))
    };
    let mark_or_add = |folders: &mut Vec<PlannedFolder>,
                       key: String,
                       wire: Result<String, String>| {
        match wire.as_deref().ok().and_then(|w| sent_index(folders, w)) {
            Some(i) => folders[i].is_sent = true,
            None => folders.push(PlannedFolder {
                key,
                wire,
                is_sent: true,
            }),
        }
    };
    if let Some(sent) = &cfg.sent_folder {
        // Said in so many words: that folder, found or not.
        let wire = resolve(sent, listed);
        mark_or_add(&mut folders, sent.clone(), wire);
        return FolderPlan { folders };
    }
    let by_use = listed
        .iter()
        .find(|f| f.selectable && f.special_use == Some(SpecialUse::Sent));
    if let Some(f) = by_use {
        mark_or_add(&mut folders, f.name(), Ok(f.wire.clone()));
        return FolderPlan { folders };
    }
    // No \Sent anywhere: a configured folder with a usual sent-mail name,
    // then a listed one (`INBOX.Gesendet`), never a Drafts/Trash/Junk.
    if let Some(f) = folders
        .iter_mut()
        .find(|f| f.wire.is_ok() && is_sent_name(&f.key))
    {
        f.is_sent = true;
        return FolderPlan { folders };
    }
    let by_name = listed.iter().find(|f| {
        let name = f.name();
        let short = name
            .strip_prefix("INBOX")
            .and_then(|rest| {
                let d = f.delimiter.as_deref()?;
                rest.strip_prefix(d)
            })
            .unwrap_or(&name);
        f.selectable && f.special_use.is_none() && is_sent_name(short)
    });
    if let Some(f) = by_name {
        mark_or_add(&mut folders, f.name(), Ok(f.wire.clone()));
    }
    FolderPlan { folders }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf7_round_trips_rfc_3501_examples_and_localized_names() {
        for (utf8, wire) in [
            ("INBOX", "INBOX"),
            ("Sent", "Sent"),
            ("Éléments envoyés", "&AMk-l&AOk-ments envoy&AOk-s"),
            ("Itens enviados", "Itens enviados"),
            ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
            ("Q&A", "Q&-A"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("📦", "&2D3c5g-"),
        ] {
            assert_eq!(encode_mutf7(utf8), wire, "{utf8}");
            assert_eq!(decode_mutf7(wire).as_deref(), Some(utf8), "{wire}");
        }
        assert_eq!(encode_mutf7("a\u{7f}b"), "a&AH8-b");
        for bad in ["&", "&AMk", "&A-", "&*-", "&2D0-"] {
            assert_eq!(decode_mutf7(bad), None, "{bad}");
        }
    }

    fn cfg(folders: &[&str], sent: Option<&str>) -> ImapConfig {
        let mut c: ImapConfig = toml_cfg();
        c.folders = folders.iter().map(|f| (*f).to_owned()).collect();
        c.sent_folder = sent.map(str::to_owned);
        c
    }

    fn toml_cfg() -> ImapConfig {
        ImapConfig {
            host: "h".into(),
            port: 993,
            tls: crate::config::TlsMode::Implicit,
            username: "u".into(),
            password: None,
            auth: crate::config::ImapAuth::Login,
            folders: vec![],
            sent_folder: None,
            idle: true,
            fetch_batch: 500,
            ca_file: None,
            accept_invalid_certs: false,
        }
    }

    fn listed(items: &[(&str, Option<SpecialUse>)], delim: &str) -> Vec<ListedFolder> {
        items
            .iter()
            .map(|(w, u)| ListedFolder {
                wire: (*w).to_owned(),
                delimiter: Some(delim.to_owned()),
                special_use: *u,
                selectable: true,
            })
            .collect()
    }

    fn summary(p: &FolderPlan) -> Vec<(String, Result<String, String>, bool)> {
        p.folders
            .iter()
            .map(|f| (f.key.clone(), f.wire.clone(), f.is_sent))
            .collect()
    }

    #[test]
    fn a_localized_sent_folder_is_found_by_special_use() {
        let server = listed(
            &[
                ("INBOX", None),
                ("INBOX.&AMk-l&AOk-ments envoy&AOk-s", Some(SpecialUse::Sent)),
                ("INBOX.Sent", Some(SpecialUse::NotSent)),
            ],
            ".",
        );
        let plan = plan_folders(&cfg(&["INBOX"], None), &server);
        assert_eq!(
            summary(&plan),
            vec![
                ("INBOX".into(), Ok("INBOX".into()), false),
                (
                    "INBOX.Éléments envoyés".into(),
                    Ok("INBOX.&AMk-l&AOk-ments envoy&AOk-s".into()),
                    true
                ),
            ]
        );
        // Configured under its UTF-8 name, below INBOX implicitly: one
        // folder, not two.
        let plan = plan_folders(&cfg(&["INBOX", "Éléments envoyés"], None), &server);
        assert_eq!(plan.folders.len(), 2);
        assert_eq!(
            plan.sent().map(|f| f.key.as_str()),
            Some("Éléments envoyés")
        );
    }

    #[test]
    fn configured_names_resolve_by_delimiter_and_inbox_prefix_or_fail_alone() {
        let server = listed(
            &[
                ("INBOX", None),
                ("INBOX.Sent", None),
                ("INBOX.Orders.2024", None),
            ],
            ".",
        );
        let plan = plan_folders(
            &cfg(&["INBOX", "Orders/2024", "Archive"], Some("Sent")),
            &server,
        );
        let s = summary(&plan);
        assert_eq!(s[0].1, Ok("INBOX".into()));
        assert_eq!(s[1].1, Ok("INBOX.Orders.2024".into()));
        let err = s[2].1.clone().unwrap_err();
        assert!(err.contains("\"Archive\" does not exist"), "{err}");
        assert!(err.contains("INBOX.Sent"), "{err}");
        assert_eq!(s[3], ("Sent".into(), Ok("INBOX.Sent".into()), true));
    }

    #[test]
    fn without_special_use_a_usual_name_is_the_sent_folder() {
        let server = listed(
            &[("INBOX", None), ("Gesendet", None), ("Drafts", None)],
            "/",
        );
        let plan = plan_folders(&cfg(&["INBOX"], None), &server);
        assert_eq!(
            plan.sent().map(|f| f.wire.clone()),
            Some(Ok("Gesendet".into()))
        );
        let none = listed(&[("INBOX", None), ("Archive", None)], "/");
        assert_eq!(plan_folders(&cfg(&["INBOX"], None), &none).sent(), None);
        // An explicit sent_folder that is missing is an error for it.
        let plan = plan_folders(&cfg(&["INBOX"], Some("Sent")), &none);
        assert!(plan.folders[1].wire.is_err());
        assert_eq!(plan.sent(), None);
    }
}
