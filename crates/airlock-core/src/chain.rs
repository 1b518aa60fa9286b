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
//! Removing events from the end leaves a shorter but valid chain, and a chain rewritten from
//! end to end (every hash recomputed) is valid too: signed checkpoints ([`crate::checkpoint`])
//! catch both. Each checkpoint must carry the gateway key's signature and name an event that
//! is in the chain with the hash it signed; the events after the newest checkpoint (the
//! unsigned tail, written since it) may span at most [`TAIL_FACTOR`] checkpoint intervals, so
//! a chain stripped of its checkpoints and rewritten does not pass either.
//!
//! After a retention prune the chain starts from its anchor: the checkpoint over the last
//! pruned event. The first kept event must chain from that checkpoint's hash.

use crate::checkpoint;
use crate::store::{CheckpointRecord, EventDetail, Store, StoreError};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// What the first chained event chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Events read per store round trip while verifying.
const PAGE: i64 = 1000;

/// How many checkpoint intervals the unsigned tail may span.
pub const TAIL_FACTOR: u32 = 2;

/// The checkpoint interval assumed while no checkpoint states one.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// An event's detail as the chain hashes it and the store keeps it: its serde encoding, written
/// compactly, fields in declaration order. Verification hashes the stored text, never a
/// re-encoding, so records written in an earlier encoding (sorted keys) still verify.
pub fn canonical_detail(detail: &EventDetail) -> Result<String, serde_json::Error> {
    serde_json::to_string(detail)
}

/// The hash of an event chained after `prev_hash`.
pub fn event_hash(prev_hash: &str, id: i64, session_id: i64, at: i64, detail: &str) -> String {
    event_digest(prev_hash, id, session_id, at, detail)
        .as_str()
        .to_owned()
}

/// [`event_hash`] as hex digits on the stack, for a caller that keeps them its own way.
pub fn event_digest(prev_hash: &str, id: i64, session_id: i64, at: i64, detail: &str) -> HexDigest {
    // Every event goes through here on the relay path: no formatting machinery, no allocation.
    // ring's SHA-256 has vectorised code for processors without the SHA extensions, where it
    // runs in about half the time of a portable implementation.
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"airlock-event-v1\n");
    let mut number = itoa::Buffer::new();
    for n in [id, session_id, at] {
        hasher.update(number.format(n).as_bytes());
        hasher.update(b"\n");
    }
    hasher.update(detail.as_bytes());
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(hasher.finish(), &mut hex);
    HexDigest(hex)
}

/// A SHA-256 digest as 64 lowercase hex digits.
pub struct HexDigest([u8; 64]);

impl HexDigest {
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainBreak {
    pub id: i64,
    pub reason: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainReport {
    pub ok: bool,
    /// Chained events checked (up to and including the broken one).
    pub events_checked: u64,
    pub first_break: Option<ChainBreak>,
    /// Signed checkpoints checked (the anchor included).
    #[serde(default)]
    pub checkpoints_checked: u64,
    /// The last event a valid checkpoint covers.
    #[serde(default)]
    pub signed_through: Option<i64>,
    /// The last event removed by retention, where verification started.
    #[serde(default)]
    pub pruned_through: Option<i64>,
}

/// The walk's progress over checkpoints, read a page at a time in event order alongside the
/// events, so verification runs in constant memory however many there are.
struct Signed<'a> {
    store: &'a dyn Store,
    key: Option<&'a VerifyingKey>,
    /// Read but not yet reached by the walk.
    pending: VecDeque<CheckpointRecord>,
    /// The last checkpoint read (event id, id).
    cursor: (i64, i64),
    exhausted: bool,
    checked: u64,
    /// The last event covered, and the interval its checkpoint states.
    through: Option<(i64, i64)>,
    /// The events after `through`: the first one's id and time, and the newest time.
    tail: Option<(i64, i64, i64)>,
}

impl Signed<'_> {
    /// The checkpoints over events up to `event_id` not taken yet.
    async fn take_through(&mut self, event_id: i64) -> Result<Vec<CheckpointRecord>, StoreError> {
        let mut taken = Vec::new();
        loop {
            while let Some(front) = self.pending.front() {
                if front.checkpoint.event_id > event_id {
                    return Ok(taken);
                }
                taken.extend(self.pending.pop_front());
            }
            if self.exhausted {
                return Ok(taken);
            }
            let page = self.store.list_checkpoints_after(self.cursor, PAGE).await?;
            self.exhausted = page.len() < PAGE as usize;
            if let Some(last) = page.last() {
                self.cursor = (last.checkpoint.event_id, last.id);
            }
            self.pending.extend(page);
        }
    }

