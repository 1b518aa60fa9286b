//! `/api/v1/sessions`: the recorded history. Admins read every session; anyone else only the
//! sessions of their own subject. Owns the export formats: JSON lines and CSV, one row per
//! event carrying its session's fields, in event order, streamed a page of events at a time so
//! an export of any size runs in constant memory.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use airlock_core::store::{
    EventFilter, EventRecord, Millis, NewSession, SessionFilter, SessionRecord, Store, StoreError,
};
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// More rows than this in one listing is a job for `export`.
const MAX_LIMIT: i64 = 10_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sessions started at or after this time (Unix milliseconds).
    since: Option<Millis>,
    /// At most this many sessions (1 to 10000).
    limit: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `jsonl` (the default) or `csv`.
    #[param(example = "csv")]
    format: Option<String>,
    /// Only events at or after this time (Unix milliseconds).
    since: Option<Millis>,
    /// Only sessions on this connection.
    connection: Option<String>,
    /// Only sessions whose subject or display name is this.
    identity: Option<String>,
}

/// Events read from the store per chunk of an export body.
const EXPORT_PAGE: i64 = 500;

/// Who the caller may read: `None` for everyone (admins), else only their own subject.
fn visible_subject(caller: &Caller) -> Option<String> {
    (!caller.admin).then(|| caller.identity.subject.clone())
}

async fn visible_session(
    state: &ApiState,
    caller: &Caller,
    id: i64,
) -> Result<SessionRecord, ApiError> {
    match state.gate.store().get_session(id).await? {
        Some(s) if caller.admin || s.session.subject == caller.identity.subject => Ok(s),
        // Someone else's session is answered like a missing one.
        _ => Err(ApiError::NotFound(format!("session {id} does not exist"))),
    }
}

/// The sessions the caller may read (admins: all; others: their own), newest first.
#[utoipa::path(
    get,
    path = "/sessions",
    operation_id = "listSessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<SessionRecord>),
        (status = 400, description = "Invalid query", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<SessionRecord>>, ApiError> {
    let Query(query) = query?;
    if let Some(limit) = query.limit {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "`limit` must be between 1 and {MAX_LIMIT}"
            )));
        }
    }
    let filter = SessionFilter {
        subject: visible_subject(&caller),
        since: query.since,
        limit: query.limit,
    };
    // Event counts must include what was recorded up to now.
    state.gate.sync_records().await;
    Ok(Json(state.gate.store().list_sessions(&filter).await?))
}

#[utoipa::path(
    get,
    path = "/sessions/{id}",
    operation_id = "getSession",
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = SessionRecord),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such session, or not the caller's", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<SessionRecord>, ApiError> {
    let Path(id) = id?;
    state.gate.sync_records().await;
    Ok(Json(visible_session(&state, &caller, id).await?))
}

/// The session's events in order: statements and their decisions, resolutions of held ones,
/// outcomes and masked responses.
#[utoipa::path(
    get,
    path = "/sessions/{id}/events",
    operation_id = "getSessionEvents",
    tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    responses(
        (status = 200, description = "In order", body = Vec<EventRecord>),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such session, or not the caller's", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Vec<EventRecord>>, ApiError> {
    let Path(id) = id?;
    visible_session(&state, &caller, id).await?;
    state.gate.sync_records().await;
    Ok(Json(state.gate.store().list_events(id).await?))
}

#[derive(Clone, Copy)]
enum Format {
    Jsonl,
    Csv,
}

/// The session half of every exported row.
const SESSION_COLUMNS: [&str; 10] = [
    "session_id",
    "protocol",
    "connection",
    "subject",
    "display_name",
    "groups",
    "auth_method",
    "client_addr",
    "event_id",
    "at",
];

