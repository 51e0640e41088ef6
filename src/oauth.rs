//! The OAuth consent flows (`hourglass connectors authorize NAME`, the
//! admin page's Connect button): one engine for every platform.
//!
//! The engine keeps each flow's `state` and PKCE verifier on the server
//! side, for [`FLOW_LIFETIME`] and for one callback only; the platform part
//! (consent URL, code exchange, follow-up steps) comes from the connector
//! crate ([`hourglass_connector::oauth::Consent`]). The token is kept where
//! the instance's reference says: a `file:` is written atomically with mode
//! 0600, anything else goes to the store sealed with `[store] secret_key`
//! (the vault), which the connector prefers over its configured reference.
//! The token is never printed or logged: the admin sees the scopes, the
//! account and the expiry.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use chrono::{DateTime, Utc};
use hourglass_connector::oauth::{CodeExchange, Consent, ConsentRequest, Grant, VAULT_AUTHORIZED};
use hourglass_connector::secret::{ExposeSecret, SecretRef};
use hourglass_connector::Vault;
use rand::Rng;
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::store::Store;

/// How long a consent URL stays good: the seller signs in, maybe with a
/// second factor, and agrees.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);

/// The path of the redirect, on the daemon and on the loopback listener.
pub const CALLBACK_PATH: &str = "/oauth/callback";

/// The consent flow of instance `name`, or why it has none.
pub fn consent_for(config: &Config, name: &str) -> Result<Box<dyn Consent>, String> {
    let inst = config
        .instance(name)
        .ok_or_else(|| format!("no instance named {name:?} in the configuration"))?;
    let settings = inst.settings()?;
    let consent = settings
        .consent(inst.kind(), name)
        .ok_or_else(|| {
            format!(
                "a {} instance has no consent flow: its credentials are given by reference in the configuration",
                inst.kind()
            )
        })?
        .map_err(|e| format!("instance {name:?}: {e}"))?;
    let (key, target) = consent.target();
    if !matches!(target, SecretRef::File(_)) {
        if !consent.reads_stored_token() {
            return Err(format!(
                "instance {name:?}: {key} = \"{target}\" is not a file: point it at a file (\"file:/var/lib/hourglass/{name}.token\") for hourglass to write the token there"
            ));
        }
        if config.store.secret_key.is_none() {
            return Err(format!(
                "instance {name:?}: {key} = \"{target}\" cannot be written by hourglass: point it at a file (\"file:/var/lib/hourglass/{name}.token\"), or set [store] secret_key to keep the token in the store, encrypted"
            ));
        }
    }
    Ok(consent)
}

/// A flow waiting for its callback.
pub struct Pending {
    pub instance: String,
    pub callback: String,
    verifier: SecretString,
    started: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("instance", &self.instance)
            .field("callback", &self.callback)
            .finish_non_exhaustive()
    }
}

/// A flow just started: the URL to open.
#[derive(Debug, Clone)]
pub struct Started {
    pub url: String,
    pub state: String,
}

/// Why a callback is refused before any code is exchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefused {
    #[error("the state of this redirect matches no connection in progress: it was already used, or it comes from another browser or an old link. Start the connection again")]
    UnknownState,
    #[error("the connection was started more than 10 minutes ago and has expired. Start it again")]
    Expired,
}

/// The flows in progress, by `state`.
#[derive(Default)]
pub struct Flows {
    pending: Mutex<HashMap<String, Pending>>,
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// RFC 7636 S256: `BASE64URL(SHA-256(verifier))` without padding.
pub fn code_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Flows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a flow for `instance` whose redirect comes to `callback`.
    pub fn begin(
        &self,
        consent: &dyn Consent,
        instance: &str,
        callback: &str,
    ) -> Result<Started, String> {
        let state = random_token(32);
        let verifier = random_token(64);
        let url = consent.authorize_url(&ConsentRequest {
            callback,
            state: &state,
            code_challenge: &code_challenge(&verifier),
        })?;
        let mut pending = self.lock();
        pending.retain(|_, p| p.started.elapsed() < FLOW_LIFETIME);
        pending.insert(
            state.clone(),
            Pending {
                instance: instance.to_owned(),
                callback: callback.to_owned(),
                verifier: SecretString::from(verifier),
                started: Instant::now(),
            },
        );
        Ok(Started { url, state })
    }

