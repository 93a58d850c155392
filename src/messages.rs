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

use crate::error::{OutcomeError, SubmitError};
use crate::stats::Stats;
use crate::task::{Ack, FinalState, Finished, Task, TaskId};

/// Scheduler → Fetcher: `credits` more tasks may start, and these acks must reach the source.
///
/// `credits` is demand, not a token: the Fetcher fetches up to that many in one call. Credits are
/// conserved: every credit is at the Scheduler, at the Fetcher, or held by one started task until
/// its `Done` returns it.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub struct Ready {
    /// How many more tasks may start.
    pub credits: usize,
    /// How many tasks each executor finished since the last `Ready` (indexed by executor; empty
    /// when none did). The Fetcher balances its dispatch with it.
    pub freed: Vec<u32>,
    /// Acknowledgements to forward to the source, in one batch.
    pub acks: Vec<Ack>,
}

/// Fetcher → Executor: start these tasks. Each holds one credit until its `Done`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute<T> {
    /// The tasks to start.
    pub tasks: Vec<Task<T>>,
}

impl<T> fmt::Debug for Execute<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execute")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// Executor → Scheduler: these attempts ended (one entry per attempt, exactly once).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Done {
    /// The executor that ran them.
    pub executor: usize,
    /// The attempts that ended.
    pub finished: Vec<Finished>,
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
}

impl<T> Submit<T> {
    /// Submit `task`; its outcome is not tracked.
    pub fn new(task: T) -> Self {
        Submit {
            tasks: Returnable::new(vec![task]),
            track: false,
        }
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
}

impl<T> SubmitBatch<T> {
    /// Submit `tasks`; their outcomes are not tracked.
    pub fn new(tasks: Vec<T>) -> Self {
        SubmitBatch {
            tasks: Returnable::new(tasks),
            track: false,
        }
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
}

impl Receipt {
    pub(crate) fn new(id: TaskId, outcome: Option<oneshot::Receiver<FinalState>>) -> Self {
        Receipt { id, outcome }
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
pub(crate) struct Drain {
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<DrainReport>,
}

/// What one executor did during a drain.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DrainReport {
    pub(crate) finished: usize,
    pub(crate) cancelled: usize,
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
