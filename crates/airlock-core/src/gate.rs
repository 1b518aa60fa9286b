//! The gate: the one path every adapter takes. It decides an operation (counting the rows it
//! would change first when a `rows_limit` rule needs it), records the decision durably, holds
//! it for review when the policy says so (with its blast-radius preview), or runs it under an
//! earlier approval its requester may still claim, and hands back either a [`Permit`] (the
//! only thing an adapter may forward with) or a [`Denial`].

use crate::approval::{Approvals, Replacement, VoteError};
use crate::checkpoint::CheckpointKey;
use crate::classify::{Classification, ClassifierCache};
use crate::config::{IdentityConfig, ResultsLimit};
use crate::identity::{Identity, IdentityService};
use crate::mask::{MaskCounts, MaskPolicy, Masked, SessionMasker};
use crate::notify::Notifier;
use crate::operation::{Operation, Protocol};
use crate::policy::{decide, decide_with_rows, Action, Decision, PolicySet};
use crate::preview::{BlastRadius, Previewer};
use crate::recorder::{Recorder, RecorderError};
use crate::response::ResponseCapture;
use crate::store::{
    now_millis, ApprovalRecord, ApprovalState, EventDetail, Millis, NewApproval, NewEvent,
    NewPolicyChange, NewSession, OutcomeStatus, PolicyChangeRecord, Store, StoreError,
};
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

/// A session as the core knows it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    pub identity: Identity,
    pub connection: String,
    pub protocol: Protocol,
}

/// Proof that an operation was decided, allowed and recorded. Only the gate makes one.
#[derive(Debug)]
pub struct Permit {
    event: Option<i64>,
    /// Set when a reviewer approved a held operation.
    pub approved_request: Option<i64>,
    /// The statement a reviewer approved in place of the held one: it runs instead.
    pub replacement: Option<String>,
}

impl Permit {
    /// The recorded statement event, for the outcome that follows.
    pub fn event(&self) -> Option<i64> {
        self.event
    }
}

/// What the upstream answered to a permitted operation, as its outcome records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub status: OutcomeStatus,
    pub rows: Option<u64>,
    pub tag: Option<String>,
    pub error: Option<String>,
}

impl Answered {
    pub fn ok(rows: Option<u64>, tag: Option<String>) -> Answered {
        Answered {
            status: OutcomeStatus::Ok,
            rows,
            tag,
            error: None,
        }
    }

    pub fn error(error: String) -> Answered {
        Answered {
            status: OutcomeStatus::Error,
            rows: None,
            tag: None,
            error: Some(error),
        }
    }

