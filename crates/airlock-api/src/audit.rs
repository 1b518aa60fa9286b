//! `/api/v1/audit`: checks of the recorded history as evidence. Admins only: a report names
//! event ids across every session.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use airlock_core::chain::{self, ChainReport};
use axum::extract::State;
use axum::Json;

/// Walks the tamper-evident chain over every recorded event and reports its first break.
#[utoipa::path(
    get,
    path = "/audit/verify",
    operation_id = "verifyAudit",
    tag = "audit",
    responses(
        (status = 200, description = "The report; `ok` is false when the chain is broken", body = ChainReport),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn verify(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<ChainReport>, ApiError> {
    caller.require_admin()?;
    // Events appended up to now are part of what is verified.
    state.gate.sync_records().await;
    let key = state.gate.checkpoint_key().map(|k| k.public());
    Ok(Json(
        chain::verify(
            state.gate.store().as_ref(),
            key.as_ref(),
            Some(state.config.recording.checkpoint_interval),
        )
        .await?,
    ))
}
