//! Where tasks come from.
//!
//! A [`Source`] is the Go poller's `fetch`, generalized. The Fetcher actor is
//! its only owner: every method takes `&mut self` and is called from that one actor, so a source
//! needs no lock for its own state. Methods that do I/O return a `'static` future: the source does
//! its bookkeeping synchronously, then hands back a future that owns what it needs (a pool handle,
//! a client), so the Fetcher can keep several fetches in flight without sharing the source.
//!
//! # The contract
//!
//! * [`fetch`](Source::fetch)`(max)` returns at most `max` tasks. "Nothing more for now" is said
//!   explicitly, never inferred from a short answer: an empty answer ([`Fetched::empty`]) or one
//!   marked [`drained`](Fetched::drained) makes the Fetcher wait for what its [`WakeOn`] says;
//!   any other answer, however short ([`Fetched::new`]: a source that hands out one task per
//!   call), is followed by another fetch while there is room for more. The Fetcher
//!   asks again at once if a local submit or [`Notify`](crate::messages::Notify) arrived while the
//!   fetch was in flight, so a wake-up that races an empty fetch is never lost. A signal future
//!   in [`WakeOn`] must be created *before* the read it guards (listen, then query).
//! * A task handed out is *leased* to this poller until an [`Ack`] for that attempt comes back
//!   through [`ack`](Source::ack), or it is handed back through [`close`](Source::close).
//! * [`ack`](Source::ack) receives batches: record them in as few round trips as the store allows.
//! * [`close`](Source::close) is called once, at shutdown, with the tasks fetched but never
//!   started. A durable source releases them; the in-memory source hands them back, with
//!   everything still queued, to the caller of [`Poller::shutdown`](crate::Poller::shutdown).
//! * [`enqueue`](Source::enqueue) is optional: sources that accept submissions through the
//!   poller implement it; others keep the default, which hands the tasks back as
//!   [`SubmitError::Unsupported`].
//! * [`heartbeat`](Source::heartbeat) is called every
//!   [`heartbeat_interval`](Source::heartbeat_interval) (if any) while the poller runs: a
//!   durable source extends the leases of the tasks it handed out and not yet saw acked.
//! * Optional capabilities: [`cancel`](Source::cancel) (waiting tasks), dead tasks
//!   ([`dead_tasks`](Source::dead_tasks), [`rerun_dead`](Source::rerun_dead),
//!   [`purge_dead`](Source::purge_dead)), and [`RetrySupport`] for retries.
//! * The task state machine is not the source's business: [`Ack`]s say what to record
//!   ([`Disposition`](crate::Disposition)), and the source stores it.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod durable;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::fmt;

use futures::future::LocalBoxFuture;
use tokio::time::Instant;

use crate::error::SubmitError;
use crate::task::{Ack, DeadTask, FinalState, QueueCounts, Task, TaskId, TaskOptions, TaskStatus};
use crate::trace::Parent;

/// The answer to one [`Source::fetch`] call.
///
/// Whether the source has more is said, not guessed from the answer's length: a source that
/// hands out one task per call answers [`Fetched::new`] and is asked again; a store that
/// answered every row it had answers [`Fetched::drained`], and the Fetcher waits for
/// [`wake_on`](Fetched::wake_on). An empty answer always means "nothing for now".
///
/// # Examples
///
/// ```
/// use actix_poller::source::{Fetched, WakeOn};
/// use actix_poller::{Task, TaskId};
///
/// // One task per call: there may be more, ask again.
/// let one = Fetched::new(vec![Task::new(TaskId(1), "a")], WakeOn::submit());
/// assert!(!one.drained);
/// // All there is (fewer than asked for): wait for a submit, a notify or `wake_on`.
/// let all = Fetched::drained(vec![Task::new(TaskId(2), "b")], WakeOn::submit());
/// assert!(all.drained);
/// assert!(Fetched::<&str>::empty(WakeOn::submit()).drained);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Fetched<T> {
    /// The tasks, at most as many as were asked for.
    pub tasks: Vec<Task<T>>,
    /// `true`: the source has nothing more for now (after these tasks), so the Fetcher waits
    /// for [`wake_on`](Fetched::wake_on) (or a submit, or a notify) before asking again.
    /// `false`: there may be more; the Fetcher asks again while it has room. An empty answer
    /// is drained whatever this says.
    pub drained: bool,
    /// When to ask again once the source is drained.
    pub wake_on: WakeOn,
}

