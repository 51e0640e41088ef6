//! The admin page (`/admin`, role `admin`): every instance with its state,
//! last poll, messages today, calls against the budget, webhook URL and
//! where it is configured; a Test button (`health_check`) and a Connect
//! button that runs the OAuth consent flow (src/oauth.rs) in the browser,
//! coming back at `/oauth/callback`. Configuration stays in the TOML
//! files: the page shows, tests and connects, it edits nothing.

use std::sync::LazyLock;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{Timelike, Utc};
use minijinja::context;
use serde::Deserialize;

use super::{
    error_page, forbidden, render, same_origin, session_of, sign_in_first, Session, ASSET_VERSION,
};
use crate::http::{AppState, Role};
use crate::oauth::{Callback, CallbackQuery, Flows};

/// The flows started from this page, by state. Process-wide: a reload
/// between the click and the redirect does not lose them.
static FLOWS: LazyLock<Flows> = LazyLock::new(Flows::default);

fn admin_only(s: &Session) -> Option<Response> {
    (principal_role(s) != Role::Admin).then(|| {
        error_page(
            StatusCode::FORBIDDEN,
            "Admins only",
            "The connectors page needs an admin token. Sign in with one.",
            Some(s),
        )
    })
}

fn principal_role(s: &Session) -> Role {
    s.role
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct AdminQuery {
    #[serde(default)]
    notice: Option<String>,
    #[serde(default)]
    problem: Option<String>,
}

/// `GET /admin`.
pub(super) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<AdminQuery>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    if let Some(r) = admin_only(&s) {
        return r;
    }
    let rows = match crate::view::connectors(state.store.as_ref(), &state.config).await {
        Ok(r) => r,
        Err(e) => return super::store_failed(e, &s),
    };
    let midnight = Utc::now()
        .with_hour(0)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .unwrap_or_else(Utc::now);
    let (today, grants) = match state.sql() {
        Ok(sql) => (
            sql.messages_since(midnight).await.unwrap_or_default(),
            sql.grants().await.unwrap_or_default(),
        ),
        Err(_) => Default::default(),
    };
    let now = Utc::now();
    let public = state
        .config
        .http
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_owned());
    let instances: Vec<minijinja::Value> = rows
        .iter()
        .map(|r| {
            let inst = state.config.instance(&r.name);
            let running = state.instance(&r.name);
            let webhook = match (&public, running) {
                (Some(p), Some(i)) if i.connector.accepts_webhooks() => {
                    Some(format!("{p}/webhooks/{}", r.name))
                }
                _ => None,
            };
            let location = inst.and_then(|i| i.location.as_ref()).map(|(f, l)| {
                format!("{}:{l}", f.display())
            });
            let connect = match inst.and_then(|i| i.settings().ok().map(|st| (i, st))) {
                Some((i, st)) => st.consent(i.kind(), &r.name).map(|c| c.map(|c| c.platform())),
                None => None,
            };
            let (connectable, connect_problem) = match connect {
                Some(Ok(platform)) => (Some(platform), None),
                Some(Err(e)) => (None, Some(e)),
                None => (None, None),
            };
            let usage = r.usage.as_ref();
            let calls = usage
                .and_then(|u| u.get("calls").and_then(|v| v.as_i64()))
                .or(r.api_calls_24h);
            let budget = usage
                .and_then(|u| u.get("budget").and_then(|v| v.as_i64()))
                .or(r.api_call_budget);
            let state_text = match (r.state.as_str(), r.enabled) {
                (_, false) => "disabled".to_owned(),
                ("auth_failed", _) => "auth failed".to_owned(),
                ("backoff", _) if r.last_error_kind.as_deref() == Some("rate_limited") => {
                    match r.next_poll_at {
                        Some(t) => format!("paused by the platform's rate limit until {}", t.format("%H:%M UTC")),
                        None => "paused by the platform's rate limit".to_owned(),
                    }
                }
                ("backoff", _) => "retrying after errors".to_owned(),
                ("ok", _) => "polling".to_owned(),
                (other, _) => other.to_owned(),
            };
            let grant = grants.get(&r.name);
            let expires = grant.and_then(|g| g.expires_at);
            context! {
                name => r.name,
                account => grant.and_then(|g| g.account.clone()),
                connected_at => grant.map(|g| g.granted_at.format("%Y-%m-%d %H:%M UTC").to_string()),
                expires => expires.map(|t| t.format("%Y-%m-%d").to_string()),
                expiring => expires.is_some_and(|t| t - now <= crate::alerts::admin::EXPIRY_WARNING),
                kind => r.kind,
                state => state_text,
                state_class => r.state,
                last_error => r.last_error,
                last_poll => r.last_poll_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
                messages_today => today.get(&r.name).copied().unwrap_or(0),
                calls => calls,
                budget => budget,
                webhook => webhook,
                location => location,
                running => running.is_some(),
                connectable => connectable,
                connect_problem => connect_problem,
            }
        })
        .collect();
    render(
        StatusCode::OK,
        "admin.html",
        context! {
            instances,
            notice => q.notice,
            problem => q.problem,
            user => s.name.clone(),
            admin => true,
            csrf => s.csrf.clone(),
            asset_version => &*ASSET_VERSION,
        },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn back(notice: Option<String>, problem: Option<String>) -> Response {
    let mut url = "/admin".to_owned();
    let mut sep = '?';
    for (k, v) in [("notice", notice), ("problem", problem)] {
        if let Some(v) = v {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&super::urlencode(&v));
            sep = '&';
        }
    }
    Redirect::to(&url).into_response()
}

