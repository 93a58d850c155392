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
use std::collections::{vec_deque, BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::BuildHasherDefault;
use std::ops::Range;
use std::sync::Arc;
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

/// How far the wall clock may be from the source's anchor plus the monotonic time since its
/// creation for a task due at once to derive its enqueue time from its due stamp (1 ms): the
/// two clocks move together unless the system clock is stepped (or the machine slept).
const STAMP_TOLERANCE_US: u64 = 1_000;

/// A waiting task, whole: in the delayed heap, and on its way into and out of a ready queue
/// (which keeps it more compactly: see [`ReadyQueue`]).
#[derive(Debug)]
struct Queued<T> {
    id: u64,
    /// When it became due (entered a ready queue, or its delay ran out), in microseconds since
    /// the source's `origin`: the age of the oldest queued task (`QueueCounts::oldest_queued_age`).
    /// Without `rare`, also when it was enqueued: `MemorySource::wall_anchor_us` plus this.
    due_us: u64,
    /// Everything else, when anything is not the default or the enqueue time is not the due
    /// time (a delayed or retried task); shared by the tasks of one submit.
    rare: Option<Arc<Rare>>,
    payload: T,
}

/// The due tasks of one priority, in due order (its front is its oldest), stored compactly:
/// each task is its due stamp and payload ([`Ready`]), and consecutive tasks with consecutive
/// ids and the same rare fields share one [`Run`] for both. A submit's batch is one run, and
/// so are single submits with the default options one after another: a task due at once with
/// the defaults costs `8 + size_of::<T>()`.
#[derive(Debug)]
struct ReadyQueue<T> {
    tasks: VecDeque<Ready<T>>,
    /// The tasks' ids and rare fields, in the same order: the lengths add up to `tasks.len()`,
    /// and none is 0.
    runs: VecDeque<Run>,
    /// How many tasks here have no `rare`: their enqueue time is derived from the source's
    /// anchor, which may move only while this is 0 in every queue.
    plain: usize,
}

/// A due task in a [`ReadyQueue`]: what is its own.
#[derive(Debug)]
struct Ready<T> {
    /// As `Queued::due_us`.
    due_us: u64,
    payload: T,
}

/// Tasks `first`, `first + 1`, ... (`len` of them, in a [`ReadyQueue`]'s order), all with
/// `rare`.
#[derive(Debug)]
struct Run {
    first: u64,
    len: usize,
    rare: Option<Arc<Rare>>,
}

impl Run {
    /// Whether task `id` with `rare` continues this run.
    fn continues(&self, id: u64, rare: &Option<Arc<Rare>>) -> bool {
        let same = match (&self.rare, rare) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same && self.first.checked_add(self.len as u64) == Some(id)
    }
}

/// Tasks taken off a [`ReadyQueue`]'s front, all of one run: the first one's id, the run's rare
/// fields, and the tasks in order.
type Taken<'a, T> = (u64, Option<Arc<Rare>>, vec_deque::Drain<'a, Ready<T>>);

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        ReadyQueue {
            tasks: VecDeque::new(),
            runs: VecDeque::new(),
            plain: 0,
        }
    }
}

impl<T> ReadyQueue<T> {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The oldest task's due stamp.
    fn front_due(&self) -> Option<u64> {
        self.tasks.front().map(|t| t.due_us)
    }

    /// Counts `n` tasks with ids from `first` on and `rare` into the runs (the caller appends
    /// the tasks).
    fn add_run(&mut self, first: u64, n: usize, rare: Option<Arc<Rare>>) {
        if n == 0 {
            return;
        }
        if rare.is_none() {
            self.plain += n;
        }
        match self.runs.back_mut() {
            Some(run) if run.continues(first, &rare) => run.len += n,
            _ => self.runs.push_back(Run {
                first,
                len: n,
                rare,
            }),
        }
    }

    /// Appends a task.
    fn push(&mut self, q: Queued<T>) {
        self.add_run(q.id, 1, q.rare);
        self.tasks.push_back(Ready {
            due_us: q.due_us,
            payload: q.payload,
        });
    }

