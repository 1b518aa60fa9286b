//! [`SqliteStore`]: the embedded SQLite backend. Opens the database with WAL and
//! `synchronous=NORMAL` (a commit is in the WAL before it returns: it survives a crash of the
//! gateway; only an OS crash can lose the last commits), foreign keys and a busy timeout, applies
//! the migrations, and implements each [`Store`] method with runtime-checked queries. Writes that
//! read before they write (`cast_vote`) run in `BEGIN IMMEDIATE` transactions so concurrent
//! writers serialize.
//!
//! The recorder's copy of the journal, the one write that runs all the time, goes through a
//! connection of its own (rusqlite, on a blocking thread): its INSERTs are bound and stepped
//! straight into SQLite, without sqlx's per-value argument copies and worker round trips.
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::chain::ChainLink;
use airlock_core::store::{
    settle, ApprovalRecord, ApprovalState, ChainSpan, CheckpointRecord, DeliveryRecord,
    EventFilter, EventRecord, JournalEvent, Millis, NewApproval, NewCheckpoint, NewDelivery,
    NewPolicyChange, NewSession, PolicyChangeRecord, PruneReport, SessionEvent, SessionFilter,
    SessionRecord, Store, StoreError, StoredConnection, TokenRecord, Vote,
};
use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use crate::codec::{self, to_json};
use crate::error::{db, event_writer, migrate};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a connection waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The page size of a newly created database (SQLite's default is 4096).
const PAGE_SIZE: u32 = 16 * 1024;
/// Connections in the pool of a file database.
const MAX_CONNECTIONS: u32 = 4;
/// Sessions returned by `list_sessions` when the filter sets no limit.
const DEFAULT_SESSION_LIMIT: i64 = 1000;

/// Starts a write transaction that takes the write lock at once, so that what it reads cannot
/// change before it writes.
const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

macro_rules! session_select {
    () => {
        "SELECT s.id, s.protocol, s.connection, s.subject, s.display_name, s.\"groups\", \
         s.auth_method, s.client_addr, s.started_at, s.ended_at, s.end_reason, \
         (SELECT COUNT(*) FROM events e WHERE e.session_id = s.id) AS event_count \
         FROM sessions s"
    };
}

macro_rules! approval_select {
    () => {
        "SELECT a.id, a.session_id, a.requester_subject, a.requester_name, a.requester_groups, \
         a.connection, a.protocol, a.operation, a.params, a.statement_kinds, a.policy, a.rule, \
         a.reviewers, a.approvals_needed, a.created_at, a.expires_at, a.state, a.decided_at, \
         a.reason, a.all_groups_must_approve, a.escalate_at, a.escalate_to, a.replacement, \
         a.preview, a.approval_window_ms, a.remind_after_ms, a.claimed_at, a.claimed_by_session \
         FROM approvals a"
    };
}

macro_rules! vote_select {
    () => {
        "SELECT v.approval_id, v.reviewer_subject, v.reviewer_name, v.reviewer_groups, \
         v.approve, v.reason, v.at, v.replacement FROM votes v"
    };
}

/// The embedded SQLite store. Cloning is cheap and shares the connections.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The connection the recorder's copy writes events through; `None` once closed.
    events: Arc<Mutex<Option<rusqlite::Connection>>>,
    /// The directory of a private database ([`SqliteStore::open_in_memory`]), removed when the
    /// last clone of the store is dropped.
    _private: Option<Arc<tempfile::TempDir>>,
}

