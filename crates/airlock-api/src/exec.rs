//! `/api/v1/exec`: one-off SQL through the gate, for pipelines and `airlock exec`, on
//! PostgreSQL and MySQL connections. The caller's statement takes the protocol adapter's exact
//! steps (session with protocol `api`, classify as that adapter reads SQL, [`Gate::submit`],
//! record the outcome), so identity, policy, approval and recording do not differ. A held statement lives on in a background task that waits for the reviewers and runs
//! it once if approved; its answer is kept in memory for a while so the caller can poll
//! `GET /api/v1/exec/{request_id}` or withdraw it with `DELETE`.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::mysql_upstream;
use crate::upstream::{self, StatementResult};
use crate::ApiState;
use airlock_core::classify::{Classification, StatementKind};
use airlock_core::classify_mysql::classify_for;
use airlock_core::config::{Config, ConnectionConfig, ConnectionKind};
use airlock_core::gate::{Answered, Denial, DenialKind, Gate, Permit, Session, Submission};
use airlock_core::operation::{Operation, Protocol};
use airlock_core::preview::BlastRadius;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long an HTTP call waits for a decision when the caller names no timeout: under the
/// usual 60 s proxy and client timeouts.
const DEFAULT_WAIT: Duration = Duration::from_secs(55);
/// The longest one HTTP call waits; callers poll `GET /exec/{id}` for longer waits.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long a finished background exec's answer stays readable.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// Finished answers kept at most; the oldest go first. Pending ones are bounded by the
/// approval queue itself.
const MAX_FINISHED: usize = 1000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    connection: String,
    sql: String,
    /// Wait for the reviewers' decision of a held statement (up to `timeout`).
    #[serde(default)]
    wait: bool,
    /// Seconds this HTTP call waits when `wait` is set.
    timeout: Option<u64>,
    /// Who sends it: `api` (pipelines, `airlock exec`; the default) or `mcp` (the MCP tools);
    /// recorded as the session's protocol. With `mcp`, `mcp.max_wait` bounds the wait.
    #[serde(default)]
    via: Via,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    #[default]
    Api,
    Mcp,
}

impl Via {
    /// How long one call waits for a decision when it asked for `requested`: MCP clients drop
    /// tool calls that block for about a minute, so the gateway's `mcp.max_wait` bounds theirs.
    fn bound(self, requested: Duration, config: &Config) -> Duration {
        match self {
            Via::Api => requested.min(MAX_WAIT),
            Via::Mcp => requested.min(config.mcp.max_wait),
        }
    }
}

impl ExecRequest {
    /// A statement sent by the MCP tools: a held one is waited for up to `mcp.max_wait`.
    pub(crate) fn from_mcp(connection: &str, sql: &str) -> ExecRequest {
        ExecRequest {
            connection: connection.into(),
            sql: sql.into(),
            wait: true,
            timeout: None,
            via: Via::Mcp,
        }
    }
}

impl PollQuery {
    /// A poll by the MCP tools: at once, or waiting up to `mcp.max_wait`.
    pub(crate) fn from_mcp(wait: bool) -> PollQuery {
        PollQuery {
            wait: wait.then_some(MAX_WAIT.as_secs()),
            via: Via::Mcp,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Seconds to wait for a pending exec to finish before answering.
    wait: Option<u64>,
    /// As in [`ExecRequest`]: `mcp` bounds the wait by `mcp.max_wait`.
    #[serde(default)]
    via: Via,
}

/// Every answer of the exec routes; `status` tells them apart.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ExecAnswer {
    Ok {
        session_id: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<i64>,
        results: Vec<StatementResult>,
    },
    Error {
        session_id: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<i64>,
        error: String,
        #[serde(skip)]
        unavailable: bool,
    },
    Denied {
        session_id: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<i64>,
        reason: String,
    },
    Expired {
        session_id: i64,
        request_id: Option<i64>,
        reason: String,
    },
    Pending {
        session_id: i64,
        request_id: i64,
        reviewers: Vec<String>,
        /// Seconds until the request expires without a decision.
        timeout_secs: u64,
        /// The blast-radius preview reviewers see.
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<BlastRadius>,
    },
}

impl ExecAnswer {
    fn is_pending(&self) -> bool {
        matches!(self, ExecAnswer::Pending { .. })
    }

