//! Tasks and what becomes of them: ids, the envelope a source hands out, the context a handler
//! sees, outcomes, and the rule that turns an outcome into what the source must record.
//!
//! This module imports no actor module: it is the vocabulary the actors share, and the one place
//! where the task state machine lives, so that every source only *stores* states.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

/// Identifies a task within its source. The in-memory source numbers tasks from 1; a durable
/// source uses its row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A task as a [`Source`](crate::Source) hands it out: the payload plus what the poller needs to
/// know about this attempt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Task<T> {
    /// The task's id in its source.
    pub id: TaskId,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// How many attempts the task may have in all (1: no retry).
    pub max_attempts: u32,
    /// When the task was first submitted.
    pub enqueued_at: SystemTime,
    /// Higher runs first among due tasks.
    pub priority: i32,
    /// How long one attempt may run before it is dropped and recorded as timed out (`None`: the
    /// poller's default).
    pub timeout: Option<Duration>,
    /// The user's payload.
    pub payload: T,
    /// Where the handler's progress goes, when the submitter tracks the task.
    pub(crate) progress: Option<watch::Sender<Progress>>,
}

impl<T> Task<T> {
    /// A first attempt of `payload` under `id`, enqueued now, with one attempt allowed.
    pub fn new(id: TaskId, payload: T) -> Self {
        Task {
            id,
            attempt: 1,
            max_attempts: 1,
            enqueued_at: SystemTime::now(),
            priority: 0,
            timeout: None,
            payload,
            progress: None,
        }
    }

    /// The same task (id, attempt, options) with another payload.
    pub fn with_payload<U>(&self, payload: U) -> Task<U> {
        Task {
            id: self.id,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            enqueued_at: self.enqueued_at,
            priority: self.priority,
            timeout: self.timeout,
            payload,
            progress: None,
        }
    }

    /// Sets how many attempts the task may have in all (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets the priority (higher first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the attempt number (1-based).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets when the task was first submitted.
    pub fn with_enqueued_at(mut self, at: SystemTime) -> Self {
        self.enqueued_at = at;
        self
    }
}

/// What a handler sees of the task it runs, besides the payload: its id and attempt, its
/// deadline, a cancellation signal, and a way to report progress.
///
/// Cheap to clone; carries no lock. It is tied to the executor's thread (not `Send`), like the
/// task future it is given to.
///
/// # Examples
///
/// A handler that works in steps, reports progress, and stops cleanly when cancelled:
///
/// ```
/// use actix_poller::{Abort, BoxError, TaskContext};
///
/// async fn import(rows: Vec<String>, cx: TaskContext) -> Result<(), BoxError> {
///     for (i, row) in rows.iter().enumerate() {
///         if cx.is_cancelled() {
///             return Err(Abort::new("cancelled by the user").into());
///         }
///         let _ = row; // ... work ...
///         cx.progress(i as u64 + 1, rows.len() as u64);
///     }
///     Ok(())
/// }
/// # let _ = import;
/// ```
#[derive(Clone)]
pub struct TaskContext {
    id: TaskId,
    attempt: u32,
    max_attempts: u32,
    enqueued_at: SystemTime,
    deadline: Option<Instant>,
    executor: usize,
    cancels: Rc<CancelBoard>,
    progress: Option<watch::Sender<Progress>>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("executor", &self.executor)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl TaskContext {
    pub(crate) fn new<T>(
        task: &Task<T>,
        executor: usize,
        deadline: Option<Instant>,
        cancels: Rc<CancelBoard>,
    ) -> Self {
        TaskContext {
            id: task.id,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            enqueued_at: task.enqueued_at,
            deadline,
            executor,
            cancels,
            progress: task.progress.clone(),
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many attempts the task may have in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// When the task was first submitted.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }

    /// When this attempt will be dropped as timed out, if it has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The index of the executor running the task (0-based), e.g. to pick per-executor state.
    pub fn executor(&self) -> usize {
        self.executor
    }

    /// `true` once cancellation of this task was requested. The handler should wind down; after
    /// the grace period the poller drops its future anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.is_cancelled(self.id)
    }

    /// Resolves when cancellation of this task is requested, e.g. to `select!` against work.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            id: self.id,
            board: Rc::clone(&self.cancels),
        }
    }

