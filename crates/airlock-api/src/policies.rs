//! `/api/v1/policies/explain`: what the live policy would decide for a member of some groups
//! running some SQL on a connection, with the rule that decides it. It calls the same pure
//! `decide` the gateway uses, on a synthetic identity; nothing is run or recorded.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ApiState;
use airlock_core::policy::{self, Explanation};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    groups: Vec<String>,
    connection: String,
    sql: String,
}

pub async fn explain(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<ExplainBody>, JsonRejection>,
) -> Result<Json<Explanation>, ApiError> {
    caller.require_admin()?;
    let Json(body) = body?;
    if state.config.connection(&body.connection).is_none() {
        return Err(ApiError::BadRequest(format!(
            "no connection is named `{}`",
            body.connection
        )));
    }
    let groups: Vec<String> = body
        .groups
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    let classification = state.gate.classifier().classify(&body.sql);
    Ok(Json(policy::explain(
        &state.gate.policies(),
        groups,
        &body.connection,
        &body.sql,
        classification,
    )))
}
