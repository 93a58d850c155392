//! Tasks and what becomes of them. One concept per file:
//!
//! | file | concept |
//! |---|---|
//! | `id.rs` | [`TaskId`] |
//! | `envelope.rs` | [`Task`], the envelope a source hands out |
//! | `context.rs` | [`TaskContext`], [`Cancelled`], [`Progress`] (and the executor's cancel board) |
//! | `outcome.rs` | [`Outcome`], [`Disposition`], [`Ack`], [`FinalState`], [`RetryAfter`], [`Abort`], and the state machine |
//! | `options.rs` | [`TaskOptions`] |
//! | `dead.rs` | [`DeadTask`] |
//! | `status.rs` | [`TaskStatus`], [`TaskState`], [`QueueCounts`] |
//!
//! Retry policies and backoff live in their own module (re-exported here and at the crate root: [`RetryPolicy`], [`Backoff`]).
//!
//! This module imports no actor module: it is the vocabulary the actors share, and the one place
//! where the task state machine lives, so that every source only *stores* states.

mod context;
mod dead;
mod envelope;
mod id;
mod options;
mod outcome;
mod status;

pub(crate) use context::CancelBoard;
pub use context::{Cancelled, Progress, TaskContext};
pub use dead::DeadTask;
pub use envelope::Task;
pub use id::TaskId;
pub use options::TaskOptions;
pub(crate) use outcome::{settle, Finished};
pub use outcome::{Abort, Ack, Disposition, FinalState, Outcome, RetryAfter};
pub use status::{QueueCounts, TaskState, TaskStatus};

pub use crate::retry::{Backoff, RetryPolicy};
