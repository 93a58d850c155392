//! The builder that starts a poller, and the handle users keep.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::{Arbiter, System};
use tokio::sync::oneshot;

use crate::error::RequestError;
use crate::error::{ShutdownError, StartError, SubmitError};
use crate::executor::{BoxError, Executor, TaskHandler};
use crate::fetcher::{Fetcher, FetcherConfig};
use crate::messages::{
    BeginShutdown, CloseSource, Drain, Flush, GetStats, Notify, Receipt, StopFetching, Submit,
    SubmitBatch,
};
use crate::messages::{Cancel, CancelOutcome, GetProgress, ListDead, PurgeDead, RerunDead};
use crate::scheduler::Scheduler;
use crate::source::memory::MemorySource;
use crate::source::{FetchLimits, RetrySupport, Source};
use crate::stats::{Counters, ExecutorStats, Stats};
use crate::task::{
    Backoff, DeadTask, Progress, RetryPolicy, Task, TaskContext, TaskId, TaskOptions,
};

/// Held by an actor; dropping it (when the actor is dropped) closes the paired receiver, which is
/// how shutdown knows the actor is gone.
pub(crate) type DropGuard = oneshot::Sender<()>;

/// What only the Scheduler holds until shutdown begins, handed out once.
#[derive(Debug)]
pub(crate) struct ShutdownPlan {
    arbiters: Vec<Arbiter>,
    actors_gone: Vec<oneshot::Receiver<()>>,
}

/// What [`Poller::shutdown`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct ShutdownReport<T> {
    /// Tasks that finished (in any state) while running tasks were drained.
    pub finished_during_drain: usize,
    /// Tasks still running at the deadline, dropped. Unless their cancellation had been asked
    /// for, they were only *interrupted* ([`Outcome::Interrupted`](crate::Outcome)): the source
    /// takes them back with the attempt not counted (a durable source makes them due again; the
    /// in-memory source hands them back below when retries are on, as it then keeps a copy).
    pub cancelled: usize,
    /// Tasks handed back: with the in-memory source, those dispatched or fetched but not started
    /// (in the order they were fetched), then everything still queued, including interrupted
    /// ones it kept a copy of (each at the back of its priority); a durable source releases them
    /// instead and hands back none.
    pub handed_back: Vec<Task<T>>,
}

/// Builds and starts a [`Poller`]. Get one from [`Poller::builder`].
///
/// # Examples
///
/// ```
/// use actix_poller::Poller;
/// use std::convert::Infallible;
///
/// #[actix_rt::main]
/// async fn main() {
///     let poller = Poller::<u64>::builder()
///         .workers(8)
///         .capacity(10_000)
///         .start(|n: u64, _cx| async move { let _ = n * 2; Ok::<_, Infallible>(()) })
///         .expect("valid configuration inside an actix System");
///     poller.submit(21).await.expect("room in the queue");
///     poller.shutdown(std::time::Duration::from_secs(5)).await.expect("first shutdown");
/// }
/// ```
pub struct PollerBuilder<T, S = MemorySource<T>> {
    workers: usize,
    executors: Option<usize>,
    current_arbiter: bool,
    prefetch: usize,
    dispatch_ahead: Option<usize>,
    fetch_backoff: Backoff,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    cancel_grace: Duration,
    capacity: Option<usize>,
    source: S,
    _payload: std::marker::PhantomData<fn(T)>,
}

impl<T, S> fmt::Debug for PollerBuilder<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollerBuilder")
            .field("workers", &self.workers)
            .field("executors", &self.executors)
            .field("current_arbiter", &self.current_arbiter)
            .field("prefetch", &self.prefetch)
            .field("dispatch_ahead", &self.dispatch_ahead)
            .field("fetch_backoff", &self.fetch_backoff)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The default concurrency limit.
pub const DEFAULT_WORKERS: usize = 16;

/// The most tasks an executor holds queued beyond its credits unless
/// [`PollerBuilder::dispatch_ahead`] says otherwise.
pub const DEFAULT_DISPATCH_AHEAD: usize = 64;

/// The default time a cancelled running task has to wind down before its future is dropped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

