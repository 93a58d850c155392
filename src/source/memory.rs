//! The in-process queue: the default source.
//!
//! Owned by the Fetcher actor like every source, so it needs no lock. Bounded: a submit that does
//! not fit is refused with [`SubmitError::Full`], which hands the tasks back (back-pressure); the
//! queue never drops a task and never grows past its capacity through submissions (a task coming
//! back for a retry is never refused).
//!
//! Order: among due tasks, higher priority first, FIFO within a priority. A delayed task (or one
//! waiting for its retry) is not fetched before it is due, and costs no polling: an empty fetch
//! tells the Fetcher to wake at the earliest due time.
//!
//! Delivery is exactly once while the process lives. The queue lives in memory: a crash loses what
//! it holds. On [`Poller::shutdown`](crate::Poller::shutdown) everything still queued or delayed,
//! and every task fetched but not started, is handed back in the
//! [`ShutdownReport`](crate::ShutdownReport).
//!
//! Retries need a copy of the payload while the task runs, so they need `T: Clone`:
//! [`PollerBuilder::retry`](crate::PollerBuilder::retry) turns them on (see [`RetrySupport`]).
//! Without them a task's `max_attempts` is 1 and a dead task is kept without its payload.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::BuildHasherDefault;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{ready, LocalBoxFuture};
use tokio::time::Instant;

use super::{EnqueueResult, Fetched, NewBatch, NewTask, RetrySupport, Source, WakeOn};
use crate::error::SubmitError;
use crate::pace::Key;
use crate::retry::deadline_after;
use crate::task::{Ack, DeadTask, Disposition, QueueCounts, Task, TaskId, TaskState, TaskStatus};
use crate::trace::Parent;

mod history;

use history::{End, History};
pub use history::{DEFAULT_HISTORY, DEFAULT_HISTORY_AGE};

/// The error a refused submit hands its payloads back in.
type Refusal<T> = fn(Vec<T>) -> SubmitError<Vec<T>>;

/// The default capacity of [`MemorySource::default`].
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How many dead tasks [`MemorySource::default`] keeps (the oldest go first).
pub const DEFAULT_DEAD_RETENTION: usize = 1_000;

/// A waiting task, stored compactly: 24 bytes beside the payload and one pointer, the
/// pointer null unless the task has something besides the defaults (see [`Rare`]). A task
/// submitted with default options, first attempt, no trace context, costs `32 + size_of::<T>()`.
#[derive(Debug)]
struct Queued<T> {
    id: u64,
    /// Microseconds since the Unix epoch.
    enqueued_at_us: u64,
    /// When it became due (entered a ready queue, or its delay ran out), in microseconds since
    /// the source's `origin`: the age of the oldest queued task (`QueueCounts::oldest_queued_age`).
    due_us: u64,
    /// Everything else, when anything is not the default.
    rare: Option<Box<Rare>>,
    payload: T,
}

/// A queued task's fields that most tasks leave at their defaults (priority 0, first attempt of
/// one, the poller's timeout, no pace key, no trace context): kept out of line, so that a
/// common entry is id, stamps and payload. A task with retries on has one (`max_attempts` > 1).
#[derive(Debug)]
struct Rare {
    priority: i32,
    attempt: u32,
    max_attempts: u32,
    timeout: Option<Duration>,
    key: Option<Key>,
    trace: Option<Box<Parent>>,
}

impl Rare {
    /// The defaults' `Rare`: none.
    const DEFAULT: Rare = Rare {
        priority: 0,
        attempt: 1,
        max_attempts: 1,
        timeout: None,
        key: None,
        trace: None,
    };

    /// `self`, boxed, unless it is all defaults.
    fn boxed(self) -> Option<Box<Rare>> {
        if self.priority == 0
            && self.attempt == 1
            && self.max_attempts == 1
            && self.timeout.is_none()
            && self.key.is_none()
            && self.trace.is_none()
        {
            None
        } else {
            Some(Box::new(self))
        }
    }
}

impl<T> Queued<T> {
    /// A fresh task from a submit: id `id`, enqueued and (if due now) due at `now`.
    fn from_new(id: u64, t: NewTask<T>, now: Now) -> Self {
        let rare = Rare {
            priority: t.priority,
            attempt: 1,
            max_attempts: t.max_attempts.unwrap_or(1).max(1),
            timeout: t.timeout,
            key: t.key,
            trace: t.parent,
        };
        Queued {
            id,
            enqueued_at_us: now.wall_us,
            due_us: now.us,
            rare: rare.boxed(),
            payload: t.payload,
        }
    }

    /// An entry like `self` (a batch's template) with id `id` and `payload`: the rare fields
    /// copied when there are any.
    fn with_payload<U>(&self, id: u64, payload: U) -> Queued<U> {
        Queued {
            id,
            enqueued_at_us: self.enqueued_at_us,
            due_us: self.due_us,
            rare: self.rare.as_ref().map(|r| {
                Box::new(Rare {
                    key: r.key.clone(),
                    trace: r.trace.clone(),
                    ..**r
                })
            }),
            payload,
        }
    }

    /// A task handed out before, coming back (a retry, a release, a snooze, a rerun).
    fn from_task(task: Task<T>) -> Self {
        let rare = Rare {
            priority: task.priority,
            attempt: task.attempt.max(1),
            max_attempts: task.max_attempts.max(1),
            timeout: task.timeout,
            key: task.key,
            trace: task.trace,
        };
        Queued {
            id: task.id.0,
            enqueued_at_us: history::micros_since_epoch(task.enqueued_at),
            due_us: 0,
            rare: rare.boxed(),
            payload: task.payload,
        }
    }

