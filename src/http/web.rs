//! The web inbox (DESIGN §6): `/login`, `/threads`, `/threads/{id}`, server
//! rendered with minijinja from the same views as the JSON API. Templates
//! and assets are compiled into the binary; the only script is
//! `/assets/inbox.js` (countdowns, self-refreshing list and thread, template
//! preview), so the Content-Security-Policy allows no inline script. Every
//! page works without it.
//!
//! Sign-in exchanges a token from `[[http.tokens]]` for a session cookie
//! (see [`session`]); every form carries the session's CSRF token.

mod admin;
pub mod session;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::service::{MarkRequest, ReplyRequest};
use super::{ApiError, AppState, Principal, Role};
use crate::clock::Status;
use crate::duration::Dur;
use crate::store::ThreadFilter;
use crate::view;
use hourglass_connector::secret::ExposeSecret as _;

/// Rows on one page of the list: more is a search, not an inbox.
const PAGE_ROWS: i64 = 200;
/// A deadline closer than this makes a row stand out as due soon.
const DUE_SOON_MS: i64 = 3_600_000;
/// Snooze lengths offered on a thread page.
const SNOOZE_OPTIONS: &[&str] = &["1h", "4h", "1d", "3d"];
/// `due within` choices in the list's filters.
const DUE_OPTIONS: &[&str] = &["15m", "1h", "6h", "24h"];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("web/assets/inbox.css");
const JS: &str = include_str!("web/assets/inbox.js");
const ICON: &str = include_str!("web/assets/favicon.svg");

/// A short hash of the assets: their URLs change when they do, so they can
/// be cached for good.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    h.update(CSS);
    h.update(JS);
    h.update(ICON);
    hex::encode(&h.finalize()[..6])
});

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    let sources: [(&str, &str); 12] = [
        ("admin.html", include_str!("web/templates/admin.html")),
        (
            "connected.html",
            include_str!("web/templates/connected.html"),
        ),
        ("base.html", include_str!("web/templates/base.html")),
        ("login.html", include_str!("web/templates/login.html")),
        ("threads.html", include_str!("web/templates/threads.html")),
        ("rows.html", include_str!("web/templates/rows.html")),
        ("summary.html", include_str!("web/templates/summary.html")),
        ("thread.html", include_str!("web/templates/thread.html")),
        ("facts.html", include_str!("web/templates/facts.html")),
        ("live.html", include_str!("web/templates/live.html")),
        ("preview.html", include_str!("web/templates/preview.html")),
        ("error.html", include_str!("web/templates/error.html")),
    ];
    for (name, source) in sources {
        if let Err(e) = env.add_template(name, source) {
            // A broken template is a build defect; the unit tests render
            // every page, so this cannot ship.
            tracing::error!(template = name, "Web template does not parse: {e:#}.");
        }
    }
    env
});

/// The inbox's routes; merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/threads") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/threads", get(list_page))
        .route("/threads/rows", get(list_rows))
        .route("/threads/{id}", get(thread_page))
        .route("/threads/{id}/live", get(thread_live))
        .route("/threads/{id}/preview", get(thread_preview))
        .route("/threads/{id}/reply", post(reply))
        .route("/threads/{id}/mark", post(mark))
        .route("/threads/{id}/customer", post(customer_link))
        .route("/assets/{name}", get(asset))
        .route("/admin", get(admin::page))
        .route("/admin/connectors/{name}/test", post(admin::test))
        .route("/admin/connectors/{name}/connect", get(admin::connect))
        .route(crate::oauth::CALLBACK_PATH, get(admin::callback))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/assets/favicon.svg") }),
        )
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // Not `no-referrer`: with it, browsers send `Origin: null` on our own
    // forms, and the origin check below could not tell them apart.
    set(h, header::REFERRER_POLICY, "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    resp
}

// ---------------------------------------------------------------------------
// Sessions

/// A signed-in agent.
#[derive(Debug, Clone)]
struct Session {
    name: String,
    role: Role,
    cookie: String,
    csrf: String,
    secret: Vec<u8>,
}

impl Session {
    fn check_csrf(&self, token: &str) -> bool {
        session::csrf_ok(&self.cookie, &self.secret, token)
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session a request carries, if its cookie verifies against the
/// current tokens (a token removed on reload signs its sessions out).
fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let cookie = cookie_value(headers, session::COOKIE)?;
    let name = session::claimed_name(cookie)?;
    let secret = inbox_secret(state, name)?;
    if !session::verify(cookie, &secret, Utc::now().timestamp()) {
        return None;
    }
    Some(Session {
        role: principal(state, name).role,
        name: name.to_owned(),
        cookie: cookie.to_owned(),
        csrf: session::csrf(cookie, &secret),
        secret,
    })
}

/// Where an unsigned request goes: pages to the sign-in form (coming back
/// afterwards), fragments get a plain 401 their script turns into a reload.
fn sign_in_first(parts_uri: &axum::http::Uri, fragment: bool) -> Response {
    if fragment {
        return (StatusCode::UNAUTHORIZED, "Sign in again.").into_response();
    }
    let next = parts_uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/threads");
    let url = format!("/login?next={}", urlencode(next));
    Redirect::to(&url).into_response()
}

/// The client's address, when the server records it (it does for the
/// sign-in throttle); otherwise one shared bucket.
struct ClientAddr(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ))
    }
}

