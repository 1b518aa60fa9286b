//! `/api/v1/connections`: the configured upstreams a caller may use (admins: all). Only the
//! public part of each definition is shown; the upstream password never leaves the gateway.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ApiState;
use airlock_core::config::ConnectionKind;
use axum::extract::State;
use axum::Json;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    name: String,
    /// `postgres`, `mysql`, `ssh`, `http` or `kubernetes`.
    #[serde(rename = "type")]
    kind: &'static str,
    address: String,
    database: Option<String>,
    user: Option<String>,
    /// Whether a policy lets the caller use it (admins also see connections they may not use).
    granted: bool,
    /// What the policies let the caller do on it, in one line (`None` when not granted).
    policy: Option<String>,
}

fn kind_name(kind: ConnectionKind) -> &'static str {
    match kind {
        ConnectionKind::Postgres => "postgres",
        ConnectionKind::Mysql => "mysql",
        ConnectionKind::Ssh => "ssh",
        ConnectionKind::Http => "http",
        ConnectionKind::Kubernetes => "kubernetes",
    }
}

/// The connections a policy lets the caller use (admins: every one); never a password.
#[utoipa::path(
    get,
    path = "/connections",
    operation_id = "listConnections",
    tag = "connections",
    responses((status = 200, description = "In config order", body = Vec<ConnectionView>))
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ConnectionView>>, ApiError> {
    let policies = state.gate.policies();
    let views = state
        .config
        .connections
        .iter()
        .map(|c| (c, policies.summary(&caller.identity, &c.name)))
        .filter(|(_, summary)| caller.admin || summary.is_some())
        // Built field by field (never by serializing the config) so a password cannot slip in.
        .map(|(c, summary)| ConnectionView {
            name: c.name.clone(),
            kind: kind_name(c.kind),
            address: c.address.clone(),
            database: c.database.clone(),
            user: c.user.clone(),
            granted: summary.is_some(),
            policy: summary,
        })
        .collect();
    Ok(Json(views))
}
