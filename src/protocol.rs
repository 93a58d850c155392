//! The crate's internal protocol: the messages the actors send each other, and the shutdown
//! sequence's messages. Nothing here is visible to users (`pub(crate)` throughout); the user's
//! messages live in [`messages`](crate::messages).
//!
//! Each message says who sends it to whom, and the invariant it keeps. Messages on the hot path
//! carry batches: one `Ready` grants many credits and returns many acks, one `Execute` starts
//! many tasks, one `Done` reports many ends.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix::{Message, Recipient};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::SourceError;
use crate::messages::CancelOutcome;
use crate::shutdown::ShutdownPlan;
use crate::stats::Counters;
use crate::task::{Ack, Finished, Task, TaskId};

/// Scheduler → Fetcher: `credits` more tasks may start, and these acks must reach the source.
///
/// `credits` is demand, not a token: the Fetcher fetches up to that many in one call. Credits are
/// conserved: every credit is at the Scheduler, at the Fetcher, on its way to an executor in an
/// [`Execute`], held by one running task, or on its way back in a [`Done`].
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub(crate) struct Ready {
    /// How many more tasks may start.
    pub(crate) credits: usize,
    /// What each executor reported since the last `Ready` (indexed by executor; empty when no
    /// executor reported anything). The Fetcher balances its dispatch with it.
    pub(crate) executors: Vec<ExecutorDelta>,
    /// Acknowledgements to forward to the source, in one batch.
    pub(crate) acks: Vec<Ack>,
    /// Handlers that answered [`Backpressure`](crate::Backpressure): what to pause, by task
    /// (the Fetcher knows each running task's key). Read before `acks`.
    pub(crate) pauses: Vec<(crate::task::TaskId, crate::pace::Backpressure)>,
}

/// One executor's reports summed, as the Scheduler forwards them in [`Ready`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecutorDelta {
    /// Attempts that ended.
    pub(crate) finished: u32,
    /// Tasks that left the executor's local queue: started, or cancelled before they started.
    pub(crate) dequeued: u32,
    /// Credits from [`Execute::credits`] that the executor spent or gave back.
    pub(crate) credits_used: u32,
    /// Slots the executor gave back because its queue was empty when a task ended: the queue
    /// was too short to cover the round trip.
    pub(crate) freed: u32,
    /// The run time of the attempts that ended, summed: with `finished`, the mean task
    /// duration, from which the Fetcher sizes the executor's queue.
    pub(crate) busy: std::time::Duration,
}

/// An executor's local queue of tasks dispatched ahead (see
/// [`PollerBuilder::dispatch_ahead`](crate::PollerBuilder::dispatch_ahead)), shared by the
/// Fetcher and that executor. The Fetcher pushes tasks in (and tells the executor with an
/// [`Execute`]); the executor takes them out to start them, and the Fetcher takes them back when
/// the executor stopped reporting (its thread is blocked) or died. Each task leaves the queue
/// exactly once, to whichever side took it, and a blocked executor need not answer. Only the
/// executor starts what it takes; the Fetcher dispatches again what it takes.
///
/// A `VecDeque` behind a mutex held only for a push or a take (never while a task runs, nor
/// across an await), so a thread blocked in a handler never holds it. It replaced
/// `crossbeam-deque`'s lock-free `Injector`, whose zeroed 63-slot blocks (one allocation and
/// one free per 63 tasks) cost more per task than an uncontended lock (see
/// `docs/benchmarks.md`, "dispatch"); a `VecDeque` keeps its memory.
///
/// What is still queued when the last side lets go of the queue (both actors died) is counted
/// lost, never dropped silently.
pub(crate) struct LocalQueue<T: Send + 'static> {
    tasks: Mutex<VecDeque<Task<T>>>,
    counters: Arc<Counters>,
}

impl<T: Send + 'static> LocalQueue<T> {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        LocalQueue {
            tasks: Mutex::new(VecDeque::new()),
            counters,
        }
    }

    /// The queue, locked. Nothing that can panic runs under the lock, so it is never poisoned;
    /// if it were, the queue itself is still consistent (`VecDeque` operations are atomic with
    /// respect to unwinding), so it is used as it is.
    fn lock(&self) -> MutexGuard<'_, VecDeque<Task<T>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a task (the Fetcher dispatches it ahead; the executor puts one back).
    pub(crate) fn push(&self, task: Task<T>) {
        self.lock().push_back(task);
    }

    /// The queue, locked, to push several tasks under one lock (the Fetcher's dispatch).
    pub(crate) fn locked(&self) -> MutexGuard<'_, VecDeque<Task<T>>> {
        self.lock()
    }

    /// Takes the oldest task, if any; no other taker gets it.
    pub(crate) fn take(&self) -> Option<Task<T>> {
        self.lock().pop_front()
    }

    /// Takes the oldest task, if any, and says how many are left after it (one lock).
    pub(crate) fn take_counted(&self) -> (Option<Task<T>>, usize) {
        let mut q = self.lock();
        let task = q.pop_front();
        (task, q.len())
    }

    /// Takes up to `max` tasks, oldest first.
    pub(crate) fn take_up_to(&self, max: usize) -> Vec<Task<T>> {
        let mut q = self.lock();
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl<T: Send + 'static> Drop for LocalQueue<T> {
    fn drop(&mut self) {
        let ids: Vec<TaskId> = std::iter::from_fn(|| self.take()).map(|t| t.id).collect();
        if !ids.is_empty() {
            tracing::error!(
                lost = ids.len(),
                "an executor's queue outlived both its executor and the fetcher: its tasks are lost"
            );
            self.counters.record_lost(&ids);
        }
    }
}

