//! The messages the actors exchange, and the ones users send.
//!
//! Each documents its sender, its receiver and its `Result`. Messages on the hot path carry
//! batches: one `Ready` grants many credits and returns many acks, one `Execute` starts many
//! tasks, one `Done` reports many ends.

use std::fmt;
use std::marker::PhantomData;

use actix::Message;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{OutcomeError, SourceError, SubmitError};
use crate::stats::Stats;
use crate::task::{Ack, DeadTask, FinalState, Finished, Progress, Task, TaskId, TaskOptions};

/// Scheduler → Fetcher: `credits` more tasks may start, and these acks must reach the source.
///
/// `credits` is demand, not a token: the Fetcher fetches up to that many in one call. Credits are
/// conserved: every credit is at the Scheduler, at the Fetcher, on its way to an executor in an
/// [`Execute`], held by one running task, or on its way back in a [`Done`].
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub struct Ready {
    /// How many more tasks may start.
    pub credits: usize,
    /// What each executor reported since the last `Ready` (indexed by executor; empty when no
    /// executor reported anything). The Fetcher balances its dispatch with it.
    pub executors: Vec<ExecutorDelta>,
    /// Acknowledgements to forward to the source, in one batch.
    pub acks: Vec<Ack>,
}

/// One executor's reports summed, as the Scheduler forwards them in [`Ready`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorDelta {
    /// Attempts that ended.
    pub finished: u32,
    /// Tasks that left the executor's local queue: started, or cancelled before they started.
    pub dequeued: u32,
    /// Credits from [`Execute::credits`] that the executor spent or gave back.
    pub credits_used: u32,
    /// Slots the executor gave back because its queue was empty when a task ended: the queue
    /// was too short to cover the round trip.
    pub freed: u32,
}

impl ExecutorDelta {
    /// `true` when nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == ExecutorDelta::default()
    }
}

/// Fetcher → Executor: queue these tasks, and start `credits` of the queued ones now.
///
/// Each executor keeps a short local queue (see
/// [`PollerBuilder::dispatch_ahead`](crate::PollerBuilder::dispatch_ahead)). A task starts only
/// with a credit from an `Execute`, or in the slot a task of the same executor just left: so no
/// more than the credits granted ever run. Credits it cannot spend (its queue emptied meanwhile)
/// go back in the next [`Done`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute<T> {
    /// Tasks to append to the executor's queue, oldest first.
    pub tasks: Vec<Task<T>>,
    /// How many queued tasks may start now, each holding one credit until its `Done`.
    pub credits: u32,
}

impl<T> fmt::Debug for Execute<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execute")
            .field("tasks", &self.tasks.len())
            .field("credits", &self.credits)
            .finish()
    }
}

/// Executor → Scheduler: these attempts ended (one entry per attempt, exactly once), and these
/// slots are free again.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub struct Done {
    /// The executor that ran them.
    pub executor: usize,
    /// The attempts that ended.
    pub finished: Vec<Finished>,
    /// Credits given back: slots left by ended tasks that no queued task took over, and credits
    /// of an `Execute` that found no queued task to start.
    pub freed: u32,
    /// Tasks that left the executor's queue since its last `Done`.
    pub dequeued: u32,
    /// Credits from `Execute` messages spent or given back since its last `Done`.
    pub credits_used: u32,
}

/// Anyone → Fetcher: something new may be in the source; fetch again if there are credits.
///
/// Durable sources send it for local inserts; a user's own source can send it from a callback.
#[derive(Debug, Default, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Notify;

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
pub struct Submit<T> {
    pub(crate) tasks: Returnable<Vec<T>>,
    pub(crate) track: bool,
    pub(crate) options: TaskOptions,
}

