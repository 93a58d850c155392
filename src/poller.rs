//! The handle users keep: submit, cancel, dead tasks, progress, stats, shutdown. It only talks
//! to the actors through their addresses; the builder ([`crate::builder`]) wires them, and the
//! shutdown sequence lives in [`crate::shutdown`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};

use crate::builder::PollerBuilder;
use crate::error::{RequestError, ShutdownError, SubmitError};
use crate::executor::Executor;
use crate::fetcher::Fetcher;
use crate::handler::TaskHandler;
use crate::messages::{
    Cancel, CancelOutcome, GetCounts, GetProgress, GetStats, GetStatus, ListDead, Notify, Pause,
    PauseKey, PurgeDead, Receipt, RerunDead, Resume, ResumeKey, Submit, SubmitBatch,
};
use crate::pace::Key;
use crate::scheduler::Scheduler;
use crate::shutdown::{ShutdownLinks, ShutdownReport};
use crate::source::memory::MemorySource;
use crate::source::Source;
use crate::stats::{Counters, ExecutorStats, Stats};
use crate::task::{DeadTask, Progress, QueueCounts, TaskId, TaskOptions, TaskStatus};

/// What the handle holds: the actors' addresses, the shared counters, and a few facts.
pub(crate) struct Handle<T: Send + 'static> {
    submit: Recipient<Submit<T>>,
    submit_batch: Recipient<SubmitBatch<T>>,
    notify: Recipient<Notify>,
    pause: Recipient<Pause>,
    resume: Recipient<Resume>,
    pause_key: Recipient<PauseKey>,
    resume_key: Recipient<ResumeKey>,
    cancel: Recipient<Cancel>,
    list_dead: Recipient<ListDead>,
    rerun_dead: Recipient<RerunDead>,
    purge_dead: Recipient<PurgeDead>,
    progress: Recipient<GetProgress>,
    status: Recipient<GetStatus>,
    counts: Recipient<GetCounts>,
    stats: Recipient<GetStats>,
    shutdown: ShutdownLinks<T>,
    counters: Arc<Counters>,
    /// Mirrors "shutdown began" so submits fail fast; the Fetcher's phase is what decides.
    closed: AtomicBool,
    /// [`Poller::detach`] was called: dropping the last handle leaves the poller running.
    detached: AtomicBool,
    /// The arbiter that started the poller, where its Scheduler and Fetcher live: a shutdown
    /// started by dropping the last handle runs there.
    arbiter: ArbiterHandle,
    workers: usize,
    executors: usize,
    current_arbiter: bool,
    source_name: &'static str,
}

impl<T: Send + 'static> Handle<T> {
    /// The handle to actors the builder started.
    pub(crate) fn wire<S: Source<T>, H: TaskHandler<T>>(
        fetcher: &Addr<Fetcher<T, S>>,
        scheduler: &Addr<Scheduler>,
        executors: &[Addr<Executor<T, H>>],
        counters: Arc<Counters>,
        workers: usize,
        current_arbiter: bool,
        source_name: &'static str,
    ) -> Self {
        Handle {
            submit: fetcher.clone().recipient(),
            submit_batch: fetcher.clone().recipient(),
            notify: fetcher.clone().recipient(),
            pause: fetcher.clone().recipient(),
            resume: fetcher.clone().recipient(),
            pause_key: fetcher.clone().recipient(),
            resume_key: fetcher.clone().recipient(),
            cancel: fetcher.clone().recipient(),
            list_dead: fetcher.clone().recipient(),
            rerun_dead: fetcher.clone().recipient(),
            purge_dead: fetcher.clone().recipient(),
            progress: fetcher.clone().recipient(),
            status: fetcher.clone().recipient(),
            counts: fetcher.clone().recipient(),
            stats: scheduler.clone().recipient(),
            shutdown: ShutdownLinks {
                begin: scheduler.clone().recipient(),
                stop_fetching: fetcher.clone().recipient(),
                drains: executors.iter().map(|a| a.clone().recipient()).collect(),
                flush: scheduler.clone().recipient(),
                close: fetcher.clone().recipient(),
                abandon: fetcher.clone().recipient(),
                counters: Arc::clone(&counters),
            },
            counters,
            closed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            arbiter: Arbiter::current(),
            workers,
            executors: executors.len(),
            current_arbiter,
            source_name,
        }
    }
}

