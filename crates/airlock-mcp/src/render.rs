//! Tool results from the gateway's answers. Every result carries the same JSON twice, as
//! `structuredContent` and as text (clients that read only text see it all), led by one plain
//! sentence for the model. Anything that did not run — denied, expired, withdrawn, failed
//! upstream — is `isError: true` with the reason, so it can never be read as success; a held
//! statement is a "pending" result that says it has not run and what to call next.

use crate::gateway::{ExecReply, StatementResult};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::time::Duration;

/// Rows per statement a tool returns unless the call asks for another cap.
pub const DEFAULT_ROW_CAP: usize = 100;
/// The most rows per statement a call may ask for (the gateway's own cap).
pub const MAX_ROW_CAP: usize = 1000;

fn with_lead(mut result: CallToolResult, lead: String) -> CallToolResult {
    result.content.insert(0, ContentBlock::text(lead));
    result
}

pub fn success(lead: String, value: Value) -> CallToolResult {
    with_lead(CallToolResult::structured(value), lead)
}

pub fn failure(lead: String, value: Value) -> CallToolResult {
    with_lead(CallToolResult::structured_error(value), lead)
}

/// A refusal of the call itself (unknown connection, the gateway unreachable, …).
pub fn refused(message: String) -> CallToolResult {
    failure(
        format!("ERROR: {message}"),
        json!({ "status": "error", "error": message }),
    )
}

/// Column names made unique (`count`, `count_2`), so rows can be JSON objects.
fn unique_columns(columns: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    columns
        .iter()
        .map(|name| {
            let mut unique = name.clone();
            let mut n = 1;
            while !seen.insert(unique.clone()) {
                n += 1;
                unique = format!("{name}_{n}");
            }
            unique
        })
        .collect()
}

fn statement_json(result: &StatementResult, cap: usize) -> Value {
    let columns = unique_columns(&result.columns);
    let rows: Vec<Value> = result
        .rows
        .iter()
        .take(cap)
        .map(|row| {
            let object: Map<String, Value> = columns
                .iter()
                .cloned()
                .zip(
                    row.iter()
                        .map(|v| v.clone().map_or(Value::Null, Value::String)),
                )
                .collect();
            Value::Object(object)
        })
        .collect();
    json!({
        "command": result.tag,
        "rows_affected": result.rows_affected,
        "columns": result.columns,
        "rows": rows,
        "truncated": result.truncated || result.rows.len() > cap,
    })
}

/// How a held request is answered while no decision has come.
fn pending(request_id: i64, reviewers: &[String], timeout_secs: u64) -> CallToolResult {
    let expires = humantime::format_duration(Duration::from_secs(timeout_secs));
    let reviewers_text = reviewers.join(", ");
    let lead = format!(
        "PENDING — NOT RUN YET: the statement needs a human reviewer's approval. Approval \
         request {request_id} was sent to reviewers in [{reviewers_text}]. Call \
         `wait_for_request` with request_id {request_id} to wait for the decision: once \
         approved it returns the statement's result (the statement runs exactly once, do not \
         run it again). The request expires {expires} after it was made."
    );
    success(
        lead,
        json!({
            "status": "pending",
            "request_id": request_id,
            "notified_reviewer_groups": reviewers,
            "expires_after": expires.to_string(),
            "next": format!("call wait_for_request with request_id {request_id}"),
        }),
    )
}

/// The tool result for an exec's answer; `cap` bounds the rows per statement.
pub fn exec_reply(connection: Option<&str>, reply: ExecReply, cap: usize) -> CallToolResult {
    match reply {
        ExecReply::Ok {
            request_id,
            results,
        } => {
            let tags: Vec<&str> = results.iter().map(|r| r.tag.as_str()).collect();
            let approved = request_id
                .map(|id| format!(" after approval request {id} was approved"))
                .unwrap_or_default();
            success(
                format!("OK: ran{approved}: {}", tags.join("; ")),
                json!({
                    "status": "ok",
                    "connection": connection,
                    "request_id": request_id,
                    "results": results.iter().map(|r| statement_json(r, cap)).collect::<Vec<_>>(),
                }),
            )
        }
        ExecReply::Error { request_id, error } => failure(
            format!("ERROR: the database refused the statement: {error}"),
            json!({ "status": "error", "request_id": request_id, "error": error }),
        ),
        ExecReply::Denied { request_id, reason } => failure(
            format!(
                "DENIED — NOT RUN: {reason}. The gateway refused this statement; do not retry \
                 it unchanged."
            ),
            json!({ "status": "denied", "request_id": request_id, "reason": reason }),
        ),
        ExecReply::Expired { request_id, reason } => failure(
            format!("EXPIRED — NOT RUN: {reason}."),
            json!({ "status": "expired", "request_id": request_id, "reason": reason }),
        ),
        ExecReply::Pending {
            request_id,
            reviewers,
            timeout_secs,
        } => pending(request_id, &reviewers, timeout_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_errors_and_pending_is_not_a_result() {
        let denied = exec_reply(
            None,
            ExecReply::Denied {
                request_id: Some(3),
                reason: "approval request 3 was denied by bob: no".into(),
            },
            10,
        );
        assert_eq!(denied.is_error, Some(true));
        assert_eq!(denied.structured_content.unwrap()["status"], "denied");
        let pending = exec_reply(
            None,
            ExecReply::Pending {
                request_id: 3,
                reviewers: vec!["dba".into()],
                timeout_secs: 900,
            },
            10,
        );
        let value = pending.structured_content.unwrap();
        assert_eq!(value["status"], "pending");
        assert!(value.get("results").is_none());
    }

    #[test]
    fn rows_become_objects_with_unique_columns_and_the_cap_truncates() {
        let result = StatementResult {
            tag: "SELECT 3".into(),
            rows_affected: 3,
            columns: vec!["n".into(), "n".into()],
            rows: vec![
                vec![Some("1".into()), None],
                vec![Some("2".into()), None],
                vec![Some("3".into()), None],
            ],
            truncated: false,
        };
        let value = statement_json(&result, 2);
        assert_eq!(
            value["rows"],
            json!([{"n": "1", "n_2": null}, {"n": "2", "n_2": null}])
        );
        assert_eq!(value["truncated"], true);
    }
}
