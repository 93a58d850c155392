//! Error types. Every error that carries a task hands the task back, so nothing a caller gave
//! the crate is lost when the crate cannot take it.

use std::fmt;
use std::sync::Arc;

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
    /// A rate limit allowed zero starts per period: no task could ever start.
    #[error("a rate limit must allow at least 1 start per period (got 0)")]
    ZeroRate,
    /// A per-key concurrency limit was zero: that key's tasks could never start.
    #[error("a key limit must be at least 1 (got 0); pause the key instead")]
    ZeroKeyLimit,
    /// No actix `System` runs on this thread, so no actor can be started.
    #[error(
        "no actix System is running on this thread: start the poller inside \
         `#[actix_rt::main]`, `#[actix_web::main]`, `#[actix::main]` or \
         `actix_rt::System::new().block_on(..)`, not under a plain `#[tokio::main]`"
    )]
    NoSystem,
    /// The handler factory given to
    /// [`start_with`](crate::PollerBuilder::start_with) panicked for this executor (or its
    /// arbiter thread stopped before the factory ran). Nothing was left running: the executors
    /// already built were stopped and their arbiter threads joined.
    #[error("the handler factory failed for executor {executor}: {message}")]
    FactoryPanicked {
        /// The executor whose handler could not be built.
        executor: usize,
        /// The panic's message.
        message: String,
    },
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
    /// encode. Nothing was stored. [`SubmitError::is_transient`] says whether trying again
    /// later may help.
    #[error("the source could not store the task ({error}); the task was handed back")]
    Source {
        /// The task (or batch), handed back.
        task: T,
        /// What the source reported.
        error: SourceError,
    },
    /// The poller stopped while its source was storing the task: its thread died under it (the
    /// actix `System` running it was torn down mid-enqueue). Whether the task was stored is
    /// unknown, and it cannot be handed back: a durable source may hold it (look it up, or
    /// submit it again if a duplicate is harmless); an in-memory one lost it with the poller.
    #[error("the poller stopped while its source was storing the task; whether it was stored is unknown")]
    Unknown,
}

impl<T> SubmitError<T> {
    /// The task (or batch) that could not be submitted; `None` for [`SubmitError::Unknown`],
    /// which has none to hand back.
    pub fn into_inner(self) -> Option<T> {
        match self {
            SubmitError::Full(t)
            | SubmitError::Closed(t)
            | SubmitError::Unsupported(t)
            | SubmitError::Source { task: t, .. } => Some(t),
            SubmitError::Unknown => None,
        }
    }

    /// A reference to the task (or batch) that could not be submitted; `None` for
    /// [`SubmitError::Unknown`].
    pub fn get_ref(&self) -> Option<&T> {
        match self {
            SubmitError::Full(t)
            | SubmitError::Closed(t)
            | SubmitError::Unsupported(t)
            | SubmitError::Source { task: t, .. } => Some(t),
            SubmitError::Unknown => None,
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
            SubmitError::Unknown => SubmitError::Unknown,
        }
    }

    /// `true` for [`SubmitError::Full`]: the caller may retry later.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }

    /// `true` when trying again later may succeed: a full queue, or a source error the source
    /// called transient ([`SourceError::is_transient`]: a database that went away may come
    /// back; a payload that does not encode will not). `false` for a closed poller or an
    /// unsupported submit, or a poller that stopped mid-store ([`SubmitError::Unknown`]).
    pub fn is_transient(&self) -> bool {
        match self {
            SubmitError::Full(_) => true,
            SubmitError::Source { error, .. } => error.is_transient(),
            SubmitError::Closed(_) | SubmitError::Unsupported(_) | SubmitError::Unknown => false,
        }
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
            SubmitError::Unknown => f.write_str("SubmitError::Unknown"),
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
    /// The task's final state was not learned within this long of its submit (see
    /// [`TRACKING_LIMIT`](crate::TRACKING_LIMIT)), so the poller stopped tracking it. Only for a
    /// source shared by several pollers: the task may still run, and the store keeps its fate.
    #[error("the task's final state was not learned within {0:?}; it is no longer tracked")]
    TrackingExpired(std::time::Duration),
}

/// Why [`Poller::shutdown`](crate::Poller::shutdown) could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// Another call already shut the poller down (or is doing so).
    #[error("the poller is already shut down or shutting down")]
    AlreadyShutDown,
    /// The source failed to release or hand back its unstarted tasks.
    #[error("the source failed to close: {}", .0.message())]
    Source(#[source] SourceError),
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

/// A source failed an operation (storing, cancelling, listing, re-running or purging dead tasks,
/// closing). It keeps the source's own error: [`source`](std::error::Error::source) returns it,
/// and [`inner`](Self::inner) / [`message`](Self::message) read it.
///
/// It also says whether trying again may help ([`is_transient`](Self::is_transient)): a store
/// that went away may come back ([`SourceError::new`]); a payload that does not encode never
/// will ([`SourceError::permanent`]). The source that builds the error decides, since only it
/// knows.
///
/// Two `SourceError`s are equal when they have the same text and the same classification.
///
/// # Examples
///
/// ```
/// use actix_poller::SourceError;
/// use std::error::Error as _;
///
/// let e = SourceError::new(std::io::Error::other("connection reset"));
/// assert_eq!(e.to_string(), "the source failed: connection reset");
/// assert_eq!(e.message(), "connection reset");
/// assert!(e.is_transient());
/// assert!(e.source().is_some());
/// assert!(!SourceError::permanent("a payload does not encode").is_transient());
/// ```
#[derive(Clone)]
pub struct SourceError {
    // `Arc`, not `Box`: the error types that carry it are `Clone`.
    inner: Arc<dyn std::error::Error + Send + Sync + 'static>,
    transient: bool,
}

impl SourceError {
    /// A failure that may pass (a store that is down, a timeout): trying again later may work.
    /// Takes any error, or a message (`&str`, `String`).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        SourceError {
            inner: Arc::from(error.into()),
            transient: true,
        }
    }

    /// A failure that trying again cannot mend (a payload that does not encode, a row that
    /// violates a constraint).
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        SourceError {
            transient: false,
            ..SourceError::new(error)
        }
    }

    /// `true` when trying again later may succeed (see [`new`](Self::new) and
    /// [`permanent`](Self::permanent)).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The source's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// The source's own error's text (without this type's "the source failed: " prefix).
    pub fn message(&self) -> String {
        self.inner.to_string()
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the source failed: {}", self.inner)
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceError")
            .field("error", &self.inner)
            .field("transient", &self.transient)
            .finish()
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.inner)
    }
}

impl PartialEq for SourceError {
    fn eq(&self, other: &Self) -> bool {
        self.transient == other.transient && self.message() == other.message()
    }
}

impl Eq for SourceError {}