    /// Not run: an earlier statement failed (`why` is `None`), or the gateway did not run it.
    pub fn not_run(why: Option<String>) -> Answered {
        Answered {
            status: OutcomeStatus::NotRun,
            rows: None,
            tag: None,
            error: why,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// The policy refuses it.
    Policy,
    /// A reviewer refused it.
    Rejected,
    /// No decision came before the timeout.
    Expired,
    /// The requester withdrew it.
    Canceled,
    /// The decision or its record could not be stored; nothing was forwarded.
    Unavailable,
    /// The session's identity (its token) has expired: the session must end.
    IdentityExpired,
    /// The policies changed and none grants the session's connection to its identity any
    /// more: the session must end.
    AccessRevoked,
}

#[derive(Debug)]
pub struct Denial {
    pub kind: DenialKind,
    pub message: String,
}

impl Denial {
    fn unavailable(e: StoreError) -> Denial {
        tracing::error!(error = %e, "store failure: refusing the operation");
        Denial {
            kind: DenialKind::Unavailable,
            message: "the gateway could not record this operation, so it was not run".into(),
        }
    }
}

pub enum Submission {
    Permitted(Permit),
    Denied(Denial),
    /// Held for review; tell the client `request_id` at once, then await [`Hold::resolve`].
    Held(Hold),
}

/// The longest the gate waits for a blast-radius preview before deciding without it.
const PREVIEW_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Hold {
    pub request_id: i64,
    pub reviewers: Vec<String>,
    pub timeout: std::time::Duration,
    /// The preview reviewers are shown, when one was computed.
    pub preview: Option<BlastRadius>,
    /// Whether the request outlives its client (`approval_window`).
    approval_window: bool,
    /// Set once someone waits for the decision; a hold dropped before that (its client went
    /// away first) is abandoned as a dropped wait is.
    waited: bool,
    event: i64,
    session_id: i64,
    approvals: Arc<Approvals>,
    recorder: Recorder,
    /// The policy version the hold was decided under (see [`Gate::resolve`]).
    policy_version: u64,
}

impl Hold {
    /// Waits for the reviewers' decision; `withdraw` completing withdraws the request.
    pub async fn resolve(self, withdraw: impl Future<Output = ()>) -> Result<Permit, Denial> {
        let withdraw = async {
            withdraw.await;
            "withdrawn by the requester".to_string()
        };
        self.settle(withdraw).await
    }

    /// Waits for the reviewers' decision; `cancel` completing cancels the request with the
    /// reason it yields.
    async fn settle(mut self, cancel: impl Future<Output = String>) -> Result<Permit, Denial> {
        self.waited = true;
        let mut record = self
            .approvals
            .wait(self.request_id, cancel)
            .await
            .map_err(Denial::unavailable)?;
        // An approval runs once: a requester re-sending the statement from another session
        // may have claimed it first.
        if record.state == ApprovalState::Approved {
            match self
                .approvals
                .store()
                .claim_approval(self.request_id, self.session_id, now_millis())
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    record.state = ApprovalState::Canceled;
                    record.reason = Some("already run by another session of the requester".into());
                }
                Err(e) => return Err(Denial::unavailable(e)),
            }
        }
        let decided_by: Vec<String> = record
            .votes
            .iter()
            .map(|v| v.reviewer_name.clone())
            .collect();
        self.recorder
            .append(NewEvent {
                session_id: self.session_id,
                at: now_millis(),
                detail: EventDetail::Resolution {
                    statement_event: self.event,
                    request_id: self.request_id,
                    state: record.state,
                    reason: record.reason.clone(),
                    decided_by: decided_by.clone(),
                    replaced_with: record
                        .replacement
                        .clone()
                        .filter(|_| record.state == ApprovalState::Approved),
                    votes: record.votes.clone(),
                },
            })
            .map_err(Denial::unavailable)?;
        let id = self.request_id;
        let reason = record.reason.as_deref().unwrap_or("no reason given");
        match record.state {
            ApprovalState::Approved => Ok(Permit {
                event: Some(self.event),
                approved_request: Some(id),
                replacement: record.replacement,
            }),
            ApprovalState::Denied => Err(Denial {
                kind: DenialKind::Rejected,
                message: format!(
                    "approval request {id} was denied by {}: {reason}",
                    decided_by
                        .last()
                        .map(String::as_str)
                        .unwrap_or("a reviewer")
                ),
            }),
            ApprovalState::Expired => Err(Denial {
                kind: DenialKind::Expired,
                message: format!(
                    "approval request {id} expired after {} without a decision",
                    humantime::format_duration(self.timeout)
                ),
            }),
            ApprovalState::Canceled | ApprovalState::Pending => Err(Denial {
                kind: DenialKind::Canceled,
                message: format!("approval request {id} was withdrawn ({reason})"),
            }),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.waited {
            self.approvals
                .clone()
                .abandon(self.request_id, self.approval_window);
        }
    }
}

/// Who changes the live policies, for the audit record.
#[derive(Debug, Clone)]
pub struct PolicyAuthor {
    source: &'static str,
    subject: Option<String>,
    name: String,
}

impl PolicyAuthor {
    /// The watched config file (or SIGHUP): no person is known, only the file.
    pub fn config_file() -> PolicyAuthor {
        PolicyAuthor {
            source: "config-file",
            subject: None,
            name: "config file".into(),
        }
    }