/// A POST must come from our own pages: SameSite=Strict already keeps the
/// cookie off cross-site requests, and this refuses them outright.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// Only a local path may be a sign-in's destination (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/threads".to_owned(),
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if session_of(&state, &headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    render(
        StatusCode::OK,
        "login.html",
        context! { next, asset_version => &*ASSET_VERSION },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, not even in a debug log.
        f.debug_struct("LoginForm")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let page = |status: StatusCode, problem: String| {
        render(
            status,
            "login.html",
            context! { next => &next, problem, asset_version => &*ASSET_VERSION },
        )
    };
    if !same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            "This sign-in did not come from this site.".into(),
        );
    }
    let throttle = sign_in_throttle(&state);
    let now = Instant::now();
    if let Some(wait) = throttle.check(client, now) {
        let secs = wait.as_secs().max(1);
        let mut resp = page(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed sign-ins. Try again in {secs} seconds."),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let Some((name, secret)) = inbox_token(&state, form.token.trim().as_bytes()) else {
        throttle.failed(client, now);
        tracing::warn!(client = %client, "Failed web sign-in.");
        return page(
            StatusCode::UNAUTHORIZED,
            "That token is not valid for the inbox.".into(),
        );
    };
    throttle.succeeded(client);
    let expires = Utc::now().timestamp() + session::SESSION_TTL_SECS;
    let cookie = session::issue(&name, &secret, expires);
    tracing::info!(token = %name, "Signed in to the web inbox.");
    let mut resp = Redirect::to(&next).into_response();
    set_cookie(
        &mut resp,
        &cookie,
        session::SESSION_TTL_SECS,
        secure_cookies(&state),
    );
    resp
}

fn set_cookie(resp: &mut Response, value: &str, max_age: i64, secure: bool) {
    let v = format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        session::COOKIE,
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(s) = session_of(&state, &headers) {
        if !s.check_csrf(&form.csrf) || !same_origin(&headers) {
            return forbidden();
        }
        tracing::info!(token = %s.name, "Signed out of the web inbox.");
    }
    let mut resp = Redirect::to("/login").into_response();
    set_cookie(&mut resp, "", 0, secure_cookies(&state));
    resp
}

fn forbidden() -> Response {
    render(
        StatusCode::FORBIDDEN,
        "error.html",
        context! {
            title => "Form expired",
            message => "This form was not sent from a current inbox page (or it is too old). Go back, reload the page and try again.",
            asset_version => &*ASSET_VERSION,
        },
    )
}

// ---------------------------------------------------------------------------
// Rendering helpers

fn render(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let html = TEMPLATES.get_template(name).and_then(|t| t.render(ctx));
    match html {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template = name, "Cannot render a web page: {e:#}.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be rendered; the daemon's log says why.",
            )
                .into_response()
        }
    }
}

fn render_str(name: &str, ctx: minijinja::Value) -> Result<String, StatusCode> {
    TEMPLATES
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, "Cannot render a web fragment: {e:#}.");
            StatusCode::INTERNAL_SERVER_ERROR
        })
}

fn error_page(status: StatusCode, title: &str, message: &str, s: Option<&Session>) -> Response {
    render(
        status,
        "error.html",
        context! {
            title, message,
            user => s.map(|s| s.name.clone()),
            admin => s.is_some_and(|s| s.role == Role::Admin),
            csrf => s.map(|s| s.csrf.clone()),
            asset_version => &*ASSET_VERSION,
        },
    )
}

fn store_failed(e: impl std::fmt::Display, s: &Session) -> Response {
    tracing::error!("The web inbox cannot read the store: {e}.");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Store unavailable",
        "The database did not answer. The page will work again once it does; the daemon's log says more.",
        Some(s),
    )
}

/// Time left in words, counting down to the second in the last hour:
/// `3 h 12 min left`, `14 min 5 s left`, `breached 2 d 1 h ago`. The
/// script in `inbox.js` mirrors this.
pub fn left_text(ms: i64) -> String {
    let s = ms.unsigned_abs() / 1000;
    let (d, h, m, sec) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
    let t = if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {sec} s")
    } else {
        format!("{sec} s")
    };
    if ms >= 0 {
        format!("{t} left")
    } else {
        format!("breached {t} ago")
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn status_label(s: Status) -> &'static str {
    match s {
        Status::Awaiting => "Awaiting reply",
        Status::Answered => "Answered",
        Status::Breached => "Breached",
        Status::Snoozed => "Snoozed",
        Status::NoResponseNeeded => "No response needed",
    }
}

/// How urgent a thread looks: `breached`, `soon`, `ok` (a deadline, not
/// close) or `none` (no deadline).
fn urgency(t: &view::Thread) -> &'static str {
    match (t.status, t.time_left_ms) {
        (Status::Breached, _) => "breached",
        (_, Some(ms)) if ms < 0 => "breached",
        (_, Some(ms)) if ms < DUE_SOON_MS => "soon",
        (_, Some(_)) => "ok",
        (_, None) => "none",
    }
}

/// A thread as the list and the thread page show it.
#[derive(Debug, Serialize)]
struct ThreadRow {
    id: i64,
    customer: String,
    subject: Option<String>,
    status: &'static str,
    status_label: &'static str,
    channel: String,
    instance: String,
    order_id: Option<String>,
    marketplace: Option<String>,
    language: Option<String>,
    due_at: Option<String>,
    due_text: Option<String>,
    left_text: String,
    urgency: &'static str,
    snoozed_until: Option<String>,
    snoozed_text: Option<String>,
    reply_window_closes_at: Option<String>,
    reply_window_text: Option<String>,
    last_error: Option<String>,
    message_count: i64,
    /// Awaiting a reply: the thread can be taken.
    awaiting: bool,
    taken_by: Option<String>,
    taken_at: Option<String>,
    taken_text: Option<String>,
}

impl ThreadRow {
    fn of(t: &view::Thread) -> ThreadRow {
        let left = match (t.time_left_ms, t.status) {
            (Some(ms), _) => left_text(ms),
            (None, Status::NoResponseNeeded) => "No response needed".into(),
            (None, Status::Answered) => "Answered".into(),
            (None, _) => "—".into(),
        };
        ThreadRow {
            id: t.id,
            customer: t
                .customer
                .clone()
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_else(|| "Unknown customer".into()),
            subject: t.subject.clone(),
            status: t.status.as_str(),
            status_label: status_label(t.status),
            channel: t.channel.clone(),
            instance: t.instance.clone(),
            order_id: t.order_id.clone(),
            marketplace: t.marketplace.clone(),
            language: t.language.clone(),
            due_at: t.due_at.map(|d| d.to_rfc3339()),
            due_text: t.due_at.map(when),
            left_text: left,
            urgency: urgency(t),
            snoozed_until: t.snoozed_until.map(|d| d.to_rfc3339()),
            snoozed_text: t
                .snoozed_until
                .filter(|_| t.status == Status::Snoozed)
                .map(when),
            reply_window_closes_at: t.reply_window_closes_at.map(|d| d.to_rfc3339()),
            reply_window_text: t.reply_window_closes_at.map(when),
            last_error: t.last_error.clone(),
            message_count: t.message_count,
            awaiting: t.awaiting_since.is_some(),
            taken_by: t.taken_by.clone(),
            taken_at: t.taken_at.map(|d| d.to_rfc3339()),
            taken_text: t.taken_at.map(when),
        }
    }
}