    /// Appends `payloads` with ids from `first` on, all due at `due_us` with `rare`.
    fn push_batch(&mut self, first: u64, due_us: u64, rare: Option<Arc<Rare>>, payloads: Vec<T>) {
        self.add_run(first, payloads.len(), rare);
        let tasks = payloads
            .into_iter()
            .map(|payload| Ready { due_us, payload });
        if self.tasks.is_empty() {
            // Exactly the batch's size (an exact-size iterator), not grown by doubling.
            self.tasks = VecDeque::from(tasks.collect::<Vec<_>>());
        } else {
            // Behind waiting tasks: amortized growth (an exact reserve per batch would
            // reallocate the whole queue on every small submit).
            self.tasks.extend(tasks);
        }
    }

    /// Takes the oldest task.
    fn pop(&mut self) -> Option<Queued<T>> {
        let run = self.runs.front_mut()?;
        let id = run.first;
        let rare = if run.len > 1 {
            run.first += 1;
            run.len -= 1;
            run.rare.clone()
        } else {
            self.runs.pop_front().and_then(|r| r.rare)
        };
        let task = self.tasks.pop_front()?;
        if rare.is_none() {
            self.plain -= 1;
        }
        Some(Queued {
            id,
            due_us: task.due_us,
            rare,
            payload: task.payload,
        })
    }

    /// Takes up to `max` tasks (at least one, if `max` is not 0) off the front, all of the
    /// front run: its first id, its rare fields and the tasks.
    fn take_run(&mut self, max: usize) -> Option<Taken<'_, T>> {
        let run = self.runs.front_mut().filter(|_| max > 0)?;
        let (first, n) = (run.first, run.len.min(max));
        let rare = if n == run.len {
            self.runs.pop_front().and_then(|r| r.rare)
        } else {
            run.first += n as u64;
            run.len -= n;
            run.rare.clone()
        };
        if rare.is_none() {
            self.plain -= n;
        }
        Some((first, rare, self.tasks.drain(..n)))
    }

    /// Where task `id` is: its run's index and its own.
    fn position(&self, id: u64) -> Option<(usize, usize)> {
        let mut start = 0;
        for (r, run) in self.runs.iter().enumerate() {
            let k = id.wrapping_sub(run.first);
            if id >= run.first && k < run.len as u64 {
                return Some((r, start + k as usize));
            }
            start += run.len;
        }
        None
    }

    /// Task `id`'s rare fields and due stamp, if it waits here.
    fn get(&self, id: u64) -> Option<(&Option<Arc<Rare>>, u64)> {
        let (r, i) = self.position(id)?;
        Some((&self.runs[r].rare, self.tasks[i].due_us))
    }

    /// Removes task `id`; `false` if it does not wait here.
    fn remove(&mut self, id: u64) -> bool {
        let Some((r, i)) = self.position(id) else {
            return false;
        };
        self.tasks.remove(i);
        let run = &mut self.runs[r];
        if run.rare.is_none() {
            self.plain -= 1;
        }
        let before = (id - run.first) as usize;
        let after = Run {
            first: id + 1,
            len: run.len - before - 1,
            rare: run.rare.clone(),
        };
        run.len = before;
        if after.len > 0 {
            self.runs.insert(r + 1, after);
        }
        if self.runs[r].len == 0 {
            self.runs.remove(r);
        }
        true
    }

    /// Each task's id, rare fields and own part, in order.
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (u64, &Option<Arc<Rare>>, &Ready<T>)> {
        self.runs
            .iter()
            .flat_map(|run| (run.first..).take(run.len).map(move |id| (id, &run.rare)))
            .zip(&self.tasks)
            .map(|((id, rare), task)| (id, rare, task))
    }
}

