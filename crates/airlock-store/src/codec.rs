//! Between rows and records: JSON columns (lists, event details) and the row decoders used by
//! every query. Decode failures become `Corrupt` and never quote the stored text, which may hold
//! operations or their parameters.

use std::fmt::Display;

use airlock_core::chain::ChainLink;
use airlock_core::store::{
    ApprovalRecord, ApprovalState, CheckpointRecord, DeliveryRecord, EventRecord, NewApproval,
    NewCheckpoint, NewDelivery, NewPolicyChange, NewSession, PolicyChangeRecord, SessionEvent,
    SessionRecord, StoreError, StoredConnection, TokenRecord, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::error::db;

/// Encodes a value for a JSON text column.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("cannot encode {what} as JSON: {}", category(&e))))
}

/// Decodes a JSON text column; `what` and `id` only name the place in the error.
pub(crate) fn from_json<T: DeserializeOwned>(
    text: &str,
    what: &str,
    id: impl Display,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Corrupt(format!(
            "{what} of {id} is not valid: {} at line {}, column {}",
            category(&e),
            e.line(),
            e.column()
        ))
    })
}

/// A serde_json error's class, without its message (which can quote the offending data).
fn category(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "JSON syntax error",
        serde_json::error::Category::Data => "unexpected JSON data",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

pub(crate) fn parse_state(text: &str, id: i64) -> Result<ApprovalState, StoreError> {
    ApprovalState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("request {id} has an unknown state")))
}

/// Columns: id, name, groups, created_at, expires_at, revoked_at.
pub(crate) fn token(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
    let id: String = row.try_get("id").map_err(db)?;
    let groups: String = row.try_get("groups").map_err(db)?;
    Ok(TokenRecord {
        groups: from_json(&groups, "groups", format_args!("token {id}"))?,
        name: row.try_get("name").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        expires_at: row.try_get("expires_at").map_err(db)?,
        revoked_at: row.try_get("revoked_at").map_err(db)?,
        id,
    })
}

/// Columns: the session's, plus `event_count`.
pub(crate) fn session(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
    let id: i64 = row.try_get("id").map_err(db)?;
    Ok(SessionRecord {
        id,
        session: new_session(row, id)?,
        ended_at: row.try_get("ended_at").map_err(db)?,
        end_reason: row.try_get("end_reason").map_err(db)?,
        event_count: row.try_get("event_count").map_err(db)?,
    })
}

/// Columns: protocol, connection, subject, display_name, groups, auth_method, client_addr,
/// started_at (of session `id`).
fn new_session(row: &SqliteRow, id: i64) -> Result<NewSession, StoreError> {
    let groups: String = row.try_get("groups").map_err(db)?;
    Ok(NewSession {
        protocol: row.try_get("protocol").map_err(db)?,
        connection: row.try_get("connection").map_err(db)?,
        subject: row.try_get("subject").map_err(db)?,
        display_name: row.try_get("display_name").map_err(db)?,
        groups: from_json(&groups, "groups", format_args!("session {id}"))?,
        auth_method: row.try_get("auth_method").map_err(db)?,
        client_addr: row.try_get("client_addr").map_err(db)?,
        started_at: row.try_get("started_at").map_err(db)?,
    })
}

/// Columns: the event's (as [`event`] reads them) and its session's (as [`new_session`]).
pub(crate) fn session_event(row: &SqliteRow) -> Result<SessionEvent, StoreError> {
    let event = event(row)?;
    Ok(SessionEvent {
        session: new_session(row, event.session_id)?,
        event,
    })
}

/// Columns: id, at, event_id, hash, interval_ms, public_key, signature.
pub(crate) fn checkpoint(row: &SqliteRow) -> Result<CheckpointRecord, StoreError> {
    Ok(CheckpointRecord {
        id: row.try_get("id").map_err(db)?,
        checkpoint: NewCheckpoint {
            at: row.try_get("at").map_err(db)?,
            event_id: row.try_get("event_id").map_err(db)?,
            hash: row.try_get("hash").map_err(db)?,
            interval_ms: row.try_get("interval_ms").map_err(db)?,
            public_key: row.try_get("public_key").map_err(db)?,
            signature: row.try_get("signature").map_err(db)?,
        },
    })
}

/// Columns: id, session_id, at, detail, prev_hash, hash.
pub(crate) fn event(row: &SqliteRow) -> Result<EventRecord, StoreError> {
    let id: i64 = row.try_get("id").map_err(db)?;
    let detail: String = row.try_get("detail").map_err(db)?;
    Ok(EventRecord {
        id,
        session_id: row.try_get("session_id").map_err(db)?,
        at: row.try_get("at").map_err(db)?,
        detail: from_json(&detail, "detail", format_args!("event {id}"))?,
        prev_hash: row.try_get("prev_hash").map_err(db)?,
        hash: row.try_get("hash").map_err(db)?,
    })
}

/// Columns: id, session_id, at, detail, prev_hash, hash; the detail stays stored text.
pub(crate) fn chain_link(row: &SqliteRow) -> Result<ChainLink, StoreError> {
    Ok(ChainLink {
        id: row.try_get("id").map_err(db)?,
        session_id: row.try_get("session_id").map_err(db)?,
        at: row.try_get("at").map_err(db)?,
        detail: row.try_get("detail").map_err(db)?,
        prev_hash: row.try_get("prev_hash").map_err(db)?,
        hash: row.try_get("hash").map_err(db)?,
    })
}

