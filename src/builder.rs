//! The builder that starts a poller: its options, their validation, and the wiring of the
//! actors (Scheduler, Fetcher, executors) behind the handle it returns.

use std::borrow::Cow;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::{Arbiter, System};
use tracing::Level;

use crate::error::StartError;
use crate::executor::{panic_message, Executor, Settings};
use crate::fetcher::{ExecutorEnds, Fetcher, FetcherConfig};
use crate::handler::{BoxError, TaskHandler};
use crate::messages::TaskEvent;
use crate::pace::PaceConfig;
use crate::poller::{Handle, Poller};
use crate::protocol::{LocalQueue, ReturnPath};
use crate::retry::{Backoff, RetryPolicy};
use crate::scheduler::Scheduler;
use crate::shutdown::ShutdownPlan;
use crate::source::memory::MemorySource;
use crate::source::{FetchLimits, RetrySupport, Source};
use crate::stats::Counters;
use crate::task::TaskContext;
use crate::trace::TraceConfig;

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
#[must_use = "a builder does nothing until `start` is called"]
pub struct PollerBuilder<T, S = MemorySource<T>> {
    workers: usize,
    executors: Option<usize>,
    current_arbiter: bool,
    prefetch: Option<usize>,
    dispatch_ahead: Option<usize>,
    fetch_backoff: Backoff,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    cancel_grace: Duration,
    capacity: Option<usize>,
    pace: PaceConfig,
    limiter: Option<Box<dyn crate::Limiter>>,
    subscribers: Vec<Recipient<TaskEvent>>,
    name: Cow<'static, str>,
    retry_log_level: Level,
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
            .field("pace", &self.pace)
            .field("limiter", &self.limiter)
            .field("fetch_backoff", &self.fetch_backoff)
            .field("capacity", &self.capacity)
            .field("name", &self.name)
            .field("retry_log_level", &self.retry_log_level)
            .finish_non_exhaustive()
    }
}

/// The default concurrency limit.
pub const DEFAULT_WORKERS: usize = 16;

/// The most tasks an executor holds queued beyond its credits unless
/// [`PollerBuilder::dispatch_ahead`] says otherwise. Beyond 64, a queue holds at most 2 ms of
/// its slots' work at the task duration it measures: only tiny tasks reach this depth.
pub const DEFAULT_DISPATCH_AHEAD: usize = 1024;

/// The default poller name ([`PollerBuilder::name`]).
pub const DEFAULT_NAME: &str = "actix_poller";

/// The default level of the event a failed attempt that will be retried logs
/// ([`PollerBuilder::retry_log_level`]).
pub const DEFAULT_RETRY_LOG_LEVEL: Level = Level::INFO;

/// The default time a cancelled running task has to wind down before its future is dropped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

