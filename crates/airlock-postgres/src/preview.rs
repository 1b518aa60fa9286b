//! The blast-radius preview on a PostgreSQL upstream ([`PgPreviewer`]): for each top-level
//! UPDATE or DELETE, a `SELECT count(*)` built from the statement's own parse tree (same
//! FROM/USING, WHERE and WITH, deparsed by `pg_query`), and for DROP TABLE and TRUNCATE the
//! table's row estimate and total size. Bound parameters of the extended protocol are measured
//! with their values, placed in the derived query as literals. It runs on a side connection of its own with the
//! connection's stored credential, in a READ ONLY transaction (the session itself defaults to
//! read-only) with a short `statement_timeout`; when the count takes too long, or would call a
//! function the preview does not run, the planner's EXPLAIN estimate stands in. The write
//! itself is never sent.

use crate::upstream::UpstreamTarget;
use airlock_core::classify::{classify, Classification, StatementKind};
use airlock_core::operation::Operation;
use airlock_core::preview::{BlastRadius, Impact, Previewer};
use async_trait::async_trait;
use pg_query::protobuf::{self, node::Node as NodeEnum, ObjectType};
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// How long a count may run before the planner's estimate stands in.
const COUNT_TIMEOUT: Duration = Duration::from_millis(1500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer statements are not parsed again for a preview (the classifier caps them too).
const MAX_PREVIEW_SQL: usize = 64 * 1024;
/// Parsing and deparsing recurse as deep as the statement nests: a thread with a generous
/// stack (only committed as used) keeps a hostile statement from overflowing it.
const PARSE_STACK: usize = 256 * 1024 * 1024;
/// SQLSTATE of a statement canceled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// Functions a count may evaluate: they read, compute and change nothing. A WHERE that calls
/// anything else is only estimated, never run.
const SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_length",
    "btrim",
    "cardinality",
    "ceil",
    "char_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "count",
    "current_date",
    "date_part",
    "date_trunc",
    "extract",
    "floor",
    "generate_series",
    "greatest",
    "jsonb_array_length",
    "jsonb_extract_path_text",
    "jsonb_typeof",
    "least",
    "left",
    "length",
    "lower",
    "ltrim",
    "make_interval",
    "md5",
    "now",
    "nullif",
    "position",
    "replace",
    "right",
    "round",
    "rtrim",
    "split_part",
    "statement_timestamp",
    "strpos",
    "substr",
    "substring",
    "timezone",
    "to_char",
    "to_date",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "upper",
];

/// What to measure for one statement, derived from its parse tree.
#[derive(Debug, Clone, PartialEq)]
enum Probe {
    Rows {
        statement: String,
        /// `SELECT count(*) ...`, or `None` with the reason it must not run.
        count: Result<String, String>,
        /// `SELECT 1 ...` with the same FROM and WHERE, for EXPLAIN.
        estimate: String,
    },
    Table {
        statement: String,
        /// The quoted, qualified name as `to_regclass` reads it.
        regclass: String,
        table: String,
    },
    Unavailable {
        statement: String,
        reason: String,
    },
}

/// Previews operations on the PostgreSQL connections it was given.
pub struct PgPreviewer {
    targets: HashMap<String, UpstreamTarget>,
}

impl PgPreviewer {
    pub fn new(targets: HashMap<String, UpstreamTarget>) -> PgPreviewer {
        PgPreviewer { targets }
    }
}

/// Whether the operation changes anything a preview measures.
fn measurable(op: &Operation) -> bool {
    match op.classification.as_ref() {
        Classification::Parsed(statements) => statements.iter().any(|s| {
            s.kinds.iter().any(|k| {
                matches!(
                    k,
                    StatementKind::Update
                        | StatementKind::Delete
                        | StatementKind::Drop
                        | StatementKind::Truncate
                )
            })
        }),
        Classification::Unparseable(_) => false,
    }
}

