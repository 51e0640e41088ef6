//! The operations behind the API and the web inbox: list, show, reply,
//! mark, stats, connectors. Handlers (JSON or HTML) call these and only
//! choose how to present the result, so both surfaces behave the same.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Principal;
use super::error::ApiError;
use super::AppState;
use crate::store::{sha256_hex, IdempotentReply, NewReply, ThreadFilter};
use crate::view;

/// A reply to a thread: a body, or a template with extra variables.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// The reply text.
    #[serde(default)]
    pub body: Option<String>,
    /// A template from the `[templates]` folder, rendered with the
    /// thread's variables.
    #[serde(default)]
    pub template: Option<String>,
    /// Extra template variables (they win over the thread's).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// A reply written to the outbox; the daemon sends it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplyQueued {
    pub outbox_id: String,
    /// queued | sending | sent | failed | uncertain
    pub state: String,
}

/// Mark a thread: no response needed, or snoozed for a while.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRequest {
    #[serde(default)]
    pub no_response_needed: Option<bool>,
    /// How long to snooze, e.g. "2h".
    #[serde(default)]
    pub snooze: Option<String>,
}

/// Two customers to link, or an identity to split off (`b` from `a`'s
/// customer, or `a` from all the others without `b`). Each is a customer
/// id (`"42"`), `"thread:17"` or `"CHANNEL:HANDLE"`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    pub a: String,
    #[serde(default)]
    pub b: Option<String>,
}

fn customer_ref(param: &str, s: &str) -> Result<crate::customers::CustomerRef, ApiError> {
    crate::customers::CustomerRef::parse(s).map_err(|e| ApiError::bad_param(param, e))
}

fn link_error(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::Invalid(m) => {
            ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "refused", m)
        }
        other => other.into(),
    }
}

impl AppState {
    /// One customer across channels, or 404.
    pub async fn show_customer(&self, r: &str) -> Result<view::Customer, ApiError> {
        let r = customer_ref("customer", r)?;
        view::customer(self.store.as_ref(), &r, Utc::now())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no such customer: {r}")))
    }

    /// Joins two customers; returns the joined one.
    pub async fn link_customers(
        &self,
        who: &Principal,
        request: &LinkRequest,
    ) -> Result<view::Customer, ApiError> {
        let a = customer_ref("a", &request.a)?;
        let b = customer_ref("b", request.b.as_deref().unwrap_or_default())?;
        let id = self
            .store
            .link_customers(&a, &b, &who.name)
            .await
            .map_err(link_error)?;
        self.show_customer(&id.to_string()).await
    }

    /// Splits an identity off its customer; returns its new customer.
    pub async fn unlink_customers(
        &self,
        who: &Principal,
        request: &LinkRequest,
    ) -> Result<view::Customer, ApiError> {
        let a = customer_ref("a", &request.a)?;
        let b = request
            .b
            .as_deref()
            .map(|b| customer_ref("b", b))
            .transpose()?;
        let id = self
            .store
            .unlink_customers(&a, b.as_ref(), &who.name)
            .await
            .map_err(link_error)?;
        self.show_customer(&id.to_string()).await
    }

    /// Threads by deadline.
    pub async fn list_threads(&self, filter: &ThreadFilter) -> Result<Vec<view::Thread>, ApiError> {
        Ok(view::threads(self.store.as_ref(), filter, Utc::now()).await?)
    }

