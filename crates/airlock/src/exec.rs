//! `airlock exec`: one statement through `POST /api/v1/exec`, for pipelines. Owns the exit
//! codes of the product contract (0 ok, 1 error, 2 denied, 3 expired, 4 pending) and, with
//! `--wait`, the live waiting line on stderr while reviewers decide.

use crate::cli::{Cli, ExecArgs, Output};
use crate::client::Client;
use crate::output;
use airlock_core::preview::BlastRadius;
use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long one call may take: the server answers a poll within [`POLL_WAIT`], and runs an
/// allowed statement before answering, which may take a while.
const CALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long each poll waits on the server for the decision; also how often the line updates.
const POLL_WAIT: u64 = 1;
/// Without a terminal (CI logs), the waiting line is repeated this often instead of redrawn.
const LOG_EVERY: Duration = Duration::from_secs(30);

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn reviewers(answer: &Value) -> String {
    let names: Vec<String> = answer
        .get("reviewers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    output::list(&names)
}

/// Redraws (terminal) or repeats (logs) the waiting line on stderr.
struct WaitingLine {
    terminal: bool,
    last: Option<Instant>,
}

impl WaitingLine {
    fn show(&mut self, answer: &Value, elapsed: Duration) {
        let line = format!(
            "waiting for approval request {} (reviewers: {}) ... {}",
            text(answer, "request_id"),
            reviewers(answer),
            humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
        );
        let mut err = std::io::stderr();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else if self.last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            let _ = writeln!(err, "{line}");
            self.last = Some(Instant::now());
        }
        let _ = err.flush();
    }

    fn end(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

pub async fn run(cli: &Cli, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(cli)?;
    let started = Instant::now();
    // The first call never waits, so the waiting line names the request at once.
    let body = json!({
        "connection": args.connection,
        "sql": args.sql,
        "wait": false,
    });
    let mut answer = client
        .exec_answer(Method::POST, "/api/v1/exec", &[], Some(&body), CALL_TIMEOUT)
        .await?;
    let mut gave_up = false;
    if args.wait && text(&answer, "status") == "pending" {
        if let Some(radius) = blast_radius(&answer) {
            eprintln!("blast radius: {radius}");
        }
        let id = text(&answer, "request_id");
        let path = format!("/api/v1/exec/{id}");
        let mut line = WaitingLine {
            terminal: std::io::stderr().is_terminal(),
            last: None,
        };
        while text(&answer, "status") == "pending" {
            line.show(&answer, started.elapsed());
            if args.timeout.is_some_and(|t| started.elapsed() >= t) {
                // Withdrawn, so a late approval cannot run what the pipeline gave up on.
                answer = client
                    .exec_answer(Method::DELETE, &path, &[], None, CALL_TIMEOUT)
                    .await?;
                gave_up = true;
                break;
            }
            let query = [("wait", POLL_WAIT.to_string())];
            answer = client
                .exec_answer(Method::GET, &path, &query, None, CALL_TIMEOUT)
                .await
                .context("lost track of the request while waiting")?;
        }
        line.end();
    }
    print(cli, &answer, gave_up, args)
}

fn print(cli: &Cli, answer: &Value, gave_up: bool, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let status = text(answer, "status");
    if cli.output == Output::Json {
        output::emit(&output::json(answer))?;
    }
    let table = cli.output == Output::Table;
    let code = match status.as_str() {
        "ok" => {
            if table {
                output::emit(&results(answer))?;
            }
            0
        }
        "error" => {
            eprintln!("error: {}", text(answer, "error"));
            1
        }
        // A request this command withdrew after --timeout ended without a decision in time.
        "denied" if gave_up => {
            let waited = args.timeout.map(humantime::format_duration);
            eprintln!(
                "expired: no decision on approval request {} within --timeout {}; the request \
                 was withdrawn",
                text(answer, "request_id"),
                waited.map(|w| w.to_string()).unwrap_or_default()
            );
            3
        }
        "denied" => {
            eprintln!("denied: {}", text(answer, "reason"));
            2
        }
        "expired" => {
            eprintln!("expired: {}", text(answer, "reason"));
            3
        }
        "pending" => {
            if table {
                output::emit(&format!(
                    "pending: approval request {} awaits review by {}\n",
                    text(answer, "request_id"),
                    reviewers(answer)
                ))?;
                if let Some(radius) = blast_radius(answer) {
                    output::emit(&format!("blast radius: {radius}\n"))?;
                }
            }
            eprintln!(
                "the statement runs once approved; follow it with `airlock approvals show {}`",
                text(answer, "request_id")
            );
            4
        }
        other => bail!("the server sent an exec answer this CLI cannot read (status `{other}`)"),
    };
    Ok(ExitCode::from(code))
}

/// The preview of a pending answer, one line per statement joined with `; `.
fn blast_radius(answer: &Value) -> Option<String> {
    let preview: BlastRadius = serde_json::from_value(answer.get("preview")?.clone()).ok()?;
    (!preview.impacts.is_empty()).then(|| preview.describe().replace('\n', "; "))
}

/// Each statement's rows as a table (when it returns rows) and its tag.
fn results(answer: &Value) -> String {
    let mut out = String::new();
    for result in answer
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let columns: Vec<String> = result
            .get("columns")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if !columns.is_empty() {
            let rows: Vec<Vec<String>> = result
                .get("rows")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|row| {
                    row.as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| v.as_str().map_or("NULL".to_string(), str::to_string))
                        .collect()
                })
                .collect();
            let headers: Vec<&str> = columns.iter().map(String::as_str).collect();
            out.push_str(&output::table(&headers, &rows, "(no rows)"));
            if result.get("truncated").and_then(Value::as_bool) == Some(true) {
                out.push_str("(more rows were left out)\n");
            }
        }
        out.push_str(&text(result, "tag"));
        out.push('\n');
    }
    out
}
