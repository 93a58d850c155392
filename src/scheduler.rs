//! The Scheduler: the only owner of the concurrency state.
//!
//! It holds the credits no one else holds. Invariant (credit conservation):
//!
//! ```text
//! limit = free (here) + credits held by the Fetcher + credits in `Execute`s in flight
//!       + running tasks + credits in `Done`s in flight (`freed`)
//! ```
//!
//! so at no instant can more than `limit` tasks run. A credit leaves here only in a `Ready`, and
//! comes back only in a `Done` (an executor whose task ended hands its slot to a task from its
//! own queue without returning the credit); the handler that receives a `Done` grants again before it returns,
//! so no wake-up can be lost between "a slot freed" and "the Fetcher heard of it".

use std::sync::Arc;

use actix::prelude::*;

use crate::messages::GetStats;
use crate::metrics::{Count, Tally};
use crate::pace::{Limiter, Sample};
use crate::protocol::{BeginShutdown, Done, ExecutorDelta, Flush, Ready};
use crate::retry::Backoff;
use crate::shutdown::{DropGuard, ShutdownPlan};
use crate::stats::Counters;
use crate::task::{settle, Ack, Disposition, Outcome};

pub(crate) struct Scheduler {
    /// Credits not granted to the Fetcher.
    free: usize,
    fetcher: Recipient<Ready>,
    /// Per-executor reports and acks not yet sent to the Fetcher.
    deltas: Vec<ExecutorDelta>,
    changed: bool,
    acks: Vec<Ack>,
    /// The concurrency limit now: `workers`, or what the adaptive limiter says (at most
    /// `workers`).
    limit: usize,
    ceiling: usize,
    /// Credits to retire as slots come back, after the limit went down while they were out.
    debt: usize,
    limiter: Option<Box<dyn Limiter>>,
    /// Backpressure answers not yet sent to the Fetcher.
    pauses: Vec<(crate::task::TaskId, crate::pace::Backpressure)>,
    retry_backoff: Backoff,
    /// Set by `BeginShutdown`: from then on credits stay here; acks still flow.
    closing: bool,
    plan: Option<ShutdownPlan>,
    counters: Arc<Counters>,
    _guard: DropGuard,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("free", &self.free)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub(crate) fn new(
        workers: usize,
        executors: usize,
        fetcher: Recipient<Ready>,
        retry_backoff: Backoff,
        plan: ShutdownPlan,
        counters: Arc<Counters>,
        guard: DropGuard,
    ) -> Self {
        Scheduler {
            free: workers,
            limit: workers,
            ceiling: workers.max(1),
            debt: 0,
            limiter: None,
            fetcher,
            deltas: vec![ExecutorDelta::default(); executors],
            changed: false,
            acks: Vec::new(),
            pauses: Vec::new(),
            retry_backoff,
            closing: false,
            plan: Some(plan),
            counters,
            _guard: guard,
        }
    }

    /// Moves the limit with `limiter` (`PollerBuilder::adaptive`), starting at its first limit
    /// (at most `workers`). Before the actor starts: no credit is out yet.
    pub(crate) fn with_limiter(mut self, limiter: Option<Box<dyn Limiter>>) -> Self {
        if let Some(l) = &limiter {
            let first = l.limit().clamp(1, self.ceiling);
            self.set_limit(first);
        }
        self.limiter = limiter;
        self
    }

    /// Feeds one attempt's end to the adaptive limiter, if any, and moves the limit.
    fn observe(&mut self, fin: &crate::task::Finished) {
        let Some(limiter) = self.limiter.as_mut() else {
            return;
        };
        let overloaded = match &fin.outcome {
            Outcome::Backpressured(_) | Outcome::TimedOut(_) => true,
            // Not the downstream's answer: nothing to learn.
            Outcome::Cancelled | Outcome::Interrupted => return,
            _ => false,
        };
        let in_flight = self.limit.saturating_sub(self.free).max(1);
        let next = limiter
            .observe(Sample {
                latency: fin.elapsed,
                overloaded,
                in_flight,
            })
            .clamp(1, self.ceiling);
        self.set_limit(next);
    }

    /// Moves the limit to `next`: more free credits at once; fewer by retiring free credits,
    /// then credits as their slots come back (tasks already running finish).
    fn set_limit(&mut self, next: usize) {
        if next > self.limit {
            let up = next - self.limit;
            let paid = up.min(self.debt);
            self.debt -= paid;
            self.free += up - paid;
        } else {
            let down = self.limit - next;
            let taken = down.min(self.free);
            self.free -= taken;
            self.debt += down - taken;
        }
        self.limit = next;
        self.counters
            .limit
            .store(next as u64, std::sync::atomic::Ordering::Relaxed);
        self.counters.metrics.limit(next);
    }