    fn priority(&self) -> i32 {
        self.rare.as_ref().map_or(0, |r| r.priority)
    }

    fn attempt(&self) -> u32 {
        self.rare.as_ref().map_or(1, |r| r.attempt)
    }

    fn max_attempts(&self) -> u32 {
        self.rare.as_ref().map_or(1, |r| r.max_attempts)
    }

    /// The envelope to hand out (no clock read: the stamps are the entry's).
    fn into_task(self) -> Task<T> {
        let rare = self.rare.map_or(Rare::DEFAULT, |r| *r);
        Task {
            id: TaskId(self.id),
            attempt: rare.attempt,
            max_attempts: rare.max_attempts,
            enqueued_at: UNIX_EPOCH + Duration::from_micros(self.enqueued_at_us),
            priority: rare.priority,
            timeout: rare.timeout,
            key: rare.key,
            payload: self.payload,
            progress: None,
            trace: rare.trace,
            #[cfg(feature = "metrics")]
            due_us: 0,
        }
    }
}

/// One reading of the clock, for a batch of pushes: the instant, and it in microseconds since
/// the source's `origin`.
#[derive(Debug, Clone, Copy)]
struct Now {
    at: Instant,
    us: u64,
    /// The wall clock, in µs since the Unix epoch (final states' times).
    wall_us: u64,
}

/// A task not due yet; the heap's top is the earliest.
#[derive(Debug)]
struct Delayed<T> {
    due: Instant,
    task: Queued<T>,
}

impl<T> PartialEq for Delayed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Delayed<T> {}
impl<T> PartialOrd for Delayed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Delayed<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest due first.
        (other.due, other.task.id).cmp(&(self.due, self.task.id))
    }
}

/// A bounded priority queue in memory, with delayed tasks, retries and dead tasks.
///
/// # Examples
///
/// ```
/// use actix_poller::MemorySource;
///
/// let source = MemorySource::<String>::bounded(1_000).expect("capacity is not zero");
/// assert_eq!(source.capacity(), 1_000);
/// assert!(MemorySource::<String>::bounded(0).is_err());
/// ```
#[derive(Debug)]
pub struct MemorySource<T> {
    /// Due tasks: highest priority first (the map's first key), FIFO within one.
    ready: BTreeMap<Reverse<i32>, VecDeque<Queued<T>>>,
    ready_len: usize,
    delayed: BinaryHeap<Delayed<T>>,
    /// Copies of running tasks' payloads, kept only when retries are on. Keyed by our own
    /// sequential ids: hashed as the history's maps are, not with SipHash (130 instructions per
    /// ack, issue 14).
    leased: HashMap<TaskId, Task<T>, BuildHasherDefault<history::IdHasher>>,
    dead: VecDeque<(DeadTask, Option<Task<T>>)>,
    dead_retention: usize,
    clone_payload: Option<fn(&T) -> T>,
    pub(crate) capacity: usize,
    next_id: u64,
    /// Tasks handed out, and the last final states, for [`Source::status`].
    history: History,
    /// The zero of the queued tasks' `due_us` (the source's creation, on tokio's clock: paused
    /// time pauses it too).
    origin: Instant,
    /// The wall time at `origin`, in µs since the Unix epoch: a fetched task's `due_us` (the
    /// `metrics` feature).
    #[cfg(feature = "metrics")]
    origin_wall_us: u64,
}

impl<T> Default for MemorySource<T> {
    /// A queue of [`DEFAULT_CAPACITY`] tasks keeping [`DEFAULT_DEAD_RETENTION`] dead ones.
    fn default() -> Self {
        MemorySource {
            ready: BTreeMap::new(),
            ready_len: 0,
            delayed: BinaryHeap::new(),
            leased: HashMap::default(),
            dead: VecDeque::new(),
            dead_retention: DEFAULT_DEAD_RETENTION,
            clone_payload: None,
            capacity: DEFAULT_CAPACITY,
            next_id: 0,
            history: History::default(),
            origin: Instant::now(),
            #[cfg(feature = "metrics")]
            origin_wall_us: history::micros_since_epoch(SystemTime::now()),
        }
    }
}

impl<T> MemorySource<T> {
    /// A queue that holds at most `capacity` waiting tasks (due or delayed).
    ///
    /// # Errors
    ///
    /// [`StartError::ZeroCapacity`](crate::StartError::ZeroCapacity) when `capacity` is 0.
    pub fn bounded(capacity: usize) -> Result<Self, crate::StartError> {
        if capacity == 0 {
            return Err(crate::StartError::ZeroCapacity);
        }
        Ok(MemorySource {
            capacity,
            ..MemorySource::default()
        })
    }

    /// Keeps at most `n` dead tasks (the oldest are dropped first).
    pub fn dead_retention(mut self, n: usize) -> Self {
        self.dead_retention = n;
        self
    }

    /// Remembers the final states of at most `n` tasks, none older than `max_age` (default
    /// [`DEFAULT_HISTORY`], [`DEFAULT_HISTORY_AGE`]), for
    /// [`Poller::status`](crate::Poller::status); 0 remembers none (a finished task's status
    /// is then unknown). Running and waiting tasks are always known.
    pub fn history(mut self, n: usize, max_age: Duration) -> Self {
        self.history.bound(n, max_age);
        self
    }

    /// Keeps a copy of each payload while its task runs, so failed tasks can retry and dead
    /// tasks can run again. The builder's [`retry`](crate::PollerBuilder::retry) calls it.
    pub fn with_retries(mut self) -> Self
    where
        T: Clone,
    {
        self.clone_payload = Some(T::clone);
        self
    }

