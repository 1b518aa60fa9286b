//! The blast-radius preview of a held operation: what reviewers see of how much it would
//! touch (rows an UPDATE or DELETE would change, the size of a table a DROP or TRUNCATE would
//! remove), and the [`Previewer`] a protocol adapter provides to compute it on its upstream.
//! A preview is advice for people and an input of the `rows_limit` rule matcher; it never
//! decides on its own and its failure never blocks a request.

use crate::operation::Operation;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What one statement of an operation would touch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Impact {
    /// The rows an UPDATE or DELETE would change.
    Rows {
        /// The statement kind and its target table (`DELETE items`).
        statement: String,
        rows: u64,
        /// `true`: counted with `SELECT count(*)`; `false`: the planner's estimate (the count
        /// took too long or could not be run safely; see `note`).
        exact: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A table a DROP TABLE or TRUNCATE would remove or empty.
    Table {
        statement: String,
        table: String,
        /// The planner's row estimate (`reltuples`; -1 when never analyzed).
        estimated_rows: i64,
        /// `pg_total_relation_size`: the table with its indexes and TOAST.
        bytes: i64,
    },
    /// No figure for this statement, and why.
    Unavailable { statement: String, reason: String },
}

impl Impact {
    /// One line for people: `DELETE items: 2 rows (counted)`.
    pub fn describe(&self) -> String {
        match self {
            Impact::Rows {
                statement,
                rows,
                exact,
                note,
            } => format!(
                "{statement}: {}{rows} row{} ({}{})",
                if *exact { "" } else { "~" },
                if *rows == 1 { "" } else { "s" },
                if *exact {
                    "counted"
                } else {
                    "planner estimate"
                },
                note.as_deref()
                    .map(|n| format!("; {n}"))
                    .unwrap_or_default()
            ),
            Impact::Table {
                statement,
                table,
                estimated_rows,
                bytes,
            } => format!(
                "{statement} {table}: {} rows, {} (planner estimate and total size)",
                if *estimated_rows < 0 {
                    "unknown (never analyzed)".to_string()
                } else {
                    format!("~{estimated_rows}")
                },
                human_bytes(*bytes)
            ),
            Impact::Unavailable { statement, reason } => {
                format!("{statement}: unavailable ({reason})")
            }
        }
    }
}

/// The preview of one operation: one [`Impact`] per statement that changes data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BlastRadius {
    pub impacts: Vec<Impact>,
}

impl BlastRadius {
    /// A preview that could not be computed at all.
    pub fn unavailable(statement: &str, reason: impl Into<String>) -> BlastRadius {
        BlastRadius {
            impacts: vec![Impact::Unavailable {
                statement: statement.to_string(),
                reason: reason.into(),
            }],
        }
    }

    /// The rows the operation would change in total, when every statement that changes data
    /// was counted exactly; `None` when any figure is an estimate or missing. The only figure
    /// the `rows_limit` matcher accepts.
    pub fn exact_rows(&self) -> Option<u64> {
        if self.impacts.is_empty() {
            return None;
        }
        self.impacts
            .iter()
            .try_fold(0u64, |total, impact| match impact {
                Impact::Rows {
                    rows, exact: true, ..
                } => total.checked_add(*rows),
                _ => None,
            })
    }

    /// One line per statement, for people.
    pub fn describe(&self) -> String {
        self.impacts
            .iter()
            .map(Impact::describe)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Computes previews on a connection's upstream. Implemented by the protocol adapters; the
/// gate asks it for held operations and for operations a `rows_limit` rule needs a count of.
#[async_trait]
pub trait Previewer: Send + Sync {
    /// The preview of `op`, or `None` when it changes nothing a preview measures (or its
    /// connection is not one this previewer knows). Must never change anything upstream and
    /// must return within a few seconds; failures are reported as [`Impact::Unavailable`].
    async fn preview(&self, op: &Operation) -> Option<BlastRadius>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rows: u64, exact: bool) -> Impact {
        Impact::Rows {
            statement: "DELETE t".into(),
            rows,
            exact,
            note: None,
        }
    }

    #[test]
    fn only_exact_counts_add_up_to_a_row_count() {
        let both = BlastRadius {
            impacts: vec![rows(2, true), rows(3, true)],
        };
        assert_eq!(both.exact_rows(), Some(5));
        let estimated = BlastRadius {
            impacts: vec![rows(2, true), rows(3, false)],
        };
        assert_eq!(estimated.exact_rows(), None);
        assert_eq!(BlastRadius::default().exact_rows(), None);
        assert_eq!(BlastRadius::unavailable("DELETE", "x").exact_rows(), None);
    }

    #[test]
    fn descriptions_say_how_a_figure_was_obtained() {
        assert_eq!(rows(1, true).describe(), "DELETE t: 1 row (counted)");
        assert_eq!(
            rows(7, false).describe(),
            "DELETE t: ~7 rows (planner estimate)"
        );
        let table = Impact::Table {
            statement: "DROP TABLE".into(),
            table: "public.items".into(),
            estimated_rows: 3,
            bytes: 16384,
        };
        assert_eq!(
            table.describe(),
            "DROP TABLE public.items: ~3 rows, 16.0 kB (planner estimate and total size)"
        );
    }
}