impl<T: Send + 'static> PollerBuilder<T, MemorySource<T>> {
    pub(crate) fn new() -> Self {
        PollerBuilder {
            workers: DEFAULT_WORKERS,
            executors: None,
            current_arbiter: false,
            prefetch: None,
            dispatch_ahead: None,
            fetch_backoff: Backoff::default(),
            retry: RetryPolicy::none(),
            timeout: None,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            capacity: None,
            pace: PaceConfig::default(),
            subscribers: Vec::new(),
            limiter: None,
            name: Cow::Borrowed(DEFAULT_NAME),
            retry_log_level: DEFAULT_RETRY_LOG_LEVEL,
            source: MemorySource::default(),
            _payload: std::marker::PhantomData,
        }
    }

    /// The in-memory queue's capacity (default
    /// [`memory::DEFAULT_CAPACITY`](crate::source::memory::DEFAULT_CAPACITY)). A submit that
    /// does not fit is handed back as [`SubmitError::Full`](crate::SubmitError::Full).
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

    /// How many tasks the Fetcher may fetch ahead of free slots (default: tuned). Tasks in hand
    /// keep the workers busy while a slow source answers; they go back to the source at
    /// shutdown.
    ///
    /// Unset, the Fetcher tunes it (Little's law): twice what the workers finish in one fetch
    /// round trip (measured throughput × measured fetch latency), at most 8 tasks per worker
    /// (between 1 024 and 10 000), and for a source with leases at most what the workers finish in
    /// one heartbeat interval, so a fetched task never waits long enough to risk its lease. A
    /// source that answers at once (the in-memory one) gets none. Set it to override: `0`
    /// never fetches more than the free slots (with [`dispatch_ahead(0)`](Self::dispatch_ahead),
    /// strict priority order among due tasks).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch);
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
    /// a deep queue and long ones a queue of one or two; and beyond 64 tasks, no more than its
    /// slots finish in 2 ms at the task duration it measures (so only tasks of a few µs, whose
    /// every hop to the System thread would otherwise cost more than the task, queue deeper).
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

    /// The poller's name (default [`DEFAULT_NAME`]): the `poller` field of its attempt spans,
    /// whose OpenTelemetry name is `process <name>` (see docs/observability.md, "Tracing"), and
    /// the `poller` label of every metric the `metrics` feature records ("Metrics").
    /// Name pollers apart when one process runs several.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The level at which a failed attempt that will be retried is logged (default
    /// [`DEFAULT_RETRY_LOG_LEVEL`], INFO), inside its attempt span. A task's last failure is
    /// logged at WARN (ERROR for a panic) whatever this says: that one needs a look, the
    /// retries of a flaky upstream usually do not.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{Poller, RetryPolicy};
    /// use tracing::Level;
    ///
    /// let builder = Poller::<u64>::builder()
    ///     .retry(RetryPolicy::attempts(5))
    ///     .retry_log_level(Level::DEBUG);
    /// # let _ = builder;
    /// ```
    pub fn retry_log_level(mut self, level: Level) -> Self {
        self.retry_log_level = level;
        self
    }

    /// At most `k` tasks of one [`Key`](crate::Key) run at once (default: no per-key limit),
    /// under the global [`workers`](Self::workers) bound; [`key_limit_for`](Self::key_limit_for)
    /// overrides it per key. A task whose key is at its limit waits in the Fetcher while tasks
    /// of other keys start past it (it holds no worker slot while it waits). Tasks without a
    /// key are not limited.
    ///
    /// Setting any pace limit turns [`dispatch_ahead`](Self::dispatch_ahead) off: every start is
    /// decided by the Fetcher when a slot is free.
    ///
    /// # Errors
    ///
    /// `k = 0` makes [`start`](Self::start) fail with [`StartError::ZeroKeyLimit`].
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{Poller, TaskOptions};
    ///
    /// # #[actix_rt::main]
    /// # async fn main() {
    /// let poller = Poller::<u32>::builder()
    ///     .workers(16)
    ///     .key_limit(2)
    ///     .key_limit_for("big-customer", 8)
    ///     .start(|_x: u32, _cx| async { Ok::<(), std::io::Error>(()) })
    ///     .unwrap();
    /// poller
    ///     .submit_with(actix_poller::Submit::new(1).options(TaskOptions::new().key("acme")))
    ///     .await
    ///     .unwrap();
    /// poller.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
    /// # }
    /// ```
    pub fn key_limit(mut self, k: usize) -> Self {
        self.pace.key_limit = Some(k);
        self
    }

    /// At most `k` tasks of `key` run at once, whatever [`key_limit`](Self::key_limit) says.
    ///
    /// # Errors
    ///
    /// `k = 0` makes [`start`](Self::start) fail with [`StartError::ZeroKeyLimit`] (pause a
    /// key with [`Poller::pause_key`](crate::Poller::pause_key) instead).
    pub fn key_limit_for(mut self, key: impl Into<crate::Key>, k: usize) -> Self {
        self.pace.key_limits.insert(key.into(), k);
        self
    }

    /// At most `n` task starts per `per` for the whole poller, in bursts of at most `burst`
    /// (see [`RateLimit`](crate::RateLimit)). A task that may not start yet waits in the Fetcher,
    /// holding no worker slot. Turns [`dispatch_ahead`](Self::dispatch_ahead) off.
    ///
    /// # Errors
    ///
    /// `n = 0` makes [`start`](Self::start) fail with [`StartError::ZeroRate`].
    pub fn rate_limit(mut self, n: u32, per: Duration, burst: u32) -> Self {
        self.pace.rate = Some(crate::RateLimit::new(n, per, burst));
        self
    }

    /// At most `n` starts per `per` (bursts of `burst`) for each [`Key`](crate::Key), counted
    /// per key; [`key_rate_limit_for`](Self::key_rate_limit_for) overrides it per key. A task
    /// whose key may not start yet does not hold back other keys' tasks.
    ///
    /// # Errors
    ///
    /// `n = 0` makes [`start`](Self::start) fail with [`StartError::ZeroRate`].
    pub fn key_rate_limit(mut self, n: u32, per: Duration, burst: u32) -> Self {
        self.pace.key_rate = Some(crate::RateLimit::new(n, per, burst));
        self
    }

    /// `key`'s own rate limit, whatever [`key_rate_limit`](Self::key_rate_limit) says.
    ///
    /// # Errors
    ///
    /// `limit.n = 0` makes [`start`](Self::start) fail with [`StartError::ZeroRate`].
    pub fn key_rate_limit_for(
        mut self,
        key: impl Into<crate::Key>,
        limit: crate::RateLimit,
    ) -> Self {
        self.pace.key_rates.insert(key.into(), limit);
        self
    }

    /// Moves the concurrency limit between the limiter's bounds from what it observes (each
    /// attempt's latency, and overload: [`Backpressure`](crate::Backpressure) answers and
    /// timeouts), instead of holding it at `workers`; `workers` stays the ceiling, so set it at
    /// least to the limiter's `max`. [`Aimd`](crate::Aimd) suits a downstream that says when it
    /// is overloaded, [`Gradient`](crate::Gradient) one whose latency grows first; see
    /// docs/pace.md. [`Stats::limit`](crate::Stats::limit) shows the current limit. When the
    /// limit goes down, running tasks finish; no new one starts until the running ones are
    /// under it. It turns [`dispatch_ahead`](Self::dispatch_ahead) off (a task queued at an
    /// executor would take over a slot the limit means to retire).
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::{Aimd, Poller};
    ///
    /// # #[actix_rt::main]
    /// # async fn main() {
    /// let poller = Poller::<u32>::builder()
    ///     .workers(256)
    ///     .adaptive(Aimd::new(4, 256))
    ///     .start(|_x: u32, _cx| async { Ok::<(), std::io::Error>(()) })
    ///     .unwrap();
    /// assert_eq!(poller.stats().limit, 4);
    /// poller.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
    /// # }
    /// ```
    pub fn adaptive(mut self, limiter: impl crate::Limiter) -> Self {
        self.limiter = Some(Box::new(limiter));
        self
    }

    /// The backoff between failed fetches (default: 50 ms doubling to 30 s, 20 % jitter).
    pub fn fetch_backoff(mut self, backoff: Backoff) -> Self {
        self.fetch_backoff = backoff;
        self
    }

    /// How tasks retry: attempts in all and the backoff between them (default: one attempt).
    /// A task may override its attempts with [`TaskOptions::max_attempts`](crate::TaskOptions::max_attempts). A task waiting for
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
    /// attempts remain). A task may override it with [`TaskOptions::timeout`](crate::TaskOptions::timeout).
    /// Any duration is accepted: one too long to reach (`Duration::MAX`) means no timeout.
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

    /// Sends `recipient` a [`TaskEvent`] for every attempt of this poller's that failed and will
    /// run again, and for every task that reached its final state, once the source recorded it
    /// (so an application pushes updates instead of polling). May be called more than once.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix::prelude::*;
    /// use actix_poller::{Poller, TaskContext, TaskEvent};
    ///
    /// struct Feed;
    /// impl Actor for Feed {
    ///     type Context = Context<Self>;
    /// }
    /// impl Handler<TaskEvent> for Feed {
    ///     type Result = ();
    ///     fn handle(&mut self, event: TaskEvent, _: &mut Context<Self>) {
    ///         println!("task {:?}: {event:?}", event.id()); // e.g. push to a websocket
    ///     }
    /// }
    ///
    /// # #[actix_rt::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let feed = Feed.start();
    /// let poller = Poller::<u32>::builder()
    ///     .subscribe(feed.recipient())
    ///     .start(|_n: u32, _cx: TaskContext| async { Ok::<_, std::io::Error>(()) })?;
    /// # poller.shutdown(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe(mut self, recipient: Recipient<TaskEvent>) -> Self {
        self.subscribers.push(recipient);
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
            pace: self.pace,
            limiter: self.limiter,
            subscribers: self.subscribers,
            name: self.name,
            retry_log_level: self.retry_log_level,
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
    /// `start_with` returns once every handler is built (it waits for the executors' threads).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), and [`StartError::FactoryPanicked`] when `factory` panics for
    /// an executor: then nothing is left running.
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
        let executors = self.validate()?;
        let counters = Arc::new(Counters::new(self.workers, executors, &self.name));
        let mut plan = ShutdownPlan::default();

        // Addresses first, actors after: the three know each other.
        let fetcher_ctx = Context::<Fetcher<T, S>>::new();
        let fetcher = fetcher_ctx.address();
        let scheduler_ctx = Context::<Scheduler>::new();
        let scheduler = scheduler_ctx.address();

        let shape = ExecutorShape {
            count: executors,
            current_arbiter: self.current_arbiter,
            timeout: self.timeout,
        };
        let returns = Arc::new(ReturnPath {
            fetcher: fetcher.clone().recipient(),
            counters: Arc::clone(&counters),
        });
        let trace = TraceConfig::new(&self.name, self.retry_log_level);
        let links = ExecutorLinks {
            scheduler: &scheduler,
            counters: &counters,
            returns: &returns,
            trace: &trace,
        };
        let (executor_addrs, queues) = spawn_executors(shape, factory, links, &mut plan)?;

        let fetcher_guard = plan.guard();
        let scheduler_guard = plan.guard();
        let config = FetcherConfig {
            workers: self.workers,
            prefetch: self.prefetch,
            // An adaptive limit retires credits as slots come back: a queued task taking over
            // a slot at its executor would keep it, and the limit could not go down.
            ahead: if self.limiter.is_some() {
                0
            } else {
                self.dispatch_ahead.unwrap_or(DEFAULT_DISPATCH_AHEAD)
            },
            fetch_backoff: self.fetch_backoff,
            default_attempts: self.retry.max_attempts(),
            cancel_grace: self.cancel_grace,
            pace: self.pace,
            subscribers: self.subscribers,
        };
        fetcher_ctx.run(Fetcher::new(
            self.source,
            executor_addrs
                .iter()
                .zip(queues)
                .map(|(a, queue)| ExecutorEnds {
                    execute: a.clone().recipient(),
                    cancel: a.clone().recipient(),
                    queue,
                })
                .collect(),
            config,
            Arc::clone(&counters),
            fetcher_guard,
            returns,
        ));
        scheduler_ctx.run(
            Scheduler::new(
                self.workers,
                executors,
                fetcher.clone().recipient(),
                *self.retry.backoff(),
                plan,
                Arc::clone(&counters),
                scheduler_guard,
            )
            .with_limiter(self.limiter),
        );
        tracing::debug!(workers = self.workers, executors, "poller started");

        Ok(Poller::from_handle(Handle::wire(
            &fetcher,
            &scheduler,
            &executor_addrs,
            counters,
            self.workers,
            self.current_arbiter,
            std::any::type_name::<S>(),
        )))
    }

    /// Checks the configuration; returns how many executors to start.
    fn validate(&self) -> Result<usize, StartError> {
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
        if self.pace.has_zero_rate() {
            return Err(StartError::ZeroRate);
        }
        if self.pace.key_limit == Some(0) || self.pace.key_limits.values().any(|k| *k == 0) {
            return Err(StartError::ZeroKeyLimit);
        }
        Ok(executors)
    }
}

