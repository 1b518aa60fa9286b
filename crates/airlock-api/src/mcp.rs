//! `/mcp`: the MCP tools over streamable HTTP on the API listener. Every HTTP request is
//! authenticated like any API call (bearer token, 401 otherwise); each tool call then runs the
//! API's own handlers in process as that caller, so `/mcp` and `airlock mcp` (which calls the
//! same handlers over REST) cannot drift apart.

use crate::auth::Caller;
use crate::connections;
use crate::error::ApiError;
use crate::exec::{self, ExecRequest, Jobs, PollQuery};
use crate::ApiState;
use airlock_core::identity::Identity;
use airlock_mcp::{Connect, ConnectionInfo, ExecReply, Extensions, Gateway, GatewayError};
use async_trait::async_trait;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// The identity an HTTP request to `/mcp` authenticated, for the tool calls it carries.
#[derive(Clone)]
struct Authenticated {
    identity: Identity,
    admin: bool,
}

/// Refuses a request to `/mcp` without a valid bearer token, and hands the identity on. Every
/// request to `/mcp` passes here, so the route is described on this function.
#[utoipa::path(
    method(post, get, delete),
    path = "/mcp",
    summary = "The MCP tools over streamable HTTP: JSON-RPC messages (POST), the server's event stream (GET), the end of an MCP session (DELETE)",
    tag = "mcp",
    request_body(
        content = Object,
        description = "A JSON-RPC message of MCP's streamable HTTP transport"
    ),
    responses(
        (status = 200, description = "A JSON-RPC answer, or a server-sent event stream (`text/event-stream`)"),
        (status = 202, description = "A notification or response was accepted"),
    )
)]
pub async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => {
            parts.extensions.insert(Authenticated {
                identity: caller.identity,
                admin: caller.admin,
            });
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => e.into_response(),
    }
}

/// The API as one caller of `/mcp` sees it.
struct InProcess {
    state: ApiState,
    jobs: Arc<Jobs>,
    caller: Authenticated,
}

impl InProcess {
    fn caller(&self) -> Caller {
        Caller {
            identity: self.caller.identity.clone(),
            admin: self.caller.admin,
        }
    }
}

fn refusal(e: ApiError) -> GatewayError {
    GatewayError(e.to_string())
}

/// The handler's answer in the shape the REST client would have read.
fn as_reply<T: Serialize, U: DeserializeOwned>(answer: T) -> Result<U, GatewayError> {
    serde_json::to_value(answer)
        .and_then(serde_json::from_value)
        .map_err(|e| GatewayError(format!("the gateway could not read its own answer: {e}")))
}

#[async_trait]
impl Gateway for InProcess {
    async fn connections(&self) -> Result<Vec<ConnectionInfo>, GatewayError> {
        let Json(views) = connections::list(State(self.state.clone()), self.caller())
            .await
            .map_err(refusal)?;
        as_reply(views)
    }

    async fn exec(&self, connection: &str, sql: &str) -> Result<ExecReply, GatewayError> {
        let answer = exec::submit(
            State(self.state.clone()),
            Extension(self.jobs.clone()),
            self.caller(),
            Ok(Json(ExecRequest::from_mcp(connection, sql))),
        )
        .await
        .map_err(refusal)?;
        as_reply(answer)
    }

    async fn poll(&self, request_id: i64, wait: bool) -> Result<ExecReply, GatewayError> {
        let answer = exec::poll(
            State(self.state.clone()),
            Extension(self.jobs.clone()),
            self.caller(),
            Ok(Path(request_id)),
            Ok(Query(PollQuery::from_mcp(wait))),
        )
        .await
        .map_err(refusal)?;
        as_reply(answer)
    }
}

struct FromRequest {
    state: ApiState,
    jobs: Arc<Jobs>,
}

impl Connect for FromRequest {
    fn gateway(&self, extensions: &Extensions) -> Result<Arc<dyn Gateway>, GatewayError> {
        let caller = extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Authenticated>())
            .cloned()
            // Only reachable if the route lost its authentication layer: refuse, never guess.
            .ok_or_else(|| GatewayError("this call carries no authenticated identity".into()))?;
        Ok(Arc::new(InProcess {
            state: self.state.clone(),
            jobs: self.jobs.clone(),
            caller,
        }))
    }
}

/// The description of the `/mcp` route, which is a service rather than a handler.
#[derive(utoipa::OpenApi)]
#[openapi(paths(authenticate))]
struct McpRoute;

/// One annotation describes the three methods of `/mcp`; each gets its own operation id, and
/// only POST carries a body.
fn described_per_method(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    if let Some(item) = api.paths.paths.get_mut("/mcp") {
        let methods = [
            (&mut item.post, "mcpPost"),
            (&mut item.get, "mcpGet"),
            (&mut item.delete, "mcpDelete"),
        ];
        for (operation, id) in methods {
            if let Some(operation) = operation {
                operation.operation_id = Some(id.into());
                if id != "mcpPost" {
                    operation.request_body = None;
                }
            }
        }
    }
    api
}

/// The `/mcp` route, behind [`authenticate`].
pub fn routes(state: ApiState, jobs: Arc<Jobs>) -> OpenApiRouter<ApiState> {
    let service = airlock_mcp::http_service(Arc::new(FromRequest {
        state: state.clone(),
        jobs,
    }));
    OpenApiRouter::with_openapi(described_per_method(McpRoute::openapi()))
        .route_service("/mcp", service)
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}
