//! How the CLI prints: aligned tables and `key: value` blocks for people, the API's JSON as-is
//! for scripts (`--output json`), and store times as RFC 3339. Everything is rendered to a
//! string first and written with [`emit`], so a closed pipe (`| head`) is an error the caller
//! can recognise instead of a panic inside `println!`.

use anyhow::Context;
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// Writes rendered output to stdout.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the output")
}

/// Whether an error is only the reader of our stdout going away, which is not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// JSON for scripts, pretty so it also reads well.
pub fn json(value: &Value) -> String {
    // A `Value` always serializes; the compact form is a fallback that cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// A store timestamp (Unix milliseconds) as RFC 3339, to the second.
pub fn time(millis: i64) -> String {
    match u64::try_from(millis) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => millis.to_string(),
    }
}

pub fn opt_time(millis: Option<i64>) -> String {
    millis.map(time).unwrap_or_else(|| "-".into())
}

pub fn opt(text: Option<&str>) -> &str {
    match text {
        Some(t) if !t.is_empty() => t,
        _ => "-",
    }
}

pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// One line, at most `max` characters: for operations shown in a table cell.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// A column-aligned table; `empty` is shown instead when there are no rows.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            text.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `label: value` lines with the values aligned; multi-line values stay indented.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let label = format!("{key}:");
        let mut lines = value.lines();
        let first = lines.next().unwrap_or_default();
        out.push_str(format!("  {label:<width$} {first}").trim_end());
        out.push('\n');
        for more in lines {
            out.push_str(&format!("  {:<width$} {more}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_truncation() {
        assert_eq!(time(1_704_164_645_250), "2024-01-02T03:04:05Z");
        assert_eq!(opt_time(None), "-");
        assert_eq!(one_line("select\n  1", 20), "select 1");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }

    #[test]
    fn tables_and_fields_align() {
        let rows = vec![vec!["1".to_string(), "long value".to_string()]];
        assert_eq!(
            table(&["ID", "X"], &rows, "none"),
            "ID  X\n1   long value\n"
        );
        assert_eq!(table(&["ID"], &[], "none"), "none\n");
        assert_eq!(
            fields(&[("a", "x\ny".into()), ("long", String::new())]),
            "  a:    x\n        y\n  long:\n"
        );
    }
}
