//! Encryption at rest for upstream credentials kept in the store: AES-256-GCM with a key read
//! from the secret key file, which is created (mode 0600) on first use. The same file's key
//! also yields, by derivation, the key of the masking `hash` style.

use crate::mask::HashKey;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use std::io::Write;
use std::path::Path;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("sealed value is damaged or was sealed with another key")]
    Damaged,
}

pub struct Sealer {
    cipher: Aes256Gcm,
    /// HMAC-SHA256(secret key, purpose): a key of its own for masking, so that a digest shown
    /// to agents reveals nothing about the key that seals credentials.
    masking_key: [u8; KEY_LEN],
}

/// The purpose string the masking key is derived under.
const MASKING_KEY_PURPOSE: &[u8] = b"airlock masking hash key v1";

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// Reads the key file, or creates it with a fresh random key (mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let err = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let key = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                let mut key = vec![0u8; KEY_LEN];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut file = create_private(path).map_err(|e| err(e.to_string()))?;
                file.write_all(&key).map_err(|e| err(e.to_string()))?;
                file.sync_all().map_err(|e| err(e.to_string()))?;
                key
            }
            Err(e) => return Err(err(e.to_string())),
        };
        if key.len() != KEY_LEN {
            return Err(err(format!(
                "expected {KEY_LEN} bytes of key, found {}",
                key.len()
            )));
        }
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| err(e.to_string()))?;
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            MASKING_KEY_PURPOSE,
        );
        let mut masking_key = [0u8; 32];
        masking_key.copy_from_slice(derived.as_ref());
        Ok(Sealer {
            cipher,
            masking_key,
        })
    }

    /// The key of the masking `hash` style.
    pub fn masking_key(&self) -> HashKey {
        HashKey::new(self.masking_key)
    }

    /// Encrypts `plaintext`; the result is `nonce || ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce length cannot fail.
        if let Ok(ciphertext) = self.cipher.encrypt(Nonce::from_slice(&nonce), plaintext) {
            out.extend_from_slice(&ciphertext);
        }
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SealError::Damaged)
    }
}

/// Creates a file readable by its owner only.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_a_private_key_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let sealer = Sealer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = sealer.seal(b"s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"s3cret");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(again.open(&tampered).is_err());
    }

    #[test]
    fn the_masking_key_is_derived_from_the_file_and_differs_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let one = Sealer::load_or_create(&path).unwrap();
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(one.masking_key, again.masking_key);
        assert_ne!(one.masking_key.to_vec(), std::fs::read(&path).unwrap());
    }

    #[test]
    fn rejects_a_short_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        std::fs::write(&path, b"short").unwrap();
        assert!(Sealer::load_or_create(&path).is_err());
    }
}
