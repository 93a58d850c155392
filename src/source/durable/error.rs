//! What can go wrong with a durable source.

use std::error::Error;
use std::fmt;

use super::config::QueuePace;
use super::dialect::Dialect;

/// What can go wrong with a durable source: [`SqliteError`](crate::source::sqlite::SqliteError)
/// and [`PgError`](crate::source::postgres::PgError) are this type.
#[non_exhaustive]
pub enum DurableError<D: Dialect> {
    /// SQLite: the database file could not be opened or created. (PostgreSQL's `File` type has
    /// no value: it is never this.)
    Open {
        /// The file.
        path: D::File,
        /// Why.
        source: sqlx::Error,
    },
    /// PostgreSQL: the server could not be reached at start. (SQLite's `Server` type has no
    /// value: it is never this.)
    Connect {
        /// Host, port and database (no password).
        target: D::Server,
        /// Why.
        source: sqlx::Error,
    },
    /// The configuration is invalid (a table or schema name that is not a plain identifier, a
    /// malformed URL).
    Config(String),
    /// A migration failed; nothing of it was applied.
    Migration {
        /// The migration's version.
        version: i64,
        /// What it does.
        description: &'static str,
        /// Why it failed.
        source: sqlx::Error,
    },
    /// The database holds a schema newer than this version of the crate knows.
    SchemaTooNew {
        /// The newest version found in the database.
        found: i64,
        /// The newest version this crate knows.
        known: i64,
    },
    /// PostgreSQL: this poller is configured with a queue pace
    /// ([`PgConfig::queue_pace`](crate::source::postgres::PgConfig::queue_pace)) other than the
    /// one stored with the queue. Every poller on a queue claims under its one pace: configure
    /// the stored one, open without `queue_pace` (the poller then adopts it), or replace it
    /// ([`PgConfig::replace_queue_pace`](crate::source::postgres::PgConfig::replace_queue_pace)).
    PaceMismatch {
        /// The queue's pace, stored in the database.
        stored: QueuePace,
        /// This poller's.
        configured: QueuePace,
    },
    /// A statement failed.
    Database(sqlx::Error),
    /// A payload could not be encoded as JSON.
    Encode(serde_json::Error),
}

impl<D: Dialect> fmt::Debug for DurableError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurableError::Open { path, source } => f
                .debug_struct("Open")
                .field("path", path)
                .field("source", source)
                .finish(),
            DurableError::Connect { target, source } => f
                .debug_struct("Connect")
                .field("target", target)
                .field("source", source)
                .finish(),
            DurableError::Config(why) => f.debug_tuple("Config").field(why).finish(),
            DurableError::Migration {
                version,
                description,
                source,
            } => f
                .debug_struct("Migration")
                .field("version", version)
                .field("description", description)
                .field("source", source)
                .finish(),
            DurableError::SchemaTooNew { found, known } => f
                .debug_struct("SchemaTooNew")
                .field("found", found)
                .field("known", known)
                .finish(),
            DurableError::PaceMismatch { stored, configured } => f
                .debug_struct("PaceMismatch")
                .field("stored", stored)
                .field("configured", configured)
                .finish(),
            DurableError::Database(e) => f.debug_tuple("Database").field(e).finish(),
            DurableError::Encode(e) => f.debug_tuple("Encode").field(e).finish(),
        }
    }
}

impl<D: Dialect> fmt::Display for DurableError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = D::NAME;
        match self {
            DurableError::Open { path, source } => {
                write!(f, "cannot open the {store} database at {path:?}: {source}")
            }
            DurableError::Connect { target, source } => write!(
                f,
                "cannot connect to {store} at {target}: {source} (is the server running, and \
                 the URL right?)"
            ),
            DurableError::Config(why) => write!(f, "invalid {store} source configuration: {why}"),
            DurableError::Migration {
                version,
                description,
                source,
            } => write!(
                f,
                "{store} migration {version} ({description}) failed: {source}"
            ),
            DurableError::SchemaTooNew { found, known } => write!(
                f,
                "the {store} table was migrated to version {found} by a newer actix-poller; \
                 this one knows up to {known}"
            ),
            DurableError::PaceMismatch { stored, configured } => write!(
                f,
                "the queue's pace, stored in {store}, is {stored}; this poller is configured \
                 with {configured}. Every poller on a queue claims under its one pace: configure \
                 {stored}, or open without `queue_pace` to adopt it, or replace the stored pace \
                 with `PgConfig::replace_queue_pace` (docs/pace.md, \"Across processes\")"
            ),
            DurableError::Database(e) => write!(f, "{store} error: {e}"),
            DurableError::Encode(e) => write!(f, "cannot encode a payload as JSON: {e}"),
        }
    }
}

impl<D: Dialect> Error for DurableError<D> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            DurableError::Open { source, .. }
            | DurableError::Connect { source, .. }
            | DurableError::Migration { source, .. }
            | DurableError::Database(source) => Some(source),
            DurableError::Encode(e) => Some(e),
            DurableError::Config(_)
            | DurableError::SchemaTooNew { .. }
            | DurableError::PaceMismatch { .. } => None,
        }
    }
}

impl<D: Dialect> From<sqlx::Error> for DurableError<D> {
    fn from(e: sqlx::Error) -> Self {
        DurableError::Database(e)
    }
}

impl<D: Dialect> From<serde_json::Error> for DurableError<D> {
    fn from(e: serde_json::Error) -> Self {
        DurableError::Encode(e)
    }
}