/// An ETag over what a page shows, leaving out the time left (the script
/// counts that down itself).
fn etag_of<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    format!("\"{}\"", hex::encode(&Sha256::digest(&json)[..12]))
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

fn fragment(headers: &HeaderMap, etag: String, html: String) -> Response {
    if not_modified(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::ETAG, etag),
        ],
        html,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// The thread list

#[derive(Debug, Default, Deserialize, Serialize)]
struct ListQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    instance: String,
    #[serde(default)]
    due_within: String,
}

impl ListQuery {
    fn filtered(&self) -> bool {
        !(self.status.is_empty()
            && self.channel.is_empty()
            && self.instance.is_empty()
            && self.due_within.is_empty())
    }

    /// The query string of these filters, for the script's refresh URL.
    fn query_string(&self) -> String {
        let pairs = [
            ("status", &self.status),
            ("channel", &self.channel),
            ("instance", &self.instance),
            ("due_within", &self.due_within),
        ];
        let q: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        q.join("&")
    }

    /// The store filter, and whether only open threads (with a deadline)
    /// are wanted. An unknown value is reported, not an error page.
    fn to_filter(&self) -> (ThreadFilter, bool, Option<String>) {
        let mut filter = ThreadFilter {
            limit: Some(PAGE_ROWS + 1),
            ..ThreadFilter::default()
        };
        let mut problem = None;
        let mut open_only = false;
        match self.status.as_str() {
            "" => open_only = true,
            "all" => {}
            s => match Status::parse(s) {
                Some(st) => filter.status = Some(st),
                None => problem = Some(format!("There is no status {s:?}; showing open threads.")),
            },
        }
        if problem.is_some() {
            open_only = true;
        }
        if !self.channel.is_empty() {
            filter.channel = Some(self.channel.clone());
        }
        if !self.instance.is_empty() {
            filter.instance = Some(self.instance.clone());
        }
        if !self.due_within.is_empty() {
            match self.due_within.parse::<Dur>() {
                Ok(d) => filter.due_within = Some(d.0),
                Err(_) => {
                    problem = Some(format!(
                        "{:?} is not a duration (try 1h or 30m); showing every deadline.",
                        self.due_within
                    ))
                }
            }
        }
        (filter, open_only, problem)
    }
}

struct ListData {
    rows: Vec<ThreadRow>,
    etag: String,
    truncated: bool,
    breached: usize,
    soon: usize,
    problem: Option<String>,
}

async fn list_data(state: &AppState, q: &ListQuery) -> Result<ListData, ApiError> {
    let (filter, open_only, problem) = q.to_filter();
    let mut threads = state.list_threads(&filter).await?;
    if open_only {
        // The store lists threads with a deadline first, so dropping the
        // others keeps the order and the first page.
        threads.retain(|t| t.due_at.is_some());
    }
    let truncated = threads.len() as i64 > PAGE_ROWS;
    threads.truncate(PAGE_ROWS as usize);
    let mut stable = threads.clone();
    for t in &mut stable {
        t.time_left_ms = None;
    }
    let rows: Vec<ThreadRow> = threads.iter().map(ThreadRow::of).collect();
    let breached = rows.iter().filter(|r| r.urgency == "breached").count();
    let soon = rows.iter().filter(|r| r.urgency == "soon").count();
    Ok(ListData {
        etag: etag_of(&(&stable, truncated)),
        rows,
        truncated,
        breached,
        soon,
        problem,
    })
}

async fn list_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    let data = match list_data(&state, &q).await {
        Ok(d) => d,
        Err(e) => return store_failed(e.message, &s),
    };
    let (channels, instances) = choices(&state).await;
    let status_options: Vec<_> = [
        Status::Breached,
        Status::Awaiting,
        Status::Snoozed,
        Status::Answered,
        Status::NoResponseNeeded,
    ]
    .iter()
    .map(|st| context! { value => st.as_str(), label => status_label(*st) })
    .chain(std::iter::once(
        context! { value => "all", label => "All threads" },
    ))
    .collect();
    let qs = q.query_string();
    let health = account_health(&state);
    render(
        StatusCode::OK,
        "threads.html",
        context! {
            user => &s.name, csrf => &s.csrf, asset_version => &*ASSET_VERSION,
            admin => s.role == Role::Admin,
            threads => &data.rows, etag => &data.etag, truncated => data.truncated,
            breached => data.breached, soon => data.soon, urgent => data.breached + data.soon,
            problem => &data.problem,
            filter => &q, filtered => q.filtered(),
            status_options, due_options => DUE_OPTIONS, channels, instances,
            rows_url => if qs.is_empty() { "/threads/rows".to_owned() } else { format!("/threads/rows?{qs}") },
            soon_ms => DUE_SOON_MS, health,
        },
    )
}

/// The Late Response Rate strip above the list: per instance and
/// marketplace, the 30-day rate and tomorrow's forecast, from the
/// `/metrics` snapshot (at most a few seconds old, no query per view).
fn account_health(state: &AppState) -> Vec<minijinja::Value> {
    let Some(snapshot) = super::metrics::cached_snapshot(state) else {
        return Vec::new();
    };
    let level = state
        .config
        .alerts
        .late_response_rate
        .as_ref()
        .and_then(|l| crate::lrr::parse_level(&l.level).ok())
        .unwrap_or(0.10);
    snapshot
        .late_response_rate
        .iter()
        .filter_map(|r| {
            let w = r.windows.iter().find(|w| w.days == 30)?;
            let worst = w.forecast_if_unanswered.unwrap_or(0.0);
            let state = if w.rate.unwrap_or(0.0) >= level {
                "bad"
            } else if worst >= level {
                "warn"
            } else {
                "ok"
            };
            Some(context! {
                label => r.label(),
                rate => crate::lrr::percent(w.rate),
                if_answered => crate::lrr::percent(w.forecast_if_answered),
                if_unanswered => crate::lrr::percent(w.forecast_if_unanswered),
                pending => w.pending,
                state,
            })
        })
        .collect()
}

