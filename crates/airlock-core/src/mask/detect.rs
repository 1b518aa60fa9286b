//! Detectors: the compiled patterns that find sensitive values inside free text (emails, card
//! and account numbers, national identifiers, phone numbers, addresses, credentials), with the
//! checksums that keep look-alikes (order numbers, timestamps) from being masked.
//!
//! Every enabled pattern goes into one `RegexSet`, so a value that holds nothing sensitive — the
//! common case — costs one scan. Only the patterns that matched are then run for positions.

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

/// What a detector looks for; the names are those of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    /// Payment card numbers (13 to 19 digits, spaces or dashes allowed) that pass Luhn.
    CreditCard,
    UsSsn,
    /// E.164 (`+44 20 7946 0958`) and common national forms (`(555) 123-4567`).
    Phone,
    /// International bank account numbers whose mod-97 checksum holds.
    Iban,
    Ipv4,
    /// Credentials: AWS access keys, private-key blocks, JWTs, `Bearer …`, GitHub, Slack and
    /// Stripe tokens, `password=…` pairs.
    Secret,
}

impl Detector {
    pub const ALL: [Detector; 7] = [
        Detector::Secret,
        Detector::Email,
        Detector::Iban,
        Detector::CreditCard,
        Detector::UsSsn,
        Detector::Phone,
        Detector::Ipv4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::UsSsn => "us_ssn",
            Detector::Phone => "phone",
            Detector::Iban => "iban",
            Detector::Ipv4 => "ipv4",
            Detector::Secret => "secret",
        }
    }

    /// The patterns of the detector. A pattern with a group named `v` masks only that group
    /// (the value of a `password=` pair, not its key). Word boundaries are ASCII ones, which
    /// keeps every pattern within the regex crate's fast DFA engines.
    fn patterns(self) -> &'static [&'static str] {
        match self {
            Detector::Email => {
                &[r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"]
            }
            Detector::CreditCard => &[r"(?-u:\b)\d(?:[ \-]?\d){12,18}(?-u:\b)"],
            Detector::UsSsn => &[r"(?-u:\b)\d{3}-\d{2}-\d{4}(?-u:\b)"],
            Detector::Phone => &[
                r"\+[1-9]\d{0,2}(?:[ .\-]?\(?\d{1,4}\)?){1,5}(?-u:\b)",
                r"(?:\(\d{3}\)\s?|(?-u:\b)\d{3}[ .\-])\d{3}[ .\-]\d{4}(?-u:\b)",
                r"(?-u:\b)0\d{1,4}[ \-/]\d{2,4}(?:[ \-]\d{2,4}){0,3}(?-u:\b)",
            ],
            Detector::Iban => &[r"(?-u:\b)[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)"],
            Detector::Ipv4 => &[
                r"(?-u:\b)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?-u:\b)",
            ],
            Detector::Secret => &[
                r"(?-u:\b)(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?-u:\b)",
                // An unterminated block is masked to the end of the value: fail closed.
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*)",
                r"(?-u:\b)eyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",
                r"(?i)(?-u:\b)bearer\s+[A-Za-z0-9._~+/\-]+=*",
                r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
                r"(?-u:\b)xox[abposr]-[A-Za-z0-9\-]{10,}",
                r"(?-u:\b)(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}(?-u:\b)",
                r#"(?i)(?-u:\b)(?:password|passwd|pwd|secret|api[_\-]?key|access[_\-]?token|auth[_\-]?token)["']?\s*[=:]\s*(?P<v>"[^"]*"|'[^']*'|[^\s&;,"']+)"#,
            ],
        }
    }

    /// Whether a candidate is the real thing (checksums and number ranges).
    fn accepts(self, found: &str) -> bool {
        match self {
            Detector::CreditCard => luhn(found),
            Detector::UsSsn => ssn_valid(found),
            Detector::Iban => iban_valid(found),
            Detector::Phone => {
                let digits = found.bytes().filter(u8::is_ascii_digit).count();
                // A national number (leading 0) is long enough not to be a date.
                let least = if found.starts_with('0') { 9 } else { 7 };
                (least..=15).contains(&digits)
            }
            _ => true,
        }
    }
}

/// Luhn's checksum over the digits of `text` (13 to 19 of them).
fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Numbers the Social Security Administration never issues are not SSNs.
fn ssn_valid(text: &str) -> bool {
    let mut parts = text.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// The IBAN check: move the first four characters to the end, letters to numbers, mod 97 = 1.
fn iban_valid(text: &str) -> bool {
    let compact: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rotated = compact[4..].iter().chain(compact[..4].iter());
    let mut remainder: u32 = 0;
    for c in rotated {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        remainder = if value < 10 {
            (remainder * 10 + value) % 97
        } else {
            (remainder * 100 + value) % 97
        };
    }
    remainder == 1
}

/// One sensitive stretch of a value: bytes `start..end` are what `detector` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub start: usize,
    pub end: usize,
}

/// A compiled set of detectors.
#[derive(Debug, Clone)]
pub struct DetectorSet {
    set: RegexSet,
    /// Per pattern of the set: its detector and its compiled form.
    patterns: Vec<(Detector, Regex)>,
}

#[derive(Debug, thiserror::Error)]
#[error("a detector pattern does not compile: {0}")]
pub struct DetectError(String);