impl<T: Send + 'static> fmt::Debug for LocalQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Fetcher → Executor: `tasks` more tasks are in your [`LocalQueue`]; start `credits` of the
/// queued ones now.
///
/// A task starts only with a credit from an `Execute`, or in the slot a task of the same
/// executor just left: so no more than the credits granted ever run. Credits it cannot spend
/// (its queue emptied meanwhile, or the Fetcher took the tasks back) go back in the next
/// [`Done`].
///
/// An `Execute` dropped undelivered (its executor is gone) sends its credits back to the
/// Fetcher ([`ReturnPath`]), which then takes back what that executor's queue holds: none
/// vanishes with a dead executor's mailbox.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Execute<T: Send + 'static> {
    /// Tasks pushed into the executor's queue with this message.
    pub(crate) tasks: u32,
    /// How many queued tasks may start now, each holding one credit until its `Done`.
    pub(crate) credits: u32,
    /// The executor it is for, and the way back if it never gets there.
    executor: usize,
    back: Arc<ReturnPath<T>>,
}

impl<T: Send + 'static> Execute<T> {
    /// An `Execute` for executor `executor`.
    pub(crate) fn new(
        executor: usize,
        tasks: u32,
        credits: u32,
        back: &Arc<ReturnPath<T>>,
    ) -> Self {
        Execute {
            tasks,
            credits,
            executor,
            back: Arc::clone(back),
        }
    }

    /// Takes the count of tasks queued and the credits: the executor received them.
    pub(crate) fn take(&mut self) -> (u32, u32) {
        (
            std::mem::take(&mut self.tasks),
            std::mem::take(&mut self.credits),
        )
    }
}

impl<T: Send + 'static> Drop for Execute<T> {
    fn drop(&mut self) {
        let (tasks, credits) = self.take();
        if tasks > 0 || credits > 0 {
            self.back.undelivered(self.executor, credits);
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Execute<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execute")
            .field("tasks", &self.tasks)
            .field("credits", &self.credits)
            .finish()
    }
}

/// Executor → Scheduler: these attempts ended (one entry per attempt, exactly once), and these
/// slots are free again.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub(crate) struct Done {
    /// The executor that ran them.
    pub(crate) executor: usize,
    /// The attempts that ended.
    pub(crate) finished: Vec<Finished>,
    /// Credits given back: slots left by ended tasks that no queued task took over, and credits
    /// of an `Execute` that found no queued task to start.
    pub(crate) freed: u32,
    /// Tasks that left the executor's queue since its last `Done`.
    pub(crate) dequeued: u32,
    /// Credits from `Execute` messages spent or given back since its last `Done`.
    pub(crate) credits_used: u32,
    /// Attempts started since its last `Done` (a task cancelled in the queue counts as started
    /// and finished). The Scheduler mirrors them into `Stats::started` after the ends, so
    /// `Stats::busy` (started − finished) never reads above the limit.
    pub(crate) started: u32,
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

/// Fetcher → Executor: cancellation of a running task was requested; signal it now and drop it
/// after `grace`. Replies what it found. (A task queued there and not started is not its to
/// cancel: the Fetcher takes the queues back first and cancels it itself.)
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
#[rtype(result = "Option<ShutdownPlan>")]
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

/// Handle → Fetcher: the source did not close within the shutdown's slack; stop now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Abandon;

/// Handle → Fetcher: wait for acks in flight, close the source with `unstarted`, resolve the
/// remaining trackers as shut down, and stop. Replies with the tasks handed back.
pub(crate) struct CloseSource<T> {
    pub(crate) unstarted: Vec<Task<T>>,
}

impl<T: 'static> Message for CloseSource<T> {
    type Result = Result<Vec<Task<T>>, SourceError>;
}

// ---- Actors that die (crate-internal) --------------------------------------------------------

