//! The recorder: the durable, append-only record of what happens in sessions.
//!
//! An event is appended by the session itself to a journal file — one JSON line carrying its
//! id, one `write` to the file under a short lock, no thread hop — before the statement it
//! describes is forwarded. A background task copies the journal into the store in batches
//! (where the API reads it) and trims the journal once everything in it is copied. The events
//! written are handed to that task in memory as well, so it reads the journal back only after
//! a failed copy, when too many piled up, or at start: then whatever the journal holds beyond
//! the store's copy is copied first, and a torn last line (a crash in the middle of a write) is
//! cut off.
//!
//! Each line also carries the event's links in the tamper-evident chain (`prev_hash`, `hash`;
//! see [`crate::chain`]), computed under the same lock that orders the ids, so the chain follows
//! the id order. On start the chain resumes from the stored head.
//!
//! A line is `{"id":…,"session_id":…,"at":…,"prev_hash":…,"hash":…,"kind":…,"detail":{…}}`;
//! the copier takes the detail's text as it stands (the text the chain hashed) and never
//! decodes it. Lines of the earlier layout (the detail's fields inline) are still read.
//!
//! Durability is that of the operating system's page cache: a record survives a crash of the
//! gateway the moment `append` returns. What follows an operation already answered (its
//! outcome, its response) is appended with [`Recorder::append_deferred`]: chained at once, but
//! written with the next `append`'s line, or by the copier within [`LINGER`] — one `write` per
//! statement instead of two. A crash in that window loses only such trailing records, never a
//! statement, and never leaves a gap in the chain (pending lines precede every later line).

use crate::chain;
use crate::store::{EventRecord, JournalEvent, NewEvent, Store, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long the copier waits after being woken, so one store transaction takes many events
/// (each copy costs about a tenth less CPU per event at 100 ms than at 10 ms). A reader that
/// needs the copy ([`Recorder::sync`]) cuts the wait short.
const LINGER: Duration = Duration::from_millis(100);
/// Once copied, a journal larger than this is emptied.
const TRIM_AT: u64 = 8 * 1024 * 1024;
const READ_CHUNK: u64 = 4 * 1024 * 1024;
/// The most events handed to the copier in memory (about 7 MiB; four times a busy linger's
/// worth); beyond, it reads them from the journal. A copier starved of CPU falls that far behind,
/// and what it held would stay in the allocator's keeping after the catch-up.
const MAX_QUEUED: usize = 16_384;
/// How long a reader waits for the copy to catch up before reading what the store has.
const SYNC_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("journal {path}: {reason}")]
    Journal { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Writer {
    file: File,
    next_id: i64,
    len: u64,
    /// The hash of the last appended event, which the next one chains from.
    last_hash: Arc<str>,
    /// The line being written, kept to reuse its allocation.
    line: String,
    /// Deferred lines, chained but not yet written; they go out ahead of the next line.
    pending: String,
    /// The events of `pending`, in order.
    pending_events: Vec<JournalEvent>,
    /// The events written since the copier last took them: exactly the journal's lines from
    /// the copier's offset to `len`, handed over in memory so the copy reads nothing back.
    /// Emptied and left off (`unqueued`) when it grows past [`MAX_QUEUED`]; the copier then
    /// reads that stretch from the file.
    queued: Vec<JournalEvent>,
    unqueued: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.line.clear();
            if let Err(e) = self.write_out(None) {
                tracing::error!(error = %e, "outcomes could not be written at exit");
            }
        }
    }
}

