//! A durable source in PostgreSQL, shared by any number of pollers on any number of machines
//! (feature `postgres`).
//!
//! * **Schema**: one table (default `actix_poller_tasks`, in the configured schema), created and
//!   upgraded at start by the crate's versioned migrations (`migrations/postgres/*.sql`, applied
//!   in one transaction under an advisory lock, so pollers starting together do not race; the
//!   applied versions are kept in `<table>_migrations`). Turn them off with
//!   [`PgConfig::migrate`] if you manage the schema yourself.
//! * **Enqueue**: a batch is one `INSERT … SELECT … FROM unnest(…)` statement. With
//!   [`PgQueue::enqueue_in`] it runs inside the caller's own transaction: the tasks exist only if
//!   that transaction commits.
//! * **Fetch**: one statement leases up to `n` due tasks (highest priority, then earliest due,
//!   then first enqueued) with `FOR UPDATE SKIP LOCKED`: pollers never wait for each other and
//!   never lease the same task.
//! * **Wake-ups**: an insert trigger sends `NOTIFY` on commit; each source keeps one `LISTEN`
//!   connection (reconnected when it drops, with a wake-up in case a notification was missed),
//!   plus a jittered fallback poll ([`PgConfig::poll_interval`]). The signal a fetch hands back
//!   is subscribed before its query runs, so a notification that arrives during an empty fetch
//!   is not lost. A fetch that brings fewer tasks than asked for reports the next due time in
//!   the same statement, so a wake-up for one task is one statement.
//! * **Leases**: a fetched task is leased for [`PgConfig::lease`]; the poller's heartbeat extends
//!   the leases of the tasks this poller runs, takes back tasks whose lease expired (their worker
//!   died: the attempt counts, and a task out of attempts goes dead), and prunes old finished
//!   tasks. Times are the server's (`now()`), so machines need not agree on the time.
//! * **Acks**: at most two `UPDATE … FROM unnest(…)` statements per batch (completed tasks
//!   through a lean one, every other kind through the general one), retried a few times if the
//!   connection drops.
//! * **TLS**: the URL's `sslmode` is honoured (`?sslmode=require`, `verify-full` with
//!   `sslrootcert=…`), through rustls with the Mozilla (webpki) roots; no system OpenSSL needed.
//! * **Payloads** are JSON (`jsonb`, serde). A row whose payload does not decode goes dead with
//!   the decoder's error; the others run.
//!
//! # Delivery: at least once
//!
//! A task runs at least once: a poller that dies leaves its leases to expire, and another poller
//! runs the task again, its attempt counted. A task can therefore run more than once: make
//! handlers idempotent (an upsert, a unique key on what the task produces, a check of whether the
//! work is done). A late ack from a poller whose lease expired changes nothing.
//!
//! # Errors at run time
//!
//! If the database goes away, fetches fail and the Fetcher backs off (with jitter) and tries
//! again; acks are retried, and acks that still fail leave their leases to expire, so the tasks
//! run again; the `LISTEN` connection reconnects. Nothing queued is lost, and the poller carries
//! on when the database returns.
//!
//! # Examples
//!
//! ```no_run
//! use actix_poller::source::postgres::{PgConfig, PgSource};
//! use actix_poller::{Poller, RetryPolicy};
//! use std::time::Duration;
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = PgConfig::new("postgres://postgres@127.0.0.1:5432/app").schema("jobs");
//!     let source = PgSource::<String>::connect(config).await?;
//!     let queue = source.queue(); // enqueue from anywhere, even inside your own transaction
//!     let poller = Poller::builder()
//!         .source(source)
//!         .retry(RetryPolicy::attempts(5))
//!         .workers(32)
//!         .start(|email: String, _cx| async move {
//!             let _ = email; // ... send it, idempotently ...
//!             Ok::<_, std::io::Error>(())
//!         })?;
//!     let mut tx = queue.pool().begin().await?;
//!     // ... the user's own writes ...
//!     queue.enqueue_in(&mut tx, vec![actix_poller::source::NewTask::new("hi".into())]).await?;
//!     tx.commit().await?; // the task exists from here on, and the poller is notified
//!     poller.shutdown(Duration::from_secs(10)).await?; // closes the poller's own connections
//!     queue.pool().close().await; // yours: each connection then says goodbye to the server
//!     Ok(())
//! }
//! ```

pub use super::durable::postgres::{
    PgConfig, PgDialect, PgError, PgOptions, PgQueue, PgSource, DEFAULT_LOCK_TIMEOUT,
    DEFAULT_STATEMENT_TIMEOUT,
};
pub use super::durable::{QueuePace, DEFAULT_TABLE};
