//! Styles: what a masked value becomes. `redact` replaces it with a fixed mask (a detector's
//! finding with the detector's name, so the agent knows what was there), `partial` keeps the
//! last four characters (an email its domain), `hash` gives a keyed, deterministic digest (equal
//! values stay equal, so joins and grouping still work, and without the gateway's key nobody
//! can test a guess against it), `null` makes the value SQL NULL.

use super::detect::Detector;
use super::Masked;
use serde::{Deserialize, Serialize};

/// The fixed mask of `redact`.
pub const REDACTED: &str = "****";
/// Characters `partial` keeps, and the shortest value that keeps any.
const KEEP: usize = 4;
const SHORTEST_PARTIAL: usize = 8;
/// Hex digits of the digest `hash` shows: 64 bits, plenty to keep distinct values distinct.
const HASH_HEX: usize = 16;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStyle {
    #[default]
    Redact,
    Partial,
    Hash,
    Null,
}

/// The key of the `hash` style (derived from the gateway's secret key), kept as HMAC-SHA256's
/// keyed state.
#[derive(Clone)]
pub struct HashKey(ring::hmac::Key);

impl HashKey {
    pub fn new(key: [u8; 32]) -> HashKey {
        HashKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key))
    }

    fn digest(&self, value: &[u8]) -> String {
        let digest = hex::encode(ring::hmac::sign(&self.0, value));
        format!("h:{}", &digest[..HASH_HEX])
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

/// A whole column's value in `style`.
pub fn whole(style: MaskStyle, value: &[u8], key: &HashKey) -> Masked {
    match style {
        MaskStyle::Null => Masked::Null,
        MaskStyle::Hash => Masked::Text(key.digest(value)),
        MaskStyle::Redact => Masked::Text(REDACTED.into()),
        MaskStyle::Partial => Masked::Text(match std::str::from_utf8(value) {
            Ok(text) => partial(text),
            Err(_) => REDACTED.into(),
        }),
    }
}

/// What replaces a detector's finding (`Null` is handled by the caller: it nulls the value).
pub fn found(style: MaskStyle, detector: Detector, text: &str, key: &HashKey) -> String {
    match style {
        MaskStyle::Hash => key.digest(text.as_bytes()),
        MaskStyle::Partial => partial(text),
        MaskStyle::Redact | MaskStyle::Null => format!("[{}]", detector.name()),
    }
}

/// `****` and the last four characters, or `****@domain` for an email; short values keep
/// nothing.
fn partial(text: &str) -> String {
    if let Some((local, domain)) = text.rsplit_once('@') {
        if !local.is_empty() && domain.contains('.') && !domain.contains(char::is_whitespace) {
            return format!("{REDACTED}@{domain}");
        }
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < SHORTEST_PARTIAL {
        return REDACTED.into();
    }
    let kept: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{REDACTED}{kept}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HashKey {
        HashKey::new([1; 32])
    }

    fn text(m: Masked) -> String {
        match m {
            Masked::Text(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redact() {
        assert_eq!(
            text(whole(MaskStyle::Redact, b"123-45-6789", &key())),
            "****"
        );
        assert_eq!(
            found(MaskStyle::Redact, Detector::Email, "a@b.io", &key()),
            "[email]"
        );
    }

    #[test]
    fn partial_keeps_the_last_four_or_the_domain() {
        assert_eq!(
            text(whole(MaskStyle::Partial, b"4111111111111111", &key())),
            "****1111"
        );
        assert_eq!(
            text(whole(MaskStyle::Partial, b"ann@example.com", &key())),
            "****@example.com"
        );
        assert_eq!(text(whole(MaskStyle::Partial, b"short", &key())), "****");
    }

    #[test]
    fn hash_is_keyed_and_deterministic() {
        let a = text(whole(MaskStyle::Hash, b"ann@example.com", &key()));
        assert_eq!(a, text(whole(MaskStyle::Hash, b"ann@example.com", &key())));
        assert_ne!(a, text(whole(MaskStyle::Hash, b"bob@example.com", &key())));
        let other = HashKey::new([2; 32]);
        assert_ne!(a, text(whole(MaskStyle::Hash, b"ann@example.com", &other)));
        assert!(a.starts_with("h:") && a.len() == 2 + HASH_HEX, "{a}");
        assert!(!format!("{:?}", key()).contains('1'));
    }

    #[test]
    fn null() {
        assert_eq!(whole(MaskStyle::Null, b"x", &key()), Masked::Null);
    }
}
