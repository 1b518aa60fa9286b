//! Turning backend failures into [`StoreError`]s. Messages carry what went wrong, never the bound
//! parameters of a statement: those may hold operations, parameters or token material.

use airlock_core::store::StoreError;
use sqlx::error::ErrorKind;

/// Maps a sqlx failure: constraint violations become `Conflict`, undecodable columns `Corrupt`,
/// everything else `Backend`.
pub(crate) fn db(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db_error) => match db_error.kind() {
            ErrorKind::UniqueViolation => {
                StoreError::Conflict(format!("already exists ({})", db_error.message()))
            }
            ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation => {
                StoreError::Conflict(format!("constraint violated ({})", db_error.message()))
            }
            _ => StoreError::Backend(db_error.message().to_owned()),
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Backend(error.to_string()),
    }
}

/// Maps a failure to apply the schema migrations.
pub(crate) fn migrate(error: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Backend(format!("applying migrations: {error}"))
}

/// Maps a failure of the event writer's own connection the way [`db`] maps sqlx's.
pub(crate) fn event_writer(error: rusqlite::Error) -> StoreError {
    match &error {
        rusqlite::Error::SqliteFailure(failure, message)
            if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let message = message.as_deref().unwrap_or("constraint violated");
            StoreError::Conflict(format!("constraint violated ({message})"))
        }
        _ => StoreError::Backend(error.to_string()),
    }
}
