//! `/api/v1/policies`: the live policies (admins). `GET` shows them; `PUT` replaces them with a
//! `policies:` document (YAML, or JSON, which is YAML too), validated like the config file and
//! recorded as an audit event before it takes effect; `/changes` lists those events.
//! `/explain`: what the live policy would decide for a member of some groups running some SQL
//! on a connection, with the rule that decides it. It calls the same pure `decide` the gateway
//! uses, on a synthetic identity, after looking up the volatility of called user-defined
//! functions on the upstream as the gateway does; nothing is run or recorded.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::upstream;
use crate::ApiState;
use airlock_core::classify_mysql::classify_for;
use airlock_core::config::{Config, ConnectionKind, DangerousFunctionsConfig, PolicyConfig};
use airlock_core::gate::PolicyAuthor;
use airlock_core::policy::{self, Explanation};
use airlock_core::store::PolicyChangeRecord;
use axum::extract::rejection::{JsonRejection, StringRejection};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

/// The live policies as a `policies:` document, in the form `PUT` takes back.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PolicyDocument {
    policies: Vec<PolicyConfig>,
    /// Changes to the built-in list of dangerous functions, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    dangerous_functions: Option<DangerousFunctionsConfig>,
}

/// What a `PUT` did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Replaced {
    /// Whether the policies differ from the live ones (an identical document changes nothing).
    changed: bool,
    /// How many policies are live now.
    policies: usize,
    /// The audited change, when there was one.
    change: Option<PolicyChangeRecord>,
}

#[utoipa::path(
    get,
    path = "/policies",
    operation_id = "getPolicies",
    tag = "policies",
    responses(
        (status = 200, description = "The live policies", body = PolicyDocument),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<PolicyDocument>, ApiError> {
    caller.require_admin()?;
    let policies = state.gate.policies();
    let dangerous = policies.dangerous_functions();
    Ok(Json(PolicyDocument {
        policies: policies.configs().to_vec(),
        dangerous_functions: (!dangerous.is_default()).then(|| dangerous.clone()),
    }))
}

/// Replaces every policy. Only the policies change: connections and the rest of the config are
/// the ones the gateway started with, and the new policies are checked against them.
#[utoipa::path(
    put,
    path = "/policies",
    operation_id = "replacePolicies",
    tag = "policies",
    request_body(
        description = "A `policies:` document, in YAML or JSON (which is YAML too)",
        content(
            (PolicyDocument = "application/json"),
            (String = "application/yaml"),
        )
    ),
    responses(
        (status = 200, description = "Live on every replica from now on", body = Replaced),
        (status = 400, description = "The policies are not valid; the message says where", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn replace(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<String, StringRejection>,
) -> Result<Json<Replaced>, ApiError> {
    caller.require_admin()?;
    let body =
        body.map_err(|e| ApiError::BadRequest(format!("invalid request body: {}", e.body_text())))?;
    let policies = Config::parse_policies(&body, "body", &state.config.connections)
        .map_err(|e| ApiError::BadRequest(format!("the policies are not valid:\n{e}")))?;
    let count = policies.len();
    let change = state
        .gate
        .change_policies(policies, PolicyAuthor::admin(&caller.identity))
        .await?;
    Ok(Json(Replaced {
        changed: change.is_some(),
        policies: count,
        change,
    }))
}

/// Every audited change of the live policies, newest first.
#[utoipa::path(
    get,
    path = "/policies/changes",
    operation_id = "listPolicyChanges",
    tag = "policies",
    responses(
        (status = 200, description = "The changes", body = Vec<PolicyChangeRecord>),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn changes(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<PolicyChangeRecord>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.gate.store().list_policy_changes().await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    groups: Vec<String>,
    connection: String,
    sql: String,
    /// Decide as if the gateway counted this many rows (rules with `rows_limit`).
    #[serde(default)]
    rows: Option<u64>,
}

/// What the live policy would decide for a member of `groups` running `sql` on `connection`,
/// and the rule that decides it; nothing is run or recorded.
#[utoipa::path(
    post,
    path = "/policies/explain",
    operation_id = "explainPolicy",
    tag = "policies",
    request_body = ExplainBody,
    responses(
        (status = 200, description = "The decision", body = Explanation),
        (status = 400, description = "Invalid body or unknown connection", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn explain(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<ExplainBody>, JsonRejection>,
) -> Result<Json<Explanation>, ApiError> {
    caller.require_admin()?;
    let Json(body) = body?;
    let Some(connection) = state.config.connection(&body.connection) else {
        return Err(ApiError::BadRequest(format!(
            "no connection is named `{}`",
            body.connection
        )));
    };
    let groups: Vec<String> = body
        .groups
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    let classification = match connection.kind {
        // Calls to user-defined functions are judged by the upstream's catalog, as when they run.
        ConnectionKind::Postgres => {
            upstream::judge_functions(connection, state.gate.classifier().classify(&body.sql)).await
        }
        kind => std::sync::Arc::new(classify_for(kind, &body.sql)),
    };
    Ok(Json(policy::explain_with_rows(
        &state.gate.policies(),
        groups,
        &body.connection,
        &body.sql,
        classification,
        body.rows,
    )))
}
