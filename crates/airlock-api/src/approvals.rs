//! `/api/v1/approvals`: the approval queue as each caller may see it (admins, the requester,
//! the rule's reviewers), and reviewers' votes. The rules of voting (no self-approval, only the
//! rule's reviewer groups) are enforced by the core; this module only maps their answers.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use airlock_core::approval::can_view;
use airlock_core::store::{ApprovalRecord, ApprovalState, DeliveryRecord};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only requests in this state.
    #[param(value_type = Option<ApprovalState>)]
    state: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    /// Why; a denial needs one.
    reason: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    reason: Option<String>,
    /// A statement to run instead of the requested one.
    replace_with: Option<String>,
}

/// Votes may be cast with no body at all (`curl -X POST …/approve`), so the body is parsed
/// by hand rather than through `Json`, which insists on a content type.
fn vote_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

fn reason_of(body: VoteBody) -> Option<String> {
    body.reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
}

fn parse_state(state: Option<&str>) -> Result<Option<ApprovalState>, ApiError> {
    match state {
        None | Some("") => Ok(None),
        Some(s) => ApprovalState::parse(s).map(Some).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state `{s}`; use pending, approved, denied, expired or canceled"
            ))
        }),
    }
}

/// The approval requests the caller may see: admins all, requesters their own, reviewers those
/// naming their groups; newest first.
#[utoipa::path(
    get,
    path = "/approvals",
    operation_id = "listApprovals",
    tag = "approvals",
    params(ListQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<ApprovalRecord>),
        (status = 400, description = "Unknown state", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<ApprovalRecord>>, ApiError> {
    let Query(query) = query?;
    let filter = parse_state(query.state.as_deref())?;
    let records = state.gate.store().list_approvals(filter).await?;
    Ok(Json(
        records
            .into_iter()
            .filter(|r| can_view(&caller.identity, r, &state.config.admin_groups))
            .collect(),
    ))
}

/// One request with its webhook notification delivery attempts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ApprovalDetail {
    #[serde(flatten)]
    record: ApprovalRecord,
    deliveries: Vec<DeliveryRecord>,
}

/// One approval request, with its webhook notification delivery attempts.
#[utoipa::path(
    get,
    path = "/approvals/{id}",
    operation_id = "getApproval",
    tag = "approvals",
    params(("id" = i64, Path, description = "Approval request id")),
    responses(
        (status = 200, description = "The request", body = ApprovalDetail),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such request, or not visible to the caller", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<ApprovalDetail>, ApiError> {
    let Path(id) = id?;
    let not_found = || ApiError::NotFound(format!("approval request {id} does not exist"));
    // A request the caller may not see is answered exactly like a missing one, so its
    // existence does not leak.
    match state.gate.store().get_approval(id).await? {
        Some(record) if can_view(&caller.identity, &record, &state.config.admin_groups) => {
            let deliveries = state.gate.store().list_deliveries(id).await?;
            Ok(Json(ApprovalDetail { record, deliveries }))
        }
        _ => Err(not_found()),
    }
}

/// A vote to approve, by a member of the rule's reviewer groups (never the requester);
/// optionally approving a replacement statement instead. The body may be left out.
#[utoipa::path(
    post,
    path = "/approvals/{id}/approve",
    operation_id = "approve",
    tag = "approvals",
    params(("id" = i64, Path, description = "Approval request id")),
    request_body(content = Option<ApproveBody>, description = "Optional: a vote needs no body"),
    responses(
        (status = 200, description = "The request after the vote", body = ApprovalRecord),
        (status = 400, description = "Invalid body or replacement", body = ErrorBody),
        (status = 403, description = "Not a reviewer of this request, the requester, or a replacement more dangerous than the reviewer may allow", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "The request is no longer pending", body = ErrorBody),
    )
)]
pub async fn approve(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Bytes,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let Path(id) = id?;
    let body: ApproveBody = vote_body(&body)?;
    let replace_with = match body.replace_with {
        Some(sql) if sql.trim().is_empty() => {
            return Err(ApiError::BadRequest(
                "`replace_with` is empty: send the statement to run instead".into(),
            ))
        }
        other => other,
    };
    let modified = replace_with.is_some();
    let reason = reason_of(VoteBody {
        reason: body.reason,
    });
    let record = state
        .gate
        .vote(&caller.identity, id, true, reason, replace_with)
        .await?;
    tracing::info!(request = id, reviewer = %caller.identity.subject, state = record.state.as_str(), modified, "approval vote");
    Ok(Json(record))
}

/// A vote to deny, with a reason; one denial ends the request.
#[utoipa::path(
    post,
    path = "/approvals/{id}/deny",
    operation_id = "deny",
    tag = "approvals",
    params(("id" = i64, Path, description = "Approval request id")),
    request_body(content = VoteBody),
    responses(
        (status = 200, description = "The request after the vote", body = ApprovalRecord),
        (status = 400, description = "No reason given", body = ErrorBody),
        (status = 403, description = "Not a reviewer of this request", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "The request is no longer pending", body = ErrorBody),
    )
)]
pub async fn deny(
    State(state): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Bytes,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let Path(id) = id?;
    let Some(reason) = reason_of(vote_body(&body)?) else {
        return Err(ApiError::BadRequest(
            "a denial needs a reason: send {\"reason\": \"…\"}".into(),
        ));
    };
    let record = state
        .gate
        .approvals()
        .vote(&caller.identity, id, false, Some(reason), None)
        .await?;
    tracing::info!(request = id, reviewer = %caller.identity.subject, state = record.state.as_str(), "denial vote");
    Ok(Json(record))
}