impl<T> Fetched<T> {
    /// `tasks`, and there may be more: the Fetcher asks again while it has room, however few
    /// came back (`wake_on` applies only if these are none).
    pub fn new(tasks: Vec<Task<T>>, wake_on: WakeOn) -> Self {
        let drained = tasks.is_empty();
        Fetched {
            tasks,
            drained,
            wake_on,
        }
    }

    /// `tasks` are all the source has for now (e.g. fewer rows than asked for): the Fetcher
    /// asks again on `wake_on`, a submit or a notify.
    pub fn drained(tasks: Vec<Task<T>>, wake_on: WakeOn) -> Self {
        Fetched {
            tasks,
            drained: true,
            wake_on,
        }
    }

    /// No tasks now; ask again on `wake_on`.
    pub fn empty(wake_on: WakeOn) -> Self {
        Fetched::drained(Vec::new(), wake_on)
    }

    /// Whether the Fetcher should wait before asking again: the source said it is drained, or
    /// answered nothing.
    pub(crate) fn is_drained(&self) -> bool {
        self.drained || self.tasks.is_empty()
    }
}

/// When a source that had fewer tasks than asked for wants to be asked again.
///
/// A local submit and a [`Notify`](crate::messages::Notify) message always wake the Fetcher; a
/// `WakeOn` adds a time, a signal, or both (whichever comes first). With neither, the source is
/// asked again only on a submit or notify: an idle in-memory source costs nothing.
#[derive(Default)]
pub struct WakeOn {
    pub(crate) at: Option<Instant>,
    pub(crate) signal: Option<LocalBoxFuture<'static, ()>>,
}

impl WakeOn {
    /// Only a submit or [`Notify`](crate::messages::Notify) wakes the Fetcher.
    pub fn submit() -> Self {
        WakeOn::default()
    }

    /// Also wake at `at` (e.g. the earliest due time of a delayed task, or a fallback poll).
    pub fn at(at: Instant) -> Self {
        WakeOn {
            at: Some(at),
            signal: None,
        }
    }

    /// Also wake after `delay` (a delay too long for the clock, e.g. `Duration::MAX`, means
    /// "far future").
    pub fn after(delay: std::time::Duration) -> Self {
        WakeOn::at(crate::retry::deadline_after(Instant::now(), delay))
    }

    /// Also wake when `signal` completes (e.g. a database notification). Create the future
    /// before the read it guards, so a notification during the read is not lost.
    pub fn signal(signal: impl std::future::Future<Output = ()> + 'static) -> Self {
        WakeOn {
            at: None,
            signal: Some(Box::pin(signal)),
        }
    }

    /// Adds a time to wake at; the earlier of two times wins.
    pub fn or_at(mut self, at: Instant) -> Self {
        self.at = Some(match self.at {
            Some(prev) => prev.min(at),
            None => at,
        });
        self
    }

    /// Adds a signal; replaces any earlier one.
    pub fn or_signal(mut self, signal: impl std::future::Future<Output = ()> + 'static) -> Self {
        self.signal = Some(Box::pin(signal));
        self
    }
}

impl fmt::Debug for WakeOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeOn")
            .field("at", &self.at)
            .field("signal", &self.signal.is_some())
            .finish()
    }
}

