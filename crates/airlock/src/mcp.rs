//! `airlock mcp`: the MCP tools on stdin/stdout for an AI agent's client (Claude Code, Claude
//! Desktop, Cursor, …), reaching the gateway through its REST API with the CLI's own client
//! and token (`AIRLOCK_SERVER`, `AIRLOCK_TOKEN`). Stdout carries only the protocol.

use crate::cli::Cli;
use crate::client::Client;
use airlock_mcp::{ConnectionInfo, ExecReply, Gateway, GatewayError, OneGateway};
use anyhow::Context;
use async_trait::async_trait;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long one call may take: the gateway waits at most `mcp.max_wait` (5 minutes at most)
/// for a decision, then runs the statement before answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(900);

struct Rest {
    client: Client,
}

fn read<T: DeserializeOwned>(value: anyhow::Result<Value>) -> Result<T, GatewayError> {
    let value = value.map_err(|e| GatewayError(format!("{e:#}")))?;
    serde_json::from_value(value)
        .map_err(|e| GatewayError(format!("the gateway sent an unreadable answer: {e}")))
}

#[async_trait]
impl Gateway for Rest {
    async fn connections(&self) -> Result<Vec<ConnectionInfo>, GatewayError> {
        read(self.client.get("/api/v1/connections", &[]).await)
    }

    async fn exec(&self, connection: &str, sql: &str) -> Result<ExecReply, GatewayError> {
        let body = json!({ "connection": connection, "sql": sql, "wait": true, "via": "mcp" });
        read(
            self.client
                .exec_answer(Method::POST, "/api/v1/exec", &[], Some(&body), CALL_TIMEOUT)
                .await,
        )
    }

    async fn poll(&self, request_id: i64, wait: bool) -> Result<ExecReply, GatewayError> {
        // The gateway bounds the wait by its `mcp.max_wait`.
        let wait = if wait { "300" } else { "0" };
        let query = [("wait", wait.to_string()), ("via", "mcp".to_string())];
        let path = format!("/api/v1/exec/{request_id}");
        read(
            self.client
                .exec_answer(Method::GET, &path, &query, None, CALL_TIMEOUT)
                .await,
        )
    }
}

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let client = Client::new(cli)?;
    let gateway: Arc<dyn Gateway> = Arc::new(Rest { client });
    airlock_mcp::serve_stdio(Arc::new(OneGateway(gateway)))
        .await
        .context("the MCP server stopped")
}