    /// The flow of `state`, removed: a state works once.
    pub fn take(&self, state: &str) -> Result<Pending, CallbackRefused> {
        let pending = self
            .lock()
            .remove(state)
            .ok_or(CallbackRefused::UnknownState)?;
        if pending.started.elapsed() >= FLOW_LIFETIME {
            return Err(CallbackRefused::Expired);
        }
        Ok(pending)
    }
}

/// What a finished flow granted, for the admin. Never a token.
#[derive(Debug, Clone, Serialize)]
pub struct Connected {
    pub instance: String,
    pub platform: String,
    pub account: Option<String>,
    pub scopes: Vec<String>,
    /// When the kept token stops working (eBay: 18 months), RFC 3339.
    pub expires_at: Option<DateTime<Utc>>,
    /// Where the token went: `file:/path` or `store`.
    pub kept_in: String,
    pub notes: Vec<String>,
}

impl Connected {
    /// The lines `connectors authorize` prints.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: connected to {}{}\n",
            self.instance,
            self.platform,
            self.account
                .as_ref()
                .map(|a| format!(" as {a}"))
                .unwrap_or_default()
        );
        out.push_str(&format!("  scopes: {}\n", self.scopes.join(" ")));
        if let Some(at) = self.expires_at {
            out.push_str(&format!(
                "  expires: {} (hourglass warns the admin 30 days before)\n",
                at.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        if self.kept_in == "store" {
            out.push_str("  token kept in the store, encrypted with store.secret_key\n");
        } else {
            out.push_str(&format!(
                "  token written to {} (mode 0600)\n",
                self.kept_in.trim_start_matches("file:")
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("  {n}\n"));
        }
        out
    }
}

/// Exchanges the code of `pending` and keeps the token.
pub async fn finish(
    config: &Config,
    store: Option<&Arc<dyn Store>>,
    consent: &dyn Consent,
    pending: &Pending,
    code: &str,
    account: Option<&str>,
) -> anyhow::Result<Connected> {
    let grant = consent
        .exchange(&CodeExchange {
            code,
            callback: &pending.callback,
            code_verifier: pending.verifier.expose_secret(),
            account,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let kept_in = keep(config, store, &pending.instance, &grant).await?;
    if let Some(sql) = store.and_then(|s| s.as_sql()) {
        // What was granted, for the admin page and the expiry warning.
        sql.record_grant(
            &pending.instance,
            &crate::store::ConnectorGrant {
                platform: consent.platform().to_owned(),
                account: grant.account.clone(),
                scopes: grant.scopes.join(" "),
                granted_at: Utc::now(),
                expires_at: grant.expires_at,
                expiry_alerted_at: None,
            },
        )
        .await
        .context("The token is kept, but the store cannot record the connection")?;
    }
    tracing::info!(
        instance = %pending.instance,
        platform = consent.platform(),
        kept_in = %kept_in,
        "Connected the account; the new token is kept."
    );
    Ok(Connected {
        instance: pending.instance.clone(),
        platform: consent.platform().to_owned(),
        account: grant.account.clone(),
        scopes: grant.scopes.clone(),
        expires_at: grant.expires_at,
        kept_in,
        notes: grant.notes.clone(),
    })
}

/// Keeps the token where the reference says; returns where.
async fn keep(
    config: &Config,
    store: Option<&Arc<dyn Store>>,
    instance: &str,
    grant: &Grant,
) -> anyhow::Result<String> {
    if let SecretRef::File(path) = &grant.target {
        write_secret_file(Path::new(path), &grant.token)
            .with_context(|| format!("Cannot write the token to {path} ({})", grant.key))?;
        return Ok(format!("file:{path}"));
    }
    let Some(reference) = &config.store.secret_key else {
        anyhow::bail!(
            "{} is not a file and [store] secret_key is not set: nowhere to keep the token",
            grant.key
        );
    };
    let Some(store) = store else {
        anyhow::bail!("the store is not open: nowhere to keep the token");
    };
    let secret = reference
        .resolve()
        .map_err(|e| anyhow::anyhow!("Cannot read store.secret_key: {e}"))?;
    let sealer = crate::vault::Sealer::new(&secret).map_err(anyhow::Error::msg)?;
    let vault = crate::vault::StoreVault::new(store.clone(), sealer);
    vault
        .save(instance, VAULT_AUTHORIZED, &grant.token)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok("store".to_owned())
}

/// Writes `token` to `path` readable by the daemon's user only: a
/// temporary file in the same directory (mode 0600 from the start), synced,
/// then renamed over the old one, so a reader never sees half a token.
pub fn write_secret_file(path: &Path, token: &SecretString) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".hourglass-token-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("Cannot create a file in {}", dir.display()))?;
    tmp.write_all(token.expose_secret().as_bytes())?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    #[async_trait::async_trait]
    impl Consent for Fake {
        fn platform(&self) -> &'static str {
            "Fake"
        }
        fn target(&self) -> (&'static str, &SecretRef) {
            unimplemented!()
        }
        fn authorize_url(&self, r: &ConsentRequest<'_>) -> Result<String, String> {
            Ok(format!(
                "https://fake/authorize?state={}&c={}",
                r.state, r.code_challenge
            ))
        }
        async fn exchange(
            &self,
            _: &CodeExchange<'_>,
        ) -> Result<Grant, hourglass_connector::ConnectorError> {
            unimplemented!()
        }
    }

    #[test]
    fn a_state_works_once() {
        let flows = Flows::default();
        let a = flows
            .begin(&Fake, "shop", "http://127.0.0.1:1/oauth/callback")
            .unwrap();
        let b = flows
            .begin(&Fake, "shop", "http://127.0.0.1:1/oauth/callback")
            .unwrap();
        assert_ne!(a.state, b.state);
        assert!(a.url.contains(&a.state));
        assert_eq!(
            flows.take("forged").unwrap_err(),
            CallbackRefused::UnknownState
        );
        assert_eq!(flows.take(&a.state).unwrap().instance, "shop");
        assert_eq!(
            flows.take(&a.state).unwrap_err(),
            CallbackRefused::UnknownState
        );
        assert!(flows.take(&b.state).is_ok());
    }

    #[test]
    fn the_challenge_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn token_files_are_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ebay.refresh");
        std::fs::write(&path, "old").unwrap();
        write_secret_file(&path, &SecretString::from("new-token")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

/// What came back to [`CALLBACK_PATH`].
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
    /// Amazon's name for the code (SP-API website authorization).
    #[serde(default)]
    pub spapi_oauth_code: Option<String>,
    /// Amazon: the seller who authorized.
    #[serde(default)]
    pub selling_partner_id: Option<String>,
}

/// The outcome of one callback.
#[derive(Debug)]
pub enum Callback {
    /// Refused before anything was exchanged (a wrong or replayed
    /// `state`): the flow in progress, if any, goes on waiting.
    Refused(String),
    /// The flow of `instance` ended: connected, or failed with a reason.
    Done {
        instance: String,
        result: Result<Connected, String>,
    },
}

/// Handles one redirect: checks the state, exchanges the code, keeps the
/// token.
pub async fn callback(
    flows: &Flows,
    config: &Config,
    store: Option<&Arc<dyn Store>>,
    q: &CallbackQuery,
) -> Callback {
    let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return Callback::Refused(
            "the redirect carries no state: it does not come from a connection hourglass started"
                .to_owned(),
        );
    };
    let pending = match flows.take(state) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "Refused an OAuth redirect.");
            return Callback::Refused(e.to_string());
        }
    };
    let instance = pending.instance.clone();
    let result = async {
        let consent = consent_for(config, &instance)?;
        if let Some(error) = &q.error {
            return Err(format!(
                "{} did not grant access ({error}{}{}). Start the connection again and agree to the requested permissions",
                consent.platform(),
                if q.error_description.is_some() { ": " } else { "" },
                q.error_description.as_deref().unwrap_or("")
            ));
        }
        let code = q.code.as_deref().or(q.spapi_oauth_code.as_deref());
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(format!(
                "{} sent the browser back without a code",
                consent.platform()
            ));
        };
        finish(
            config,
            store,
            consent.as_ref(),
            &pending,
            code,
            q.selling_partner_id.as_deref(),
        )
            .await
            .map_err(|e| format!("{e:#}"))
    }
    .await;
    if let Err(e) = &result {
        tracing::warn!(instance = %instance, error = %e, "Connecting the account failed.");
    }
    Callback::Done { instance, result }
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page the loopback listener answers with.
fn loopback_page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title><h1>{t}</h1><p>{x}</p><p>You can close this window and go back to the terminal.</p></html>",
        t = html_escape(title),
        x = html_escape(text).replace('\n', "<br>")
    )
}

