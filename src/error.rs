//! Error types. Every error that carries a task hands the task back, so nothing a caller gave
//! the crate is lost when the crate cannot take it.

use std::fmt;

/// Why [`PollerBuilder::start`](crate::PollerBuilder::start) refused to start a poller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `workers` was zero: the poller could never run a task.
    #[error("workers must be at least 1 (got 0): the poller could never run a task")]
    ZeroWorkers,
    /// `executors` was zero: there would be nowhere to run a task.
    #[error("executors must be at least 1 (got 0): there would be nowhere to run a task")]
    ZeroExecutors,
    /// The in-memory queue capacity was zero: every submit would be refused.
    #[error("queue capacity must be at least 1 (got 0): every submit would be refused")]
    ZeroCapacity,
    /// A source reported fetch limits that allow no fetch at all.
    #[error(
        "the source's fetch limits must allow at least one task per fetch and one fetch in flight"
    )]
    ZeroFetchLimit,
    /// No actix `System` runs on this thread, so no actor can be started.
    #[error(
        "no actix System is running on this thread: start the poller inside \
         `#[actix_rt::main]`, `#[actix_web::main]`, `#[actix::main]` or \
         `actix_rt::System::new().block_on(..)`, not under a plain `#[tokio::main]`"
    )]
    NoSystem,
}

/// Why a task could not be submitted. The task (or the batch) is handed back in every case.
///
/// Modelled on tokio's `SendError<T>`: the value that could not be delivered is returned to the
/// caller, who decides whether to retry, store it elsewhere, or answer `503` to a client.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError<T> {
    /// The queue is full (back-pressure): try again later.
    #[error("the task queue is full; the task was handed back (back-pressure)")]
    Full(T),
    /// The poller is shutting down or has shut down.
    #[error("the poller is shut down; the task was handed back")]
    Closed(T),
    /// The source does not accept submissions through the poller (for example a source that only
    /// reads from a remote service).
    #[error(
        "this source does not accept submissions through the poller; the task was handed back"
    )]
    Unsupported(T),
    /// The source failed to store the task: a database error, or a payload that does not
    /// encode. Nothing was stored. A database error may pass: try again later.
    #[error("the source could not store the task ({error}); the task was handed back")]
    Source {
        /// The task (or batch), handed back.
        task: T,
        /// What the source reported.
        error: SourceError,
    },
}

impl<T> SubmitError<T> {
    /// The task (or batch) that could not be submitted.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::Full(t)
            | SubmitError::Closed(t)
            | SubmitError::Unsupported(t)
            | SubmitError::Source { task: t, .. } => t,
        }
    }

    /// A reference to the task (or batch) that could not be submitted.
    pub fn get_ref(&self) -> &T {
        match self {
            SubmitError::Full(t)
            | SubmitError::Closed(t)
            | SubmitError::Unsupported(t)
            | SubmitError::Source { task: t, .. } => t,
        }
    }

    /// Applies `f` to the handed-back value, keeping the reason.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> SubmitError<U> {
        match self {
            SubmitError::Full(t) => SubmitError::Full(f(t)),
            SubmitError::Closed(t) => SubmitError::Closed(f(t)),
            SubmitError::Unsupported(t) => SubmitError::Unsupported(f(t)),
            SubmitError::Source { task, error } => SubmitError::Source {
                task: f(task),
                error,
            },
        }
    }

    /// `true` for [`SubmitError::Full`]: the caller may retry later.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }

    /// `true` when trying again later may succeed: a full queue, or a source error (a database
    /// that went away may come back). `false` for a closed poller or an unsupported submit.
    pub fn is_transient(&self) -> bool {
        matches!(self, SubmitError::Full(_) | SubmitError::Source { .. })
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    // Payloads need not be `Debug`; the reason is what matters in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("SubmitError::Full(..)"),
            SubmitError::Closed(_) => f.write_str("SubmitError::Closed(..)"),
            SubmitError::Unsupported(_) => f.write_str("SubmitError::Unsupported(..)"),
            SubmitError::Source { error, .. } => {
                write!(f, "SubmitError::Source {{ error: {error:?}, .. }}")
            }
        }
    }
}

/// Why the outcome of a tracked task could not be observed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutcomeError {
    /// The task was submitted without tracking (see [`Submit::tracked`](crate::Submit::tracked)).
    #[error("the task was submitted without tracking its outcome")]
    NotTracked,
    /// The poller shut down before the task reached a final state. An in-memory task was handed
    /// back in the [`ShutdownReport`](crate::ShutdownReport); a durable task stays in its source.
    #[error("the poller shut down before the task reached a final state")]
    ShutDown,
}

/// Why [`Poller::shutdown`](crate::Poller::shutdown) could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// Another call already shut the poller down (or is doing so).
    #[error("the poller is already shut down or shutting down")]
    AlreadyShutDown,
    /// The source failed to release or hand back its unstarted tasks.
    #[error("the source failed to close: {0}")]
    Source(String),
}

/// A request to the poller could not be answered: it is shut down, or the source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The poller is shut down.
    #[error("the poller is shut down")]
    Closed,
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The source failed an operation (listing, re-running or purging dead tasks, cancelling). The
/// text is the source's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the source failed: {0}")]
pub struct SourceError(pub String);
