//! `airlock approvals list|show`, `airlock approve` and `airlock deny`: the reviewer's side of
//! a held operation, over the API.

use crate::cli::{Cli, Output, StateFilter};
use crate::client::Client;
use crate::output;
use airlock_core::store::{ApprovalRecord, ApprovalState, DeliveryRecord};
use anyhow::{bail, Context};
use serde_json::{json, Value};

fn record(value: Value) -> anyhow::Result<ApprovalRecord> {
    serde_json::from_value(value)
        .context("the server sent an approval request this CLI cannot read")
}

fn approvals_count(r: &ApprovalRecord) -> String {
    let yes = r.votes.iter().filter(|v| v.approve).count();
    format!("{yes} of {} needed", r.request.approvals_needed)
}

pub async fn list(cli: &Cli, state: Option<StateFilter>) -> anyhow::Result<()> {
    let query: Vec<(&str, String)> = state
        .map(|s| ("state", s.as_str().to_string()))
        .into_iter()
        .collect();
    let value = Client::new(cli)?.get("/api/v1/approvals", &query).await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(&value));
    }
    let records: Vec<ApprovalRecord> = serde_json::from_value(value)
        .context("the server sent approval requests this CLI cannot read")?;
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.as_str().to_string(),
                r.request.requester_name.clone(),
                r.request.connection.clone(),
                output::list(&r.request.statement_kinds),
                output::one_line(&r.request.operation, 60),
                output::time(r.request.created_at),
                output::time(r.request.expires_at),
            ]
        })
        .collect();
    output::emit(&output::table(
        &[
            "ID",
            "STATE",
            "REQUESTER",
            "CONNECTION",
            "KINDS",
            "OPERATION",
            "CREATED",
            "EXPIRES",
        ],
        &rows,
        "no approval requests",
    ))
}

pub async fn show(cli: &Cli, id: i64) -> anyhow::Result<()> {
    let value = Client::new(cli)?
        .get(&format!("/api/v1/approvals/{id}"), &[])
        .await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(&value));
    }
    let deliveries: Vec<DeliveryRecord> = match value.get("deliveries") {
        Some(list) => serde_json::from_value(list.clone())
            .context("the server sent delivery attempts this CLI cannot read")?,
        None => Vec::new(),
    };
    let r = record(value)?;
    let q = &r.request;
    let params = if q.params.is_empty() {
        "-".to_string()
    } else {
        q.params
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Some(v) => format!("${} = '{}'", i + 1, v.replace('\'', "''")),
                None => format!("${} = NULL", i + 1),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut rows = vec![
        (
            "identity",
            format!("{} ({})", q.requester_name, q.requester_subject),
        ),
        ("groups", output::list(&q.requester_groups)),
        (
            "connection",
            format!(
                "{} ({}, session {})",
                q.connection, q.protocol, q.session_id
            ),
        ),
        ("operation", q.operation.clone()),
        (
            "replaced with",
            output::opt(r.replacement.as_deref()).to_string(),
        ),
        ("parameters", params),
        ("statement kinds", output::list(&q.statement_kinds)),
        (
            "blast radius",
            match &q.preview {
                Some(preview) if !preview.impacts.is_empty() => preview.describe(),
                _ => "not computed for this operation".to_string(),
            },
        ),
        ("policy", q.policy.clone()),
        ("rule", q.rule.clone()),
        (
            "reviewers",
            format!(
                "{}{}",
                output::list(&q.reviewers),
                if q.all_groups_must_approve {
                    " (each group must approve)"
                } else {
                    ""
                }
            ),
        ),
        (
            "escalation",
            match q.escalate_at {
                Some(at) => format!(
                    "to {} at {}",
                    output::list(&q.escalate_to),
                    output::time(at)
                ),
                None => "-".to_string(),
            },
        ),
        ("approvals", approvals_count(&r)),
        ("created", output::time(q.created_at)),
        ("expires", output::time(q.expires_at)),
    ];
    if r.state != ApprovalState::Pending {
        rows.push(("decided", output::opt_time(r.decided_at)));
        rows.push(("reason", output::opt(r.reason.as_deref()).to_string()));
    }
    if let Some(window) = q.approval_window_ms {
        rows.push(("approval window", run_state(&r, window)));
    }
    let votes = if r.votes.is_empty() {
        "none yet".to_string()
    } else {
        r.votes
            .iter()
            .map(|v| {
                format!(
                    "{} {} by {} ({}){}",
                    output::time(v.at),
                    if v.approve { "approved" } else { "denied" },
                    v.reviewer_name,
                    v.reviewer_subject,
                    v.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    rows.push(("votes", votes));
    if !deliveries.is_empty() {
        rows.push(("notifications", delivery_lines(&deliveries)));
    }
    output::emit(&format!(
        "Approval request {}: {}\n{}",
        r.id,
        r.state.as_str(),
        output::fields(&rows)
    ))
}

/// Whether an approved request ran, and until when its requester may still run it.
fn run_state(r: &ApprovalRecord, window: i64) -> String {
    let window = humantime::format_duration(std::time::Duration::from_millis(
        u64::try_from(window).unwrap_or(0),
    ));
    match (r.claimed_at, r.claimable_until()) {
        (Some(at), _) => format!(
            "{window}; ran at {} (session {})",
            output::time(at),
            output::opt(r.claimed_by_session.map(|s| s.to_string()).as_deref())
        ),
        (None, Some(until)) => format!(
            "{window}; not run yet: its requester may run it by re-sending it until {}",
            output::time(until)
        ),
        (None, None) => format!("{window} after approval"),
    }
}

/// One line per webhook delivery attempt: when, which event to which webhook, and how it went.
fn delivery_lines(deliveries: &[DeliveryRecord]) -> String {
    deliveries
        .iter()
        .map(|d| {
            let d = &d.delivery;
            let outcome = match (d.status_code, d.error.as_deref()) {
                (Some(code), _) => format!("HTTP {code}"),
                (None, Some(error)) => error.to_string(),
                (None, None) => "no answer".to_string(),
            };
            format!(
                "{} {} to webhook {} ({}, {}) attempt {}: {}{}",
                output::time(d.at),
                d.event,
                d.webhook,
                d.target,
                d.format,
                d.attempt,
                if d.delivered {
                    "delivered, "
                } else {
                    "failed, "
                },
                outcome
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_vote(format: Output, value: Value) -> anyhow::Result<()> {
    if format == Output::Json {
        return output::emit(&output::json(&value));
    }
    let r = record(value)?;
    output::emit(&match r.state {
        ApprovalState::Pending => format!(
            "vote recorded; approval request {} is still pending ({} approvals)\n",
            r.id,
            approvals_count(&r)
        ),
        state => format!("approval request {} is now {}\n", r.id, state.as_str()),
    })
}

pub async fn approve(
    cli: &Cli,
    id: i64,
    reason: Option<&str>,
    replace_with: Option<&str>,
) -> anyhow::Result<()> {
    if replace_with.is_some_and(|sql| sql.trim().is_empty()) {
        bail!("--replace-with needs the statement to run instead");
    }
    let value = Client::new(cli)?
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            &json!({ "reason": reason, "replace_with": replace_with }),
        )
        .await?;
    print_vote(cli.output, value)
}

pub async fn deny(cli: &Cli, id: i64, reason: &str) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        bail!("a denial needs a reason: --reason TEXT");
    }
    let value = Client::new(cli)?
        .post(
            &format!("/api/v1/approvals/{id}/deny"),
            &json!({ "reason": reason }),
        )
        .await?;
    print_vote(cli.output, value)
}
