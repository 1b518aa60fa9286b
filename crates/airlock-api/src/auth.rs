//! Who is calling the API: the `Authorization: Bearer …` header turned into an [`Identity`]
//! by the gate's identity service, and whether that identity is an admin. Handlers that take a
//! [`Caller`] are authenticated; a failure answers 401 with the one client message and logs the
//! detail (never the token).

use crate::error::ApiError;
use crate::ApiState;
use airlock_core::identity::{AuthError, Identity};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

pub struct Caller {
    pub identity: Identity,
    pub admin: bool,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::admin_only())
        }
    }
}

/// The token from an `Authorization` header; the scheme is case-insensitive (RFC 7235).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let token = bearer(parts).unwrap_or("");
        match state.gate.identity().authenticate(token).await {
            Ok(identity) => Ok(Caller {
                admin: identity.in_any_group(&state.config.admin_groups),
                identity,
            }),
            // A store outage is not the caller's fault: saying "bad token" would send them
            // chasing the wrong problem. Still refused, so this fails closed.
            Err(AuthError::Store(e)) => {
                tracing::error!(error = %e, path = %parts.uri.path(), "cannot authenticate an API call");
                Err(ApiError::Unavailable)
            }
            Err(e) => {
                tracing::warn!(reason = %e, path = %parts.uri.path(), "API authentication failed");
                Err(ApiError::Unauthenticated)
            }
        }
    }
}