impl<T: Send + 'static> PollerBuilder<T, MemorySource<T>> {
    fn new() -> Self {
        PollerBuilder {
            workers: DEFAULT_WORKERS,
            executors: None,
            current_arbiter: false,
            prefetch: 0,
            dispatch_ahead: None,
            fetch_backoff: Backoff::default(),
            retry: RetryPolicy::none(),
            timeout: None,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            capacity: None,
            source: MemorySource::default(),
            _payload: std::marker::PhantomData,
        }
    }

    /// The in-memory queue's capacity (default
    /// [`memory::DEFAULT_CAPACITY`](crate::source::memory::DEFAULT_CAPACITY)). A submit that
    /// does not fit is handed back as [`SubmitError::Full`].
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self.source.capacity = capacity;
        self
    }
}

impl<T: Send + 'static, S: Source<T>> PollerBuilder<T, S> {
    /// The most tasks that may run at once (default [`DEFAULT_WORKERS`]).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many executor actors run tasks, each on its own arbiter thread (default: one per
    /// available core). Tasks are spread over them, least loaded first.
    pub fn executors(mut self, executors: usize) -> Self {
        self.executors = Some(executors);
        self
    }

    /// Run the executors on the current arbiter instead of their own threads (default: one
    /// executor unless [`executors`](Self::executors) says otherwise). Useful for tests with
    /// paused time, for `!Send` state, and for I/O-bound tasks that need no second core.
    pub fn on_current_arbiter(mut self) -> Self {
        self.current_arbiter = true;
        self
    }

    /// How many tasks the Fetcher may fetch ahead of free slots (default 0: it never fetches more
    /// than the free slots). A slow source keeps workers busy with a few tasks in hand; those
    /// tasks go back to the source at shutdown.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// At most how many tasks each executor may hold queued beyond its credits (default
    /// [`DEFAULT_DISPATCH_AHEAD`]).
    ///
    /// When one of an executor's tasks ends, a queued task takes over its slot at once, without
    /// waiting for the slot to travel to the Scheduler and back through the Fetcher: that round
    /// trip is two thread hops when executors run on their own arbiters, and the System thread
    /// may wait for a core while CPU-bound executors hold both. The bound is unchanged (a queued
    /// task starts only in a slot its executor already holds). Each executor's queue adapts
    /// below this limit: twice what it finished between two of its reports, so short tasks get
    /// a deep queue and long ones a queue of one or two.
    ///
    /// The price: a queued task is committed to its executor, so a higher-priority task fetched
    /// later may start after the few tasks queued ahead of it. `0` turns queueing off: every
    /// start then waits for a credit, and priorities are strict among due tasks. A cancelled
    /// queued task ends at once; queued tasks go back to the source at shutdown, like prefetched
    /// ones.
    pub fn dispatch_ahead(mut self, n: usize) -> Self {
        self.dispatch_ahead = Some(n);
        self
    }

    /// The backoff between failed fetches (default: 50 ms doubling to 30 s, 20 % jitter).
    pub fn fetch_backoff(mut self, backoff: Backoff) -> Self {
        self.fetch_backoff = backoff;
        self
    }

    /// How tasks retry: attempts in all and the backoff between them (default: one attempt).
    /// A task may override its attempts with [`TaskOptions::max_attempts`]. A task waiting for
    /// its retry is back in the source and holds no worker slot.
    ///
    /// The source must be able to run a task again ([`RetrySupport`]): the in-memory source
    /// keeps a copy of each payload while it runs, so it needs `T: Clone`.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{FinalState, Poller, RetryPolicy, TaskContext};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let calls = Arc::new(AtomicU32::new(0));
    ///     let c = calls.clone();
    ///     let poller = Poller::<&'static str>::builder()
    ///         .retry(RetryPolicy::attempts(3).fixed(Duration::from_millis(10)))
    ///         .start(move |_url: &'static str, cx: TaskContext| {
    ///             c.fetch_add(1, Ordering::SeqCst);
    ///             // Fails twice, then succeeds.
    ///             async move { if cx.attempt() < 3 { Err("503 from upstream") } else { Ok(()) } }
    ///         })
    ///         .unwrap();
    ///     let receipt = poller.submit_tracked("https://example.invalid").await.unwrap();
    ///     assert_eq!(receipt.outcome().await, Ok(FinalState::Completed));
    ///     assert_eq!(calls.load(Ordering::SeqCst), 3);
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self
    where
        S: RetrySupport<T>,
    {
        self.source.enable_retries();
        self.retry = policy;
        self
    }

    /// The default per-attempt timeout (default: none). At the deadline the task's future is
    /// dropped, its slot freed, and the attempt recorded as timed out (a failure, retried if
    /// attempts remain). A task may override it with [`TaskOptions::timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{FinalState, Poller, Submit, TaskOptions};
    /// use std::time::Duration;
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let poller = Poller::<u64>::builder()
    ///         .timeout(Duration::from_millis(20))
    ///         .start(|ms: u64, _cx| async move {
    ///             actix_rt::time::sleep(Duration::from_millis(ms)).await;
    ///             Ok::<_, std::convert::Infallible>(())
    ///         })
    ///         .unwrap();
    ///     let slow = poller.submit_tracked(10_000).await.unwrap();
    ///     assert_eq!(
    ///         slow.outcome().await,
    ///         Ok(FinalState::Dead { error: "timed out after 20ms".into(), attempts: 1 })
    ///     );
    ///     // This one may take a second.
    ///     let opts = TaskOptions::new().timeout(Duration::from_secs(1));
    ///     let patient = poller.submit_with(Submit::new(50).options(opts).tracked()).await.unwrap();
    ///     assert_eq!(patient.outcome().await, Ok(FinalState::Completed));
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a running task has, after [`Poller::cancel`] signals it, before its future is
    /// dropped (default [`DEFAULT_CANCEL_GRACE`]).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Use `source` instead of the in-memory queue.
    pub fn source<S2: Source<T>>(self, source: S2) -> PollerBuilder<T, S2> {
        PollerBuilder {
            workers: self.workers,
            executors: self.executors,
            current_arbiter: self.current_arbiter,
            prefetch: self.prefetch,
            dispatch_ahead: self.dispatch_ahead,
            fetch_backoff: self.fetch_backoff,
            retry: self.retry,
            timeout: self.timeout,
            cancel_grace: self.cancel_grace,
            capacity: None,
            source,
            _payload: std::marker::PhantomData,
        }
    }

    /// Starts the poller with `handler`, an async function of the payload and a
    /// [`TaskContext`](crate::TaskContext), cloned once per executor. (The bound is spelled out
    /// as `Fn(T, TaskContext)` so a closure's parameter types are inferred.)
    ///
    /// # Errors
    ///
    /// A [`StartError`] for a configuration that could never run a task (zero workers,
    /// executors or capacity), or when no actix `System` runs on this thread.
    pub fn start<F, Fut, E>(self, handler: F) -> Result<Poller<T>, StartError>
    where
        F: Fn(T, TaskContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), E>> + 'static,
        E: Into<BoxError>,
    {
        self.start_with(move |_executor| handler.clone())
    }

    /// Starts the poller with a handler of your own type (see [`TaskHandler`]), cloned once per
    /// executor.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_handler<H>(self, handler: H) -> Result<Poller<T>, StartError>
    where
        H: TaskHandler<T> + Clone + Send + Sync,
    {
        self.start_with(move |_executor| handler.clone())
    }

    /// Starts the poller, building each executor's handler with `factory(executor_index)` on
    /// that executor's own thread: per-executor state (a connection, a client, a cache) lives
    /// in the handler, without a lock, and need not be `Send`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::Poller;
    /// use std::{cell::Cell, convert::Infallible, rc::Rc};
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let poller = Poller::<u32>::builder()
    ///         .start_with(|_executor| {
    ///             // One counter per executor: an `Rc`, no lock.
    ///             let seen = Rc::new(Cell::new(0u32));
    ///             move |n: u32, _cx| {
    ///                 let seen = seen.clone();
    ///                 async move { seen.set(seen.get() + n); Ok::<_, Infallible>(()) }
    ///             }
    ///         })
    ///         .unwrap();
    ///     poller.submit(1).await.unwrap();
    ///     poller.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn start_with<H, F>(self, factory: F) -> Result<Poller<T>, StartError>
    where
        H: TaskHandler<T>,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        if System::try_current().is_none() || Arbiter::try_current().is_none() {
            return Err(StartError::NoSystem);
        }
        if self.workers == 0 {
            return Err(StartError::ZeroWorkers);
        }
        let executors = self.executors.unwrap_or_else(|| {
            if self.current_arbiter {
                1
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        });
        if executors == 0 {
            return Err(StartError::ZeroExecutors);
        }
        if self.capacity == Some(0) {
            return Err(StartError::ZeroCapacity);
        }
        let FetchLimits {
            max_batch,
            max_in_flight,
        } = self.source.limits();
        if max_batch == 0 || max_in_flight == 0 {
            return Err(StartError::ZeroFetchLimit);
        }

        let counters = Arc::new(Counters::new(self.workers, executors));
        let mut actors_gone = Vec::new();
        let mut guard = || {
            let (tx, rx) = oneshot::channel();
            actors_gone.push(rx);
            tx
        };

        // Addresses first, actors after: the three know each other.
        let fetcher_ctx = Context::<Fetcher<T, S>>::new();
        let fetcher = fetcher_ctx.address();
        let scheduler_ctx = Context::<Scheduler>::new();
        let scheduler = scheduler_ctx.address();

        let factory = Arc::new(factory);
        let mut arbiters = Vec::new();
        let mut executor_addrs = Vec::with_capacity(executors);
        let timeout = self.timeout;
        for index in 0..executors {
            let done = scheduler.clone().recipient();
            let g = guard();
            let factory = Arc::clone(&factory);
            let c = Arc::clone(&counters);
            let addr = if self.current_arbiter {
                Executor::new(index, factory(index), timeout, done, c, g).start()
            } else {
                let arbiter = Arbiter::new();
                let addr = Executor::start_in_arbiter(&arbiter.handle(), move |_ctx| {
                    Executor::new(index, factory(index), timeout, done, c, g)
                });
                arbiters.push(arbiter);
                addr
            };
            executor_addrs.push(addr);
        }

        let fetcher_guard = guard();
        let scheduler_guard = guard();
        let plan = ShutdownPlan {
            arbiters,
            actors_gone,
        };
        fetcher_ctx.run(Fetcher::new(
            self.source,
            executor_addrs
                .iter()
                .map(|a| a.clone().recipient())
                .collect(),
            executor_addrs
                .iter()
                .map(|a| a.clone().recipient())
                .collect(),
            FetcherConfig {
                prefetch: self.prefetch,
                ahead: self.dispatch_ahead.unwrap_or(DEFAULT_DISPATCH_AHEAD),
                fetch_backoff: self.fetch_backoff,
                default_attempts: self.retry.max_attempts(),
                cancel_grace: self.cancel_grace,
            },
            Arc::clone(&counters),
            fetcher_guard,
        ));
        scheduler_ctx.run(Scheduler::new(
            self.workers,
            executors,
            fetcher.clone().recipient(),
            *self.retry.backoff(),
            plan,
            Arc::clone(&counters),
            scheduler_guard,
        ));
        tracing::debug!(workers = self.workers, executors, "poller started");

        Ok(Poller {
            inner: Arc::new(Inner {
                submit: fetcher.clone().recipient(),
                submit_batch: fetcher.clone().recipient(),
                notify: fetcher.clone().recipient(),
                stop_fetching: fetcher.clone().recipient(),
                cancel: fetcher.clone().recipient(),
                list_dead: fetcher.clone().recipient(),
                rerun_dead: fetcher.clone().recipient(),
                purge_dead: fetcher.clone().recipient(),
                progress: fetcher.clone().recipient(),
                close: fetcher.recipient(),
                stats: scheduler.clone().recipient(),
                begin: scheduler.clone().recipient(),
                flush: scheduler.recipient(),
                drains: executor_addrs.into_iter().map(|a| a.recipient()).collect(),
                counters,
                closed: AtomicBool::new(false),
                workers: self.workers,
                current_arbiter: self.current_arbiter,
                source_name: std::any::type_name::<S>(),
            }),
        })
    }
}

