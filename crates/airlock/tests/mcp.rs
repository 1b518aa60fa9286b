//! The MCP face end to end: the real `airlock mcp` (stdio), driven by the `rmcp` client as a
//! child process, against the real `airlock serve` and a real PostgreSQL; and the
//! streamable-HTTP endpoint `/mcp` on the API listener. Every tool call takes the exec path,
//! so the template policy decides (SELECT runs, TRUNCATE is denied, DELETE/UPDATE wait for a
//! `dba` reviewer), and the sessions are recorded with protocol `mcp`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

/// The tool calls' longest block on a held statement in these tests.
const MAX_WAIT: &str = "2s";

type Client = RunningService<RoleClient, ()>;

struct Story {
    pg: PgServer,
    gw: Gateway,
    agent: String,
    dba: String,
    rt: tokio::runtime::Runtime,
}

/// The template config, plus connection `other` (to the same upstream) that only group
/// `others` may use, and `mcp.max_wait`.
fn story(timeout: &str) -> Story {
    let pg = PgServer::start(UpstreamAuth::ScramSha256);
    let other = connection_yaml("other", pg.port(), &format!("${{env:{PASSWORD_ENV}}}"));
    let yaml = template_config(&pg, timeout)
        .replacen("connections:\n", &format!("connections:\n{other}"), 1)
        + "  - name: others-only\n    groups: [others]\n    connections: [other]\n    rules:\n      \
           - match: SELECT\n        action: allow\n"
        + &format!("mcp:\n  max_wait: {MAX_WAIT}\n");
    let gw = Gateway::for_pg_config(&pg, &yaml);
    let agent = gw.mint("agent-1", &["agents"]);
    let dba = gw.mint("dba-1", &["dba"]);
    Story {
        pg,
        gw,
        agent,
        dba,
        rt: runtime(),
    }
}

impl Story {
    /// `airlock mcp` as `token`, connected with the rmcp client.
    fn mcp(&self, token: &str) -> Client {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"));
        cmd.arg("mcp")
            .current_dir(self.gw.dir())
            .env("AIRLOCK_SERVER", self.gw.server_url())
            .env("AIRLOCK_TOKEN", token);
        self.rt.block_on(async {
            let transport = TokioChildProcess::new(cmd).expect("spawn `airlock mcp`");
            tokio::time::timeout(WAIT, ().serve(transport))
                .await
                .expect("the MCP handshake in time")
                .expect("the MCP handshake")
        })
    }

    fn call(&self, client: &Client, tool: &str, args: Value) -> CallToolResult {
        let Value::Object(args) = args else {
            panic!("tool arguments must be an object")
        };
        self.rt.block_on(async {
            let call =
                client.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args));
            tokio::time::timeout(COMMAND_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| panic!("{tool} did not answer in time"))
                .unwrap_or_else(|e| panic!("{tool} failed as a protocol call: {e}"))
        })
    }
}

/// The structured content of a result, which also checks that its text says the same.
fn structured(result: &CallToolResult) -> Value {
    let value = result
        .structured_content
        .clone()
        .unwrap_or_else(|| panic!("no structured content: {result:?}"));
    let text = all_text(result);
    assert!(
        text.contains(&value.to_string()),
        "the text lacks the JSON: {text}"
    );
    value
}

fn all_text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

fn mcp_sessions(gw: &Gateway) -> usize {
    let sessions = gw.cli_json(&["sessions", "list"]);
    json_objects(&sessions)
        .into_iter()
        .filter(|o| o.get("protocol").and_then(Value::as_str) == Some("mcp"))
        .count()
}

