//! Signed checkpoints over the event chain. The gateway's Ed25519 key — a file in the data
//! directory, created (mode 0600) when absent — signs the chain's head at intervals, so a
//! rewrite of the whole chain, every hash recomputed, no longer verifies against the public
//! key. The signed message of a checkpoint is
//!
//! ```text
//! airlock-checkpoint-v1\n<event_id>\n<hash>\n<at>\n<interval_ms>
//! ```
//!
//! with the integers in decimal and `<hash>` the head event's 64 hex digits. Checkpoints are
//! stored beside the chain, not in it (they belong to no session); [`crate::chain::verify`]
//! checks each against the event it names. This module owns the key file, signing, the
//! signature check and taking checkpoints of the store's head ([`Checkpointer`]).

use crate::chain;
use crate::sealer::create_private;
use crate::store::{now_millis, NewCheckpoint, Store, StoreError};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "audit-signing.key";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("audit signing key {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("`{0}` is not an Ed25519 public key (64 hex digits)")]
    PublicKey(String),
    #[error("refusing to sign the audit chain, which does not continue its last checkpoint: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The gateway's checkpoint signing key.
pub struct CheckpointKey {
    signing: SigningKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey(public {})", self.public_hex())
    }
}

impl CheckpointKey {
    /// Reads the key file (the 32-byte Ed25519 seed), or creates it with a fresh random key,
    /// mode 0600, when absent.
    pub fn load_or_create(path: &Path) -> Result<CheckpointKey, CheckpointError> {
        let fail = |reason: String| CheckpointError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let seed = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
                }
                let mut seed = vec![0u8; ed25519_dalek::SECRET_KEY_LENGTH];
                rand::rngs::OsRng.fill_bytes(&mut seed);
                let mut file = create_private(path).map_err(|e| fail(e.to_string()))?;
                file.write_all(&seed).map_err(|e| fail(e.to_string()))?;
                file.sync_all().map_err(|e| fail(e.to_string()))?;
                seed
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let seed: [u8; ed25519_dalek::SECRET_KEY_LENGTH] =
            seed.as_slice().try_into().map_err(|_| {
                fail(format!(
                    "expected {} bytes of key, found {}",
                    ed25519_dalek::SECRET_KEY_LENGTH,
                    seed.len()
                ))
            })?;
        Ok(CheckpointKey {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads only the public half of an existing key file (offline verification).
    pub fn read_public(path: &Path) -> Result<VerifyingKey, CheckpointError> {
        if !path.is_file() {
            return Err(CheckpointError::KeyFile {
                path: path.display().to_string(),
                reason: "no such file".into(),
            });
        }
        Ok(CheckpointKey::load_or_create(path)?.public())
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public().as_bytes())
    }

    /// A checkpoint over event `event_id`, whose chain hash is `hash`.
    pub fn sign(&self, event_id: i64, hash: &str, at: i64, interval: Duration) -> NewCheckpoint {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let signature = self
            .signing
            .sign(message(event_id, hash, at, interval_ms).as_bytes());
        NewCheckpoint {
            at,
            event_id,
            hash: hash.to_owned(),
            interval_ms,
            public_key: self.public_hex(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

/// An Ed25519 public key given as hex.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, CheckpointError> {
    let bad = || CheckpointError::PublicKey(text.to_owned());
    let bytes: [u8; ed25519_dalek::PUBLIC_KEY_LENGTH] = hex::decode(text.trim())
        .map_err(|_| bad())?
        .try_into()
        .map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

fn message(event_id: i64, hash: &str, at: i64, interval_ms: i64) -> String {
    format!("airlock-checkpoint-v1\n{event_id}\n{hash}\n{at}\n{interval_ms}")
}

/// Whether `checkpoint` carries `key`'s signature over what it states.
pub fn check(key: &VerifyingKey, checkpoint: &NewCheckpoint) -> Result<(), String> {
    let signature = hex::decode(&checkpoint.signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or("its signature is malformed")?;
    let message = message(
        checkpoint.event_id,
        &checkpoint.hash,
        checkpoint.at,
        checkpoint.interval_ms,
    );
    key.verify(message.as_bytes(), &signature)
        .map_err(|_| "its signature does not verify with the gateway's public key".to_owned())
}

/// Takes the checkpoints: signs the chain's head, but only where it continues the chain as
/// last signed, so that a chain rewritten in the store (its checkpoints deleted or not) is
/// never signed by a running gateway.
///
/// The first signing of a run walks the stored events from the last checkpoint, since an
/// earlier run wrote them. After that, what this run recorded continues the chain by
/// construction: the head it signs is the recorder's own (its hash as chained in memory, never
/// read back), once the store is seen to hold the last signed event and that head with those
/// hashes and no gap between them — reading two events and a count instead of every event.
/// Where it does not (a rewrite changes those hashes, a prune removes the signed event), the
/// walk decides, and refuses a rewrite. An edit that leaves the hashes alone is not seen until
/// `airlock audit verify` recomputes them.
pub struct Checkpointer {
    key: Arc<CheckpointKey>,
    interval: Duration,
    /// The last event signed, and its hash.
    last: Option<(i64, String)>,
    /// Whether a walk in this run has reached `last`, so the recorder's later heads continue it.
    walked: bool,
}

impl Checkpointer {
    /// Resumes from the newest stored checkpoint, which must carry this key's signature.
    pub async fn resume(
        store: &dyn Store,
        key: Arc<CheckpointKey>,
        interval: Duration,
    ) -> Result<Checkpointer, CheckpointError> {
        let newest = store.newest_checkpoint().await?;
        let last = match newest {
            Some(record) => {
                check(&key.public(), &record.checkpoint).map_err(|why| {
                    CheckpointError::Refused(format!("checkpoint {}: {why}", record.id))
                })?;
                Some((record.checkpoint.event_id, record.checkpoint.hash))
            }
            None => None,
        };
        Ok(Checkpointer {
            key,
            interval,
            last,
            walked: false,
        })
    }

    /// Signs the head unless it is signed already; returns the event id signed. `recorded` is
    /// the last event this run recorded into the store, as the recorder chained it; the caller
    /// makes sure the journal is copied first.
    pub async fn sign_head(
        &mut self,
        store: &dyn Store,
        recorded: Option<(i64, String)>,
    ) -> Result<Option<i64>, CheckpointError> {
        let recorded = match recorded {
            Some(head) if self.walked && self.continues(store, &head).await? => Some(head),
            _ => None,
        };
        let head = match recorded {
            Some(head) => Some(head),
            None => match chain::follow(store, self.last.clone()).await? {
                Ok(head) => {
                    self.walked = true;
                    head
                }
                Err(broken) => {
                    return Err(CheckpointError::Refused(format!(
                        "event {}: {}",
                        broken.id, broken.reason
                    )))
                }
            },
        };
        let Some((event_id, hash)) = head else {
            return Ok(None);
        };
        if self.last.as_ref().is_some_and(|(id, _)| *id == event_id) {
            return Ok(None);
        }
        store
            .record_checkpoint(&self.key.sign(event_id, &hash, now_millis(), self.interval))
            .await?;
        self.last = Some((event_id, hash));
        Ok(Some(event_id))
    }

    /// Whether the store still holds the last signed event and the recorder's `head` as they
    /// were chained, with every event between; if not, the walk decides (and explains).
    /// With nothing signed yet, the walk covered the chain from its start.
    async fn continues(&self, store: &dyn Store, head: &(i64, String)) -> Result<bool, StoreError> {
        let (last_id, last_hash) = match &self.last {
            Some((id, hash)) => (*id, Some(hash)),
            None => (0, None),
        };
        if head.0 < last_id {
            return Ok(false);
        }
        let span = store.chain_span(last_id, head.0).await?;
        Ok(
            last_hash.is_none_or(|hash| span.from_hash.as_ref() == Some(hash))
                && span.to_hash.as_ref() == Some(&head.1)
                && span.events == head.0 - last_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_check_and_edits_do_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(KEY_FILE);
        let key = CheckpointKey::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        let again = CheckpointKey::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.public_hex(), again.public_hex());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        let signed = key.sign(7, &"ab".repeat(32), 1000, Duration::from_secs(60));
        assert_eq!(check(&key.public(), &signed), Ok(()));
        let mut edited = signed.clone();
        edited.hash = "cd".repeat(32);
        assert!(check(&key.public(), &edited).is_err());
        let other = CheckpointKey::load_or_create(&dir.path().join("other"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(check(&other.public(), &signed).is_err());
        let parsed = parse_public_key(&key.public_hex()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, key.public());
        assert!(parse_public_key("zz").is_err());
    }
}
