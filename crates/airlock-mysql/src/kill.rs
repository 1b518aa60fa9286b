//! `KILL QUERY id` across sessions: the connection ids the gateway gives its clients, who owns
//! each, and the statement each may be holding for review. A `KILL [QUERY] id` naming one of
//! the caller's own sessions withdraws that session's held statement, or interrupts its running
//! one on the upstream — the MySQL counterpart of PostgreSQL's CancelRequest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub struct KillRegistry {
    next_id: AtomicU32,
    sessions: Mutex<HashMap<u32, Entry>>,
}

struct Entry {
    subject: String,
    connection: String,
    upstream_thread: u32,
    /// Set while a statement of the session is held for review.
    held: Option<Arc<Notify>>,
}

/// What a `KILL` from `subject` on `connection` does to session `id`.
pub enum KillAction {
    /// A held statement was withdrawn.
    Withdrawn,
    /// The session runs a statement upstream: kill this upstream thread.
    Upstream(u32),
    /// Not a session of this identity on this connection: judge the statement as any other.
    NotOurs,
}

impl KillRegistry {
    /// A fresh connection id for the greeting.
    pub fn allocate(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    pub fn register(
        self: &Arc<Self>,
        id: u32,
        subject: &str,
        connection: &str,
        upstream_thread: u32,
    ) -> Registration {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(
                id,
                Entry {
                    subject: subject.to_string(),
                    connection: connection.to_string(),
                    upstream_thread,
                    held: None,
                },
            );
        }
        Registration {
            registry: self.clone(),
            id,
        }
    }

    pub fn kill(&self, id: u32, subject: &str, connection: &str) -> KillAction {
        let Ok(sessions) = self.sessions.lock() else {
            return KillAction::NotOurs;
        };
        match sessions.get(&id) {
            Some(entry) if entry.subject == subject && entry.connection == connection => {
                match &entry.held {
                    Some(signal) => {
                        signal.notify_one();
                        KillAction::Withdrawn
                    }
                    None => KillAction::Upstream(entry.upstream_thread),
                }
            }
            _ => KillAction::NotOurs,
        }
    }
}

/// A session's place in the registry; removed when dropped.
pub struct Registration {
    registry: Arc<KillRegistry>,
    id: u32,
}

impl Registration {
    /// Marks the session as holding a statement; the signal fires when a KILL withdraws it.
    pub fn hold(&self) -> Arc<Notify> {
        let signal = Arc::new(Notify::new());
        if let Ok(mut sessions) = self.registry.sessions.lock() {
            if let Some(entry) = sessions.get_mut(&self.id) {
                entry.held = Some(signal.clone());
            }
        }
        signal
    }

    pub fn release(&self) {
        if let Ok(mut sessions) = self.registry.sessions.lock() {
            if let Some(entry) = sessions.get_mut(&self.id) {
                entry.held = None;
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.registry.sessions.lock() {
            sessions.remove(&self.id);
        }
    }
}

/// The session id of a plain `KILL [QUERY | CONNECTION] id` (case-insensitive, optional `;`),
/// and whether it names only the query. Anything else is not recognized and is judged by the
/// policy like any statement.
pub fn parse_kill(sql: &str) -> Option<(u32, bool)> {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    match words.as_slice() {
        [kill, id] if kill.eq_ignore_ascii_case("kill") => Some((id.parse().ok()?, false)),
        [kill, what, id] if kill.eq_ignore_ascii_case("kill") => {
            if what.eq_ignore_ascii_case("query") {
                Some((id.parse().ok()?, true))
            } else if what.eq_ignore_ascii_case("connection") {
                Some((id.parse().ok()?, false))
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_are_recognized_only_in_their_plain_form() {
        assert_eq!(parse_kill("KILL QUERY 12"), Some((12, true)));
        assert_eq!(parse_kill("kill 7;"), Some((7, false)));
        assert_eq!(parse_kill("kill connection 3"), Some((3, false)));
        assert_eq!(parse_kill("kill query x"), None);
        assert_eq!(parse_kill("/* c */ kill 3"), None);
    }

    #[test]
    fn only_the_owner_reaches_a_session() {
        let registry = Arc::new(KillRegistry::default());
        let id = registry.allocate();
        let registration = registry.register(id, "alice", "prod", 99);
        assert!(matches!(
            registry.kill(id, "bob", "prod"),
            KillAction::NotOurs
        ));
        assert!(matches!(
            registry.kill(id, "alice", "prod"),
            KillAction::Upstream(99)
        ));
        let _signal = registration.hold();
        assert!(matches!(
            registry.kill(id, "alice", "prod"),
            KillAction::Withdrawn
        ));
        drop(registration);
        assert!(matches!(
            registry.kill(id, "alice", "prod"),
            KillAction::NotOurs
        ));
    }
}