/// The event half: the union of every event kind's fields (a test keeps it complete).
const DETAIL_COLUMNS: [&str; 18] = [
    "kind",
    "operation",
    "params",
    "statement_kinds",
    "action",
    "policy",
    "rule",
    "reason",
    "request_id",
    "statement_event",
    "state",
    "decided_by",
    "replaced_with",
    "votes",
    "status",
    "rows",
    "tag",
    "error",
];

fn event_row(s: &NewSession, event: &EventRecord) -> Result<Map<String, Value>, StoreError> {
    let mut row = Map::new();
    row.insert("session_id".into(), event.session_id.into());
    row.insert("protocol".into(), s.protocol.clone().into());
    row.insert("connection".into(), s.connection.clone().into());
    row.insert("subject".into(), s.subject.clone().into());
    row.insert("display_name".into(), s.display_name.clone().into());
    row.insert("groups".into(), s.groups.clone().into());
    row.insert("auth_method".into(), s.auth_method.clone().into());
    row.insert("client_addr".into(), s.client_addr.clone().into());
    row.insert("event_id".into(), event.id.into());
    row.insert("at".into(), event.at.into());
    match serde_json::to_value(&event.detail) {
        Ok(Value::Object(detail)) => row.extend(detail),
        Ok(other) => {
            return Err(StoreError::Corrupt(format!(
                "event {} is not an object: {other}",
                event.id
            )))
        }
        Err(e) => return Err(StoreError::Corrupt(format!("event {}: {e}", event.id))),
    }
    Ok(row)
}

fn csv_field(out: &mut String, value: Option<&Value>) {
    let text = match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&text);
    }
}

