//! Airlock's Model Context Protocol face: the gateway's connections as tools for an AI agent
//! (`list_connections`, `describe_connection`, `run_sql`, `request_status`,
//! `wait_for_request`). This crate owns the tool set, what each tool tells the model, and how
//! the gateway's answers become tool results. It reaches the gateway only through
//! [`Gateway`] — the REST API for `airlock mcp` on stdio, the API's own handlers for the
//! streamable-HTTP endpoint `/mcp` — so a tool call takes exactly the path of
//! `POST /api/v1/exec`: identity, policy, approval, recording (as protocol `mcp`).

mod gateway;
mod render;
mod tools;

pub use gateway::{
    Connect, ConnectionInfo, ExecReply, Gateway, GatewayError, OneGateway, StatementResult,
};
pub use rmcp::model::Extensions;
pub use tools::AirlockTools;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the MCP client did not complete the handshake: {0}")]
    Handshake(String),
    #[error("the MCP session ended with an error: {0}")]
    Session(String),
}

/// Serves the tools on stdin/stdout until the client closes them.
pub async fn serve_stdio(connect: Arc<dyn Connect>) -> Result<(), ServeError> {
    let running = AirlockTools::new(connect)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServeError::Handshake(e.to_string()))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| ServeError::Session(e.to_string()))
}

/// The streamable-HTTP MCP service, to be mounted behind the API's bearer-token check. The
/// `Host` check against DNS rebinding is off: every request must carry a bearer token, which a
/// browser tricked into calling the gateway does not have.
pub fn http_service(
    connect: Arc<dyn Connect>,
) -> StreamableHttpService<AirlockTools, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(AirlockTools::new(connect.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    )
}