    /// One thread with its conversation, or 404.
    pub async fn show_thread(&self, id: i64) -> Result<view::ThreadDetail, ApiError> {
        view::thread(self.store.as_ref(), id, Utc::now())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("thread {id} not found")))
    }

    /// Response times, breach rate and volume over the last `since`.
    pub async fn stats(&self, since: Duration) -> Result<view::Stats, ApiError> {
        Ok(view::stats(self.store.as_ref(), &self.config, since, Utc::now()).await?)
    }

    /// Every configured instance and its state.
    pub async fn connectors(&self) -> Result<Vec<view::ConnectorStatus>, ApiError> {
        Ok(view::connectors(self.store.as_ref(), &self.config).await?)
    }

    /// Queues a reply. With an `Idempotency-Key`, the same key (of the same
    /// caller) queues one reply however often it is sent, also across
    /// restarts: the key is kept in the store.
    pub async fn reply(
        &self,
        who: &Principal,
        id: i64,
        request: &ReplyRequest,
        idempotency_key: Option<&str>,
    ) -> Result<ReplyQueued, ApiError> {
        let now = Utc::now();
        let detail = self
            .store
            .thread(id, now)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("thread {id} not found")))?;
        let thread = &detail.thread;
        let (body, template) = match (&request.body, &request.template) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_param(
                    "template",
                    "give either body or template, not both",
                ))
            }
            (Some(body), None) => (body.trim().to_owned(), None),
            (None, Some(name)) => {
                let extra: Vec<(String, String)> = request
                    .vars
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let vars = crate::outbox::template_vars(thread, &extra);
                let text = crate::outbox::render_template(
                    self.config.templates.dir.as_deref(),
                    name,
                    thread.language.as_deref(),
                    &vars,
                )
                .map_err(|e| ApiError::bad_param("template", format!("{e:#}")))?;
                (text, Some(name.clone()))
            }
            (None, None) => return Err(ApiError::bad_param("body", "give body or template")),
        };
        if body.is_empty() {
            return Err(ApiError::bad_param("body", "the reply is empty"));
        }
        // The platform's reply window (Meta's 24 h), the same check as
        // the CLI's.
        crate::outbox::window_refusal(&self.config, thread, template.as_deref(), now)
            .map_err(ApiError::refused)?;
        // The platform's own rules (Amazon's no links, eBay's 2,000
        // characters), the same check as the CLI's.
        crate::outbox::platform_refusal(&self.config, &thread.instance, &body)
            .map_err(ApiError::refused)?;
        let mut outbox_id = crate::outbox::new_outbox_id();
        if let Some(key) = idempotency_key {
            let sql = self.sql()?;
            let fingerprint = sha256_hex(format!("{id}\n{body}").as_bytes());
            let wanted = IdempotentReply {
                request_sha256: fingerprint.clone(),
                thread_id: id,
                outbox_id: outbox_id.clone(),
            };
            let existing = if sql
                .reserve_idempotency_key(&who.name, key, &wanted, now)
                .await?
            {
                None
            } else {
                sql.idempotent_reply(&who.name, key).await?
            };
            if let Some(existing) = existing {
                if existing.request_sha256 != fingerprint {
                    return Err(ApiError::refused(
                        "this Idempotency-Key was already used for a different reply",
                    ));
                }
                if let Some(state) = sql.outbox_state(&existing.outbox_id).await? {
                    return Ok(ReplyQueued {
                        outbox_id: existing.outbox_id,
                        state,
                    });
                }
                // The key was reserved but the reply never written (a crash
                // in between): write it now, under the reserved id.
                outbox_id = existing.outbox_id;
            }
        }
        let reply = NewReply {
            id: outbox_id,
            thread_id: id,
            body,
            template,
            created_by: who.name.clone(),
        };
        crate::outbox::enqueue_parts(&self.config, self.store.as_ref(), &thread.instance, &reply)
            .await?;
        metrics::counter!("hourglass_http_replies_queued_total").increment(1);
        Ok(ReplyQueued {
            outbox_id: reply.id,
            state: "queued".into(),
        })
    }

    /// `who` takes the thread (acknowledges its alert); returns it as it
    /// is now. 409 when it is not awaiting a reply.
    pub async fn take(&self, who: &Principal, id: i64) -> Result<view::Thread, ApiError> {
        view::take(self.store.as_ref(), id, &who.name, Utc::now())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "conflict",
                    format!("thread {id} is not awaiting a reply: there is nothing to take"),
                )
            })
    }

    /// Marks a thread; returns it as it is now.
    pub async fn mark(
        &self,
        who: &Principal,
        id: i64,
        request: &MarkRequest,
    ) -> Result<view::Thread, ApiError> {
        let now = Utc::now();
        let snooze = match &request.snooze {
            Some(s) => Some(
                s.parse::<crate::duration::Dur>()
                    .map_err(|e| ApiError::bad_param("snooze", e))?,
            ),
            None => None,
        };
        let no_response_needed = request.no_response_needed == Some(true);
        if no_response_needed == snooze.is_some() {
            return Err(ApiError::bad_param(
                "no_response_needed",
                "give {\"no_response_needed\": true} or {\"snooze\": \"2h\"}",
            ));
        }
        let thread = self
            .store
            .thread(id, now)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("thread {id} not found")))?
            .thread;
        let clocking = crate::daemon::clocking_for(&self.config, &thread.instance, &thread.channel);
        match snooze {
            Some(d) => {
                self.store
                    .snooze(id, now + d.chrono(), &who.name, &clocking, now)
                    .await?
            }
            None => {
                self.store
                    .mark_no_response_needed(id, &who.name, &clocking, now)
                    .await?
            }
        }
        Ok(self.show_thread(id).await?.thread)
    }
}