    /// An admin through the API.
    pub fn admin(identity: &Identity) -> PolicyAuthor {
        PolicyAuthor {
            source: "api",
            subject: Some(identity.subject.clone()),
            name: identity.name.clone(),
        }
    }
}

pub struct Gate {
    policies: ArcSwap<PolicySet>,
    /// Counts policy changes, so that held statements are judged again when one happens.
    policy_version: watch::Sender<u64>,
    /// Held while a policy change is recorded and swapped in, so that each record's "before"
    /// is exactly what its change replaced.
    policy_changes: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    recorder: Recorder,
    approvals: Arc<Approvals>,
    identity: IdentityService,
    classifier: ClassifierCache,
    notifier: Notifier,
    /// Signs checkpoints over the audit chain; its public half verifies them.
    checkpoint_key: Option<Arc<CheckpointKey>>,
    previewer: Option<Arc<dyn Previewer>>,
    masking: MaskPolicy,
    results: ResultsLimit,
}

impl Gate {
    /// Builds the gate; `journal` is the recorder's journal file (see [`Recorder`]).
    pub async fn open(
        store: Arc<dyn Store>,
        policies: PolicySet,
        identity: &IdentityConfig,
        journal: &std::path::Path,
    ) -> Result<Gate, RecorderError> {
        let identity = IdentityService::new(store.clone(), identity);
        identity.prefetch_keys().await;
        Ok(Gate {
            policies: ArcSwap::from_pointee(policies),
            policy_version: watch::channel(0).0,
            policy_changes: tokio::sync::Mutex::new(()),
            recorder: Recorder::open(store.clone(), journal).await?,
            approvals: Arc::new(Approvals::new(store.clone(), Notifier::disabled())),
            identity,
            classifier: ClassifierCache::new(10_000),
            notifier: Notifier::disabled(),
            checkpoint_key: None,
            previewer: None,
            store,
            masking: MaskPolicy::default(),
            results: ResultsLimit::default(),
        })
    }

    /// The key that signs (and verifies) checkpoints over the audit chain.
    pub fn with_checkpoint_key(mut self, key: Arc<CheckpointKey>) -> Gate {
        self.checkpoint_key = Some(key);
        self
    }

    pub fn checkpoint_key(&self) -> Option<&CheckpointKey> {
        self.checkpoint_key.as_deref()
    }

    /// Computes blast-radius previews with `previewer` (none by default): for held operations,
    /// and for operations a `rows_limit` rule needs a row count of.
    pub fn with_previewer(mut self, previewer: Arc<dyn Previewer>) -> Gate {
        self.previewer = Some(previewer);
        self
    }

    /// Masks responses by `masking` and records them within `results` (neither by default).
    pub fn with_masking(mut self, masking: MaskPolicy, results: ResultsLimit) -> Gate {
        self.masking = masking;
        self.results = results;
        self
    }

    /// The masking of a session's responses; `Ok(None)` when no rule applies to it. An error
    /// means the session cannot be masked, so it must not be served.
    pub fn masker(&self, session: &Session) -> Result<Option<Arc<SessionMasker>>, String> {
        self.masking
            .for_session(&session.connection, &session.identity.groups)
            .map_err(|e| e.to_string())
    }

    /// A fresh capture of one statement's response, within the configured limits.
    pub fn response_capture(&self) -> ResponseCapture {
        ResponseCapture::new(self.results)
    }

    /// Whether responses are kept in records at all (rows, not only counts).
    pub fn keeps_responses(&self) -> bool {
        self.results.keeps_rows()
    }

