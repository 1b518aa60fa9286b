//! Airlock's REST API: the JSON-over-HTTP face of the gate that the CLI and the web console use.
//! This crate owns the routes, bearer-token authentication of API callers, who may see what
//! (admins, reviewers, an agent's own records), the mapping of core errors to HTTP statuses and
//! `{"error": …}` bodies, and the OpenAPI document served at `/api/openapi.json`, generated
//! from the handlers.

mod approvals;
mod audit;
mod auth;
mod connections;
mod error;
mod exec;
mod health;
mod mcp;
mod mysql_upstream;
mod openapi;
mod policies;
mod sessions;
mod tokens;
mod upstream;
mod whoami;

use airlock_core::config::Config;
use airlock_core::gate::Gate;
use axum::{Extension, Router};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler reads: the gate (store, identity, approvals, policies) and the config the
/// gateway was started with (admin groups, connections).
#[derive(Clone)]
pub struct ApiState {
    pub gate: Arc<Gate>,
    pub config: Arc<Config>,
}

/// Every API route, ready to be served on the `api` listener, with the OpenAPI document that
/// describes them: a handler is mounted only through its `#[utoipa::path]` description.
pub fn router(state: ApiState) -> Router {
    // Shared by the REST exec routes and the MCP tools, which answer each other's requests.
    let jobs = Arc::new(exec::Jobs::default());
    let v1 = OpenApiRouter::new()
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::show))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::deny))
        .routes(routes!(audit::verify))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::export))
        .routes(routes!(sessions::show))
        .routes(routes!(sessions::events))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(connections::list))
        .routes(routes!(policies::show, policies::replace))
        .routes(routes!(policies::changes))
        .routes(routes!(policies::explain))
        .routes(routes!(whoami::show))
        .routes(routes!(exec::submit))
        .routes(routes!(exec::poll, exec::withdraw))
        // Background execs live as long as the router, which is the API's lifetime.
        .layer(Extension(jobs.clone()));
    let (routes, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(mcp::routes(state.clone(), jobs))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::serve))
        .nest("/api/v1", v1)
        .split_for_parts();
    routes
        .layer(Extension(openapi::Document::new(api)))
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .with_state(state)
}
