//! Airlock's REST API: the JSON-over-HTTP face of the gate that the CLI and the web console use.
//! This crate owns the routes, bearer-token authentication of API callers, who may see what
//! (admins, reviewers, an agent's own records), the mapping of core errors to HTTP statuses and
//! `{"error": …}` bodies, and the OpenAPI document served at `/api/openapi.json`.

mod approvals;
mod audit;
mod auth;
mod connections;
mod error;
mod exec;
mod health;
mod mcp;
mod policies;
mod sessions;
mod tokens;
mod upstream;
mod whoami;

use airlock_core::config::Config;
use airlock_core::gate::Gate;
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::Arc;

/// What every handler reads: the gate (store, identity, approvals, policies) and the config the
/// gateway was started with (admin groups, connections).
#[derive(Clone)]
pub struct ApiState {
    pub gate: Arc<Gate>,
    pub config: Arc<Config>,
}

/// Every API route, ready to be served on the `api` listener.
pub fn router(state: ApiState) -> Router {
    // Shared by the REST exec routes and the MCP tools, which answer each other's requests.
    let jobs = Arc::new(exec::Jobs::default());
    let v1 = Router::new()
        .route("/approvals", get(approvals::list))
        .route("/audit/verify", get(audit::verify))
        .route("/approvals/{id}", get(approvals::show))
        .route("/approvals/{id}/approve", post(approvals::approve))
        .route("/approvals/{id}/deny", post(approvals::deny))
        .route("/sessions", get(sessions::list))
        .route("/sessions/export", get(sessions::export))
        .route("/sessions/{id}", get(sessions::show))
        .route("/sessions/{id}/events", get(sessions::events))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", delete(tokens::revoke))
        .route("/connections", get(connections::list))
        .route("/policies", get(policies::show).put(policies::replace))
        .route("/policies/changes", get(policies::changes))
        .route("/policies/explain", post(policies::explain))
        .route("/whoami", get(whoami::show))
        .route("/exec", post(exec::submit))
        .route("/exec/{id}", get(exec::poll).delete(exec::withdraw))
        // Background execs live as long as the router, which is the API's lifetime.
        .layer(axum::Extension(jobs.clone()));
    Router::new()
        .merge(mcp::routes(state.clone(), jobs))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/openapi.json", get(health::openapi))
        .nest("/api/v1", v1)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .with_state(state)
}