/// The handle to a running poller: cheap to clone, `Send + Sync`, usable from any thread (put it
/// in actix-web's `web::Data`).
///
/// **Dropping the last handle shuts the poller down**, like dropping a tokio runtime: unless
/// [`shutdown`](Self::shutdown) ran (or [`detach`](Self::detach) was called), the last handle's
/// drop starts a shutdown with zero grace in the background, on the arbiter that started the
/// poller. Running tasks are interrupted, the executors' arbiter threads stop, every actor is
/// dropped, and a durable source releases its leases (if the actix `System` still runs). The
/// in-memory source's tasks, which a shutdown would hand back, are dropped with it (their
/// number is logged). Call `shutdown` to drain and to get them back.
///
/// # Examples
///
/// ```
/// use actix_poller::{FinalState, Poller};
///
/// #[actix_rt::main]
/// async fn main() {
///     let poller = Poller::<String>::builder()
///         .workers(4)
///         .start(|name: String, _cx| async move {
///             if name.is_empty() { Err("empty name") } else { Ok(()) }
///         })
///         .unwrap();
///     let ok = poller.submit_tracked("a.png".to_string()).await.unwrap();
///     let bad = poller.submit_tracked(String::new()).await.unwrap();
///     assert_eq!(ok.outcome().await.unwrap(), FinalState::Completed);
///     assert!(matches!(bad.outcome().await.unwrap(), FinalState::Dead { .. }));
///     poller.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
/// }
/// ```
pub struct Poller<T> {
    // Behind a trait object so the struct itself needs no bound on `T` (the actors' addresses
    // do): the bounds live on the impls.
    inner: Arc<dyn HandleRef<T>>,
}

/// Erases [`Handle`]'s bounds from [`Poller`]'s definition.
trait HandleRef<T>: Send + Sync {
    fn get(&self) -> &Handle<T>
    where
        T: Send + 'static;
}

impl<T: Send + 'static> HandleRef<T> for Handle<T> {
    fn get(&self) -> &Handle<T> {
        self
    }
}

impl<T: Send + 'static> Poller<T> {
    pub(crate) fn from_handle(handle: Handle<T>) -> Self {
        Poller {
            inner: Arc::new(handle),
        }
    }

    fn handle(&self) -> &Handle<T> {
        self.inner.get()
    }
}

impl<T> Clone for Poller<T> {
    fn clone(&self) -> Self {
        Poller {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("workers", &self.handle().workers)
            .field("executors", &self.handle().executors)
            .field("closed", &self.handle().closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Send + 'static> Poller<T> {
    /// A builder with the in-memory source; see [`PollerBuilder`].
    pub fn builder() -> PollerBuilder<T, MemorySource<T>> {
        PollerBuilder::new()
    }

    /// Submits one task. Resolves once the source has it (not when it has run).
    ///
    /// # Errors
    ///
    /// Hands the task back: [`SubmitError::Full`] when the queue is full (back-pressure),
    /// [`SubmitError::Closed`] after shutdown began, [`SubmitError::Unsupported`] when the source
    /// takes no submissions, [`SubmitError::Source`] when the source failed to store it (a
    /// database error).
    pub async fn submit(&self, task: T) -> Result<Receipt, SubmitError<T>> {
        self.send_submit(Submit::new(task)).await
    }

    /// Submits one task and tracks it: `receipt.outcome().await` yields its final state.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_tracked(&self, task: T) -> Result<Receipt, SubmitError<T>> {
        self.send_submit(Submit::new(task).tracked()).await
    }

    /// Submits one task with options, e.g.
    /// `poller.submit_with(Submit::new(x).options(TaskOptions::new().priority(5)).tracked())`.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_with(&self, msg: Submit<T>) -> Result<Receipt, SubmitError<T>> {
        self.send_submit(msg).await
    }

    /// Submits a batch with options (shared by every task of the batch), all or none.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), handing the whole batch back.
    pub async fn submit_batch_with(
        &self,
        msg: SubmitBatch<T>,
    ) -> Result<Vec<Receipt>, SubmitError<Vec<T>>> {
        self.send_batch(msg).await
    }

    /// Submits one task that is not fetched before `delay` has passed. A delayed task costs no
    /// polling: the Fetcher wakes at the earliest due time.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_after(&self, task: T, delay: Duration) -> Result<Receipt, SubmitError<T>> {
        let options = TaskOptions::new().delay(delay);
        self.send_submit(Submit::new(task).options(options)).await
    }

