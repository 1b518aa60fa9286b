//! Running one permitted exec statement on its upstream MySQL/MariaDB with `mysql_async`: a
//! fresh connection with the connection's stored credential, its SQL reading pinned as the
//! MySQL adapter pins it (so the server reads the text as the classifier did), the text sent
//! once, every result set's rows as text (capped) and masked by the session's masker, then the
//! connection is closed. No LOCAL INFILE handler is set, so the server cannot read client files.
//! Errors that could describe the credential are logged here and replaced by a generic message.

use crate::upstream::{tag_for, RunError, StatementResult};
use airlock_core::classify::Classification;
use airlock_core::config::ConnectionConfig;
use airlock_core::mask::{ColumnAction, ColumnOrigin, ColumnSource, SessionMasker};
use airlock_core::response::ResponseCapture;
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, OptsBuilder, Row, Value};
use std::net::SocketAddr;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_PORT: u16 = 3306;

/// Host and port of an `address` (`host:port`, `[v6]:port`, or a host alone).
fn host_port(address: &str) -> Result<(String, u16), String> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Ok((socket.ip().to_string(), socket.port()));
    }
    match address.rsplit_once(':') {
        Some((host, port)) => port
            .parse()
            .map(|port| (host.to_string(), port))
            .map_err(|_| format!("bad port in `{address}`")),
        None => Ok((address.to_string(), DEFAULT_PORT)),
    }
}

fn statement_error(e: mysql_async::Error, conn: &ConnectionConfig) -> RunError {
    match e {
        mysql_async::Error::Server(server) => RunError::Statement(format!(
            "ERROR {} ({}): {}",
            server.code, server.state, server.message
        )),
        mysql_async::Error::Driver(mysql_async::DriverError::LocalInfile(_)) => RunError::Statement(
            "the upstream asked for a local file (LOAD DATA LOCAL), which the gateway never sends"
                .into(),
        ),
        other => {
            tracing::error!(connection = %conn.name, error = %other, "exec: the upstream connection failed");
            RunError::Unreachable
        }
    }
}

async fn connect(conn: &ConnectionConfig) -> Result<Conn, RunError> {
    let (host, port) = host_port(&conn.address).map_err(|reason| {
        tracing::error!(connection = %conn.name, %reason, "exec: bad upstream address");
        RunError::Unreachable
    })?;
    let opts = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .prefer_socket(false)
        .user(conn.user.clone())
        .pass(conn.password.as_ref().map(|p| p.expose().clone()))
        .db_name(conn.database.clone())
        .init(vec![airlock_mysql::upstream::pin_reading_statement()]);
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            tracing::error!(connection = %conn.name, error = %e, "exec: cannot connect upstream");
            Err(RunError::Unreachable)
        }
        Err(_) => {
            tracing::error!(connection = %conn.name, "exec: connecting upstream timed out");
            Err(RunError::Unreachable)
        }
    }
}

fn plan(columns: &[Column], masker: Option<&SessionMasker>) -> Vec<ColumnAction> {
    let Some(masker) = masker else {
        return vec![ColumnAction::Pass; columns.len()];
    };
    let sources: Vec<ColumnSource> = columns
        .iter()
        .map(|c| {
            let table = c.org_table_str();
            ColumnSource {
                label: c.name_str().into_owned(),
                origin: (!table.is_empty()).then(|| ColumnOrigin {
                    schema: c.schema_str().into_owned(),
                    table: table.into_owned(),
                    column: c.org_name_str().into_owned(),
                }),
                // Text is all exec sees; every column may be scanned.
                type_oid: 0,
            }
        })
        .collect();
    masker.plan(&sources)
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        // The text protocol sends bytes; any other value is rendered as SQL would print it.
        other => Some(other.as_sql(true)),
    }
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
    let mut client = connect(conn).await?;
    let outcome = collect(&mut client, sql, classification, masker, capture).await;
    if let Err(e) = client.disconnect().await {
        tracing::debug!(error = %e, "exec: upstream connection ended with an error");
    }
    outcome.map_err(|e| statement_error(e, conn))
}

async fn collect(
    client: &mut Conn,
    sql: &str,
    classification: &Classification,
    masker: Option<&SessionMasker>,
    capture: &mut ResponseCapture,
) -> Result<Vec<StatementResult>, mysql_async::Error> {
    let mut answer = client.query_iter(sql).await?;
    let mut results = Vec::new();
    loop {
        let columns = answer.columns().unwrap_or_else(|| Vec::new().into());
        let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
        let actions = plan(&columns, masker);
        if !names.is_empty() {
            capture.columns(names.clone());
        }
        let rows: Vec<Row> = answer.collect().await?;
        let mut result = StatementResult {
            tag: String::new(),
            rows_affected: 0,
            columns: names,
            rows: Vec::new(),
            truncated: false,
        };
        for row in &rows {
            let texts: Vec<Option<String>> = (0..row.len())
                .map(|i| row.as_ref(i).and_then(text_of))
                .collect();
            result.push_masked_row(
                texts.iter().map(Option::as_deref),
                &actions,
                masker,
                capture,
            );
        }
        result.rows_affected = if columns.is_empty() {
            answer.affected_rows()
        } else {
            rows.len() as u64
        };
        result.tag = tag_for(classification, results.len(), result.rows_affected);
        results.push(result);
        if answer.is_empty() {
            return Ok(results);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            host_port("127.0.0.1:3307").unwrap(),
            ("127.0.0.1".into(), 3307)
        );
        assert_eq!(host_port("[::1]:3307").unwrap(), ("::1".into(), 3307));
        assert_eq!(
            host_port("db.internal:13306").unwrap(),
            ("db.internal".into(), 13306)
        );
        assert_eq!(
            host_port("db.internal").unwrap(),
            ("db.internal".into(), 3306)
        );
        assert!(host_port("db:x").is_err());
    }
}
