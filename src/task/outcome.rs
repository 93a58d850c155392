//! How an attempt ends and what becomes of the task: the handler's signals ([`RetryAfter`],
//! [`Abort`]), the executor's [`Outcome`], the state machine ([`settle`]) that turns it into a
//! [`Disposition`], the [`Ack`] that carries it to the source, and the [`FinalState`] a
//! submitter sees.
//!
//! This is the one place where the task state machine lives: every source only *stores* states.

use std::fmt;
use std::time::Duration;

use super::TaskId;
use crate::retry::Backoff;

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
    /// The handler answered [`Backpressure`](crate::Backpressure): its key (or the poller)
    /// pauses, and the task runs again after the pause without counting a failed attempt.
    Backpressured(crate::pace::Backpressure),
    /// The handler asked never to retry ([`Abort`]); the text is the reason.
    Aborted(String),
}

/// One attempt's end, as an executor reports it in [`Done`](crate::messages::Done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    /// The task.
    pub(crate) id: TaskId,
    /// The attempt that ended.
    pub(crate) attempt: u32,
    /// How many attempts the task may have in all.
    pub(crate) max_attempts: u32,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// How long it ran (zero when it never ran).
    pub(crate) elapsed: Duration,
}

impl Finished {
    /// Whether a failure of this attempt (failed, panicked, timed out) is retried: attempts
    /// remain. [`settle`] decides with it, and the attempt's log line's level follows it.
    pub(crate) fn retries_left(&self) -> bool {
        self.attempt < self.max_attempts
    }
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

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
impl Ack {
    /// The ack of `task`'s attempt, completed (the durable sources' tests).
    pub(crate) fn completed<T>(task: &crate::task::Task<T>) -> Ack {
        Ack {
            id: task.id,
            attempt: task.attempt,
            disposition: Disposition::Completed,
        }
    }
}

/// The final state of a task, as a submitter that tracks it observes it.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
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
/// | `Backpressured(b)` | – | `Snooze { after: b.duration() }` (same attempt number again) |
/// | `Failed`, `Panicked`, `TimedOut` | yes | `Retry { after: backoff.delay(attempt) }` |
/// | `Failed`, `Panicked`, `TimedOut` | no | `Dead` (final) |
pub(crate) fn settle(finished: &Finished, retry_backoff: &Backoff) -> Disposition {
    match &finished.outcome {
        Outcome::Completed => Disposition::Completed,
        Outcome::Cancelled => Disposition::Cancelled,
        Outcome::Interrupted => Disposition::Release,
        Outcome::Aborted(reason) => Disposition::Dead {
            error: format!("aborted: {reason}"),
        },
        Outcome::Snoozed(after) => Disposition::Snooze { after: *after },
        Outcome::Backpressured(b) => Disposition::Snooze {
            after: b.duration(),
        },
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
    if finished.retries_left() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskId;
    use std::time::Duration;

    fn fin(attempt: u32, max: u32, outcome: Outcome) -> Finished {
        Finished {
            id: TaskId(1),
            attempt,
            max_attempts: max,
            outcome,
            elapsed: Duration::ZERO,
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
}
