//! Running one permitted exec statement on its upstream PostgreSQL with `tokio-postgres`: a
//! fresh connection with the connection's stored credential, one simple query, the rows as text
//! (capped) and masked by the session's masker, then the connection is dropped. The credential
//! only goes to the upstream; errors that could describe it are logged here and replaced by a
//! generic message. Before the decision, calls to user-defined functions are judged by their
//! volatility in the upstream's catalog the same way.
//!
//! When column rules apply, the statement is first prepared (not run) to learn where its result
//! columns come from, as the PostgreSQL adapter learns it from a RowDescription; a text that
//! cannot be prepared (several statements) is then refused rather than masked by guesswork.

use airlock_core::classify::Classification;
use airlock_core::config::ConnectionConfig;
use airlock_core::functions::{self, Catalog};
use airlock_core::mask::{ColumnAction, ColumnOrigin, ColumnSource, Masked, SessionMasker};
use airlock_core::response::ResponseCapture;
use airlock_postgres::upstream::UpstreamTarget;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// Rows returned per statement; the rest is counted but not sent.
pub const MAX_ROWS: usize = 1000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one statement of the exec produced.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatementResult {
    /// The statement's kind and row count, as a command tag reads (`DELETE 1`, `SELECT 3`).
    /// `tokio-postgres` does not expose the upstream's own tag, so it is rebuilt from the
    /// classification the gate decided on.
    pub tag: String,
    /// Rows returned or affected.
    pub rows_affected: u64,
    pub columns: Vec<String>,
    /// Text values, `null` for SQL NULL; at most [`MAX_ROWS`].
    pub rows: Vec<Vec<Option<String>>>,
    /// Whether rows beyond [`MAX_ROWS`] were left out.
    pub truncated: bool,
}

impl StatementResult {
    /// Masks one row's text values by the column `actions` (counting into `capture`), lets the
    /// capture see it, and keeps it when there is room.
    pub(crate) fn push_masked_row<'v>(
        &mut self,
        values: impl Iterator<Item = Option<&'v str>>,
        actions: &[ColumnAction],
        masker: Option<&SessionMasker>,
        capture: &mut ResponseCapture,
    ) {
        let values: Vec<Option<String>> = values
            .enumerate()
            .map(|(i, value)| {
                let value = value?;
                let action = actions.get(i).copied().unwrap_or(ColumnAction::Scan);
                match masker.map(|m| m.apply(action, value.as_bytes(), &mut capture.masked)) {
                    None | Some(Masked::Unchanged) => Some(value.to_string()),
                    Some(Masked::Null) => None,
                    Some(Masked::Text(text)) => Some(text),
                }
            })
            .collect();
        capture.row(values.iter().map(|v| v.as_deref().map(str::as_bytes)));
        if self.rows.len() < MAX_ROWS {
            self.rows.push(values);
        } else {
            self.truncated = true;
        }
    }
}

/// Why the statement produced no result.
#[derive(Debug)]
pub enum RunError {
    /// The upstream could not be reached or refused the gateway; the detail is in the log.
    Unreachable,
    /// The upstream ran the statement and reported an error (its own message and SQLSTATE).
    Statement(String),
    /// The result could not be masked, so the statement was not run.
    Unmaskable(String),
}

impl RunError {
    pub fn message(&self, connection: &str) -> String {
        match self {
            RunError::Unreachable => format!(
                "the upstream of connection `{connection}` is unreachable or refused the \
                 gateway's credential (details in the gateway log)"
            ),
            RunError::Statement(message) => message.clone(),
            RunError::Unmaskable(reason) => format!("airlock: {reason}"),
        }
    }
}

fn pg_config(conn: &ConnectionConfig) -> Result<tokio_postgres::Config, String> {
    let mut config = UpstreamTarget::of(conn).side_config("airlock-exec", CONNECT_TIMEOUT)?;
    // The classifier read the SQL as the PostgreSQL adapter pins it; the upstream must too.
    config.options("-c standard_conforming_strings=on");
    Ok(config)
}

/// The tag of the `index`th statement, from its classified kind.
pub(crate) fn tag_for(classification: &Classification, index: usize, rows: u64) -> String {
    let kind = match classification {
        Classification::Parsed(statements) => statements
            .get(index)
            .map(|s| s.kind.name())
            .unwrap_or("OTHER"),
        Classification::Unparseable(_) => "OTHER",
    };
    format!("{kind} {rows}")
}

fn statement_error(e: tokio_postgres::Error, conn: &ConnectionConfig) -> RunError {
    match e.as_db_error() {
        Some(db) => RunError::Statement(format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        )),
        None => {
            tracing::error!(connection = %conn.name, error = %e, "exec: the upstream connection failed");
            RunError::Unreachable
        }
    }
}

