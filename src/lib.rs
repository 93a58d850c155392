//! # actix-poller
//!
//! Run background tasks inside an actix or actix-web application at a controlled pace: answer a
//! request at once, do the work in the background, and never run more than `workers` tasks at a
//! time, so the service doing the real work is not flooded.
//!
//! Three kinds of actor share the work, and no lock decides anything:
//!
//! ```text
//!  other actors, HTTP handlers
//!         │ Submit<T>            (in-memory source: straight to the Fetcher, which owns the queue)
//!         ▼
//!    ┌──────────┐  Execute<T>   ┌───────────────────┐
//!    │ Fetcher  │──────────────►│ Executor × E      │  each on its own arbiter thread; each
//!    │ owns the │               │ runs task futures │  runs many task futures at once
//!    │ Source   │               └─────────┬─────────┘
//!    └────▲─────┘                         │ Done{finished…}
//!         │ Ready{credits, acks}          ▼
//!         └────────────────────────┌───────────┐
//!                                  │ Scheduler │  owns the credits: the concurrency bound
//!                                  └───────────┘
//! ```
//!
//! * The **Scheduler** owns the credits. `Ready { credits: n }` grants `n` run slots at once
//!   (demand, not a single token); every `Done` returns credits and is answered by a new grant in
//!   the same handler, so no wake-up is lost.
//! * The **Fetcher** owns the [`Source`]. It fetches up to its credits in one call, dispatches to
//!   the least-loaded executor, waits for a wake-up when the source is empty (never spins), and
//!   backs off with jitter when a fetch fails.
//! * **Executors** run task futures in a task set, catch panics, and report every attempt's end
//!   exactly once, in batches.
//!
//! # Quick start
//!
//! ```
//! use actix_poller::{FinalState, Poller, TaskContext};
//! use std::time::Duration;
//!
//! #[actix_rt::main]
//! async fn main() {
//!     let poller = Poller::<u64>::builder()
//!         .workers(4)
//!         .start(|n: u64, cx: TaskContext| async move {
//!             tracing::info!(task = %cx.id(), "squaring {n}");
//!             let _ = n * n;
//!             Ok::<_, std::convert::Infallible>(())
//!         })
//!         .expect("started inside an actix System");
//!
//!     // Fire and forget...
//!     poller.submit_batch((0..100).collect()).await.expect("room in the queue");
//!     // ...or track the outcome.
//!     let receipt = poller.submit_tracked(7).await.expect("room in the queue");
//!     assert_eq!(receipt.outcome().await, Ok(FinalState::Completed));
//!
//!     let report = poller.shutdown(Duration::from_secs(5)).await.expect("first shutdown");
//!     assert_eq!(report.cancelled, 0);
//! }
//! ```
//!
//! # Concepts
//!
//! * [`Poller`] is the handle (clone it, share it through `web::Data`); [`PollerBuilder`] starts
//!   one. [`Submit`] / [`SubmitBatch`] are the same operations as actix messages, usable as a
//!   `Recipient` by actors that should not know the poller's types.
//! * A [`TaskHandler`] is an async fn of the payload and a [`TaskContext`].
//! * A [`Source`] is where tasks come from: [`MemorySource`] (the default), or your own.
//! * Every attempt ends in exactly one [`Outcome`]; the poller's state machine turns it into a
//!   [`Disposition`] that the source records, and a tracked submitter sees the [`FinalState`].
//! * The lifecycle: retries with backoff ([`PollerBuilder::retry`], [`RetryPolicy`]), per-attempt
//!   timeouts ([`PollerBuilder::timeout`]), snoozes ([`RetryAfter`]) and aborts ([`Abort`])
//!   returned by handlers, delayed and prioritized tasks ([`TaskOptions`]), cancellation of
//!   waiting and running tasks ([`Poller::cancel`], [`TaskContext::cancelled`]), dead tasks
//!   ([`Poller::dead_tasks`], [`Poller::rerun_dead`], [`Poller::purge_dead`]) and progress
//!   ([`TaskContext::progress`], [`Receipt::progress`]). Each has a doc example that runs.
//! * [`Poller::shutdown`] stops fetching, drains running tasks until a deadline, cancels the
//!   rest, hands back what never started, and stops every actor and arbiter it started.
//! * [`Poller::topology`] describes the running actor graph with live counters, as Mermaid or
//!   DOT text.
//!
//! # Guarantees
//!
//! * At no instant do more than `workers` tasks run.
//! * Every started attempt ends in exactly one `Done`: completed, failed, panicked, timed out,
//!   snoozed, aborted or cancelled; every task reaches exactly one final state.
//! * A task waiting for a retry or a due time holds no worker slot.
//! * In-memory delivery is exactly once while the process lives; a crash loses the queue.
//!
//! # Feature flags
//!
//! The in-memory source is always built; the durable sources are opt-in, built on `sqlx`, and
//! store payloads as JSON (`serde`). See `docs/durable.md` for leases, heartbeats and the
//! "at least once" contract they ask of handlers.
//!
//! * `sqlite` — `SqliteSource`: embedded and durable on one machine (sqlx's bundled SQLite, no
//!   system library, no server). Tasks survive a crash or a restart.
//! * `postgres` — `PgSource`: many processes on many machines share one queue
//!   (`FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY` wake-ups, leases taken back when a worker dies),
//!   and `PgQueue` enqueues inside the caller's own transaction.
//! * `web` — `web::serve`: runs an actix-web `HttpServer` and, on SIGINT or SIGTERM, stops it,
//!   drains the poller and only then returns, so the `System` stops after the poller has
//!   handed back what it holds. Without it, actix-web's default signal handling stops the
//!   `System` under the poller's executors ~300 ms after the server (see the module docs).

