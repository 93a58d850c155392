//! The messages users send: submit, cancel, dead tasks, progress, stats. Each documents its
//! receiver and its `Result`. The actors' own protocol is crate-internal
//! (`crate::protocol`).

use std::fmt;

use actix::Message;
use tokio::sync::oneshot;

use crate::error::{OutcomeError, SourceError, SubmitError};
use crate::protocol::Returnable;
use crate::stats::Stats;
use crate::task::{DeadTask, FinalState, Progress, QueueCounts, TaskId, TaskOptions, TaskStatus};

/// Anyone → Fetcher: something new may be in the source; fetch again if there are credits.
///
/// Durable sources send it for local inserts; a user's own source can send it from a callback.
#[derive(Debug, Default, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Notify;

/// Anyone → Fetcher: start no new task until [`Resume`] (or for `duration`); running tasks
/// finish. Pauses add up to the longest one; a `duration` too long for the clock (e.g.
/// `Duration::MAX`) means "far future". See [`Poller::pause`](crate::Poller::pause).
#[derive(Debug, Default, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Pause {
    /// For how long; `None`: until resumed.
    pub duration: Option<std::time::Duration>,
}

/// Anyone → Fetcher: end a [`Pause`] of the whole poller (paused keys stay paused).
#[derive(Debug, Default, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Resume;

/// Anyone → Fetcher: start no new task with `key` until [`ResumeKey`] (or for `duration`);
/// other keys' tasks keep starting. See [`Poller::pause_key`](crate::Poller::pause_key).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PauseKey {
    /// The key.
    pub key: crate::Key,
    /// For how long; `None`: until resumed.
    pub duration: Option<std::time::Duration>,
}

/// Anyone → Fetcher: end a [`PauseKey`] (or a [`Backpressure`](crate::Backpressure) pause).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ResumeKey {
    /// The key.
    pub key: crate::Key,
}

/// Anyone → Scheduler: a snapshot of the counters.
#[derive(Debug, Default, Clone, Copy, Message)]
#[rtype(result = "Stats")]
pub struct GetStats;

/// Anyone → Fetcher: submit one task. The result is a [`Receipt`] with the task's id, or the
/// task handed back.
///
/// Usable as `Recipient<Submit<T>>` (see [`Poller::submit_recipient`](crate::Poller::submit_recipient)),
/// so the sender need not know the poller's source or handler types.
///
/// # Examples
///
/// ```
/// use actix_poller::Submit;
///
/// let plain = Submit::new("resize cat.png");
/// let tracked = Submit::new("resize dog.png").tracked();
/// # let _ = (plain, tracked);
/// ```
///
/// Send it with `send` (or [`Poller::submit_with`](crate::Poller::submit_with)) to learn the
/// answer: a refused task ([`SubmitError::Full`], [`SubmitError::Closed`], …) comes back only
/// in that answer. `do_send` and `try_send` drop the answer: a task refused then is lost, logged
/// at error level and counted in [`Stats::dropped_submits`](crate::Stats::dropped_submits).
#[must_use = "a submit does nothing until sent"]
pub struct Submit<T> {
    pub(crate) task: Returnable<T>,
    pub(crate) track: bool,
    pub(crate) options: TaskOptions,
    /// The span current where the message was made: the parent of the task's attempt spans.
    pub(crate) parent: Option<std::sync::Arc<crate::trace::Parent>>,
}

impl<T> Submit<T> {
    /// Submit `task`; its outcome is not tracked. The span current here becomes the parent of
    /// the task's attempt spans (see docs/observability.md, "Tracing").
    pub fn new(task: T) -> Self {
        Submit {
            task: Returnable::new(task),
            track: false,
            options: TaskOptions::default(),
            parent: crate::trace::Parent::current(),
        }
    }

    /// Priority, delay, attempts or timeout for this task.
    pub fn options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    /// Track the outcome: the [`Receipt`] resolves to the task's final state.
    pub fn tracked(mut self) -> Self {
        self.track = true;
        self
    }

    /// The task, e.g. from a message that `Recipient::try_send` handed back.
    pub fn into_task(mut self) -> T {
        self.task.take()
    }
}

impl<T> fmt::Debug for Submit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("track", &self.track)
            .finish_non_exhaustive()
    }
}

impl<T: 'static> Message for Submit<T> {
    type Result = Result<Receipt, SubmitError<T>>;
}

