//! `airlock sessions list|show|export`: the recorded history, over the API. The export is
//! copied to stdout as it arrives, so its size never sits in memory.

use crate::cli::{Cli, ExportFormat, Output};
use crate::client::Client;
use crate::output;
use airlock_core::store::{EventDetail, EventRecord, SessionRecord};
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub async fn list(cli: &Cli, since: Option<i64>, limit: Option<u32>) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(since) = since {
        query.push(("since", since.to_string()));
    }
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    let value = Client::new(cli)?.get("/api/v1/sessions", &query).await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(&value));
    }
    let sessions: Vec<SessionRecord> =
        serde_json::from_value(value).context("the server sent sessions this CLI cannot read")?;
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                output::time(s.session.started_at),
                output::opt_time(s.ended_at),
                s.session.display_name.clone(),
                s.session.subject.clone(),
                s.session.connection.clone(),
                s.session.protocol.clone(),
                s.session.client_addr.clone(),
                s.event_count.to_string(),
            ]
        })
        .collect();
    output::emit(&output::table(
        &[
            "ID",
            "STARTED",
            "ENDED",
            "NAME",
            "SUBJECT",
            "CONNECTION",
            "PROTOCOL",
            "CLIENT",
            "EVENTS",
        ],
        &rows,
        "no sessions",
    ))
}

/// How many values each detector (or column rule) masked, as `email 2, ssn 1`.
pub(crate) fn masked_counts(masked: &BTreeMap<String, u64>) -> Option<String> {
    let counts: Vec<String> = masked.iter().map(|(k, n)| format!("{k} {n}")).collect();
    (!counts.is_empty()).then(|| counts.join(", "))
}

fn describe(event: &EventDetail) -> (String, String) {
    match event {
        EventDetail::Statement {
            operation,
            params,
            action,
            policy,
            rule,
            reason,
            request_id,
            ..
        } => {
            let mut text = format!("{action}: {operation}");
            if !params.is_empty() {
                let shown: Vec<String> = params
                    .iter()
                    .map(|p| p.as_deref().map_or("NULL".into(), |v| format!("'{v}'")))
                    .collect();
                text.push_str(&format!("\nparameters: {}", shown.join(", ")));
            }
            if let Some(policy) = policy {
                text.push_str(&format!(
                    "\npolicy {policy}, rule {}",
                    output::opt(rule.as_deref())
                ));
            }
            if let Some(reason) = reason {
                text.push_str(&format!("\nreason: {reason}"));
            }
            if let Some(id) = request_id {
                text.push_str(&format!("\napproval request {id}"));
            }
            ("statement".into(), text)
        }
        EventDetail::Resolution {
            statement_event,
            request_id,
            state,
            reason,
            decided_by,
            replaced_with,
            votes,
        } => {
            let mut text = format!(
                "approval request {request_id} {} (event #{statement_event})",
                state.as_str()
            );
            if !decided_by.is_empty() {
                text.push_str(&format!(" by {}", decided_by.join(", ")));
            }
            if let Some(reason) = reason {
                text.push_str(&format!(": {reason}"));
            }
            for vote in votes {
                let way = if vote.approve { "approved" } else { "denied" };
                text.push_str(&format!(
                    "\n{way} by {} at {}{}",
                    vote.reviewer_name,
                    output::time(vote.at),
                    vote.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
            if let Some(sql) = replaced_with {
                text.push_str(&format!("\nran instead: {sql}"));
            }
            ("resolution".into(), text)
        }
        EventDetail::Outcome {
            statement_event,
            status,
            rows,
            tag,
            error,
            masked,
        } => {
            let status = serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let mut text = format!("{status} (event #{statement_event})");
            if let Some(tag) = tag {
                text.push_str(&format!(" {tag}"));
            }
            if let Some(rows) = rows {
                text.push_str(&format!(", {rows} rows"));
            }
            if let Some(counts) = masked_counts(masked) {
                text.push_str(&format!(", masked: {counts}"));
            }
            if let Some(error) = error {
                text.push_str(&format!("\nerror: {error}"));
            }
            ("outcome".into(), text)
        }
        EventDetail::Response {
            statement_event,
            columns,
            rows,
            truncated,
            masked,
        } => {
            let mut text = format!("{} rows kept (event #{statement_event})", rows.len());
            if *truncated {
                text.push_str(", more left out");
            }
            if let Some(counts) = masked_counts(masked) {
                text.push_str(&format!(", masked: {counts}"));
            }
            if !columns.is_empty() {
                text.push_str(&format!("\n{}", columns.join(" | ")));
            }
            for row in rows {
                let values: Vec<&str> =
                    row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                text.push_str(&format!("\n{}", values.join(" | ")));
            }
            ("response".into(), text)
        }
    }
}

pub async fn show(cli: &Cli, id: i64) -> anyhow::Result<()> {
    let client = Client::new(cli)?;
    let session = client.get(&format!("/api/v1/sessions/{id}"), &[]).await?;
    let events = client
        .get(&format!("/api/v1/sessions/{id}/events"), &[])
        .await?;
    if cli.output == Output::Json {
        return output::emit(&output::json(
            &json!({ "session": session, "events": events }),
        ));
    }
    let s: SessionRecord = serde_json::from_value(session)
        .context("the server sent a session this CLI cannot read")?;
    let events: Vec<EventRecord> = serde_json::from_value::<Vec<Value>>(events)
        .context("the server sent events this CLI cannot read")?
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .context("the server sent events this CLI cannot read")?;
    let header = output::fields(&[
        (
            "identity",
            format!("{} ({})", s.session.display_name, s.session.subject),
        ),
        ("groups", output::list(&s.session.groups)),
        ("auth", s.session.auth_method.clone()),
        (
            "connection",
            format!("{} ({})", s.session.connection, s.session.protocol),
        ),
        ("client", s.session.client_addr.clone()),
        ("started", output::time(s.session.started_at)),
        (
            "ended",
            match (&s.ended_at, &s.end_reason) {
                (Some(at), Some(reason)) => format!("{} ({reason})", output::time(*at)),
                (Some(at), None) => output::time(*at),
                (None, _) => "still open".into(),
            },
        ),
    ]);
    let rows: Vec<Vec<String>> = events
        .iter()
        .flat_map(|e| {
            let (kind, text) = describe(&e.detail);
            let mut lines = text.lines();
            let mut rows = vec![vec![
                format!("#{}", e.id),
                output::time(e.at),
                kind,
                lines.next().unwrap_or_default().to_string(),
            ]];
            // Continuation lines stay in the detail column, under their event.
            rows.extend(lines.map(|l| {
                vec![
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("  {l}"),
                ]
            }));
            rows
        })
        .collect();
    let events = output::table(
        &["EVENT", "AT", "KIND", "DETAIL"],
        &rows,
        "no events recorded",
    );
    output::emit(&format!("Session {}\n{header}\n{events}", s.id))
}

pub async fn export(
    cli: &Cli,
    format: ExportFormat,
    since: Option<i64>,
    connection: Option<&str>,
    identity: Option<&str>,
) -> anyhow::Result<()> {
    let mut query = vec![("format", format.as_str().to_string())];
    if let Some(since) = since {
        query.push(("since", since.to_string()));
    }
    if let Some(connection) = connection {
        query.push(("connection", connection.to_string()));
    }
    if let Some(identity) = identity {
        query.push(("identity", identity.to_string()));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    Client::new(cli)?
        .download("/api/v1/sessions/export", &query, &mut out)
        .await
}
