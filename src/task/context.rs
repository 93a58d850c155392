//! What a handler sees of the task it runs: [`TaskContext`], its cancellation signal
//! ([`Cancelled`], backed by the executor's `CancelBoard`) and its [`Progress`] reports.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Task, TaskId};

/// What a handler sees of the task it runs, besides the payload: its id and attempt, its
/// deadline, a cancellation signal, and a way to report progress.
///
/// Cheap to clone; carries no lock. It is tied to the executor's thread (not `Send`), like the
/// task future it is given to.
///
/// # Examples
///
/// A handler that works in steps, reports progress, and stops cleanly when cancelled:
///
/// ```
/// use actix_poller::{Abort, BoxError, TaskContext};
///
/// async fn import(rows: Vec<String>, cx: TaskContext) -> Result<(), BoxError> {
///     for (i, row) in rows.iter().enumerate() {
///         if cx.is_cancelled() {
///             return Err(Abort::new("cancelled by the user").into());
///         }
///         let _ = row; // ... work ...
///         cx.progress(i as u64 + 1, rows.len() as u64);
///     }
///     Ok(())
/// }
/// # let _ = import;
/// ```
#[derive(Clone)]
pub struct TaskContext {
    id: TaskId,
    attempt: u32,
    max_attempts: u32,
    enqueued_at: SystemTime,
    deadline: Option<Instant>,
    executor: usize,
    cancels: Rc<CancelBoard>,
    progress: Option<watch::Sender<Progress>>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("executor", &self.executor)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl TaskContext {
    pub(crate) fn new<T>(
        task: &Task<T>,
        executor: usize,
        deadline: Option<Instant>,
        cancels: Rc<CancelBoard>,
    ) -> Self {
        TaskContext {
            id: task.id,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            enqueued_at: task.enqueued_at,
            deadline,
            executor,
            cancels,
            progress: task.progress.clone(),
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many attempts the task may have in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// When the task was first submitted.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }

    /// When this attempt will be dropped as timed out, if it has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The index of the executor running the task (0-based), e.g. to pick per-executor state.
    pub fn executor(&self) -> usize {
        self.executor
    }

    /// `true` once cancellation of this task was requested. The handler should wind down; after
    /// the grace period the poller drops its future anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.is_cancelled(self.id)
    }

    /// Resolves when cancellation of this task is requested, e.g. to `select!` against work.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            id: self.id,
            board: Rc::clone(&self.cancels),
        }
    }

    /// Reports progress: `done` of `total` units. A submitter that tracks the task sees it
    /// through [`Receipt::progress`](crate::Receipt::progress); does nothing otherwise.
    pub fn progress(&self, done: u64, total: u64) {
        self.report(Progress {
            done,
            total,
            note: None,
        });
    }

    /// Reports progress with a short note (e.g. the current step).
    pub fn report(&self, progress: Progress) {
        if let Some(tx) = &self.progress {
            tx.send_replace(progress);
        }
    }
}

/// A task's progress, as its handler last reported it.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all (0 if unknown).
    pub total: u64,
    /// A short note, e.g. the current step.
    pub note: Option<String>,
}

impl Progress {
    /// `done` of `total`, with a note.
    pub fn new(done: u64, total: u64, note: Option<String>) -> Self {
        Progress { done, total, note }
    }
}

/// Per-executor record of cancellation requests, shared with the contexts of its tasks (one
/// thread, no lock). Empty unless someone cancels a running task, so it costs nothing per task.
#[derive(Debug, Default)]
pub(crate) struct CancelBoard {
    requested: RefCell<HashSet<TaskId>>,
    waiters: RefCell<HashMap<TaskId, Vec<Waker>>>,
}

impl CancelBoard {
    pub(crate) fn request(&self, id: TaskId) {
        self.requested.borrow_mut().insert(id);
        if let Some(wakers) = self.waiters.borrow_mut().remove(&id) {
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    pub(crate) fn is_cancelled(&self, id: TaskId) -> bool {
        let requested = self.requested.borrow();
        !requested.is_empty() && requested.contains(&id)
    }

    /// Forgets a task that ended.
    pub(crate) fn forget(&self, id: TaskId) {
        if !self.requested.borrow().is_empty() {
            self.requested.borrow_mut().remove(&id);
        }
        if !self.waiters.borrow().is_empty() {
            self.waiters.borrow_mut().remove(&id);
        }
    }
}

/// The future [`TaskContext::cancelled`] returns.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled {
    id: TaskId,
    board: Rc<CancelBoard>,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<()> {
        if self.board.is_cancelled(self.id) {
            return Poll::Ready(());
        }
        let mut waiters = self.board.waiters.borrow_mut();
        let list = waiters.entry(self.id).or_default();
        if !list.iter().any(|w| w.will_wake(cx.waker())) {
            list.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
