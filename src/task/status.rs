//! Where a task is: [`TaskStatus`] by id, and [`QueueCounts`] by state.

use std::time::SystemTime;

use super::{Progress, TaskId};

/// The state of a task, as its source (and the poller that runs it) know it.
///
/// Waiting tasks are `Queued` (due now), `Scheduled` (not before `run_at`: delayed when
/// enqueued, snoozed, or given back unstarted) or `Retrying` (not before `run_at`, after a failed
/// attempt); a task a poller holds is `Running`; the last three are final.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum TaskState {
    /// Due: waiting for a free worker.
    Queued,
    /// Waiting until `run_at` (delayed or snoozed; no attempt of it has failed yet).
    Scheduled {
        /// Not run before this time.
        run_at: SystemTime,
    },
    /// Waiting until `run_at` to run again after a failed attempt (see
    /// [`TaskStatus::last_error`]).
    Retrying {
        /// Not run before this time.
        run_at: SystemTime,
    },
    /// Held by a poller: running, or about to (queued ahead at an executor, prefetched).
    Running {
        /// When the poller took it (its current attempt's fetch), if the source knows.
        since: Option<SystemTime>,
    },
    /// Final: the handler succeeded.
    Completed {
        /// When, if the source knows.
        at: Option<SystemTime>,
    },
    /// Final: out of attempts, aborted, or given up (see [`TaskStatus::last_error`]).
    Dead {
        /// When, if the source knows.
        at: Option<SystemTime>,
    },
    /// Final: cancelled.
    Cancelled {
        /// When, if the source knows.
        at: Option<SystemTime>,
    },
}

impl TaskState {
    /// Whether the task reached a final state (completed, dead or cancelled).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TaskState::Completed { .. } | TaskState::Dead { .. } | TaskState::Cancelled { .. }
        )
    }
}

/// What [`Poller::status`](crate::Poller::status) answers about one task.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task.
    pub id: TaskId,
    /// Where it is.
    pub state: TaskState,
    /// Attempts started and counted (a snoozed, released or expired attempt is given back).
    pub attempt: u32,
    /// Attempts it may have in all.
    pub max_attempts: u32,
    /// When it was enqueued, if the source knows.
    pub enqueued_at: Option<SystemTime>,
    /// The error of its last failed attempt (or why it is dead), if any.
    pub last_error: Option<String>,
    /// The last progress its running attempt reported, when this poller runs it and tracks it
    /// (see [`Receipt::progress`](crate::Receipt::progress)); otherwise `None`.
    pub progress: Option<Progress>,
    /// Its pace key ([`TaskOptions::key`](crate::TaskOptions::key)), when the source stores
    /// keys (the durable sources do; the in-memory source answers `None`).
    pub key: Option<crate::pace::Key>,
}

impl TaskStatus {
    /// A status with no attempt, no error, no progress.
    pub fn new(id: TaskId, state: TaskState) -> Self {
        TaskStatus {
            id,
            state,
            attempt: 0,
            max_attempts: 1,
            enqueued_at: None,
            last_error: None,
            progress: None,
            key: None,
        }
    }
}

/// How many tasks a source holds in each state (see [`Source::counts`](crate::source::Source::counts)).
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounts {
    /// Due now.
    pub queued: u64,
    /// Waiting for a later time, no attempt failed yet (delayed, snoozed).
    pub scheduled: u64,
    /// Waiting for a later time after a failed attempt.
    pub retrying: u64,
    /// Held by a poller (this one or, for a shared store, any).
    pub running: u64,
    /// Dead and kept (see the source's retention).
    pub dead: u64,
}

impl QueueCounts {
    /// Tasks waiting to run: queued, scheduled and retrying.
    pub fn waiting(&self) -> u64 {
        self.queued + self.scheduled + self.retrying
    }
}
