//! `/api/v1/tokens`: admins mint, list and revoke Airlock agent tokens. A minted token's
//! plaintext is in the creation response only; the store keeps its hash.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use airlock_core::store::{now_millis, Millis, TokenRecord};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    groups: Vec<String>,
    /// How long the token is valid (`24h`, `30d`); forever when absent.
    #[schema(example = "30d")]
    ttl: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    /// The token itself, shown this once: the store keeps only its hash.
    token: String,
    #[serde(flatten)]
    record: TokenRecord,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    id: String,
    revoked_at: Millis,
}

#[utoipa::path(
    get,
    path = "/tokens",
    operation_id = "listTokens",
    tag = "tokens",
    responses(
        (status = 200, description = "Every agent token, revoked ones included", body = Vec<TokenRecord>),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.gate.store().list_tokens().await?))
}

#[utoipa::path(
    post,
    path = "/tokens",
    operation_id = "createToken",
    tag = "tokens",
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new token", body = Created),
        (status = 400, description = "Invalid name, groups or ttl", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    operation_id = "revokeToken",
    tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such token, or already revoked", body = ErrorBody),
    )
)]
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
