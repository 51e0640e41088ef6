//! Reply templates (minijinja): `NAME.LANG.txt` in the thread's language,
//! falling back to `NAME.txt`, rendered with the thread's variables. An
//! undefined variable is an error, so a reply is never queued with a hole
//! in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::store::ThreadSummary;

/// The variables a template sees for a thread: `customer`, `order_id`,
/// `marketplace`, `channel`, `subject`, `language`, `instance`, plus the
/// `--var` extras (which win). A value the thread does not have is left
/// out, so using it is an error (test it with `{% if order_id is defined %}`).
pub fn template_vars(
    thread: &ThreadSummary,
    extra: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            vars.insert(k.to_owned(), v.clone());
        }
    };
    put("customer", thread.customer.as_ref());
    put("order_id", thread.order_id.as_ref());
    put("marketplace", thread.marketplace.as_ref());
    put("subject", thread.subject.as_ref());
    put("language", thread.language.as_ref());
    vars.insert("channel".into(), thread.channel.clone());
    vars.insert("instance".into(), thread.instance.clone());
    for (k, v) in extra {
        vars.insert(k.clone(), v.clone());
    }
    vars
}

/// Candidate files for `name` in `language`, most specific first:
/// `pt-BR` tries `NAME.pt-BR.txt`, `NAME.pt.txt`, then `NAME.txt`.
fn candidates(dir: &Path, name: &str, language: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(lang) = language.map(str::trim).filter(|l| !l.is_empty()) {
        out.push(dir.join(format!("{name}.{lang}.txt")));
        if let Some((primary, _)) = lang.split_once(['-', '_']) {
            out.push(dir.join(format!("{name}.{primary}.txt")));
        }
        let lower = lang.to_ascii_lowercase();
        if lower != lang {
            out.push(dir.join(format!("{name}.{lower}.txt")));
        }
    }
    out.push(dir.join(format!("{name}.txt")));
    out
}

/// Renders template `name` from `dir` for a thread in `language`.
pub fn render_template(
    dir: Option<&Path>,
    name: &str,
    language: Option<&str>,
    vars: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    let Some(dir) = dir else {
        bail!("No template folder is configured: set [templates] dir in the configuration");
    };
    // A template name is a file stem, never a path.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    {
        bail!("Template name {name:?} must be letters, digits, '-' or '_'");
    }
    let tried = candidates(dir, name, language);
    let Some(path) = tried.iter().find(|p| p.is_file()) else {
        let list = tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        bail!("Template {name:?} not found (looked for {list})");
    };
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read template {}", path.display()))?;
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_owned());
    render_source(&file, source, vars)
}

fn render_source(
    file: &str,
    source: String,
    vars: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Replies are plain text: nothing is HTML-escaped.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_template_owned(file.to_owned(), source)
        .map_err(|e| anyhow::anyhow!("Template {file} does not parse: {e}"))?;
    let template = env
        .get_template(file)
        .map_err(|e| anyhow::anyhow!("Template {file} does not parse: {e}"))?;
    let text = template.render(vars).map_err(|e| {
        // minijinja says "undefined value" and where; name the variables too.
        let mut missing = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !vars.contains_key(v))
            .collect::<Vec<_>>();
        missing.sort();
        let known = vars.keys().cloned().collect::<Vec<_>>().join(", ");
        if missing.is_empty() {
            anyhow::anyhow!(
                "Template {file} cannot be rendered for this thread: {e}. Variables available: {known}"
            )
        } else {
            anyhow::anyhow!(
                "Template {file} cannot be rendered for this thread: {e}. Not set: {}; add with --var NAME=VALUE (available: {known})",
                missing.join(", ")
            )
        }
    })?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        bail!("Template {file} rendered to an empty reply");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn language_specific_file_wins_and_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("late.txt"), "Hello {{ customer }}").unwrap();
        std::fs::write(
            dir.path().join("late.pt.txt"),
            "Olá {{ customer }}, não se preocupe",
        )
        .unwrap();
        let v = vars(&[("customer", "Ana")]);
        let pt = render_template(Some(dir.path()), "late", Some("pt-BR"), &v).unwrap();
        assert_eq!(pt, "Olá Ana, não se preocupe");
        let de = render_template(Some(dir.path()), "late", Some("de"), &v).unwrap();
        assert_eq!(de, "Hello Ana");
        let none = render_template(Some(dir.path()), "late", None, &v).unwrap();
        assert_eq!(none, "Hello Ana");
    }

    #[test]
    fn an_undefined_variable_is_an_error_that_names_the_template() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.txt"), "Order {{ order_id }}").unwrap();
        let err = render_template(Some(dir.path()), "t", None, &vars(&[("customer", "A")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.txt"), "{err}");
        assert!(err.contains("undefined"), "{err}");
        assert!(err.contains("Not set: order_id"), "{err}");
        // `is defined` lets a template cope without it.
        std::fs::write(
            dir.path().join("t.txt"),
            "Hi{% if order_id is defined %} #{{ order_id }}{% endif %}",
        )
        .unwrap();
        assert_eq!(
            render_template(Some(dir.path()), "t", None, &vars(&[])).unwrap(),
            "Hi"
        );
    }

    #[test]
    fn names_are_not_paths_and_html_is_not_escaped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(render_template(Some(dir.path()), "../etc/passwd", None, &vars(&[])).is_err());
        assert!(render_template(None, "x", None, &vars(&[])).is_err());
        std::fs::write(dir.path().join("amp.txt"), "{{ customer }}").unwrap();
        let out = render_template(
            Some(dir.path()),
            "amp",
            None,
            &vars(&[("customer", "A & <B>")]),
        )
        .unwrap();
        assert_eq!(out, "A & <B>");
    }
}