impl Writer {
    /// Writes the deferred lines followed by `self.line` (which may be empty, `event` being
    /// its event); on failure nothing is left in the file and the deferred lines stay pending.
    fn write_out(&mut self, event: Option<JournalEvent>) -> std::io::Result<()> {
        let written = if self.pending.is_empty() {
            self.file.write_all(self.line.as_bytes())
        } else {
            let kept = self.pending.len();
            self.pending.push_str(&self.line);
            let written = self.file.write_all(self.pending.as_bytes());
            if written.is_ok() {
                self.line.clear();
                std::mem::swap(&mut self.line, &mut self.pending);
            } else {
                self.pending.truncate(kept);
            }
            written
        };
        match written {
            Ok(()) => {
                self.len += self.line.len() as u64;
                if let Some(event) = &event {
                    self.advance(event);
                }
                self.queue(event);
                Ok(())
            }
            Err(e) => {
                // Leave no torn line behind.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Hands the lines just written — the deferred ones, then `event`'s — to the copier.
    /// Moved, not reallocated: both vectors keep their room for the next ones.
    fn queue(&mut self, event: Option<JournalEvent>) {
        let written = self.pending_events.len() + usize::from(event.is_some());
        if self.unqueued || self.queued.len() + written > MAX_QUEUED {
            self.queued = Vec::new();
            self.pending_events.clear();
            self.unqueued = true;
            return;
        }
        self.queued.append(&mut self.pending_events);
        self.queued.extend(event);
    }

    /// Chains `event` and formats its line into `self.line`; returns the event as the store
    /// copies it, which becomes the chain's head once its line is kept.
    fn format(&mut self, event: &NewEvent, detail: String) -> JournalEvent {
        let id = self.next_id;
        let digest = chain::event_digest(&self.last_hash, id, event.session_id, event.at, &detail);
        let hash: Arc<str> = Arc::from(digest.as_str());
        let kind = event.detail.kind();
        let mut number = itoa::Buffer::new();
        let line = &mut self.line;
        line.clear();
        line.push_str("{\"id\":");
        line.push_str(number.format(id));
        line.push_str(",\"session_id\":");
        line.push_str(number.format(event.session_id));
        line.push_str(",\"at\":");
        line.push_str(number.format(event.at));
        line.push_str(",\"prev_hash\":\"");
        line.push_str(&self.last_hash);
        line.push_str("\",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\",\"kind\":\"");
        line.push_str(kind);
        line.push_str("\",\"detail\":");
        line.push_str(&detail);
        line.push_str("}\n");
        JournalEvent {
            id,
            session_id: event.session_id,
            at: event.at,
            kind: Cow::Borrowed(kind),
            detail,
            prev_hash: Some(self.last_hash.clone()),
            hash: Some(hash),
        }
    }

    /// The event whose line was just kept (or deferred) is the chain's new head.
    fn advance(&mut self, event: &JournalEvent) {
        self.next_id = event.id + 1;
        if let Some(hash) = &event.hash {
            self.last_hash.clone_from(hash);
        }
    }
}

/// The last event copied into the store: its id, and its hash as chained here (`None` until
/// this run copies one).
#[derive(Clone)]
struct Copied {
    id: i64,
    hash: Option<Arc<str>>,
}

struct Inner {
    writer: Mutex<Writer>,
    wake: Notify,
    /// A reader waits for the copy: copy now.
    hurry: Notify,
    /// The last event copied into the store.
    copied: watch::Sender<Copied>,
}

#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// Opens (or creates, mode 0600) the journal, copies what the store lacks, and starts the
    /// copier.
    pub async fn open(store: Arc<dyn Store>, path: &Path) -> Result<Recorder, RecorderError> {
        let fail = |reason: String| RecorderError::Journal {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(e.to_string()))?
        };
        let (stored_offset, stored_max) = store.journal_state().await?;
        let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        // A journal shorter than the copy point was trimmed after the copy: start over (the
        // copy skips events already stored).
        let start = if stored_offset > len {
            0
        } else {
            stored_offset
        };
        let (events, complete_to) =
            read_events(&file, start, len, &mut Vec::new()).map_err(fail)?;
        if complete_to < len {
            tracing::warn!(
                bytes = len - complete_to,
                "cutting a torn record off the end of the journal"
            );
            file.set_len(complete_to).map_err(|e| fail(e.to_string()))?;
        }
        let journal_max = events.last().map_or(0, |e| e.id);
        store.ingest_events(events, complete_to).await?;
        let max_id = stored_max.max(journal_max);
        // Everything in the journal is in the store now, so its last event is the chain's head.
        let last_hash: Arc<str> = store
            .chain_head()
            .await?
            .map_or_else(|| Arc::from(chain::GENESIS), |(_, hash)| Arc::from(hash));
        // The head in the log is an anchor outside the store: a later rewrite of the events
        // before it cannot reproduce it.
        tracing::info!(last_event = max_id, head = %last_hash, "audit chain resumed");
        let inner = Arc::new(Inner {
            writer: Mutex::new(Writer {
                file,
                next_id: max_id + 1,
                len: complete_to,
                last_hash,
                line: String::new(),
                pending: String::new(),
                pending_events: Vec::new(),
                queued: Vec::new(),
                unqueued: false,
            }),
            wake: Notify::new(),
            hurry: Notify::new(),
            copied: watch::channel(Copied {
                id: max_id,
                hash: None,
            })
            .0,
        });
        tokio::spawn(copier(inner.clone(), store, complete_to));
        Ok(Recorder { inner })
    }

    /// Appends an event to the journal; when this returns `Ok`, the event is recorded.
    pub fn append(&self, event: NewEvent) -> Result<i64, StoreError> {
        // The detail goes into the line exactly as the chain hashes it and the store keeps it.
        let detail = encode_detail(&event)?;
        let id = {
            let mut writer = self.lock_writer()?;
            let journaled = writer.format(&event, detail);
            let id = journaled.id;
            if let Err(e) = writer.write_out(Some(journaled)) {
                // The caller refuses the operation.
                return Err(StoreError::Backend(format!(
                    "cannot write the journal: {e}"
                )));
            }
            id
        };
        self.inner.wake.notify_one();
        Ok(id)
    }

    /// Appends an event that follows an operation already answered (outcomes, responses):
    /// chained now, written ahead of the next appended line or by the copier within
    /// [`LINGER`]. Its caller cannot act on a failure, so failures are logged.
    pub fn append_deferred(&self, event: NewEvent) {
        let appended = encode_detail(&event).and_then(|detail| {
            let mut guard = self.lock_writer()?;
            let writer = &mut *guard;
            let journaled = writer.format(&event, detail);
            writer.pending.push_str(&writer.line);
            writer.advance(&journaled);
            writer.pending_events.push(journaled);
            Ok(())
        });
        match appended {
            Ok(()) => self.inner.wake.notify_one(),
            Err(e) => tracing::error!(error = %e, "an outcome could not be recorded"),
        }
    }

    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, Writer>, StoreError> {
        self.inner
            .writer
            .lock()
            .map_err(|_| StoreError::Backend("journal lock poisoned".into()))
    }

    /// The id and hash of the last event this run copied into the store, as chained here
    /// (not as read back from the store).
    pub fn copied_head(&self) -> Option<(i64, String)> {
        let copied = self.inner.copied.borrow();
        copied
            .hash
            .as_deref()
            .map(|hash| (copied.id, hash.to_owned()))
    }

    /// Waits (a few seconds at most) until every event appended so far is in the store.
    pub async fn sync(&self) {
        let target = match self.inner.writer.lock() {
            Ok(writer) => writer.next_id - 1,
            Err(_) => return,
        };
        let mut copied = self.inner.copied.subscribe();
        if copied.borrow().id >= target {
            return;
        }
        self.inner.wake.notify_one();
        self.inner.hurry.notify_one();
        // A store that cannot take the copy (a full disk) must not hang every reader: after a
        // while they read what is there; the events stay in the journal until the copy succeeds.
        let caught_up = tokio::time::timeout(SYNC_PATIENCE, copied.wait_for(|c| c.id >= target));
        if caught_up.await.is_err() {
            tracing::warn!("the store is behind the journal; reading what it holds so far");
        }
    }
}

fn encode_detail(event: &NewEvent) -> Result<String, StoreError> {
    chain::canonical_detail(&event.detail)
        .map_err(|e| StoreError::Backend(format!("cannot encode an event: {e}")))
}

/// Reads the complete lines in `[from, to)`; returns them and where the last complete line
/// ends. `buf` is scratch space, kept by the caller so that its pages are reused.
fn read_events(
    file: &File,
    from: u64,
    to: u64,
    buf: &mut Vec<u8>,
) -> Result<(Vec<JournalEvent>, u64), String> {
    let mut events = Vec::new();
    let mut at = from;
    // `buf` holds the bytes from `pending_from` that are not yet a complete line.
    buf.clear();
    let mut pending_from = from;
    while at < to {
        let n = (to - at).min(READ_CHUNK) as usize;
        let filled = buf.len();
        buf.resize(filled + n, 0);
        file.read_exact_at(&mut buf[filled..], at)
            .map_err(|e| e.to_string())?;
        at += n as u64;
        let mut consumed = 0;
        while let Some(end) = buf[consumed..].iter().position(|b| *b == b'\n') {
            let line = &buf[consumed..consumed + end];
            match parse_line(line) {
                Ok(event) => events.push(event),
                Err(e) => {
                    return Err(format!(
                        "unreadable record at byte {}: {e}",
                        pending_from + consumed as u64
                    ))
                }
            }
            consumed += end + 1;
        }
        buf.drain(..consumed);
        pending_from += consumed as u64;
    }
    Ok((events, pending_from))
}

/// A journal line as written now: the detail is kept as raw text.
#[derive(Deserialize)]
struct Line<'a> {
    id: i64,
    session_id: i64,
    at: i64,
    prev_hash: Option<String>,
    hash: Option<String>,
    kind: String,
    #[serde(borrow)]
    detail: Option<&'a RawValue>,
}