    fn status(&self) -> StatusCode {
        match self {
            ExecAnswer::Ok { .. } => StatusCode::OK,
            ExecAnswer::Error {
                unavailable: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            // The statement reached the upstream and failed there (or could not reach it).
            ExecAnswer::Error { .. } => StatusCode::BAD_GATEWAY,
            ExecAnswer::Denied { .. } | ExecAnswer::Expired { .. } => StatusCode::FORBIDDEN,
            ExecAnswer::Pending { .. } => StatusCode::ACCEPTED,
        }
    }
}

impl IntoResponse for ExecAnswer {
    fn into_response(self) -> Response {
        (self.status(), Json(self)).into_response()
    }
}

struct Job {
    owner: String,
    answer: watch::Receiver<ExecAnswer>,
    withdraw: Arc<Notify>,
    finished_at: Option<Instant>,
}

/// Background execs by approval request id.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<i64, Job>>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Job>> {
        // A panic while holding the lock leaves the map consistent (every update is one
        // insert or field write), so a poisoned lock is still usable.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, id: i64, job: Job) {
        let mut jobs = self.lock();
        jobs.retain(|_, j| j.finished_at.is_none_or(|at| at.elapsed() < KEEP_FINISHED));
        let mut finished: Vec<(Instant, i64)> = jobs
            .iter()
            .filter_map(|(id, j)| j.finished_at.map(|at| (at, *id)))
            .collect();
        if finished.len() >= MAX_FINISHED {
            finished.sort();
            for (_, old) in &finished[..=finished.len() - MAX_FINISHED] {
                jobs.remove(old);
            }
        }
        jobs.insert(id, job);
    }

    fn finish(&self, id: i64) {
        if let Some(job) = self.lock().get_mut(&id) {
            job.finished_at = Some(Instant::now());
        }
    }

    /// The job's answer channel and withdraw switch, if `caller` may see it.
    fn find(
        &self,
        id: i64,
        caller: &Caller,
    ) -> Result<(watch::Receiver<ExecAnswer>, Arc<Notify>), ApiError> {
        match self.lock().get(&id) {
            Some(job) if caller.admin || job.owner == caller.identity.subject => {
                Ok((job.answer.clone(), job.withdraw.clone()))
            }
            // Someone else's exec is answered like a missing one, so its existence does not leak.
            _ => Err(ApiError::NotFound(format!(
                "no exec with request id {id} is known here (answers are kept for {})",
                humantime::format_duration(KEEP_FINISHED)
            ))),
        }
    }
}

/// The answer once it is no longer pending, or the pending one after `wait`.
async fn answer_within(mut rx: watch::Receiver<ExecAnswer>, wait: Duration) -> ExecAnswer {
    let current = rx.borrow().clone();
    if !current.is_pending() || wait.is_zero() {
        return current;
    }
    match tokio::time::timeout(wait, rx.wait_for(|a| !a.is_pending())).await {
        Ok(Ok(answer)) => answer.clone(),
        // Timed out, or the task is gone (the gateway is shutting down): still pending.
        _ => current,
    }
}

/// `sql` as the adapter of a `kind` connection reads it, with [`resolve_runs`] applied.
fn classify(gate: &Gate, kind: ConnectionKind, sql: &str) -> Arc<Classification> {
    let classification = match kind {
        ConnectionKind::Postgres => gate.classifier().classify(sql),
        kind => Arc::new(classify_for(kind, sql)),
    };
    resolve_runs(classification)
}