    /// Checks `records`, taken for event `event_id` whose recomputed hash is `hash`.
    fn check(
        &mut self,
        event_id: i64,
        hash: &str,
        records: &[CheckpointRecord],
    ) -> Result<(), String> {
        for record in records {
            let c = &record.checkpoint;
            if c.event_id != event_id {
                return Err(format!(
                    "checkpoint {} covers event {}, which is not in the chain: events were removed",
                    record.id, c.event_id
                ));
            }
            let key = self.key.ok_or_else(|| {
                format!(
                    "checkpoint {} cannot be checked: no public key to check it with",
                    record.id
                )
            })?;
            checkpoint::check(key, c).map_err(|why| format!("checkpoint {}: {why}", record.id))?;
            if c.hash != hash {
                return Err(format!(
                    "checkpoint {} signed another hash for this event: the chain was rewritten",
                    record.id
                ));
            }
            self.checked += 1;
            self.through = Some((event_id, c.interval_ms));
            self.tail = None;
        }
        Ok(())
    }
}

/// Walks every stored event in id order and reports the first broken link. Checkpoint
/// signatures are checked with `key`; without one, any checkpoint is a failure (fail closed).
/// The unsigned tail may span [`TAIL_FACTOR`] times the longer of `interval` (the gateway's
/// configured one, when known) and the interval the newest checkpoint states; without either,
/// [`DEFAULT_CHECKPOINT_INTERVAL`].
pub async fn verify(
    store: &dyn Store,
    key: Option<&VerifyingKey>,
    interval: Option<Duration>,
) -> Result<ChainReport, StoreError> {
    let pruned_through = store.pruned_through().await?;
    let mut signed = Signed {
        store,
        key,
        pending: VecDeque::new(),
        // Checkpoints before the anchor went with the events they covered.
        cursor: (pruned_through, -1),
        exhausted: false,
        checked: 0,
        through: None,
        tail: None,
    };
    let mut checker = Checker::default();
    let report =
        |checker: &Checker, signed: &Signed, first_break: Option<ChainBreak>| ChainReport {
            ok: first_break.is_none(),
            events_checked: checker.checked,
            first_break,
            checkpoints_checked: signed.checked,
            signed_through: signed.through.map(|(id, _)| id),
            pruned_through: (pruned_through > 0).then_some(pruned_through),
        };
    if pruned_through > 0 {
        let anchors = signed.take_through(pruned_through).await?;
        let Some(anchor) = anchors.first().map(|c| c.checkpoint.hash.clone()) else {
            let reason = format!(
                "events up to {pruned_through} were pruned, but the checkpoint they were pruned at is missing"
            );
            let broken = ChainBreak {
                id: pruned_through,
                reason,
            };
            return Ok(report(&checker, &signed, Some(broken)));
        };
        if let Err(reason) = signed.check(pruned_through, &anchor, &anchors) {
            let broken = ChainBreak {
                id: pruned_through,
                reason,
            };
            return Ok(report(&checker, &signed, Some(broken)));
        }
        checker.last = Some((pruned_through, anchor));
    }
    let mut after = 0;
    loop {
        let page = store.list_chain_after(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for link in &page {
            let mut checked = checker.check(link);
            if let (Ok(()), Some((id, hash))) = (&checked, &checker.last) {
                if *id == link.id {
                    let records = signed.take_through(link.id).await?;
                    checked = signed.check(link.id, hash, &records);
                }
            }
            if let Err(reason) = checked {
                let broken = ChainBreak {
                    id: link.id,
                    reason,
                };
                return Ok(report(&checker, &signed, Some(broken)));
            }
            let chained = checker.last.as_ref().is_some_and(|(id, _)| *id == link.id);
            let covered = signed.through.is_some_and(|(id, _)| id == link.id);
            if chained && !covered {
                signed.tail = Some(match signed.tail {
                    Some((id, first, newest)) => (id, first, newest.max(link.at)),
                    None => (link.id, link.at, link.at),
                });
            }
        }
    }
    // A checkpoint over an event past the end: the end was cut off.
    if let Some(record) = signed.take_through(i64::MAX).await?.first() {
        let broken = ChainBreak {
            id: record.checkpoint.event_id,
            reason: format!(
                "checkpoint {} covers event {}, which is not in the chain: events were removed",
                record.id, record.checkpoint.event_id
            ),
        };
        return Ok(report(&checker, &signed, Some(broken)));
    }
    if let Some((first_id, first_at, newest_at)) = signed.tail {
        let stated = signed
            .through
            .map(|(_, ms)| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        let interval = match (interval, stated) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => DEFAULT_CHECKPOINT_INTERVAL,
        };
        let allowed = interval.saturating_mul(TAIL_FACTOR);
        let span = Duration::from_millis(u64::try_from(newest_at - first_at).unwrap_or(0));
        if span > allowed {
            let broken = ChainBreak {
                id: first_id,
                reason: format!(
                    "the events from here on are not covered by a signed checkpoint, though they \
                     span {} (checkpoints come every {}): the checkpoints were removed and the \
                     chain rewritten, or the gateway could not sign them",
                    humantime::format_duration(Duration::from_secs(span.as_secs())),
                    humantime::format_duration(interval)
                ),
            };
            return Ok(report(&checker, &signed, Some(broken)));
        }
    }
    Ok(report(&checker, &signed, None))
}

/// Walks the events after `from` (an event's id and hash; `None`: the chain's start) and
/// checks that each links to the one before; returns the last chained event, or the first
/// break. How the checkpoint signer makes sure it only ever signs a continuation of what it
/// signed before.
pub async fn follow(
    store: &dyn Store,
    from: Option<(i64, String)>,
) -> Result<Result<Option<(i64, String)>, ChainBreak>, StoreError> {
    let mut after = from.as_ref().map_or(0, |(id, _)| *id);
    // The event followed from must still be what it was (unless retention removed it).
    if let Some((id, hash)) = &from {
        let start = store.list_chain_after(id - 1, 1).await?;
        if let Some(link) = start.first().filter(|link| link.id == *id) {
            let recomputed = link
                .prev_hash
                .as_deref()
                .map(|prev| event_hash(prev, link.id, link.session_id, link.at, &link.detail));
            if link.hash.as_ref() != Some(hash) || recomputed.as_ref() != Some(hash) {
                return Ok(Err(ChainBreak {
                    id: *id,
                    reason: "the event no longer has the hash it had".into(),
                }));
            }
        }
    }
    let mut checker = Checker {
        last: from,
        checked: 0,
    };
    loop {
        let page = store.list_chain_after(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(Ok(checker.last));
        };
        after = last.id;
        for link in &page {
            if let Err(reason) = checker.check(link) {
                return Ok(Err(ChainBreak {
                    id: link.id,
                    reason,
                }));
            }
        }
    }
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
                if link.id <= *last_id {
                    // Only retention's anchor lets the walk start above an event.
                    return Err(format!(
                        "the event lies at or before event {last_id}, where the chain goes on from"
                    ));
                }
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
            // SHA-256 of GENESIS followed by "airlock-event-v1\n1\n2\n3\n{}"
            "1823d29aebc577734b5347f8b526f2a175037a059b44e4bc97948c3c627fa7e7"
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
