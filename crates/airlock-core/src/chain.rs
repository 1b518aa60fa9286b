//! The tamper-evident chain over recorded events, and its verification.
//!
//! Every event carries `prev_hash` (the `hash` of the event before it) and
//! `hash = hex(SHA-256(prev_hash || canonical bytes))`, where `prev_hash` enters as its 64 ASCII
//! hex digits and the canonical bytes of an event are
//!
//! ```text
//! airlock-event-v1\n<id>\n<session_id>\n<at>\n<detail>
//! ```
//!
//! with the integers in decimal and `<detail>` the event's detail as JSON text exactly as the
//! journal line and the store's `detail` column hold it ([`canonical_detail`]). Verification
//! hashes the stored text byte for byte, so any edit of it shows, even one that parses to the
//! same value. The first chained event chains from [`GENESIS`].
//!
//! Verification walks the events in id order: events recorded before the chain existed (no
//! hash) are skipped until the first chained one, which must chain from [`GENESIS`]; from there
//! every event must be chained, its id must follow the previous one's without a gap, its
//! `prev_hash` must be the previous `hash`, and its `hash` must recompute. An edited, deleted,
//! inserted or reordered event therefore breaks the chain at (or right after) that event.
//! Removing events from the end leaves a shorter but valid chain; detecting that needs the head
//! hash anchored elsewhere.

use crate::store::{EventDetail, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the first chained event chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Events read per store round trip while verifying.
const PAGE: i64 = 1000;

/// An event's detail as the chain hashes it and the store keeps it: the serde encoding of the
/// detail as a JSON value, written compactly.
pub fn canonical_detail(detail: &EventDetail) -> Result<String, serde_json::Error> {
    serde_json::to_value(detail).map(|value| value.to_string())
}

/// The hash of an event chained after `prev_hash`.
pub fn event_hash(prev_hash: &str, id: i64, session_id: i64, at: i64, detail: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(format!("airlock-event-v1\n{id}\n{session_id}\n{at}\n").as_bytes());
    hasher.update(detail.as_bytes());
    hex::encode(hasher.finalize())
}

/// One event as verification reads it: the stored columns, the detail as stored text.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainLink {
    pub id: i64,
    pub session_id: i64,
    pub at: i64,
    pub detail: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// Where and why the chain first breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainBreak {
    pub id: i64,
    pub reason: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainReport {
    pub ok: bool,
    /// Chained events checked (up to and including the broken one).
    pub events_checked: u64,
    pub first_break: Option<ChainBreak>,
}

/// Walks every stored event in id order and reports the first broken link.
pub async fn verify(store: &dyn Store) -> Result<ChainReport, StoreError> {
    let mut checker = Checker::default();
    let mut after = 0;
    loop {
        let page = store.list_chain_after(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for link in &page {
            if let Err(reason) = checker.check(link) {
                return Ok(ChainReport {
                    ok: false,
                    events_checked: checker.checked,
                    first_break: Some(ChainBreak {
                        id: link.id,
                        reason,
                    }),
                });
            }
        }
    }
    Ok(ChainReport {
        ok: true,
        events_checked: checker.checked,
        first_break: None,
    })
}

/// The walk's state: the last chained event seen.
#[derive(Default)]
struct Checker {
    last: Option<(i64, String)>,
    checked: u64,
}

impl Checker {
    fn check(&mut self, link: &ChainLink) -> Result<(), String> {
        let (Some(prev_hash), Some(hash)) = (&link.prev_hash, &link.hash) else {
            return match self.last {
                // Recorded before the chain existed.
                None => Ok(()),
                Some(_) => {
                    self.checked += 1;
                    Err("the event carries no hash inside the chain".into())
                }
            };
        };
        self.checked += 1;
        let expected_prev = match &self.last {
            None => GENESIS,
            Some((last_id, last_hash)) => {
                if link.id != last_id + 1 {
                    return Err(format!(
                        "events {} to {} are missing",
                        last_id + 1,
                        link.id - 1
                    ));
                }
                last_hash.as_str()
            }
        };
        if prev_hash != expected_prev {
            return Err(match self.last {
                None => "the first chained event does not chain from the genesis value".into(),
                Some((last_id, _)) => {
                    format!("prev_hash does not match the hash of event {last_id}")
                }
            });
        }
        if *hash != event_hash(prev_hash, link.id, link.session_id, link.at, &link.detail) {
            return Err("the hash does not match the event's contents".into());
        }
        self.last = Some((link.id, hash.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: i64, prev: &str, detail: &str) -> ChainLink {
        let hash = event_hash(prev, id, 1, 100 + id, detail);
        ChainLink {
            id,
            session_id: 1,
            at: 100 + id,
            detail: detail.into(),
            prev_hash: Some(prev.into()),
            hash: Some(hash),
        }
    }

    fn chain(n: i64) -> Vec<ChainLink> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|id| {
                let l = link(id, &prev, &format!("{{\"n\":{id}}}"));
                prev = l.hash.clone().unwrap();
                l
            })
            .collect()
    }

    fn first_break(links: &[ChainLink]) -> Option<(i64, String)> {
        let mut checker = Checker::default();
        links
            .iter()
            .find_map(|l| checker.check(l).err().map(|r| (l.id, r)))
    }

    #[test]
    fn hash_is_stable() {
        // Pins the documented encoding: changing it would break every recorded chain.
        assert_eq!(
            event_hash(GENESIS, 1, 2, 3, "{}"),
            hex::encode(Sha256::digest(
                format!("{GENESIS}airlock-event-v1\n1\n2\n3\n{{}}").as_bytes()
            ))
        );
    }

    #[test]
    fn intact_chain_after_unchained_prefix() {
        let mut links = vec![ChainLink {
            id: 1,
            session_id: 1,
            at: 1,
            detail: "{}".into(),
            prev_hash: None,
            hash: None,
        }];
        let mut rest = chain(3);
        for (i, l) in rest.iter_mut().enumerate() {
            // Re-chain with ids 2.. so they follow the unchained row.
            l.id = i as i64 + 2;
        }
        let mut prev = GENESIS.to_string();
        for l in &mut rest {
            *l = link(l.id, &prev, &l.detail);
            prev = l.hash.clone().unwrap();
        }
        links.extend(rest);
        assert_eq!(first_break(&links), None);
    }

    #[test]
    fn breaks_are_found() {
        let mut edited = chain(4);
        edited[2].detail = "{\"n\":99}".into();
        assert_eq!(first_break(&edited).map(|b| b.0), Some(3));

        let mut deleted = chain(4);
        deleted.remove(1);
        assert_eq!(first_break(&deleted).map(|b| b.0), Some(3));

        let mut first_deleted = chain(3);
        first_deleted.remove(0);
        assert_eq!(first_break(&first_deleted).map(|b| b.0), Some(2));

        let mut unhashed = chain(3);
        unhashed[1].hash = None;
        assert_eq!(first_break(&unhashed).map(|b| b.0), Some(2));
    }
}