    /// Reports progress: `done` of `total` units. A submitter that tracks the task sees it
    /// through [`Receipt::progress`](crate::Receipt::progress); does nothing otherwise.
    pub fn progress(&self, done: u64, total: u64) {
        self.report(Progress {
            done,
            total,
            note: None,
        });
    }

    /// Reports progress with a short note (e.g. the current step).
    pub fn report(&self, progress: Progress) {
        if let Some(tx) = &self.progress {
            tx.send_replace(progress);
        }
    }
}

/// A task's progress, as its handler last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all (0 if unknown).
    pub total: u64,
    /// A short note, e.g. the current step.
    pub note: Option<String>,
}

impl Progress {
    /// `done` of `total`, with a note.
    pub fn new(done: u64, total: u64, note: Option<String>) -> Self {
        Progress { done, total, note }
    }
}

/// Per-executor record of cancellation requests, shared with the contexts of its tasks (one
/// thread, no lock). Empty unless someone cancels a running task, so it costs nothing per task.
#[derive(Debug, Default)]
pub(crate) struct CancelBoard {
    requested: RefCell<HashSet<TaskId>>,
    waiters: RefCell<HashMap<TaskId, Vec<Waker>>>,
}

impl CancelBoard {
    pub(crate) fn request(&self, id: TaskId) {
        self.requested.borrow_mut().insert(id);
        if let Some(wakers) = self.waiters.borrow_mut().remove(&id) {
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    pub(crate) fn is_cancelled(&self, id: TaskId) -> bool {
        let requested = self.requested.borrow();
        !requested.is_empty() && requested.contains(&id)
    }

    /// Forgets a task that ended.
    pub(crate) fn forget(&self, id: TaskId) {
        if !self.requested.borrow().is_empty() {
            self.requested.borrow_mut().remove(&id);
        }
        if !self.waiters.borrow().is_empty() {
            self.waiters.borrow_mut().remove(&id);
        }
    }
}

/// The future [`TaskContext::cancelled`] returns.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled {
    id: TaskId,
    board: Rc<CancelBoard>,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<()> {
        if self.board.is_cancelled(self.id) {
            return Poll::Ready(());
        }
        let mut waiters = self.board.waiters.borrow_mut();
        let list = waiters.entry(self.id).or_default();
        if !list.iter().any(|w| w.will_wake(cx.waker())) {
            list.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Return it (boxed, e.g. `Err(RetryAfter(d).into())`) from a handler to run the task again after
/// `d` without counting a failed attempt (a snooze).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry after {:?}", self.0)
    }
}

impl std::error::Error for RetryAfter {}

/// Return it (boxed, e.g. `Err(Abort::new("bad input").into())`) from a handler to make the task
/// dead at once, whatever attempts remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort(pub String);

impl Abort {
    /// An abort with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Abort(reason.into())
    }
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aborted: {}", self.0)
    }
}

impl std::error::Error for Abort {}

/// How one attempt of a task ended, as its executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler returned `Ok`.
    Completed,
    /// The handler returned an error; the text is its `Display`.
    Failed(String),
    /// The handler panicked; the text is the panic message.
    Panicked(String),
    /// The attempt was cancelled on request before it finished.
    Cancelled,
    /// The attempt was still running at the shutdown deadline and was dropped. Nobody asked to
    /// cancel the task, so it is not a final state: the source keeps the task for a later run
    /// (the attempt does not count) if it can.
    Interrupted,
    /// The attempt ran past its timeout and was dropped.
    TimedOut(Duration),
    /// The handler asked to run again after this delay ([`RetryAfter`]); not a failure.
    Snoozed(Duration),
    /// The handler asked never to retry ([`Abort`]); the text is the reason.
    Aborted(String),
}