    /// The most tasks the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many tasks wait (due or delayed).
    pub fn len(&self) -> usize {
        self.ready_len + self.delayed.len()
    }

    /// `true` when no task waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `at` in microseconds since `origin`.
    fn micros(&self, at: Instant) -> u64 {
        let us = at.saturating_duration_since(self.origin).as_micros();
        us.min(u64::MAX as u128) as u64
    }

    /// The clock now, read once for a batch of pushes.
    fn now(&self) -> Now {
        let at = Instant::now();
        Now {
            at,
            us: self.micros(at),
            wall_us: history::micros_since_epoch(SystemTime::now()),
        }
    }

    /// Appends a task that became due at `due_us` (see `Queued::due_us`) to its priority's
    /// ready queue. Callers keep each ready queue in due order (see [`push`](Self::push)), so
    /// its front is its oldest.
    fn push_ready(&mut self, mut q: Queued<T>, due_us: u64) {
        q.due_us = due_us;
        self.ready
            .entry(Reverse(q.priority()))
            .or_default()
            .push_back(q);
        self.ready_len += 1;
    }

    /// Queues a task, due at `due` (`None`: now). `now` is the caller's reading of the clock.
    ///
    /// A task due now goes behind every delayed task that became due before it: those are
    /// promoted first, so each ready queue stays in due order.
    fn push(&mut self, q: Queued<T>, due: Option<Instant>, now: Now) {
        match due {
            Some(due) if due > now.at => self.delayed.push(Delayed { due, task: q }),
            _ => {
                self.promote_due(now.at);
                self.push_ready(q, now.us);
            }
        }
    }

