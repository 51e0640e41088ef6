//! Every comparison of a secret goes through one constant-time helper,
//! `hourglass_connector::constant_time_eq` (or an HMAC's own `verify_slice`,
//! built on the same `subtle` crate). This test reads the sources and
//! fails on the shapes that have leaked timing before: a hand-rolled
//! comparison, a second helper, or `==` on a secret, signature or token.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Rust files of the daemon and every connector, without their tests.
fn sources() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(ROOT).join("src")];
    for entry in std::fs::read_dir(Path::new(ROOT).join("connectors")).unwrap() {
        dirs.push(entry.unwrap().path().join("src"));
    }
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    files
}

/// The lines before the file's test module.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .enumerate()
        .map(|(i, l)| (i + 1, l.to_owned()))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .collect()
}

/// Whether `line` compares something named like a secret with `==`/`!=`.
fn compares_a_secret(line: &str) -> bool {
    const NAMES: [&str; 8] = [
        "secret",
        "signature",
        "sig",
        "token",
        "csrf",
        "digest",
        "password",
        "expose_secret()",
    ];
    for op in ["==", "!="] {
        let mut rest = line;
        while let Some(at) = rest.find(op) {
            let before = rest[..at].trim_end();
            let after = rest[at + op.len()..].trim_start();
            let left = before
                .rsplit(|c: char| !(c.is_alphanumeric() || "_.()".contains(c)))
                .next()
                .unwrap_or("")
                .to_lowercase();
            let right: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || "_.()".contains(*c))
                .collect::<String>()
                .to_lowercase();
            let named = |side: &str| {
                side.split(['.', '(', ')']).any(|part| {
                    NAMES
                        .iter()
                        .any(|n| part == *n || part.ends_with(&format!("_{n}")))
                }) || side.contains("expose_secret()")
            };
            if named(&left) || named(&right) {
                return true;
            }
            rest = &rest[at + op.len()..];
        }
    }
    false
}

/// Comparisons that look like one of a secret but are not (file, line text,
/// why).
const NOT_SECRETS: [(&str, &str, &str); 1] = [(
    "src/daemon.rs",
    "if polled_with != Some(token) {",
    "a lease's fencing token, known to every daemon on the store",
)];

#[test]
fn secrets_are_compared_only_in_constant_time() {
    let helper = Path::new(ROOT).join("connectors/api/src/webhook.rs");
    let mut found = Vec::new();
    for file in sources() {
        let shown = file.strip_prefix(ROOT).unwrap().display().to_string();
        for (n, line) in code_lines(&file) {
            if file != helper {
                if line.contains("fn constant_time_eq") || line.contains(".ct_eq(") {
                    found.push(format!(
                        "{shown}:{n}: a second constant-time helper: {line}"
                    ));
                }
                if line.contains("fold(0u8") {
                    found.push(format!("{shown}:{n}: a hand-rolled comparison: {line}"));
                }
            }
            let allowed = NOT_SECRETS
                .iter()
                .any(|(f, l, _)| shown == *f && line.trim() == *l);
            if compares_a_secret(&line) && !allowed {
                found.push(format!("{shown}:{n}: `==` on a secret: {line}"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_recognises_what_it_looks_for() {
    assert!(compares_a_secret("if given == expected_signature {"));
    assert!(compares_a_secret("    .is_some_and(|v| v == sig)"));
    assert!(compares_a_secret(
        "Some(s) if s.expose_secret() != refresh.expose_secret() =>"
    ));
    assert!(compares_a_secret("(fp == webhook_secret).then(|| 1)"));
    assert!(!compares_a_secret("if polled_with != Some(lease) {"));
    assert!(!compares_a_secret(
        "t.mode == Mode::Webhook && t.webhook_secret.is_none()"
    ));
    assert!(!compares_a_secret("a.len() == b.len()"));
}

#[test]
fn the_helper_compares() {
    use hourglass_connector::constant_time_eq;
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}
