//! The persistence contract: what the core needs from a store, as a trait, plus the records it
//! reads and writes. Backends (embedded SQLite, later PostgreSQL) live in `airlock-store`.

use crate::preview::BlastRadius;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// Unix time in milliseconds; every timestamp the store keeps is one of these.
pub type Millis = i64;

/// The wall clock, in the unit the store uses.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Backend(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// An Airlock-issued agent token as stored: the token itself is never stored, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub groups: Vec<String>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NewSession {
    pub protocol: String,
    pub connection: String,
    pub subject: String,
    pub display_name: String,
    pub groups: Vec<String>,
    pub auth_method: String,
    pub client_addr: String,
    pub started_at: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SessionRecord {
    pub id: i64,
    #[serde(flatten)]
    pub session: NewSession,
    pub ended_at: Option<Millis>,
    pub end_reason: Option<String>,
    pub event_count: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionFilter {
    /// Only the sessions of this subject (agents see their own).
    pub subject: Option<String>,
    /// Only sessions started at or after this time.
    pub since: Option<Millis>,
    pub limit: Option<i64>,
}

/// What happened in a session, appended in order and never changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventDetail {
    /// An operation and the decision taken on it, stored before anything is forwarded.
    Statement {
        operation: String,
        params: Vec<Option<String>>,
        statement_kinds: Vec<String>,
        action: String,
        policy: Option<String>,
        rule: Option<String>,
        reason: Option<String>,
        request_id: Option<i64>,
    },
    /// How a held operation's approval request ended.
    Resolution {
        statement_event: i64,
        request_id: i64,
        state: ApprovalState,
        reason: Option<String>,
        decided_by: Vec<String>,
        /// The reviewer's statement that ran instead of the requested one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced_with: Option<String>,
        /// Every vote cast: who, in which groups, when, which way and why.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        votes: Vec<Vote>,
    },
    /// What the upstream answered to a forwarded operation, and how many values of the answer
    /// each detector (and `column` rules) masked.
    Outcome {
        statement_event: i64,
        status: OutcomeStatus,
        rows: Option<u64>,
        tag: Option<String>,
        error: Option<String>,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        masked: std::collections::BTreeMap<String, u64>,
    },
    /// What the agent received from a forwarded operation, as masked for it: the first rows
    /// within `recording.results`. Records written before the counts moved to the outcome
    /// carry them here too.
    Response {
        statement_event: i64,
        columns: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
        /// Rows beyond the limits were left out.
        truncated: bool,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        masked: std::collections::BTreeMap<String, u64>,
    },
}

impl EventDetail {
    /// The serde tag, which the store also keeps in a column of its own.
    pub fn kind(&self) -> &'static str {
        match self {
            EventDetail::Statement { .. } => "statement",
            EventDetail::Resolution { .. } => "resolution",
            EventDetail::Outcome { .. } => "outcome",
            EventDetail::Response { .. } => "response",
        }
    }
}

/// An event as the recorder's journal holds it and the store copies it: the detail is the
/// exact JSON text the chain hashed, so copying never decodes or re-encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEvent {
    pub id: i64,
    pub session_id: i64,
    pub at: Millis,
    /// Borrowed for the events this run records, which come with their kind's static name.
    pub kind: Cow<'static, str>,
    pub detail: String,
    /// Shared, since each event's hash is also the next one's `prev_hash`.
    pub prev_hash: Option<Arc<str>>,
    pub hash: Option<Arc<str>>,
}

