//! `/api/v1/tokens`: admins mint, list and revoke Airlock agent tokens. A minted token's
//! plaintext is in the creation response only; the store keeps its hash.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ApiState;
use airlock_core::store::{now_millis, Millis, TokenRecord};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    groups: Vec<String>,
    ttl: Option<String>,
}

#[derive(Serialize)]
pub struct Created {
    token: String,
    #[serde(flatten)]
    record: TokenRecord,
}

#[derive(Serialize)]
pub struct Revoked {
    id: String,
    revoked_at: Millis,
}

pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.gate.store().list_tokens().await?))
}

pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    caller.require_admin()?;
    let Json(body) = body?;
    let name = body.name.trim();
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "a token needs a non-empty `name`".into(),
        ));
    }
    let groups: Vec<String> = body
        .groups
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.is_empty() {
        return Err(ApiError::BadRequest(
            "a token needs at least one group in `groups`".into(),
        ));
    }
    let ttl = match body.ttl.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                return Err(ApiError::BadRequest(
                    "`ttl` must be longer than zero".into(),
                ))
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid `ttl` `{text}`: {e} (use a duration such as 24h or 30d)"
                )))
            }
        },
    };
    let minted = state.gate.identity().mint(name, groups, ttl).await?;
    tracing::info!(token = %minted.record.id, by = %caller.identity.subject, groups = ?minted.record.groups, "agent token minted");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            token: minted.token,
            record: minted.record,
        }),
    ))
}

pub async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Revoked>, ApiError> {
    caller.require_admin()?;
    let Path(id) = id?;
    let at = now_millis();
    if !state.gate.store().revoke_token(&id, at).await? {
        return Err(ApiError::NotFound(format!(
            "token {id} does not exist or is already revoked"
        )));
    }
    tracing::info!(token = %id, by = %caller.identity.subject, "agent token revoked");
    Ok(Json(Revoked { id, revoked_at: at }))
}