#[test]
fn tools_list_describe_and_run_allowed_sql_and_hide_other_connections() {
    let s = story("60s");
    let client = s.mcp(&s.agent);

    let tools = s.rt.block_on(client.list_all_tools()).unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "describe_connection",
            "list_connections",
            "request_status",
            "run_sql",
            "wait_for_request"
        ]
    );
    for tool in &tools {
        assert!(
            tool.description.as_deref().unwrap_or("").len() > 80,
            "{} needs a description a model can act on",
            tool.name
        );
    }

    let listed = s.call(&client, "list_connections", json!({}));
    assert!(!is_error(&listed), "{listed:?}");
    let listed = structured(&listed);
    let connections = listed["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1, "{listed}");
    assert_eq!(connections[0]["name"], "prod");
    assert_eq!(connections[0]["type"], "postgres");
    let policy = connections[0]["policy"].as_str().unwrap();
    for needle in [
        "allows SELECT",
        "holds for approval DELETE|DROP|UPDATE (reviewers: dba)",
        "denies TRUNCATE",
    ] {
        assert!(policy.contains(needle), "{policy}");
    }

    let rows = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": "SELECT id, name FROM items ORDER BY id"}),
    );
    assert!(!is_error(&rows), "{rows:?}");
    let rows = structured(&rows);
    assert_eq!(rows["status"], "ok");
    let first = &rows["results"][0];
    assert_eq!(first["command"], "SELECT 3");
    assert_eq!(first["rows"][0], json!({"id": "1", "name": "alpha"}));
    assert_eq!(first["truncated"], false);

    let capped = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": "SELECT id FROM items", "max_rows": 1}),
    );
    let capped = structured(&capped);
    assert_eq!(capped["results"][0]["rows"].as_array().unwrap().len(), 1);
    assert_eq!(capped["results"][0]["truncated"], true);

    let described = s.call(
        &client,
        "describe_connection",
        json!({"connection": "prod"}),
    );
    assert!(!is_error(&described), "{described:?}");
    let described = structured(&described);
    let items = described["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tables"].as_array().unwrap().iter())
        .find(|t| t["table"] == "items")
        .unwrap_or_else(|| panic!("no table items: {described}"))
        .clone();
    let columns: Vec<&str> = items["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(columns.starts_with(&["id", "name"]), "{items}");

    // A connection outside the agent's groups answers exactly like one that does not exist.
    let hidden = s.call(
        &client,
        "run_sql",
        json!({"connection": "other", "sql": "SELECT 1"}),
    );
    let missing = s.call(
        &client,
        "describe_connection",
        json!({"connection": "nope"}),
    );
    assert!(is_error(&hidden) && is_error(&missing));
    assert_eq!(
        all_text(&hidden).replace("other", "X"),
        all_text(&missing).replace("nope", "X")
    );

    let denied = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": "TRUNCATE items"}),
    );
    assert!(is_error(&denied), "{denied:?}");
    let denied_json = structured(&denied);
    assert_eq!(denied_json["status"], "denied");
    assert_eq!(denied_json["reason"], TRUNCATE_REASON);
    assert!(all_text(&denied).starts_with("DENIED"), "{denied:?}");

    let failed = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": "SELECT * FROM nope"}),
    );
    assert!(is_error(&failed), "{failed:?}");
    assert!(all_text(&failed).contains("42P01"), "{failed:?}");
    assert_eq!(s.pg.item_ids(), "1,2,3");

    // run_sql, describe_connection, the denial and the failure: each an exec session as `mcp`.
    assert!(mcp_sessions(&s.gw) >= 5, "too few mcp sessions");
    let export = stdout_of(&s.gw.cli(&["sessions", "export"]));
    assert!(export.contains("TRUNCATE items"), "{export}");
    assert!(!export.contains(s.pg.password()));
    assert!(!s.gw.log().contains(s.pg.password()));
    s.rt.block_on(client.cancel()).unwrap();
}