/// One attempt's end, as an executor reports it in [`Done`](crate::messages::Done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The task.
    pub id: TaskId,
    /// The attempt that ended.
    pub attempt: u32,
    /// How many attempts the task may have in all.
    pub max_attempts: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// What the source must record for one attempt: the state machine's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Final: the task succeeded.
    Completed,
    /// Not final: the attempt failed and the task runs again, not before `after` has passed.
    /// While it waits it holds no worker slot.
    Retry {
        /// How long to wait before the next attempt.
        after: Duration,
        /// Why the attempt failed.
        error: String,
    },
    /// Final: out of attempts (or not retryable).
    Dead {
        /// Why the last attempt failed.
        error: String,
    },
    /// Final: cancelled before it could finish.
    Cancelled,
    /// Not final: the handler snoozed; the task runs again after `after`, and this attempt does
    /// not count (the next attempt has the same number). Holds no worker slot while it waits.
    Snooze {
        /// How long to wait.
        after: Duration,
    },
    /// Not final: the attempt was interrupted by a shutdown. The source takes the task back as
    /// due now, and the attempt does not count: a durable source makes the row runnable again at
    /// once (not after its lease expires); the in-memory source puts its copy back in the queue,
    /// so the shutdown hands it back (without a copy, that is without retries, it cannot, and
    /// the task is lost with the process as every in-memory task would be).
    Release,
}

impl Disposition {
    /// `true` when the task will not run again.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Disposition::Retry { .. } | Disposition::Snooze { .. } | Disposition::Release
        )
    }
}

/// An acknowledgement the Scheduler sends back to the source (through the Fetcher): what to
/// record for one attempt of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The task.
    pub id: TaskId,
    /// The attempt this acknowledges.
    pub attempt: u32,
    /// What to record.
    pub disposition: Disposition,
}

/// The final state of a task, as a submitter that tracks it observes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinalState {
    /// The task succeeded.
    Completed,
    /// The task is dead: its last attempt failed (or panicked) and it will not run again.
    Dead {
        /// Why the last attempt failed.
        error: String,
        /// How many attempts it had.
        attempts: u32,
    },
    /// The task was cancelled.
    Cancelled,
}

impl FinalState {
    pub(crate) fn from_ack(ack: &Ack) -> Option<FinalState> {
        match &ack.disposition {
            Disposition::Completed => Some(FinalState::Completed),
            Disposition::Dead { error } => Some(FinalState::Dead {
                error: error.clone(),
                attempts: ack.attempt,
            }),
            Disposition::Cancelled => Some(FinalState::Cancelled),
            Disposition::Retry { .. } | Disposition::Snooze { .. } | Disposition::Release => None,
        }
    }
}

/// The task state machine: what one attempt's outcome means for the task.
///
/// | outcome | attempts left | disposition |
/// |---|---|---|
/// | `Completed` | – | `Completed` (final) |
/// | `Cancelled` | – | `Cancelled` (final) |
/// | `Interrupted` | – | `Release` (back in the source, same attempt number again) |
/// | `Aborted` | – | `Dead` (final) |
/// | `Snoozed(d)` | – | `Snooze { after: d }` (same attempt number again) |
/// | `Failed`, `Panicked`, `TimedOut` | yes | `Retry { after: backoff.delay(attempt) }` |
/// | `Failed`, `Panicked`, `TimedOut` | no | `Dead` (final) |
pub fn settle(finished: &Finished, retry_backoff: &Backoff) -> Disposition {
    match &finished.outcome {
        Outcome::Completed => Disposition::Completed,
        Outcome::Cancelled => Disposition::Cancelled,
        Outcome::Interrupted => Disposition::Release,
        Outcome::Aborted(reason) => Disposition::Dead {
            error: format!("aborted: {reason}"),
        },
        Outcome::Snoozed(after) => Disposition::Snooze { after: *after },
        Outcome::TimedOut(limit) => retry_or_dead(
            finished,
            &format!("timed out after {limit:?}"),
            retry_backoff,
        ),
        Outcome::Failed(error) | Outcome::Panicked(error) => {
            retry_or_dead(finished, error, retry_backoff)
        }
    }
}

