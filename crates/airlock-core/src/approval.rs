//! Approval requests: opening them, reviewers' votes (with the rules that never bend: no
//! self-approval, only the rule's reviewer groups and, once escalated, its escalation groups;
//! settled by the store with [`crate::store::settle`]), and waiting for the
//! outcome with a deadline, a withdrawal signal and a poll of the store (so a vote taken on
//! another replica is seen too).

use crate::identity::Identity;
use crate::notify::Notifier;
use crate::store::{
    now_millis, ApprovalRecord, ApprovalState, NewApproval, Store, StoreError, Vote,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often a waiting session re-reads its request, for votes cast on another replica.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error("approval request {0} does not exist")]
    NotFound(i64),
    #[error("approval request {0} is already {1}")]
    NotPending(i64, &'static str),
    #[error("a requester can never decide its own request")]
    SelfApproval,
    #[error("only members of {0:?} may decide this request")]
    NotAReviewer(Vec<String>),
    /// The reviewer may not run the proposed replacement in place of the request.
    #[error("the replacement is refused: {0}")]
    ReplacementRefused(String),
    /// The replacement is not a statement the gateway can judge.
    #[error("the replacement is invalid: {0}")]
    InvalidReplacement(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Store(StoreError),
}

/// A reviewer's statement to run instead of the requested one, with the judge of whether
/// this reviewer may substitute it for a given request (the gate's policies decide that).
pub struct Replacement<'a> {
    pub sql: String,
    pub judge: &'a (dyn Fn(&NewApproval) -> Result<(), VoteError> + Send + Sync),
}

pub struct Approvals {
    store: Arc<dyn Store>,
    watchers: Mutex<HashMap<i64, watch::Sender<ApprovalState>>>,
    /// Told of every request that leaves `pending`, by whoever moved it, so each end is
    /// announced exactly once (the vote, the waiter's timer or withdrawal, the dead session).
    notifier: Notifier,
}

impl Approvals {
    pub fn new(store: Arc<dyn Store>, notifier: Notifier) -> Self {
        Approvals {
            store,
            watchers: Mutex::new(HashMap::new()),
            notifier,
        }
    }