/// The list's rows and summary line, for the script's refresh: 304 while
/// nothing changed.
async fn list_rows(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<ListQuery>,
) -> Response {
    if session_of(&state, &headers).is_none() {
        return sign_in_first(&uri, true);
    }
    let data = match list_data(&state, &q).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("The web inbox cannot refresh the list: {}.", e.message);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let ctx = context! {
        threads => &data.rows, truncated => data.truncated, breached => data.breached,
        soon => data.soon, filtered => q.filtered(),
    };
    let rows = match render_str("rows.html", ctx.clone()) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let summary = match render_str("summary.html", ctx) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    fragment(
        &headers,
        data.etag,
        format!("{rows}<!--summary-->{summary}"),
    )
}

/// Channels and instances to filter by: the configured ones and any the
/// store has seen.
async fn choices(state: &AppState) -> (Vec<String>, Vec<String>) {
    let mut channels = BTreeSet::new();
    let mut instances = BTreeSet::new();
    for i in &config_of(state).instances {
        instances.insert(i.name().to_owned());
    }
    if let Ok(known) = store_of(state).instances().await {
        for i in known {
            if !i.channel.is_empty() {
                channels.insert(i.channel);
            }
            instances.insert(i.name);
        }
    }
    (
        channels.into_iter().collect(),
        instances.into_iter().collect(),
    )
}

// ---------------------------------------------------------------------------
// A thread

#[derive(Debug, Default, Deserialize)]
struct ThreadQuery {
    template: Option<String>,
    done: Option<String>,
    /// `?ack=1`: the page was opened from an alert's link; the "Take this
    /// thread" button has the focus.
    ack: Option<String>,
}

/// Fixed confirmation texts (a query parameter never puts its own words on
/// the page).
fn done_notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "queued" => "Reply queued. It is sent in the background; its state shows below.",
        "no_response_needed" => "Marked: No response needed.",
        "snoozed" => "Snoozed. The thread comes back when the snooze ends or the customer writes.",
        "linked" => "Linked: the other thread's customer is this customer now.",
        "unlinked" => "Split: that thread's customer stays apart from this one, also when new messages would link them.",
        "taken" => {
            "Taken: the others see that you have this thread, and its later alerts are not sent."
        }
        _ => return None,
    })
}

/// Everything the conversation part of a thread page shows.
struct ThreadData {
    row: ThreadRow,
    ctx_live: minijinja::Value,
    etag: String,
    language: Option<String>,
    summary: view::Thread,
}

#[derive(Debug, Serialize)]
struct MessageRow {
    direction: String,
    direction_label: &'static str,
    sent_at: String,
    sent_at_text: String,
    author: Option<String>,
    subject: Option<String>,
    text: String,
    automatic: bool,
    other: bool,
    thread_id: i64,
    channel: String,
    order_id: Option<String>,
    /// Why the platform did not deliver this reply, when it did not.
    undelivered: Option<String>,
}

fn outbox_label(state: &str) -> &'static str {
    match state {
        "queued" => "Queued",
        "sending" => "Sending",
        "sent" => "Sent",
        "failed" => "Not sent",
        "uncertain" => "Unknown",
        _ => "Unknown",
    }
}

/// An outbox entry's error, in plain words.
fn outbox_error(state: &str, error: Option<&str>) -> Option<String> {
    // The connector error's own prefix would say "refused" twice.
    let error = error.map(|e| e.strip_prefix("Refused by the platform: ").unwrap_or(e));
    match (state, error) {
        ("failed", Some(e)) => Some(format!("The platform refused this reply: {e}")),
        ("failed", None) => Some("The platform refused this reply.".into()),
        ("uncertain", e) => Some(format!(
            "hourglass cannot tell whether this reply reached the customer{}. Check on the platform before writing it again.",
            e.map(|e| format!(" ({e})")).unwrap_or_default()
        )),
        (_, Some(e)) => Some(format!("Last attempt failed, trying again: {e}")),
        _ => None,
    }
}

async fn thread_data(
    state: &AppState,
    id: i64,
) -> Result<Option<ThreadData>, crate::store::StoreError> {
    let store = store_of(state);
    let now = Utc::now();
    // The store's detail keeps each message's metadata (order details);
    // the view is what the API shows.
    let Some(raw) = store.thread(id, now).await? else {
        return Ok(None);
    };
    let detail = view::ThreadDetail::from(&raw);
    let order_facts = order_facts(&raw);
    let row = ThreadRow::of(&detail.thread);
    let mut messages: Vec<MessageRow> = detail
        .messages
        .iter()
        .map(|m| message_row(m, &detail.thread, false))
        .collect();
    // The customer's other conversations (other channels, other orders),
    // merged in by time.
    let related = store.customer_threads(id, now).await?;
    let mut other_threads = Vec::new();
    for r in related.iter().take(10) {
        if let Some(d) = view::thread(store.as_ref(), r.id, now).await? {
            messages.extend(d.messages.iter().map(|m| message_row(m, &d.thread, true)));
        }
        other_threads.push(context! {
            id => r.id, channel => &r.channel, instance => &r.instance, order_id => &r.order_id,
            status => r.status.as_str(),
        });
    }
    messages.sort_by(|a, b| a.sent_at.cmp(&b.sent_at));
    let mut errors = Vec::new();
    if let Some(e) = &detail.thread.last_error {
        errors.push(context! {
            title => "The last reply did not go through.",
            text => e.strip_prefix("Refused by the platform: ").map(|r| format!("The platform refused it: {r}")).unwrap_or_else(|| e.clone()),
        });
    }
    let outbox: Vec<_> = detail
        .outbox
        .iter()
        .map(|o| {
            context! {
                id => &o.id, state => &o.state, state_label => outbox_label(&o.state),
                attempts => o.attempts, error => outbox_error(&o.state, o.error.as_deref()),
                created_at => o.created_at.to_rfc3339(), created_at_text => when(o.created_at),
                sent_at => o.sent_at.map(|t| t.to_rfc3339()), sent_at_text => o.sent_at.map(when),
                text => &o.text,
            }
        })
        .collect();
    let audit: Vec<_> = detail
        .audit
        .iter()
        .map(|a| {
            context! {
                at => a.at.to_rfc3339(), at_text => when(a.at), actor => &a.actor,
                text => if a.detail.is_empty() { a.action.clone() } else { format!("{} ({})", a.action, a.detail) },
            }
        })
        .collect();
    let mut stable = detail.clone();
    stable.thread.time_left_ms = None;
    let etag = etag_of(&(&stable, related.iter().map(|r| r.id).collect::<Vec<_>>()));
    let ctx_live = context! {
        t => &row, messages, other_threads, errors, outbox, audit, order_facts,
    };
    Ok(Some(ThreadData {
        language: detail.thread.language.clone(),
        summary: detail.thread.clone(),
        row,
        ctx_live,
        etag,
    }))
}