fn retry_or_dead(finished: &Finished, error: &str, retry_backoff: &Backoff) -> Disposition {
    if finished.attempt < finished.max_attempts {
        Disposition::Retry {
            after: retry_backoff.delay(finished.attempt),
            error: error.to_owned(),
        }
    } else {
        Disposition::Dead {
            error: error.to_owned(),
        }
    }
}

/// How a task type retries: how many attempts in all, and the delay before each retry.
///
/// Retries are opt-in: the default is one attempt. A task waiting for its retry is back in its
/// source with a due time and holds no worker slot.
///
/// # Examples
///
/// ```
/// use actix_poller::{Backoff, RetryPolicy};
/// use std::time::Duration;
///
/// // 5 attempts, 1 s doubling to 10 min, 20 % jitter (the default backoff for retries).
/// let p = RetryPolicy::attempts(5);
/// assert_eq!(p.max_attempts(), 5);
/// // 3 attempts, always 30 s apart.
/// let p = RetryPolicy::attempts(3).fixed(Duration::from_secs(30));
/// assert_eq!(p.backoff().delay(2), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
}

impl Default for RetryPolicy {
    /// One attempt, no retry.
    fn default() -> Self {
        RetryPolicy::attempts(1)
    }
}

impl RetryPolicy {
    /// No retry: one attempt.
    pub fn none() -> Self {
        RetryPolicy::default()
    }

    /// `max_attempts` attempts in all (0 is taken as 1), with exponential backoff from 1 s
    /// doubling to 10 min, 20 % jitter.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(600)),
        }
    }

    /// Uses `backoff` between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Waits exactly `delay` between attempts.
    pub fn fixed(self, delay: Duration) -> Self {
        self.with_backoff(Backoff::new(delay, delay).with_jitter(0.0))
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

/// Per-task options for a submit: priority, delay, attempts, timeout.
///
/// # Examples
///
/// ```
/// use actix_poller::TaskOptions;
/// use std::time::Duration;
///
/// let urgent = TaskOptions::new().priority(10).timeout(Duration::from_secs(5));
/// let later = TaskOptions::new().delay(Duration::from_secs(60)).max_attempts(3);
/// # let _ = (urgent, later);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOptions {
    pub(crate) priority: i32,
    pub(crate) run_at: Option<Instant>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) timeout: Option<Duration>,
}

impl TaskOptions {
    /// The defaults: priority 0, due now, the poller's retry policy and timeout.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// Higher runs first among due tasks (default 0); FIFO within a priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Not fetched before `delay` has passed.
    pub fn delay(self, delay: Duration) -> Self {
        self.run_at(Instant::now() + delay)
    }

    /// Not fetched before `at`.
    pub fn run_at(mut self, at: Instant) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Overrides the retry policy's attempts for this task (at least 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts.max(1));
        self
    }

    /// Overrides the poller's per-attempt timeout for this task.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The priority.
    pub fn get_priority(&self) -> i32 {
        self.priority
    }

    /// When the task becomes due, if delayed.
    pub fn get_run_at(&self) -> Option<Instant> {
        self.run_at
    }

    /// The attempts override, if any.
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The timeout override, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// A task that ran out of attempts (or was aborted), as a source keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadTask {
    /// The task.
    pub id: TaskId,
    /// How many attempts it had.
    pub attempts: u32,
    /// Why the last one failed.
    pub error: String,
    /// When it went dead.
    pub died_at: SystemTime,
    /// `false` when the source kept no copy of the payload, so it cannot run again.
    pub rerunnable: bool,
}