#[async_trait]
impl Previewer for PgPreviewer {
    async fn preview(&self, op: &Operation) -> Option<BlastRadius> {
        let target = self.targets.get(&op.connection)?;
        if !measurable(op) {
            return None;
        }
        let what = op.classification.kind_names().join(", ");
        if op.text.len() > MAX_PREVIEW_SQL {
            return Some(BlastRadius::unavailable(
                &what,
                "the statement is too long to preview",
            ));
        }
        let probes = match derive_on_large_stack(op.text.to_string()).await {
            Ok(probes) if probes.is_empty() => {
                return Some(BlastRadius::unavailable(
                    &what,
                    "the change is not a top-level UPDATE, DELETE, DROP TABLE or TRUNCATE",
                ))
            }
            Ok(probes) => probes,
            Err(reason) => return Some(BlastRadius::unavailable(&what, reason)),
        };
        let probes = if op.params.is_empty() {
            probes
        } else {
            probes
                .into_iter()
                .map(|probe| with_params(probe, &op.params))
                .collect()
        };
        let client = match connect(target).await {
            Ok(client) => client,
            Err(reason) => {
                tracing::warn!(connection = %op.connection, %reason, "preview: cannot connect upstream");
                return Some(BlastRadius::unavailable(
                    &what,
                    "the upstream could not be reached for the preview (details in the gateway log)",
                ));
            }
        };
        let mut impacts = Vec::with_capacity(probes.len());
        for probe in probes {
            impacts.push(measure(&client, probe).await);
        }
        Some(BlastRadius { impacts })
    }
}

/// Parses on a thread with a large stack; see [`PARSE_STACK`].
async fn derive_on_large_stack(sql: String) -> Result<Vec<Probe>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("airlock-preview".into())
        .stack_size(PARSE_STACK)
        .spawn(move || {
            let _ = tx.send(probes(&sql));
        })
        .map_err(|e| format!("cannot start the preview parser: {e}"))?;
    rx.await
        .map_err(|_| "the preview parser failed".to_string())?
}