/// Runs one flow with a one-shot listener on `listen` (`connectors
/// authorize NAME --listen 127.0.0.1:PORT`): `started` is told the URL to
/// open; returns when the flow ends or expires.
pub async fn run_loopback(
    config: &Config,
    store: Option<Arc<dyn Store>>,
    name: &str,
    listen: std::net::SocketAddr,
    started: impl FnOnce(&str, &str),
) -> anyhow::Result<Result<Connected, String>> {
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::{Html, IntoResponse};

    let consent = consent_for(config, name).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("Cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let callback_url = format!("http://{addr}{CALLBACK_PATH}");
    let flows = Arc::new(Flows::default());
    let flow = flows
        .begin(consent.as_ref(), name, &callback_url)
        .map_err(anyhow::Error::msg)?;
    drop(consent);

    struct Ctx {
        flows: Arc<Flows>,
        config: Config,
        store: Option<Arc<dyn Store>>,
        done: tokio::sync::mpsc::Sender<Result<Connected, String>>,
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let ctx = Arc::new(Ctx {
        flows,
        config: config.clone(),
        store,
        done: tx,
    });
    async fn handle(
        State(ctx): State<Arc<Ctx>>,
        Query(q): Query<CallbackQuery>,
    ) -> axum::response::Response {
        match callback(&ctx.flows, &ctx.config, ctx.store.as_ref(), &q).await {
            Callback::Refused(why) => (
                StatusCode::BAD_REQUEST,
                Html(loopback_page("Refused", &why)),
            )
                .into_response(),
            Callback::Done { result, .. } => {
                let page = match &result {
                    Ok(c) => (StatusCode::OK, Html(loopback_page("Connected", &c.text()))),
                    Err(e) => (
                        StatusCode::BAD_GATEWAY,
                        Html(loopback_page("Not connected", e)),
                    ),
                };
                let _ = ctx.done.send(result).await;
                page.into_response()
            }
        }
    }
    let app = axum::Router::new()
        .route(CALLBACK_PATH, axum::routing::get(handle))
        .with_state(ctx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    started(&flow.url, &callback_url);
    let outcome = tokio::time::timeout(FLOW_LIFETIME, rx.recv()).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(match outcome {
        Ok(Some(r)) => r,
        Ok(None) => Err("the listener stopped before the redirect came".to_owned()),
        Err(_) => Err(format!(
            "no redirect came to {callback_url} within 10 minutes; the consent URL has expired"
        )),
    })
}
