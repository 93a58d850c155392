//! Tasks and what becomes of them: ids, the envelope a source hands out, the context a handler
//! sees, outcomes, and the rule that turns an outcome into what the source must record.
//!
//! This module imports no actor module: it is the vocabulary the actors share, and the one place
//! where the task state machine lives, so that every source only *stores* states.

use std::fmt;
use std::time::{Duration, SystemTime};

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
    /// The user's payload.
    pub payload: T,
}

impl<T> Task<T> {
    /// A first attempt of `payload` under `id`, enqueued now, with one attempt allowed.
    pub fn new(id: TaskId, payload: T) -> Self {
        Task {
            id,
            attempt: 1,
            max_attempts: 1,
            enqueued_at: SystemTime::now(),
            payload,
        }
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

/// What a handler sees of the task it runs, besides the payload.
///
/// Cheap to clone; carries no lock.
#[derive(Debug, Clone)]
pub struct TaskContext {
    id: TaskId,
    attempt: u32,
    enqueued_at: SystemTime,
    executor: usize,
}

impl TaskContext {
    pub(crate) fn new<T>(task: &Task<T>, executor: usize) -> Self {
        TaskContext {
            id: task.id,
            attempt: task.attempt,
            enqueued_at: task.enqueued_at,
            executor,
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

    /// When the task was first submitted.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }

    /// The index of the executor running the task (0-based), e.g. to pick per-executor state.
    pub fn executor(&self) -> usize {
        self.executor
    }
}

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
    /// The attempt was cancelled (for example by a shutdown deadline) before it finished.
    Cancelled,
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
}

impl Disposition {
    /// `true` when the task will not run again.
    pub fn is_final(&self) -> bool {
        !matches!(self, Disposition::Retry { .. })
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
            Disposition::Retry { .. } => None,
        }
    }
}

/// The task state machine: what one attempt's outcome means for the task.
///
/// A completed attempt completes the task; a cancelled one cancels it; a failed or panicked one
/// retries after `retry_backoff.delay(attempt)` while attempts remain, and is dead otherwise.
pub fn settle(finished: &Finished, retry_backoff: &Backoff) -> Disposition {
    match &finished.outcome {
        Outcome::Completed => Disposition::Completed,
        Outcome::Cancelled => Disposition::Cancelled,
        Outcome::Failed(error) | Outcome::Panicked(error) => {
            if finished.attempt < finished.max_attempts {
                Disposition::Retry {
                    after: retry_backoff.delay(finished.attempt),
                    error: error.clone(),
                }
            } else {
                Disposition::Dead {
                    error: error.clone(),
                }
            }
        }
    }
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