    pub async fn open(&self, request: &NewApproval) -> Result<i64, StoreError> {
        let id = self.store.create_approval(request).await?;
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.insert(id, watch::channel(ApprovalState::Pending).0);
        }
        Ok(id)
    }

    fn notify(&self, id: i64, state: ApprovalState) {
        if let Ok(watchers) = self.watchers.lock() {
            if let Some(w) = watchers.get(&id) {
                w.send_replace(state);
            }
        }
    }

    /// A reviewer's vote. Checked here, settled atomically by the store.
    pub async fn vote(
        &self,
        reviewer: &Identity,
        id: i64,
        approve: bool,
        reason: Option<String>,
        replacement: Option<Replacement<'_>>,
    ) -> Result<ApprovalRecord, VoteError> {
        let record = self
            .store
            .get_approval(id)
            .await
            .map_err(VoteError::Store)?
            .ok_or(VoteError::NotFound(id))?;
        if record.request.requester_subject == reviewer.subject {
            return Err(VoteError::SelfApproval);
        }
        let now = now_millis();
        if !record.request.may_decide(&reviewer.groups, now) {
            let mut groups = record.request.reviewers.clone();
            if record.request.escalated_at(now) {
                groups.extend(record.request.escalate_to.iter().cloned());
            }
            return Err(VoteError::NotAReviewer(groups));
        }
        if record.state != ApprovalState::Pending {
            return Err(VoteError::NotPending(id, record.state.as_str()));
        }
        if let Some(replacement) = &replacement {
            if !approve {
                return Err(VoteError::InvalidReplacement(
                    "only an approval can carry a replacement".into(),
                ));
            }
            (replacement.judge)(&record.request)?;
        }
        if now >= record.request.expires_at {
            // Its session may be gone and no timer left to expire it: do it here.
            let expired = self
                .store
                .finish_approval(
                    id,
                    ApprovalState::Expired,
                    "no decision before the timeout",
                    now,
                )
                .await
                .map_err(VoteError::Store)?;
            self.notify(id, ApprovalState::Expired);
            if expired {
                self.notifier.announce(&ApprovalRecord {
                    state: ApprovalState::Expired,
                    decided_at: Some(now),
                    reason: Some("no decision before the timeout".into()),
                    ..record
                });
            }
            return Err(VoteError::NotPending(id, ApprovalState::Expired.as_str()));
        }
        let vote = Vote {
            reviewer_subject: reviewer.subject.clone(),
            reviewer_name: reviewer.name.clone(),
            reviewer_groups: reviewer.groups.clone(),
            approve,
            reason,
            at: now,
            replacement: replacement.map(|r| r.sql),
        };
        let updated = self.store.cast_vote(id, &vote).await.map_err(|e| match e {
            StoreError::NotFound => VoteError::NotFound(id),
            StoreError::Conflict(m) => VoteError::Conflict(m),
            other => VoteError::Store(other),
        })?;
        if updated.state != ApprovalState::Pending {
            self.notify(id, updated.state);
            self.notifier.announce(&updated);
        }
        Ok(updated)
    }

    /// Waits for the request to leave `pending`: decided by reviewers, expired at `deadline`,
    /// or withdrawn when `withdraw` completes. Returns the final record.
    /// After `escalate_after` a still pending request is announced as escalated, once.
    pub async fn wait(
        &self,
        id: i64,
        timeout: Duration,
        escalate_after: Option<Duration>,
        withdraw: impl Future<Output = ()>,
    ) -> Result<ApprovalRecord, StoreError> {
        let withdraw = async {
            withdraw.await;
            "withdrawn by the requester".to_string()
        };
        self.wait_or_cancel(id, timeout, escalate_after, withdraw)
            .await
    }

    /// [`Approvals::wait`], where the request is canceled, with the reason it yields, when
    /// `cancel` completes.
    pub async fn wait_or_cancel(
        &self,
        id: i64,
        timeout: Duration,
        escalate_after: Option<Duration>,
        cancel: impl Future<Output = String>,
    ) -> Result<ApprovalRecord, StoreError> {
        let withdraw = cancel;
        let mut changes = self
            .watchers
            .lock()
            .map_err(|_| StoreError::Backend("approval watchers poisoned".into()))?
            .entry(id)
            .or_insert_with(|| watch::channel(ApprovalState::Pending).0)
            .subscribe();
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let escalation = escalate_after.map(|after| started + after);
        let mut escalated = false;
        let mut abandoned = AbandonGuard {
            store: Some(self.store.clone()),
            notifier: self.notifier.clone(),
            id,
        };
        tokio::pin!(withdraw);
        let mut withdrawn = false;
        let mut watching = true;
        let mut ended_here = false;
        let result = loop {
            let finish = tokio::select! {
                changed = changes.changed(), if watching => { watching = changed.is_ok(); None },
                _ = tokio::time::sleep(POLL) => None,
                _ = tokio::time::sleep_until(deadline) => Some((ApprovalState::Expired, Cow::Borrowed("no decision before the timeout"))),
                _ = sleep_until_some(escalation), if !escalated => {
                    escalated = true;
                    if let Some(record) = self.store.get_approval(id).await?.filter(|r| r.state == ApprovalState::Pending) {
                        self.notifier.announce_escalation(&record);
                    }
                    None
                }
                reason = &mut withdraw, if !withdrawn => { withdrawn = true; Some((ApprovalState::Canceled, Cow::Owned(reason))) }
            };
            if let Some((state, reason)) = finish {
                ended_here |= self
                    .store
                    .finish_approval(id, state, reason.as_ref(), now_millis())
                    .await?;
            }
            match self.store.get_approval(id).await? {
                Some(record) if record.state != ApprovalState::Pending => break record,
                Some(_) => continue,
                None => return Err(StoreError::NotFound),
            }
        };
        abandoned.store = None;
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.remove(&id);
        }
        if ended_here {
            self.notifier.announce(&result);
        }
        Ok(result)
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A wait that is dropped before the request settles (its session died) withdraws the
/// request, so it can never be approved with no one left to run it.
struct AbandonGuard {
    store: Option<Arc<dyn Store>>,
    notifier: Notifier,
    id: i64,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let id = self.id;
            let notifier = self.notifier.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let ended = store
                        .finish_approval(
                            id,
                            ApprovalState::Canceled,
                            "the session ended",
                            now_millis(),
                        )
                        .await;
                    if let (Ok(true), Ok(Some(record))) = (ended, store.get_approval(id).await) {
                        notifier.announce(&record);
                    }
                });
            }
        }
    }
}

/// Who may read a request: admins, the requester, and members of its reviewer and escalation
/// groups (the latter are told of it when it escalates).
pub fn can_view(identity: &Identity, record: &ApprovalRecord, admin_groups: &[String]) -> bool {
    identity.in_any_group(admin_groups)
        || identity.subject == record.request.requester_subject
        || identity.in_any_group(&record.request.reviewers)
        || identity.in_any_group(&record.request.escalate_to)
}