/// Where the result columns of `sql` come from: the statement is prepared (never run) and its
/// columns' tables are read from the catalog.
async fn column_origins(
    client: &tokio_postgres::Client,
    conn: &ConnectionConfig,
    sql: &str,
) -> Result<Vec<Option<ColumnOrigin>>, RunError> {
    let statement = client.prepare(sql).await.map_err(|e| {
        let message = e.as_db_error().map(|db| db.message().to_string());
        match message {
            // "cannot insert multiple commands into a prepared statement"
            Some(m) if m.contains("multiple commands") => RunError::Unmaskable(
                "with column masking on this connection, exec runs one statement at a time".into(),
            ),
            _ => statement_error(e, conn),
        }
    })?;
    let columns = statement.columns();
    let mut oids: Vec<u32> = columns
        .iter()
        .filter_map(|c| c.table_oid())
        .filter(|o| *o != 0)
        .collect();
    oids.sort_unstable();
    oids.dedup();
    let mut known: HashMap<(u32, i16), ColumnOrigin> = HashMap::new();
    if !oids.is_empty() {
        let rows = airlock_postgres::catalog::query_columns(client, &oids)
            .await
            .map_err(|e| {
                RunError::Unmaskable(format!(
                    "the result's columns cannot be resolved for masking ({e})"
                ))
            })?;
        for (oid, attnum, schema, table, column) in rows {
            known.insert(
                (oid, attnum),
                ColumnOrigin {
                    schema,
                    table,
                    column,
                },
            );
        }
    }
    Ok(columns
        .iter()
        .map(|c| {
            let key = (c.table_oid()?, c.column_id()?);
            known.get(&key).cloned()
        })
        .collect())
}

/// Runs `sql` on the upstream of `conn` and returns one result per statement, its values
/// masked by `masker`; what the caller receives is also what `capture` keeps.
pub async fn run(
    conn: &ConnectionConfig,
    sql: &str,
    classification: &Classification,
    masker: Option<&SessionMasker>,
    capture: &mut ResponseCapture,
) -> Result<Vec<StatementResult>, RunError> {
    let config = pg_config(conn).map_err(|reason| {
        tracing::error!(connection = %conn.name, %reason, "exec: bad upstream address");
        RunError::Unreachable
    })?;
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        tracing::error!(connection = %conn.name, error = %e, "exec: cannot connect upstream");
        RunError::Unreachable
    })?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "exec: upstream connection ended with an error");
        }
    });
    let origins = match masker {
        Some(masker) if masker.needs_origins() => match column_origins(&client, conn, sql).await {
            Ok(origins) => Some(origins),
            Err(e) => {
                drop(client);
                let _ = driver.await;
                return Err(e);
            }
        },
        _ => None,
    };
    let messages = client.simple_query(sql).await;
    drop(client);
    // The connection ends once the client is gone; waiting keeps the upstream session from
    // outliving the exec.
    let _ = driver.await;
    let messages = messages.map_err(|e| statement_error(e, conn))?;
    let mut results = Vec::new();
    let mut current: Option<StatementResult> = None;
    let mut actions: Vec<ColumnAction> = Vec::new();
    let fresh = || StatementResult {
        tag: String::new(),
        rows_affected: 0,
        columns: Vec::new(),
        rows: Vec::new(),
        truncated: false,
    };
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                let mut result = fresh();
                result.columns = columns.iter().map(|c| c.name().to_string()).collect();
                capture.columns(result.columns.clone());
                actions = match masker {
                    Some(masker) => {
                        let sources: Vec<ColumnSource> = result
                            .columns
                            .iter()
                            .enumerate()
                            .map(|(i, label)| ColumnSource {
                                label: label.clone(),
                                origin: origins.as_ref().and_then(|o| o.get(i).cloned().flatten()),
                                // Text is all exec sees; every column may be scanned.
                                type_oid: 0,
                            })
                            .collect();
                        masker.plan(&sources)
                    }
                    None => vec![ColumnAction::Pass; result.columns.len()],
                };
                current = Some(result);
            }
            SimpleQueryMessage::Row(row) => {
                current.get_or_insert_with(fresh).push_masked_row(
                    (0..row.len()).map(|i| row.get(i)),
                    &actions,
                    masker,
                    capture,
                );
            }
            SimpleQueryMessage::CommandComplete(rows) => {
                let mut result = current.take().unwrap_or_else(fresh);
                result.rows_affected = rows;
                result.tag = tag_for(classification, results.len(), rows);
                results.push(result);
            }
            // Later versions of the enum may add messages; none of them carries a result.
            _ => {}
        }
    }
    Ok(results)
}

/// The classification with calls to user-defined functions judged by their volatility in the
/// upstream's catalog (see `airlock_core::functions`), looked up on a short connection with
/// the connection's credential. When the lookup fails, the calls count as volatile.
pub async fn judge_functions(
    conn: &ConnectionConfig,
    classification: Arc<Classification>,
) -> Arc<Classification> {
    let names = functions::names_to_look_up(&classification);
    if names.is_empty() {
        return classification;
    }
    let catalog = match lookup(conn, &names).await {
        Ok(catalog) => catalog,
        Err(reason) => {
            tracing::warn!(connection = %conn.name, %reason, "exec: cannot look up function volatility; calls count as volatile");
            Catalog::new()
        }
    };
    functions::judge_volatility(classification, &catalog)
}

async fn lookup(conn: &ConnectionConfig, names: &[String]) -> Result<Catalog, String> {
    let (client, connection) = pg_config(conn)?
        .connect(NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let catalog = airlock_postgres::volatility::lookup(&client, names).await;
    drop(client);
    let _ = driver.await;
    catalog
}