impl JournalEvent {
    /// Encodes a decoded event the way the recorder writes one.
    pub fn encode(event: &EventRecord) -> Result<JournalEvent, serde_json::Error> {
        Ok(JournalEvent {
            id: event.id,
            session_id: event.session_id,
            at: event.at,
            kind: Cow::Borrowed(event.detail.kind()),
            detail: crate::chain::canonical_detail(&event.detail)?,
            prev_hash: event.prev_hash.as_deref().map(Arc::from),
            hash: event.hash.as_deref().map(Arc::from),
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeStatus {
    Ok,
    Error,
    /// Forwarded, but the upstream skipped it (an earlier error in the same batch).
    NotRun,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewEvent {
    pub session_id: i64,
    pub at: Millis,
    pub detail: EventDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct EventRecord {
    pub id: i64,
    pub session_id: i64,
    pub at: Millis,
    #[serde(flatten)]
    pub detail: EventDetail,
    /// The chain links (see [`crate::chain`]); `None` for events recorded before the chain.
    #[serde(default)]
    pub prev_hash: Option<String>,
    #[serde(default)]
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Withdrawn by the requester (a CancelRequest, a dropped connection).
    Canceled,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
            ApprovalState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalState> {
        Some(match s {
            "pending" => ApprovalState::Pending,
            "approved" => ApprovalState::Approved,
            "denied" => ApprovalState::Denied,
            "expired" => ApprovalState::Expired,
            "canceled" => ApprovalState::Canceled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NewApproval {
    pub session_id: i64,
    pub requester_subject: String,
    pub requester_name: String,
    pub requester_groups: Vec<String>,
    pub connection: String,
    pub protocol: String,
    pub operation: String,
    pub params: Vec<Option<String>>,
    pub statement_kinds: Vec<String>,
    pub policy: String,
    pub rule: String,
    pub reviewers: Vec<String>,
    pub approvals_needed: u32,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// An approval from a member of each `reviewers` group is needed too.
    #[serde(default)]
    pub all_groups_must_approve: bool,
    /// From this time on, members of `escalate_to` may decide as well.
    #[serde(default)]
    pub escalate_at: Option<Millis>,
    #[serde(default)]
    pub escalate_to: Vec<String>,
    /// The blast-radius preview, computed before reviewers were told of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<BlastRadius>,
    /// How long after its approval the request may still be run by its requester re-sending
    /// the identical operation on the same connection (`approval_window`), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_window_ms: Option<i64>,
    /// How often reviewers are reminded of the request while it is pending
    /// (`remind_after`), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_after_ms: Option<i64>,
}

impl NewApproval {
    /// Whether `groups` may decide the request at `at`: its reviewers always, its escalation
    /// groups once it has escalated.
    pub fn may_decide(&self, groups: &[String], at: Millis) -> bool {
        let member = |of: &[String]| groups.iter().any(|g| of.contains(g));
        member(&self.reviewers) || (self.escalated_at(at) && member(&self.escalate_to))
    }

    /// Whether the request has escalated by `at`.
    pub fn escalated_at(&self, at: Millis) -> bool {
        self.escalate_at.is_some_and(|e| at >= e)
    }
}

/// The state `votes` settle a request in, or `None` while more are needed: any deny → denied;
/// approved once `approvals_needed` distinct reviewers approved and, with
/// `all_groups_must_approve`, each reviewer group has an approval from one of its members, or
/// from a member of an escalation group cast after the request escalated (escalation exists to
/// decide when a group does not answer). Every store settles with this one function.
pub fn settle(request: &NewApproval, votes: &[Vote]) -> Option<ApprovalState> {
    if votes.iter().any(|v| !v.approve) {
        return Some(ApprovalState::Denied);
    }
    let approvals: Vec<&Vote> = votes.iter().filter(|v| v.approve).collect();
    let mut approvers: Vec<&str> = approvals
        .iter()
        .map(|v| v.reviewer_subject.as_str())
        .collect();
    approvers.sort_unstable();
    approvers.dedup();
    if approvers.len() < request.approvals_needed as usize {
        return None;
    }
    let stand_in = approvals.iter().any(|v| {
        request.escalated_at(v.at)
            && v.reviewer_groups
                .iter()
                .any(|g| request.escalate_to.contains(g))
    });
    let covered =
        |group: &String| stand_in || approvals.iter().any(|v| v.reviewer_groups.contains(group));
    if request.all_groups_must_approve && !request.reviewers.iter().all(covered) {
        return None;
    }
    Some(ApprovalState::Approved)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Vote {
    pub reviewer_subject: String,
    pub reviewer_name: String,
    pub reviewer_groups: Vec<String>,
    pub approve: bool,
    pub reason: Option<String>,
    pub at: Millis,
    /// An approval's statement to run instead of the requested one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ApprovalRecord {
    pub id: i64,
    #[serde(flatten)]
    pub request: NewApproval,
    pub state: ApprovalState,
    pub decided_at: Option<Millis>,
    pub reason: Option<String>,
    pub votes: Vec<Vote>,
    /// The statement a reviewer approved in place of `operation` (which is kept as requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// When an approved request was run, and by which session: an approval runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by_session: Option<i64>,
}

impl ApprovalRecord {
    /// Until when an approved request not yet run may be claimed by its requester re-sending
    /// it (`None`: it has no window, is not approved or already ran).
    pub fn claimable_until(&self) -> Option<Millis> {
        if self.state != ApprovalState::Approved || self.claimed_at.is_some() {
            return None;
        }
        Some(
            self.decided_at?
                .saturating_add(self.request.approval_window_ms?),
        )
    }
}

/// One attempt to deliver a webhook notification about an approval request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NewDelivery {
    pub request_id: i64,
    /// `requested`, `decided`, `expired` or `canceled`.
    pub event: String,
    /// The webhook's position in the config's `notify:` list.
    pub webhook: i64,
    /// The webhook's address, redacted (scheme, host and port only: the rest is a secret).
    pub target: String,
    /// `json`, `slack` or `teams`.
    pub format: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub at: Millis,
    /// The HTTP status answered, when there was an answer.
    pub status_code: Option<i64>,
    /// Why no answer came (connection refused, timeout, ...).
    pub error: Option<String>,
    pub delivered: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeliveryRecord {
    pub id: i64,
    #[serde(flatten)]
    pub delivery: NewDelivery,
}

/// A connection's definition as kept in the store, its password sealed with the secret key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConnection {
    pub name: String,
    pub kind: String,
    pub address: String,
    pub database: Option<String>,
    pub user: Option<String>,
    pub sealed_password: Option<Vec<u8>>,
}

/// A change of the live policies, as audited: who made it, when, and the policies before and
/// after (each a `policies:` YAML document), with a one-line summary by policy name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NewPolicyChange {
    pub at: Millis,
    /// `api` or `config-file`.
    pub source: String,
    /// The admin's subject; `None` for a change read from the config file.
    pub changed_by_subject: Option<String>,
    /// The admin's name, or `config file`.
    pub changed_by: String,
    pub summary: String,
    pub old_policies: String,
    pub new_policies: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PolicyChangeRecord {
    pub id: i64,
    #[serde(flatten)]
    pub change: NewPolicyChange,
}

/// A signed checkpoint over the chain's head (see [`crate::checkpoint`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewCheckpoint {
    pub at: Millis,
    /// The event whose hash is signed: the chain's head when the checkpoint was taken.
    pub event_id: i64,
    pub hash: String,
    /// How often the gateway takes checkpoints; verification allows an unsigned tail of about
    /// twice this.
    pub interval_ms: i64,
    /// The signer's Ed25519 public key, hex.
    pub public_key: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointRecord {
    pub id: i64,
    #[serde(flatten)]
    pub checkpoint: NewCheckpoint,
}

/// Which events an export streams; every field set narrows it.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only the sessions of this subject (agents see their own).
    pub subject: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Millis>,
    /// Only sessions on this connection.
    pub connection: Option<String>,
    /// Only sessions whose subject or display name is this.
    pub identity: Option<String>,
}

/// An event and the session it belongs to: what one export row is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub session: NewSession,
    pub event: EventRecord,
}

/// What a retention prune removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PruneReport {
    /// The last event removed, whose checkpoint is now the chain's anchor; `None` when no
    /// event was removed.
    pub pruned_through: Option<i64>,
    pub events: u64,
    pub sessions: u64,
}

/// See [`Store::chain_span`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSpan {
    pub from_hash: Option<String>,
    pub to_hash: Option<String>,
    pub events: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_token(&self, token: &TokenRecord, hash: &str) -> Result<(), StoreError>;
    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn count_tokens(&self) -> Result<u64, StoreError>;
    /// Marks a token revoked; `false` when there is no such (unrevoked) token.
    async fn revoke_token(&self, id: &str, at: Millis) -> Result<bool, StoreError>;

    async fn open_session(&self, session: &NewSession) -> Result<i64, StoreError>;
    async fn close_session(&self, id: i64, at: Millis, reason: &str) -> Result<(), StoreError>;
    async fn get_session(&self, id: i64) -> Result<Option<SessionRecord>, StoreError>;
    async fn list_sessions(&self, filter: &SessionFilter)
        -> Result<Vec<SessionRecord>, StoreError>;

    /// Copies events that already carry their ids (from the recorder's journal) and records
    /// how far the journal has been copied, in one transaction. Events already present are
    /// skipped, so a copy interrupted by a crash can simply be repeated.
    async fn ingest_events(
        &self,
        events: Vec<JournalEvent>,
        journal_offset: u64,
    ) -> Result<(), StoreError>;
    /// How far the journal has been copied, and the largest event id stored.
    async fn journal_state(&self) -> Result<(u64, i64), StoreError>;
    async fn list_events(&self, session_id: i64) -> Result<Vec<EventRecord>, StoreError>;
    /// Up to `limit` events with ids above `after_id`, in id order, as the chain hashes them.
    async fn list_chain_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<crate::chain::ChainLink>, StoreError>;
    /// What the checkpoint signer checks of events it signs without walking them: the stored
    /// hashes of events `from` and `to` (`None` where absent or unchained) and how many events
    /// lie in `(from, to]`.
    async fn chain_span(&self, from: i64, to: i64) -> Result<ChainSpan, StoreError>;
    /// The id and hash of the chain's head: the event with the largest id, or after a prune
    /// removed every event, the anchor. `None` when there is none or it is unchained.
    async fn chain_head(&self) -> Result<Option<(i64, String)>, StoreError>;

    async fn record_checkpoint(&self, checkpoint: &NewCheckpoint) -> Result<i64, StoreError>;
    /// Up to `limit` checkpoints after `after` (an event id and a checkpoint id), ordered by
    /// event id, then id: one page of a walk over them.
    async fn list_checkpoints_after(
        &self,
        after: (i64, i64),
        limit: i64,
    ) -> Result<Vec<CheckpointRecord>, StoreError>;
    /// The checkpoint over the newest event.
    async fn newest_checkpoint(&self) -> Result<Option<CheckpointRecord>, StoreError>;
    /// The last event a retention prune removed (0 when none has).
    async fn pruned_through(&self) -> Result<i64, StoreError>;
    /// Removes whole checkpointed segments of history older than `cutoff`, in one
    /// transaction: every event up to the newest checkpoint before which every event belongs
    /// to a session whose last activity is older than `cutoff`; then the ended sessions left
    /// without events (with their approval requests, votes and deliveries), and the
    /// checkpoints before that anchor, which is kept. At most about `max_events` events go at
    /// once (a whole segment at least): call again while it removes any.
    async fn prune(&self, cutoff: Millis, max_events: i64) -> Result<PruneReport, StoreError>;

    /// Up to `limit` events with ids above `after_id` that `filter` lets through, in id order,
    /// each with its session: one page of an export.
    async fn export_events(
        &self,
        filter: &EventFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<SessionEvent>, StoreError>;

    async fn create_approval(&self, request: &NewApproval) -> Result<i64, StoreError>;
    async fn get_approval(&self, id: i64) -> Result<Option<ApprovalRecord>, StoreError>;
    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Adds a vote atomically and settles the state with [`settle`]. A vote carrying a
    /// `replacement` stores it on the request; it must be the request's first approval, so that
    /// every approver approves the same statement. `Conflict` when the request is no longer
    /// pending, this reviewer already voted or a replacement comes too late; `NotFound` when
    /// there is no such request.
    async fn cast_vote(&self, id: i64, vote: &Vote) -> Result<ApprovalRecord, StoreError>;
    /// Marks an approved request as run by `session_id`: an approval runs once. `false` when
    /// it is not approved or has already been claimed.
    async fn claim_approval(
        &self,
        id: i64,
        session_id: i64,
        at: Millis,
    ) -> Result<bool, StoreError>;
    /// The requests of `subject` for exactly `operation` on `connection` that a re-send may
    /// resume, oldest first: those with an approval window that are still pending, or approved,
    /// not yet run and with their window still open at `at`.
    async fn resumable_approvals(
        &self,
        subject: &str,
        connection: &str,
        operation: &str,
        at: Millis,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Ends a pending request (expired, canceled); `false` when it was no longer pending.
    async fn finish_approval(
        &self,
        id: i64,
        state: ApprovalState,
        reason: &str,
        at: Millis,
    ) -> Result<bool, StoreError>;

    /// Records one webhook delivery attempt for an approval request.
    async fn record_delivery(&self, delivery: &NewDelivery) -> Result<i64, StoreError>;
    /// The delivery attempts for an approval request, oldest first.
    async fn list_deliveries(&self, request_id: i64) -> Result<Vec<DeliveryRecord>, StoreError>;

    async fn upsert_connection(&self, connection: &StoredConnection) -> Result<(), StoreError>;
    async fn list_connections(&self) -> Result<Vec<StoredConnection>, StoreError>;

    async fn record_policy_change(&self, change: &NewPolicyChange) -> Result<i64, StoreError>;
    /// Every policy change, newest first.
    async fn list_policy_changes(&self) -> Result<Vec<PolicyChangeRecord>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(reviewers: &[&str], needed: u32, all_groups: bool) -> NewApproval {
        NewApproval {
            session_id: 1,
            requester_subject: "token:agent".into(),
            requester_name: "agent".into(),
            requester_groups: vec!["agents".into()],
            connection: "prod".into(),
            protocol: "postgres".into(),
            operation: "DELETE FROM t".into(),
            params: Vec::new(),
            statement_kinds: vec!["DELETE".into()],
            policy: "p".into(),
            rule: "r".into(),
            reviewers: reviewers.iter().map(|g| g.to_string()).collect(),
            approvals_needed: needed,
            created_at: 0,
            expires_at: 100_000,
            all_groups_must_approve: all_groups,
            escalate_at: Some(10_000),
            escalate_to: vec!["oncall".into()],
            preview: None,
            approval_window_ms: None,
            remind_after_ms: None,
        }
    }

    fn vote(subject: &str, group: &str, approve: bool, at: Millis) -> Vote {
        Vote {
            reviewer_subject: subject.into(),
            reviewer_name: subject.into(),
            reviewer_groups: vec![group.into()],
            approve,
            reason: None,
            at,
            replacement: None,
        }
    }

    #[test]
    fn all_groups_need_an_approval_each() {
        let r = request(&["dba", "security"], 2, true);
        let same_group = [vote("a", "dba", true, 1), vote("b", "dba", true, 2)];
        assert_eq!(settle(&r, &same_group), None);
        let both = [vote("a", "dba", true, 1), vote("c", "security", true, 2)];
        assert_eq!(settle(&r, &both), Some(ApprovalState::Approved));
        // Approvals still count distinct reviewers.
        let r3 = request(&["dba", "security"], 3, true);
        assert_eq!(settle(&r3, &both), None);
        // A single deny ends it.
        let denied = [vote("a", "dba", true, 1), vote("c", "security", false, 2)];
        assert_eq!(settle(&r, &denied), Some(ApprovalState::Denied));
        // Without the option, any reviewers make up the count.
        assert_eq!(
            settle(&request(&["dba", "security"], 2, false), &same_group),
            Some(ApprovalState::Approved)
        );
    }

    #[test]
    fn escalation_groups_decide_only_once_escalated() {
        let r = request(&["dba", "security"], 1, true);
        assert!(!r.may_decide(&["oncall".into()], 9_999));
        assert!(r.may_decide(&["oncall".into()], 10_000));
        assert!(r.may_decide(&["dba".into()], 0));
        // An escalated approval stands in for groups that did not answer.
        assert_eq!(
            settle(&r, &[vote("o", "oncall", true, 10_000)]),
            Some(ApprovalState::Approved)
        );
        assert_eq!(settle(&r, &[vote("a", "dba", true, 5)]), None);
    }
}