/// How tasks an executor can no longer run find their way back to the Fetcher. Shared (one
/// `Arc`) by the executors and every [`Execute`]: an `Execute` dropped undelivered (its executor
/// is gone) sends its tasks and credits back on it, and so does an executor dropped while it
/// held tasks (its arbiter stopped, its actor panicked). If the Fetcher is gone too, what could
/// not come back is counted lost ([`Orphans`]'s `Drop`), never dropped silently.
pub(crate) struct ReturnPath<T: Send + 'static> {
    pub(crate) fetcher: Recipient<Orphans<T>>,
    pub(crate) counters: Arc<Counters>,
}

impl<T: Send + 'static> ReturnPath<T> {
    /// Sends `unstarted` tasks, `interrupted` running ones and unused `credits` of executor
    /// `executor` back to the Fetcher; if it is gone, the tasks are counted lost.
    pub(crate) fn send(
        &self,
        executor: usize,
        unstarted: Vec<Task<T>>,
        interrupted: Vec<TaskId>,
        credits: u32,
    ) {
        if unstarted.is_empty() && interrupted.is_empty() && credits == 0 {
            return;
        }
        self.orphans(executor, unstarted, interrupted, credits);
    }

    /// An [`Execute`] for `executor` was never delivered (it is gone): its credits come back,
    /// and the Fetcher takes back what that executor's queue holds.
    pub(crate) fn undelivered(&self, executor: usize, credits: u32) {
        self.orphans(executor, Vec::new(), Vec::new(), credits);
    }

    fn orphans(
        &self,
        executor: usize,
        unstarted: Vec<Task<T>>,
        interrupted: Vec<TaskId>,
        credits: u32,
    ) {
        // An undelivered message is dropped, and its `Drop` counts what it carried as lost.
        self.fetcher.do_send(Orphans {
            executor,
            unstarted,
            interrupted,
            credits,
            counters: Arc::clone(&self.counters),
        });
    }
}

/// Executor (or an undelivered [`Execute`]) → Fetcher: executor `executor` is gone; these tasks
/// never started there (the Fetcher takes them back), these were running when it died (their
/// futures are dropped: a source with a copy gets them back through their `Interrupted`
/// outcome, otherwise they are lost), and these credits were never spent (the Fetcher spends
/// them elsewhere). The Fetcher also takes back what is still in that executor's queue.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Orphans<T: Send + 'static> {
    pub(crate) executor: usize,
    pub(crate) unstarted: Vec<Task<T>>,
    pub(crate) interrupted: Vec<TaskId>,
    pub(crate) credits: u32,
    counters: Arc<Counters>,
}

impl<T: Send + 'static> Orphans<T> {
    /// Records the interrupted tasks as lost (the source keeps no copy of them).
    pub(crate) fn interrupted_are_lost(&mut self) {
        let ids = std::mem::take(&mut self.interrupted);
        self.counters.record_lost(&ids);
    }
}

impl<T: Send + 'static> fmt::Debug for Orphans<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orphans")
            .field("executor", &self.executor)
            .field("unstarted", &self.unstarted.len())
            .field("interrupted", &self.interrupted.len())
            .field("credits", &self.credits)
            .finish()
    }
}

impl<T: Send + 'static> Drop for Orphans<T> {
    /// Whatever no handler took is lost: never silently.
    fn drop(&mut self) {
        if self.unstarted.is_empty() && self.interrupted.is_empty() {
            return;
        }
        let mut ids: Vec<TaskId> = self.unstarted.iter().map(|t| t.id).collect();
        ids.append(&mut self.interrupted);
        tracing::error!(
            executor = self.executor,
            lost = ids.len(),
            "an executor died and the fetcher is gone: its tasks are lost"
        );
        self.counters.record_lost(&ids);
    }
}

#[cfg(test)]
mod tests {
    use super::LocalQueue;
    use crate::stats::Counters;
    use crate::task::{Task, TaskId};
    use std::sync::Arc;

    fn task(id: u64) -> Task<u64> {
        Task::new(TaskId(id), id)
    }

    /// Oldest first, each task taken once, whichever side takes it; the count left comes with
    /// the take.
    #[test]
    fn a_local_queue_hands_each_task_out_once_in_order() {
        let q = LocalQueue::new(Arc::new(Counters::new(4, 1, "t")));
        q.push(task(1));
        q.locked().extend([task(2), task(3), task(4)]);
        assert_eq!(q.len(), 4);
        let (first, left) = q.take_counted();
        assert_eq!((first.map(|t| t.id), left), (Some(TaskId(1)), 3));
        let back: Vec<TaskId> = q.take_up_to(2).into_iter().map(|t| t.id).collect();
        assert_eq!(back, [TaskId(2), TaskId(3)]);
        assert_eq!(q.take().map(|t| t.id), Some(TaskId(4)));
        assert!(q.is_empty());
        assert_eq!(q.take_counted().1, 0);
        assert!(q.take_up_to(usize::MAX).is_empty());
    }
}