/// Order details a connector attached to the thread's newest buyer
/// message (Amazon's SP-API: `meta.order`), as label and value.
fn order_facts(detail: &crate::store::ThreadDetail) -> Vec<minijinja::Value> {
    let Some(order) = detail
        .messages
        .iter()
        .rev()
        .find_map(|m| m.meta.get("order").filter(|o| o.is_object()))
    else {
        return Vec::new();
    };
    let text = |k: &str| {
        order
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let day = |k: &str| {
        text(k).map(|v| match DateTime::parse_from_rfc3339(&v) {
            Ok(d) => d.with_timezone(&Utc).format("%Y-%m-%d").to_string(),
            Err(_) => v,
        })
    };
    let total = order.get("total").and_then(|t| {
        let amount = t.get("amount").and_then(|v| v.as_str())?;
        let currency = t.get("currency").and_then(|v| v.as_str()).unwrap_or("");
        Some(format!("{amount} {currency}").trim().to_owned())
    });
    let fulfilment = text("fulfillment_channel").map(|f| match f.as_str() {
        "AFN" => "By Amazon".to_owned(),
        "MFN" => "By the seller".to_owned(),
        _ => f,
    });
    let flag = |k: &str| {
        order
            .get(k)
            .and_then(|v| v.as_bool().or_else(|| v.as_str().map(|s| s == "true")))
            .unwrap_or(false)
    };
    let mut notes = Vec::new();
    if flag("is_prime") {
        notes.push("Prime");
    }
    if flag("is_business_order") {
        notes.push("Business order");
    }
    [
        ("Order status", text("status")),
        ("Total", total),
        ("Purchased", day("purchase_date")),
        ("Ship by", day("latest_ship_date")),
        ("Deliver by", day("latest_delivery_date")),
        ("Fulfilment", fulfilment),
        ("Notes", (!notes.is_empty()).then(|| notes.join(", "))),
    ]
    .into_iter()
    .filter_map(|(label, value)| value.map(|value| context! { label, value }))
    .collect()
}

fn message_row(m: &view::Message, t: &view::Thread, other: bool) -> MessageRow {
    MessageRow {
        direction: m.direction.clone(),
        direction_label: match m.direction.as_str() {
            "inbound" => "Customer",
            "outbound" => "You",
            _ => "Notice",
        },
        sent_at: m.sent_at.to_rfc3339(),
        sent_at_text: when(m.sent_at),
        author: m.author.clone(),
        subject: m.subject.clone(),
        text: m.text.clone(),
        automatic: m.automatic,
        other,
        thread_id: t.id,
        channel: t.channel.clone(),
        order_id: t.order_id.clone(),
        undelivered: m.delivery_failed_at.map(|_| {
            m.delivery_error
                .clone()
                .unwrap_or_else(|| "the platform refused it".into())
        }),
    }
}

/// Template names in the `[templates]` folder (`NAME.txt`, `NAME.LANG.txt`).
fn template_names(state: &AppState) -> Vec<String> {
    let config = config_of(state);
    let Some(dir) = config.templates.dir.as_deref() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = BTreeSet::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = file.strip_suffix(".txt") {
            let name = stem.split('.').next().unwrap_or(stem);
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            {
                names.insert(name.to_owned());
            }
        }
    }
    names.into_iter().collect()
}

/// A template rendered with the thread's variables, or why it cannot be.
fn preview_of(
    state: &AppState,
    name: &str,
    thread: &view::Thread,
    language: Option<&str>,
) -> minijinja::Value {
    let config = config_of(state);
    let summary = summary_for_template(thread);
    let vars = crate::outbox::template_vars(&summary, &[]);
    match crate::outbox::render_template(config.templates.dir.as_deref(), name, language, &vars) {
        Ok(text) => context! { name, text },
        Err(e) => context! { name, error => format!("{e:#}") },
    }
}

/// The store's thread shape that template variables are made from.
fn summary_for_template(t: &view::Thread) -> crate::store::ThreadSummary {
    crate::store::ThreadSummary {
        id: t.id,
        instance: t.instance.clone(),
        channel: t.channel.clone(),
        status: t.status,
        customer: t.customer.clone(),
        order_id: t.order_id.clone(),
        marketplace: t.marketplace.clone(),
        subject: t.subject.clone(),
        language: t.language.clone(),
        awaiting_since: t.awaiting_since,
        due_at: t.due_at,
        time_left_ms: t.time_left_ms,
        reply_window_closes_at: t.reply_window_closes_at,
        snoozed_until: t.snoozed_until,
        message_count: t.message_count,
        last_error: t.last_error.clone(),
        taken_by: t.taken_by.clone(),
        taken_at: t.taken_at,
        thread_key: String::new(),
        reply_to: None,
    }
}