struct Inner<T: Send + 'static> {
    submit: Recipient<Submit<T>>,
    submit_batch: Recipient<SubmitBatch<T>>,
    notify: Recipient<Notify>,
    stop_fetching: Recipient<StopFetching<T>>,
    close: Recipient<CloseSource<T>>,
    cancel: Recipient<Cancel>,
    list_dead: Recipient<ListDead>,
    rerun_dead: Recipient<RerunDead>,
    purge_dead: Recipient<PurgeDead>,
    progress: Recipient<GetProgress>,
    stats: Recipient<GetStats>,
    begin: Recipient<BeginShutdown>,
    flush: Recipient<Flush>,
    drains: Vec<Recipient<Drain<T>>>,
    counters: Arc<Counters>,
    /// Mirrors "shutdown began" so submits fail fast; the Fetcher's phase is what decides.
    closed: AtomicBool,
    workers: usize,
    current_arbiter: bool,
    source_name: &'static str,
}

/// The handle to a running poller: cheap to clone, `Send + Sync`, usable from any thread (put it
/// in actix-web's `web::Data`).
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
pub struct Poller<T: Send + 'static> {
    inner: Arc<Inner<T>>,
}

impl<T: Send + 'static> Clone for Poller<T> {
    fn clone(&self) -> Self {
        Poller {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("workers", &self.inner.workers)
            .field("executors", &self.inner.drains.len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
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
        let answer = self.inner.cancel.send(Cancel { id }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// The most recent dead tasks, newest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn dead_tasks(&self, limit: usize) -> Result<Vec<DeadTask>, RequestError> {
        let answer = self.inner.list_dead.send(ListDead { limit }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// Runs dead tasks again from attempt 1; returns the ids that were queued (a dead task kept
    /// without its payload cannot run again).
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn rerun_dead(&self, ids: Vec<TaskId>) -> Result<Vec<TaskId>, RequestError> {
        let answer = self.inner.rerun_dead.send(RerunDead { ids }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// Forgets dead tasks (`None`: all); returns how many.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown; [`RequestError::Source`] if the source failed.
    pub async fn purge_dead(&self, ids: Option<Vec<TaskId>>) -> Result<usize, RequestError> {
        let answer = self.inner.purge_dead.send(PurgeDead { ids }).await;
        Ok(answer.map_err(|_| RequestError::Closed)??)
    }

    /// The last progress reported by a tracked task that has not finished yet (`None` for an
    /// untracked or finished task).
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] after shutdown.
    pub async fn progress(&self, id: TaskId) -> Result<Option<Progress>, RequestError> {
        self.inner
            .progress
            .send(GetProgress { id })
            .await
            .map_err(|_| RequestError::Closed)
    }

    async fn send_submit(&self, mut msg: Submit<T>) -> Result<Receipt, SubmitError<T>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(msg.tasks.take().remove(0)));
        }
        let back = msg.tasks.return_on_drop();
        match self.inner.submit.send(msg).await {
            Ok(result) => result,
            // The Fetcher is gone and the message was dropped undelivered: the task comes back.
            Err(_) => Err(SubmitError::Closed(
                back.await
                    .ok()
                    .and_then(|mut v| v.pop())
                    .expect(UNDELIVERED),
            )),
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
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(msg.tasks.take()));
        }
        let back = msg.tasks.return_on_drop();
        match self.inner.submit_batch.send(msg).await {
            Ok(result) => result,
            Err(_) => Err(SubmitError::Closed(back.await.expect(UNDELIVERED))),
        }
    }

    /// The Fetcher's `Submit` address, for actors that should not know the poller's types.
    pub fn submit_recipient(&self) -> Recipient<Submit<T>> {
        self.inner.submit.clone()
    }

    /// The Fetcher's `SubmitBatch` address.
    pub fn submit_batch_recipient(&self) -> Recipient<SubmitBatch<T>> {
        self.inner.submit_batch.clone()
    }

    /// The Fetcher's `Notify` address: tell it the source may have new tasks.
    pub fn notify_recipient(&self) -> Recipient<Notify> {
        self.inner.notify.clone()
    }

    /// The Scheduler's `GetStats` address.
    pub fn stats_recipient(&self) -> Recipient<GetStats> {
        self.inner.stats.clone()
    }

    /// A snapshot of the counters (a cheap read of mirrored atomics; no message).
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// A snapshot of each executor's counters, indexed by executor.
    pub fn executor_stats(&self) -> Vec<ExecutorStats> {
        self.inner.counters.executor_snapshot()
    }

    /// The concurrency limit.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// The number of executors.
    pub fn executors(&self) -> usize {
        self.inner.drains.len()
    }

    /// `true` when the executors run on the arbiter that started the poller, `false` when each
    /// has its own arbiter thread.
    pub fn executors_on_current_arbiter(&self) -> bool {
        self.inner.current_arbiter
    }

    /// The source's type name (for logs and topology rendering).
    pub fn source_name(&self) -> &'static str {
        self.inner.source_name
    }

    /// `true` once shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Shuts the poller down in two phases: stop fetching; let running tasks finish for up to
    /// `grace`, then cancel what still runs. Tasks fetched but not started go back to the source
    /// (the in-memory source hands them back in the report, with everything still queued).
    ///
    /// When it returns, every actor of this poller has been dropped and every arbiter it started
    /// has stopped and been joined; later submits fail with [`SubmitError::Closed`]. Await it to
    /// the end: dropping the future half-way leaves the poller half shut.
    ///
    /// # Errors
    ///
    /// [`ShutdownError::AlreadyShutDown`] on a second call; [`ShutdownError::Source`] if the source
    /// failed to release its unstarted tasks (the actors are still stopped).
    pub async fn shutdown(&self, grace: Duration) -> Result<ShutdownReport<T>, ShutdownError> {
        let inner = &self.inner;
        let plan = match inner.begin.send(BeginShutdown).await {
            Ok(Some(plan)) => plan,
            _ => return Err(ShutdownError::AlreadyShutDown),
        };
        inner.closed.store(true, Ordering::Release);
        tracing::debug!(?grace, "shutdown: stop fetching");

        // Phase 1: no fetch starts, nothing more is dispatched.
        let unstarted = inner
            .stop_fetching
            .send(StopFetching(std::marker::PhantomData))
            .await
            .unwrap_or_default();

        // Phase 2: drain until the deadline, then cancel. Executors report their last `Done`
        // before replying.
        let deadline = tokio::time::Instant::now() + grace;
        let replies: Vec<_> = inner
            .drains
            .iter()
            .map(|exec| {
                let (reply, rx) = oneshot::channel();
                exec.do_send(Drain { deadline, reply });
                rx
            })
            .collect();
        let (mut finished_during_drain, mut cancelled) = (0, 0);
        // Tasks queued at executors were fetched before those the Fetcher still held.
        let mut never_started = Vec::new();
        for report in futures::future::join_all(replies)
            .await
            .into_iter()
            .flatten()
        {
            finished_during_drain += report.finished;
            cancelled += report.cancelled;
            never_started.extend(report.unstarted);
        }
        never_started.extend(unstarted);
        let unstarted = never_started;

        // The Scheduler forwards the last acks; the source records them, then takes back what
        // was never started.
        let _ = inner.flush.send(Flush).await;
        let closed = inner.close.send(CloseSource { unstarted }).await;

        for arbiter in plan.arbiters {
            arbiter.stop();
            let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        }
        for gone in plan.actors_gone {
            let _ = gone.await;
        }
        tracing::debug!(finished_during_drain, cancelled, "shutdown complete");

        match closed {
            Ok(Ok(handed_back)) => Ok(ShutdownReport {
                finished_during_drain,
                cancelled,
                handed_back,
            }),
            Ok(Err(e)) => Err(ShutdownError::Source(e)),
            Err(_) => Err(ShutdownError::Source("the fetcher stopped early".into())),
        }
    }
}

/// An undelivered message always carries its tasks back (see `Returnable`).
const UNDELIVERED: &str = "an undelivered submit hands its tasks back";
