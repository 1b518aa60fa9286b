//! The record's upkeep while the gateway runs: a signed checkpoint over the chain's head at
//! start and then every `recording.checkpoint_interval` (when the head moved), and with a
//! `recording.retention`, pruning of the history older than it by whole checkpointed segments
//! (see [`crate::store::Store::prune`]), so `airlock audit verify` still starts from a signed
//! anchor.

use crate::checkpoint::{CheckpointKey, Checkpointer};
use crate::config::RecordingConfig;
use crate::gate::Gate;
use crate::store::now_millis;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pruning runs at most this often, however long the retention.
const MAX_PRUNE_PERIOD: Duration = Duration::from_secs(3600);
/// Events removed per prune at most (a whole segment at least); a full batch runs again at the
/// next checkpoint, so a backlog goes in steps that never hold the store's write lock for long.
const PRUNE_BATCH: i64 = 50_000;

/// The running gateway's checkpoint signer, shared with [`sign_at_exit`] so that the last
/// checkpoint need not walk what this run already signed.
pub type SharedSigner = Arc<tokio::sync::Mutex<Option<Checkpointer>>>;

/// Runs for the gateway's lifetime.
pub async fn run(
    gate: Arc<Gate>,
    key: Arc<CheckpointKey>,
    recording: RecordingConfig,
    signer: SharedSigner,
) {
    let interval = recording.checkpoint_interval;
    match Checkpointer::resume(gate.store().as_ref(), key, interval).await {
        Ok(checkpointer) => *signer.lock().await = Some(checkpointer),
        Err(e) => {
            tracing::error!(error = %e, "audit checkpoints and retention are stopped");
            return;
        }
    }
    // A tenth of the retention keeps what is pruned close to its age, without scanning the
    // history more often than checkpoints come.
    let prune_every = recording
        .retention
        .map(|retention| (retention / 10).clamp(interval, MAX_PRUNE_PERIOD.max(interval)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<Instant> = None;
    loop {
        // The first tick is immediate: what an earlier run left unsigned is signed at start.
        ticker.tick().await;
        if let Some(checkpointer) = signer.lock().await.as_mut() {
            sign(&gate, checkpointer).await;
        }
        if let (Some(retention), Some(every)) = (recording.retention, prune_every) {
            if last_prune.is_none_or(|at| at.elapsed() >= every) {
                let more = prune(&gate, retention).await;
                last_prune = (!more).then(Instant::now);
            }
        }
    }
}

/// Copies the journal into the store and signs its head unless a checkpoint covers it.
pub async fn sign(gate: &Gate, checkpointer: &mut Checkpointer) {
    gate.sync_records().await;
    match checkpointer
        .sign_head(gate.store().as_ref(), gate.recorded_head())
        .await
    {
        Ok(Some(event)) => tracing::debug!(event, "signed a checkpoint over the audit chain"),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "no checkpoint signed"),
    }
}

/// Signs what this run recorded (at shutdown), so that an offline `audit verify` finds it
/// covered: with the running signer, or one resumed from the store if it never started.
pub async fn sign_at_exit(
    gate: &Gate,
    signer: &SharedSigner,
    key: Arc<CheckpointKey>,
    interval: Duration,
) {
    let mut running = signer.lock().await;
    if let Some(checkpointer) = running.as_mut() {
        return sign(gate, checkpointer).await;
    }
    match Checkpointer::resume(gate.store().as_ref(), key, interval).await {
        Ok(mut checkpointer) => sign(gate, &mut checkpointer).await,
        Err(e) => tracing::error!(error = %e, "no checkpoint signed"),
    }
}

/// Prunes one batch; whether more may be due.
async fn prune(gate: &Gate, retention: Duration) -> bool {
    let age = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_millis().saturating_sub(age);
    match gate.store().prune(cutoff, PRUNE_BATCH).await {
        Ok(report) => {
            if report.events > 0 || report.sessions > 0 {
                tracing::info!(
                    events = report.events,
                    sessions = report.sessions,
                    pruned_through = report.pruned_through,
                    "pruned history older than the retention"
                );
            }
            // Only a full batch leaves more behind; otherwise wait the period, since finding
            // what may go scans the history.
            report.events >= PRUNE_BATCH.unsigned_abs()
        }
        Err(e) => {
            tracing::error!(error = %e, "could not prune history older than the retention");
            false
        }
    }
}
