//! Where result columns come from: the schema, table and column name behind a
//! RowDescription's (table OID, attribute number), read from the upstream's own catalog over a
//! side connection that logs in with the connection's credential, and cached per connection.
//! Masking rules on `table.column` are decided from these names, never from the SQL text.

use crate::upstream::UpstreamTarget;
use airlock_core::mask::ColumnOrigin;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a table's column names are trusted: a rename shows up after this at the latest.
const FRESH_FOR: Duration = Duration::from_secs(60);

const COLUMNS_OF_TABLES: &str =
    "SELECT c.oid, a.attnum, n.nspname::text, c.relname::text, a.attname::text \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE a.attrelid = ANY($1) AND a.attnum > 0";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot reach the upstream to read its catalog")]
    Unreachable,
    #[error("reading the upstream catalog failed: {0}")]
    Query(String),
}

#[derive(Debug)]
struct Table {
    read_at: Instant,
    schema: String,
    name: String,
    columns: HashMap<i16, String>,
}

/// The column origins of one connection's upstream.
#[derive(Debug)]
pub struct Catalog {
    target: UpstreamTarget,
    tables: Mutex<HashMap<u32, Table>>,
}

impl Catalog {
    pub fn new(target: UpstreamTarget) -> Catalog {
        Catalog {
            target,
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// The origin of each `(table OID, attribute number)`; `None` where the column is not a
    /// table's (OID 0). Tables not cached (or cached too long ago) are read in one query.
    pub async fn origins(
        &self,
        columns: &[(u32, i16)],
    ) -> Result<Vec<Option<ColumnOrigin>>, CatalogError> {
        let missing: Vec<u32> = {
            let tables = self.tables.lock().map_err(|_| CatalogError::Unreachable)?;
            let mut missing: Vec<u32> = columns
                .iter()
                .map(|(oid, _)| *oid)
                .filter(|oid| {
                    *oid != 0
                        && tables
                            .get(oid)
                            .is_none_or(|t| t.read_at.elapsed() > FRESH_FOR)
                })
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if !missing.is_empty() {
            let read = self.read(&missing).await?;
            if let Ok(mut tables) = self.tables.lock() {
                tables.extend(read);
            }
        }
        let tables = self.tables.lock().map_err(|_| CatalogError::Unreachable)?;
        Ok(columns
            .iter()
            .map(|(oid, attnum)| {
                let table = tables.get(oid)?;
                Some(ColumnOrigin {
                    schema: table.schema.clone(),
                    table: table.name.clone(),
                    column: table.columns.get(attnum)?.clone(),
                })
            })
            .collect())
    }

    async fn read(&self, oids: &[u32]) -> Result<HashMap<u32, Table>, CatalogError> {
        let config = self
            .target
            .side_config("airlock-catalog", CONNECT_TIMEOUT)
            .map_err(|_| CatalogError::Unreachable)?;
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            tracing::error!(error = %e, "catalog: cannot connect to the upstream");
            CatalogError::Unreachable
        })?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "catalog: side connection ended with an error");
            }
        });
        let rows = query_columns(&client, oids).await;
        drop(client);
        let _ = driver.await;
        let now = Instant::now();
        let mut tables: HashMap<u32, Table> = HashMap::new();
        for (oid, attnum, schema, name, column) in rows? {
            tables
                .entry(oid)
                .or_insert_with(|| Table {
                    read_at: now,
                    schema,
                    name,
                    columns: HashMap::new(),
                })
                .columns
                .insert(attnum, column);
        }
        Ok(tables)
    }
}

/// Reads the columns of `oids` through `client`: (table OID, attnum, schema, table, column).
pub async fn query_columns(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<Vec<(u32, i16, String, String, String)>, CatalogError> {
    let rows = client
        .query(COLUMNS_OF_TABLES, &[&oids])
        .await
        .map_err(|e| CatalogError::Query(e.to_string()))?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)
                    .map_err(|e| CatalogError::Query(e.to_string()))?,
                row.try_get(1)
                    .map_err(|e| CatalogError::Query(e.to_string()))?,
                row.try_get(2)
                    .map_err(|e| CatalogError::Query(e.to_string()))?,
                row.try_get(3)
                    .map_err(|e| CatalogError::Query(e.to_string()))?,
                row.try_get(4)
                    .map_err(|e| CatalogError::Query(e.to_string()))?,
            ))
        })
        .collect()
}