impl<T> Submit<T> {
    /// Submit `task`; its outcome is not tracked.
    pub fn new(task: T) -> Self {
        Submit {
            tasks: Returnable::new(vec![task]),
            track: false,
            options: TaskOptions::default(),
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
        // Invariant: a `Submit` holds exactly one task until its handler takes it.
        self.tasks.take().pop().expect("a Submit holds one task")
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
pub struct SubmitBatch<T> {
    pub(crate) tasks: Returnable<Vec<T>>,
    pub(crate) track: bool,
    pub(crate) options: TaskOptions,
}

impl<T> SubmitBatch<T> {
    /// Submit `tasks`; their outcomes are not tracked.
    pub fn new(tasks: Vec<T>) -> Self {
        SubmitBatch {
            tasks: Returnable::new(tasks),
            track: false,
            options: TaskOptions::default(),
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
#[derive(Debug)]
pub struct Receipt {
    id: TaskId,
    outcome: Option<oneshot::Receiver<FinalState>>,
    progress: Option<tokio::sync::watch::Receiver<Progress>>,
}

impl Receipt {
    pub(crate) fn untracked(id: TaskId) -> Self {
        Receipt {
            id,
            outcome: None,
            progress: None,
        }
    }

    pub(crate) fn tracked(
        id: TaskId,
        outcome: oneshot::Receiver<FinalState>,
        progress: tokio::sync::watch::Receiver<Progress>,
    ) -> Self {
        Receipt {
            id,
            outcome: Some(outcome),
            progress: Some(progress),
        }
    }

    /// The task's progress as its handler reports it (see
    /// [`TaskContext::progress`](crate::TaskContext::progress)): a stream that yields the
    /// latest report each time it changes and ends when the task reaches a final state.
    /// `None` for an untracked task.
    pub fn progress(&self) -> Option<impl futures::Stream<Item = Progress> + Unpin + 'static> {
        let rx = self.progress.clone()?;
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
        self.outcome.is_some()
    }

    /// Waits for the task's final state.
    ///
    /// # Errors
    ///
    /// [`OutcomeError::NotTracked`] if the task was submitted without tracking;
    /// [`OutcomeError::ShutDown`] if the poller shut down first (the task was handed back).
    pub async fn outcome(self) -> Result<FinalState, OutcomeError> {
        match self.outcome {
            None => Err(OutcomeError::NotTracked),
            Some(rx) => rx.await.map_err(|_| OutcomeError::ShutDown),
        }
    }
}

/// A value inside a message that must not vanish if the message is never handled: if the message
/// is dropped undelivered (the actor stopped), the value goes back through `back`.
pub(crate) struct Returnable<V> {
    value: Option<V>,
    back: Option<oneshot::Sender<V>>,
}

impl<V> Returnable<V> {
    pub(crate) fn new(value: V) -> Self {
        Returnable {
            value: Some(value),
            back: None,
        }
    }

    /// Arranges for the value to come back on the returned receiver if it is never taken.
    pub(crate) fn return_on_drop(&mut self) -> oneshot::Receiver<V> {
        let (tx, rx) = oneshot::channel();
        self.back = Some(tx);
        rx
    }

    /// Takes the value; after this, dropping returns nothing.
    pub(crate) fn take(&mut self) -> V {
        self.back = None;
        // Invariant: taken once, by the one handler that receives the message.
        self.value
            .take()
            .unwrap_or_else(|| unreachable!("value taken twice"))
    }
}

impl<V> Drop for Returnable<V> {
    fn drop(&mut self) {
        if let (Some(v), Some(back)) = (self.value.take(), self.back.take()) {
            let _ = back.send(v);
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

/// Anyone → Fetcher: the last progress reported by a tracked task that has not finished.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<Progress>")]
pub struct GetProgress {
    /// The task.
    pub id: TaskId,
}

/// Fetcher → Executor: cancellation of a running task was requested; signal it now and drop it
/// after `grace`. A task queued there and not started ends at once. Replies what it found.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "CancelOutcome")]
pub(crate) struct CancelRunning {
    pub(crate) id: TaskId,
    pub(crate) grace: std::time::Duration,
}

// ---- Shutdown protocol (crate-internal) ----------------------------------------------------

/// Handle → Scheduler: begin shutdown: stop granting credits and hand over what only the
/// Scheduler holds (arbiters, drop signals). Refused the second time.
#[derive(Debug, Message)]
#[rtype(result = "Option<crate::poller::ShutdownPlan>")]
pub(crate) struct BeginShutdown;

/// Handle → Fetcher: stop fetching and dispatching; reply, once no fetch is in flight, with every
/// task fetched but not started.
pub(crate) struct StopFetching<T>(pub(crate) PhantomData<fn() -> T>);

impl<T: 'static> Message for StopFetching<T> {
    type Result = Vec<Task<T>>;
}

/// Handle → Executor: finish what runs until `deadline`, then cancel the rest; reply on `reply`
/// after the last `Done` has been sent, then stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Drain<T: 'static> {
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<DrainReport<T>>,
}

/// What one executor did during a drain.
#[derive(Debug)]
pub(crate) struct DrainReport<T> {
    pub(crate) finished: usize,
    pub(crate) cancelled: usize,
    /// Its local queue: dispatched, never started.
    pub(crate) unstarted: Vec<Task<T>>,
}

impl<T> Default for DrainReport<T> {
    fn default() -> Self {
        DrainReport {
            finished: 0,
            cancelled: 0,
            unstarted: Vec::new(),
        }
    }
}

/// Handle → Scheduler: every `Done` has been sent; forward the last acks and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Flush;

/// Handle → Fetcher: wait for acks in flight, close the source with `unstarted`, resolve the
/// remaining trackers as shut down, and stop. Replies with the tasks handed back.
pub(crate) struct CloseSource<T> {
    pub(crate) unstarted: Vec<Task<T>>,
}

impl<T: 'static> Message for CloseSource<T> {
    type Result = Result<Vec<Task<T>>, String>;
}