/// How a source wants to be fetched from.
///
/// A database answers one call with many rows: one fetch in flight, asking for every free slot,
/// is best (`max_batch = usize::MAX`, `max_in_flight = 1`). A remote service that hands out one
/// task per call needs many calls in flight to keep every worker busy (`max_batch = 1`,
/// `max_in_flight = workers`). The Fetcher never asks for more, in all fetches in flight, than
/// its free credits plus the configured prefetch.
///
/// Built from [`FetchLimits::default`] and its setters (more knobs may come, e.g. for
/// self-tuning prefetch):
///
/// ```
/// use actix_poller::source::FetchLimits;
///
/// let remote = FetchLimits::default().max_batch(1).max_in_flight(16);
/// assert_eq!((remote.max_batch, remote.max_in_flight), (1, 16));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchLimits {
    /// The most tasks to ask for in one call (at least 1).
    pub max_batch: usize,
    /// The most calls in flight at once (at least 1).
    pub max_in_flight: usize,
}

impl FetchLimits {
    /// At most `n` tasks per call (at least 1; 0 is refused at start).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// At most `n` calls in flight at once (at least 1; 0 is refused at start).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_batch: usize::MAX,
            max_in_flight: 1,
        }
    }
}

/// A task to enqueue, as the poller hands it to [`Source::enqueue`].
#[derive(Debug)]
#[non_exhaustive]
pub struct NewTask<T> {
    /// The payload.
    pub payload: T,
    /// How many attempts the task may have in all (1: no retry); `None`: the source's default.
    ///
    /// The poller always sets it (from [`TaskOptions::max_attempts`] or its retry policy, see
    /// [`PollerBuilder::retry`](crate::PollerBuilder::retry)). A task enqueued without a
    /// poller ([`NewTask::new`] through a durable source's queue) gets the source's default:
    /// `DurableConfig::default_attempts` for the durable sources, one attempt for the in-memory
    /// source.
    pub max_attempts: Option<u32>,
    /// Higher runs first among due tasks.
    pub priority: i32,
    /// Not to be fetched before this instant.
    pub run_at: Option<Instant>,
    /// Per-attempt timeout override.
    pub timeout: Option<std::time::Duration>,
    /// The pace key ([`TaskOptions::key`](crate::TaskOptions::key)); a source that can, hands it
    /// back on [`Task::key`](crate::Task::key).
    pub key: Option<crate::pace::Key>,
    /// The submitter's trace context (see docs/observability.md, "Tracing").
    pub(crate) parent: Option<std::sync::Arc<Parent>>,
}

impl<T> NewTask<T> {
    /// A task with default options and the source's default attempts (see
    /// [`max_attempts`](Self::max_attempts)): a durable queue gives it
    /// `DurableConfig::default_attempts` (5 unless configured), so a task enqueued from another process is retried like one a
    /// poller submits with retries on.
    pub fn new(payload: T) -> Self {
        NewTask {
            payload,
            max_attempts: None,
            priority: 0,
            run_at: None,
            timeout: None,
            key: None,
            parent: None,
        }
    }

    /// A task with `options`; `default_attempts` applies unless the options override it.
    pub fn with_options(payload: T, options: TaskOptions, default_attempts: u32) -> Self {
        NewTask {
            payload,
            max_attempts: Some(options.max_attempts.unwrap_or(default_attempts).max(1)),
            priority: options.priority,
            run_at: options.run_at,
            timeout: options.timeout,
            key: options.key,
            parent: None,
        }
    }

    pub(crate) fn with_parent(mut self, parent: Option<std::sync::Arc<Parent>>) -> Self {
        self.parent = parent;
        self
    }

    /// A task with `payload` and the options of `self`.
    fn with_payload<U>(&self, payload: U) -> NewTask<U> {
        NewTask {
            payload,
            max_attempts: self.max_attempts,
            priority: self.priority,
            run_at: self.run_at,
            timeout: self.timeout,
            key: self.key.clone(),
            parent: self.parent.clone(),
        }
    }
}

