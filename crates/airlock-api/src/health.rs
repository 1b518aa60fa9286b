//! The unauthenticated endpoints: liveness (`/healthz`) and readiness (`/readyz`, a store round
//! trip). The OpenAPI document, unauthenticated too, is served by [`crate::openapi`].

use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    security(()),
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain", example = "ok"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The store answers", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "The store does not answer", body = String, content_type = "text/plain"),
    )
)]
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    match state.gate.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
        }
    }
}
