//! `airlock sessions replay ID`: one session as a timeline a person can read. Each statement
//! comes with its parameters, the decision and the rule behind it, the approval (each vote:
//! who, when, which way, why; a replacement that ran instead), and what the upstream answered
//! (status, rows, error, how long it took). `--output json` gives the same timeline as data.

use crate::cli::{Cli, Output};
use crate::client::Client;
use crate::output;
use crate::sessions::masked_counts;
use airlock_core::store::{EventDetail, EventRecord, Millis, OutcomeStatus, SessionRecord};
use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// One statement and everything recorded about it.
#[derive(Debug, Serialize)]
struct Step {
    event_id: i64,
    at: Millis,
    /// Since the session started.
    offset_ms: i64,
    #[serde(flatten)]
    statement: EventDetail,
    approval: Option<Approval>,
    /// The (masked) response kept with the statement, when one was recorded.
    response: Option<EventDetail>,
    outcomes: Vec<Outcome>,
}

#[derive(Debug, Serialize)]
struct Approval {
    at: Millis,
    #[serde(flatten)]
    resolution: EventDetail,
}

#[derive(Debug, Serialize)]
struct Outcome {
    at: Millis,
    /// From forwarding (the statement, or its approval) to the answer.
    took_ms: i64,
    #[serde(flatten)]
    outcome: EventDetail,
}

/// Events grouped under the statements they follow; events that name no statement of this
/// session stand alone.
#[derive(Debug, Default, Serialize)]
struct Timeline {
    steps: Vec<Step>,
    unattached: Vec<EventRecord>,
}

fn timeline(session: &SessionRecord, events: Vec<EventRecord>) -> Timeline {
    let mut timeline = Timeline::default();
    let mut index: HashMap<i64, usize> = HashMap::new();
    for event in events {
        let target = match &event.detail {
            EventDetail::Statement { .. } => {
                index.insert(event.id, timeline.steps.len());
                timeline.steps.push(Step {
                    event_id: event.id,
                    at: event.at,
                    offset_ms: event.at - session.session.started_at,
                    statement: event.detail,
                    approval: None,
                    response: None,
                    outcomes: Vec::new(),
                });
                continue;
            }
            EventDetail::Resolution {
                statement_event, ..
            }
            | EventDetail::Outcome {
                statement_event, ..
            }
            | EventDetail::Response {
                statement_event, ..
            } => index.get(statement_event).copied(),
        };
        let Some(step) = target.and_then(|i| timeline.steps.get_mut(i)) else {
            timeline.unattached.push(event);
            continue;
        };
        if let EventDetail::Response { .. } = event.detail {
            step.response = Some(event.detail);
        } else if let EventDetail::Outcome { .. } = event.detail {
            let forwarded = step.approval.as_ref().map_or(step.at, |a| a.at);
            step.outcomes.push(Outcome {
                at: event.at,
                took_ms: event.at - forwarded,
                outcome: event.detail,
            });
        } else {
            step.approval = Some(Approval {
                at: event.at,
                resolution: event.detail,
            });
        }
    }
    timeline
}

/// A store time to the millisecond.
fn clock(millis: Millis) -> String {
    match u64::try_from(millis) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => millis.to_string(),
    }
}

fn seconds(millis: i64) -> String {
    format!("{:+.3}s", millis as f64 / 1000.0)
}

fn quoted(params: &[Option<String>]) -> String {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let value = p.as_deref().map_or("NULL".into(), |v| format!("'{v}'"));
            format!("${} = {value}", i + 1)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rows(n: u64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{n} rows")
    }
}

fn render_statement(detail: &EventDetail, lines: &mut Vec<String>) {
    let EventDetail::Statement {
        operation,
        params,
        statement_kinds,
        action,
        policy,
        rule,
        reason,
        request_id,
    } = detail
    else {
        return;
    };
    let mut text = operation.lines();
    lines.push(text.next().unwrap_or_default().to_string());
    lines.extend(text.map(str::to_string));
    if !params.is_empty() {
        lines.push(format!("parameters: {}", quoted(params)));
    }
    let decision = match (action.as_str(), request_id) {
        ("allow", _) => "allowed".to_string(),
        ("deny", _) => "DENIED".to_string(),
        (_, Some(id)) => format!("held for approval, request {id}"),
        (other, None) => other.to_string(),
    };
    let mut line = format!("{decision} ({})", output::list(statement_kinds));
    match (policy, rule) {
        (Some(policy), Some(rule)) => line.push_str(&format!(" by policy {policy}, rule {rule}")),
        (None, Some(rule)) => line.push_str(&format!(" by {rule}")),
        (Some(policy), None) => line.push_str(&format!(" by policy {policy}")),
        (None, None) => {}
    }
    lines.push(line);
    if let Some(reason) = reason {
        lines.push(format!("reason: {reason}"));
    }
}