impl SqliteStore {
    /// Opens (creating it, and its parent directories, when missing) the database at
    /// `url_or_path`: a `sqlite://path/to/airlock.db` URL (query parameters as sqlx accepts them)
    /// or a plain file path. `:memory:` and `sqlite::memory:` open a private database as
    /// [`open_in_memory`](Self::open_in_memory) does. Applies pending migrations.
    pub async fn open(url_or_path: &str) -> Result<SqliteStore, StoreError> {
        let location = url_or_path.trim();
        if location.is_empty() {
            return Err(StoreError::Backend("no database location given".to_owned()));
        }
        if is_in_memory(location) {
            return SqliteStore::open_in_memory().await;
        }
        let options = if location.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(location).map_err(db)?
        } else {
            SqliteConnectOptions::new().filename(location)
        };
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| {
                    StoreError::Backend(format!(
                        "cannot create the directory {}: {e}",
                        parent.display()
                    ))
                })?;
            }
        }
        // Records hold statement text and parameters: readable by the owner only. SQLite gives
        // its -wal and -shm files the database file's mode.
        let path = options.get_filename().to_path_buf();
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        SqliteStore::open_with(options, None).await
    }

    async fn open_with(
        options: SqliteConnectOptions,
        private: Option<Arc<tempfile::TempDir>>,
    ) -> Result<SqliteStore, StoreError> {
        let options = options
            .create_if_missing(true)
            // For a new database: the recorder appends events in batches of hundreds of rows,
            // and larger pages take them in fewer B-tree pages, WAL frames and writes.
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let path = options.get_filename().to_path_buf();
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db)?;
        MIGRATOR.run(&pool).await.map_err(migrate)?;
        let events = open_event_writer(&path)?;
        tracing::debug!(path = %path.display(), "opened the SQLite store");
        Ok(SqliteStore {
            pool,
            events: Arc::new(Mutex::new(Some(events))),
            _private: private,
        })
    }

    /// Opens a fresh private database with the schema applied, in a temporary directory
    /// removed with the store: nothing survives it. Meant for tests.
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-store-")
            .tempdir()
            .map_err(|e| {
                StoreError::Backend(format!("cannot create a private database directory: {e}"))
            })?;
        let options = SqliteConnectOptions::new().filename(dir.path().join("airlock.db"));
        SqliteStore::open_with(options, Some(Arc::new(dir))).await
    }

    /// Waits for in-flight work and closes every connection; the store is unusable afterwards.
    pub async fn close(&self) {
        self.pool.close().await;
        let events = self.events.lock().ok().and_then(|mut events| events.take());
        if let Some(Err((_, e))) = events.map(rusqlite::Connection::close) {
            tracing::warn!(error = %e, "closing the event writer's connection failed");
        }
    }
}

/// Opens the event writer's connection to the migrated database at `path`, with the pool's
/// settings (WAL being a property of the file).
fn open_event_writer(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let connection = rusqlite::Connection::open(path).map_err(event_writer)?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(event_writer)?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(event_writer)?;
    // The copy checks each batch's sessions once itself (see `ingest`): enforced per row, the
    // foreign key also makes SQLite keep a statement journal for every multi-row INSERT, which
    // cost about a fifth of each row's insert.
    connection
        .pragma_update(None, "foreign_keys", "OFF")
        .map_err(event_writer)?;
    Ok(connection)
}

/// Whether a location names an in-memory database rather than a file.
fn is_in_memory(location: &str) -> bool {
    let rest = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
        .unwrap_or(location);
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|param| param == "mode=memory")
}

