//! The envelope a source hands out: a payload plus what the poller needs to know about one
//! attempt.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{Progress, TaskId};
use crate::trace::Parent;

/// A task as a [`Source`](crate::Source) hands it out: the payload plus what the poller needs to
/// know about this attempt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Task<T> {
    /// The task's id in its source.
    pub id: TaskId,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// How many attempts the task may have in all (1: no retry).
    pub max_attempts: u32,
    /// When the task was first submitted.
    pub enqueued_at: SystemTime,
    /// Higher runs first among due tasks.
    pub priority: i32,
    /// How long one attempt may run before it is dropped and recorded as timed out (`None`: the
    /// poller's default).
    pub timeout: Option<Duration>,
    /// The pace key ([`TaskOptions::key`](crate::TaskOptions::key)), if any.
    pub key: Option<crate::pace::Key>,
    /// The user's payload.
    pub payload: T,
    /// Where the handler's progress goes, when the submitter tracks the task.
    pub(crate) progress: Option<watch::Sender<Progress>>,
    /// The submitter's trace context: the parent of this attempt's span.
    pub(crate) trace: Option<std::sync::Arc<Parent>>,
    /// When it became due, in µs since the Unix epoch, if the source says (a delayed task's
    /// `run_at`; 0: it does not): the queue-wait histogram's start, `enqueued_at` otherwise.
    /// Whole microseconds, so the hot path adds and subtracts integers.
    #[cfg(feature = "metrics")]
    pub(crate) due_us: u64,
}

impl<T> Task<T> {
    /// A first attempt of `payload` under `id`, enqueued now, with one attempt allowed.
    pub fn new(id: TaskId, payload: T) -> Self {
        Task::enqueued_at(id, payload, SystemTime::now())
    }

    /// As [`new`](Self::new), enqueued at `enqueued_at` (a source that keeps the stamp reads no
    /// clock per task).
    pub(crate) fn enqueued_at(id: TaskId, payload: T, enqueued_at: SystemTime) -> Self {
        Task {
            id,
            attempt: 1,
            max_attempts: 1,
            enqueued_at,
            priority: 0,
            timeout: None,
            key: None,
            payload,
            progress: None,
            trace: None,
            #[cfg(feature = "metrics")]
            due_us: 0,
        }
    }

    /// The same task (id, attempt, options, trace context) with another payload.
    pub fn with_payload<U>(&self, payload: U) -> Task<U> {
        Task {
            id: self.id,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            enqueued_at: self.enqueued_at,
            priority: self.priority,
            timeout: self.timeout,
            key: self.key.clone(),
            payload,
            progress: None,
            trace: self.trace.clone(),
            #[cfg(feature = "metrics")]
            due_us: self.due_us,
        }
    }

    /// Sets how many attempts the task may have in all (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets the priority (higher first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the pace key.
    pub fn with_key(mut self, key: Option<crate::pace::Key>) -> Self {
        self.key = key;
        self
    }

    /// Sets the attempt number (1-based).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets when the task was first submitted.
    pub fn with_enqueued_at(mut self, at: SystemTime) -> Self {
        self.enqueued_at = at;
        self
    }
}