    /// Sends what is owed to the Fetcher: free credits (unless closing) and pending acks.
    fn grant(&mut self) {
        let credits = if self.closing {
            0
        } else {
            std::mem::take(&mut self.free)
        };
        if credits == 0 && self.acks.is_empty() && self.pauses.is_empty() && !self.changed {
            return;
        }
        let executors = if std::mem::take(&mut self.changed) {
            let zeros = vec![ExecutorDelta::default(); self.deltas.len()];
            std::mem::replace(&mut self.deltas, zeros)
        } else {
            Vec::new()
        };
        let acks = std::mem::take(&mut self.acks);
        tracing::trace!(credits, acks = acks.len(), "ready");
        self.fetcher.do_send(Ready {
            credits,
            executors,
            acks,
            pauses: std::mem::take(&mut self.pauses),
        });
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        // The first grant: every credit.
        self.grant();
    }
}

impl Handler<Done> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Done, _ctx: &mut Self::Context) {
        let n = msg.finished.len();
        let counters = Arc::clone(&self.counters);
        let c = &counters;
        let (mut completed, mut failed, mut panicked, mut cancelled, mut dead) = (0, 0, 0, 0, 0);
        let (mut timed_out, mut snoozed, mut retried) = (0, 0, 0);
        let mut tally = Tally::default();
        let mut busy = std::time::Duration::ZERO;
        self.acks.reserve(n);
        for fin in msg.finished {
            busy = busy.saturating_add(fin.elapsed);
            if fin.outcome == Outcome::Completed && self.limiter.is_none() {
                // The common case, settled here without the general state machine: the same
                // disposition `settle` gives a completed attempt.
                completed += 1;
                tally.add(&c.metrics, &fin);
                self.acks.push(Ack {
                    id: fin.id,
                    attempt: fin.attempt,
                    disposition: Disposition::Completed,
                });
                continue;
            }
            // Logged by the executor, inside the attempt's span (`trace::attempt_ended`).
            match &fin.outcome {
                Outcome::Completed => completed += 1,
                Outcome::Failed(_) | Outcome::Aborted(_) => failed += 1,
                Outcome::Panicked(_) => {
                    failed += 1;
                    panicked += 1;
                }
                Outcome::Cancelled | Outcome::Interrupted => cancelled += 1,
                Outcome::TimedOut(_) => {
                    failed += 1;
                    timed_out += 1;
                }
                Outcome::Snoozed(_) => snoozed += 1,
                Outcome::Backpressured(b) => {
                    snoozed += 1;
                    tracing::info!(task = %fin.id, attempt = fin.attempt, %b, "downstream backpressure");
                    self.pauses.push((fin.id, *b));
                }
            }
            self.observe(&fin);
            let disposition = settle(&fin, &self.retry_backoff);
            tally.add(&c.metrics, &fin);
            match disposition {
                Disposition::Dead { .. } => dead += 1,
                Disposition::Retry { .. } => retried += 1,
                _ => {}
            }
            self.acks.push(Ack {
                id: fin.id,
                attempt: fin.attempt,
                disposition,
            });
        }
        Counters::add(&c.completed, completed);
        Counters::add(&c.failed, failed);
        Counters::add(&c.panicked, panicked);
        Counters::add(&c.cancelled, cancelled);
        Counters::add(&c.dead, dead);
        Counters::add(&c.timed_out, timed_out);
        Counters::add(&c.snoozed, snoozed);
        Counters::add(&c.retried, retried);
        c.metrics.settled(&tally, dead, retried, cancelled);
        c.metrics.count(Count::Started, msg.started as u64);
        if let Some(e) = c.per_executor.get(msg.executor) {
            Counters::add(&e.completed, completed);
            Counters::add(&e.failed, failed);
        }
        // Ends before starts: a reader never sees a start without the end that freed its slot.
        c.record_flow(msg.executor, msg.started as u64, n as u64);
        if c.metrics.enabled() {
            let started = c.started.load(std::sync::atomic::Ordering::Acquire);
            let finished = c.finished.load(std::sync::atomic::Ordering::Relaxed);
            c.metrics.busy(started.saturating_sub(finished));
        }
        if let Some(d) = self.deltas.get_mut(msg.executor) {
            d.finished += n as u32;
            d.dequeued += msg.dequeued;
            d.credits_used += msg.credits_used;
            d.freed += msg.freed;
            d.busy = d.busy.saturating_add(busy);
            self.changed |= n > 0 || msg.dequeued > 0 || msg.credits_used > 0 || msg.freed > 0;
        }
        let freed = msg.freed as usize;
        let retired = freed.min(self.debt);
        self.debt -= retired;
        self.free += freed - retired;
        // Grant in the same handler that freed the slots: no lost wake-up.
        self.grant();
    }
}

impl Handler<GetStats> for Scheduler {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.counters.snapshot())
    }
}

impl Handler<BeginShutdown> for Scheduler {
    type Result = MessageResult<BeginShutdown>;

    fn handle(&mut self, _msg: BeginShutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.closing = true;
        MessageResult(self.plan.take())
    }
}

impl Handler<Flush> for Scheduler {
    type Result = ();

    fn handle(&mut self, _msg: Flush, ctx: &mut Self::Context) {
        // Every executor has replied to its Drain, and each sent its last Done before replying,
        // so those Done were handled before this message: the acks below are the last ones.
        self.grant();
        ctx.stop();
    }
}
