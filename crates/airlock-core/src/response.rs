//! The part of a statement's response that is recorded: its (already masked) rows up to the
//! configured `recording.results` limits, and how many values masking changed. Adapters feed it
//! the values exactly as they sent them to the agent, so nothing unmasked can reach the store.

use crate::config::ResultsLimit;
use crate::mask::MaskCounts;
use crate::store::EventDetail;

/// Collects one statement's response.
#[derive(Debug, Clone)]
pub struct ResponseCapture {
    limit: ResultsLimit,
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
    bytes: u64,
    truncated: bool,
    pub masked: MaskCounts,
}

impl ResponseCapture {
    pub fn new(limit: ResultsLimit) -> ResponseCapture {
        ResponseCapture {
            limit,
            columns: Vec::new(),
            rows: Vec::new(),
            bytes: 0,
            truncated: false,
            masked: MaskCounts::default(),
        }
    }

    /// Whether rows are kept at all (else only counts are).
    pub fn keeps_rows(&self) -> bool {
        self.limit.keeps_rows()
    }

    /// The column names of the (first) result.
    pub fn columns(&mut self, names: impl IntoIterator<Item = String>) {
        if self.columns.is_empty() && self.keeps_rows() {
            self.columns = names.into_iter().collect();
        }
    }

    /// Whether a further row would still be kept; callers skip building rows when not.
    pub fn wants_row(&self) -> bool {
        self.keeps_rows() && !self.truncated
    }

    /// Keeps a row of values as sent (`None`: SQL NULL) while within the limits.
    pub fn row<'v>(&mut self, values: impl IntoIterator<Item = Option<&'v [u8]>>) {
        if !self.wants_row() {
            return;
        }
        if self.rows.len() as u64 >= self.limit.rows {
            self.truncated = true;
            return;
        }
        let row: Vec<Option<String>> = values
            .into_iter()
            .map(|v| v.map(|bytes| String::from_utf8_lossy(bytes).into_owned()))
            .collect();
        let size: u64 = row.iter().flatten().map(|v| v.len() as u64).sum();
        if self.bytes + size > self.limit.bytes {
            self.truncated = true;
            return;
        }
        self.bytes += size;
        self.rows.push(row);
    }

    /// The response event to record for statement `event` (`None` when no rows are kept),
    /// and the masked counts, which the statement's outcome carries.
    pub fn into_event(self, statement_event: i64) -> (Option<EventDetail>, MaskCounts) {
        let response = (!self.rows.is_empty() || self.truncated).then(|| EventDetail::Response {
            statement_event,
            columns: self.columns,
            rows: self.rows,
            truncated: self.truncated,
            masked: Default::default(),
        });
        (response, self.masked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_rows_within_both_limits() {
        let mut capture = ResponseCapture::new(ResultsLimit {
            rows: 2,
            bytes: 100,
        });
        capture.columns(["a".to_string()]);
        capture.row([Some(&b"one"[..])]);
        capture.row([None]);
        capture.row([Some(&b"three"[..])]);
        let Some(EventDetail::Response {
            rows, truncated, ..
        }) = capture.into_event(7).0
        else {
            panic!("no event");
        };
        assert_eq!(rows, [vec![Some("one".to_string())], vec![None]]);
        assert!(truncated);

        let mut capture = ResponseCapture::new(ResultsLimit { rows: 10, bytes: 4 });
        capture.row([Some(&b"abc"[..])]);
        capture.row([Some(&b"de"[..])]);
        let Some(EventDetail::Response {
            rows, truncated, ..
        }) = capture.into_event(7).0
        else {
            panic!("no event");
        };
        assert_eq!(rows.len(), 1);
        assert!(truncated);
    }

    #[test]
    fn nothing_kept_is_no_event_but_counts_are_kept() {
        let mut capture = ResponseCapture::new(ResultsLimit::default());
        capture.row([Some(&b"x"[..])]);
        capture.masked.add("email", 2);
        let (response, masked) = capture.into_event(1);
        assert!(response.is_none());
        assert_eq!(masked.0["email"], 2);
    }
}