struct PageExtras {
    status: StatusCode,
    notice: Option<&'static str>,
    problem: Option<String>,
    reply_text: String,
    preview: Option<minijinja::Value>,
    take_focus: bool,
}

fn thread_page_response(
    state: &AppState,
    s: &Session,
    data: ThreadData,
    extras: PageExtras,
) -> Response {
    let reply_text = if extras.reply_text.is_empty() {
        extras
            .preview
            .as_ref()
            .and_then(|p| p.get_attr("text").ok())
            .and_then(|t| t.as_str().map(str::to_owned))
            .unwrap_or_default()
    } else {
        extras.reply_text
    };
    render(
        extras.status,
        "thread.html",
        context! {
            user => &s.name, csrf => &s.csrf, asset_version => &*ASSET_VERSION,
            admin => s.role == Role::Admin,
            t => &data.row, etag => &data.etag,
            notice => extras.notice, problem => extras.problem,
            templates => template_names(state), preview => extras.preview,
            reply_text, idempotency_key => crate::outbox::new_outbox_id(),
            snooze_options => SNOOZE_OPTIONS, take_focus => extras.take_focus,
            ..data.ctx_live
        },
    )
}

fn no_such_thread(id: i64, s: &Session) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "No such thread",
        &format!("There is no thread {id}. It may have been removed, or the link is wrong."),
        Some(s),
    )
}

async fn thread_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<i64>,
    Query(q): Query<ThreadQuery>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    let data = match thread_data(&state, id).await {
        Ok(Some(d)) => d,
        Ok(None) => return no_such_thread(id, &s),
        Err(e) => return store_failed(e, &s),
    };
    let preview = q
        .template
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|name| preview_of(&state, name, &data.summary, data.language.as_deref()));
    thread_page_response(
        &state,
        &s,
        data,
        PageExtras {
            status: StatusCode::OK,
            notice: done_notice(q.done.as_deref()),
            problem: None,
            reply_text: String::new(),
            preview,
            take_focus: q.ack.is_some(),
        },
    )
}

/// The changing parts of a thread page (conversation, outbox, facts) for
/// the script's refresh; 304 while nothing changed.
async fn thread_live(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<i64>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, true);
    };
    let data = match thread_data(&state, id).await {
        Ok(Some(d)) => d,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!("The web inbox cannot refresh thread {id}: {e}.");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    // The split buttons in the conversation are forms: they need the token.
    let live_ctx = context! { csrf => &s.csrf, ..data.ctx_live.clone() };
    let live = match render_str("live.html", live_ctx) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let facts = match render_str("facts.html", data.ctx_live) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    fragment(&headers, data.etag, format!("{live}<!--facts-->{facts}"))
}

#[derive(Debug, Deserialize)]
struct PreviewQuery {
    #[serde(default)]
    template: String,
}