/// Anyone → Fetcher: submit many tasks in one message, all or none.
///
/// As with [`Submit`], only `send` receives a refused batch back; `do_send` loses it (logged,
/// counted in [`Stats::dropped_submits`](crate::Stats::dropped_submits)).
#[must_use = "a submit does nothing until sent"]
pub struct SubmitBatch<T> {
    pub(crate) tasks: Returnable<Vec<T>>,
    pub(crate) track: bool,
    pub(crate) options: TaskOptions,
    /// The span current where the message was made: the parent of the task's attempt spans.
    pub(crate) parent: Option<std::sync::Arc<crate::trace::Parent>>,
}

impl<T> SubmitBatch<T> {
    /// Submit `tasks`; their outcomes are not tracked. The span current here becomes the parent
    /// of the tasks' attempt spans.
    pub fn new(tasks: Vec<T>) -> Self {
        SubmitBatch {
            tasks: Returnable::new(tasks),
            track: false,
            options: TaskOptions::default(),
            parent: crate::trace::Parent::current(),
        }
    }

    /// Priority, delay, attempts or timeout for every task of the batch.
    pub fn options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    /// Track the outcomes: each [`Receipt`] resolves to its task's final state.
    pub fn tracked(mut self) -> Self {
        self.track = true;
        self
    }

    /// The tasks, e.g. from a message that `Recipient::try_send` handed back.
    pub fn into_tasks(mut self) -> Vec<T> {
        self.tasks.take()
    }
}

impl<T> fmt::Debug for SubmitBatch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitBatch")
            .field("track", &self.track)
            .finish_non_exhaustive()
    }
}

impl<T: 'static> Message for SubmitBatch<T> {
    type Result = Result<Vec<Receipt>, SubmitError<Vec<T>>>;
}

/// A submitted task's id and, if it was tracked, a way to await its final state.
///
/// Two words: a batch of 200 000 untracked submits returns 3.2 MB of receipts, not 8 MB
/// (issue 14's peak-memory row), the tracking channels boxed behind one pointer.
#[derive(Debug)]
pub struct Receipt {
    id: TaskId,
    tracking: Option<Box<Tracking>>,
}

/// A tracked receipt's channels.
#[derive(Debug)]
struct Tracking {
    outcome: oneshot::Receiver<Result<FinalState, OutcomeError>>,
    progress: tokio::sync::watch::Receiver<Progress>,
}

impl Receipt {
    pub(crate) fn untracked(id: TaskId) -> Self {
        Receipt { id, tracking: None }
    }

    pub(crate) fn tracked(
        id: TaskId,
        outcome: oneshot::Receiver<Result<FinalState, OutcomeError>>,
        progress: tokio::sync::watch::Receiver<Progress>,
    ) -> Self {
        Receipt {
            id,
            tracking: Some(Box::new(Tracking { outcome, progress })),
        }
    }

    /// The task's progress as its handler reports it (see
    /// [`TaskContext::progress`](crate::TaskContext::progress)): a stream that yields the
    /// latest report each time it changes and ends when the task reaches a final state.
    /// `None` for an untracked task.
    pub fn progress(&self) -> Option<impl futures::Stream<Item = Progress> + Unpin + 'static> {
        let rx = self.tracking.as_ref()?.progress.clone();
        Some(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let latest = rx.borrow_and_update().clone();
            Some((latest, rx))
        })))
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// `true` if the outcome can be awaited.
    pub fn is_tracked(&self) -> bool {
        self.tracking.is_some()
    }

    /// Waits for the task's final state.
    ///
    /// # Errors
    ///
    /// [`OutcomeError::NotTracked`] if the task was submitted without tracking;
    /// [`OutcomeError::ShutDown`] if the poller shut down first (the task was handed back);
    /// [`OutcomeError::TrackingExpired`] if, in a store shared by several pollers, its final
    /// state was not learned within [`TRACKING_LIMIT`](crate::TRACKING_LIMIT).
    pub async fn outcome(self) -> Result<FinalState, OutcomeError> {
        match self.tracking {
            None => Err(OutcomeError::NotTracked),
            Some(t) => t.outcome.await.map_err(|_| OutcomeError::ShutDown)?,
        }
    }
}

/// Anyone → Fetcher: cancel a task. A waiting task is removed (final state `Cancelled`); a
/// running one is signalled through its [`TaskContext`](crate::TaskContext) and dropped after
/// the poller's cancel grace if it has not ended by then.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<CancelOutcome, SourceError>")]
pub struct Cancel {
    /// The task to cancel.
    pub id: TaskId,
}

/// What [`Cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The task was waiting (queued, delayed, or fetched but not started): it is cancelled.
    Dequeued,
    /// The task was running: it was signalled, and is dropped after the grace period unless it
    /// ends first.
    Signalled,
    /// No such task waits or runs (it may have finished already).
    NotFound,
}