#![forbid(unsafe_code)]
// The durable sources' shared docs link to both stores' modules; with only one of the two
// features on, the other's links cannot resolve (docs.rs and CI build with every feature).
#![cfg_attr(
    all(
        any(feature = "sqlite", feature = "postgres"),
        not(all(feature = "sqlite", feature = "postgres"))
    ),
    allow(rustdoc::broken_intra_doc_links)
)]

/// The README's example, compiled as a doc test so it stays true (it uses `web::serve`).
#[cfg(all(doctest, feature = "web"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod builder;
pub mod error;
mod executor;
mod fetcher;
mod handler;
pub mod messages;
mod metrics;
mod pace;
mod poller;
mod protocol;
mod retry;
mod scheduler;
mod shutdown;
pub mod source;
mod stats;
pub mod task;
pub mod topology;
mod trace;
#[cfg(feature = "web")]
pub mod web;

pub use builder::{
    PollerBuilder, DEFAULT_CANCEL_GRACE, DEFAULT_DISPATCH_AHEAD, DEFAULT_NAME,
    DEFAULT_RETRY_LOG_LEVEL, DEFAULT_WORKERS,
};
pub use error::{OutcomeError, RequestError, ShutdownError, SourceError, StartError, SubmitError};
pub use fetcher::TRACKING_LIMIT;
pub use handler::{BoxError, TaskHandler};
pub use messages::{
    Cancel, CancelOutcome, GetCounts, GetProgress, GetStats, GetStatus, ListDead, Notify, Pause,
    PauseKey, PurgeDead, Receipt, RerunDead, Resume, ResumeKey, Submit, SubmitBatch, TaskEvent,
};
pub use pace::{Aimd, Backpressure, Gradient, Key, Limiter, PauseScope, RateLimit, Sample};
pub use poller::Poller;
pub use retry::{Backoff, RetryPolicy};
pub use shutdown::{ShutdownReport, Unfinished, SHUTDOWN_SLACK};
pub use source::memory::MemorySource;
#[cfg(feature = "postgres")]
pub use source::postgres::{PgConfig, PgError, PgQueue, PgSource};
#[cfg(feature = "sqlite")]
pub use source::sqlite::{SqliteConfig, SqliteError, SqliteQueue, SqliteSource};
pub use source::{FetchLimits, Fetched, RetrySupport, Source, WakeOn};
pub use stats::{ExecutorStats, Stats};
pub use task::{
    Abort, Ack, Cancelled, DeadTask, Disposition, FinalState, Outcome, Progress, QueueCounts,
    RetryAfter, Task, TaskContext, TaskId, TaskOptions, TaskState, TaskStatus,
};
pub use topology::{Edge, Node, NodeCounters, NodeKind, Placement, Stage, Topology};
