//! Counters. The actors own the state; these atomics only *mirror* it for cheap reads, and no
//! decision is ever taken on them.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Mutex, PoisonError};

use crate::metrics::{Count, Metrics};
use crate::task::TaskId;

/// At most this many lost task ids are kept for the shutdown report; beyond it only
/// [`Stats::lost`] counts.
pub(crate) const MAX_LOST_IDS: usize = 100_000;

/// A snapshot of a poller's counters.
///
/// Read with [`Poller::stats`](crate::Poller::stats) or by sending
/// [`GetStats`](crate::messages::GetStats) to the Scheduler. Each counter is exact; a snapshot
/// is not taken atomically across counters, so two counters may be a few tasks apart while
/// tasks move.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The concurrency limit: `workers`, or the adaptive limiter's current limit
    /// ([`PollerBuilder::adaptive`](crate::PollerBuilder::adaptive)).
    pub limit: u64,
    /// Tasks running, as the executors last reported (started − finished): never above
    /// `limit` (an adaptive limit that just went down: until the running tasks above it end); it may trail the truth by the reports in flight (a task counts once its
    /// executor's report reached the Scheduler).
    pub busy: u64,
    /// Tasks fetched and not started: in the Fetcher's buffer (at most the credits plus the
    /// prefetch) or queued ahead at an executor with no credit yet (at most
    /// `dispatch_ahead` per executor). 0 once the poller has shut down (they were handed back
    /// or released).
    pub buffered: u64,
    /// Tasks waiting in the source (queued, scheduled and retrying). The in-memory source
    /// knows at once; a durable source is counted by the Fetcher every few seconds, the first
    /// time 5 s after it starts (its whole table, every process's tasks), so it may trail by
    /// that much ([`Poller::counts`](crate::Poller::counts) counts now). A count is linear in
    /// the tasks it counts: one that took `d` waits `19 × d` before the next (counting takes
    /// at most 5 % of the time; a million queued rows on PostgreSQL: a count every 5 to 10 s).
    /// `None` until a first count, or for a custom source that cannot count.
    pub queued: Option<u64>,
    /// Tasks accepted by [`Submit`](crate::Submit) / [`Poller::submit`](crate::Poller::submit).
    pub submitted: u64,
    /// Tasks started.
    pub started: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed (the handler returned an error or panicked).
    pub failed: u64,
    /// Of `failed`, the attempts that panicked.
    pub panicked: u64,
    /// Tasks cancelled: attempts cancelled while running, and waiting tasks cancelled.
    pub cancelled: u64,
    /// Tasks that went dead (out of attempts, or aborted).
    pub dead: u64,
    /// Of `failed`, the attempts that ran past their timeout.
    pub timed_out: u64,
    /// Attempts that snoozed (asked to run again later; not failures).
    pub snoozed: u64,
    /// Failed attempts scheduled to run again.
    pub retried: u64,
    /// Calls to the source's `fetch`.
    pub fetch_calls: u64,
    /// Fetch calls that failed.
    pub fetch_errors: u64,
    /// Ack batches the source failed to record.
    pub ack_errors: u64,
    /// Heartbeats (lease extensions) that failed.
    pub heartbeat_errors: u64,
    /// Submits refused (queue full, shut down, …) whose sender did not wait for the answer
    /// (`do_send`, `try_send`, or a request dropped before its answer came): their tasks are
    /// lost, each logged at error level. Send with `send` (or use the handle) to get a refused
    /// task back.
    pub dropped_submits: u64,
    /// Executors that stopped without being drained by a shutdown: their arbiter was stopped
    /// (for instance the actix `System` stopped under the poller) or their actor panicked
    /// outside a task. The Fetcher stops sending to them and takes back the tasks they had not
    /// started; what they were running is interrupted (see [`lost`](Self::lost)).
    pub executors_lost: u64,
    /// Tasks lost with an actor that died: running on a dead executor when the source keeps no
    /// copy to run again (the in-memory source without retries), or held when no actor was
    /// left to take them back. Zero means nothing was lost. Their ids are listed in
    /// [`ShutdownReport::lost`](crate::ShutdownReport::lost).
    pub lost: u64,
    /// Tasks dispatched ahead into an executor's queue and taken back before it started them,
    /// to start at another executor: the executor had stopped reporting (a handler blocked its
    /// thread, or it ran only long tasks), or a free slot elsewhere had nothing else to run.
    /// Each runs once, wherever it was taken.
    pub stolen: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) limit: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) queued_known: AtomicU64,
    pub(crate) buffered: AtomicU64,
    pub(crate) submitted: AtomicU64,
    pub(crate) started: AtomicU64,
    pub(crate) finished: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) snoozed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) fetch_calls: AtomicU64,
    pub(crate) fetch_errors: AtomicU64,
    pub(crate) ack_errors: AtomicU64,
    pub(crate) heartbeat_errors: AtomicU64,
    pub(crate) dropped_submits: AtomicU64,
    pub(crate) executors_lost: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) stolen: AtomicU64,
    /// The ids of lost tasks not yet reported by a shutdown (at most [`MAX_LOST_IDS`]).
    pub(crate) lost_ids: Mutex<Vec<TaskId>>,
    /// Per executor: attempts it started and finished, both written by the Scheduler from the
    /// executor's reports (see [`Counters::record_flow`]). Running on executor `i` = started −
    /// finished.
    pub(crate) per_executor: Vec<ExecutorCounters>,
    /// The `metrics` feature's handles (nothing without it): the actors record there where
    /// they update these counters.
    pub(crate) metrics: Metrics,
}