/// A queued task's fields that most tasks leave at their defaults (priority 0, first attempt of
/// one, the poller's timeout, no pace key, no trace context, due when enqueued): kept out of
/// line, so that a common entry is id, due stamp and payload. A task with retries on has one
/// (`max_attempts` > 1), and so does a delayed or retried one (its enqueue time).
#[derive(Debug, Clone)]
struct Rare {
    priority: i32,
    attempt: u32,
    max_attempts: u32,
    timeout: Option<Duration>,
    key: Option<Key>,
    trace: Option<Arc<Parent>>,
    /// When it was enqueued, in microseconds since the Unix epoch.
    enqueued_at_us: u64,
}

impl Rare {
    /// `self`, to share, unless it is all defaults and its enqueue time `derivable` (from the
    /// due stamp: it was due when enqueued, and the clocks agreed; see [`Now::derived`]).
    fn shared(self, derivable: bool) -> Option<Arc<Rare>> {
        if derivable
            && self.priority == 0
            && self.attempt == 1
            && self.max_attempts == 1
            && self.timeout.is_none()
            && self.key.is_none()
            && self.trace.is_none()
        {
            None
        } else {
            Some(Arc::new(self))
        }
    }
}

impl Rare {
    /// The rare fields of a fresh task with the options of `t`, enqueued and (if `due_now`)
    /// due at `now`.
    fn new<T>(t: NewTask<T>, now: Now, due_now: bool) -> (Option<Arc<Rare>>, T) {
        let rare = Rare {
            priority: t.priority,
            attempt: 1,
            max_attempts: t.max_attempts.unwrap_or(1).max(1),
            timeout: t.timeout,
            key: t.key,
            trace: t.parent,
            enqueued_at_us: now.enqueued_us,
        };
        (rare.shared(due_now && now.derived), t.payload)
    }
}

