//! The "Take this thread" button of Telegram alerts: for each Telegram
//! sink, the alert bot's updates are long-polled (`getUpdates`, only
//! `callback_query`), and a press in the sink's own chat takes the thread
//! for the agent who pressed it (their Telegram username, else first
//! name), answered with `answerCallbackQuery`. Presses from other chats
//! are refused. Use a bot for alerts that no connector instance polls:
//! Telegram lets one poller per bot (409), and this worker backs off then.

use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use hourglass_connector::secret::ExposeSecret;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::SinkType;
use super::sinks::TAKE_PREFIX;
use crate::daemon::Context;

const LONG_POLL_SECS: u64 = 25;

/// Worker: one poller per Telegram sink.
pub fn worker(ctx: Context, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut tokens_seen = Vec::new();
        for s in ctx
            .config
            .alerts
            .sinks
            .iter()
            .filter(|s| s.kind == SinkType::Telegram)
        {
            let (Some(token), Some(chat)) = (s.bot_token.as_ref(), s.chat_id.clone()) else {
                continue;
            };
            let Ok(token) = token.resolve() else { continue };
            let token = token.expose_secret().to_owned();
            // Two sinks on one bot share one poller (Telegram allows one).
            if tokens_seen.contains(&token) {
                continue;
            }
            tokens_seen.push(token.clone());
            let api = format!("{}/bot{token}", s.api_url.trim_end_matches('/'));
            tasks.spawn(poll(ctx.clone(), stop.clone(), s.name.clone(), api, chat));
        }
        while tasks.join_next().await.is_some() {}
    })
}

async fn poll(ctx: Context, stop: CancellationToken, sink: String, api: String, chat: String) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(LONG_POLL_SECS + 10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(sink = %sink, error = %e, "Cannot build the HTTP client; Telegram take buttons are off.");
            return;
        }
    };
    let mut offset: Option<i64> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut params =
            json!({ "timeout": LONG_POLL_SECS, "allowed_updates": ["callback_query"] });
        if let Some(o) = offset {
            params["offset"] = json!(o);
        }
        let call = client
            .post(format!("{api}/getUpdates"))
            .json(&params)
            .send();
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = call => r,
        };
        let updates: Option<Vec<Value>> = match answer {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(v) if v["ok"] == true => {
                    Some(v["result"].as_array().cloned().unwrap_or_default())
                }
                Ok(v) => {
                    warn!(sink = %sink, description = v["description"].as_str().unwrap_or(""),
                        "Telegram refused getUpdates for the alert bot; take buttons wait.");
                    None
                }
                Err(e) => {
                    warn!(sink = %sink, error = %e.without_url(), "Telegram answered getUpdates with no JSON.");
                    None
                }
            },
            Err(e) => {
                warn!(sink = %sink, error = %e.without_url(), "Cannot reach Telegram for the alert bot's updates.");
                None
            }
        };
        let Some(updates) = updates else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
            continue;
        };
        backoff = Duration::from_secs(1);
        for u in updates {
            if let Some(id) = u["update_id"].as_i64() {
                offset = Some(offset.map_or(id + 1, |o| o.max(id + 1)));
            }
            let q = &u["callback_query"];
            if q.is_object() {
                answer_press(&ctx, &client, &api, &chat, q).await;
            }
        }
    }
}

/// What a press means, pure: the thread to take and who takes it, or why
/// it is refused.
pub fn read_press(q: &Value, chat: &str) -> Result<(i64, String), &'static str> {
    let from_chat = q["message"]["chat"]["id"].as_i64().map(|c| c.to_string());
    if from_chat.as_deref() != Some(chat)
        && q["message"]["chat"]["username"]
            .as_str()
            .map(|u| format!("@{u}"))
            .as_deref()
            != Some(chat)
    {
        return Err("This button only works in the agents' alert chat.");
    }
    let id = q["data"]
        .as_str()
        .and_then(|d| d.strip_prefix(TAKE_PREFIX))
        .and_then(|d| d.parse::<i64>().ok())
        .ok_or("This button is not one hourglass knows.")?;
    let from = &q["from"];
    let who = from["username"]
        .as_str()
        .or(from["first_name"].as_str())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("telegram:{}", from["id"]));
    Ok((id, who))
}

async fn answer_press(ctx: &Context, client: &reqwest::Client, api: &str, chat: &str, q: &Value) {
    let text = match read_press(q, chat) {
        Err(why) => why.to_owned(),
        Ok((id, who)) => match ctx.store.take_thread(id, &who, Utc::now()).await {
            Ok(Some(t)) if t.by == who => {
                info!(thread = id, taken_by = %who, "Thread taken from Telegram.");
                format!("Thread #{id} is yours, {who}. Its later alerts are not sent.")
            }
            Ok(Some(t)) => format!("{} took thread #{id} already.", t.by),
            Ok(None) => format!("Thread #{id} is not awaiting a reply."),
            Err(crate::store::StoreError::ThreadNotFound(_)) => {
                format!("Thread #{id} does not exist.")
            }
            Err(e) => {
                warn!(thread = id, error = %e, "Cannot take a thread from Telegram.");
                "hourglass could not record this; try again or use the inbox.".to_owned()
            }
        },
    };
    let body = json!({ "callback_query_id": q["id"], "text": text });
    if let Err(e) = client
        .post(format!("{api}/answerCallbackQuery"))
        .json(&body)
        .send()
        .await
    {
        warn!(error = %e.without_url(), "Cannot answer a Telegram button press.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presses_are_read_or_refused() {
        let q = |chat: i64, data: &str| {
            json!({ "id": "1", "from": { "id": 5, "first_name": "Ana", "username": "ana_s" },
                    "message": { "message_id": 9, "chat": { "id": chat } }, "data": data })
        };
        assert_eq!(
            read_press(&q(-100, "take:42"), "-100"),
            Ok((42, "ana_s".into()))
        );
        assert!(
            read_press(&q(-999, "take:42"), "-100").is_err(),
            "another chat"
        );
        assert!(read_press(&q(-100, "take:x"), "-100").is_err());
        assert!(read_press(&q(-100, "other"), "-100").is_err());
        let mut no_user = q(-100, "take:7");
        no_user["from"]["username"] = Value::Null;
        assert_eq!(read_press(&no_user, "-100"), Ok((7, "Ana".into())));
    }
}