async fn thread_preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<i64>,
    Query(q): Query<PreviewQuery>,
) -> Response {
    if session_of(&state, &headers).is_none() {
        return sign_in_first(&uri, true);
    }
    let thread = match state.show_thread(id).await {
        Ok(d) => d.thread,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => {
            tracing::warn!(
                "The web inbox cannot preview for thread {id}: {}.",
                e.message
            );
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let preview = preview_of(&state, &q.template, &thread, thread.language.as_deref());
    match render_str("preview.html", context! { preview }) {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(r) => r.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ReplyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    template: String,
    #[serde(default)]
    idempotency_key: String,
}

async fn reply(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<i64>,
    Form(form): Form<ReplyForm>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    if !s.check_csrf(&form.csrf) || !same_origin(&headers) {
        return forbidden();
    }
    let template = Some(form.template.trim()).filter(|t| !t.is_empty());
    let key = Some(form.idempotency_key.trim()).filter(|k| !k.is_empty());
    match queue_reply(&state, id, form.body.trim(), template, key, &s.name).await {
        Ok(()) => Redirect::to(&format!("/threads/{id}?done=queued#outbox-title")).into_response(),
        Err(ReplyRefused::NotFound) => no_such_thread(id, &s),
        Err(ReplyRefused::Failed(e)) => store_failed(e.message, &s),
        Err(ReplyRefused::Refused(reason)) => {
            let data = match thread_data(&state, id).await {
                Ok(Some(d)) => d,
                Ok(None) => return no_such_thread(id, &s),
                Err(e) => return store_failed(e, &s),
            };
            thread_page_response(
                &state,
                &s,
                data,
                PageExtras {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    notice: None,
                    problem: Some(format!("Nothing was sent: {reason}")),
                    reply_text: form.body,
                    preview: None,
                    take_focus: false,
                },
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct MarkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    snooze: String,
}

async fn mark(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<i64>,
    Form(form): Form<MarkForm>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    if !s.check_csrf(&form.csrf) || !same_origin(&headers) {
        return forbidden();
    }
    if form.action == "take" {
        return match state.take(&principal(&state, &s.name), id).await {
            Ok(_) => Redirect::to(&format!("/threads/{id}?done=taken")).into_response(),
            Err(e) if e.status == StatusCode::NOT_FOUND => no_such_thread(id, &s),
            Err(e) if e.status.is_client_error() => {
                error_page(e.status, "Cannot take this thread", &plain(&e), Some(&s))
            }
            Err(e) => store_failed(e.message, &s),
        };
    }
    let how = match form.action.as_str() {
        "no_response_needed" => Mark::NoResponseNeeded,
        "snooze" => match form.snooze.parse::<Dur>() {
            Ok(d) if !d.0.is_zero() => Mark::Snooze(d),
            _ => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Cannot snooze",
                    &format!("{:?} is not a duration such as 4h or 1d.", form.snooze),
                    Some(&s),
                )
            }
        },
        other => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Unknown action",
                &format!("{other:?} is not something a thread can be marked as."),
                Some(&s),
            )
        }
    };
    let done = match how {
        Mark::NoResponseNeeded => "no_response_needed",
        Mark::Snooze(_) => "snoozed",
    };
    match mark_thread(&state, id, how, &s.name).await {
        Ok(true) => Redirect::to(&format!("/threads/{id}?done={done}")).into_response(),
        Ok(false) => no_such_thread(id, &s),
        Err(e) if e.status.is_client_error() => {
            error_page(e.status, "Cannot mark this thread", &plain(&e), Some(&s))
        }
        Err(e) => store_failed(e.message, &s),
    }
}

#[derive(Debug, Deserialize)]
struct CustomerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    /// The other side: a thread number, `thread:ID` or `CHANNEL:HANDLE`.
    #[serde(default)]
    other: String,
}

/// The thread page's customer forms: link this thread's customer with
/// another one, or split another thread's identity off it.
async fn customer_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<i64>,
    Form(form): Form<CustomerForm>,
) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return sign_in_first(&uri, false);
    };
    if !s.check_csrf(&form.csrf) || !same_origin(&headers) {
        return forbidden();
    }
    let other = form.other.trim().trim_start_matches('#');
    // A plain number here is a thread: agents see thread numbers.
    let other = match other.parse::<i64>() {
        Ok(n) => format!("thread:{n}"),
        Err(_) => other.to_owned(),
    };
    let request = super::service::LinkRequest {
        a: format!("thread:{id}"),
        b: Some(other),
    };
    let who = principal(&state, &s.name);
    let (done, result) = match form.action.as_str() {
        "link" => ("linked", state.link_customers(&who, &request).await),
        "unlink" => ("unlinked", state.unlink_customers(&who, &request).await),
        other => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Unknown action",
                &format!("{other:?} is neither link nor unlink."),
                Some(&s),
            )
        }
    };
    match result {
        Ok(_) => Redirect::to(&format!("/threads/{id}?done={done}")).into_response(),
        Err(e) if e.status.is_client_error() => error_page(
            e.status,
            if done == "linked" {
                "Cannot link these customers"
            } else {
                "Cannot split these customers"
            },
            &plain(&e),
            Some(&s),
        ),
        Err(e) => store_failed(e.message, &s),
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "inbox.css" => (CSS, "text/css; charset=utf-8"),
        "inbox.js" => (JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (ICON, "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// What the inbox needs from the server and the services.

/// How a thread is marked.
#[derive(Debug, Clone, Copy)]
enum Mark {
    NoResponseNeeded,
    Snooze(Dur),
}

/// Why a reply was not queued.
#[derive(Debug)]
enum ReplyRefused {
    NotFound,
    /// The reply cannot be sent as written (empty, a template that does not
    /// render, a closed reply window); the reason is for the agent.
    Refused(String),
    Failed(ApiError),
}

fn store_of(state: &AppState) -> std::sync::Arc<dyn crate::store::Store> {
    state.store.clone()
}

fn config_of(state: &AppState) -> std::sync::Arc<crate::config::Config> {
    state.config.clone()
}

/// Failed sign-ins outlive a reload (a new generation of the server).
static THROTTLE: LazyLock<session::SignInThrottle> = LazyLock::new(Default::default);

fn sign_in_throttle(_: &AppState) -> &'static session::SignInThrottle {
    &THROTTLE
}

/// Cookies are `Secure` when the inbox is served over https.
fn secure_cookies(state: &AppState) -> bool {
    state
        .config
        .http
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
}

/// Roles that may use the inbox (a `metrics` token may not).
fn inbox_role(role: Role) -> bool {
    matches!(role, Role::Agent | Role::Admin)
}

/// The key that signs the sessions of the inbox token `name`: derived from
/// its secret, so changing the secret (and reloading) ends its sessions.
/// Never the secret itself.
fn inbox_secret(state: &AppState, name: &str) -> Option<Vec<u8>> {
    let t = state
        .config
        .http
        .tokens
        .iter()
        .find(|t| t.name == name && inbox_role(t.role))?;
    let secret = t.secret.resolve().ok()?;
    let mut h = Sha256::new();
    h.update(b"hourglass web session key\0");
    h.update(secret.expose_secret().as_bytes());
    Some(h.finalize().to_vec())
}

/// The inbox token that was typed (compared in constant time by the
/// server's token check), with its session key.
fn inbox_token(state: &AppState, typed: &[u8]) -> Option<(String, Vec<u8>)> {
    let typed = std::str::from_utf8(typed).ok()?;
    let who = state.verify_token(typed)?;
    if !inbox_role(who.role) {
        return None;
    }
    let key = inbox_secret(state, &who.name)?;
    Some((who.name, key))
}

/// The caller of the service operations: the signed-in token.
fn principal(state: &AppState, name: &str) -> Principal {
    let role = state
        .config
        .http
        .tokens
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.role)
        .unwrap_or(Role::Agent);
    Principal {
        name: name.to_owned(),
        role,
    }
}

/// An API error's message without its `parameter "x": ` prefix: the agent
/// typed into a form, not a parameter.
fn plain(e: &ApiError) -> String {
    match e.message.strip_prefix("parameter \"") {
        Some(rest) => rest
            .split_once("\": ")
            .map(|(_, why)| why.to_owned())
            .unwrap_or_else(|| e.message.clone()),
        None => e.message.clone(),
    }
}

async fn queue_reply(
    state: &AppState,
    id: i64,
    body: &str,
    template: Option<&str>,
    key: Option<&str>,
    actor: &str,
) -> Result<(), ReplyRefused> {
    // The text as the agent left it (perhaps a template's preview, edited);
    // the template itself only when nothing was typed.
    let request = if body.is_empty() && template.is_some() {
        ReplyRequest {
            template: template.map(str::to_owned),
            ..ReplyRequest::default()
        }
    } else {
        ReplyRequest {
            body: Some(body.to_owned()),
            ..ReplyRequest::default()
        }
    };
    match state
        .reply(&principal(state, actor), id, &request, key)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(ReplyRefused::NotFound),
        Err(e) if e.status.is_client_error() => Err(ReplyRefused::Refused(plain(&e))),
        Err(e) => Err(ReplyRefused::Failed(e)),
    }
}