/// One probe per top-level statement that changes what a preview measures.
fn probes(sql: &str) -> Result<Vec<Probe>, String> {
    let parsed = pg_query::parse(sql).map_err(|e| format!("the statement does not parse: {e}"))?;
    let mut probes = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        match node {
            NodeEnum::DeleteStmt(delete) => {
                let Some(relation) = &delete.relation else {
                    continue;
                };
                let mut from = vec![range_var_node(relation)];
                from.extend(delete.using_clause.iter().cloned());
                probes.push(rows_probe(
                    format!("DELETE {}", relation_name(relation)),
                    from,
                    delete.where_clause.as_deref(),
                    delete.with_clause.as_ref(),
                ));
            }
            NodeEnum::UpdateStmt(update) => {
                let Some(relation) = &update.relation else {
                    continue;
                };
                let mut from = vec![range_var_node(relation)];
                from.extend(update.from_clause.iter().cloned());
                probes.push(rows_probe(
                    format!("UPDATE {}", relation_name(relation)),
                    from,
                    update.where_clause.as_deref(),
                    update.with_clause.as_ref(),
                ));
            }
            NodeEnum::DropStmt(drop) if drop.remove_type == ObjectType::ObjectTable as i32 => {
                for object in &drop.objects {
                    let parts = name_parts(object);
                    probes.push(table_probe("DROP TABLE", &parts));
                }
            }
            NodeEnum::TruncateStmt(truncate) => {
                for relation in &truncate.relations {
                    if let Some(NodeEnum::RangeVar(r)) = &relation.node {
                        let mut parts = Vec::new();
                        if !r.schemaname.is_empty() {
                            parts.push(r.schemaname.clone());
                        }
                        parts.push(r.relname.clone());
                        probes.push(table_probe("TRUNCATE", &parts));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(probes)
}

fn range_var_node(relation: &protobuf::RangeVar) -> protobuf::Node {
    protobuf::Node {
        node: Some(NodeEnum::RangeVar(relation.clone())),
    }
}

fn relation_name(relation: &protobuf::RangeVar) -> String {
    if relation.schemaname.is_empty() {
        relation.relname.clone()
    } else {
        format!("{}.{}", relation.schemaname, relation.relname)
    }
}

/// The names of a `DROP TABLE` object (a list of strings: `[schema,] name`).
fn name_parts(object: &protobuf::Node) -> Vec<String> {
    match &object.node {
        Some(NodeEnum::List(list)) => list
            .items
            .iter()
            .filter_map(|item| match &item.node {
                Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn table_probe(statement: &str, parts: &[String]) -> Probe {
    if parts.is_empty() {
        return Probe::Unavailable {
            statement: statement.to_string(),
            reason: "the table name could not be read".into(),
        };
    }
    Probe::Table {
        statement: statement.to_string(),
        regclass: parts
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join("."),
        table: parts.join("."),
    }
}

/// A SELECT over the write's FROM, WHERE and WITH, with `target` as its only column.
fn select_over(
    target: &str,
    from: &[protobuf::Node],
    where_clause: Option<&protobuf::Node>,
    with_clause: Option<&protobuf::WithClause>,
) -> Result<String, String> {
    // The target list and the clauses' defaults come from the parser itself.
    let template = pg_query::parse(&format!("SELECT {target}"))
        .map_err(|e| format!("cannot build the preview query: {e}"))?;
    let mut select = template
        .protobuf
        .stmts
        .first()
        .and_then(|raw| raw.stmt.as_ref())
        .and_then(|node| match &node.node {
            Some(NodeEnum::SelectStmt(select)) => Some(select.clone()),
            _ => None,
        })
        .ok_or("cannot build the preview query")?;
    select.from_clause = from.to_vec();
    select.where_clause = where_clause.map(|w| Box::new(w.clone()));
    select.with_clause = with_clause.cloned();
    NodeEnum::SelectStmt(select)
        .deparse()
        .map_err(|e| format!("cannot build the preview query: {e}"))
}

fn rows_probe(
    statement: String,
    from: Vec<protobuf::Node>,
    where_clause: Option<&protobuf::Node>,
    with_clause: Option<&protobuf::WithClause>,
) -> Probe {
    if let Some(NodeEnum::CurrentOfExpr(_)) = where_clause.and_then(|w| w.node.as_ref()) {
        return Probe::Unavailable {
            statement,
            reason: "WHERE CURRENT OF a cursor cannot be previewed".into(),
        };
    }
    let built = select_over("count(*)", &from, where_clause, with_clause).and_then(|count| {
        select_over("1", &from, where_clause, with_clause).map(|estimate| (count, estimate))
    });
    match built {
        Ok((count, estimate)) => Probe::Rows {
            statement,
            count: safe_to_run(&count).map(|()| count),
            estimate,
        },
        Err(reason) => Probe::Unavailable { statement, reason },
    }
}

/// A row probe of a statement with bound parameters, measured with the same values.
fn with_params(probe: Probe, params: &[Option<String>]) -> Probe {
    let Probe::Rows {
        statement,
        count,
        estimate,
    } = probe
    else {
        return probe;
    };
    match bind_params(&estimate, params) {
        Ok(estimate) => Probe::Rows {
            statement,
            count: count
                .and_then(|count| bind_params(&count, params))
                .and_then(|count| safe_to_run(&count).map(|()| count)),
            estimate,
        },
        Err(reason) => Probe::Unavailable { statement, reason },
    }
}

/// `sql` with each `$n` replaced by the n-th bound value: a string literal, which like a
/// parameter sent without a type takes its type from where it stands, or NULL. The parameters
/// are found by PostgreSQL's own scanner, so a `$1` inside a literal or a comment stays as it is.
fn bind_params(sql: &str, params: &[Option<String>]) -> Result<String, String> {
    let unreadable = || "the parameters could not be placed in the preview query".to_string();
    let scanned = pg_query::scan(sql).map_err(|_| unreadable())?;
    let mut bound = String::with_capacity(sql.len());
    let mut copied = 0;
    for token in scanned
        .tokens
        .iter()
        .filter(|t| t.token == protobuf::Token::Param as i32)
    {
        let start = usize::try_from(token.start).map_err(|_| unreadable())?;
        let end = usize::try_from(token.end).map_err(|_| unreadable())?;
        let number: usize = sql
            .get(start..end)
            .and_then(|text| text.strip_prefix('$'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(unreadable)?;
        let value = number
            .checked_sub(1)
            .and_then(|i| params.get(i))
            .ok_or_else(|| format!("parameter ${number} has no bound value"))?;
        bound.push_str(sql.get(copied..start).ok_or_else(unreadable)?);
        match value {
            // The side connection reads literals with standard_conforming_strings on.
            Some(text) => {
                bound.push('\'');
                bound.push_str(&text.replace('\'', "''"));
                bound.push('\'');
            }
            None => bound.push_str("NULL"),
        }
        copied = end;
    }
    bound.push_str(sql.get(copied..).ok_or_else(unreadable)?);
    Ok(bound)
}

/// A derived count runs only when it reads and computes: a plain SELECT calling only
/// functions known to change nothing.
fn safe_to_run(sql: &str) -> Result<(), String> {
    match classify(sql) {
        Classification::Parsed(statements) => {
            for statement in &statements {
                let unknown: Vec<&str> = statement
                    .functions
                    .iter()
                    .map(String::as_str)
                    .filter(|f| {
                        let bare = f.strip_prefix("pg_catalog.").unwrap_or(f);
                        !SAFE_FUNCTIONS.contains(&bare)
                    })
                    .collect();
                if !unknown.is_empty() {
                    return Err(format!(
                        "not counted: it calls {}, which the preview does not run",
                        unknown.join(", ")
                    ));
                }
                if statement.kinds != [StatementKind::Select] {
                    return Err("not counted: its WITH queries change data".into());
                }
            }
            Ok(())
        }
        Classification::Unparseable(e) => Err(format!("not counted: {e}")),
    }
}

async fn connect(target: &UpstreamTarget) -> Result<tokio_postgres::Client, String> {
    let mut config = target.side_config("airlock-preview", CONNECT_TIMEOUT)?;
    // Read-only by default, bounded in time, and reading SQL as the classifier does.
    config.options(format!(
        "-c default_transaction_read_only=on -c statement_timeout={} \
         -c lock_timeout={} -c standard_conforming_strings=on",
        COUNT_TIMEOUT.as_millis(),
        COUNT_TIMEOUT.as_millis()
    ));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "preview: upstream connection ended with an error");
        }
    });
    Ok(client)
}

/// Runs `sql` in a READ ONLY transaction and returns the first column of its first row.
async fn read_only_value(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let batch = format!("BEGIN READ ONLY; {sql}; ROLLBACK");
    let result = client.simple_query(&batch).await;
    if result.is_err() {
        // The failed statement left the transaction aborted.
        let _ = client.simple_query("ROLLBACK").await;
    }
    let messages = result.map_err(|e| match e.as_db_error() {
        Some(db) => format!("{}|{}", db.code().code(), db.message()),
        None => format!("|{e}"),
    })?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| "|no row came back".to_string())
}

/// The message of an error from [`read_only_value`], without its SQLSTATE.
fn message_of(error: &str) -> &str {
    error.split_once('|').map_or(error, |(_, m)| m)
}

async fn measure(client: &tokio_postgres::Client, probe: Probe) -> Impact {
    match probe {
        Probe::Unavailable { statement, reason } => Impact::Unavailable { statement, reason },
        Probe::Table {
            statement,
            regclass,
            table,
        } => {
            let sql = format!(
                "SELECT c.reltuples::bigint || ' ' || pg_total_relation_size(c.oid) \
                 FROM pg_class c WHERE c.oid = to_regclass('{}')",
                regclass.replace('\'', "''")
            );
            let sizes = read_only_value(client, &sql).await.and_then(|text| {
                let (rows, bytes) = text.split_once(' ').ok_or("|unexpected answer")?;
                Ok((
                    rows.parse::<i64>().map_err(|_| "|unexpected answer")?,
                    bytes.parse::<i64>().map_err(|_| "|unexpected answer")?,
                ))
            });
            match sizes {
                Ok((estimated_rows, bytes)) => Impact::Table {
                    statement,
                    table,
                    estimated_rows,
                    bytes,
                },
                Err(e) if e == "|no row came back" => Impact::Unavailable {
                    statement,
                    reason: format!("table {table} does not exist"),
                },
                Err(e) => Impact::Unavailable {
                    statement,
                    reason: message_of(&e).to_string(),
                },
            }
        }
        Probe::Rows {
            statement,
            count,
            estimate,
        } => {
            let note = match count {
                Ok(count) => match read_only_value(client, &count).await {
                    Ok(text) => match text.parse::<u64>() {
                        Ok(rows) => {
                            return Impact::Rows {
                                statement,
                                rows,
                                exact: true,
                                note: None,
                            }
                        }
                        Err(_) => "the count came back unreadable".to_string(),
                    },
                    Err(e) if e.starts_with(&format!("{QUERY_CANCELED}|")) => format!(
                        "the count took longer than {}",
                        humantime::format_duration(COUNT_TIMEOUT)
                    ),
                    Err(e) => {
                        return Impact::Unavailable {
                            statement,
                            reason: message_of(&e).to_string(),
                        }
                    }
                },
                Err(reason) => reason,
            };
            match planner_rows(client, &estimate).await {
                Ok(rows) => Impact::Rows {
                    statement,
                    rows,
                    exact: false,
                    note: Some(note),
                },
                Err(e) => Impact::Unavailable {
                    statement,
                    reason: format!("{note}; no estimate either: {}", message_of(&e)),
                },
            }
        }
    }
}

/// The planner's row estimate of `select` (EXPLAIN without ANALYZE: nothing runs).
async fn planner_rows(client: &tokio_postgres::Client, select: &str) -> Result<u64, String> {
    let plan = read_only_value(client, &format!("EXPLAIN (FORMAT JSON) {select}")).await?;
    let plan: serde_json::Value =
        serde_json::from_str(&plan).map_err(|_| "|the plan came back unreadable".to_string())?;
    plan.get(0)
        .and_then(|p| p.get("Plan"))
        .and_then(|p| p.get("Plan Rows"))
        .and_then(serde_json::Value::as_f64)
        .map(|rows| rows.max(0.0).round() as u64)
        .ok_or_else(|| "|the plan has no row estimate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_of(sql: &str) -> Result<String, String> {
        match probes(sql).unwrap().remove(0) {
            Probe::Rows { count, .. } => count,
            other => panic!("not a row probe: {other:?}"),
        }
    }

    #[test]
    fn counts_keep_the_writes_from_where_and_with() {
        assert_eq!(
            count_of("DELETE FROM items WHERE id >= 2 RETURNING *").unwrap(),
            "SELECT count(*) FROM items WHERE id >= 2"
        );
        assert_eq!(
            count_of("update only s.items i set name = 'x' from other o where o.id = i.id")
                .unwrap(),
            "SELECT count(*) FROM ONLY s.items i, other o WHERE o.id = i.id"
        );
        assert_eq!(
            count_of("with old as (select id from items where id < 3) delete from items using old where items.id = old.id").unwrap(),
            "WITH old AS (SELECT id FROM items WHERE id < 3) SELECT count(*) FROM items, old WHERE items.id = old.id"
        );
        assert_eq!(
            count_of("DELETE FROM items").unwrap(),
            "SELECT count(*) FROM items"
        );
    }

    #[test]
    fn counts_that_could_change_something_are_only_estimated() {
        let refused = count_of("DELETE FROM items WHERE pg_terminate_backend(id) AND id > 1");
        assert!(
            refused.unwrap_err().contains("pg_terminate_backend"),
            "a side-effecting function must not run"
        );
        let refused =
            count_of("WITH d AS (DELETE FROM a RETURNING id) DELETE FROM items USING d WHERE items.id = d.id");
        assert!(refused.unwrap_err().contains("WITH"));
        assert!(count_of("DELETE FROM items WHERE lower(name) = 'x' AND created < now()").is_ok());
    }

    #[test]
    fn bound_parameters_are_counted_with_their_values() {
        let count =
            count_of("DELETE FROM items WHERE id < $1 AND name <> $2 AND note = '$1'").unwrap();
        assert_eq!(
            bind_params(&count, &[Some("3".into()), Some("it's".into())]).unwrap(),
            "SELECT count(*) FROM items WHERE id < '3' AND name <> 'it''s' AND note = '$1'"
        );
        assert_eq!(
            bind_params("SELECT count(*) FROM t WHERE a = $1", &[None]).unwrap(),
            "SELECT count(*) FROM t WHERE a = NULL"
        );
        assert!(bind_params("SELECT count(*) FROM t WHERE a = $2", &[None])
            .unwrap_err()
            .contains("$2"));
        let refused = with_params(
            probes("DELETE FROM items WHERE id = $1 AND pg_sleep(10) IS NULL")
                .unwrap()
                .remove(0),
            &[Some("1".into())],
        );
        assert!(
            matches!(&refused, Probe::Rows { count: Err(reason), estimate, .. }
                if reason.contains("pg_sleep") && estimate.contains("'1'")),
            "{refused:?}"
        );
    }

    #[test]
    fn drops_and_truncates_name_their_tables() {
        let probes = probes("DROP TABLE items, \"Odd\".\"T\"; TRUNCATE s.t; DROP VIEW v").unwrap();
        let tables: Vec<(String, String)> = probes
            .iter()
            .map(|p| match p {
                Probe::Table {
                    statement,
                    regclass,
                    ..
                } => (statement.clone(), regclass.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            tables,
            vec![
                ("DROP TABLE".into(), "\"items\"".into()),
                ("DROP TABLE".into(), "\"Odd\".\"T\"".into()),
                ("TRUNCATE".into(), "\"s\".\"t\"".into()),
            ]
        );
    }

    #[test]
    fn cursor_writes_and_nested_writes_are_not_measured() {
        assert!(matches!(
            probes("DELETE FROM items WHERE CURRENT OF c").unwrap()[0],
            Probe::Unavailable { .. }
        ));
        assert!(
            probes("WITH d AS (DELETE FROM items RETURNING id) SELECT * FROM d")
                .unwrap()
                .is_empty()
        );
    }
}