#[test]
fn a_held_statement_is_pending_then_approved_runs_once_and_a_denial_is_a_refusal() {
    let s = story("60s");
    let client = s.mcp(&s.agent);
    let sql = "UPDATE items SET name = name || '!' WHERE id = 1";

    let held = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": sql}),
    );
    assert!(!is_error(&held), "pending is not an error: {held:?}");
    let held_json = structured(&held);
    assert_eq!(held_json["status"], "pending", "{held_json}");
    assert_eq!(held_json["notified_reviewer_groups"], json!(["dba"]));
    assert!(held_json.get("results").is_none());
    assert!(
        all_text(&held).starts_with("PENDING — NOT RUN YET"),
        "{held:?}"
    );
    assert!(all_text(&held).contains("wait_for_request"), "{held:?}");
    let id = held_json["request_id"].as_i64().unwrap();
    assert_eq!(s.gw.wait_for_pending(sql), id.to_string());

    let status = s.call(&client, "request_status", json!({"request_id": id}));
    assert_eq!(structured(&status)["status"], "pending");
    // Still undecided after max_wait: pending again.
    let waited = s.call(&client, "wait_for_request", json!({"request_id": id}));
    assert_eq!(structured(&waited)["status"], "pending");
    assert_eq!(
        s.pg.psql_admin("SELECT name FROM items WHERE id = 1"),
        "alpha"
    );

    let vote = s.gw.cli_as(
        &s.dba,
        &["approve", &id.to_string(), "--reason", "ticket OPS-7"],
    );
    assert!(vote.status.success(), "{}", describe(&vote));
    let done = s.call(&client, "wait_for_request", json!({"request_id": id}));
    assert!(!is_error(&done), "{done:?}");
    let done_json = structured(&done);
    assert_eq!(done_json["status"], "ok", "{done_json}");
    assert_eq!(done_json["request_id"], id);
    assert_eq!(done_json["results"][0]["command"], "UPDATE 1");
    // Asking again returns the same result: the statement ran exactly once.
    let again = s.call(&client, "wait_for_request", json!({"request_id": id}));
    assert_eq!(structured(&again)["results"][0]["command"], "UPDATE 1");
    let status = s.call(&client, "request_status", json!({"request_id": id}));
    assert_eq!(structured(&status)["status"], "ok");
    assert_eq!(
        s.pg.psql_admin("SELECT name FROM items WHERE id = 1"),
        "alpha!"
    );

    let sql = "DELETE FROM items WHERE id = 2";
    let held = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": sql}),
    );
    let id = structured(&held)["request_id"].as_i64().unwrap();
    let vote = s.gw.cli_as(
        &s.dba,
        &["deny", &id.to_string(), "--reason", "not during the freeze"],
    );
    assert!(vote.status.success(), "{}", describe(&vote));
    let refused = s.call(&client, "wait_for_request", json!({"request_id": id}));
    assert!(is_error(&refused), "a denial must be an error: {refused:?}");
    let refused_json = structured(&refused);
    assert_eq!(refused_json["status"], "denied");
    assert!(
        refused_json["reason"]
            .as_str()
            .unwrap()
            .contains("not during the freeze"),
        "{refused_json}"
    );
    assert!(refused_json.get("results").is_none());
    assert_eq!(s.pg.item_ids(), "1,2,3");

    // A reviewer's modified statement runs in place of the agent's, and only it.
    let sql = "DELETE FROM items WHERE id > 0";
    let held = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": sql}),
    );
    let id = structured(&held)["request_id"].as_i64().unwrap();
    let vote = s.gw.cli_as(
        &s.dba,
        &[
            "approve",
            &id.to_string(),
            "--replace-with",
            "DELETE FROM items WHERE id = 3",
        ],
    );
    assert!(vote.status.success(), "{}", describe(&vote));
    let done = s.call(&client, "wait_for_request", json!({"request_id": id}));
    assert_eq!(structured(&done)["results"][0]["command"], "DELETE 1");
    assert_eq!(s.pg.item_ids(), "1,2");

    // Someone else's request is unknown to them.
    let bystander = s.gw.mint("agent-2", &["agents"]);
    let other = s.mcp(&bystander);
    let unknown = s.call(&other, "request_status", json!({"request_id": id}));
    assert!(is_error(&unknown), "{unknown:?}");
    s.rt.block_on(other.cancel()).unwrap();
    s.rt.block_on(client.cancel()).unwrap();
}