/// Anyone → Fetcher: the most recent dead tasks, newest first.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<DeadTask>, SourceError>")]
pub struct ListDead {
    /// At most this many.
    pub limit: usize,
}

/// Anyone → Fetcher: queue these dead tasks again from attempt 1; the result holds the ids that
/// were queued.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<TaskId>, SourceError>")]
pub struct RerunDead {
    /// The dead tasks to run again.
    pub ids: Vec<TaskId>,
}

/// Anyone → Fetcher: forget dead tasks (`None`: all); the result is how many.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<usize, SourceError>")]
pub struct PurgeDead {
    /// The dead tasks to forget, or `None` for all.
    pub ids: Option<Vec<TaskId>>,
}

/// Anyone → Fetcher: where a task is ([`TaskStatus`]), or `None` if the source does not know
/// it (see [`Poller::status`](crate::Poller::status)).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Option<TaskStatus>, SourceError>")]
pub struct GetStatus {
    /// The task.
    pub id: TaskId,
}

/// Anyone → Fetcher: how many tasks the source holds in each state, or `None` if it cannot
/// count them (see [`Poller::counts`](crate::Poller::counts)).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<Option<QueueCounts>, SourceError>")]
pub struct GetCounts;

/// Anyone → Fetcher: the last progress reported by a tracked task that has not finished.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<Progress>")]
pub struct GetProgress {
    /// The task.
    pub id: TaskId,
}

/// Fetcher → the recipients given to [`PollerBuilder::subscribe`](crate::PollerBuilder::subscribe):
/// what happened to a task this poller ran, sent once the source has recorded it (the same
/// moment a tracked submitter's receipt resolves), so an application can push updates (a
/// websocket, a webhook) without polling [`Poller::status`](crate::Poller::status).
///
/// Sent with `do_send`: a subscriber whose mailbox is gone misses events, and the poller never
/// waits for one. Durable sources: only the attempts *this* poller ran; another process's
/// subscribers see theirs.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "event", rename_all = "snake_case"))]
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum TaskEvent {
    /// An attempt failed and the task runs again after `after` (a retry).
    Retrying {
        /// The task.
        id: TaskId,
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: String,
        /// The delay before the next attempt.
        after: std::time::Duration,
    },
    /// The task reached its final state.
    Ended {
        /// The task.
        id: TaskId,
        /// Its last attempt (0 if it never ran, e.g. cancelled while waiting in the Fetcher).
        attempt: u32,
        /// How it ended.
        state: FinalState,
    },
}

impl TaskEvent {
    /// The event an ack that landed tells of, if any (a snooze or a release is no news).
    pub(crate) fn from_ack(ack: &crate::task::Ack) -> Option<TaskEvent> {
        if let crate::task::Disposition::Retry { after, error } = &ack.disposition {
            return Some(TaskEvent::Retrying {
                id: ack.id,
                attempt: ack.attempt,
                error: error.clone(),
                after: *after,
            });
        }
        FinalState::from_ack(ack).map(|state| TaskEvent::Ended {
            id: ack.id,
            attempt: ack.attempt,
            state,
        })
    }

    /// The task the event is about.
    pub fn id(&self) -> TaskId {
        match self {
            TaskEvent::Retrying { id, .. } | TaskEvent::Ended { id, .. } => *id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt is two words, tracked or not: a large untracked batch's receipts cost 16 B a
    /// task (issue 14's peak-memory row; it was 40).
    #[test]
    fn a_receipt_is_two_words() {
        assert_eq!(std::mem::size_of::<Receipt>(), 16);
    }

    /// Both kinds answer as before: an untracked one says so, a tracked one yields its outcome
    /// and its progress.
    #[actix_rt::test]
    async fn tracked_and_untracked_receipts_answer() {
        let untracked = Receipt::untracked(TaskId(1));
        assert!(!untracked.is_tracked());
        assert!(untracked.progress().is_none());
        assert_eq!(untracked.outcome().await, Err(OutcomeError::NotTracked));
        let (tx, rx) = oneshot::channel();
        let (_progress_tx, progress_rx) = tokio::sync::watch::channel(Progress::default());
        let tracked = Receipt::tracked(TaskId(2), rx, progress_rx);
        assert_eq!((tracked.id(), tracked.is_tracked()), (TaskId(2), true));
        assert!(tracked.progress().is_some());
        tx.send(Ok(FinalState::Completed))
            .unwrap_or_else(|_| panic!("receiver dropped"));
        assert_eq!(tracked.outcome().await, Ok(FinalState::Completed));
    }
}