/// Tasks that share their options (one `submit_batch`, or one `submit`), as the poller hands
/// them to [`Source::enqueue_batch`]: the payloads in submit order and, once, the options.
#[derive(Debug)]
#[non_exhaustive]
pub struct NewBatch<T> {
    /// The payloads, in submit order.
    pub payloads: Vec<T>,
    /// The options every task of the batch has (its payload is `()`).
    pub shared: NewTask<()>,
}

impl<T> NewBatch<T> {
    /// A batch of `payloads` that all have the options of `shared`.
    pub fn new(payloads: Vec<T>, shared: NewTask<()>) -> Self {
        NewBatch { payloads, shared }
    }

    /// One [`NewTask`] per payload, in order, each with the shared options.
    pub fn into_tasks(self) -> Vec<NewTask<T>> {
        let NewBatch { payloads, shared } = self;
        payloads
            .into_iter()
            .map(|payload| shared.with_payload(payload))
            .collect()
    }
}

/// A source that can run a failed task again.
///
/// Durable sources store payloads anyway and implement it with an empty body. The in-memory
/// source must keep a copy of each payload while its task runs, so it implements it only for
/// `T: Clone`. [`PollerBuilder::retry`](crate::PollerBuilder::retry) requires it.
pub trait RetrySupport<T> {
    /// Prepare to receive [`Disposition::Retry`](crate::Disposition::Retry) acks.
    fn enable_retries(&mut self);
}

/// The answer of [`Source::final_states`]: tasks and the final state each reached.
pub type FinalStates = Vec<(TaskId, FinalState)>;

/// The result of [`Source::enqueue`]: the ids of the enqueued tasks, or the whole batch back.
pub type EnqueueResult<T> = Result<Vec<TaskId>, SubmitError<Vec<T>>>;

