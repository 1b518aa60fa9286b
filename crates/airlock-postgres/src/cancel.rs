//! Cancel requests. Each session gets a gateway-issued backend key; a CancelRequest carrying it
//! withdraws the session's held statement if one is waiting, and is otherwise forwarded to the
//! upstream with the upstream's own key (which the client never sees).

use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Clone)]
struct Entry {
    upstream_address: String,
    upstream_key: Option<(i32, i32)>,
    /// Set while a statement is held; notified to withdraw it.
    held: Arc<Mutex<Option<Arc<Notify>>>>,
}

#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<(i32, i32), Entry>>,
}

/// A session's registration; unregisters on drop.
pub struct CancelSlot {
    registry: Arc<CancelRegistry>,
    key: (i32, i32),
    held: Arc<Mutex<Option<Arc<Notify>>>>,
}

impl CancelSlot {
    pub fn key(&self) -> (i32, i32) {
        self.key
    }

    /// Marks a statement as held; the returned signal fires when a cancel request withdraws it.
    pub fn hold(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        if let Ok(mut held) = self.held.lock() {
            *held = Some(notify.clone());
        }
        notify
    }

    pub fn release(&self) {
        if let Ok(mut held) = self.held.lock() {
            *held = None;
        }
    }
}

impl Drop for CancelSlot {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.registry.sessions.lock() {
            sessions.remove(&self.key);
        }
    }
}

/// What a cancel request should do.
pub enum CancelAction {
    /// A held statement was withdrawn.
    Withdrawn,
    /// Forward to the upstream at this address with this key.
    Forward(String, (i32, i32)),
    /// No such session (or nothing to cancel).
    Nothing,
}

impl CancelRegistry {
    pub fn register(
        self: &Arc<Self>,
        upstream_address: String,
        upstream_key: Option<(i32, i32)>,
    ) -> CancelSlot {
        let held = Arc::new(Mutex::new(None));
        let entry = Entry {
            upstream_address,
            upstream_key,
            held: held.clone(),
        };
        let mut rng = rand::thread_rng();
        let mut key = (rng.gen::<i32>() & i32::MAX, rng.gen::<i32>());
        if let Ok(mut sessions) = self.sessions.lock() {
            while sessions.contains_key(&key) {
                key = (rng.gen::<i32>() & i32::MAX, rng.gen::<i32>());
            }
            sessions.insert(key, entry);
        }
        CancelSlot {
            registry: self.clone(),
            key,
            held,
        }
    }

    pub fn cancel(&self, key: (i32, i32)) -> CancelAction {
        let Some(entry) = self.sessions.lock().ok().and_then(|s| s.get(&key).cloned()) else {
            return CancelAction::Nothing;
        };
        if let Some(notify) = entry.held.lock().ok().and_then(|mut h| h.take()) {
            notify.notify_one();
            return CancelAction::Withdrawn;
        }
        match entry.upstream_key {
            Some(k) => CancelAction::Forward(entry.upstream_address, k),
            None => CancelAction::Nothing,
        }
    }
}
