//! Airlock's persistence backends. This crate owns the on-disk schema (the SQL migrations in
//! `migrations/`) and [`SqliteStore`], the embedded SQLite implementation of the core's
//! [`Store`](airlock_core::store::Store) contract: agent tokens, recorded sessions and their
//! events, approval requests and votes, and sealed connection definitions.

mod codec;
mod error;
mod sqlite;

pub use sqlite::SqliteStore;
