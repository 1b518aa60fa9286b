//! Times given on the command line (`--since`): an RFC 3339 timestamp, a bare date, or a human
//! duration meaning "that long ago", turned into the store's Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn parse_since(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` ago is before the Unix epoch"))?,
        Err(_) => parse_timestamp(text).ok_or_else(|| {
            format!(
                "`{text}` is neither a time (RFC 3339, e.g. 2025-05-01T12:00:00Z) nor a \
                 duration ago (e.g. 90m, 1h, 7d)"
            )
        })?,
    };
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before the Unix epoch"))?
        .as_millis();
    i64::try_from(millis).map_err(|_| format!("`{text}` is too far in the future"))
}

/// RFC 3339 with `Z` or a `±HH:MM` offset (humantime alone only reads UTC), or `YYYY-MM-DD`.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    if !text.is_ascii() {
        return None;
    }
    if text.len() == 10 {
        return humantime::parse_rfc3339_weak(&format!("{text}T00:00:00")).ok();
    }
    let bytes = text.as_bytes();
    let n = bytes.len();
    let has_offset = n > 6
        && matches!(bytes[n - 6], b'+' | b'-')
        && bytes[n - 3] == b':'
        && [1, 2, 4, 5]
            .iter()
            .all(|&i| bytes[n - 6 + i].is_ascii_digit());
    if !has_offset {
        return humantime::parse_rfc3339_weak(text).ok();
    }
    let hours: u64 = text[n - 5..n - 3].parse().ok()?;
    let minutes: u64 = text[n - 2..].parse().ok()?;
    let offset = Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(&text[..n - 6]).ok()?;
    // The wall-clock time is ahead of UTC by a positive offset, so UTC is that much earlier.
    if bytes[n - 6] == b'+' {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_utc_and_with_offsets() {
        assert_eq!(parse_since("2024-01-02T03:04:05Z"), Ok(1_704_164_645_000));
        assert_eq!(
            parse_since("2024-01-02T05:04:05+02:00"),
            Ok(1_704_164_645_000)
        );
        assert_eq!(
            parse_since("2024-01-01T22:04:05-05:00"),
            Ok(1_704_164_645_000)
        );
        assert_eq!(
            parse_since("2024-01-02T03:04:05.250Z"),
            Ok(1_704_164_645_250)
        );
        assert_eq!(parse_since("2024-01-02"), Ok(1_704_153_600_000));
    }

    #[test]
    fn durations_mean_ago() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let hour_ago = parse_since("1h").unwrap();
        assert!((now - 3_600_000 - hour_ago).abs() < 5_000, "{hour_ago}");
    }

    #[test]
    fn nonsense_is_refused_clearly() {
        for bad in [
            "yesterday",
            "2024-13-45",
            "",
            "1h ago",
            "2024-01-02T03:04:05+2:00",
        ] {
            let err = parse_since(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }
}