/// Loads one request and its votes on `conn`.
async fn load_approval(
    conn: &mut SqliteConnection,
    id: i64,
) -> Result<Option<ApprovalRecord>, StoreError> {
    let row = sqlx::query(concat!(approval_select!(), " WHERE a.id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let votes = load_votes(conn, id).await?;
    codec::approval(&row, votes).map(Some)
}

/// The votes on request `id`, in the order they were cast.
async fn load_votes(conn: &mut SqliteConnection, id: i64) -> Result<Vec<Vote>, StoreError> {
    sqlx::query(concat!(
        vote_select!(),
        " WHERE v.approval_id = ? ORDER BY v.at, v.rowid"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?
    .iter()
    .map(|row| codec::vote(row).map(|(_, vote)| vote))
    .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn create_token(&self, token: &TokenRecord, hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, name, \"groups\", hash, created_at, expires_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(to_json(&token.groups, "token groups")?)
        .bind(hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(
            "SELECT id, name, \"groups\", created_at, expires_at, revoked_at \
             FROM tokens WHERE hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(codec::token)
        .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        sqlx::query(
            "SELECT id, name, \"groups\", created_at, expires_at, revoked_at \
             FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::token)
        .collect()
    }

    async fn count_tokens(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt("negative token count".to_owned()))
    }

    async fn revoke_token(&self, id: &str, at: Millis) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(result.rows_affected() > 0)
    }

    async fn open_session(&self, session: &NewSession) -> Result<i64, StoreError> {
        let result = sqlx::query(
            "INSERT INTO sessions (protocol, connection, subject, display_name, \"groups\", \
             auth_method, client_addr, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&session.protocol)
        .bind(&session.connection)
        .bind(&session.subject)
        .bind(&session.display_name)
        .bind(to_json(&session.groups, "session groups")?)
        .bind(&session.auth_method)
        .bind(&session.client_addr)
        .bind(session.started_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.last_insert_rowid())
    }

    /// Records the end of a session; closing an already closed session keeps its first end.
    async fn close_session(&self, id: i64, at: Millis, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await.map_err(db)?;
        let result = sqlx::query(
            "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
        )
        .bind(at)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if result.rows_affected() == 0 {
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM sessions WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
        }
        tx.commit().await.map_err(db)
    }

    async fn get_session(&self, id: i64) -> Result<Option<SessionRecord>, StoreError> {
        sqlx::query(concat!(session_select!(), " WHERE s.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(codec::session)
            .transpose()
    }

    async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(concat!(session_select!(), " WHERE 1 = 1"));
        if let Some(subject) = &filter.subject {
            query.push(" AND s.subject = ").push_bind(subject.clone());
        }
        if let Some(since) = filter.since {
            query.push(" AND s.started_at >= ").push_bind(since);
        }
        let limit = filter.limit.unwrap_or(DEFAULT_SESSION_LIMIT).max(0);
        query
            .push(" ORDER BY s.started_at DESC, s.id DESC LIMIT ")
            .push_bind(limit);
        query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(codec::session)
            .collect()
    }

    async fn ingest_events(
        &self,
        events: Vec<JournalEvent>,
        journal_offset: u64,
    ) -> Result<(), StoreError> {
        let offset = i64::try_from(journal_offset)
            .map_err(|_| StoreError::Backend("journal offset out of range".into()))?;
        let connection = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| StoreError::Backend("the event writer's lock is poisoned".into()))?;
            let connection = connection
                .as_mut()
                .ok_or_else(|| StoreError::Backend("the store is closed".into()))?;
            ingest(connection, &events, offset).map_err(event_writer)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the event copy stopped: {e}")))?
    }

    async fn journal_state(&self) -> Result<(u64, i64), StoreError> {
        let (offset, max_id): (i64, i64) = sqlx::query_as(
            "SELECT offset, MAX(COALESCE((SELECT MAX(id) FROM events), 0), pruned_through) \
             FROM journal WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok((offset.max(0) as u64, max_id))
    }

    async fn list_events(&self, session_id: i64) -> Result<Vec<EventRecord>, StoreError> {
        sqlx::query(
            "SELECT id, session_id, at, detail, prev_hash, hash FROM events \
             WHERE session_id = ? ORDER BY id",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::event)
        .collect()
    }

    async fn list_chain_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ChainLink>, StoreError> {
        sqlx::query(
            "SELECT id, session_id, at, detail, prev_hash, hash FROM events \
             WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after_id)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::chain_link)
        .collect()
    }

    async fn chain_span(&self, from: i64, to: i64) -> Result<ChainSpan, StoreError> {
        let (from_hash, to_hash, events): (Option<String>, Option<String>, i64) = sqlx::query_as(
            "SELECT (SELECT hash FROM events WHERE id = ?1), \
                 (SELECT hash FROM events WHERE id = ?2), \
                 (SELECT COUNT(*) FROM events WHERE id > ?1 AND id <= ?2)",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(ChainSpan {
            from_hash,
            to_hash,
            events,
        })
    }

    async fn chain_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let head: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        if let Some((id, hash)) = head {
            return Ok(hash.map(|hash| (id, hash)));
        }
        // Every event was pruned: the chain goes on from its anchor.
        sqlx::query_as(
            "SELECT c.event_id, c.hash FROM checkpoints c JOIN journal j \
             ON j.id = 1 AND c.event_id = j.pruned_through ORDER BY c.id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    async fn record_checkpoint(&self, checkpoint: &NewCheckpoint) -> Result<i64, StoreError> {
        let result = sqlx::query(
            "INSERT INTO checkpoints (at, event_id, hash, interval_ms, public_key, signature) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(checkpoint.at)
        .bind(checkpoint.event_id)
        .bind(&checkpoint.hash)
        .bind(checkpoint.interval_ms)
        .bind(&checkpoint.public_key)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.last_insert_rowid())
    }

    async fn list_checkpoints_after(
        &self,
        after: (i64, i64),
        limit: i64,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        sqlx::query(
            "SELECT id, at, event_id, hash, interval_ms, public_key, signature FROM checkpoints \
             WHERE (event_id, id) > (?, ?) ORDER BY event_id, id LIMIT ?",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::checkpoint)
        .collect()
    }

    async fn newest_checkpoint(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        sqlx::query(
            "SELECT id, at, event_id, hash, interval_ms, public_key, signature FROM checkpoints \
             ORDER BY event_id DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(codec::checkpoint)
        .transpose()
    }

    async fn pruned_through(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT pruned_through FROM journal WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn prune(&self, cutoff: Millis, max_events: i64) -> Result<PruneReport, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await.map_err(db)?;
        // The first event of a session active at or after the cutoff (its end, or while open
        // its last event): nothing from there on may go.
        let keep_from: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(first_id) FROM (SELECT MIN(e.id) AS first_id, \
             COALESCE(s.ended_at, MAX(e.at)) AS last_active \
             FROM events e JOIN sessions s ON s.id = e.session_id GROUP BY e.session_id) \
             WHERE last_active >= ?",
        )
        .bind(cutoff)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        // The newest checkpoint within `max_events` of the last prune, else the first one: one
        // write transaction never holds the store for long, and a prune always progresses.
        let anchor: Option<i64> = sqlx::query_scalar(
            "SELECT c.event_id FROM checkpoints c JOIN journal j ON j.id = 1 \
             WHERE c.event_id > j.pruned_through AND c.event_id < ?1 \
             AND EXISTS (SELECT 1 FROM events e WHERE e.id = c.event_id) \
             ORDER BY c.event_id <= j.pruned_through + ?2 DESC, \
             CASE WHEN c.event_id <= j.pruned_through + ?2 THEN -c.event_id ELSE c.event_id END \
             LIMIT 1",
        )
        .bind(keep_from.unwrap_or(i64::MAX))
        .bind(max_events.max(1))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let mut report = PruneReport::default();
        if let Some(anchor) = anchor {
            let deleted = sqlx::query("DELETE FROM events WHERE id <= ?")
                .bind(anchor)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("UPDATE journal SET pruned_through = ? WHERE id = 1")
                .bind(anchor)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("DELETE FROM checkpoints WHERE event_id < ?")
                .bind(anchor)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            report.pruned_through = Some(anchor);
            report.events = deleted.rows_affected();
        }
        // Ended sessions with nothing left to show, and what hangs off them.
        const GONE: &str = "SELECT s.id FROM sessions s WHERE s.ended_at IS NOT NULL \
             AND s.ended_at < ?1 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.session_id = s.id)";
        for statement in [
            format!(
                "DELETE FROM votes WHERE approval_id IN \
                 (SELECT a.id FROM approvals a WHERE a.session_id IN ({GONE}))"
            ),
            format!(
                "DELETE FROM notification_deliveries WHERE request_id IN \
                 (SELECT a.id FROM approvals a WHERE a.session_id IN ({GONE}))"
            ),
            format!("DELETE FROM approvals WHERE session_id IN ({GONE})"),
        ] {
            sqlx::query(&statement)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let sessions = sqlx::query(&format!("DELETE FROM sessions WHERE id IN ({GONE})"))
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        report.sessions = sessions.rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(report)
    }

    async fn export_events(
        &self,
        filter: &EventFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT e.id, e.session_id, e.at, e.detail, e.prev_hash, e.hash, s.protocol, \
             s.connection, s.subject, s.display_name, s.\"groups\", s.auth_method, \
             s.client_addr, s.started_at FROM events e JOIN sessions s ON s.id = e.session_id \
             WHERE e.id > ",
        );
        query.push_bind(after_id);
        if let Some(since) = filter.since {
            // Ids follow time: the scan starts at the first event of the period.
            query
                .push(" AND e.at >= ")
                .push_bind(since)
                .push(" AND e.id >= (SELECT COALESCE(MIN(x.id), 0) FROM events x WHERE x.at >= ")
                .push_bind(since)
                .push(")");
        }
        if let Some(subject) = &filter.subject {
            query.push(" AND s.subject = ").push_bind(subject.clone());
        }
        if let Some(connection) = &filter.connection {
            query
                .push(" AND s.connection = ")
                .push_bind(connection.clone());
        }
        if let Some(identity) = &filter.identity {
            query
                .push(" AND (s.subject = ")
                .push_bind(identity.clone())
                .push(" OR s.display_name = ")
                .push_bind(identity.clone())
                .push(")");
        }
        query.push(" ORDER BY e.id LIMIT ").push_bind(limit.max(0));
        query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(codec::session_event)
            .collect()
    }

    async fn create_approval(&self, request: &NewApproval) -> Result<i64, StoreError> {
        let result = sqlx::query(
            "INSERT INTO approvals (session_id, requester_subject, requester_name, \
             requester_groups, connection, protocol, operation, params, statement_kinds, policy, \
             rule, reviewers, approvals_needed, created_at, expires_at, all_groups_must_approve, \
             escalate_at, escalate_to, preview, approval_window_ms, remind_after_ms, state) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        )
        .bind(request.session_id)
        .bind(&request.requester_subject)
        .bind(&request.requester_name)
        .bind(to_json(&request.requester_groups, "requester groups")?)
        .bind(&request.connection)
        .bind(&request.protocol)
        .bind(&request.operation)
        .bind(to_json(&request.params, "parameters")?)
        .bind(to_json(&request.statement_kinds, "statement kinds")?)
        .bind(&request.policy)
        .bind(&request.rule)
        .bind(to_json(&request.reviewers, "reviewers")?)
        .bind(i64::from(request.approvals_needed))
        .bind(request.created_at)
        .bind(request.expires_at)
        .bind(request.all_groups_must_approve)
        .bind(request.escalate_at)
        .bind(to_json(&request.escalate_to, "escalation groups")?)
        .bind(
            request
                .preview
                .as_ref()
                .map(|p| to_json(p, "preview"))
                .transpose()?,
        )
        .bind(request.approval_window_ms)
        .bind(request.remind_after_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.last_insert_rowid())
    }

    async fn get_approval(&self, id: i64) -> Result<Option<ApprovalRecord>, StoreError> {
        // One read transaction, so the request and its votes come from the same snapshot.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let record = load_approval(&mut tx, id).await?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    /// Newest first.
    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let (rows, vote_rows) = match state {
            Some(state) => {
                let rows = sqlx::query(concat!(
                    approval_select!(),
                    " WHERE a.state = ? ORDER BY a.created_at DESC, a.id DESC"
                ))
                .bind(state.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                let votes = sqlx::query(concat!(
                    vote_select!(),
                    " JOIN approvals a ON a.id = v.approval_id WHERE a.state = ? \
                     ORDER BY v.approval_id, v.at, v.rowid"
                ))
                .bind(state.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                (rows, votes)
            }
            None => {
                let rows = sqlx::query(concat!(
                    approval_select!(),
                    " ORDER BY a.created_at DESC, a.id DESC"
                ))
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                let votes = sqlx::query(concat!(
                    vote_select!(),
                    " ORDER BY v.approval_id, v.at, v.rowid"
                ))
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                (rows, votes)
            }
        };
        tx.commit().await.map_err(db)?;

        let mut votes: HashMap<i64, Vec<Vote>> = HashMap::new();
        for row in &vote_rows {
            let (approval_id, vote) = codec::vote(row)?;
            votes.entry(approval_id).or_default().push(vote);
        }
        rows.iter()
            .map(|row| {
                let id: i64 = sqlx::Row::try_get(row, "id").map_err(db)?;
                codec::approval(row, votes.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    async fn cast_vote(&self, id: i64, vote: &Vote) -> Result<ApprovalRecord, StoreError> {
        let groups = to_json(&vote.reviewer_groups, "reviewer groups")?;
        // The write lock is held from the first read, so two votes cannot both see "pending"
        // and both settle the request.
        let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await.map_err(db)?;

        let Some(before) = load_approval(&mut tx, id).await? else {
            return Err(StoreError::NotFound);
        };
        let state = before.state;
        if state != ApprovalState::Pending {
            return Err(StoreError::Conflict(format!(
                "request {id} is already {}",
                state.as_str()
            )));
        }

        let voted: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM votes WHERE approval_id = ? AND reviewer_subject = ?",
        )
        .bind(id)
        .bind(&vote.reviewer_subject)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if voted.is_some() {
            return Err(StoreError::Conflict(format!(
                "{} already voted on request {id}",
                vote.reviewer_subject
            )));
        }
        if vote.replacement.is_some() {
            // Earlier approvers approved the statement as it stood; it may not change under them.
            if !vote.approve
                || before.replacement.is_some()
                || before.votes.iter().any(|v| v.approve)
            {
                return Err(StoreError::Conflict(format!(
                    "request {id} already has an approval: a replacement must come with the first one"
                )));
            }
            sqlx::query("UPDATE approvals SET replacement = ? WHERE id = ?")
                .bind(vote.replacement.as_deref())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }

        sqlx::query(
            "INSERT INTO votes (approval_id, reviewer_subject, reviewer_name, reviewer_groups, \
             approve, reason, at, replacement) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(&vote.reviewer_subject)
        .bind(&vote.reviewer_name)
        .bind(groups)
        .bind(vote.approve)
        .bind(vote.reason.as_deref())
        .bind(vote.at)
        .bind(vote.replacement.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(db)?;

        let mut votes = before.votes;
        votes.push(vote.clone());
        if let Some(settled) = settle(&before.request, &votes) {
            sqlx::query(
                "UPDATE approvals SET state = ?, decided_at = ?, reason = ? \
                 WHERE id = ? AND state = 'pending'",
            )
            .bind(settled.as_str())
            .bind(vote.at)
            .bind(vote.reason.as_deref())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }

        let record = load_approval(&mut tx, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn claim_approval(
        &self,
        id: i64,
        session_id: i64,
        at: Millis,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE approvals SET claimed_at = ?, claimed_by_session = ? \
             WHERE id = ? AND state = 'approved' AND claimed_at IS NULL",
        )
        .bind(at)
        .bind(session_id)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.rows_affected() > 0)
    }

    async fn resumable_approvals(
        &self,
        subject: &str,
        connection: &str,
        operation: &str,
        at: Millis,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let rows = sqlx::query(concat!(
            approval_select!(),
            " WHERE a.requester_subject = ? AND a.connection = ? \
             AND a.approval_window_ms IS NOT NULL AND a.operation = ? \
             AND (a.state = 'pending' OR (a.state = 'approved' AND a.claimed_at IS NULL \
             AND a.decided_at + a.approval_window_ms > ?)) ORDER BY a.id"
        ))
        .bind(subject)
        .bind(connection)
        .bind(operation)
        .bind(at)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = sqlx::Row::try_get(row, "id").map_err(db)?;
            let votes = load_votes(&mut tx, id).await?;
            records.push(codec::approval(row, votes)?);
        }
        tx.commit().await.map_err(db)?;
        Ok(records)
    }

    async fn finish_approval(
        &self,
        id: i64,
        state: ApprovalState,
        reason: &str,
        at: Millis,
    ) -> Result<bool, StoreError> {
        if state == ApprovalState::Pending {
            return Err(StoreError::Conflict(format!(
                "request {id} cannot be finished as pending"
            )));
        }
        let result = sqlx::query(
            "UPDATE approvals SET state = ?, decided_at = ?, reason = ? \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(at)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.rows_affected() > 0)
    }

    async fn record_delivery(&self, delivery: &NewDelivery) -> Result<i64, StoreError> {
        let result = sqlx::query(
            "INSERT INTO notification_deliveries (request_id, event, webhook, target, format, \
             attempt, at, status_code, error, delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(delivery.request_id)
        .bind(&delivery.event)
        .bind(delivery.webhook)
        .bind(&delivery.target)
        .bind(&delivery.format)
        .bind(delivery.attempt)
        .bind(delivery.at)
        .bind(delivery.status_code)
        .bind(delivery.error.as_deref())
        .bind(delivery.delivered)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.last_insert_rowid())
    }

    async fn list_deliveries(&self, request_id: i64) -> Result<Vec<DeliveryRecord>, StoreError> {
        sqlx::query(
            "SELECT id, request_id, event, webhook, target, format, attempt, at, status_code, \
             error, delivered FROM notification_deliveries WHERE request_id = ? ORDER BY id",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::delivery)
        .collect()
    }

    async fn upsert_connection(&self, connection: &StoredConnection) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO connections (name, kind, address, \"database\", \"user\", sealed_password) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, address = excluded.address, \
             \"database\" = excluded.\"database\", \"user\" = excluded.\"user\", \
             sealed_password = excluded.sealed_password",
        )
        .bind(&connection.name)
        .bind(&connection.kind)
        .bind(&connection.address)
        .bind(connection.database.as_deref())
        .bind(connection.user.as_deref())
        .bind(connection.sealed_password.as_deref())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_connections(&self) -> Result<Vec<StoredConnection>, StoreError> {
        sqlx::query(
            "SELECT name, kind, address, \"database\", \"user\", sealed_password \
             FROM connections ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::connection)
        .collect()
    }

    async fn record_policy_change(&self, change: &NewPolicyChange) -> Result<i64, StoreError> {
        let result = sqlx::query(
            "INSERT INTO policy_changes (at, source, changed_by_subject, changed_by, summary, \
             old_policies, new_policies) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(change.at)
        .bind(&change.source)
        .bind(change.changed_by_subject.as_deref())
        .bind(&change.changed_by)
        .bind(&change.summary)
        .bind(&change.old_policies)
        .bind(&change.new_policies)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(result.last_insert_rowid())
    }

    async fn list_policy_changes(&self) -> Result<Vec<PolicyChangeRecord>, StoreError> {
        sqlx::query(
            "SELECT id, at, source, changed_by_subject, changed_by, summary, old_policies, \
             new_policies FROM policy_changes ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(codec::policy_change)
        .collect()
    }
}

/// Copies `events` (skipping those already stored, and those retention removed) and records the
/// journal offset, in one transaction.
fn ingest(
    connection: &mut rusqlite::Connection,
    events: &[JournalEvent],
    journal_offset: i64,
) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // A journal copied again after a crash may still hold events retention has removed: they
    // stay removed.
    let pruned_through: i64 = tx
        .prepare_cached("SELECT pruned_through FROM journal WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    let events: Vec<&JournalEvent> = events
        .iter()
        .filter(|event| event.id > pruned_through)
        .collect();
    // What the foreign key would enforce, once per session instead of once per row: an event
    // of an unknown session fails the whole copy.
    let mut sessions: Vec<i64> = events.iter().map(|event| event.session_id).collect();
    sessions.sort_unstable();
    sessions.dedup();
    let mut session_exists = tx.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?;
    for session in sessions {
        if !session_exists.exists([session])? {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                Some(format!(
                    "FOREIGN KEY constraint failed: no session {session}"
                )),
            ));
        }
    }
    drop(session_exists);
    for chunk in insert_chunks(&events) {
        let mut sql = String::with_capacity(96 + chunk.len() * 24);
        sql.push_str(
            "INSERT OR IGNORE INTO events (id, session_id, at, kind, detail, prev_hash, hash) VALUES ",
        );
        for row in 0..chunk.len() {
            sql.push_str(if row == 0 { "(" } else { ",(" });
            sql.push_str("?,?,?,?,?,?,?)");
        }
        let mut insert = tx.prepare_cached(&sql)?;
        let mut index = 0;
        for event in chunk {
            insert.raw_bind_parameter(index + 1, event.id)?;
            insert.raw_bind_parameter(index + 2, event.session_id)?;
            insert.raw_bind_parameter(index + 3, event.at)?;
            insert.raw_bind_parameter(index + 4, event.kind.as_ref())?;
            insert.raw_bind_parameter(index + 5, event.detail.as_str())?;
            insert.raw_bind_parameter(index + 6, event.prev_hash.as_deref())?;
            insert.raw_bind_parameter(index + 7, event.hash.as_deref())?;
            index += 7;
        }
        insert.raw_execute()?;
    }
    tx.prepare_cached("UPDATE journal SET offset = ?1 WHERE id = 1")?
        .execute([journal_offset])?;
    tx.commit()
}

/// Splits rows into chunks of power-of-two sizes (at most 512 rows: SQLite allows 32766 bound
/// values per statement, 7 per event), so that a multi-row INSERT has one of ten texts and its
/// prepared statement is cached, not parsed and planned for every batch size.
fn insert_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = if rows.len() >= 512 {
            512
        } else {
            1 << rows.len().ilog2()
        };
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{insert_chunks, is_in_memory, SqliteStore};

    #[tokio::test]
    async fn connections_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("airlock.db").to_str().unwrap())
            .await
            .unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 1, "NORMAL");
        assert_eq!(foreign_keys, 1);
        assert_eq!(busy_timeout, 5000);
        assert_eq!(page_size, 16384);
    }

    #[test]
    fn insert_chunks_are_powers_of_two_covering_every_row() {
        let rows: Vec<usize> = (0..1300).collect();
        let sizes: Vec<usize> = insert_chunks(&rows).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![512, 512, 256, 16, 4]);
        let again: Vec<usize> = insert_chunks(&rows).flatten().copied().collect();
        assert_eq!(again, rows);
        assert_eq!(insert_chunks::<usize>(&[]).count(), 0);
    }

    #[test]
    fn recognises_in_memory_locations() {
        assert!(is_in_memory(":memory:"));
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://airlock?mode=memory"));
        assert!(!is_in_memory("sqlite://data/airlock.db"));
        assert!(!is_in_memory("/var/lib/airlock/airlock.db"));
    }
}
