//! Trackers: submitters waiting for a task's final state, each bounded.
//!
//! * `trackers` (in the Fetcher): one entry per tracked task not yet final. A task's final
//!   state reaches it from this poller's own acks (once the source recorded them) or, for a
//!   source shared by several pollers ([`Source::final_states_interval`]), from the store:
//!   the Fetcher asks about [`RESOLVE_BATCH`] tracked ids at a time, round robin, one call at
//!   a time, backing off on errors. There a tracker older than [`TRACKING_LIMIT`] resolves with
//!   [`OutcomeError::TrackingExpired`] (the task may still run; the store has its fate). With a
//!   source that does not share its state (the in-memory one) every tracked task is queued,
//!   buffered or running here, so its tracker is bounded by the queue's capacity plus the
//!   workers, and resolves from this poller's acks.
//! * [`Early`]: final states seen while a tracked enqueue was in flight (a task can finish
//!   before its enqueue's reply is handled). An entry lives only until every tracked enqueue
//!   in flight when it was recorded has landed: bounded by the acks of one enqueue's flight.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::Fetcher;
use crate::error::OutcomeError;
use crate::source::Source;
use crate::task::{FinalState, Progress, TaskId};

/// How many tracked ids one [`Source::final_states`] call asks about.
pub(crate) const RESOLVE_BATCH: usize = 256;

/// How long a receipt of a task in a shared store is tracked before it resolves with
/// [`OutcomeError::TrackingExpired`]: 24 hours.
pub const TRACKING_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// A submitter waiting for a task's final state, and the channel its progress goes to.
pub(super) struct Tracker {
    pub(super) done: oneshot::Sender<Result<FinalState, OutcomeError>>,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) since: Instant,
}

/// Final states that may belong to tracked enqueues still in flight (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Early {
    /// Tracked enqueues in flight, by sequence number.
    in_flight: BTreeSet<u64>,
    next_seq: u64,
    /// Each final state with the newest tracked enqueue in flight when it was seen.
    states: HashMap<TaskId, (FinalState, u64)>,
    /// The same entries in the order they were recorded (so by that sequence number).
    order: VecDeque<(u64, TaskId)>,
}

impl Early {
    /// A tracked enqueue starts; returns its sequence number.
    pub(super) fn begin(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq);
        seq
    }

    /// A tracked enqueue landed: forget what only enqueues that all landed could want.
    pub(super) fn end(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
        let oldest = self.in_flight.first().copied().unwrap_or(u64::MAX);
        while let Some(&(stamp, id)) = self.order.front() {
            if stamp >= oldest {
                break;
            }
            self.order.pop_front();
            if self.states.get(&id).is_some_and(|(_, s)| *s == stamp) {
                self.states.remove(&id);
            }
        }
    }

    /// Keeps `state` for a tracked enqueue in flight, if any may want it.
    pub(super) fn record(&mut self, id: TaskId, state: FinalState) {
        if let Some(&newest) = self.in_flight.last() {
            self.states.insert(id, (state, newest));
            self.order.push_back((newest, id));
        }
    }

    /// Whether a final state could belong to a tracked enqueue in flight.
    pub(super) fn wanted(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The final state `id` reached before its enqueue's reply was handled, if it did.
    pub(super) fn take(&mut self, id: TaskId) -> Option<FinalState> {
        self.states.remove(&id).map(|(state, _)| state)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.states.len().max(self.order.len())
    }
}

/// The store-side resolution of trackers (sources shared by several pollers).
#[derive(Debug, Default)]
pub(super) struct Resolver {
    /// Every tracked id, round robin (ids already resolved are dropped when met).
    order: VecDeque<TaskId>,
    /// How often to ask; `None`: the source does not share its state.
    every: Option<Duration>,
    failures: u32,
}

impl Resolver {
    pub(super) fn new(every: Option<Duration>) -> Self {
        Resolver {
            every,
            ..Resolver::default()
        }
    }