    /// Moves every task due by `now` into the ready queues, in due order, each stamped with
    /// the time it became due.
    fn promote_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            if let Some(d) = self.delayed.pop() {
                let due_us = self.micros(d.due);
                self.push_ready(d.task, due_us);
            }
        }
    }

    /// How long the oldest due task has waited since it became due, as of `now` (each ready
    /// queue is in due order: the oldest is one of their fronts).
    fn oldest_queued_age(&self, now: Instant) -> Option<Duration> {
        let oldest = self
            .ready
            .values()
            .filter_map(VecDeque::front)
            .map(|q| q.due_us)
            .min()?;
        Some(Duration::from_micros(
            self.micros(now).saturating_sub(oldest),
        ))
    }

    fn pop_ready(&mut self) -> Option<Queued<T>> {
        // No ready queue is left empty (each is removed with its last task, and an empty batch
        // makes none); an empty one is passed over all the same, so that no task behind it is
        // ever missed (by `close` above all, which hands back what this returns).
        loop {
            let mut entry = self.ready.first_entry()?;
            let q = entry.get_mut().pop_front();
            if entry.get().is_empty() {
                entry.remove();
            }
            if let Some(q) = q {
                self.ready_len -= 1;
                return Some(q);
            }
        }
    }

    /// Why `n` new tasks (`wants_retry`: some with more than one attempt) cannot be enqueued:
    /// the error to hand their payloads back in, or `None` if they can.
    fn refusal(&self, n: usize, wants_retry: bool) -> Option<Refusal<T>> {
        if wants_retry && self.clone_payload.is_none() {
            Some(SubmitError::Unsupported)
        } else if n > self.capacity.saturating_sub(self.len()) {
            Some(SubmitError::Full)
        } else {
            None
        }
    }

    /// Takes `n` ids for new tasks, and reads the clock once for all of them; every task due
    /// by then goes behind the delayed tasks already due (see `push`).
    fn admit(&mut self, n: usize) -> (u64, Vec<TaskId>, Now) {
        let now = self.now();
        let first = self.next_id + 1;
        self.next_id += n as u64;
        self.promote_due(now.at);
        (first, (first..first + n as u64).map(TaskId).collect(), now)
    }

    /// Appends `n` new entries, all due now with `priority`, to that priority's ready queue, in
    /// order (one submit's batch).
    fn push_ready_batch(
        &mut self,
        priority: i32,
        n: usize,
        entries: impl Iterator<Item = Queued<T>>,
    ) {
        let queue = self.ready.entry(Reverse(priority)).or_default();
        if queue.is_empty() {
            // Collected once and cut to size (in the batch's own allocation where the layouts
            // allow: std collects a `vec::IntoIter` map in place): the batch and its queue
            // are not both held.
            let mut converted: Vec<Queued<T>> = entries.collect();
            converted.shrink_to_fit();
            *queue = VecDeque::from(converted);
        } else {
            // Behind waiting tasks: amortized growth (an exact reserve per batch would
            // reallocate the whole queue on every small submit).
            queue.extend(entries);
        }
        self.ready_len += n;
    }

    fn enqueue_now(&mut self, tasks: Vec<NewTask<T>>) -> EnqueueResult<T> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let wants_retry = tasks.iter().any(|t| t.max_attempts.unwrap_or(1) > 1);
        if let Some(refuse) = self.refusal(tasks.len(), wants_retry) {
            return Err(refuse(tasks.into_iter().map(|t| t.payload).collect()));
        }
        let n = tasks.len();
        let (first, ids, now) = self.admit(n);
        let due_now = |t: &NewTask<T>| !matches!(t.run_at, Some(at) if at > now.at);
        let priority = tasks.first().map_or(0, |t| t.priority);
        if tasks.iter().all(|t| t.priority == priority && due_now(t)) {
            // A batch (one submit's options): one ready queue, filled in order.
            let entries = tasks
                .into_iter()
                .zip(first..)
                .map(|(t, id)| Queued::from_new(id, t, now));
            self.push_ready_batch(priority, n, entries);
        } else {
            for (t, id) in tasks.into_iter().zip(first..) {
                let run_at = t.run_at;
                self.push(Queued::from_new(id, t, now), run_at, now);
            }
        }
        Ok(ids)
    }

    /// [`Source::enqueue_batch`]: a batch due now goes from its payloads straight into a ready
    /// queue (no `NewTask` per payload, so a large batch is not held twice); a delayed one
    /// through [`enqueue_now`](Self::enqueue_now).
    fn enqueue_batch_now(&mut self, batch: NewBatch<T>) -> EnqueueResult<T> {
        let NewBatch { payloads, shared } = batch;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        if matches!(shared.run_at, Some(at) if at > Instant::now()) {
            return self.enqueue_now(NewBatch::new(payloads, shared).into_tasks());
        }
        if let Some(refuse) = self.refusal(payloads.len(), shared.max_attempts.unwrap_or(1) > 1) {
            return Err(refuse(payloads));
        }
        let n = payloads.len();
        let (first, ids, now) = self.admit(n);
        let priority = shared.priority;
        let template = Queued::from_new(0, shared, now);
        let entries = payloads
            .into_iter()
            .zip(first..)
            .map(|(payload, id)| template.with_payload(id, payload));
        self.push_ready_batch(priority, n, entries);
        Ok(ids)
    }

    fn bury(&mut self, id: TaskId, attempts: u32, error: String, copy: Option<Task<T>>, now: Now) {
        self.history.ended(id, End::Dead, attempts, now.wall_us);
        if self.dead_retention == 0 {
            return;
        }
        while self.dead.len() >= self.dead_retention {
            self.dead.pop_front();
        }
        let dead = DeadTask {
            id,
            attempts,
            error,
            died_at: UNIX_EPOCH + Duration::from_micros(now.wall_us),
            rerunnable: copy.is_some(),
        };
        self.dead.push_back((dead, copy));
    }

    fn record(&mut self, ack: Ack, now: Now) {
        // Empty unless retries are on: no hashing then.
        let copy = if self.leased.is_empty() {
            None
        } else {
            self.leased.remove(&ack.id)
        };
        let end = match &ack.disposition {
            Disposition::Completed => Some(End::Completed),
            Disposition::Cancelled => Some(End::Cancelled),
            _ => None,
        };
        match end {
            Some(end) => self.history.ended(ack.id, end, ack.attempt, now.wall_us),
            // Dead ones are recorded by `bury`; the rest come back to the queue (or are buried).
            None if matches!(ack.disposition, Disposition::Dead { .. }) => {}
            None => self.history.back(ack.id),
        }
        match ack.disposition {
            Disposition::Completed | Disposition::Cancelled => {}
            Disposition::Dead { error } => self.bury(ack.id, ack.attempt, error, copy, now),
            Disposition::Retry { after, error } => match copy {
                Some(task) => {
                    self.history.failed(ack.id, &error);
                    let next = ack.attempt + 1;
                    self.push(
                        Queued::from_task(task.with_attempt(next)),
                        Some(deadline_after(now.at, after)),
                        now,
                    );
                }
                // Retries are only asked for tasks enqueued with retries on, which keeps copies.
                None => self.bury(ack.id, ack.attempt, error, None, now),
            },
            Disposition::Release => {
                if let Some(task) = copy {
                    self.push(Queued::from_task(task.with_attempt(ack.attempt)), None, now);
                }
            }
            Disposition::Snooze { after } => match copy {
                Some(task) => self.push(
                    Queued::from_task(task.with_attempt(ack.attempt)),
                    Some(deadline_after(now.at, after)),
                    now,
                ),
                None => self.bury(
                    ack.id,
                    ack.attempt,
                    "snoozed, but retries are off for this source".into(),
                    None,
                    now,
                ),
            },
        }
    }

    fn cancel_queued(&mut self, id: TaskId) -> bool {
        let before = self.len();
        for queue in self.ready.values_mut() {
            queue.retain(|q| q.id != id.0);
        }
        self.ready.retain(|_, q| !q.is_empty());
        self.ready_len = self.ready.values().map(VecDeque::len).sum();
        self.delayed.retain(|d| d.task.id != id.0);
        let cancelled = self.len() < before;
        if cancelled {
            let now = history::micros_since_epoch(SystemTime::now());
            self.history.ended(id, End::Cancelled, 0, now);
        }
        cancelled
    }

    /// The status of a waiting task (scanning the queues), or of one handed out or ended.
    fn status_of(&self, id: TaskId) -> Option<TaskStatus> {
        let waiting = |q: &Queued<T>, state| {
            let mut status = TaskStatus::new(id, state);
            status.attempt = q.attempt().saturating_sub(1);
            status.max_attempts = q.max_attempts();
            status.enqueued_at = Some(UNIX_EPOCH + Duration::from_micros(q.enqueued_at_us));
            status
        };
        if let Some(q) = self.ready.values().flatten().find(|q| q.id == id.0) {
            return Some(waiting(q, TaskState::Queued));
        }
        if let Some(d) = self.delayed.iter().find(|d| d.task.id == id.0) {
            let (now, wall) = (Instant::now(), SystemTime::now());
            let run_at = wall
                .checked_add(d.due.saturating_duration_since(now))
                .unwrap_or(wall);
            let state = if d.task.attempt() > 1 {
                TaskState::Retrying { run_at }
            } else {
                TaskState::Scheduled { run_at }
            };
            let mut status = waiting(&d.task, state);
            if d.task.attempt() > 1 {
                status.last_error = self.history.last_error(id);
            }
            return Some(status);
        }
        self.history.status(id, || {
            self.dead
                .iter()
                .rev()
                .find(|(d, _)| d.id == id)
                .map(|(d, _)| d.error.clone())
        })
    }
}