impl<T> Queued<T> {
    /// A fresh task from a submit: id `id`, enqueued and (if `due_now`) due at `now`.
    fn from_new(id: u64, t: NewTask<T>, now: Now, due_now: bool) -> Self {
        let (rare, payload) = Rare::new(t, now, due_now);
        Queued {
            id,
            due_us: now.us,
            rare,
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
            enqueued_at_us: history::micros_since_epoch(task.enqueued_at),
        };
        Queued {
            id: task.id.0,
            due_us: 0,
            // Its due stamp is set when it is queued again: the enqueue time is its own.
            rare: rare.shared(false),
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

    /// When it was enqueued, in microseconds since the Unix epoch; `anchor` is the source's
    /// `wall_anchor_us` (a task without `rare` was due when enqueued).
    fn enqueued_at_us(&self, anchor: u64) -> u64 {
        enqueued_at_us(&self.rare, self.due_us, anchor)
    }

    /// The envelope to hand out (no clock read: the stamps are the entry's); `anchor` as for
    /// [`enqueued_at_us`](Self::enqueued_at_us).
    fn into_task(self, anchor: u64) -> Task<T> {
        let enqueued_at = UNIX_EPOCH + Duration::from_micros(self.enqueued_at_us(anchor));
        let (id, payload) = (TaskId(self.id), self.payload);
        match self.rare {
            None => Task::enqueued_at(id, payload, enqueued_at),
            Some(rare) => {
                // The last task of a run takes its fields, the others a copy.
                let rare = Arc::unwrap_or_clone(rare);
                Task {
                    id,
                    attempt: rare.attempt,
                    max_attempts: rare.max_attempts,
                    enqueued_at,
                    priority: rare.priority,
                    timeout: rare.timeout,
                    key: rare.key,
                    payload,
                    progress: None,
                    trace: rare.trace,
                    #[cfg(feature = "metrics")]
                    due_us: 0,
                }
            }
        }
    }
}

/// When a task with `rare` and `due_us` was enqueued (see [`Queued::enqueued_at_us`]).
fn enqueued_at_us(rare: &Option<Arc<Rare>>, due_us: u64, anchor: u64) -> u64 {
    match rare {
        Some(r) => r.enqueued_at_us,
        None => anchor.saturating_add(due_us),
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
    /// The enqueue time of a task enqueued now, in µs since the Unix epoch: the source's
    /// `wall_anchor_us + us` when that is within [`STAMP_TOLERANCE_US`] of `wall_us`
    /// (`derived`), so that a task due at once keeps no stamp of its own; `wall_us` otherwise.
    enqueued_us: u64,
    derived: bool,
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
    ready: BTreeMap<Reverse<i32>, ReadyQueue<T>>,
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
    /// The wall time at `origin`, in µs since the Unix epoch: a queued task without rare fields
    /// was enqueued at this plus its `due_us`, and a fetched task's `due_us` (the `metrics`
    /// feature) is this plus the entry's. Moved only while nothing is queued (see `admit`).
    wall_anchor_us: u64,
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
            wall_anchor_us: history::micros_since_epoch(SystemTime::now()),
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
        let us = self.micros(at);
        let wall_us = history::micros_since_epoch(SystemTime::now());
        let derived_us = self.wall_anchor_us.saturating_add(us);
        let derived = derived_us.abs_diff(wall_us) <= STAMP_TOLERANCE_US;
        Now {
            at,
            us,
            wall_us,
            enqueued_us: if derived { derived_us } else { wall_us },
            derived,
        }
    }

    /// Appends a task that became due at `due_us` (see `Queued::due_us`) to its priority's
    /// ready queue. Callers keep each ready queue in due order (see [`push`](Self::push)), so
    /// its front is its oldest.
    fn push_ready(&mut self, mut q: Queued<T>, due_us: u64) {
        // Without rare fields the due stamp is the enqueue time too: it was set at the submit.
        debug_assert!(q.rare.is_some() || q.due_us == due_us);
        q.due_us = due_us;
        self.ready.entry(Reverse(q.priority())).or_default().push(q);
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
            .filter_map(ReadyQueue::front_due)
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
            let q = entry.get_mut().pop();
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

    /// Takes `n` ids for new tasks (the first is returned), and reads the clock once for all of
    /// them; every task due by then goes behind the delayed tasks already due (see `push`).
    ///
    /// If the wall clock has moved away from `wall_anchor_us` plus the monotonic time (it was
    /// stepped, or the two drift apart, as they do by design on some systems), the anchor moves
    /// to it as soon as no queued task derives its enqueue time from the old one; until then new
    /// tasks keep their own stamps. A steady backlog recovers once the tasks queued before the
    /// step have left, not only when the queue is empty.
    fn admit(&mut self, n: usize) -> (u64, Now) {
        let mut now = self.now();
        if !now.derived && self.ready.values().all(|q| q.plain == 0) {
            self.wall_anchor_us = now.wall_us.saturating_sub(now.us);
            now = self.now();
        }
        let first = self.next_id + 1;
        self.next_id += n as u64;
        self.promote_due(now.at);
        (first, now)
    }

    /// [`Source::enqueue`], answering the ids as the run they are.
    fn enqueue_now(&mut self, tasks: Vec<NewTask<T>>) -> Result<Range<u64>, SubmitError<Vec<T>>> {
        if tasks.is_empty() {
            return Ok(0..0);
        }
        let wants_retry = tasks.iter().any(|t| t.max_attempts.unwrap_or(1) > 1);
        if let Some(refuse) = self.refusal(tasks.len(), wants_retry) {
            return Err(refuse(tasks.into_iter().map(|t| t.payload).collect()));
        }
        let n = tasks.len();
        let (first, now) = self.admit(n);
        for (t, id) in tasks.into_iter().zip(first..) {
            let run_at = t.run_at;
            let due_now = !matches!(run_at, Some(at) if at > now.at);
            self.push(Queued::from_new(id, t, now, due_now), run_at, now);
        }
        Ok(first..first + n as u64)
    }

    /// [`Source::enqueue_batch`], answering the ids as the run they are (each one more than the
    /// one before): the Fetcher makes the receipts from it, without a list of ids in between
    /// (`Fetcher::submit`). The batch's tasks share one copy of its rare fields; due now, its
    /// payloads go straight into a ready queue as one run (no `NewTask` per payload, so a large
    /// batch is not held twice).
    pub(crate) fn enqueue_run(
        &mut self,
        batch: NewBatch<T>,
    ) -> Result<Range<u64>, SubmitError<Vec<T>>> {
        let NewBatch { payloads, shared } = batch;
        if payloads.is_empty() {
            return Ok(0..0);
        }
        if let Some(refuse) = self.refusal(payloads.len(), shared.max_attempts.unwrap_or(1) > 1) {
            return Err(refuse(payloads));
        }
        let n = payloads.len();
        let (first, now) = self.admit(n);
        let (priority, run_at) = (shared.priority, shared.run_at);
        let due_now = !matches!(run_at, Some(at) if at > now.at);
        let (rare, ()) = Rare::new(shared, now, due_now);
        if due_now {
            let queue = self.ready.entry(Reverse(priority)).or_default();
            queue.push_batch(first, now.us, rare, payloads);
            self.ready_len += n;
        } else {
            for (payload, id) in payloads.into_iter().zip(first..) {
                let q = Queued {
                    id,
                    due_us: now.us,
                    rare: rare.clone(),
                    payload,
                };
                self.push(q, run_at, now);
            }
        }
        Ok(first..first + n as u64)
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
        if self.ready.values_mut().any(|queue| queue.remove(id.0)) {
            self.ready.retain(|_, q| !q.is_empty());
            self.ready_len -= 1;
        } else {
            self.delayed.retain(|d| d.task.id != id.0);
        }
        let cancelled = self.len() < before;
        if cancelled {
            let now = history::micros_since_epoch(SystemTime::now());
            self.history.ended(id, End::Cancelled, 0, now);
        }
        cancelled
    }

    /// The status of a waiting task (scanning the queues), or of one handed out or ended.
    fn status_of(&self, id: TaskId) -> Option<TaskStatus> {
        let waiting = |rare: &Option<Arc<Rare>>, due_us, state| {
            let mut status = TaskStatus::new(id, state);
            let (attempt, max_attempts) = rare
                .as_ref()
                .map_or((1, 1), |r| (r.attempt, r.max_attempts));
            status.attempt = attempt.saturating_sub(1);
            status.max_attempts = max_attempts;
            let enqueued_us = enqueued_at_us(rare, due_us, self.wall_anchor_us);
            status.enqueued_at = Some(UNIX_EPOCH + Duration::from_micros(enqueued_us));
            status
        };
        if let Some((rare, due_us)) = self.ready.values().find_map(|queue| queue.get(id.0)) {
            return Some(waiting(rare, due_us, TaskState::Queued));
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
            let mut status = waiting(&d.task.rare, d.task.due_us, state);
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

/// An enqueue's answer, its run of ids as a list.
fn listed<T>(run: Result<Range<u64>, SubmitError<Vec<T>>>) -> EnqueueResult<T> {
    run.map(|ids| ids.map(TaskId).collect())
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
            let mut left = (max - tasks.len()).min(queue.len());
            while let Some((first, rare, run)) = queue.take_run(left) {
                left -= run.len();
                self.ready_len -= run.len();
                for (ready, id) in run.zip(first..) {
                    let q = Queued {
                        id,
                        due_us: ready.due_us,
                        rare: rare.clone(),
                        payload: ready.payload,
                    };
                    let (attempt, max_attempts) = (q.attempt(), q.max_attempts());
                    let enqueued = q.enqueued_at_us(self.wall_anchor_us);
                    self.history
                        .handed_out(TaskId(q.id), attempt, max_attempts, enqueued, now_us);
                    #[cfg(feature = "metrics")]
                    let due_us = self.wall_anchor_us.saturating_add(q.due_us);
                    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
                    let mut task = q.into_task(self.wall_anchor_us);
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
            }
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
        Box::pin(ready(listed(self.enqueue_now(tasks))))
    }

    fn enqueue_batch(&mut self, batch: NewBatch<T>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        Box::pin(ready(listed(self.enqueue_run(batch))))
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
        let anchor = self.wall_anchor_us;
        while let Some(q) = self.pop_ready() {
            unstarted.push(q.into_task(anchor));
        }
        let mut delayed: Vec<Delayed<T>> = self.delayed.drain().collect();
        delayed.sort_by(|a, b| b.cmp(a));
        unstarted.extend(delayed.into_iter().map(|d| d.task.into_task(anchor)));
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
        let ids: Vec<u64> = f.tasks.iter().map(|t| t.id.0).collect();
        assert_eq!((ids, payloads(&f)), (vec![4, 5], vec![3, 4]));
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
        let got: Vec<(u64, u32)> = back.iter().map(|t| (t.id.0, t.payload)).collect();
        assert_eq!(
            got,
            vec![(1, 0), (2, 1), (3, 2), (4, 3)],
            "ids kept after a partial take"
        );
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
        // 8 bytes beside the payload in a ready queue: the due stamp (the id and the rare
        // fields are its run's; the memory benchmark's budget is 64).
        assert_eq!(std::mem::size_of::<Ready<()>>(), 8);
        assert_eq!(std::mem::size_of::<Ready<u64>>(), 16);
        assert_eq!(std::mem::size_of::<Run>(), 24);
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
            .flat_map(ReadyQueue::iter)
            .map(|(_, rare, _)| rare.is_some())
            .collect();
        assert_eq!(rare, vec![false, false, true]);
    }

    fn status(s: &MemorySource<u32>, id: TaskId) -> TaskStatus {
        s.status_of(id).unwrap()
    }

    /// `at` is between `before` and `after`, give or take the derived stamps' tolerance.
    fn within(at: SystemTime, before: SystemTime, after: SystemTime) -> bool {
        let tolerance = Duration::from_micros(STAMP_TOLERANCE_US + 1);
        at + tolerance >= before && at <= after + tolerance
    }

    /// A task due at once keeps one stamp (its enqueue time is derived from it); a delayed one
    /// keeps its enqueue time apart from the time it became due: status, fetch and history
    /// read the submit's time for both, and the queue's age counts from the due time.
    #[tokio::test(start_paused = true)]
    async fn a_delayed_task_keeps_its_enqueue_time_apart_from_its_due_time() {
        let secs = Duration::from_secs;
        let mut s = MemorySource::bounded(10).unwrap();
        let before = SystemTime::now();
        let now = s.enqueue(new_tasks(1)).now_or_never().unwrap().unwrap()[0];
        let delayed = NewTask::with_options(1, TaskOptions::new().delay(secs(5)), 1);
        let later = s.enqueue(vec![delayed]).now_or_never().unwrap().unwrap()[0];
        let after = SystemTime::now();
        let stamp = |s: &MemorySource<u32>, id| status(s, id).enqueued_at.unwrap();
        let (now_at, later_at) = (stamp(&s, now), stamp(&s, later));
        assert!(within(now_at, before, after), "{now_at:?}");
        assert!(within(later_at, before, after), "{later_at:?}");
        assert!(
            s.delayed.peek().unwrap().task.rare.is_some(),
            "its own stamp"
        );
        tokio::time::advance(secs(7)).await;
        let c = counts(&mut s);
        assert_eq!(c.queued, 2);
        assert_eq!(
            c.oldest_queued_age,
            Some(secs(7)),
            "the first, due at its submit"
        );
        assert_eq!((stamp(&s, now), stamp(&s, later)), (now_at, later_at));
        let first = fetch(&mut s, 1);
        assert_eq!(
            (first.tasks[0].id, first.tasks[0].enqueued_at),
            (now, now_at)
        );
        assert_eq!(
            counts(&mut s).oldest_queued_age,
            Some(secs(2)),
            "due 5 s after its submit"
        );
        let second = fetch(&mut s, 1);
        assert_eq!(
            (second.tasks[0].id, second.tasks[0].enqueued_at),
            (later, later_at)
        );
        // Handed out: the history's copy.
        assert_eq!((stamp(&s, now), stamp(&s, later)), (now_at, later_at));
    }

    /// A ready queue keeps ids in runs: single submits with the defaults and a batch after
    /// them join one run, a batch with options shares one copy of them, a cancel splits a run,
    /// and every task keeps its id, payload and options through a fetch, a retry and a fetch.
    #[tokio::test(start_paused = true)]
    async fn runs_keep_each_task_its_id_and_options() {
        let mut s = MemorySource::bounded(20).unwrap().with_retries();
        for p in 0..3 {
            s.enqueue(vec![NewTask::new(p)])
                .now_or_never()
                .unwrap()
                .unwrap();
        }
        let plain = NewBatch::new(vec![3, 4, 5], NewTask::new(()));
        s.enqueue_batch(plain).now_or_never().unwrap().unwrap();
        // (How the tasks without options share runs: `plain_submits_share_one_run`, with real
        // clocks; paused time stops the monotonic clock, so the enqueue times are not derived.)
        let (options, timeout) = every_option();
        let shared = NewTask::with_options((), options, 1).with_parent(Some(traceparent()));
        let batch = NewBatch::new(vec![10, 11, 12, 13], shared);
        let ids = s.enqueue_batch(batch).now_or_never().unwrap().unwrap();
        let run = &s.ready[&Reverse(7)].runs;
        assert_eq!((run.len(), run[0].len), (1, 4));
        let rare = run[0].rare.as_ref().unwrap();
        assert_eq!(Arc::strong_count(rare), 1, "one copy for the batch");
        let cancel = |s: &mut MemorySource<u32>, id| s.cancel(id).now_or_never().unwrap().unwrap();
        assert!(cancel(&mut s, ids[1]));
        assert!(cancel(&mut s, TaskId(5)));
        assert!(!cancel(&mut s, ids[1]), "cancelled already");
        assert_eq!(s.ready[&Reverse(7)].runs.len(), 2);
        let st = status(&s, ids[2]);
        assert_eq!(
            (st.state, st.attempt, st.max_attempts),
            (TaskState::Queued, 0, 3)
        );
        let f = fetch(&mut s, 20);
        let got: Vec<(u64, u32)> = f.tasks.iter().map(|t| (t.id.0, t.payload)).collect();
        let want = [
            (7, 10),
            (9, 12),
            (10, 13),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 3),
            (6, 5),
        ];
        assert_eq!(got, want);
        let check = |task: &Task<u32>, attempt: u32| {
            assert_eq!((task.attempt, task.max_attempts), (attempt, 3));
            assert_eq!((task.priority, task.timeout), (7, Some(timeout)));
            assert_eq!(task.key.as_ref().map(|k| k.as_str()), Some("customer-1"));
            let tp = task.trace.as_ref().and_then(|p| p.traceparent());
            assert_eq!(tp, traceparent().traceparent());
        };
        f.tasks[..3].iter().for_each(|t| check(t, 1));
        for t in &f.tasks[3..] {
            assert_eq!((t.attempt, t.max_attempts, t.priority), (1, 1, 0));
            assert!(t.key.is_none() && t.trace.is_none() && t.timeout.is_none());
        }
        let retry = Ack {
            id: ids[2],
            attempt: 1,
            disposition: Disposition::Retry {
                after: Duration::from_secs(1),
                error: "again".into(),
            },
        };
        s.ack(vec![retry]).now_or_never().unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let again = fetch(&mut s, 20);
        assert_eq!((again.tasks[0].id, again.tasks[0].payload), (ids[2], 12));
        check(&again.tasks[0], 2);
        assert_eq!(again.tasks[0].enqueued_at, f.tasks[1].enqueued_at);
    }

    /// Single submits with the defaults and a batch after them join one run of ids; a cancel
    /// splits it; a partial fetch and a close hand out the right ids after the split. Real
    /// clocks (see `runs_keep_each_task_its_id_and_options`).
    #[test]
    fn plain_submits_share_one_run() {
        let mut s = MemorySource::bounded(20).unwrap();
        for p in 0..3 {
            s.enqueue(vec![NewTask::new(p)])
                .now_or_never()
                .unwrap()
                .unwrap();
        }
        let batch = NewBatch::new(vec![3, 4, 5], NewTask::new(()));
        s.enqueue_batch(batch).now_or_never().unwrap().unwrap();
        let runs = |s: &MemorySource<u32>| {
            s.ready[&Reverse(0)]
                .runs
                .iter()
                .map(|r| (r.first, r.len))
                .collect::<Vec<_>>()
        };
        assert_eq!(runs(&s), vec![(1, 6)], "ids 1 to 6, no options");
        assert!(s.cancel(TaskId(3)).now_or_never().unwrap().unwrap());
        assert_eq!(runs(&s), vec![(1, 2), (4, 3)]);
        let ids = |f: &Fetched<u32>| {
            f.tasks
                .iter()
                .map(|t| (t.id.0, t.payload))
                .collect::<Vec<_>>()
        };
        let f = fetch(&mut s, 1);
        assert_eq!(ids(&f), vec![(1, 0)]);
        let f = fetch(&mut s, 2);
        assert_eq!(ids(&f), vec![(2, 1), (4, 3)], "across the split");
        assert_eq!(runs(&s), vec![(5, 2)]);
        let back = s.close(Vec::new()).now_or_never().unwrap().unwrap();
        let back: Vec<(u64, u32)> = back.iter().map(|t| (t.id.0, t.payload)).collect();
        assert_eq!(back, vec![(5, 4), (6, 5)]);
    }

    /// The wall clock stepped away from the source's anchor: a task enqueued while tasks that
    /// derive their enqueue time from the anchor wait keeps its own stamp (the clock's reading);
    /// once those have left, the anchor moves, even with other tasks still waiting, and tasks
    /// due at once keep no stamp again. Every enqueue time stays the clock's reading.
    #[test]
    fn a_stepped_wall_clock_keeps_each_enqueue_time_true() {
        let mut s = MemorySource::bounded(10).unwrap();
        let plain = |s: &MemorySource<u32>| {
            s.ready
                .values()
                .flat_map(ReadyQueue::iter)
                .map(|(_, rare, _)| rare.is_none())
                .collect::<Vec<_>>()
        };
        let first = s.enqueue(new_tasks(1)).now_or_never().unwrap().unwrap()[0];
        assert_eq!(plain(&s), vec![true]);
        // As if the wall clock had jumped 10 s ahead since the source was made (the first
        // task's derived time moves with it here: a test cannot step the real clock).
        s.wall_anchor_us -= 10_000_000;
        // One task enqueued now: its id and enqueue time, which must be the clock's reading.
        let enqueue_one = |s: &mut MemorySource<u32>| {
            let before = SystemTime::now();
            let id = s.enqueue(new_tasks(1)).now_or_never().unwrap().unwrap()[0];
            let after = SystemTime::now();
            let at = status(s, id).enqueued_at.unwrap();
            assert!(within(at, before, after), "{at:?}");
            (id, at)
        };
        let (stepped, stepped_at) = enqueue_one(&mut s);
        assert_eq!(
            plain(&s),
            vec![true, false],
            "the first task holds the anchor"
        );
        // The first task leaves; the stepped one still waits, with its own stamp.
        let f = fetch(&mut s, 1);
        assert_eq!(f.tasks[0].id, first);
        let (fresh, fresh_at) = enqueue_one(&mut s);
        assert_eq!(
            plain(&s),
            vec![false, true],
            "the anchor followed the clock"
        );
        let f = fetch(&mut s, 10);
        let got: Vec<(TaskId, SystemTime)> =
            f.tasks.iter().map(|t| (t.id, t.enqueued_at)).collect();
        assert_eq!(got, vec![(stepped, stepped_at), (fresh, fresh_at)]);
    }

    fn traceparent() -> Arc<Parent> {
        let tp = crate::trace::TraceParent::parse(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .unwrap();
        Arc::new(Parent::Remote(tp))
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