    /// A tracker was registered.
    pub(super) fn track(&mut self, id: TaskId) {
        if self.every.is_some() {
            self.order.push_back(id);
        }
    }
}

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    /// Registers a tracker for `id`, or resolves it at once if its final state came early.
    pub(super) fn track(
        &mut self,
        id: TaskId,
        done: oneshot::Sender<Result<FinalState, OutcomeError>>,
        progress: watch::Sender<Progress>,
    ) {
        if let Some(state) = self.early.take(id) {
            let _ = done.send(Ok(state));
            return;
        }
        self.trackers.insert(
            id,
            Tracker {
                done,
                progress,
                since: Instant::now(),
            },
        );
        self.resolver.track(id);
    }

    /// Tells a tracked task's submitter its final state.
    pub(super) fn resolve(&mut self, id: TaskId, state: FinalState) {
        if let Some(t) = self.trackers.remove(&id) {
            let _ = t.done.send(Ok(state));
        } else if self.early.wanted() {
            self.early.record(id, state);
        }
    }

    /// Starts asking the source about tracked tasks, if it shares its state with other pollers.
    pub(super) fn start_resolving(&mut self, ctx: &mut Context<Self>) {
        if let Some(every) = self.resolver.every {
            ctx.run_later(every, |act, ctx| act.resolve_from_store(ctx));
        }
    }

    /// One round: expire trackers past [`TRACKING_LIMIT`], ask the source about the next
    /// [`RESOLVE_BATCH`] tracked ids, resolve what is final, and schedule the next round.
    fn resolve_from_store(&mut self, ctx: &mut Context<Self>) {
        let Some(every) = self.resolver.every else {
            return;
        };
        if self.closing {
            return;
        }
        let now = Instant::now();
        let mut ids = Vec::new();
        let mut kept = Vec::new();
        while ids.len() < RESOLVE_BATCH {
            let Some(id) = self.resolver.order.pop_front() else {
                break;
            };
            let Some(t) = self.trackers.get(&id) else {
                continue; // resolved meanwhile
            };
            if now.saturating_duration_since(t.since) >= TRACKING_LIMIT {
                if let Some(t) = self.trackers.remove(&id) {
                    tracing::warn!(task = %id, limit = ?TRACKING_LIMIT, "tracking expired");
                    let _ = t
                        .done
                        .send(Err(OutcomeError::TrackingExpired(TRACKING_LIMIT)));
                }
                continue;
            }
            ids.push(id);
            kept.push(id);
        }
        self.resolver.order.extend(kept);
        if ids.is_empty() {
            ctx.run_later(every, |act, ctx| act.resolve_from_store(ctx));
            return;
        }
        let full = ids.len() == RESOLVE_BATCH;
        ctx.spawn(
            self.source
                .final_states(ids)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let next = match res {
                        Ok(states) => {
                            act.resolver.failures = 0;
                            for (id, state) in states {
                                act.resolve(id, state);
                            }
                            // More tracked than one batch: the next round comes sooner.
                            if full {
                                every / 4
                            } else {
                                every
                            }
                        }
                        Err(error) => {
                            act.resolver.failures = act.resolver.failures.saturating_add(1);
                            let delay = act.fetch_backoff.delay(act.resolver.failures).max(every);
                            tracing::warn!(%error, ?delay, "could not read final states; retrying");
                            delay
                        }
                    };
                    ctx.run_later(next, |act, ctx| act.resolve_from_store(ctx));
                }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_states_live_only_while_their_enqueues_are_in_flight() {
        let mut early = Early::default();
        assert!(!early.wanted());
        let a = early.begin();
        // Steady tracked submits: a new enqueue always starts before the last one lands.
        for i in 0..10_000u64 {
            early.record(TaskId(i), FinalState::Completed);
            let b = early.begin();
            early.end(a.max(b.saturating_sub(1)));
            assert!(early.len() <= 2, "grew to {}", early.len());
        }
        let mut early = Early::default();
        let a = early.begin();
        early.record(TaskId(7), FinalState::Completed);
        let b = early.begin();
        early.record(TaskId(8), FinalState::Cancelled);
        early.end(b);
        // 7 and 8 may still belong to `a`, in flight when they were seen.
        assert_eq!(early.take(TaskId(7)), Some(FinalState::Completed));
        early.end(a);
        assert_eq!(early.take(TaskId(8)), None);
        assert_eq!(early.len(), 0);
    }
}
