//! The recorder: appends session events to the store with group commit. Callers that must not
//! proceed before their event is durable await [`Recorder::append`]; many sessions' events share
//! one transaction, so durability costs one commit per batch rather than per statement.

use crate::store::{NewEvent, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 8192;
const MAX_BATCH: usize = 512;
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

type Reply = oneshot::Sender<Result<i64, StoreError>>;

// Events are nearly every item; boxing them to shrink the rare Flush would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(NewEvent, Option<Reply>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

impl Item {
    fn is_awaited(&self) -> bool {
        matches!(self, Item::Event(_, Some(_)) | Item::Flush(_))
    }
}

#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Item>,
}

impl Recorder {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (queue, mut rx) = mpsc::channel::<Item>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                // Outcomes nobody waits for linger briefly, to share the commit of the next
                // event somebody does wait for.
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.len() < MAX_BATCH && !batch.iter().any(Item::is_awaited) {
                    let room = MAX_BATCH - batch.len();
                    let more = rx.recv_many(&mut batch, room);
                    match tokio::time::timeout_at(deadline, more).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let mut events = Vec::with_capacity(batch.len());
                let mut replies = Vec::with_capacity(batch.len());
                let mut flushes = Vec::new();
                for item in batch.drain(..) {
                    match item {
                        Item::Event(event, reply) => {
                            events.push(event);
                            replies.push(reply);
                        }
                        Item::Flush(done) => flushes.push(done),
                    }
                }
                let written = if events.is_empty() {
                    Ok(Vec::new())
                } else {
                    store.append_events(&events).await
                };
                match written {
                    Ok(ids) => {
                        for (reply, id) in replies.into_iter().zip(ids) {
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(id));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, events = events.len(), "recording failed");
                        for reply in replies.into_iter().flatten() {
                            let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                        }
                    }
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        Recorder { queue }
    }

    /// Appends an event and waits until it is durably stored.
    pub async fn append(&self, event: NewEvent) -> Result<i64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Item::Event(event, Some(tx)))
            .await
            .map_err(|_| StoreError::Backend("recorder stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("recorder stopped".into()))?
    }

    /// Appends an event without waiting (outcomes, which follow what was already recorded).
    pub fn append_later(&self, event: NewEvent) {
        if let Err(e) = self.queue.try_send(Item::Event(event, None)) {
            tracing::error!("recording queue full or stopped; an outcome event was dropped: {e}");
        }
    }

    /// Waits until everything queued so far is written (for shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Item::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