fn parse_line(line: &[u8]) -> Result<JournalEvent, serde_json::Error> {
    let parsed: Line = serde_json::from_slice(line)?;
    let Some(detail) = parsed.detail else {
        return parse_legacy_line(line);
    };
    Ok(JournalEvent {
        id: parsed.id,
        session_id: parsed.session_id,
        at: parsed.at,
        kind: Cow::Owned(parsed.kind),
        detail: detail.get().to_owned(),
        prev_hash: parsed.prev_hash.map(Arc::from),
        hash: parsed.hash.map(Arc::from),
    })
}

/// A line of the earlier layout, whose detail the chain hashed as a JSON value (sorted keys):
/// re-encoded that way, it hashes as it did when written.
fn parse_legacy_line(line: &[u8]) -> Result<JournalEvent, serde_json::Error> {
    let event: EventRecord = serde_json::from_slice(line)?;
    Ok(JournalEvent {
        detail: serde_json::to_value(&event.detail)?.to_string(),
        ..JournalEvent::encode(&event)?
    })
}

/// Copies new journal lines into the store, then trims the journal when it is all copied.
async fn copier(inner: Arc<Inner>, store: Arc<dyn Store>, mut offset: u64) {
    let mut reader = match inner.writer.lock() {
        Ok(writer) => writer.file.try_clone(),
        Err(_) => return,
    };
    let mut scratch = Vec::new();
    // A failed copy lost the queued events it took: the next copy reads the file.
    let mut reread = false;
    let mut last_batch = 0;
    loop {
        inner.wake.notified().await;
        tokio::select! {
            () = tokio::time::sleep(LINGER) => {}
            () = inner.hurry.notified() => {}
        }
        let file = match &reader {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal; records stay in it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                reader = match inner.writer.lock() {
                    Ok(writer) => writer.file.try_clone(),
                    Err(_) => return,
                };
                continue;
            }
        };
        // The queue's next vector, as large as the last batch, made before taking the lock so
        // that the sessions neither wait on the allocation nor grow the queue step by step.
        let fresh = Vec::with_capacity(last_batch);
        // What to copy: the lines from `offset` to `end`, handed over in memory unless the
        // queue was left off or a failed copy dropped it (then read from the file).
        let (queued, end) = match inner.writer.lock() {
            Ok(mut writer) => {
                if !writer.pending.is_empty() {
                    writer.line.clear();
                    if let Err(e) = writer.write_out(None) {
                        tracing::error!(error = %e, "cannot write the journal; outcomes stay pending");
                        inner.wake.notify_one();
                    }
                }
                let queued = std::mem::replace(&mut writer.queued, fresh);
                let usable = !std::mem::replace(&mut writer.unqueued, false) && !reread;
                (usable.then_some(queued), writer.len)
            }
            Err(_) => return,
        };
        if let Some(queued) = &queued {
            last_batch = queued.len();
        }
        if end > offset {
            let events = match queued {
                Some(events) => Ok((events, end)),
                None => read_events(file, offset, end, &mut scratch).map_err(StoreError::Corrupt),
            };
            let copied = match events {
                Ok((events, complete_to)) => {
                    let last = events.last().map(|e| Copied {
                        id: e.id,
                        hash: e.hash.clone(),
                    });
                    store
                        .ingest_events(events, complete_to)
                        .await
                        .map(|()| (last, complete_to))
                }
                Err(e) => Err(e),
            };
            match copied {
                Ok((last, complete_to)) => {
                    offset = complete_to;
                    reread = false;
                    if let Some(last) = last {
                        inner.copied.send_replace(last);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "copying the journal into the store failed; retrying");
                    reread = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    inner.wake.notify_one();
                    continue;
                }
            }
        }
        if offset >= TRIM_AT {
            offset = trim(&inner, &store, offset).await;
        }
    }
}

/// Empties the journal if everything in it is copied; returns the new copy point.
async fn trim(inner: &Inner, store: &Arc<dyn Store>, offset: u64) -> u64 {
    // The store forgets the old copy point first: if the gateway dies before the file is
    // emptied, the next start copies the journal again, and already stored events are skipped.
    let still_copied = inner
        .writer
        .lock()
        .map(|w| w.len == offset)
        .unwrap_or(false);
    if !still_copied || store.ingest_events(Vec::new(), 0).await.is_err() {
        return offset;
    }
    let Ok(mut writer) = inner.writer.lock() else {
        return offset;
    };
    if writer.len != offset {
        // Appends arrived meanwhile: keep the journal. The next copy records the copy point
        // again; until then a restart merely copies the journal once more.
        return offset;
    }
    match writer.file.set_len(0) {
        Ok(()) => {
            writer.len = 0;
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not trim the journal");
            offset
        }
    }
}