#[test]
fn an_undecided_request_expires_as_a_refusal() {
    let s = story("3s");
    let client = s.mcp(&s.agent);
    let sql = "DELETE FROM items WHERE id = 3";
    let held = s.call(
        &client,
        "run_sql",
        json!({"connection": "prod", "sql": sql}),
    );
    let held_json = structured(&held);
    assert_eq!(held_json["status"], "pending", "{held_json}");
    let id = held_json["request_id"].as_i64().unwrap();
    let outcome = wait_until(Duration::from_secs(20), "the request to expire", || {
        let result = s.call(&client, "wait_for_request", json!({"request_id": id}));
        let value = structured(&result);
        (value["status"] != "pending").then_some((result, value))
    });
    assert!(
        is_error(&outcome.0),
        "expiry must be an error: {:?}",
        outcome.0
    );
    assert_eq!(outcome.1["status"], "expired");
    assert!(all_text(&outcome.0).starts_with("EXPIRED — NOT RUN"));
    assert_eq!(s.pg.item_ids(), "1,2,3");
    assert_eq!(s.gw.approval_state(&id.to_string()), "expired");
    s.rt.block_on(client.cancel()).unwrap();
}

/// One JSON-RPC message to `/mcp`; the HTTP status, the session header and the answer (read
/// from a JSON body or from the SSE stream's `data:` lines).
fn post_mcp(
    s: &Story,
    token: Option<&str>,
    session: Option<&str>,
    message: Value,
) -> (u16, Option<String>, Option<Value>) {
    s.rt.block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("{}/mcp", s.gw.server_url()))
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .json(&message);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request.header("Mcp-Session-Id", session);
        }
        let response = request.send().await.expect("POST /mcp");
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.text().await.unwrap_or_default();
        let answer = serde_json::from_str::<Value>(&body).ok().or_else(|| {
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|v| v.get("id").is_some())
        });
        (status, session, answer)
    })
}

#[test]
fn the_http_endpoint_needs_a_token_and_runs_the_same_tools() {
    let s = story("60s");
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "airlock-test", "version": "1"}
        }
    });
    let (status, _, _) = post_mcp(&s, None, None, initialize.clone());
    assert_eq!(status, 401);
    let (status, _, _) = post_mcp(&s, Some("alk_not-a-token"), None, initialize.clone());
    assert_eq!(status, 401);

    let (status, session, answer) = post_mcp(&s, Some(&s.agent), None, initialize);
    assert_eq!(status, 200, "{answer:?}");
    let answer = answer.unwrap();
    assert_eq!(
        answer["result"]["serverInfo"]["name"], "airlock",
        "{answer}"
    );
    let session = session.expect("an Mcp-Session-Id");
    let (status, _, _) = post_mcp(
        &s,
        Some(&s.agent),
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(status, 202);

    let call = |id: u64, tool: &str, args: Value| {
        let (status, _, answer) = post_mcp(
            &s,
            Some(&s.agent),
            Some(&session),
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": tool, "arguments": args}}),
        );
        assert_eq!(status, 200, "{answer:?}");
        answer.unwrap()["result"].clone()
    };
    let listed = call(2, "list_connections", json!({}));
    assert_eq!(
        listed["structuredContent"]["connections"][0]["name"], "prod",
        "{listed}"
    );
    assert_eq!(
        listed["structuredContent"]["connections"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let rows = call(
        3,
        "run_sql",
        json!({"connection": "prod", "sql": "SELECT name FROM items WHERE id = 2"}),
    );
    assert_eq!(rows["isError"], false, "{rows}");
    assert_eq!(
        rows["structuredContent"]["results"][0]["rows"],
        json!([{"name": "beta"}])
    );
    let denied = call(
        4,
        "run_sql",
        json!({"connection": "prod", "sql": "TRUNCATE items"}),
    );
    assert_eq!(denied["isError"], true, "{denied}");
    assert_eq!(denied["structuredContent"]["status"], "denied");
    assert!(mcp_sessions(&s.gw) >= 2);
    assert_eq!(s.pg.item_ids(), "1,2,3");
}
