//! The web inbox (`/login`, `/threads`, `/threads/{id}`, `/` redirects):
//! server-rendered pages for agents. Its handlers call the operations on
//! [`super::AppState`] (`list_threads`, `show_thread`, `reply`, `mark`) and
//! [`super::AppState::verify_token`] to sign in.

use axum::Router;

use super::AppState;

/// The inbox's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
