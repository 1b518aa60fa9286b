//! The OpenAPI document served at `/api/openapi.json`. Its paths and schemas are generated from
//! the handlers' `#[utoipa::path]` annotations and their request and response types as
//! [`crate::router`] mounts them, so a route cannot be served without being described. This
//! module adds what every authenticated route shares — the bearer scheme and its 401 and 503
//! answers — once, and serves the document.

use crate::error::ErrorBody;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::sync::Arc;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

/// The name of the security scheme every `/api/v1` route and `/mcp` require.
const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Airlock API",
        description = "Airlock's REST API. Every /api/v1 endpoint and /mcp need \
            `Authorization: Bearer <token>`. Errors are `{\"error\": \"...\"}`. \
            Times are Unix milliseconds."
    ),
    security(("bearer" = [])),
    tags(
        (name = "approvals", description = "The approval queue and reviewers' votes"),
        (name = "exec", description = "One-off SQL through the gate, for pipelines"),
        (name = "sessions", description = "The recorded history"),
        (name = "tokens", description = "Airlock-issued agent tokens (admins)"),
        (name = "connections", description = "The configured upstreams"),
        (name = "policies", description = "The live policies (admins)"),
        (name = "audit", description = "Checks of the tamper-evident audit log (admins)"),
        (name = "identity", description = "Who the caller is"),
        (name = "health", description = "Unauthenticated liveness, readiness and this document"),
        (name = "mcp", description = "The Model Context Protocol tools over streamable HTTP"),
    )
)]
pub struct ApiDoc;

/// The document as served, completed once when the routes are mounted.
#[derive(Clone)]
pub struct Document(Arc<OpenApi>);

impl Document {
    /// The generated document with what the authenticated routes share.
    pub fn new(mut api: OpenApi) -> Document {
        add_bearer_auth(&mut api);
        Document(Arc::new(api))
    }
}

#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "health",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
pub async fn serve(Extension(document): Extension<Document>) -> Response {
    Json(document.0.as_ref()).into_response()
}

/// Declares the bearer scheme, and on every operation that inherits the document's security
/// (those that opt out say `security(())`) the answers of a failed authentication.
fn add_bearer_auth(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An Airlock agent token (alk_…) or an OIDC token (JWT) from a configured issuer",
                ))
                .build(),
        ),
    );
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build()
    };
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            if operation.security.is_none() {
                add_response(operation, "401", || {
                    error("Missing, invalid, expired or revoked token")
                });
                add_response(operation, "503", || {
                    error("The gateway's store is unavailable")
                });
            }
        }
    }
}

fn add_response(
    operation: &mut Operation,
    status: &str,
    response: impl FnOnce() -> utoipa::openapi::Response,
) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| response().into());
}
