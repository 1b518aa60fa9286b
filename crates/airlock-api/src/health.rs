//! The unauthenticated endpoints: liveness (`/healthz`), readiness (`/readyz`, a store round
//! trip) and the OpenAPI document that describes every other route.

use crate::ApiState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

const OPENAPI: &str = include_str!("openapi.json");

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    match state.gate.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
        }
    }
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
