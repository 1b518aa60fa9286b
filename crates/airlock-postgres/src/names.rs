//! What the upstream holds under each prepared-statement and portal name, as far as the
//! gateway can tell.
//!
//! A Parse or Bind is forwarded before the upstream has answered it, and it can fail there
//! (the name exists, an earlier message failed and the batch is skipped, …). So a name's new
//! meaning is only *proposed* when the message passes, and becomes *confirmed* when the upstream
//! answers ParseComplete / BindComplete / CloseComplete; a proposal still open when the batch's
//! ReadyForQuery arrives failed and is dropped. Within its own batch a proposal is used as is —
//! if it failed, the upstream skips the rest of that batch anyway — but a later batch that needs
//! a name whose meaning is still open waits until the upstream has answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Statement,
    Portal,
}

struct Version<T> {
    id: u64,
    /// The batch (count of Syncs and Queries sent before it) that proposed it.
    batch: u64,
    /// `None`: closed.
    value: Option<T>,
    confirmed: bool,
}

struct Table<T> {
    entries: HashMap<String, Vec<Version<T>>>,
}

impl<T: Clone> Table<T> {
    fn new() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }

    fn propose(&mut self, name: &str, id: u64, batch: u64, value: Option<T>) {
        self.entries
            .entry(name.to_string())
            .or_default()
            .push(Version {
                id,
                batch,
                value,
                confirmed: false,
            });
    }

    fn confirm(&mut self, name: &str, id: u64) {
        if let Some(versions) = self.entries.get_mut(name) {
            if let Some(at) = versions.iter().position(|v| v.id == id) {
                versions[at].confirmed = true;
                // Older meanings are gone for good.
                versions.drain(..at);
            }
        }
    }

    fn drop_version(&mut self, name: &str, id: u64) {
        if let Some(versions) = self.entries.get_mut(name) {
            versions.retain(|v| v.id != id);
            if versions.is_empty() {
                self.entries.remove(name);
            }
        }
    }

    fn lookup(&self, name: &str, batch: u64) -> Lookup<T> {
        match self.entries.get(name).and_then(|v| v.last()) {
            None => Lookup::Unknown,
            Some(v) if v.confirmed || v.batch == batch => match &v.value {
                Some(value) => Lookup::Found(value.clone()),
                None => Lookup::Unknown,
            },
            Some(v) => Lookup::WaitFor(v.batch),
        }
    }
}

pub enum Lookup<T> {
    Found(T),
    /// Never created through this session's Parse/Bind, closed, or forgotten.
    Unknown,
    /// Proposed in an earlier batch the upstream has not answered yet.
    WaitFor(u64),
}

struct Tables<S, P> {
    statements: Table<S>,
    portals: Table<P>,
    next_id: u64,
}

/// Shared by the two directions of a session.
pub struct Names<S, P> {
    tables: Mutex<Tables<S, P>>,
    /// How many batches the upstream has answered (ReadyForQuery count).
    answered: watch::Sender<u64>,
}

impl<S: Clone, P: Clone> Names<S, P> {
    pub fn new() -> Arc<Self> {
        Arc::new(Names {
            tables: Mutex::new(Tables {
                statements: Table::new(),
                portals: Table::new(),
                next_id: 0,
            }),
            answered: watch::channel(0).0,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Tables<S, P>) -> R) -> Option<R> {
        self.tables.lock().ok().map(|mut t| f(&mut t))
    }

    pub fn propose_statement(&self, name: &str, batch: u64, value: Option<S>) -> u64 {
        self.with(|t| {
            t.next_id += 1;
            t.statements.propose(name, t.next_id, batch, value);
            t.next_id
        })
        .unwrap_or(0)
    }

    pub fn propose_portal(&self, name: &str, batch: u64, value: Option<P>) -> u64 {
        self.with(|t| {
            t.next_id += 1;
            t.portals.propose(name, t.next_id, batch, value);
            t.next_id
        })
        .unwrap_or(0)
    }

    pub fn confirm(&self, space: Space, name: &str, id: u64) {
        self.with(|t| match space {
            Space::Statement => t.statements.confirm(name, id),
            Space::Portal => t.portals.confirm(name, id),
        });
    }

    pub fn reject(&self, space: Space, name: &str, id: u64) {
        self.with(|t| match space {
            Space::Statement => t.statements.drop_version(name, id),
            Space::Portal => t.portals.drop_version(name, id),
        });
    }

    pub fn statement(&self, name: &str, batch: u64) -> Lookup<S> {
        self.with(|t| t.statements.lookup(name, batch))
            .unwrap_or(Lookup::Unknown)
    }

    pub fn portal(&self, name: &str, batch: u64) -> Lookup<P> {
        self.with(|t| t.portals.lookup(name, batch))
            .unwrap_or(Lookup::Unknown)
    }

    /// SQL-level PREPARE, DEALLOCATE, DECLARE, CLOSE or DISCARD changed names behind the
    /// protocol's back: nothing known about that space can be trusted any more.
    pub fn forget(&self, space: Space) {
        self.with(|t| match space {
            Space::Statement => t.statements.entries.clear(),
            Space::Portal => t.portals.entries.clear(),
        });
    }

    pub fn batch_answered(&self) {
        self.answered.send_modify(|n| *n += 1);
    }

    /// Waits until the upstream has answered batch `batch` (numbered from 0).
    pub async fn wait_answered(&self, batch: u64) {
        let mut answered = self.answered.subscribe();
        let _ = answered.wait_for(|n| *n > batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type N = Names<&'static str, &'static str>;

    fn found(l: Lookup<&'static str>) -> Option<&'static str> {
        match l {
            Lookup::Found(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn a_rejected_parse_keeps_the_old_meaning() {
        let names = N::new();
        let first = names.propose_statement("s", 0, Some("DELETE"));
        names.confirm(Space::Statement, "s", first);
        let second = names.propose_statement("s", 1, Some("SELECT"));
        // Same batch: used as proposed (if it failed, the upstream skips the batch).
        assert_eq!(found(names.statement("s", 1)), Some("SELECT"));
        // A later batch must wait for the upstream's answer…
        assert!(matches!(names.statement("s", 2), Lookup::WaitFor(1)));
        // …which was a failure: the old meaning stands.
        names.reject(Space::Statement, "s", second);
        assert_eq!(found(names.statement("s", 2)), Some("DELETE"));
    }

    #[test]
    fn confirmed_close_and_forget_make_names_unknown() {
        let names = N::new();
        let p = names.propose_portal("p", 0, Some("SELECT"));
        names.confirm(Space::Portal, "p", p);
        let c = names.propose_portal("p", 1, None);
        names.confirm(Space::Portal, "p", c);
        assert!(matches!(names.portal("p", 2), Lookup::Unknown));
        let s = names.propose_statement("s", 2, Some("SELECT"));
        names.confirm(Space::Statement, "s", s);
        names.forget(Space::Statement);
        assert!(matches!(names.statement("s", 3), Lookup::Unknown));
    }

    #[tokio::test]
    async fn waiting_ends_when_the_batch_is_answered() {
        let names = N::new();
        names.batch_answered();
        names.wait_answered(0).await;
    }
}
