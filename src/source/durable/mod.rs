//! The durable sources: one source, [`DurableSource`], over a store [`Dialect`].
//!
//! Everything a durable source does — enqueue, fetch with leases, acks fenced by the lease,
//! the heartbeat (extend, reclaim, prune), cancel, dead tasks, release at shutdown, migrations —
//! is written once here, in terms of named statements and store-neutral arguments. A dialect
//! (`sqlite.rs`, `postgres.rs`) brings its SQL (`sql/*.sql`, `migrations/*`), how it binds
//! arguments, how it connects, and its wake-ups (PostgreSQL `LISTEN`/`NOTIFY`; SQLite a local
//! signal). A third store is a third dialect.
//!
//! Users name the sources through [`sqlite`](crate::source::sqlite) and
//! [`postgres`](crate::source::postgres) (`SqliteSource`, `PgSource`, …, aliases of the generic
//! types here). [`Dialect`] is sealed: the crate's stores are the ones it knows.

mod common;

/// Seals [`Dialect`]: the stores are the crate's.
mod sealed {
    /// Implemented by the crate's dialects only.
    pub trait Sealed {}
}
mod config;
mod dialect;
mod error;
mod keeper;
mod migrate;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod queue;
#[cfg(test)]
pub(crate) mod race_test;
mod source;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

pub use config::{DurableConfig, QueuePace, DEFAULT_ATTEMPTS, DEFAULT_TABLE};
pub use dialect::{Arg, Dialect, List, Names, Store};
pub use error::DurableError;
pub use queue::DurableQueue;
pub use source::DurableSource;

/// A store's statements, rendered once for the configured table: one field per `-- name:`
/// section of the dialect's SQL file.
#[derive(Debug)]
pub(crate) struct Sql {
    enqueue: String,
    fetch: String,
    next_due: String,
    ack: String,
    ack_completed: String,
    extend: String,
    reclaim: String,
    prune: String,
    prune_dead: String,
    release: String,
    bury: String,
    notify: String,
    cancel: String,
    dead_list: String,
    final_states: String,
    status: String,
    counts: String,
    dead_rerun: String,
    dead_purge: String,
    dead_purge_all: String,
    migrate_begin: String,
    migrate_lock: String,
    migrations_table: String,
    migrations_applied: String,
    migration_record: String,
    /// Queue-wide pace (PostgreSQL only): see `sql/postgres.sql`.
    paced: Option<PacedSql>,
}

/// The statements of queue-wide pace (PostgreSQL's `PgConfig::queue_pace`).
#[derive(Debug)]
pub(crate) struct PacedSql {
    lock: String,
    fetch: String,
    next_due: String,
    pause: String,
    resume: String,
    /// Stores a poller's pace as the queue's (at open).
    declare: String,
    /// Reads the queue's stored pace.
    read: String,
}

impl Sql {
    /// Every statement of `D`'s file, its placeholders filled from `names`.
    pub(crate) fn new<D: Dialect>(names: &Names) -> Self {
        let vars: Vec<(&str, &str)> = names.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let section = |name: &str| common::statement(D::QUERIES, name, &vars);
        Sql {
            enqueue: section("enqueue"),
            fetch: section("fetch"),
            next_due: section("next_due"),
            ack: section("ack"),
            ack_completed: section("ack_completed"),
            extend: section("extend"),
            reclaim: section("reclaim"),
            prune: section("prune"),
            prune_dead: section("prune_dead"),
            release: section("release"),
            bury: section("bury"),
            notify: section("notify"),
            cancel: section("cancel"),
            dead_list: section("dead_list"),
            final_states: section("final_states"),
            status: section("status"),
            counts: section("counts"),
            dead_rerun: section("dead_rerun"),
            dead_purge: section("dead_purge"),
            dead_purge_all: section("dead_purge_all"),
            migrate_begin: section("migrate_begin"),
            migrate_lock: section("migrate_lock"),
            migrations_table: section("migrations_table"),
            migrations_applied: section("migrations_applied"),
            migration_record: section("migration_record"),
            paced: common::optional_statement(D::QUERIES, "fetch_paced", &vars).map(|fetch| {
                PacedSql {
                    lock: section("pace_lock"),
                    fetch,
                    next_due: section("next_due_paced"),
                    pause: section("pace_pause"),
                    resume: section("pace_resume"),
                    declare: section("pace_declare"),
                    read: section("pace_read"),
                }
            }),
        }
    }
}
