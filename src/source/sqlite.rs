//! A durable source in a SQLite database: tasks survive a crash of the process (feature
//! `sqlite`).
//!
//! SQLite is the embedded durable choice: one file on one machine, no server. Several processes
//! on the same machine may share the file; SQLite lets one of them write at a time, and every
//! state change here is one statement, so two pollers never lease the same task.
//!
//! * **Schema**: one table (default `actix_poller_tasks`), created and upgraded at start by the
//!   crate's versioned migrations (`migrations/sqlite/*.sql`, applied in one `BEGIN IMMEDIATE`
//!   transaction; the applied versions are kept in `<table>_migrations`). Turn them off with
//!   [`SqliteConfig::migrate`] if you manage the schema yourself.
//! * **Enqueue**: a batch is one `INSERT … SELECT … FROM json_each(?)` statement.
//! * **Fetch**: one `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …` statement leases up to
//!   `n` due tasks, highest priority first, then earliest due, then first enqueued.
//! * **Leases**: a fetched task is leased for [`SqliteConfig::lease`]; the poller's heartbeat
//!   extends the leases of the tasks this poller runs, takes back tasks whose lease expired (their
//!   worker died: the attempt counts, and a task out of attempts goes dead) and prunes old
//!   finished tasks.
//! * **Acks**: at most two `UPDATE … FROM json_each(?)` statements per batch: completed tasks
//!   through a lean one (ids and lease numbers only), every other kind through the general one.
//! * **Wake-ups**: a local submit (through the poller or a [`SqliteQueue`] of this source) wakes
//!   the poller at once; tasks written by other processes are seen by a jittered poll
//!   ([`SqliteConfig::poll_interval`]).
//! * **Payloads** are JSON (serde). A row whose payload does not decode goes dead with the
//!   decoder's error; the others run.
//!
//! # Delivery: at least once
//!
//! A task runs at least once: a poller that dies (killed, crashed, machine lost) leaves its
//! leases to expire, and the task runs again, its attempt counted. A task can therefore run more
//! than once: make handlers idempotent (an upsert instead of an insert, a unique key on what the
//! task produces, a check of whether the work is done). Tasks still queued are never lost.
//!
//! Durability: WAL journal with `synchronous = NORMAL` by default, which survives a crash of the
//! process (the case leases are for); [`SqliteConfig::full_sync`] also survives a power loss,
//! at the cost of an fsync per commit.
//!
//! # Examples
//!
//! ```no_run
//! use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
//! use actix_poller::{Poller, RetryPolicy};
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { image: String, width: u32 }
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let source = SqliteSource::<Resize>::connect(SqliteConfig::new("tasks.db")).await?;
//!     let poller = Poller::builder()
//!         .source(source)
//!         .retry(RetryPolicy::attempts(5))
//!         .workers(8)
//!         .start(|job: Resize, _cx| async move {
//!             let _ = (job.image, job.width); // ... resize, idempotently ...
//!             Ok::<_, std::io::Error>(())
//!         })?;
//!     poller.submit(Resize { image: "a.png".into(), width: 640 }).await.ok();
//!     poller.shutdown(Duration::from_secs(10)).await?;
//!     Ok(())
//! }
//! ```

pub use super::durable::sqlite::{
    SqliteConfig, SqliteDialect, SqliteError, SqliteOptions, SqliteQueue, SqliteSource,
};
pub use super::durable::DEFAULT_TABLE;