/// `EXECUTE name` / `FETCH … FROM name` run something defined earlier in the same upstream
/// session; an exec has a fresh session where the gateway knows no names, so (as in the
/// PostgreSQL adapter for unknown names) they count as `OTHER`.
fn resolve_runs(classification: Arc<Classification>) -> Arc<Classification> {
    let Classification::Parsed(statements) = classification.as_ref() else {
        return classification;
    };
    if statements.iter().all(|s| s.runs.is_empty()) {
        return classification;
    }
    let mut resolved = statements.clone();
    for statement in &mut resolved {
        if !std::mem::take(&mut statement.runs).is_empty() {
            statement.kinds.push(StatementKind::Other);
            statement.kinds.sort();
            statement.kinds.dedup();
        }
    }
    Arc::new(Classification::Parsed(resolved))
}

fn denial_answer(session: &Session, request_id: Option<i64>, denial: Denial) -> ExecAnswer {
    let session_id = session.id;
    match denial.kind {
        DenialKind::Expired => ExecAnswer::Expired {
            session_id,
            request_id,
            reason: denial.message,
        },
        DenialKind::Unavailable => ExecAnswer::Error {
            session_id,
            request_id,
            error: denial.message,
            unavailable: true,
        },
        _ => ExecAnswer::Denied {
            session_id,
            request_id,
            reason: denial.message,
        },
    }
}

/// Runs a permitted statement once and records what the upstream answered.
async fn run_permitted(
    gate: &Gate,
    conn: &ConnectionConfig,
    session: &Session,
    op: &Operation,
    permit: Permit,
) -> ExecAnswer {
    let request_id = permit.approved_request;
    let masker = match gate.masker(session) {
        Ok(masker) => masker,
        Err(reason) => {
            tracing::error!(%reason, "exec: masking cannot be set up; the statement is not run");
            return ExecAnswer::Error {
                session_id: session.id,
                request_id,
                error: "masking cannot be set up for this session, so the statement was not run"
                    .into(),
                unavailable: true,
            };
        }
    };
    if let (ConnectionKind::Mysql, Some(sql)) = (conn.kind, &permit.replacement) {
        // Replacements are judged as PostgreSQL reads them, and MySQL can read the same text
        // otherwise: as in the MySQL adapter, it is not run in place of the statement.
        let reason = format!(
            "approval request {} was approved with a modified statement, which the gateway does \
             not run in place of yours on MySQL; send it yourself: {sql}",
            request_id.unwrap_or_default()
        );
        if let Some(event) = permit.event() {
            gate.record_outcome(
                session,
                event,
                Answered::not_run(Some(reason.clone())),
                None,
            );
        }
        return ExecAnswer::Denied {
            session_id: session.id,
            request_id,
            reason,
        };
    }
    let mut capture = gate.response_capture();
    // A reviewer who approved a modified statement approved only that one: it runs instead.
    let replacement = permit
        .replacement
        .as_deref()
        .map(|sql| (sql, classify(gate, conn.kind, sql)));
    let (sql, classification) = match &replacement {
        Some((sql, classification)) => (*sql, classification.as_ref()),
        None => (op.text.as_ref(), op.classification.as_ref()),
    };
    let masker = masker.as_deref();
    let result = match conn.kind {
        ConnectionKind::Mysql => {
            mysql_upstream::run(conn, sql, classification, masker, &mut capture).await
        }
        _ => upstream::run(conn, sql, classification, masker, &mut capture).await,
    };
    if let Some(event) = permit.event() {
        let answered = match &result {
            Ok(results) => Answered::ok(
                Some(results.iter().map(|r| r.rows_affected).sum()),
                results.last().map(|r| r.tag.clone()),
            ),
            Err(e) => Answered::error(e.message(&conn.name)),
        };
        gate.record_outcome(session, event, answered, Some(capture));
    }
    match result {
        Ok(results) => ExecAnswer::Ok {
            session_id: session.id,
            request_id,
            results,
        },
        Err(e) => ExecAnswer::Error {
            session_id: session.id,
            request_id,
            error: e.message(&conn.name),
            unavailable: false,
        },
    }
}