/// Columns: the approval's; the votes are loaded separately and passed in.
pub(crate) fn approval(row: &SqliteRow, votes: Vec<Vote>) -> Result<ApprovalRecord, StoreError> {
    let id: i64 = row.try_get("id").map_err(db)?;
    let place = format!("request {id}");
    let json_list =
        |column: &str| -> Result<String, StoreError> { row.try_get(column).map_err(db) };
    let needed: i64 = row.try_get("approvals_needed").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    Ok(ApprovalRecord {
        id,
        request: NewApproval {
            session_id: row.try_get("session_id").map_err(db)?,
            requester_subject: row.try_get("requester_subject").map_err(db)?,
            requester_name: row.try_get("requester_name").map_err(db)?,
            requester_groups: from_json(
                &json_list("requester_groups")?,
                "requester_groups",
                &place,
            )?,
            connection: row.try_get("connection").map_err(db)?,
            protocol: row.try_get("protocol").map_err(db)?,
            operation: row.try_get("operation").map_err(db)?,
            params: from_json(&json_list("params")?, "params", &place)?,
            statement_kinds: from_json(&json_list("statement_kinds")?, "statement_kinds", &place)?,
            policy: row.try_get("policy").map_err(db)?,
            rule: row.try_get("rule").map_err(db)?,
            reviewers: from_json(&json_list("reviewers")?, "reviewers", &place)?,
            approvals_needed: u32::try_from(needed).map_err(|_| {
                StoreError::Corrupt(format!("approvals_needed of {place} is out of range"))
            })?,
            created_at: row.try_get("created_at").map_err(db)?,
            expires_at: row.try_get("expires_at").map_err(db)?,
            all_groups_must_approve: row.try_get("all_groups_must_approve").map_err(db)?,
            escalate_at: row.try_get("escalate_at").map_err(db)?,
            escalate_to: from_json(&json_list("escalate_to")?, "escalate_to", &place)?,
            preview: row
                .try_get::<Option<String>, _>("preview")
                .map_err(db)?
                .map(|text| from_json(&text, "preview", &place))
                .transpose()?,
            approval_window_ms: row.try_get("approval_window_ms").map_err(db)?,
            remind_after_ms: row.try_get("remind_after_ms").map_err(db)?,
        },
        state: parse_state(&state, id)?,
        decided_at: row.try_get("decided_at").map_err(db)?,
        reason: row.try_get("reason").map_err(db)?,
        votes,
        replacement: row.try_get("replacement").map_err(db)?,
        claimed_at: row.try_get("claimed_at").map_err(db)?,
        claimed_by_session: row.try_get("claimed_by_session").map_err(db)?,
    })
}

/// Columns: approval_id, reviewer_subject, reviewer_name, reviewer_groups, approve, reason, at.
/// Returns the request id alongside the vote.
pub(crate) fn vote(row: &SqliteRow) -> Result<(i64, Vote), StoreError> {
    let approval_id: i64 = row.try_get("approval_id").map_err(db)?;
    let groups: String = row.try_get("reviewer_groups").map_err(db)?;
    Ok((
        approval_id,
        Vote {
            reviewer_subject: row.try_get("reviewer_subject").map_err(db)?,
            reviewer_name: row.try_get("reviewer_name").map_err(db)?,
            reviewer_groups: from_json(
                &groups,
                "reviewer_groups",
                format_args!("a vote on request {approval_id}"),
            )?,
            approve: row.try_get("approve").map_err(db)?,
            reason: row.try_get("reason").map_err(db)?,
            at: row.try_get("at").map_err(db)?,
            replacement: row.try_get("replacement").map_err(db)?,
        },
    ))
}

/// Columns: name, kind, address, database, user, sealed_password.
pub(crate) fn connection(row: &SqliteRow) -> Result<StoredConnection, StoreError> {
    Ok(StoredConnection {
        name: row.try_get("name").map_err(db)?,
        kind: row.try_get("kind").map_err(db)?,
        address: row.try_get("address").map_err(db)?,
        database: row.try_get("database").map_err(db)?,
        user: row.try_get("user").map_err(db)?,
        sealed_password: row.try_get("sealed_password").map_err(db)?,
    })
}

pub(crate) fn policy_change(row: &SqliteRow) -> Result<PolicyChangeRecord, StoreError> {
    Ok(PolicyChangeRecord {
        id: row.try_get("id").map_err(db)?,
        change: NewPolicyChange {
            at: row.try_get("at").map_err(db)?,
            source: row.try_get("source").map_err(db)?,
            changed_by_subject: row.try_get("changed_by_subject").map_err(db)?,
            changed_by: row.try_get("changed_by").map_err(db)?,
            summary: row.try_get("summary").map_err(db)?,
            old_policies: row.try_get("old_policies").map_err(db)?,
            new_policies: row.try_get("new_policies").map_err(db)?,
        },
    })
}

/// Columns: id, request_id, event, webhook, target, format, attempt, at, status_code, error,
/// delivered.
pub(crate) fn delivery(row: &SqliteRow) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: row.try_get("id").map_err(db)?,
        delivery: NewDelivery {
            request_id: row.try_get("request_id").map_err(db)?,
            event: row.try_get("event").map_err(db)?,
            webhook: row.try_get("webhook").map_err(db)?,
            target: row.try_get("target").map_err(db)?,
            format: row.try_get("format").map_err(db)?,
            attempt: row.try_get("attempt").map_err(db)?,
            at: row.try_get("at").map_err(db)?,
            status_code: row.try_get("status_code").map_err(db)?,
            error: row.try_get("error").map_err(db)?,
            delivered: row.try_get("delivered").map_err(db)?,
        },
    })
}