    /// Cancels a task: a waiting one is removed (final state `Cancelled`); a running one sees
    /// [`TaskContext::is_cancelled`](crate::TaskContext::is_cancelled) and is dropped after the
    /// cancel grace if it has not ended by then.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{CancelOutcome, FinalState, Poller, TaskContext};
    /// use std::time::Duration;
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let poller = Poller::<u32>::builder()
    ///         .workers(1)
    ///         .start(|_n: u32, cx: TaskContext| async move {
    ///             // A long job that stops when asked.
    ///             cx.cancelled().await;
    ///             Err("stopped on request")
    ///         })
    ///         .unwrap();
    ///     let running = poller.submit_tracked(1).await.unwrap();
    ///     let queued = poller.submit_tracked(2).await.unwrap();
    ///     while poller.stats().busy == 0 {
    ///         actix_rt::time::sleep(Duration::from_millis(1)).await;
    ///     }
    ///     assert_eq!(poller.cancel(queued.id()).await, Ok(CancelOutcome::Dequeued));
    ///     assert_eq!(poller.cancel(running.id()).await, Ok(CancelOutcome::Signalled));
    ///     assert_eq!(queued.outcome().await, Ok(FinalState::Cancelled));
    ///     assert_eq!(running.outcome().await, Ok(FinalState::Cancelled));
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, RequestError> {
        let answer = self.handle().cancel.send(Cancel { id }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// The most recent dead tasks, newest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn dead_tasks(&self, limit: usize) -> Result<Vec<DeadTask>, RequestError> {
        let answer = self.handle().list_dead.send(ListDead { limit }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// Runs dead tasks again from attempt 1; returns the ids that were queued (a dead task kept
    /// without its payload cannot run again).
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn rerun_dead(&self, ids: Vec<TaskId>) -> Result<Vec<TaskId>, RequestError> {
        let answer = self.handle().rerun_dead.send(RerunDead { ids }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// Where task `id` is: queued, scheduled, retrying (with the last error), running (since
    /// when, with its progress if tracked), or how it ended and when. `None` when the source
    /// does not know it: the in-memory source forgets a final state after
    /// [`MemorySource::history`](crate::MemorySource::history) (10,000 tasks or an hour by
    /// default); a durable source answers from its table for any task it keeps, whichever
    /// process ran it (see its retention), also after a restart.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{Poller, TaskContext, TaskState};
    ///
    /// # #[actix_rt::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let poller = Poller::<u32>::builder()
    ///     .start(|_n: u32, _cx: TaskContext| async { Ok::<_, std::io::Error>(()) })?;
    /// let receipt = poller.submit_tracked(7).await?;
    /// let id = receipt.id();
    /// receipt.outcome().await?;
    /// let status = poller.status(id).await?.expect("kept in the history");
    /// assert!(matches!(status.state, TaskState::Completed { .. }));
    /// # poller.shutdown(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn status(&self, id: TaskId) -> Result<Option<TaskStatus>, RequestError> {
        let answer = self.handle().status.send(GetStatus { id }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// How many tasks the source holds in each state (queued, scheduled, retrying, running,
    /// dead); `None` when the source cannot count them. A durable source counts its whole
    /// table (every process's tasks) in one statement.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn counts(&self) -> Result<Option<QueueCounts>, RequestError> {
        let answer = self.handle().counts.send(GetCounts).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// Forgets dead tasks (`None`: all); returns how many.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn purge_dead(&self, ids: Option<Vec<TaskId>>) -> Result<usize, RequestError> {
        let answer = self.handle().purge_dead.send(PurgeDead { ids }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// The last progress reported by a tracked task that has not finished yet (`None` for an
    /// untracked or finished task).
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown.
    pub async fn progress(&self, id: TaskId) -> Result<Option<Progress>, RequestError> {
        self.handle()
            .progress
            .send(GetProgress { id })
            .await
            .map_err(|_| RequestError::Closed)
    }

    async fn send_submit(&self, mut msg: Submit<T>) -> Result<Receipt, SubmitError<T>> {
        if self.handle().closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(msg.task.take()));
        }
        let back = msg.task.return_on_drop();
        match self.handle().submit.send(msg).await {
            Ok(result) => result,
            // The Fetcher is gone and the message was dropped undelivered: the task comes back
            // (see `Returnable`). The Fetcher takes a submit's task only in its handler, which
            // always answers, and stops only once no enqueue is in flight: the task is missing
            // only if the Fetcher's thread died inside an enqueue in flight (its `System` torn
            // down), when neither the task nor its fate can be known.
            Err(_) => Err(back.await.map_or(SubmitError::Unknown, SubmitError::Closed)),
        }
    }

    /// Submits many tasks in one message, all or none.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), handing the whole batch back.
    pub async fn submit_batch(&self, tasks: Vec<T>) -> Result<Vec<Receipt>, SubmitError<Vec<T>>> {
        self.send_batch(SubmitBatch::new(tasks)).await
    }

    /// Submits many tasks in one message, all or none, tracking each.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), handing the whole batch back.
    pub async fn submit_batch_tracked(
        &self,
        tasks: Vec<T>,
    ) -> Result<Vec<Receipt>, SubmitError<Vec<T>>> {
        self.send_batch(SubmitBatch::new(tasks).tracked()).await
    }

    async fn send_batch(
        &self,
        mut msg: SubmitBatch<T>,
    ) -> Result<Vec<Receipt>, SubmitError<Vec<T>>> {
        if self.handle().closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(msg.tasks.take()));
        }
        let back = msg.tasks.return_on_drop();
        match self.handle().submit_batch.send(msg).await {
            Ok(result) => result,
            // As in `send_submit`.
            Err(_) => Err(back.await.map_or(SubmitError::Unknown, SubmitError::Closed)),
        }
    }

    /// The Fetcher's `Submit` address, for actors that should not know the poller's types.
    pub fn submit_recipient(&self) -> Recipient<Submit<T>> {
        self.handle().submit.clone()
    }

    /// The Fetcher's `SubmitBatch` address.
    pub fn submit_batch_recipient(&self) -> Recipient<SubmitBatch<T>> {
        self.handle().submit_batch.clone()
    }

    /// Starts no new task until [`resume`](Self::resume); running tasks finish. Tasks already
    /// queued ahead at an executor (at most `dispatch_ahead` each, only when no pace limit is
    /// set) may still start.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[actix_rt::main]
    /// # async fn main() {
    /// use actix_poller::Poller;
    ///
    /// let poller = Poller::<u32>::builder()
    ///     .start(|_x: u32, _cx| async { Ok::<(), std::io::Error>(()) })
    ///     .unwrap();
    /// poller.pause();
    /// poller.submit(1).await.unwrap(); // queued, not started
    /// poller.resume();
    /// poller.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
    /// # }
    /// ```
    pub fn pause(&self) {
        self.handle().pause.do_send(Pause { duration: None });
    }

    /// Like [`pause`](Self::pause), for `d` (`Duration::MAX`: far future).
    pub fn pause_for(&self, d: Duration) {
        self.handle().pause.do_send(Pause { duration: Some(d) });
    }

    /// Ends a [`pause`](Self::pause) (paused keys stay paused).
    pub fn resume(&self) {
        self.handle().resume.do_send(Resume);
    }

    /// Starts no new task with `key` until [`resume_key`](Self::resume_key); other keys' tasks
    /// keep starting, and are not held behind this key's.
    pub fn pause_key(&self, key: impl Into<Key>) {
        self.handle().pause_key.do_send(PauseKey {
            key: key.into(),
            duration: None,
        });
    }

    /// Like [`pause_key`](Self::pause_key), for `d` (`Duration::MAX`: far future).
    pub fn pause_key_for(&self, key: impl Into<Key>, d: Duration) {
        self.handle().pause_key.do_send(PauseKey {
            key: key.into(),
            duration: Some(d),
        });
    }

    /// Ends a pause of `key` (from [`pause_key`](Self::pause_key) or a
    /// [`Backpressure`](crate::Backpressure)).
    pub fn resume_key(&self, key: impl Into<Key>) {
        self.handle()
            .resume_key
            .do_send(ResumeKey { key: key.into() });
    }

    /// The Fetcher's `Notify` address: tell it the source may have new tasks.
    pub fn notify_recipient(&self) -> Recipient<Notify> {
        self.handle().notify.clone()
    }

    /// The Scheduler's `GetStats` address.
    pub fn stats_recipient(&self) -> Recipient<GetStats> {
        self.handle().stats.clone()
    }

    /// A snapshot of the counters (a cheap read of mirrored atomics; no message).
    pub fn stats(&self) -> Stats {
        self.handle().counters.snapshot()
    }

    /// A snapshot of each executor's counters, indexed by executor.
    pub fn executor_stats(&self) -> Vec<ExecutorStats> {
        self.handle().counters.executor_snapshot()
    }

    /// The concurrency limit.
    pub fn workers(&self) -> usize {
        self.handle().workers
    }

    /// The number of executors.
    pub fn executors(&self) -> usize {
        self.handle().executors
    }

    /// `true` when the executors run on the arbiter that started the poller, `false` when each
    /// has its own arbiter thread.
    pub fn executors_on_current_arbiter(&self) -> bool {
        self.handle().current_arbiter
    }

    /// The source's type name (for logs and topology rendering).
    pub fn source_name(&self) -> &'static str {
        self.handle().source_name
    }

    /// Keeps the poller running when every handle has been dropped without
    /// [`shutdown`](Self::shutdown): its actors and arbiter threads then live until the actix
    /// `System` stops. By default the last handle's drop shuts the poller down (see
    /// [`Poller`]). Applies to every clone of this handle.
    pub fn detach(&self) {
        self.handle().detached.store(true, Ordering::Release);
    }

    /// `true` once shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.handle().closed.load(Ordering::Acquire)
    }

    /// Shuts the poller down in two phases: stop fetching; let running tasks finish for up to
    /// `grace`, then cancel what still runs. Tasks fetched but not started go back to the source
    /// (the in-memory source hands them back in the report, with everything still queued).
    ///
    /// When it returns, every actor of this poller has been dropped and every arbiter it started
    /// has stopped and been joined, unless [`ShutdownReport::unfinished`] names what did not;
    /// later submits fail with [`SubmitError::Closed`]. Await it to the end: dropping the future
    /// half-way leaves the poller half shut.
    ///
    /// It returns within `grace` + [`SHUTDOWN_SLACK`](crate::SHUTDOWN_SLACK) whatever handlers
    /// and the source do (a handler blocking its thread, a source call that hangs); a `grace`
    /// too long to represent (`Duration::MAX`) waits as long as tasks run. Executors that died
    /// before it ran (their arbiter stopped, for instance with the actix `System`) are listed in
    /// [`ShutdownReport::executors_lost`]: the tasks they held are handed back, released to a
    /// durable source, or listed in [`ShutdownReport::lost`].
    ///
    /// # Errors
    ///
    /// [`ShutdownError::AlreadyShutDown`] on a second call; [`ShutdownError::Source`] if the source
    /// failed to release its unstarted tasks (the actors are still stopped).
    pub async fn shutdown(&self, grace: Duration) -> Result<ShutdownReport<T>, ShutdownError> {
        crate::shutdown::run(&self.handle().shutdown, &self.handle().closed, grace).await
    }
}

impl<T: Send + 'static> Drop for Handle<T> {
    /// The last handle is gone: shut the poller down in the background (see [`Poller`]).
    fn drop(&mut self) {
        if self.detached.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire) {
            return;
        }
        let links = self.shutdown.clone();
        let spawned = self.arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let closed = AtomicBool::new(false);
                match crate::shutdown::run(&links, &closed, Duration::ZERO).await {
                    Ok(report) => tracing::warn!(
                        interrupted = report.cancelled,
                        dropped = report.handed_back.len(),
                        lost = report.lost.len(),
                        unfinished = ?report.unfinished,
                        "every Poller handle was dropped without shutdown: shut down with zero \
                         grace; the tasks it would have handed back are dropped"
                    ),
                    Err(ShutdownError::AlreadyShutDown) => {}
                    Err(error) => tracing::warn!(
                        %error,
                        "every Poller handle was dropped without shutdown; shutting down failed"
                    ),
                }
            });
        });
        if !spawned {
            tracing::debug!("the last Poller handle dropped after its arbiter stopped");
        }
    }
}
