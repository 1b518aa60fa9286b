//! Approval requests: opening them, reviewers' votes (with the rules that never bend: no
//! self-approval, only the rule's reviewer groups and, once escalated, its escalation groups;
//! settled by the store with [`crate::store::settle`]), and waiting for the
//! outcome with a deadline, a withdrawal signal and a poll of the store (so a vote taken on
//! another replica is seen too). While a request is pending its timed events happen here:
//! escalation, reminders and expiry, also for a request whose client went away and that waits
//! on for its reviewers (`approval_window`), and for those a restarted gateway finds pending.

use crate::identity::Identity;
use crate::notify::{Notifier, NotifyEvent};
use crate::store::{
    now_millis, ApprovalRecord, ApprovalState, Millis, NewApproval, Store, StoreError, Vote,
};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
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
    /// Requests whose client went away, watched by a task of their own (which then owns their
    /// escalation and reminders, so a requester re-attaching does not repeat them).
    unattended: Mutex<HashSet<i64>>,
    /// Told of every request that leaves `pending`, by whoever moved it, so each end is
    /// announced exactly once (the vote, the waiter's timer or withdrawal, the dead session).
    notifier: Notifier,
}

impl Approvals {
    pub fn new(store: Arc<dyn Store>, notifier: Notifier) -> Self {
        Approvals {
            store,
            watchers: Mutex::new(HashMap::new()),
            unattended: Mutex::new(HashSet::new()),
            notifier,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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

    /// Waits for the request to leave `pending`: decided by reviewers, expired at its
    /// `expires_at`, or canceled, with the reason it yields, when `cancel` completes. Returns the final record. While
    /// it waits, a pending request is announced as escalated (once, at its `escalate_at`) and
    /// reminded (every `remind_after`). A wait dropped before the request settles (its session
    /// died) withdraws the request, unless it has an approval window: then it stays pending
    /// for its reviewers, watched by a task of its own, and can be claimed once approved.
    pub async fn wait(
        self: &Arc<Self>,
        id: i64,
        cancel: impl Future<Output = String>,
    ) -> Result<ApprovalRecord, StoreError> {
        let record = self
            .store
            .get_approval(id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut abandoned = AbandonGuard {
            approvals: Some(self.clone()),
            keep_pending: record.request.approval_window_ms.is_some(),
            id,
        };
        let timers = !self.is_unattended(id);
        let result = self
            .watch_request(id, &record.request, cancel, timers)
            .await;
        abandoned.approvals = None;
        result
    }

    /// Picks up the requests an earlier run of the gateway left pending (it stopped or was
    /// killed while they waited): no session waits for them any more, so each is watched by a
    /// task of its own until it settles, and its escalation, reminders and expiry happen as if
    /// the gateway had not stopped (an expiry that fell due meanwhile, at once; an escalation
    /// that fell due is announced now unless a delivery of it was recorded). The number of
    /// requests picked up.
    pub async fn watch_pending(self: &Arc<Self>) -> Result<usize, StoreError> {
        let pending = self
            .store
            .list_approvals(Some(ApprovalState::Pending))
            .await?;
        for record in &pending {
            if record.request.escalated_at(now_millis())
                && !self.escalation_announced(record.id).await
            {
                self.notifier.announce_escalation(record);
            }
            let (approvals, id) = (self.clone(), record.id);
            tokio::spawn(async move { approvals.watch_unattended(id).await });
        }
        Ok(pending.len())
    }

    /// Whether a delivery of the request's escalation was recorded. When the record cannot be
    /// read, no: a repeated notice is better than none.
    async fn escalation_announced(&self, id: i64) -> bool {
        match self.store.list_deliveries(id).await {
            Ok(deliveries) => deliveries
                .iter()
                .any(|d| d.delivery.event == NotifyEvent::Escalated.as_str()),
            Err(e) => {
                tracing::warn!(request = id, error = %e, "cannot read the deliveries of a request left pending");
                false
            }
        }
    }

    /// Whether the request's client went away and a task of its own watches it.
    pub fn is_unattended(&self, id: i64) -> bool {
        self.unattended
            .lock()
            .map(|set| set.contains(&id))
            .unwrap_or(false)
    }

    /// Watches an abandoned request, once: a requester that re-attached and went away again
    /// does not start a second watcher.
    async fn watch_unattended(&self, id: i64) {
        let first = self
            .unattended
            .lock()
            .map(|mut set| set.insert(id))
            .unwrap_or(false);
        if !first {
            return;
        }
        self.watch_until_settled(id).await;
        if let Ok(mut set) = self.unattended.lock() {
            set.remove(&id);
        }
    }

    /// Watches a pending request with no one waiting for it (its client went away) until it
    /// settles: its escalation, reminders and expiry still happen.
    async fn watch_until_settled(&self, id: i64) {
        let request = match self.store.get_approval(id).await {
            Ok(Some(record)) if record.state == ApprovalState::Pending => record.request,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(request = id, error = %e, "cannot watch an abandoned request");
                return;
            }
        };
        tracing::info!(
            request = id,
            "the requester went away; the request stays pending for its reviewers"
        );
        if let Err(e) = self
            .watch_request(id, &request, std::future::pending(), true)
            .await
        {
            tracing::error!(request = id, error = %e, "lost track of an abandoned request");
        }
    }

    async fn watch_request(
        &self,
        id: i64,
        request: &NewApproval,
        withdraw: impl Future<Output = String>,
        timers: bool,
    ) -> Result<ApprovalRecord, StoreError> {
        let mut changes = self
            .watchers
            .lock()
            .map_err(|_| StoreError::Backend("approval watchers poisoned".into()))?
            .entry(id)
            .or_insert_with(|| watch::channel(ApprovalState::Pending).0)
            .subscribe();
        // A vote cast before this wait began (the reviewer can be faster than the requester's
        // session) is not a change to a new receiver: look at the store once at the start.
        changes.mark_changed();
        let mut schedule = Schedule::of(request, now_millis());
        if !timers {
            schedule.escalate_at = None;
            schedule.next_reminder = None;
        }
        tokio::pin!(withdraw);
        let mut withdrawn = false;
        let mut watching = true;
        let mut ended_here = false;
        let result = loop {
            let (at, tick) = schedule.next();
            let finish = tokio::select! {
                changed = changes.changed(), if watching => { watching = changed.is_ok(); None },
                _ = tokio::time::sleep(POLL) => None,
                _ = sleep_until_millis(at) => {
                    schedule.passed(tick);
                    match tick {
                        Tick::Expire => Some((ApprovalState::Expired, Cow::Borrowed("no decision before the timeout"))),
                        Tick::Escalate | Tick::Remind => {
                            let pending = self.store.get_approval(id).await?
                                .filter(|r| r.state == ApprovalState::Pending);
                            if let Some(record) = pending {
                                match tick {
                                    Tick::Escalate => self.notifier.announce_escalation(&record),
                                    _ => self.notifier.announce_reminder(&record),
                                }
                            }
                            None
                        }
                    }
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
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.remove(&id);
        }
        if ended_here {
            self.notifier.announce(&result);
        }
        Ok(result)
    }
}

/// The timed events of a pending request, from the times stored with it.
struct Schedule {
    expires_at: Millis,
    escalate_at: Option<Millis>,
    next_reminder: Option<Millis>,
    remind_every: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    Expire,
    Escalate,
    Remind,
}

impl Schedule {
    /// The events still to come after `now` (an escalation already past was announced by
    /// whoever watched the request then).
    fn of(request: &NewApproval, now: Millis) -> Schedule {
        let remind_every = request.remind_after_ms.filter(|every| *every > 0);
        let next_reminder = remind_every.map(|every| {
            let elapsed = now.saturating_sub(request.created_at).max(0);
            request
                .created_at
                .saturating_add((elapsed / every + 1).saturating_mul(every))
        });
        Schedule {
            expires_at: request.expires_at,
            escalate_at: request.escalate_at.filter(|at| *at > now),
            next_reminder: next_reminder.filter(|at| *at < request.expires_at),
            remind_every,
        }
    }

    /// The next event and when it is due; the expiry wins a tie.
    fn next(&self) -> (Millis, Tick) {
        let mut next = (self.expires_at, Tick::Expire);
        for (at, tick) in [
            (self.escalate_at, Tick::Escalate),
            (self.next_reminder, Tick::Remind),
        ] {
            if let Some(at) = at.filter(|at| *at < next.0) {
                next = (at, tick);
            }
        }
        next
    }

    fn passed(&mut self, tick: Tick) {
        match tick {
            Tick::Expire => {}
            Tick::Escalate => self.escalate_at = None,
            Tick::Remind => {
                self.next_reminder = match (self.next_reminder, self.remind_every) {
                    (Some(at), Some(every)) => {
                        Some(at.saturating_add(every)).filter(|at| *at < self.expires_at)
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Sleeps until the wall-clock time `at` (at once when it has passed).
async fn sleep_until_millis(at: Millis) {
    let wait = at.saturating_sub(now_millis()).max(0);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

/// A wait that is dropped before the request settles (its session died). Without an approval
/// window it withdraws the request, so it can never be approved with no one left to run it;
/// with one, the request stays pending and is watched until it settles.
struct AbandonGuard {
    approvals: Option<Arc<Approvals>>,
    keep_pending: bool,
    id: i64,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(approvals) = self.approvals.take() {
            approvals.abandon(self.id, self.keep_pending);
        }
    }
}

impl Approvals {
    /// A request no one waits for any more (its session died): withdrawn, or with
    /// `keep_pending` (an approval window) left pending and watched until it settles.
    pub fn abandon(self: Arc<Self>, id: i64, keep_pending: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let approvals = self;
        runtime.spawn(async move {
            if keep_pending {
                return approvals.watch_unattended(id).await;
            }
            let ended = approvals
                .store
                .finish_approval(
                    id,
                    ApprovalState::Canceled,
                    "the session ended",
                    now_millis(),
                )
                .await;
            approvals.notify(id, ApprovalState::Canceled);
            if let Ok(mut watchers) = approvals.watchers.lock() {
                watchers.remove(&id);
            }
            if let (Ok(true), Ok(Some(record))) = (ended, approvals.store.get_approval(id).await) {
                approvals.notifier.announce(&record);
            }
        });
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