fn render_resolution(step_at: Millis, approval: &Approval, lines: &mut Vec<String>) {
    let EventDetail::Resolution {
        state,
        reason,
        votes,
        decided_by,
        replaced_with,
        ..
    } = &approval.resolution
    else {
        return;
    };
    let waited = format!("{:.3}s", (approval.at - step_at) as f64 / 1000.0);
    lines.push(format!("{} after {waited}", state.as_str().to_uppercase()));
    if votes.is_empty() {
        if !decided_by.is_empty() {
            lines.push(format!("  decided by {}", decided_by.join(", ")));
        }
    } else {
        for vote in votes {
            let mut line = format!(
                "  {} by {} [{}] at {}",
                if vote.approve { "approved" } else { "denied" },
                vote.reviewer_name,
                vote.reviewer_groups.join(", "),
                clock(vote.at)
            );
            if let Some(why) = &vote.reason {
                line.push_str(&format!(": \"{why}\""));
            }
            lines.push(line);
        }
    }
    if votes.is_empty() {
        if let Some(reason) = reason {
            lines.push(format!("  reason: {reason}"));
        }
    }
    if let Some(sql) = replaced_with {
        lines.push(format!("  ran instead: {sql}"));
    }
}

fn render_outcome(outcome: &Outcome, lines: &mut Vec<String>) {
    let EventDetail::Outcome {
        status,
        rows: count,
        tag,
        error,
        masked,
        ..
    } = &outcome.outcome
    else {
        return;
    };
    let status = match status {
        OutcomeStatus::Ok => "ok",
        OutcomeStatus::Error => "ERROR",
        OutcomeStatus::NotRun => "not run (an earlier statement failed)",
    };
    let mut line = format!("→ {status}");
    if let Some(tag) = tag {
        line.push_str(&format!(", {tag}"));
    }
    if let Some(count) = count {
        line.push_str(&format!(", {}", rows(*count)));
    }
    line.push_str(&format!(", in {} ms", outcome.took_ms));
    lines.push(line);
    if let Some(error) = error {
        lines.push(format!("  error: {error}"));
    }
    if let Some(counts) = masked_counts(masked) {
        lines.push(format!("  masked: {counts}"));
    }
}

fn render_response(response: &EventDetail, lines: &mut Vec<String>) {
    let EventDetail::Response {
        columns,
        rows: kept,
        truncated,
        masked,
        ..
    } = response
    else {
        return;
    };
    if !kept.is_empty() {
        lines.push(format!("  columns: {}", columns.join(", ")));
        for row in kept {
            let values: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
            lines.push(format!("  | {}", values.join(" | ")));
        }
        if *truncated {
            lines.push("  | … (more rows were not kept)".into());
        }
    }
    if let Some(counts) = masked_counts(masked) {
        lines.push(format!("  masked: {counts}"));
    }
}

fn render(session: &SessionRecord, timeline: &Timeline) -> String {
    let s = &session.session;
    let mut out = format!(
        "Session {}: {} ({}) on {} ({})\n",
        session.id, s.display_name, s.subject, s.connection, s.protocol
    );
    out.push_str(&format!(
        "  groups {}; {}; from {}\n",
        output::list(&s.groups),
        s.auth_method,
        s.client_addr
    ));
    let ended = match (session.ended_at, &session.end_reason) {
        (Some(at), Some(reason)) => format!("ended {} ({reason})", clock(at)),
        (Some(at), None) => format!("ended {}", clock(at)),
        (None, _) => "still open".into(),
    };
    out.push_str(&format!(
        "  started {}, {ended}; {} statements\n",
        clock(s.started_at),
        timeline.steps.len()
    ));
    if timeline.steps.is_empty() && timeline.unattached.is_empty() {
        out.push_str("\nno statements recorded\n");
    }
    let indent = " ".repeat(35);
    for step in &timeline.steps {
        let mut lines = Vec::new();
        render_statement(&step.statement, &mut lines);
        if let Some(approval) = &step.approval {
            render_resolution(step.at, approval, &mut lines);
        }
        if let Some(response) = &step.response {
            render_response(response, &mut lines);
        }
        for outcome in &step.outcomes {
            render_outcome(outcome, &mut lines);
        }
        out.push('\n');
        for (i, line) in lines.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!(
                    "{:<24} {:>8}  {line}\n",
                    clock(step.at),
                    seconds(step.offset_ms)
                ));
            } else {
                out.push_str(&format!("{indent}{line}\n"));
            }
        }
    }
    for event in &timeline.unattached {
        out.push_str(&format!(
            "\n{:<24}           event #{} names a statement this session did not record\n",
            clock(event.at),
            event.id
        ));
    }
    out
}

pub async fn run(cli: &Cli, id: i64) -> anyhow::Result<()> {
    let client = Client::new(cli)?;
    let session = client.get(&format!("/api/v1/sessions/{id}"), &[]).await?;
    let events = client
        .get(&format!("/api/v1/sessions/{id}/events"), &[])
        .await?;
    let session: SessionRecord = serde_json::from_value(session)
        .context("the server sent a session this CLI cannot read")?;
    let events: Vec<EventRecord> =
        serde_json::from_value(events).context("the server sent events this CLI cannot read")?;
    let timeline = timeline(&session, events);
    if cli.output == Output::Json {
        return output::emit(&output::json(&json!({
            "session": session,
            "timeline": timeline.steps,
            "unattached": timeline.unattached,
        })));
    }
    output::emit(&render(&session, &timeline))
}
