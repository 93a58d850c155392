//! Per-task options for a submit.

use std::time::Duration;

use tokio::time::Instant;

use crate::pace::Key;

/// Per-task options for a submit: priority, delay, attempts, timeout, pace key.
///
/// # Examples
///
/// ```
/// use actix_poller::TaskOptions;
/// use std::time::Duration;
///
/// let urgent = TaskOptions::new().priority(10).timeout(Duration::from_secs(5));
/// let later = TaskOptions::new().delay(Duration::from_secs(60)).max_attempts(3);
/// # let _ = (urgent, later);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "options do nothing until given to a submit"]
pub struct TaskOptions {
    pub(crate) priority: i32,
    pub(crate) run_at: Option<Instant>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) key: Option<Key>,
}

impl TaskOptions {
    /// The defaults: priority 0, due now, the poller's retry policy and timeout.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// Higher runs first among due tasks (default 0); FIFO within a priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Not fetched before `delay` has passed. A delay too long for the clock (e.g.
    /// `Duration::MAX`) means "far future" (about 30 years).
    pub fn delay(self, delay: Duration) -> Self {
        self.run_at(crate::retry::deadline_after(Instant::now(), delay))
    }

    /// Not fetched before `at`.
    pub fn run_at(mut self, at: Instant) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Overrides the retry policy's attempts for this task (at least 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts.max(1));
        self
    }

    /// Overrides the poller's per-attempt timeout for this task.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The task's pace [`Key`] (e.g. its customer or API host): tasks with the same key share
    /// that key's concurrency limit ([`PollerBuilder::key_limit`](crate::PollerBuilder::key_limit)),
    /// rate limit and pause. Every source keeps it: the durable ones store it with the task
    /// (`pace_key`), so a task fetched by another process has it too.
    pub fn key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The pace key, if any.
    pub fn get_key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// The priority.
    pub fn get_priority(&self) -> i32 {
        self.priority
    }

    /// When the task becomes due, if delayed.
    pub fn get_run_at(&self) -> Option<Instant> {
        self.run_at
    }

    /// The attempts override, if any.
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The timeout override, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}
