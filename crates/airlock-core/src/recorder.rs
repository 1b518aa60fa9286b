//! The recorder: appends session events to the store with group commit. Callers that must not
//! proceed before their event is durable await [`Recorder::append`]; many sessions' events share
//! one transaction, so durability costs one commit per batch rather than per statement.

use crate::store::{NewEvent, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 8192;
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<i64, StoreError>>;

#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<(NewEvent, Option<Reply>)>,
}

impl Recorder {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (queue, mut rx) = mpsc::channel::<(NewEvent, Option<Reply>)>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, replies): (Vec<NewEvent>, Vec<Option<Reply>>) =
                    batch.drain(..).unzip();
                match store.append_events(&events).await {
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
            }
        });
        Recorder { queue }
    }

    /// Appends an event and waits until it is durably stored.
    pub async fn append(&self, event: NewEvent) -> Result<i64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((event, Some(tx)))
            .await
            .map_err(|_| StoreError::Backend("recorder stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("recorder stopped".into()))?
    }

    /// Appends an event without waiting (outcomes, which follow what was already recorded).
    pub fn append_later(&self, event: NewEvent) {
        if let Err(e) = self.queue.try_send((event, None)) {
            tracing::error!("recording queue full or stopped; an outcome event was dropped: {e}");
        }
    }
}