impl DetectorSet {
    /// Compiles `detectors`; the earlier a detector is in [`Detector::ALL`], the more it wins
    /// where two overlap (a `password=` pair over the email inside it).
    pub fn compile(detectors: &[Detector]) -> Result<DetectorSet, DetectError> {
        let mut patterns = Vec::new();
        for detector in Detector::ALL.iter().filter(|d| detectors.contains(d)) {
            for pattern in detector.patterns() {
                let regex = Regex::new(pattern).map_err(|e| DetectError(e.to_string()))?;
                patterns.push((*detector, regex));
            }
        }
        let set = RegexSet::new(patterns.iter().map(|(_, r)| r.as_str()))
            .map_err(|e| DetectError(e.to_string()))?;
        Ok(DetectorSet { set, patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The sensitive stretches of `text`, in order, without overlaps.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return Vec::new();
        }
        let mut found: Vec<Finding> = Vec::new();
        for index in matched.iter() {
            let (detector, regex) = &self.patterns[index];
            for captures in regex.captures_iter(text) {
                let Some(whole) = captures.get(0) else {
                    continue;
                };
                if !detector.accepts(whole.as_str()) {
                    continue;
                }
                let span = captures.name("v").unwrap_or(whole);
                if span.start() == span.end() {
                    continue;
                }
                // Patterns come in priority order: a later one only takes free text.
                let overlaps = found
                    .iter()
                    .any(|f| span.start() < f.end && f.start < span.end());
                if !overlaps {
                    found.push(Finding {
                        detector: *detector,
                        start: span.start(),
                        end: span.end(),
                    });
                }
            }
        }
        found.sort_by_key(|f| f.start);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(detector: Detector, text: &str) -> Vec<String> {
        DetectorSet::compile(&[detector])
            .unwrap()
            .find(text)
            .iter()
            .map(|f| text[f.start..f.end].to_string())
            .collect()
    }

    #[test]
    fn email() {
        assert_eq!(
            found(Detector::Email, "mail ann.lee+x@mail.example.com now"),
            ["ann.lee+x@mail.example.com"]
        );
        assert!(found(Detector::Email, "not@an address").is_empty());
    }

    #[test]
    fn credit_cards_need_luhn() {
        assert_eq!(
            found(Detector::CreditCard, "card 4111 1111 1111 1111 ok"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found(Detector::CreditCard, "5500-0000-0000-0004"),
            ["5500-0000-0000-0004"]
        );
        assert!(found(Detector::CreditCard, "order 4111111111111112").is_empty());
        assert!(found(Detector::CreditCard, "1234").is_empty());
    }

    #[test]
    fn us_ssn_skips_numbers_never_issued() {
        assert_eq!(found(Detector::UsSsn, "ssn 123-45-6789."), ["123-45-6789"]);
        assert!(found(Detector::UsSsn, "000-12-3456 666-12-3456 900-12-3456").is_empty());
        assert!(found(Detector::UsSsn, "123-00-4567 2024-01-15").is_empty());
    }

    #[test]
    fn phones_in_international_and_national_forms() {
        assert_eq!(
            found(Detector::Phone, "call +44 20 7946 0958"),
            ["+44 20 7946 0958"]
        );
        assert_eq!(
            found(Detector::Phone, "tel +14155552671."),
            ["+14155552671"]
        );
        assert_eq!(found(Detector::Phone, "(555) 123-4567"), ["(555) 123-4567"]);
        assert_eq!(found(Detector::Phone, "555.123.4567"), ["555.123.4567"]);
        assert_eq!(found(Detector::Phone, "030 1234 5678"), ["030 1234 5678"]);
        assert!(found(Detector::Phone, "version 1.2.3, 42 items").is_empty());
        assert!(found(Detector::Phone, "due 01-15-2024 or 2024-01-15").is_empty());
    }

    #[test]
    fn ibans_need_their_checksum() {
        assert_eq!(
            found(Detector::Iban, "pay to DE89 3704 0044 0532 0130 00 today"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            found(Detector::Iban, "GB82WEST12345698765432"),
            ["GB82WEST12345698765432"]
        );
        assert!(found(Detector::Iban, "GB82WEST12345698765433").is_empty());
    }

    #[test]
    fn ipv4() {
        assert_eq!(
            found(Detector::Ipv4, "from 10.0.12.255:80"),
            ["10.0.12.255"]
        );
        assert!(found(Detector::Ipv4, "999.1.1.1 1.2.3").is_empty());
    }

    #[test]
    fn secrets() {
        let cases = [
            ("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- tail",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nMIIE cut",
                "-----BEGIN PRIVATE KEY-----\nMIIE cut",
            ),
            (
                "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_value-1 end",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_value-1",
            ),
            (
                "Authorization: Bearer abc.DEF-123= x",
                "Bearer abc.DEF-123=",
            ),
            (
                "ghp_0123456789abcdefghijABCDEFGHIJ012345",
                "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            ),
            ("xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
            (
                "sk_live_0123456789abcdefABCD",
                "sk_live_0123456789abcdefABCD",
            ),
            ("host=db password=hunter2 user=x", "hunter2"),
            ("{\"api_key\": \"abc def\"}", "\"abc def\""),
        ];
        for (text, secret) in cases {
            assert_eq!(found(Detector::Secret, text), [secret], "{text}");
        }
        assert!(found(Detector::Secret, "the password policy is strict").is_empty());
    }

    #[test]
    fn earlier_detectors_win_overlaps() {
        let set = DetectorSet::compile(&Detector::ALL).unwrap();
        let text = "password=ann@example.com and bob@example.com";
        let found = set.find(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].detector, Detector::Secret);
        assert_eq!(found[1].detector, Detector::Email);
    }
}
