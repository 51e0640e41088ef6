//! `hourglass reply ID (--body TEXT | --template NAME)`: writes the reply
//! to the outbox and returns; the daemon sends it.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;

use super::templates::{render_template, template_vars};
use super::worker::notify_enqueued;
use crate::config::Config;
use crate::store::{NewReply, Store, ThreadStore, ThreadSummary};

/// Arguments of `reply`.
#[derive(Debug, Args)]
pub struct ReplyArgs {
    /// The thread to answer.
    pub id: i64,
    /// The reply text.
    #[arg(
        long,
        conflicts_with = "template",
        required_unless_present = "template"
    )]
    pub body: Option<String>,
    /// A template from the [templates] folder: NAME.LANG.txt in the
    /// thread's language, else NAME.txt. On WhatsApp, a template also
    /// configured under [instances.meta.templates] goes out as that
    /// approved template (also after the 24 h window).
    #[arg(long)]
    pub template: Option<String>,
    /// An extra template variable (repeatable): --var coupon=SPRING10
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Who replies (recorded in the audit log).
    #[arg(long, env = "USER", default_value = "cli")]
    pub actor: String,
    /// Print JSON instead of text (a stable format for scripts).
    #[arg(long)]
    pub json: bool,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "variable name {k:?} must be letters, digits or '_'"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// A new outbox id: 16 random hex digits. It is also the idempotency key
/// the platform sees.
pub fn new_outbox_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Queues a reply durably and wakes this process's outbox worker (the
/// CLI runs in another process: the daemon finds it on its next look).
pub async fn enqueue(store: &dyn Store, reply: &NewReply) -> crate::store::Result<()> {
    store.enqueue_reply(reply).await?;
    notify_enqueued();
    Ok(())
}

/// Queues `reply` as the messages its platform sends it as (Telegram's
/// `split_long`: several, in order). The first part keeps the reply's id;
/// later parts are `{id}-p02`, `{id}-p03`, ... and follow it in the
/// thread's order. Each part is its own outbox entry: one that was sent
/// before a crash is never sent again.
pub async fn enqueue_parts(
    config: &Config,
    store: &dyn Store,
    instance: &str,
    reply: &NewReply,
) -> crate::store::Result<usize> {
    let parts = match config.instance(instance).and_then(|i| i.settings().ok()) {
        Some(settings) => settings.split_reply(&reply.body),
        None => vec![reply.body.clone()],
    };
    if parts.len() <= 1 {
        enqueue(store, reply).await?;
        return Ok(1);
    }
    for (k, body) in parts.iter().enumerate() {
        let part = NewReply {
            id: if k == 0 {
                reply.id.clone()
            } else {
                format!("{}-p{:02}", reply.id, k + 1)
            },
            body: body.clone(),
            ..reply.clone()
        };
        store.enqueue_reply(&part).await?;
    }
    notify_enqueued();
    Ok(parts.len())
}

/// What the instance's platform would refuse whatever happens (eBay's
/// 2,000 characters, Amazon's no-links rule), said before anything is
/// queued. An instance no longer configured has no rules to apply.
pub fn platform_refusal(config: &Config, instance: &str, body: &str) -> Result<(), String> {
    match config.instance(instance).and_then(|i| i.settings().ok()) {
        Some(settings) => settings.check_reply(body),
        None => Ok(()),
    }
}

/// A reply the platform's reply window no longer allows (DESIGN §3),
/// said before anything is queued. The instance's platform knows its ways
/// past the window (a tag, a template); an instance no longer configured
/// gets the plain rule.
pub fn window_refusal(
    config: &Config,
    thread: &ThreadSummary,
    template: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let Some(closes_at) = thread.reply_window_closes_at else {
        return Ok(());
    };
    let instance = config.instance(&thread.instance);
    match instance.and_then(|i| i.settings().ok()) {
        Some(settings) => {
            let kind = instance
                .map(|i| i.kind())
                .unwrap_or(thread.channel.as_str());
            settings.check_reply_window(kind, closes_at, now, template)
        }
        None if closes_at <= now => Err(hourglass_connector::platform::window_closed(
            &thread.channel,
            closes_at,
        )),
        None => Ok(()),
    }
}

/// Runs `reply`. Everything that can be wrong (unknown thread, template
/// missing or with an undefined variable, empty text) is reported before
/// anything is queued.
pub async fn reply_command(config: &Config, args: &ReplyArgs) -> anyhow::Result<ExitCode> {
    let store = crate::daemon::open_store(config).await?;
    let Some(detail) = store.thread(args.id, Utc::now()).await? else {
        eprintln!("error: thread {} not found", args.id);
        return Ok(ExitCode::from(1));
    };
    let thread = &detail.thread;
    let (body, template) = match (&args.body, &args.template) {
        (Some(body), _) => (body.trim().to_owned(), None),
        (None, Some(name)) => {
            let vars = template_vars(thread, &args.vars);
            match render_template(
                config.templates.dir.as_deref(),
                name,
                thread.language.as_deref(),
                &vars,
            ) {
                Ok(text) => (text, Some(name.clone())),
                Err(e) => {
                    eprintln!("error: nothing was queued: {e:#}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        (None, None) => {
            eprintln!("error: give --body TEXT or --template NAME");
            return Ok(ExitCode::from(2));
        }
    };
    if body.is_empty() {
        eprintln!("error: nothing was queued: the reply is empty");
        return Ok(ExitCode::from(1));
    }
    if let Err(reason) = platform_refusal(config, &thread.instance, &body)
        .and_then(|()| window_refusal(config, thread, template.as_deref(), Utc::now()))
    {
        eprintln!("error: nothing was queued: {reason}");
        return Ok(ExitCode::from(1));
    }
    if config.instance(&thread.instance).is_none_or(|i| !i.enabled) {
        eprintln!(
            "warning: instance {:?} is not configured or not enabled; the reply waits in the outbox until it is",
            thread.instance
        );
    }
    let reply = NewReply {
        id: new_outbox_id(),
        thread_id: thread.id,
        body,
        template,
        created_by: args.actor.clone(),
    };
    enqueue_parts(config, store.as_ref(), &thread.instance, &reply).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": reply.id,
                "thread_id": reply.thread_id,
                "state": "queued",
                "text": reply.body,
            }))?
        );
    } else {
        println!("{}", reply.id);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_and_ids() {
        assert_eq!(parse_var("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_var("novalue").is_err());
        assert!(parse_var("bad name=x").is_err());
        let id = new_outbox_id();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_outbox_id());
    }
}
