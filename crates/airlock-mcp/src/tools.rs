//! The tools and their descriptions: what a model reads to decide which tool to call and how.
//! Each call first finds the gateway of its caller ([`Connect`]); a connection the caller may
//! not use is answered exactly like one that does not exist.

use crate::gateway::{Connect, ConnectionInfo, ExecReply, Gateway, GatewayError};
use crate::render::{self, DEFAULT_ROW_CAP, MAX_ROW_CAP};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Extensions, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

const INSTRUCTIONS: &str = "Airlock is the gateway to production databases. Every statement \
you run passes its access policy: it may run at once, be refused, or be held until a human \
reviewer approves it. Start with list_connections, look at a database with \
describe_connection, run SQL with run_sql. When a result says PENDING, the statement has not \
run: call wait_for_request with its request_id (repeat while it stays pending) and never run \
the statement again. DENIED and EXPIRED results mean it did not run.";

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ConnectionArgs {
    /// The connection's name, as list_connections gives it.
    pub connection: String,
    /// Only this schema (default: every schema but the system ones).
    #[serde(default)]
    pub schema: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunSqlArgs {
    /// The connection's name, as list_connections gives it.
    pub connection: String,
    /// The SQL to run (PostgreSQL dialect). Several statements separated by `;` run as one
    /// batch and are judged together.
    pub sql: String,
    /// Rows returned per statement (default 100, at most 1000); `truncated` tells when rows
    /// were left out.
    #[serde(default)]
    pub max_rows: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RequestArgs {
    /// The approval request id from a PENDING result.
    pub request_id: i64,
}

/// Airlock's tools, for one MCP session.
#[derive(Clone)]
pub struct AirlockTools {
    connect: Arc<dyn Connect>,
    tool_router: ToolRouter<AirlockTools>,
}

fn describe_sql(schema: Option<&str>) -> String {
    let filter = match schema {
        // A literal with its quotes doubled: the upstream reads strings with
        // standard_conforming_strings on, as the gateway pins it.
        Some(schema) => format!("table_schema = '{}'", schema.replace('\'', "''")),
        None => "table_schema NOT IN ('pg_catalog', 'information_schema') \
                 AND table_schema NOT LIKE 'pg\\_toast%'"
            .to_string(),
    };
    format!(
        "SELECT table_schema, table_name, column_name, data_type, is_nullable \
         FROM information_schema.columns WHERE {filter} \
         ORDER BY table_schema, table_name, ordinal_position"
    )
}

/// The schemas, tables and columns from the rows of [`describe_sql`].
fn schemas_json(rows: &[Vec<Option<String>>]) -> Value {
    let mut schemas: BTreeMap<&str, BTreeMap<&str, Vec<Value>>> = BTreeMap::new();
    for row in rows {
        let text = |i: usize| row.get(i).and_then(|v| v.as_deref()).unwrap_or("");
        schemas
            .entry(text(0))
            .or_default()
            .entry(text(1))
            .or_default()
            .push(json!({
                "name": text(2),
                "type": text(3),
                "nullable": text(4) == "YES",
            }));
    }
    schemas
        .into_iter()
        .map(|(schema, tables)| {
            let tables: Vec<Value> = tables
                .into_iter()
                .map(|(table, columns)| json!({ "table": table, "columns": columns }))
                .collect();
            json!({ "schema": schema, "tables": tables })
        })
        .collect()
}

impl AirlockTools {
    pub fn new(connect: Arc<dyn Connect>) -> AirlockTools {
        AirlockTools {
            connect,
            tool_router: Self::tool_router(),
        }
    }

    /// The caller's gateway and the connections it may use.
    async fn usable(
        &self,
        extensions: &Extensions,
    ) -> Result<(Arc<dyn Gateway>, Vec<ConnectionInfo>), GatewayError> {
        let gateway = self.connect.gateway(extensions)?;
        let connections = gateway
            .connections()
            .await?
            .into_iter()
            .filter(|c| c.granted)
            .collect();
        Ok((gateway, connections))
    }

    /// The caller's gateway, if `connection` is one it may use.
    async fn gateway_for(
        &self,
        extensions: &Extensions,
        connection: &str,
    ) -> Result<Arc<dyn Gateway>, GatewayError> {
        let (gateway, connections) = self.usable(extensions).await?;
        if connections.iter().any(|c| c.name == connection) {
            Ok(gateway)
        } else {
            Err(GatewayError(format!(
                "there is no connection `{connection}` available to you; call list_connections \
                 for the ones you may use"
            )))
        }
    }
}

#[tool_router]
impl AirlockTools {
    #[tool(
        description = "List the database connections you may use through the Airlock gateway: \
        name, type (postgres, ...) and a one-line summary of your access policy on it (which \
        statement kinds run at once, which are held for a human reviewer's approval, which are \
        denied). Call this first; other tools take the connection name.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_connections(&self, extensions: Extensions) -> CallToolResult {
        match self.usable(&extensions).await {
            Ok((_, connections)) => {
                let names: Vec<&str> = connections.iter().map(|c| c.name.as_str()).collect();
                let list: Vec<Value> = connections
                    .iter()
                    .map(|c| json!({ "name": c.name, "type": c.kind, "policy": c.policy }))
                    .collect();
                render::success(
                    format!(
                        "{} connection(s) available: {}",
                        names.len(),
                        names.join(", ")
                    ),
                    json!({ "status": "ok", "connections": list }),
                )
            }
            Err(e) => render::refused(e.0),
        }
    }

    #[tool(
        description = "Describe a SQL connection's database: its schemas, tables and columns \
        (name, type, nullable), read from information_schema through the gateway as an \
        ordinary SELECT, so your policy applies to it like to any query (it may be held for \
        approval or denied). Optional `schema` narrows it to one schema.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn describe_connection(
        &self,
        Parameters(args): Parameters<ConnectionArgs>,
        extensions: Extensions,
    ) -> CallToolResult {
        let gateway = match self.gateway_for(&extensions, &args.connection).await {
            Ok(gateway) => gateway,
            Err(e) => return render::refused(e.0),
        };
        let sql = describe_sql(args.schema.as_deref());
        match gateway.exec(&args.connection, &sql).await {
            Ok(ExecReply::Ok { results, .. }) => {
                let (rows, truncated) = results
                    .first()
                    .map(|r| (r.rows.as_slice(), r.truncated))
                    .unwrap_or((&[], false));
                let schemas = schemas_json(rows);
                let tables: usize = schemas
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(|s| s["tables"].as_array().map(Vec::len))
                            .sum()
                    })
                    .unwrap_or(0);
                render::success(
                    format!("`{}`: {tables} table(s)", args.connection),
                    json!({
                        "status": "ok",
                        "connection": args.connection,
                        "schemas": schemas,
                        "truncated": truncated,
                    }),
                )
            }
            Ok(other) => render::exec_reply(Some(&args.connection), other, DEFAULT_ROW_CAP),
            Err(e) => render::refused(e.0),
        }
    }

    #[tool(
        description = "Run SQL on a connection through the Airlock gateway, as you (your \
        identity and policy). Returns status `ok` with each statement's command tag, rows as \
        JSON objects (capped; `truncated` tells when rows were left out) and rows affected. \
        If the policy holds the statement for human approval, the call waits a while and then \
        returns status `pending` with a request_id: the statement has NOT run; call \
        wait_for_request with that id (again while it stays pending), and do not submit the \
        statement again — once approved it runs exactly once and wait_for_request returns its \
        result. `denied` and `expired` results (isError) mean it did not run; the reason says \
        why. Credentials are never needed: the gateway holds them.",
        annotations(destructive_hint = true, open_world_hint = false)
    )]
    async fn run_sql(
        &self,
        Parameters(args): Parameters<RunSqlArgs>,
        extensions: Extensions,
    ) -> CallToolResult {
        if args.sql.trim().is_empty() {
            return render::refused("`sql` is empty".into());
        }
        let cap = args
            .max_rows
            .unwrap_or(DEFAULT_ROW_CAP)
            .clamp(1, MAX_ROW_CAP);
        let gateway = match self.gateway_for(&extensions, &args.connection).await {
            Ok(gateway) => gateway,
            Err(e) => return render::refused(e.0),
        };
        match gateway.exec(&args.connection, &args.sql).await {
            Ok(reply) => render::exec_reply(Some(&args.connection), reply, cap),
            Err(e) => render::refused(e.0),
        }
    }

    #[tool(
        description = "The current state of a held statement's approval request, without \
        waiting: `pending` (not run yet), `ok` with its result (approved and run), `error` \
        (approved, but the database refused it), `denied` or `expired` (not run).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn request_status(
        &self,
        Parameters(args): Parameters<RequestArgs>,
        extensions: Extensions,
    ) -> CallToolResult {
        self.poll(&extensions, args.request_id, false).await
    }

    #[tool(
        description = "Wait for the decision on a held statement (from a `pending` result of \
        run_sql) and return its outcome: once a reviewer approves, the statement runs (exactly \
        once) and this returns its result like run_sql. Waits a while; if still undecided it \
        returns `pending` again — then call it again. `denied` or `expired` (isError) mean the \
        statement did not run, with the reviewer's reason.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn wait_for_request(
        &self,
        Parameters(args): Parameters<RequestArgs>,
        extensions: Extensions,
    ) -> CallToolResult {
        self.poll(&extensions, args.request_id, true).await
    }
}

