//! An operation: what an adapter asks the core to decide, normalized across protocols.

use crate::classify::Classification;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
    /// One-off statements sent through `POST /api/v1/exec` (pipelines, `airlock exec`).
    Api,
    /// Statements run by the MCP tools (`airlock mcp`, `/mcp`) on an agent's behalf.
    Mcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Api => "api",
            Protocol::Mcp => "mcp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub connection: String,
    /// The exact text the agent sent.
    pub text: Arc<str>,
    /// Bound parameters in text form (`None` for SQL NULL), for reviewers and the record.
    pub params: Vec<Option<String>>,
    pub classification: Arc<Classification>,
}