async fn mark_thread(state: &AppState, id: i64, how: Mark, actor: &str) -> Result<bool, ApiError> {
    let request = match how {
        Mark::NoResponseNeeded => MarkRequest {
            no_response_needed: Some(true),
            snooze: None,
        },
        Mark::Snooze(d) => MarkRequest {
            no_response_needed: None,
            snooze: Some(d.to_string()),
        },
    };
    match state.mark(&principal(state, actor), id, &request).await {
        Ok(_) => Ok(true),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_in_words() {
        let cases = [
            (0, "0 s left"),
            (59_999, "59 s left"),
            (61_000, "1 min 1 s left"),
            (3_599_000, "59 min 59 s left"),
            (3_600_000, "1 h 0 min left"),
            (23 * 3_600_000 + 59 * 60_000 + 59_000, "23 h 59 min left"),
            (86_400_000, "1 d 0 h left"),
            (-1, "breached 0 s ago"),
            (-61_000, "breached 1 min 1 s ago"),
            (-(2 * 86_400_000 + 3_600_000), "breached 2 d 1 h ago"),
        ];
        for (ms, text) in cases {
            assert_eq!(left_text(ms), text, "{ms}");
        }
    }

    #[test]
    fn sign_in_only_sends_you_somewhere_on_this_site() {
        assert_eq!(safe_next(Some("/threads/7")), "/threads/7");
        assert_eq!(
            safe_next(Some("/threads?status=breached")),
            "/threads?status=breached"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "evil",
            "/\\evil.example",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/threads", "{bad}");
        }
        assert_eq!(safe_next(None), "/threads");
    }

    #[test]
    fn origins_are_compared_with_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            same_origin(&h),
            "no Origin header: a same-site form of an older browser"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hg_session=ana.5.ff; b=2"),
        );
        assert_eq!(cookie_value(&h, "hg_session"), Some("ana.5.ff"));
        assert_eq!(cookie_value(&h, "c"), None);
    }

    #[test]
    fn notices_are_fixed_texts() {
        assert!(done_notice(Some("queued")).is_some());
        assert_eq!(done_notice(Some("<script>")), None);
        assert_eq!(done_notice(None), None);
    }

    #[test]
    fn list_filters_parse_leniently() {
        let q = ListQuery {
            status: "breached".into(),
            due_within: "6h".into(),
            ..ListQuery::default()
        };
        let (f, open, problem) = q.to_filter();
        assert_eq!(f.status, Some(Status::Breached));
        assert_eq!(f.due_within, Some(std::time::Duration::from_secs(6 * 3600)));
        assert!(!open);
        assert!(problem.is_none());
        assert_eq!(q.query_string(), "status=breached&due_within=6h");

        let (_, open, problem) = ListQuery::default().to_filter();
        assert!(open, "the default is the open threads");
        assert!(problem.is_none());

        let bad = ListQuery {
            status: "lost".into(),
            ..ListQuery::default()
        };
        let (f, open, problem) = bad.to_filter();
        assert!(f.status.is_none() && open);
        assert!(problem.unwrap().contains("\"lost\""));
    }

    #[test]
    fn outbox_errors_in_plain_words() {
        assert_eq!(outbox_error("sent", None), None);
        for e in ["window closed", "Refused by the platform: window closed"] {
            assert_eq!(
                outbox_error("failed", Some(e)).as_deref(),
                Some("The platform refused this reply: window closed")
            );
        }
        assert!(outbox_error("uncertain", None)
            .unwrap()
            .contains("Check on the platform"));
    }

    fn detail_with(meta: serde_json::Value) -> crate::store::ThreadDetail {
        let thread = view::Thread {
            id: 1,
            instance: "amazon-de".into(),
            channel: "amazon".into(),
            status: Status::Awaiting,
            customer: None,
            order_id: Some("302-7654321-1234567".into()),
            marketplace: None,
            subject: None,
            language: None,
            awaiting_since: None,
            due_at: None,
            time_left_ms: None,
            reply_window_closes_at: None,
            snoozed_until: None,
            message_count: 1,
            last_error: None,
            taken_by: None,
            taken_at: None,
        };
        crate::store::ThreadDetail {
            thread: summary_for_template(&thread),
            messages: vec![crate::store::MessageView {
                id: 1,
                external_id: "m1".into(),
                direction: "inbound".into(),
                automatic: false,
                sent_at: Utc::now(),
                author: None,
                subject: None,
                text: "Hallo".into(),
                delivery_failed_at: None,
                delivery_error: None,
                meta,
                reply_to: None,
            }],
            outbox: Vec::new(),
            audit: Vec::new(),
        }
    }

    #[test]
    fn order_details_in_words() {
        let d = detail_with(serde_json::json!({"order": {
            "status": "Shipped", "purchase_date": "2026-11-18T10:00:00Z",
            "latest_ship_date": "2026-11-20T23:59:59Z", "latest_delivery_date": null,
            "fulfillment_channel": "AFN", "total": {"amount": "49.90", "currency": "EUR"},
            "is_prime": "true", "is_business_order": "false",
        }}));
        let facts: Vec<(String, String)> = order_facts(&d)
            .iter()
            .map(|f| {
                (
                    f.get_attr("label").unwrap().to_string(),
                    f.get_attr("value").unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("Order status", "Shipped"),
            ("Total", "49.90 EUR"),
            ("Purchased", "2026-11-18"),
            ("Ship by", "2026-11-20"),
            ("Fulfilment", "By Amazon"),
            ("Notes", "Prime"),
        ];
        assert_eq!(
            facts,
            want.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(order_facts(&detail_with(serde_json::json!({}))).is_empty());
        assert!(order_facts(&detail_with(serde_json::Value::Null)).is_empty());
    }

    #[test]
    fn every_template_parses() {
        for name in TEMPLATES
            .templates()
            .map(|(n, _)| n.to_owned())
            .collect::<Vec<_>>()
        {
            assert!(TEMPLATES.get_template(&name).is_ok(), "{name}");
        }
        assert_eq!(TEMPLATES.templates().count(), 12);
    }
}