#[derive(Debug, Default)]
pub(crate) struct ExecutorCounters {
    pub(crate) started: AtomicU64,
    pub(crate) finished: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// A snapshot of one executor's counters.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutorStats {
    /// Attempts started on this executor (as it last reported).
    pub started: u64,
    /// Attempts this executor finished (in any outcome).
    pub finished: u64,
    /// Of `finished`, the attempts that completed.
    pub completed: u64,
    /// Of `finished`, the attempts that failed (error, panic, timeout, abort).
    pub failed: u64,
    /// Tasks running on it now.
    pub busy: u64,
}

impl Counters {
    /// The counters of the poller called `name` (the `metrics` feature's label).
    pub(crate) fn new(limit: usize, executors: usize, name: &str) -> Self {
        let c = Counters {
            per_executor: (0..executors)
                .map(|_| ExecutorCounters::default())
                .collect(),
            metrics: Metrics::new(name, limit),
            ..Counters::default()
        };
        c.limit.store(limit as u64, Relaxed);
        c
    }

    pub(crate) fn executor_snapshot(&self) -> Vec<ExecutorStats> {
        self.per_executor
            .iter()
            .map(|e| {
                let started = e.started.load(Acquire);
                let finished = e.finished.load(Relaxed);
                ExecutorStats {
                    started,
                    finished,
                    completed: e.completed.load(Relaxed),
                    failed: e.failed.load(Relaxed),
                    busy: started.saturating_sub(finished),
                }
            })
            .collect()
    }

    /// Mirrors one executor report: `finished` ends, then `started` starts. Only the Scheduler
    /// writes these, ends first and starts with `Release`, and a snapshot reads starts first
    /// (`Acquire`), then ends: so it sees at least the ends written before the starts it sees,
    /// and `busy` = started − finished never exceeds what the Scheduler's view allows (at most
    /// the limit, by credit conservation).
    pub(crate) fn record_flow(&self, executor: usize, started: u64, finished: u64) {
        if let Some(e) = self.per_executor.get(executor) {
            e.finished.fetch_add(finished, Relaxed);
            e.started.fetch_add(started, Release);
        }
        self.finished.fetch_add(finished, Relaxed);
        self.started.fetch_add(started, Release);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Relaxed);
        }
    }

    /// Records tasks lost with an actor that died.
    pub(crate) fn record_lost(&self, ids: &[TaskId]) {
        if ids.is_empty() {
            return;
        }
        Counters::add(&self.lost, ids.len() as u64);
        self.metrics.count(Count::Lost, ids.len() as u64);
        let mut kept = self.lost_ids.lock().unwrap_or_else(PoisonError::into_inner);
        let room = MAX_LOST_IDS.saturating_sub(kept.len());
        kept.extend(ids.iter().take(room).copied());
    }

    /// The lost ids recorded so far, taken.
    pub(crate) fn take_lost(&self) -> Vec<TaskId> {
        std::mem::take(&mut *self.lost_ids.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Mirrors `Stats::queued`. `None` (a source that cannot say without asking its store)
    /// keeps the last count the Fetcher's periodic sample got from `Source::counts`.
    pub(crate) fn set_queued(&self, queued: Option<u64>) {
        if let Some(q) = queued {
            self.queued.store(q, Relaxed);
            self.queued_known.store(1, Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        // Starts first (see `record_flow`): `busy` may then read low while a report lands,
        // never above the limit.
        let started = self.started.load(Acquire);
        let finished = self.finished.load(Relaxed);
        Stats {
            limit: self.limit.load(Relaxed),
            busy: started.saturating_sub(finished),
            buffered: self.buffered.load(Relaxed),
            queued: (self.queued_known.load(Relaxed) == 1).then(|| self.queued.load(Relaxed)),
            submitted: self.submitted.load(Relaxed),
            started,
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            dead: self.dead.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            snoozed: self.snoozed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            fetch_calls: self.fetch_calls.load(Relaxed),
            fetch_errors: self.fetch_errors.load(Relaxed),
            ack_errors: self.ack_errors.load(Relaxed),
            heartbeat_errors: self.heartbeat_errors.load(Relaxed),
            dropped_submits: self.dropped_submits.load(Relaxed),
            executors_lost: self.executors_lost.load(Relaxed),
            lost: self.lost.load(Relaxed),
            stolen: self.stolen.load(Relaxed),
        }
    }
}