impl AirlockTools {
    async fn poll(&self, extensions: &Extensions, request_id: i64, wait: bool) -> CallToolResult {
        let gateway = match self.connect.gateway(extensions) {
            Ok(gateway) => gateway,
            Err(e) => return render::refused(e.0),
        };
        match gateway.poll(request_id, wait).await {
            Ok(reply) => render::exec_reply(None, reply, DEFAULT_ROW_CAP),
            Err(e) => render::refused(e.0),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AirlockTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_the_schema_as_a_literal() {
        assert!(describe_sql(Some("a'; drop table t; --"))
            .contains("table_schema = 'a''; drop table t; --'"));
    }

    #[test]
    fn rows_group_into_schemas_and_tables() {
        let row = |s: &str, t: &str, c: &str| {
            vec![
                Some(s.to_string()),
                Some(t.to_string()),
                Some(c.to_string()),
                Some("integer".to_string()),
                Some("NO".to_string()),
            ]
        };
        let value = schemas_json(&[row("public", "items", "id"), row("public", "items", "n")]);
        assert_eq!(value[0]["schema"], "public");
        assert_eq!(value[0]["tables"][0]["columns"][1]["name"], "n");
        assert_eq!(value[0]["tables"][0]["columns"][1]["nullable"], false);
    }
}