/// How the executors run: how many, where, and their default timeout.
#[derive(Debug, Clone, Copy)]
struct ExecutorShape {
    count: usize,
    current_arbiter: bool,
    timeout: Option<Duration>,
}

/// What every executor is wired to.
struct ExecutorLinks<'a, T: Send + 'static> {
    scheduler: &'a Addr<Scheduler>,
    counters: &'a Arc<Counters>,
    returns: &'a Arc<ReturnPath<T>>,
    trace: &'a TraceConfig,
}

/// The executors started: their addresses, and the Fetcher's end of each one's queue.
type Started<T, H> = (Vec<Addr<Executor<T, H>>>, Vec<Arc<LocalQueue<T>>>);

/// Builds one handler, a panic becoming a [`StartError`].
fn build_handler<H>(factory: &dyn Fn(usize) -> H, executor: usize) -> Result<H, StartError> {
    catch_unwind(AssertUnwindSafe(|| factory(executor))).map_err(|panic| {
        StartError::FactoryPanicked {
            executor,
            message: panic_message(panic.as_ref()),
        }
    })
}

/// Starts the executors, each with its handler built by `factory` on its own thread (on the
/// current arbiter, or on a new arbiter each, which `plan` keeps for shutdown). Returns once
/// every handler is built, with each executor's address and the Fetcher's end of its queue; if
/// `factory` panics for one, stops what was started and joins its threads, and returns the
/// error.
fn spawn_executors<T, H, F>(
    shape: ExecutorShape,
    factory: F,
    links: ExecutorLinks<'_, T>,
    plan: &mut ShutdownPlan,
) -> Result<Started<T, H>, StartError>
where
    T: Send + 'static,
    H: TaskHandler<T>,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    let settings = || Settings {
        timeout: shape.timeout,
        trace: links.trace.clone(),
    };
    let new_executor = |index, handler, guard| {
        Executor::new(
            index,
            handler,
            settings(),
            links.scheduler.clone().recipient(),
            Arc::clone(links.counters),
            Arc::clone(links.returns),
            guard,
        )
    };
    if shape.current_arbiter {
        // Every handler first: if one cannot be built, no executor was started.
        let handlers = (0..shape.count)
            .map(|index| build_handler(&factory, index))
            .collect::<Result<Vec<H>, StartError>>()?;
        return Ok(handlers
            .into_iter()
            .enumerate()
            .map(|(index, handler)| {
                let executor = new_executor(index, handler, plan.guard());
                let queue = executor.queue();
                (executor.start(), queue)
            })
            .unzip());
    }
    let factory = Arc::new(factory);
    let mut addrs = Vec::with_capacity(shape.count);
    let mut built = Vec::with_capacity(shape.count);
    for index in 0..shape.count {
        let arbiter = Arbiter::new();
        let factory = Arc::clone(&factory);
        let (done, counters, returns, settings) = (
            links.scheduler.clone().recipient(),
            Arc::clone(links.counters),
            Arc::clone(links.returns),
            settings(),
        );
        let guard = plan.guard();
        let (tx, rx) = actix::dev::channel::channel(16);
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        // As `Actor::start_in_arbiter`, with the factory's panic caught and reported.
        arbiter.spawn_fn(move || {
            let built = build_handler(&*factory, index).map(|handler| {
                let ctx = Context::with_receiver(rx);
                let executor =
                    Executor::new(index, handler, settings, done, counters, returns, guard);
                let queue = executor.queue();
                actix_rt::spawn(ctx.into_future(executor));
                queue
            });
            let _ = built_tx.send(built);
        });
        addrs.push(Addr::new(tx));
        plan.arbiters.push(arbiter);
        built.push(built_rx);
    }
    let mut failed = None;
    let mut queues = Vec::with_capacity(shape.count);
    for (executor, rx) in built.into_iter().enumerate() {
        let result = rx.recv().unwrap_or_else(|_| {
            Err(StartError::FactoryPanicked {
                executor,
                message: "its arbiter thread stopped before the handler was built".into(),
            })
        });
        match result {
            Ok(queue) => queues.push(queue),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        None => Ok((addrs, queues)),
        Some(error) => {
            // Nothing may outlive a failed start: every arbiter stopped (dropping its
            // executor), every thread joined.
            for arbiter in plan.arbiters.drain(..) {
                arbiter.stop();
                let _ = arbiter.join();
            }
            Err(error)
        }
    }
}
