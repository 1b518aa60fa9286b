//! The API's one error type and its mapping to HTTP: every failure leaves as a status and a
//! `{"error": "…"}` body with a message meant for the caller. Internal details (store errors)
//! are logged here and replaced by a generic message, so nothing internal leaks to a client.

use airlock_core::approval::VoteError;
use airlock_core::identity::AuthError;
use airlock_core::store::StoreError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, meant for the caller.
    pub error: String,
}

impl ErrorBody {
    fn response(status: StatusCode, error: String) -> Response {
        (status, Json(ErrorBody { error })).into_response()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{}", AuthError::CLIENT_MESSAGE)]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the gateway's store is unavailable; try again shortly")]
    Unavailable,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn admin_only() -> ApiError {
        ApiError::Forbidden("only members of the admin groups may do this".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = ErrorBody::response(self.status(), self.to_string());
        if matches!(self, ApiError::Unauthenticated) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            other => {
                tracing::error!(error = %other, "API request failed on the store");
                ApiError::Unavailable
            }
        }
    }
}

impl From<VoteError> for ApiError {
    fn from(e: VoteError) -> ApiError {
        match e {
            VoteError::SelfApproval
            | VoteError::NotAReviewer(_)
            | VoteError::ReplacementRefused(_) => ApiError::Forbidden(e.to_string()),
            VoteError::InvalidReplacement(_) => ApiError::BadRequest(e.to_string()),
            VoteError::NotFound(_) => ApiError::NotFound(e.to_string()),
            VoteError::NotPending(..) | VoteError::Conflict(_) => ApiError::Conflict(e.to_string()),
            VoteError::Store(inner) => {
                tracing::error!(error = %inner, "a vote could not be stored");
                ApiError::Unavailable
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::BadRequest(format!("invalid request body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        ApiError::BadRequest(e.body_text())
    }
}

pub async fn no_route() -> ApiError {
    ApiError::NotFound("no such endpoint; see /api/openapi.json".into())
}

pub async fn wrong_method() -> Response {
    ErrorBody::response(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not accept that method; see /api/openapi.json".into(),
    )
}