/// `POST /admin/connectors/{name}/test`: the instance's health check.
pub(super) async fn test(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    if !s.check_csrf(&form.csrf) || !same_origin(&headers) {
        return forbidden();
    }
    if let Some(r) = admin_only(&s) {
        return r;
    }
    let Some(inst) = state.instance(&name) else {
        return back(
            None,
            Some(format!(
                "{name} is not running (disabled, or not in the configuration)."
            )),
        );
    };
    match inst.connector.health_check().await {
        Ok(()) => {
            let access = inst
                .connector
                .describe_access()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            back(Some(format!("{name}: test passed{access}.")), None)
        }
        Err(e) => back(None, Some(format!("{name}: test failed: {e}"))),
    }
}

/// `GET /admin/connectors/{name}/connect`: starts the consent flow and
/// sends the browser to the platform. A GET, because a form's redirect to
/// another site is refused by the page's `form-action 'self'`; a
/// cross-site link carries no session (SameSite=Strict) and starts
/// nothing.
pub(super) async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    if let Some(r) = admin_only(&s) {
        return r;
    }
    let Some(public) = state.config.http.public_url.as_deref() else {
        return back(None, Some("[http] public_url is not set: the platform needs it to send the browser back ({public_url}/oauth/callback). Use `hourglass connectors authorize NAME --listen` instead.".to_owned()));
    };
    let consent = match crate::oauth::consent_for(&state.config, &name) {
        Ok(c) => c,
        Err(e) => return back(None, Some(e)),
    };
    let callback = format!(
        "{}{}",
        public.trim_end_matches('/'),
        crate::oauth::CALLBACK_PATH
    );
    match FLOWS.begin(consent.as_ref(), &name, &callback) {
        Ok(started) => {
            tracing::info!(instance = %name, by = %s.name, "Connecting an account from the admin page.");
            Redirect::to(&started.url).into_response()
        }
        Err(e) => back(None, Some(e)),
    }
}

/// `GET /oauth/callback`: where the platform sends the browser back. The
/// session cookie does not come along (the redirect is cross-site): the
/// single-use `state` is what proves the flow is ours. Success asks the
/// daemon to reload, which rebuilds the instance with its new token.
pub(super) async fn callback(
    State(state): State<AppState>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let store = state.store.clone();
    let outcome = crate::oauth::callback(&FLOWS, &state.config, Some(&store), &q).await;
    let page = |status: StatusCode, title: &str, message: String| {
        render(
            status,
            "connected.html",
            context! { title, message, asset_version => &*ASSET_VERSION },
        )
    };
    match outcome {
        Callback::Refused(why) => page(StatusCode::BAD_REQUEST, "Not connected", why),
        Callback::Done {
            instance,
            result: Err(e),
        } => page(
            StatusCode::BAD_GATEWAY,
            "Not connected",
            format!("{instance}: {e}"),
        ),
        Callback::Done { result: Ok(c), .. } => {
            reload_self();
            page(StatusCode::OK, "Connected", c.text())
        }
    }
}

/// Asks this process to reload its configuration (SIGHUP, the same path
/// as `systemctl reload`): the instance is rebuilt with the new token.
fn reload_self() {
    // SAFETY: kill(2) on our own pid with a signal the daemon handles.
    let rc = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    if rc != 0 {
        tracing::warn!(
            "Cannot ask the daemon to reload after connecting: {}. Reload it (systemctl reload hourglass).",
            std::io::Error::last_os_error()
        );
    }
}
