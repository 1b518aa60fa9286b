//! `airlock policy explain`: the decision for an operation and the rule behind it, either from
//! the server's live policy or, with `--config`, decided locally by the same pure `decide` the
//! gateway runs. Both paths produce the API's JSON shape, so one printer serves both.

use crate::cli::{Cli, ExplainArgs, Output};
use crate::client::Client;
use crate::output;
use airlock_core::classify_mysql::classify_for;
use airlock_core::config::Config;
use airlock_core::policy;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

pub async fn run(cli: &Cli, args: &ExplainArgs) -> anyhow::Result<()> {
    let sql = match (&args.sql, &args.command, &args.http) {
        (Some(sql), _, _) => sql,
        (None, Some(_), _) => bail!(
            "--command is not supported by this version yet: only SQL operations (--sql) can be explained"
        ),
        _ => bail!(
            "--http is not supported by this version yet: only SQL operations (--sql) can be explained"
        ),
    };
    let groups: Vec<String> = args
        .groups
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    let explanation = match &args.config {
        Some(path) => local(path, groups, &args.connection, sql, args.rows)?,
        None => {
            let body = json!({
                "groups": groups, "connection": args.connection, "sql": sql, "rows": args.rows
            });
            Client::new(cli)?
                .post("/api/v1/policies/explain", &body)
                .await?
        }
    };
    output::emit(&match cli.output {
        Output::Json => output::json(&explanation),
        Output::Table => render(&explanation),
    })
}

fn local(
    path: &Path,
    groups: Vec<String>,
    connection: &str,
    sql: &str,
    rows: Option<u64>,
) -> anyhow::Result<Value> {
    let loaded = Config::load(path)
        .map_err(|e| anyhow!("{} is not a valid config:\n{e}", path.display()))?;
    let Some(found) = loaded.config.connection(connection) else {
        bail!(
            "no connection is named `{connection}` in {}",
            path.display()
        );
    };
    let classification = classify_for(found.kind, sql);
    let explanation = policy::explain_with_rows(
        &loaded.policies,
        groups,
        connection,
        sql,
        Arc::new(classification),
        rows,
    );
    serde_json::to_value(explanation).context("cannot show the decision")
}

fn text(value: &Value) -> &str {
    output::opt(value.as_str())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn render(explanation: &Value) -> String {
    let decision = &explanation["decision"];
    let action = text(&decision["action"]);
    let mut rows = vec![("decision", action.to_string())];
    match action {
        "deny" => rows.push(("reason", text(&decision["reason"]).to_string())),
        "require-approval" => {
            let approvals = decision["approvals"].as_u64().unwrap_or(1);
            rows.push((
                "reviewers",
                format!(
                    "{} ({approvals} approval{} needed, auto-rejected after {})",
                    output::list(&strings(&decision["reviewers"])),
                    if approvals == 1 { "" } else { "s" },
                    text(&decision["timeout"]),
                ),
            ));
        }
        _ => {}
    }
    rows.push(("policy", text(&decision["policy"]).to_string()));
    rows.push(("rule", text(&decision["rule"]).to_string()));
    rows.push((
        "statement kinds",
        output::list(&strings(&explanation["statement_kinds"])),
    ));
    if decision["needs_rows"].as_bool() == Some(true) {
        rows.push((
            "row count",
            "a rows_limit rule applies; the gateway counts the rows first (try --rows N)"
                .to_string(),
        ));
    }
    output::fields(&rows)
}