impl<T: 'static> Source<T> for MemorySource<T> {
    type Error = Infallible;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, Infallible>> {
        self.promote_due(Instant::now());
        let mut tasks = Vec::with_capacity(max.min(self.ready_len));
        let now_us = history::micros_since_epoch(SystemTime::now());
        // Whole runs off the front of the highest ready queue, one map lookup per queue.
        while tasks.len() < max {
            let Some(mut entry) = self.ready.first_entry() else {
                break;
            };
            let queue = entry.get_mut();
            let take = (max - tasks.len()).min(queue.len());
            for q in queue.drain(..take) {
                let (attempt, max_attempts) = (q.attempt(), q.max_attempts());
                let enqueued = q.enqueued_at_us;
                self.history
                    .handed_out(TaskId(q.id), attempt, max_attempts, enqueued, now_us);
                #[cfg(feature = "metrics")]
                let due_us = self.origin_wall_us.saturating_add(q.due_us);
                #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
                let mut task = q.into_task();
                #[cfg(feature = "metrics")]
                {
                    task.due_us = due_us;
                }
                if let Some(clone) = self.clone_payload {
                    self.leased
                        .insert(task.id, task.with_payload(clone(&task.payload)));
                }
                tasks.push(task);
            }
            self.ready_len -= take;
            if queue.is_empty() {
                entry.remove();
            }
        }
        // Nothing to poll for: only a submit brings more, or the earliest delayed task's due time.
        let wake_on = match self.delayed.peek() {
            Some(d) => WakeOn::at(d.due),
            None => WakeOn::submit(),
        };
        // Fewer than asked for: the due queues are empty.
        let fetched = if tasks.len() < max {
            Fetched::drained(tasks, wake_on)
        } else {
            Fetched::new(tasks, wake_on)
        };
        Box::pin(ready(Ok(fetched)))
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Infallible>> {
        let now = self.now();
        for ack in acks {
            self.record(ack, now);
        }
        Box::pin(ready(Ok(())))
    }

    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        Box::pin(ready(self.enqueue_now(tasks)))
    }

    fn enqueue_batch(&mut self, batch: NewBatch<T>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        Box::pin(ready(self.enqueue_batch_now(batch)))
    }

    fn can_requeue(&self) -> bool {
        self.clone_payload.is_some()
    }

    fn queued(&self) -> Option<u64> {
        Some(self.len() as u64)
    }

    fn status(
        &mut self,
        id: TaskId,
    ) -> LocalBoxFuture<'static, Result<Option<TaskStatus>, Infallible>> {
        Box::pin(ready(Ok(self.status_of(id))))
    }

    fn counts(&mut self) -> LocalBoxFuture<'static, Result<Option<QueueCounts>, Infallible>> {
        // What is due counts as queued, and ages from when it became due.
        let now = Instant::now();
        self.promote_due(now);
        let retrying = self.delayed.iter().filter(|d| d.task.attempt() > 1).count();
        let counts = QueueCounts {
            queued: self.ready_len as u64,
            scheduled: (self.delayed.len() - retrying) as u64,
            retrying: retrying as u64,
            running: self.history.running() as u64,
            dead: self.dead.len() as u64,
            oldest_queued_age: self.oldest_queued_age(now),
        };
        Box::pin(ready(Ok(Some(counts))))
    }

    fn cancel(&mut self, id: TaskId) -> LocalBoxFuture<'static, Result<bool, Infallible>> {
        Box::pin(ready(Ok(self.cancel_queued(id))))
    }

    fn dead_tasks(
        &mut self,
        limit: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<DeadTask>, Infallible>> {
        let list = self
            .dead
            .iter()
            .rev()
            .take(limit)
            .map(|(d, _)| d.clone())
            .collect();
        Box::pin(ready(Ok(list)))
    }

    fn rerun_dead(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<Vec<TaskId>, Infallible>> {
        let mut rerun = Vec::new();
        let now = self.now();
        let mut keep = VecDeque::with_capacity(self.dead.len());
        for (dead, copy) in std::mem::take(&mut self.dead) {
            match copy {
                Some(task) if ids.contains(&dead.id) => {
                    rerun.push(dead.id);
                    self.push(Queued::from_task(task.with_attempt(1)), None, now);
                }
                copy => keep.push_back((dead, copy)),
            }
        }
        self.dead = keep;
        Box::pin(ready(Ok(rerun)))
    }

    fn purge_dead(
        &mut self,
        ids: Option<Vec<TaskId>>,
    ) -> LocalBoxFuture<'static, Result<usize, Infallible>> {
        let before = self.dead.len();
        match ids {
            None => self.dead.clear(),
            Some(ids) => self.dead.retain(|(d, _)| !ids.contains(&d.id)),
        }
        Box::pin(ready(Ok(before - self.dead.len())))
    }

    fn close(
        &mut self,
        mut unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, Infallible>> {
        // Unstarted tasks were fetched first, so they come first; then due, then delayed.
        for t in &unstarted {
            self.leased.remove(&t.id);
            self.history.back(t.id);
        }
        while let Some(q) = self.pop_ready() {
            unstarted.push(q.into_task());
        }
        let mut delayed: Vec<Delayed<T>> = self.delayed.drain().collect();
        delayed.sort_by(|a, b| b.cmp(a));
        unstarted.extend(delayed.into_iter().map(|d| d.task.into_task()));
        Box::pin(ready(Ok(unstarted)))
    }
}

impl<T: Clone> RetrySupport<T> for MemorySource<T> {
    fn enable_retries(&mut self) {
        self.clone_payload = Some(T::clone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskOptions;
    use futures::FutureExt;

    fn new_tasks(n: u32) -> Vec<NewTask<u32>> {
        (0..n).map(NewTask::new).collect()
    }

    fn fetch(s: &mut MemorySource<u32>, n: usize) -> Fetched<u32> {
        s.fetch(n).now_or_never().unwrap().unwrap()
    }

    /// Options with every per-task field away from its default (priority 7, a 1.5 ms timeout,
    /// key `customer-1`, three attempts), and that timeout.
    fn every_option() -> (TaskOptions, Duration) {
        let timeout = Duration::from_micros(1_500);
        let options = TaskOptions::new()
            .priority(7)
            .timeout(timeout)
            .key("customer-1")
            .max_attempts(3);
        (options, timeout)
    }

    fn payloads(f: &Fetched<u32>) -> Vec<u32> {
        f.tasks.iter().map(|t| t.payload).collect()
    }

    #[test]
    fn full_queue_hands_the_whole_batch_back() {
        let mut s = MemorySource::bounded(3).unwrap();
        assert_eq!(
            s.enqueue(new_tasks(2))
                .now_or_never()
                .unwrap()
                .unwrap()
                .len(),
            2
        );
        let err = s.enqueue(new_tasks(2)).now_or_never().unwrap().unwrap_err();
        assert!(err.is_full());
        assert_eq!(err.into_inner(), Some(vec![0, 1]));
        assert_eq!(s.len(), 2, "a refused batch adds nothing");
    }

    #[test]
    fn fetch_is_fifo_and_bounded_by_max() {
        let mut s = MemorySource::bounded(10).unwrap();
        s.enqueue(new_tasks(5)).now_or_never().unwrap().unwrap();
        assert_eq!(payloads(&fetch(&mut s, 3)), vec![0, 1, 2]);
        let f = fetch(&mut s, 10);
        assert_eq!(f.tasks.len(), 2);
        assert!(f.wake_on.at.is_none() && f.wake_on.signal.is_none());
    }

    #[test]
    fn higher_priority_first_fifo_within() {
        let mut s = MemorySource::bounded(10).unwrap();
        let with =
            |p: u32, prio: i32| NewTask::with_options(p, TaskOptions::new().priority(prio), 1);
        let batch = vec![with(0, 0), with(1, 5), with(2, 0), with(3, 5), with(4, -1)];
        s.enqueue(batch).now_or_never().unwrap().unwrap();
        assert_eq!(payloads(&fetch(&mut s, 10)), vec![1, 3, 0, 2, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_tasks_wait_and_set_the_wake_time() {
        let mut s = MemorySource::bounded(10).unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        let t = NewTask::with_options(7, TaskOptions::new().run_at(later), 1);
        s.enqueue(vec![t]).now_or_never().unwrap().unwrap();
        let f = fetch(&mut s, 10);
        assert!(f.tasks.is_empty());
        assert_eq!(f.wake_on.at, Some(later));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(payloads(&fetch(&mut s, 10)), vec![7]);
    }

    #[test]
    fn close_hands_back_unstarted_then_queued() {
        let mut s = MemorySource::bounded(10).unwrap();
        s.enqueue(new_tasks(4)).now_or_never().unwrap().unwrap();
        let f = fetch(&mut s, 2);
        let back = s.close(f.tasks).now_or_never().unwrap().unwrap();
        let got: Vec<u32> = back.iter().map(|t| t.payload).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn retries_need_payload_copies() {
        let mut s = MemorySource::bounded(10).unwrap();
        let t = NewTask::with_options(1u32, TaskOptions::new(), 3);
        let err = s.enqueue(vec![t]).now_or_never().unwrap().unwrap_err();
        assert!(matches!(err, SubmitError::Unsupported(ref v) if v == &vec![1]));
        let mut s = s.with_retries();
        let t = NewTask::with_options(1u32, TaskOptions::new(), 3);
        s.enqueue(vec![t]).now_or_never().unwrap().unwrap();
    }

    fn counts(s: &mut MemorySource<u32>) -> QueueCounts {
        s.counts().now_or_never().unwrap().unwrap().unwrap()
    }

    /// The oldest due task's age counts from when it became due: a delayed task from its due
    /// time (even if only promoted later, behind a task submitted after it was due), a retried
    /// one from the end of its backoff, a fresh one from its submit.
    #[tokio::test(start_paused = true)]
    async fn oldest_queued_age_counts_from_when_each_task_became_due() {
        let secs = Duration::from_secs;
        let mut s = MemorySource::bounded(10).unwrap().with_retries();
        assert_eq!(counts(&mut s).oldest_queued_age, None);
        let delayed = NewTask::with_options(1, TaskOptions::new().delay(secs(2)), 2);
        s.enqueue(vec![delayed]).now_or_never().unwrap().unwrap();
        tokio::time::advance(secs(5)).await;
        // Due for 3 s, not yet promoted: a task submitted now queues behind it.
        s.enqueue(vec![NewTask::with_options(2, TaskOptions::new(), 2)])
            .now_or_never()
            .unwrap()
            .unwrap();
        let c = counts(&mut s);
        assert_eq!((c.queued, c.scheduled), (2, 0));
        assert_eq!(c.oldest_queued_age, Some(secs(3)));
        tokio::time::advance(secs(1)).await;
        assert_eq!(counts(&mut s).oldest_queued_age, Some(secs(4)));
        // The delayed task runs first; the one submitted 1 s ago is the oldest left.
        let first = fetch(&mut s, 1);
        assert_eq!(payloads(&first), vec![1]);
        assert_eq!(counts(&mut s).oldest_queued_age, Some(secs(1)));
        assert_eq!(payloads(&fetch(&mut s, 1)), vec![2]);
        assert_eq!(counts(&mut s).oldest_queued_age, None);
        // A retry after 2 s: due 2 s after the ack, 5 s old 7 s after it.
        let retry = Ack {
            id: first.tasks[0].id,
            attempt: 1,
            disposition: Disposition::Retry {
                after: secs(2),
                error: "again".into(),
            },
        };
        s.ack(vec![retry]).now_or_never().unwrap().unwrap();
        tokio::time::advance(secs(1)).await;
        let c = counts(&mut s);
        assert_eq!((c.queued, c.retrying, c.oldest_queued_age), (0, 1, None));
        tokio::time::advance(secs(6)).await;
        let c = counts(&mut s);
        assert_eq!((c.queued, c.retrying), (1, 0));
        assert_eq!(c.oldest_queued_age, Some(secs(5)));
    }

    #[test]
    fn queued_task_layout_stays_compact() {
        // 32 bytes beside the payload: id, two stamps, the pointer to the rare fields (the
        // memory benchmark's budget is 64).
        assert_eq!(std::mem::size_of::<Queued<()>>(), 32);
        assert_eq!(std::mem::size_of::<Queued<u64>>(), 40);
    }

    /// A task with the defaults keeps nothing out of line; one option set is enough to keep
    /// them all.
    #[test]
    fn only_tasks_with_options_keep_rare_fields() {
        let mut s = MemorySource::bounded(10).unwrap();
        s.enqueue(new_tasks(2)).now_or_never().unwrap().unwrap();
        let prio = NewTask::with_options(2, TaskOptions::new().priority(-3), 1);
        s.enqueue(vec![prio]).now_or_never().unwrap().unwrap();
        let rare: Vec<bool> = s
            .ready
            .values()
            .flatten()
            .map(|q| q.rare.is_some())
            .collect();
        assert_eq!(rare, vec![false, false, true]);
    }

    fn traceparent() -> Box<Parent> {
        let tp = crate::trace::TraceParent::parse(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .unwrap();
        Box::new(Parent::Remote(tp))
    }

    /// Every per-task field survives the queue: enqueue, fetch, a retry (back through the
    /// queue), fetch again; and the status of the waiting task reads them too.
    #[tokio::test(start_paused = true)]
    async fn a_task_with_every_option_keeps_each_field_through_a_retry() {
        let mut s = MemorySource::bounded(10).unwrap().with_retries();
        let (options, timeout) = every_option();
        let t = NewTask::with_options(42u32, options, 1).with_parent(Some(traceparent()));
        let ids = s.enqueue(vec![t]).now_or_never().unwrap().unwrap();
        let status = s.status_of(ids[0]).unwrap();
        assert_eq!((status.attempt, status.max_attempts), (0, 3));
        let check = |task: &Task<u32>, attempt: u32| {
            assert_eq!(task.id, ids[0]);
            assert_eq!(task.payload, 42);
            assert_eq!((task.attempt, task.max_attempts), (attempt, 3));
            assert_eq!(task.priority, 7);
            assert_eq!(task.timeout, Some(timeout));
            assert_eq!(task.key.as_ref().map(|k| k.as_str()), Some("customer-1"));
            let tp = task.trace.as_ref().and_then(|p| p.traceparent());
            assert_eq!(tp, traceparent().traceparent());
        };
        let first = fetch(&mut s, 10);
        assert_eq!(first.tasks.len(), 1);
        check(&first.tasks[0], 1);
        let enqueued_at = first.tasks[0].enqueued_at;
        let retry = Ack {
            id: ids[0],
            attempt: 1,
            disposition: Disposition::Retry {
                after: Duration::from_secs(1),
                error: "again".into(),
            },
        };
        s.ack(vec![retry]).now_or_never().unwrap().unwrap();
        let status = s.status_of(ids[0]).unwrap();
        assert_eq!((status.attempt, status.max_attempts), (1, 3));
        assert_eq!(status.last_error.as_deref(), Some("again"));
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = fetch(&mut s, 10);
        assert_eq!(second.tasks.len(), 1);
        check(&second.tasks[0], 2);
        assert_eq!(
            second.tasks[0].enqueued_at, enqueued_at,
            "the first submit's time"
        );
    }

    /// Batches queue in submit order with sequential ids, whether they land in an empty ready
    /// queue (converted whole) or behind waiting tasks (appended), and a batch mixing delays
    /// and priorities takes the per-task path.
    #[tokio::test(start_paused = true)]
    async fn batches_keep_submit_order_and_sequential_ids() {
        let mut s = MemorySource::bounded(100).unwrap();
        let a = s.enqueue(new_tasks(3)).now_or_never().unwrap().unwrap();
        let b = s
            .enqueue((10..13).map(NewTask::new).collect())
            .now_or_never()
            .unwrap()
            .unwrap();
        let ids: Vec<u64> = a.iter().chain(&b).map(|id| id.0).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
        let delay = TaskOptions::new().delay(Duration::from_secs(1));
        let mixed = vec![
            NewTask::new(20),
            NewTask::with_options(21, delay, 1),
            NewTask::with_options(22, TaskOptions::new().priority(1), 1),
        ];
        let c = s.enqueue(mixed).now_or_never().unwrap().unwrap();
        assert_eq!(c.iter().map(|id| id.0).collect::<Vec<_>>(), vec![7, 8, 9]);
        let f = fetch(&mut s, 100);
        assert_eq!(payloads(&f), vec![22, 0, 1, 2, 10, 11, 12, 20]);
        let got: Vec<u64> = f.tasks.iter().map(|t| t.id.0).collect();
        assert_eq!(got, vec![9, 1, 2, 3, 4, 5, 6, 7]);
        tokio::time::advance(Duration::from_secs(1)).await;
        let f = fetch(&mut s, 100);
        assert_eq!((payloads(&f), f.tasks[0].id.0), (vec![21], 8));
        assert!(s.is_empty());
    }

    /// `enqueue_batch` (every submit's path): each task of a batch has the shared options and
    /// its own payload and id, in order, behind what waits; a delayed batch waits for its time;
    /// a refused batch comes back whole, in order, and takes no id.
    #[tokio::test(start_paused = true)]
    async fn a_batch_of_payloads_shares_its_options() {
        let mut s = MemorySource::bounded(10).unwrap().with_retries();
        let batch = |payloads: Vec<u32>, options: TaskOptions| {
            let shared = NewTask::with_options((), options, 1).with_parent(Some(traceparent()));
            NewBatch::new(payloads, shared)
        };
        let (options, timeout) = every_option();
        s.enqueue(new_tasks(1)).now_or_never().unwrap().unwrap();
        let ids = s
            .enqueue_batch(batch(vec![40, 41, 42], options))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(ids.iter().map(|id| id.0).collect::<Vec<_>>(), vec![2, 3, 4]);
        let plain = s
            .enqueue_batch(batch(vec![50, 51], TaskOptions::new()))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(plain.iter().map(|id| id.0).collect::<Vec<_>>(), vec![5, 6]);
        let delayed = TaskOptions::new().delay(Duration::from_secs(1));
        let later = s
            .enqueue_batch(batch(vec![60], delayed))
            .now_or_never()
            .unwrap()
            .unwrap();
        let full = s.enqueue_batch(batch(vec![70, 71, 72, 73], TaskOptions::new()));
        match full.now_or_never().unwrap() {
            Err(SubmitError::Full(back)) => assert_eq!(back, vec![70, 71, 72, 73]),
            other => panic!("expected the batch back as Full, got {other:?}"),
        }
        let f = fetch(&mut s, 10);
        assert_eq!(payloads(&f), vec![40, 41, 42, 0, 50, 51]);
        for (task, (id, payload)) in f.tasks[..3].iter().zip(ids.iter().zip(40..)) {
            assert_eq!((task.id, task.payload), (*id, payload));
            assert_eq!((task.attempt, task.max_attempts, task.priority), (1, 3, 7));
            assert_eq!(task.timeout, Some(timeout));
            assert_eq!(task.key.as_ref().map(|k| k.as_str()), Some("customer-1"));
            let tp = task.trace.as_ref().and_then(|p| p.traceparent());
            assert_eq!(tp, traceparent().traceparent());
        }
        let plain_task = &f.tasks[4];
        assert_eq!((plain_task.priority, plain_task.timeout), (0, None));
        assert!(plain_task.key.is_none());
        assert!(
            fetch(&mut s, 10).tasks.is_empty(),
            "the delayed batch waits"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let f = fetch(&mut s, 10);
        assert_eq!((payloads(&f), f.tasks[0].id), (vec![60], later[0]));
        let mut no_retries = MemorySource::bounded(10).unwrap();
        let retried = no_retries.enqueue_batch(batch(vec![80], TaskOptions::new().max_attempts(2)));
        match retried.now_or_never().unwrap() {
            Err(SubmitError::Unsupported(back)) => assert_eq!(back, vec![80]),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert_eq!(no_retries.len(), 0);
    }

    /// The default `Source::enqueue_batch` (what the durable sources use) makes one task per
    /// payload with the shared options.
    #[test]
    fn a_batch_into_tasks_gives_each_payload_the_options() {
        let shared = NewTask::with_options((), TaskOptions::new().priority(3).key("k"), 2);
        let tasks = NewBatch::new(vec![1u32, 2], shared).into_tasks();
        let got: Vec<_> = tasks
            .iter()
            .map(|t| {
                (
                    t.payload,
                    t.priority,
                    t.max_attempts,
                    t.key.as_ref().map(|k| k.as_str()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(1, 3, Some(2), Some("k")), (2, 3, Some(2), Some("k"))]
        );
    }

    /// An empty submit changes nothing: no ids, no error (whatever its options), and no empty
    /// ready queue in front of the waiting tasks, so `close` still hands every one back.
    #[test]
    fn an_empty_batch_leaves_every_queued_task_reachable() {
        let mut s = MemorySource::bounded(10).unwrap();
        let low = TaskOptions::new().priority(-1);
        let tasks = (0..3)
            .map(|p| NewTask::with_options(p, low.clone(), 1))
            .collect();
        s.enqueue(tasks).now_or_never().unwrap().unwrap();
        let retried = NewTask::with_options((), TaskOptions::new().max_attempts(3), 1);
        let empty = s.enqueue_batch(NewBatch::new(Vec::new(), retried));
        assert_eq!(empty.now_or_never().unwrap().unwrap(), Vec::new());
        let empty = s.enqueue(Vec::new()).now_or_never().unwrap().unwrap();
        assert!(empty.is_empty());
        assert_eq!(s.len(), 3);
        let back = s.close(Vec::new()).now_or_never().unwrap().unwrap();
        let back: Vec<u32> = back.into_iter().map(|t| t.payload).collect();
        assert_eq!(back, vec![0, 1, 2]);
    }
}