/// Runs one SQL text through the gate. A held statement answers `pending` (at once, or after
/// waiting up to `timeout` seconds with `wait`) and lives on: poll `GET /exec/{id}`.
#[utoipa::path(
    post,
    path = "/exec",
    operation_id = "exec",
    tag = "exec",
    request_body = ExecRequest,
    responses(
        (status = 200, description = "Run: `status` is `ok`", body = ExecAnswer),
        (status = 202, description = "Held for approval: `status` is `pending`", body = ExecAnswer),
        (status = 403, description = "Refused: `status` is `denied` or `expired`", body = ExecAnswer),
        (status = 502, description = "The upstream failed it or could not be reached: `status` is `error`", body = ExecAnswer),
        (status = 503, description = "The gateway could not record or mask it, so it was not run: `status` is `error`", body = ExecAnswer),
        (status = 400, description = "Invalid body, empty SQL or not a SQL connection", body = ErrorBody),
        (status = 404, description = "No such connection", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<Jobs>>,
    caller: Caller,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<ExecAnswer, ApiError> {
    let Json(body) = body?;
    if body.sql.trim().is_empty() {
        return Err(ApiError::BadRequest("`sql` is empty".into()));
    }
    let not_found =
        || ApiError::NotFound(format!("connection `{}` does not exist", body.connection));
    let conn = state
        .config
        .connections
        .iter()
        .find(|c| c.name == body.connection)
        .ok_or_else(not_found)?;
    if !state
        .gate
        .policies()
        .grants_connection(&caller.identity, &conn.name)
    {
        // Like the PostgreSQL login: a connection no policy grants is refused before a session.
        return Err(ApiError::Forbidden(format!(
            "no policy lets {} use connection `{}`",
            caller.identity.name, conn.name
        )));
    }
    if !matches!(conn.kind, ConnectionKind::Postgres | ConnectionKind::Mysql) {
        return Err(ApiError::BadRequest(format!(
            "connection `{}` is not a SQL connection (postgres or mysql); exec runs SQL only",
            conn.name
        )));
    }
    let gate = state.gate.clone();
    let (protocol, client) = match body.via {
        Via::Api => (Protocol::Api, "api"),
        Via::Mcp => (Protocol::Mcp, "mcp"),
    };
    let session = gate
        .open_session(caller.identity.clone(), &conn.name, protocol, client)
        .await?;
    let text: Arc<str> = Arc::from(body.sql.as_str());
    let classification = match conn.kind {
        // Calls to user-defined functions are judged by the upstream's catalog, as in the
        // PostgreSQL adapter.
        ConnectionKind::Postgres => {
            upstream::judge_functions(conn, classify(&gate, conn.kind, &text)).await
        }
        kind => classify(&gate, kind, &text),
    };
    let op = Operation {
        connection: conn.name.clone(),
        classification,
        text,
        params: Vec::new(),
    };
    let hold = match gate.submit(&session, &op).await {
        Submission::Permitted(permit) => {
            let answer = run_permitted(&gate, conn, &session, &op, permit).await;
            gate.close_session(&session, "exec finished").await;
            return Ok(answer);
        }
        Submission::Denied(denial) => {
            gate.close_session(&session, "exec denied").await;
            return Ok(denial_answer(&session, None, denial));
        }
        Submission::Held(hold) => hold,
    };
    let request_id = hold.request_id;
    let (tx, rx) = watch::channel(ExecAnswer::Pending {
        session_id: session.id,
        request_id,
        reviewers: hold.reviewers.clone(),
        timeout_secs: hold.timeout.as_secs(),
        preview: hold.preview.clone(),
    });
    let withdraw = Arc::new(Notify::new());
    jobs.insert(
        request_id,
        Job {
            owner: caller.identity.subject.clone(),
            answer: rx.clone(),
            withdraw: withdraw.clone(),
            finished_at: None,
        },
    );
    // The decision may come long after this HTTP call ends: the task owns the hold, so a later
    // `approve` really runs the statement, exactly once.
    let conn = conn.clone();
    let task_jobs = jobs.clone();
    tokio::spawn(async move {
        // Judged again if the policies change while it waits, like a held PostgreSQL statement.
        let verdict = gate.resolve(&session, &op, hold, withdraw.notified()).await;
        let answer = match verdict {
            Ok(permit) => run_permitted(&gate, &conn, &session, &op, permit).await,
            Err(denial) => denial_answer(&session, Some(request_id), denial),
        };
        let reason = match &answer {
            ExecAnswer::Ok { .. } | ExecAnswer::Error { .. } => "exec finished",
            _ => "exec not run",
        };
        gate.close_session(&session, reason).await;
        tx.send_replace(answer);
        task_jobs.finish(request_id);
    });
    let wait = if body.wait {
        let requested = body.timeout.map_or(DEFAULT_WAIT, Duration::from_secs);
        body.via.bound(requested, &state.config)
    } else {
        Duration::ZERO
    };
    Ok(answer_within(rx, wait).await)
}

/// A held exec's answer: `pending` until it is decided and run, then its result.
#[utoipa::path(
    get,
    path = "/exec/{id}",
    operation_id = "execStatus",
    tag = "exec",
    params(("id" = i64, Path, description = "The exec's approval request id"), PollQuery),
    responses(
        (status = 200, description = "Run: `status` is `ok`", body = ExecAnswer),
        (status = 202, description = "Held for approval: `status` is `pending`", body = ExecAnswer),
        (status = 403, description = "Refused: `status` is `denied` or `expired`", body = ExecAnswer),
        (status = 502, description = "The upstream failed it or could not be reached: `status` is `error`", body = ExecAnswer),
        (status = 503, description = "The gateway could not record or mask it, so it was not run: `status` is `error`", body = ExecAnswer),
        (status = 404, description = "No such exec known here, or not the caller's", body = ErrorBody),
    )
)]
pub async fn poll(
    State(state): State<ApiState>,
    Extension(jobs): Extension<Arc<Jobs>>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<ExecAnswer, ApiError> {
    let Path(id) = id?;
    let Query(query) = query?;
    let (rx, _) = jobs.find(id, &caller)?;
    let requested = query.wait.map_or(Duration::ZERO, Duration::from_secs);
    let wait = query.via.bound(requested, &state.config);
    Ok(answer_within(rx, wait).await)
}

/// Withdraws a pending exec (its approval request ends `canceled`); a finished one is
/// answered as it stands.
#[utoipa::path(
    delete,
    path = "/exec/{id}",
    operation_id = "execWithdraw",
    tag = "exec",
    params(("id" = i64, Path, description = "The exec's approval request id")),
    responses(
        (status = 200, description = "Run: `status` is `ok`", body = ExecAnswer),
        (status = 202, description = "Held for approval: `status` is `pending`", body = ExecAnswer),
        (status = 403, description = "Refused: `status` is `denied` or `expired`", body = ExecAnswer),
        (status = 502, description = "The upstream failed it or could not be reached: `status` is `error`", body = ExecAnswer),
        (status = 503, description = "The gateway could not record or mask it, so it was not run: `status` is `error`", body = ExecAnswer),
        (status = 404, description = "No such exec known here, or not the caller's", body = ErrorBody),
    )
)]
pub async fn withdraw(
    Extension(jobs): Extension<Arc<Jobs>>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<ExecAnswer, ApiError> {
    let Path(id) = id?;
    let (rx, withdraw) = jobs.find(id, &caller)?;
    // `notify_one` keeps a permit if the task is not waiting yet, so no withdrawal is lost.
    withdraw.notify_one();
    Ok(answer_within(rx, Duration::from_secs(10)).await)
}