fn csv_header() -> String {
    let mut line = SESSION_COLUMNS
        .iter()
        .chain(DETAIL_COLUMNS.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

fn render(format: Format, row: &Map<String, Value>, out: &mut String) {
    match format {
        Format::Jsonl => {
            out.push_str(&Value::Object(row.clone()).to_string());
            out.push('\n');
        }
        Format::Csv => {
            for (i, column) in SESSION_COLUMNS
                .iter()
                .chain(DETAIL_COLUMNS.iter())
                .enumerate()
            {
                if i > 0 {
                    out.push(',');
                }
                csv_field(out, row.get(*column));
            }
            out.push_str("\r\n");
        }
    }
}

struct Export {
    store: Arc<dyn Store>,
    filter: EventFilter,
    /// The last event exported.
    after: i64,
    format: Format,
    header_pending: bool,
    done: bool,
}

impl Export {
    /// The next chunk of the body: the header, or the next page of matching events. A store
    /// error ends the body early, so the client sees a broken transfer instead of an export
    /// that silently lacks rows.
    async fn next_chunk(mut self) -> Option<(Result<Bytes, StoreError>, Export)> {
        if self.header_pending {
            self.header_pending = false;
            if let Format::Csv = self.format {
                return Some((Ok(Bytes::from(csv_header())), self));
            }
        }
        if self.done {
            return None;
        }
        let page = match self
            .store
            .export_events(&self.filter, self.after, EXPORT_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => return Some((Err(self.abort(e)), self)),
        };
        let last = page.last()?.event.id;
        self.after = last;
        self.done = page.len() < EXPORT_PAGE as usize;
        let mut chunk = String::new();
        for row in &page {
            match event_row(&row.session, &row.event) {
                Ok(row) => render(self.format, &row, &mut chunk),
                Err(e) => return Some((Err(self.abort(e)), self)),
            }
        }
        Some((Ok(Bytes::from(chunk)), self))
    }

    fn abort(&mut self, e: StoreError) -> StoreError {
        tracing::error!(error = %e, "session export aborted");
        self.done = true;
        e
    }
}

/// Every event the caller may read, one row per event with its session's fields, streamed.
#[utoipa::path(
    get,
    path = "/sessions/export",
    operation_id = "exportSessions",
    tag = "sessions",
    params(ExportQuery),
    responses(
        (status = 200, description = "One JSON object per line (`jsonl`) or CSV rows with a header (`csv`)",
            content(
                (String = "application/x-ndjson"),
                (String = "text/csv"),
            )
        ),
        (status = 400, description = "Unknown format", body = ErrorBody),
    )
)]
pub async fn export(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let (format, content_type) = match query.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => (Format::Jsonl, "application/x-ndjson"),
        "csv" => (Format::Csv, "text/csv; charset=utf-8"),
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown export format `{other}`; use jsonl or csv"
            )))
        }
    };
    state.gate.sync_records().await;
    let export = Export {
        store: state.gate.store().clone(),
        filter: EventFilter {
            subject: visible_subject(&caller),
            since: query.since,
            connection: query.connection,
            identity: query.identity,
        },
        after: 0,
        format,
        header_pending: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(export, Export::next_chunk);
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::store::{ApprovalState, EventDetail, NewSession, OutcomeStatus};

    fn session() -> SessionRecord {
        SessionRecord {
            id: 7,
            session: NewSession {
                protocol: "postgres".into(),
                connection: "prod".into(),
                subject: "token:t1".into(),
                display_name: "agent, \"one\"".into(),
                groups: vec!["a".into(), "b".into()],
                auth_method: "agent-token".into(),
                client_addr: "127.0.0.1:5000".into(),
                started_at: 1,
            },
            ended_at: None,
            end_reason: None,
            event_count: 3,
        }
    }

    fn details() -> Vec<EventDetail> {
        vec![
            EventDetail::Statement {
                operation: "select 1,\n2".into(),
                params: vec![Some("x".into()), None],
                statement_kinds: vec!["SELECT".into()],
                action: "allow".into(),
                policy: Some("p".into()),
                rule: Some("r".into()),
                reason: None,
                request_id: Some(3),
            },
            EventDetail::Resolution {
                statement_event: 1,
                request_id: 3,
                state: ApprovalState::Approved,
                reason: Some("ok".into()),
                decided_by: vec!["dba".into()],
                replaced_with: Some("delete from t where id = 1".into()),
                votes: vec![airlock_core::store::Vote {
                    reviewer_subject: "token:dba".into(),
                    reviewer_name: "dba".into(),
                    reviewer_groups: vec!["dba".into()],
                    approve: true,
                    reason: Some("ok".into()),
                    at: 9,
                    replacement: None,
                }],
            },
            EventDetail::Outcome {
                statement_event: 1,
                status: OutcomeStatus::Ok,
                rows: Some(2),
                tag: Some("SELECT 2".into()),
                error: None,
                masked: Default::default(),
            },
        ]
    }

    #[test]
    fn every_event_field_has_a_csv_column() {
        for (i, detail) in details().into_iter().enumerate() {
            let event = EventRecord {
                id: i as i64,
                session_id: 7,
                at: 10,
                detail,
                prev_hash: None,
                hash: None,
            };
            let row = event_row(&session().session, &event).unwrap();
            for key in row.keys() {
                assert!(
                    SESSION_COLUMNS.contains(&key.as_str())
                        || DETAIL_COLUMNS.contains(&key.as_str()),
                    "column `{key}` is missing from the CSV export"
                );
            }
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let event = EventRecord {
            id: 1,
            session_id: 7,
            at: 10,
            detail: details().remove(0),
            prev_hash: None,
            hash: None,
        };
        let mut out = String::new();
        render(
            Format::Csv,
            &event_row(&session().session, &event).unwrap(),
            &mut out,
        );
        assert!(out.starts_with(
            "7,postgres,prod,token:t1,\"agent, \"\"one\"\"\",\"[\"\"a\"\",\"\"b\"\"]\","
        ));
        assert!(out.contains(",statement,\"select 1,\n2\",\"[\"\"x\"\",null]\","));
        assert!(out.ends_with("\r\n"));
        assert_eq!(
            csv_header().split(',').count(),
            SESSION_COLUMNS.len() + DETAIL_COLUMNS.len()
        );
    }
}