    /// Sends approval request notifications through `notifier` (none by default). Call it on a
    /// gate just opened, before any request exists: the approvals are rebuilt around it.
    pub fn with_notifier(mut self, notifier: Notifier) -> Gate {
        self.approvals = Arc::new(Approvals::new(self.store.clone(), notifier.clone()));
        self.notifier = notifier;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn identity(&self) -> &IdentityService {
        &self.identity
    }

    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// Watches the requests left pending by an earlier run until they settle (see
    /// [`Approvals::watch_pending`]); call once the notifier is in place.
    pub async fn watch_pending_approvals(&self) -> Result<usize, StoreError> {
        self.approvals.watch_pending().await
    }

    pub fn classifier(&self) -> &ClassifierCache {
        &self.classifier
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Replaces the policy snapshot; every later decision uses the new one. Private: a change
    /// goes through the audited path that calls this.
    fn replace_policies(&self, policies: PolicySet) {
        self.policies.store(Arc::new(policies));
        self.policy_version.send_modify(|version| *version += 1);
    }

    /// [`Gate::resolve`], or until `gone` (the client went away). A request with an approval
    /// window then stays pending for its reviewers and can be claimed once approved by its
    /// requester re-sending it (`None` is returned: nothing is left to answer); without a
    /// window, `gone` withdraws it as `withdraw` does.
    pub async fn resolve_or_abandon(
        &self,
        session: &Session,
        op: &Operation,
        hold: Hold,
        withdraw: impl Future<Output = ()>,
        gone: impl Future<Output = ()>,
    ) -> Option<Result<Permit, Denial>> {
        if !hold.approval_window {
            let either = async {
                tokio::select! {
                    _ = withdraw => {}
                    _ = gone => {}
                }
            };
            return Some(self.resolve(session, op, hold, either).await);
        }
        tokio::select! {
            verdict = self.resolve(session, op, hold, withdraw) => Some(verdict),
            _ = gone => None,
        }
    }

    /// Waits for the outcome of a held operation, judging it again each time the policies
    /// change: when the new policies would deny it, the request is canceled and the operation
    /// refused at once; when they would allow it, the request is canceled and the operation
    /// runs; while they still hold it, the same request keeps waiting for its reviewers.
    /// `withdraw` completing withdraws the request, as with [`Hold::resolve`].
    pub async fn resolve(
        &self,
        session: &Session,
        op: &Operation,
        hold: Hold,
        withdraw: impl Future<Output = ()>,
    ) -> Result<Permit, Denial> {
        let request_id = hold.request_id;
        let event = hold.event;
        let mut versions = self.policy_version.subscribe();
        if *versions.borrow() != hold.policy_version {
            // Changed since the decision that held it: judge it again at once.
            versions.mark_changed();
        }
        let rejudged = std::sync::Mutex::new(None::<Decision>);
        let cancel = async {
            tokio::select! {
                _ = withdraw => "withdrawn by the requester".to_string(),
                decision = self.rejudge_on_change(session, op, &mut versions) => {
                    let reason = format!(
                        "the policies changed and now {} it ({})",
                        match decision.action { Action::Allow => "allow", _ => "deny" },
                        decision.rule.as_deref().unwrap_or("no rule")
                    );
                    if let Ok(mut slot) = rejudged.lock() {
                        *slot = Some(decision);
                    }
                    reason
                }
            }
        };
        let outcome = hold.settle(cancel).await;
        let decision = rejudged.lock().ok().and_then(|mut slot| slot.take());
        match (outcome, decision) {
            (Err(denial), Some(decision)) if denial.kind == DenialKind::Canceled => {
                match decision.action {
                    Action::Allow => Ok(Permit {
                        event: Some(event),
                        approved_request: None,
                        replacement: None,
                    }),
                    Action::Deny { reason } => Err(Denial {
                        kind: DenialKind::Policy,
                        message: format!(
                            "approval request {request_id} was canceled because the policies \
                             changed: {reason}"
                        ),
                    }),
                    Action::RequireApproval(_) => Err(denial),
                }
            }
            (outcome, _) => outcome,
        }
    }

    /// Completes with the new decision on `op` once a policy change no longer holds it.
    async fn rejudge_on_change(
        &self,
        session: &Session,
        op: &Operation,
        versions: &mut watch::Receiver<u64>,
    ) -> Decision {
        loop {
            if versions.changed().await.is_err() {
                return std::future::pending().await;
            }
            let policies = self.policies.load();
            let decision = if policies.grants_connection(&session.identity, &session.connection) {
                decide(&policies, &session.identity, op)
            } else {
                Decision {
                    action: Action::Deny {
                        reason: format!(
                            "no policy lets {} use connection `{}` any more",
                            session.identity.name, session.connection
                        ),
                    },
                    policy: None,
                    rule: None,
                    record: true,
                    needs_rows: false,
                }
            };
            if !matches!(decision.action, Action::RequireApproval(_)) {
                tracing::info!(
                    session = session.id,
                    action = decision.action.name(),
                    "a held statement was judged again under changed policies"
                );
                return decision;
            }
        }
    }

    /// Records a policy change, then makes it live. The record comes first: a change that
    /// cannot be audited does not happen. Policies identical to the live ones change nothing
    /// and are not recorded (`None`).
    pub async fn change_policies(
        &self,
        new: PolicySet,
        author: PolicyAuthor,
    ) -> Result<Option<PolicyChangeRecord>, StoreError> {
        let _one_at_a_time = self.policy_changes.lock().await;
        let old = self.policies.load_full();
        let (old_policies, new_policies) = (old.to_yaml(), new.to_yaml());
        if old_policies == new_policies {
            return Ok(None);
        }
        let change = NewPolicyChange {
            at: now_millis(),
            source: author.source.into(),
            changed_by_subject: author.subject,
            changed_by: author.name,
            summary: old.change_summary(&new),
            old_policies,
            new_policies,
        };
        let id = self.store.record_policy_change(&change).await?;
        self.replace_policies(new);
        tracing::info!(
            change = id,
            source = %change.source,
            by = %change.changed_by,
            summary = %change.summary,
            "the policies changed; every later statement is judged by the new ones"
        );
        Ok(Some(PolicyChangeRecord { id, change }))
    }

    pub async fn open_session(
        &self,
        identity: Identity,
        connection: &str,
        protocol: Protocol,
        client_addr: &str,
    ) -> Result<Session, StoreError> {
        let id = self
            .store
            .open_session(&NewSession {
                protocol: protocol.as_str().into(),
                connection: connection.into(),
                subject: identity.subject.clone(),
                display_name: identity.name.clone(),
                groups: identity.groups.clone(),
                auth_method: identity.method.as_str().into(),
                client_addr: client_addr.into(),
                started_at: now_millis(),
            })
            .await?;
        Ok(Session {
            id,
            identity,
            connection: connection.into(),
            protocol,
        })
    }

    pub async fn close_session(&self, session: &Session, reason: &str) {
        if let Err(e) = self
            .store
            .close_session(session.id, now_millis(), reason)
            .await
        {
            tracing::error!(session = session.id, error = %e, "could not record the session end");
        }
    }

    /// Decides and records an operation. Nothing here forwards anything.
    pub async fn submit(&self, session: &Session, op: &Operation) -> Submission {
        // A connection must not outlive the identity it was opened with.
        if let Some(expired_at) = session.identity.expires_at.filter(|at| *at <= now_millis()) {
            tracing::info!(
                session = session.id,
                subject = %session.identity.subject,
                expired_at,
                "the session's identity has expired; ending the session"
            );
            return Submission::Denied(Denial {
                kind: DenialKind::IdentityExpired,
                message: "your identity token has expired; reconnect with a fresh token".into(),
            });
        }
        // Read before the policies: a change between the two is then judged again, never missed.
        let version = *self.policy_version.borrow();
        let policies = self.policies.load_full();
        // Policies change while sessions live: one whose identity lost every grant of its
        // connection ends, rather than living on to be refused statement by statement.
        if !policies.grants_connection(&session.identity, &session.connection) {
            tracing::info!(
                session = session.id,
                subject = %session.identity.subject,
                connection = %session.connection,
                "no policy grants the session's connection any more; ending the session"
            );
            return Submission::Denied(Denial {
                kind: DenialKind::AccessRevoked,
                message: format!(
                    "access revoked: no policy lets {} use connection `{}` any more",
                    session.identity.name, session.connection
                ),
            });
        }
        let mut decision = decide(&policies, &session.identity, op);
        let mut preview = None;
        if decision.needs_rows && !matches!(decision.action, Action::Deny { .. }) {
            preview = self.preview(op).await;
            let rows = preview.as_ref().and_then(BlastRadius::exact_rows);
            decision = decide_with_rows(&policies, &session.identity, op, rows);
        }
        if let Action::RequireApproval(_) = decision.action {
            if let Some(resumed) = self.resume(session, op, &decision).await {
                return resumed;
            }
            if preview.is_none() {
                preview = self.preview(op).await;
            }
        }
        let kinds = policies.kind_names(&op.classification);
        self.apply(session, op, decision, kinds, version, preview)
            .await
    }

    /// The blast-radius preview of `op`, if a previewer knows its connection; bounded in time,
    /// and never a reason to refuse.
    async fn preview(&self, op: &Operation) -> Option<BlastRadius> {
        let previewer = self.previewer.as_ref()?;
        match tokio::time::timeout(PREVIEW_LIMIT, previewer.preview(op)).await {
            Ok(preview) => preview,
            Err(_) => Some(BlastRadius::unavailable(
                &op.classification.kind_names().join(", "),
                format!(
                    "the preview took longer than {}",
                    humantime::format_duration(PREVIEW_LIMIT)
                ),
            )),
        }
    }

    /// Resumes an earlier request of the same identity for the identical operation on the same
    /// connection, whose first client went away: approved and within its approval window, the
    /// operation runs (claimed atomically, so once); still pending, the re-send waits on that
    /// request instead of opening another one.
    async fn resume(
        &self,
        session: &Session,
        op: &Operation,
        decision: &Decision,
    ) -> Option<Submission> {
        let now = now_millis();
        let candidates = match self
            .store
            .resumable_approvals(&session.identity.subject, &op.connection, &op.text, now)
            .await
        {
            Ok(candidates) => candidates,
            Err(e) => return Some(Submission::Denied(Denial::unavailable(e))),
        };
        for record in candidates
            .into_iter()
            .filter(|r| r.request.params == op.params)
        {
            if record.state == ApprovalState::Pending {
                if !self.approvals.is_unattended(record.id) {
                    // Its own client still waits for it.
                    continue;
                }
                return Some(self.reattach(session, op, decision, record));
            }
            match self.store.claim_approval(record.id, session.id, now).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Some(Submission::Denied(Denial::unavailable(e))),
            }
            tracing::info!(
                session = session.id,
                request = record.id,
                "the requester re-sent an approved operation within its approval window; it runs"
            );
            let reason = format!(
                "approved earlier as request {} (session {}); run within its approval window",
                record.id, record.request.session_id
            );
            let event = self.record_resumed(session, op, decision, record.id, reason, now);
            return Some(match event {
                Ok(event) => Submission::Permitted(Permit {
                    event: Some(event),
                    approved_request: Some(record.id),
                    replacement: record.replacement,
                }),
                Err(e) => Submission::Denied(Denial::unavailable(e)),
            });
        }
        None
    }

    /// Bound parameters as the record keeps them: masked by what the session's detectors find
    /// (a parameter belongs to no result column, so column rules do not apply to it). The
    /// approval request keeps them as sent, for its reviewers and for resuming it.
    fn recorded_params(&self, session: &Session, op: &Operation) -> Vec<Option<String>> {
        if op.params.is_empty() || self.masking.is_empty() {
            return op.params.clone();
        }
        let masker = match self.masker(session) {
            Ok(Some(masker)) => masker,
            Ok(None) => return op.params.clone(),
            // The session is refused service in this case; keep no value at all.
            Err(_) => return vec![None; op.params.len()],
        };
        let mut counts = MaskCounts::default();
        op.params
            .iter()
            .map(|param| {
                let value = param.as_ref()?;
                match masker.scan(value.as_bytes(), &mut counts) {
                    Masked::Unchanged => Some(value.clone()),
                    Masked::Null => None,
                    Masked::Text(masked) => Some(masked),
                }
            })
            .collect()
    }

    /// Records a re-sent operation that `resume` ties to the earlier request `request_id`.
    fn record_resumed(
        &self,
        session: &Session,
        op: &Operation,
        decision: &Decision,
        request_id: i64,
        reason: String,
        at: Millis,
    ) -> Result<i64, StoreError> {
        self.recorder.append(NewEvent {
            session_id: session.id,
            at,
            detail: EventDetail::Statement {
                operation: op.text.to_string(),
                params: self.recorded_params(session, op),
                statement_kinds: op.classification.kind_names(),
                action: decision.action.name().into(),
                policy: decision.policy.clone(),
                rule: decision.rule.clone(),
                reason: Some(reason),
                request_id: Some(request_id),
            },
        })
    }

    /// Holds a re-sent operation on its earlier pending request.
    fn reattach(
        &self,
        session: &Session,
        op: &Operation,
        decision: &Decision,
        record: ApprovalRecord,
    ) -> Submission {
        let now = now_millis();
        tracing::info!(
            session = session.id,
            request = record.id,
            "the requester re-sent a pending operation; it waits on its earlier request"
        );
        let reason = format!(
            "waits on request {}, opened earlier by session {}",
            record.id, record.request.session_id
        );
        let event = self.record_resumed(session, op, decision, record.id, reason, now);
        let event = match event {
            Ok(event) => event,
            Err(e) => return Submission::Denied(Denial::unavailable(e)),
        };
        let left = record.request.expires_at.saturating_sub(now).max(0);
        Submission::Held(Hold {
            request_id: record.id,
            reviewers: record.request.reviewers,
            timeout: std::time::Duration::from_millis(left as u64),
            preview: record.request.preview,
            approval_window: true,
            waited: false,
            event,
            session_id: session.id,
            approvals: self.approvals.clone(),
            recorder: self.recorder.clone(),
            policy_version: *self.policy_version.borrow(),
        })
    }

    async fn apply(
        &self,
        session: &Session,
        op: &Operation,
        decision: Decision,
        kinds: Vec<String>,
        policy_version: u64,
        preview: Option<BlastRadius>,
    ) -> Submission {
        let Decision {
            action,
            policy,
            rule,
            record,
            ..
        } = decision;
        // Takes what it records by value: the event is the last use of each on the common paths.
        let statement = |kinds: Vec<String>,
                         policy: Option<String>,
                         rule: Option<String>,
                         request_id: Option<i64>,
                         reason: Option<String>| NewEvent {
            session_id: session.id,
            at: now_millis(),
            detail: EventDetail::Statement {
                operation: op.text.to_string(),
                params: self.recorded_params(session, op),
                statement_kinds: kinds,
                action: action.name().into(),
                policy,
                rule,
                reason,
                request_id,
            },
        };
        match &action {
            Action::Allow => {
                if !record {
                    return Submission::Permitted(Permit {
                        event: None,
                        approved_request: None,
                        replacement: None,
                    });
                }
                match self
                    .recorder
                    .append(statement(kinds, policy, rule, None, None))
                {
                    Ok(event) => Submission::Permitted(Permit {
                        event: Some(event),
                        approved_request: None,
                        replacement: None,
                    }),
                    Err(e) => Submission::Denied(Denial::unavailable(e)),
                }
            }
            Action::Deny { reason } => {
                let event = statement(kinds, policy, rule, None, Some(reason.clone()));
                if let Err(e) = self.recorder.append(event) {
                    tracing::error!(session = session.id, error = %e, "could not record a denial");
                }
                Submission::Denied(Denial {
                    kind: DenialKind::Policy,
                    message: reason.clone(),
                })
            }
            Action::RequireApproval(spec) => {
                let now = now_millis();
                let request = NewApproval {
                    session_id: session.id,
                    requester_subject: session.identity.subject.clone(),
                    requester_name: session.identity.name.clone(),
                    requester_groups: session.identity.groups.clone(),
                    connection: op.connection.clone(),
                    protocol: session.protocol.as_str().into(),
                    operation: op.text.to_string(),
                    params: op.params.clone(),
                    statement_kinds: kinds.clone(),
                    policy: policy.clone().unwrap_or_default(),
                    rule: rule.clone().unwrap_or_default(),
                    reviewers: spec.reviewers.clone(),
                    approvals_needed: spec.approvals,
                    created_at: now,
                    expires_at: now.saturating_add(spec.timeout.as_millis() as i64),
                    all_groups_must_approve: spec.all_groups_must_approve,
                    escalate_at: spec
                        .escalate_after
                        .map(|after| now.saturating_add(after.as_millis() as i64)),
                    escalate_to: spec.escalate_to.clone(),
                    preview: preview.clone(),
                    approval_window_ms: spec
                        .approval_window
                        .map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX)),
                    remind_after_ms: spec
                        .remind_after
                        .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX)),
                };
                let request_id = match self.approvals.open(&request).await {
                    Ok(id) => id,
                    Err(e) => return Submission::Denied(Denial::unavailable(e)),
                };
                let event = statement(kinds, policy, rule, Some(request_id), None);
                let event = match self.recorder.append(event) {
                    Ok(event) => event,
                    Err(e) => {
                        let _ = self
                            .store
                            .finish_approval(
                                request_id,
                                ApprovalState::Canceled,
                                "could not be recorded",
                                now_millis(),
                            )
                            .await;
                        return Submission::Denied(Denial::unavailable(e));
                    }
                };
                // Announced only once the request and its statement are both stored.
                self.notifier.announce(&ApprovalRecord {
                    id: request_id,
                    request,
                    state: ApprovalState::Pending,
                    decided_at: None,
                    reason: None,
                    votes: Vec::new(),
                    replacement: None,
                    claimed_at: None,
                    claimed_by_session: None,
                });
                Submission::Held(Hold {
                    request_id,
                    reviewers: spec.reviewers.clone(),
                    timeout: spec.timeout,
                    preview,
                    approval_window: spec.approval_window.is_some(),
                    waited: false,
                    event,
                    session_id: session.id,
                    approvals: self.approvals.clone(),
                    recorder: self.recorder.clone(),
                    policy_version,
                })
            }
        }
    }

    /// A reviewer's vote, optionally approving `replace_with` in place of the requested
    /// statement. The replacement is classified and may not be more dangerous than the
    /// request: its statement kinds must be among the request's, unless the policies would
    /// allow it outright to the reviewer on the request's connection.
    pub async fn vote(
        &self,
        reviewer: &Identity,
        id: i64,
        approve: bool,
        reason: Option<String>,
        replace_with: Option<String>,
    ) -> Result<ApprovalRecord, VoteError> {
        let Some(sql) = replace_with else {
            return self
                .approvals
                .vote(reviewer, id, approve, reason, None)
                .await;
        };
        // The wire protocol ends a statement at a NUL byte: what would run is not what was judged.
        if sql.contains('\0') {
            return Err(VoteError::InvalidReplacement(
                "it contains a NUL character".into(),
            ));
        }
        let judge = |request: &NewApproval| -> Result<(), VoteError> {
            // Judged as the request's server will read it: a MySQL session runs it on MySQL,
            // where executable comments are code and quoting differs.
            let classification = if request.protocol == Protocol::Mysql.as_str() {
                Arc::new(crate::classify_mysql::classify_mysql(&sql))
            } else {
                self.classifier.classify(&sql)
            };
            let statements = match classification.as_ref() {
                Classification::Parsed(statements) if !statements.is_empty() => statements,
                Classification::Parsed(_) => {
                    return Err(VoteError::InvalidReplacement(
                        "it holds no statement".into(),
                    ))
                }
                Classification::Unparseable(e) => {
                    return Err(VoteError::InvalidReplacement(format!(
                        "it does not parse: {e}"
                    )))
                }
            };
            if let Some(reason) = statements.iter().find_map(|s| s.forbidden.clone()) {
                return Err(VoteError::ReplacementRefused(reason));
            }
            let op = Operation {
                connection: request.connection.clone(),
                text: Arc::from(sql.as_str()),
                params: Vec::new(),
                classification: classification.clone(),
            };
            let policies = self.policies.load();
            if decide(&policies, reviewer, &op).action == Action::Allow {
                return Ok(());
            }
            let extra: Vec<String> = policies
                .kind_names(&classification)
                .into_iter()
                .filter(|k| !request.statement_kinds.contains(k))
                .collect();
            if extra.is_empty() {
                Ok(())
            } else {
                Err(VoteError::ReplacementRefused(format!(
                    "it runs {} where the request runs only {}, and the policies do not allow \
                     that to {} on connection `{}`",
                    extra.join(", "),
                    request.statement_kinds.join(", "),
                    reviewer.name,
                    request.connection
                )))
            }
        };
        let replacement = Replacement {
            sql: sql.clone(),
            judge: &judge,
        };
        self.approvals
            .vote(reviewer, id, approve, reason, Some(replacement))
            .await
    }

    /// Waits until every record so far is in the store, where the API reads it.
    pub async fn sync_records(&self) {
        self.recorder.sync().await;
    }

    /// The last event this run recorded into the store, with its hash as chained in memory.
    pub fn recorded_head(&self) -> Option<(i64, String)> {
        self.recorder.copied_head()
    }

    /// Records what the upstream answered to permitted statement `event` and, from `capture`,
    /// the (masked) response the agent received: its kept rows as a response event, and the
    /// masked counts on the outcome. A failure is only logged, since the statement has run.
    pub fn record_outcome(
        &self,
        session: &Session,
        event: i64,
        answered: Answered,
        capture: Option<ResponseCapture>,
    ) {
        let (response, masked) = match capture {
            Some(capture) => capture.into_event(event),
            None => (None, MaskCounts::default()),
        };
        let at = now_millis();
        if let Some(detail) = response {
            self.recorder.append_deferred(NewEvent {
                session_id: session.id,
                at,
                detail,
            });
        }
        self.recorder.append_deferred(NewEvent {
            session_id: session.id,
            at,
            detail: EventDetail::Outcome {
                statement_event: event,
                status: answered.status,
                rows: answered.rows,
                tag: answered.tag,
                error: answered.error,
                masked: masked.0,
            },
        });
    }
}