/// Exponential backoff with jitter and a cap.
///
/// The `n`-th delay (1-based) is `initial × multiplier^(n-1)`, capped at `max`, then reduced by a
/// random fraction of at most `jitter` (so delays spread out but never exceed the cap):
/// `delay ∈ [(1 − jitter) × d, d]`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_poller::Backoff;
///
/// let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_jitter(0.0);
/// assert_eq!(b.delay(1), Duration::from_millis(10));
/// assert_eq!(b.delay(2), Duration::from_millis(20));
/// assert_eq!(b.delay(30), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for Backoff {
    /// 50 ms, doubling, capped at 30 s, 20 % jitter.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// Doubling from `initial` up to `max`, with 20 % jitter. `max` is raised to `initial` if
    /// smaller.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            ..Backoff::default()
        }
    }

    /// Sets the growth factor per step (clamped to at least 1.0).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the jitter fraction (clamped to `0.0..=1.0`).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter fraction.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The delay before the `n`-th retry (1-based; 0 is treated as 1), jitter applied.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(64) as i32;
        let raw = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = raw.min(self.max.as_secs_f64());
        let factor = 1.0 - self.jitter * fastrand::f64();
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(attempt: u32, max: u32, outcome: Outcome) -> Finished {
        Finished {
            id: TaskId(1),
            attempt,
            max_attempts: max,
            outcome,
        }
    }

    #[test]
    fn settle_follows_the_state_machine() {
        let b = Backoff::default().with_jitter(0.0);
        assert_eq!(
            settle(&fin(1, 1, Outcome::Completed), &b),
            Disposition::Completed
        );
        assert_eq!(
            settle(&fin(1, 1, Outcome::Cancelled), &b),
            Disposition::Cancelled
        );
        let released = settle(&fin(3, 3, Outcome::Interrupted), &b);
        assert_eq!(released, Disposition::Release);
        assert!(
            !released.is_final(),
            "a shutdown interrupts, it does not end the task"
        );
        assert_eq!(
            settle(&fin(1, 1, Outcome::Failed("x".into())), &b),
            Disposition::Dead { error: "x".into() }
        );
        assert_eq!(
            settle(&fin(1, 3, Outcome::Panicked("p".into())), &b),
            Disposition::Retry {
                after: b.delay(1),
                error: "p".into()
            }
        );
        assert!(!settle(&fin(2, 3, Outcome::Failed("x".into())), &b).is_final());
        assert_eq!(
            settle(&fin(1, 3, Outcome::Aborted("no".into())), &b),
            Disposition::Dead {
                error: "aborted: no".into()
            }
        );
        let snooze = settle(&fin(3, 3, Outcome::Snoozed(Duration::from_secs(2))), &b);
        assert_eq!(
            snooze,
            Disposition::Snooze {
                after: Duration::from_secs(2)
            }
        );
        assert!(
            !snooze.is_final(),
            "a snooze on the last attempt is not a failure"
        );
        assert_eq!(
            settle(&fin(2, 2, Outcome::TimedOut(Duration::from_millis(5))), &b),
            Disposition::Dead {
                error: "timed out after 5ms".into()
            }
        );
        assert!(settle(&fin(3, 3, Outcome::Failed("x".into())), &b).is_final());
    }

    #[test]
    fn backoff_stays_within_jitter_band_and_cap() {
        let b =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(500)).with_jitter(0.5);
        for n in 1..100 {
            let nominal = (10.0 * 2f64.powi(n as i32 - 1)).min(500.0) / 1000.0;
            let d = b.delay(n).as_secs_f64();
            assert!(d <= nominal + 1e-9, "n={n} d={d} nominal={nominal}");
            assert!(d >= nominal * 0.5 - 1e-9, "n={n} d={d} nominal={nominal}");
        }
        assert_eq!(b.with_jitter(7.0).jitter(), 1.0);
        assert_eq!(b.with_jitter(f64::NAN).jitter(), 0.0);
    }
}
