//! What the tools need from the gateway, and the shapes of its answers. The answers mirror the
//! REST API's JSON (`GET /api/v1/connections`, `POST /api/v1/exec`, `GET /api/v1/exec/{id}`),
//! so the REST client and the in-process API give the tools the same thing.

use async_trait::async_trait;
use rmcp::model::Extensions;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A failure to reach or use the gateway, with the message the caller should see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GatewayError(pub String);

/// One connection as `GET /api/v1/connections` shows it to the caller.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConnectionInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether a policy lets the caller use it (admins also see the others).
    #[serde(default)]
    pub granted: bool,
    /// What the caller's policies allow, hold and deny on it, in one line.
    #[serde(default)]
    pub policy: Option<String>,
}

/// What one statement of an exec produced.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StatementResult {
    /// `DELETE 1`, `SELECT 3`.
    pub tag: String,
    pub rows_affected: u64,
    pub columns: Vec<String>,
    /// Text values, `None` for SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Whether the gateway left rows out.
    pub truncated: bool,
}

/// The answer of an exec or of a poll on a held one; `status` tells them apart.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ExecReply {
    Ok {
        #[serde(default)]
        request_id: Option<i64>,
        results: Vec<StatementResult>,
    },
    /// The upstream refused it, or could not be reached.
    Error {
        #[serde(default)]
        request_id: Option<i64>,
        error: String,
    },
    /// The policy or a reviewer refused it (or it was withdrawn).
    Denied {
        #[serde(default)]
        request_id: Option<i64>,
        reason: String,
    },
    /// No reviewer decided before the rule's timeout.
    Expired {
        #[serde(default)]
        request_id: Option<i64>,
        reason: String,
    },
    /// Held for review; nothing ran yet.
    Pending {
        request_id: i64,
        /// The groups whose members were notified and may decide.
        reviewers: Vec<String>,
        /// How long the request lives without a decision.
        timeout_secs: u64,
    },
}

/// The gateway as one authenticated caller sees it.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// The connections the caller can see.
    async fn connections(&self) -> Result<Vec<ConnectionInfo>, GatewayError>;
    /// Runs `sql` on `connection` as the MCP face (`POST /api/v1/exec` with `via: mcp`): a
    /// held statement is waited for up to the gateway's `mcp.max_wait`.
    async fn exec(&self, connection: &str, sql: &str) -> Result<ExecReply, GatewayError>;
    /// The answer of a held exec, at once or after waiting up to `mcp.max_wait`.
    async fn poll(&self, request_id: i64, wait: bool) -> Result<ExecReply, GatewayError>;
}

/// Finds the gateway for one tool call from the call's extensions: `airlock mcp` has one for
/// its whole life; `/mcp` has the caller its HTTP request authenticated.
pub trait Connect: Send + Sync + 'static {
    fn gateway(&self, extensions: &Extensions) -> Result<Arc<dyn Gateway>, GatewayError>;
}

/// A [`Connect`] that always answers the same gateway (stdio: one process, one token).
pub struct OneGateway(pub Arc<dyn Gateway>);

impl Connect for OneGateway {
    fn gateway(&self, _: &Extensions) -> Result<Arc<dyn Gateway>, GatewayError> {
        Ok(self.0.clone())
    }
}