/// Where tasks come from: see the [module docs](self) for the contract.
///
/// # Examples
///
/// A source that polls a remote service one task at a time (the original Go design's `fetch`).
/// Each answer of one task is [`Fetched::new`] ("there may be more"), so the Fetcher keeps
/// asking; only an empty answer makes it wait:
///
/// ```
/// use actix_poller::source::{FetchLimits, Fetched, Source, WakeOn};
/// use actix_poller::{Ack, Task, TaskId};
/// use futures::future::{FutureExt, LocalBoxFuture};
/// use std::time::Duration;
///
/// struct Remote { next_id: u64 }
///
/// impl Source<String> for Remote {
///     type Error = std::io::Error;
///
///     fn fetch(&mut self, _max: usize) -> LocalBoxFuture<'static, Result<Fetched<String>, Self::Error>> {
///         self.next_id += 1;
///         let id = TaskId(self.next_id);
///         async move {
///             // ... one HTTP call here; `None` when the service has nothing ...
///             let got: Option<String> = None;
///             Ok(match got {
///                 Some(t) => Fetched::new(vec![Task::new(id, t)], WakeOn::submit()),
///                 None => Fetched::empty(WakeOn::after(Duration::from_millis(200))),
///             })
///         }
///         .boxed_local()
///     }
///
///     fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Self::Error>> {
///         async { Ok(()) }.boxed_local()
///     }
///
///     fn limits(&self) -> FetchLimits {
///         FetchLimits::default().max_batch(1).max_in_flight(16)
///     }
/// }
/// ```
pub trait Source<T>: 'static {
    /// The error a fetch, ack or close can fail with. Fetch errors are counted, traced and
    /// retried with exponential backoff and jitter. Errors that reach a caller (cancel, dead
    /// tasks, close) arrive wrapped in a [`SourceError`](crate::SourceError) that keeps this
    /// error as its [`source`](std::error::Error::source), hence the bounds.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Fetch up to `max` tasks (`max ≥ 1`). Say "that is all for now" with an empty answer or
    /// [`Fetched::drained`]; any other answer is followed by another fetch while the Fetcher
    /// has room (see [`Fetched`]).
    ///
    /// # Errors
    ///
    /// Any error of the underlying store; the Fetcher backs off and asks again.
    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, Self::Error>>;

    /// Record a batch of acknowledgements.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store; it is counted and traced. A durable source's leases
    /// then expire and the tasks run again (at least once).
    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Self::Error>>;

    /// How to fetch from this source. Read once, at start.
    fn limits(&self) -> FetchLimits {
        FetchLimits::default()
    }

    /// Enqueue tasks submitted through the poller, all or none.
    ///
    /// # Errors
    ///
    /// Hands the whole batch back: [`SubmitError::Full`] when there is no room,
    /// [`SubmitError::Unsupported`] (the default) when this source takes no submissions.
    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>>
    where
        T: 'static,
    {
        let payloads: Vec<T> = tasks.into_iter().map(|t| t.payload).collect();
        Box::pin(futures::future::ready(Err(SubmitError::Unsupported(
            payloads,
        ))))
    }

    /// Enqueue tasks that share their options, all or none: what the poller calls for every
    /// submit. The default hands [`NewBatch::into_tasks`] to [`enqueue`](Self::enqueue); a
    /// source that can store the payloads without a [`NewTask`] each (the in-memory source)
    /// overrides it, so a large batch is not held twice while it is converted.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue).
    fn enqueue_batch(&mut self, batch: NewBatch<T>) -> LocalBoxFuture<'static, EnqueueResult<T>>
    where
        T: 'static,
    {
        self.enqueue(batch.into_tasks())
    }

    /// Cancel a task that waits in the source (due or delayed). `Ok(true)` if it was there and is
    /// now cancelled (a final state); `Ok(false)` if not found (it may be running). Default: not
    /// supported, `Ok(false)`.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn cancel(&mut self, id: TaskId) -> LocalBoxFuture<'static, Result<bool, Self::Error>> {
        let _ = id;
        Box::pin(futures::future::ready(Ok(false)))
    }

    /// The most recent dead tasks, newest first, at most `limit`. Default: none kept.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn dead_tasks(
        &mut self,
        limit: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<DeadTask>, Self::Error>> {
        let _ = limit;
        Box::pin(futures::future::ready(Ok(Vec::new())))
    }

    /// Queue these dead tasks again, from attempt 1. Returns the ids that were queued (a dead
    /// task kept without its payload cannot run again). Default: none.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn rerun_dead(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<Vec<TaskId>, Self::Error>> {
        let _ = ids;
        Box::pin(futures::future::ready(Ok(Vec::new())))
    }

    /// Forget these dead tasks (`None`: all). Returns how many were removed. Default: 0.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn purge_dead(
        &mut self,
        ids: Option<Vec<TaskId>>,
    ) -> LocalBoxFuture<'static, Result<usize, Self::Error>> {
        let _ = ids;
        Box::pin(futures::future::ready(Ok(0)))
    }

    /// Which of `ids` reached a final state in the source, and which: a durable store shared
    /// by several pollers knows it even for tasks another process ran, whose acks this poller
    /// never sees (so a receipt of such a task can be resolved from here). Default: none known.
    /// Optional; tasks not final (or unknown) are left out.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn final_states(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<FinalStates, Self::Error>> {
        let _ = ids;
        Box::pin(futures::future::ready(Ok(Vec::new())))
    }

    /// How often the Fetcher asks [`final_states`](Source::final_states) about tracked tasks
    /// (`None`, the default: never). A store shared by several pollers returns its poll
    /// interval, so a receipt resolves even when another process ran its task; each call asks
    /// about a bounded batch of ids, round robin, and a tracker older than
    /// [`TRACKING_LIMIT`](crate::TRACKING_LIMIT) then resolves with
    /// [`OutcomeError::TrackingExpired`](crate::OutcomeError::TrackingExpired).
    fn final_states_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Where task `id` is ([`TaskStatus`]), if the source knows it; `Ok(None)` for a task it
    /// never held or no longer keeps. A durable store answers for any task in its table,
    /// whichever process enqueued or ran it, also after a restart. Default: `Ok(None)`.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn status(
        &mut self,
        id: TaskId,
    ) -> LocalBoxFuture<'static, Result<Option<TaskStatus>, Self::Error>> {
        let _ = id;
        Box::pin(futures::future::ready(Ok(None)))
    }

    /// How many tasks the source holds in each state ([`QueueCounts`]), if it can count them
    /// (a durable store in one statement that reads its partial indexes). A source that
    /// cannot say [`queued`](Self::queued) is counted by the Fetcher every few seconds, less
    /// often when counting takes long (see [`Stats::queued`](crate::Stats::queued)).
    /// Default: `Ok(None)`.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn counts(&mut self) -> LocalBoxFuture<'static, Result<Option<QueueCounts>, Self::Error>> {
        Box::pin(futures::future::ready(Ok(None)))
    }

    /// Stores a pause of the whole queue (`key = None`) or of one key, for `duration` (`None`:
    /// until resumed), where every poller sharing the source's store sees it, or `None` (the
    /// default) when the source keeps no such state: the poller then pauses itself. Pauses add
    /// up to the longest. A PostgreSQL source on a queue with a pace (`PgConfig::queue_pace`,
    /// or one stored with the queue; feature `postgres`) stores them.
    ///
    /// # Errors
    ///
    /// The future fails with any error of the underlying store (the pause is then not stored).
    #[allow(clippy::type_complexity)]
    fn store_pause(
        &mut self,
        key: Option<crate::pace::Key>,
        duration: Option<std::time::Duration>,
    ) -> Option<LocalBoxFuture<'static, Result<(), Self::Error>>> {
        let _ = (key, duration);
        None
    }

    /// Ends a stored pause of the whole queue (`key = None`) or of one key (see
    /// [`store_pause`](Source::store_pause)); `None` (the default) when the source stores none.
    ///
    /// # Errors
    ///
    /// The future fails with any error of the underlying store.
    #[allow(clippy::type_complexity)]
    fn store_resume(
        &mut self,
        key: Option<crate::pace::Key>,
    ) -> Option<LocalBoxFuture<'static, Result<(), Self::Error>>> {
        let _ = key;
        None
    }

    /// How often the Fetcher calls [`heartbeat`](Source::heartbeat) while the poller runs
    /// (`None`, the default: never). A durable source that leases tasks returns a fraction of
    /// its lease time.
    fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Keep this poller's claims alive: extend the leases of every task fetched and not yet
    /// acknowledged (the source knows them: `fetch` adds, `ack` and `close` remove), and release
    /// or re-fetch what other workers abandoned. Called every
    /// [`heartbeat_interval`](Source::heartbeat_interval); a failure is counted and traced.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store.
    fn heartbeat(&mut self) -> LocalBoxFuture<'static, Result<(), Self::Error>> {
        Box::pin(futures::future::ready(Ok(())))
    }

    /// Whether the source can take a started task back to run it again (a retry, a snooze).
    /// Default `true`. The in-memory source says `false` unless retries are on, as it then keeps
    /// no copy of a running task's payload: the Fetcher records such a task dead, with a reason,
    /// so its submitter learns the final state instead of waiting for one that never comes.
    fn can_requeue(&self) -> bool {
        true
    }

    /// How many tasks wait in the source, if it knows cheaply (for [`Stats`](crate::Stats)).
    fn queued(&self) -> Option<u64> {
        None
    }

    /// Shutdown: take back `unstarted` (fetched, never run). Returns the tasks handed back to the
    /// caller of [`Poller::shutdown`](crate::Poller::shutdown): a durable source releases its
    /// leases and returns none; the in-memory source returns these and everything still queued.
    ///
    /// # Errors
    ///
    /// Any error of the underlying store while releasing.
    fn close(
        &mut self,
        unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, Self::Error>>
    where
        T: 'static,
    {
        Box::pin(futures::future::ready(Ok(unstarted)))
    }
}
