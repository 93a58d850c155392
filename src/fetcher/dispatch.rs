//! Dispatch: the Fetcher spends its credits and hands tasks to the executors, and keeps each
//! executor's dispatch-ahead queue at its adaptive target (from the deltas in `Ready`). It also
//! takes queued tasks back from the executors' queues (work stealing, see `executor.rs`): from
//! a stalled executor, and for a credit that has no buffered task to go with.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::{Fetcher, Phase};
use crate::metrics::Count;
use crate::protocol::{Execute, ExecutorDelta, Ready};
use crate::source::Source;
use crate::stats::Counters;
use crate::task::Task;

/// An executor that holds tasks and has not reported for this long is *stalled*: a handler may
/// block its thread, or it runs only long tasks. It is sent nothing more ahead; a credit goes
/// to it (with a task, or for its own queue) only when no other executor can take one; and
/// while another executor can, the tasks queued there are taken back (its queue is a queue
/// shared with the Fetcher under a lock no handler ever holds, [`LocalQueue`](crate::protocol::LocalQueue): the blocked
/// executor need not answer, and each task leaves the queue once, taken by the executor or by
/// the Fetcher, so none runs twice) and dispatched to the others. A blocked thread keeps only
/// what it runs, and the credits already on their way to it (they come back unused once it
/// answers, if the tasks they were for were taken back).
pub(crate) const STALL_AFTER: Duration = Duration::from_millis(100);

/// How long an executor's queue should keep its slots busy without a refill, at least (up to
/// `dispatch_ahead`): a refill needs the System thread, which on a machine whose cores the
/// executors' threads keep busy waits for one (a time slice of the kernel's scheduler, a few
/// milliseconds at most). Priority inversion stays bounded by this much work per executor.
pub(crate) const REFILL_HORIZON: Duration = Duration::from_millis(2);

/// The depth an executor's queue may always reach (up to `dispatch_ahead`); deeper only for
/// tasks so short that the queue holds at most [`REFILL_HORIZON`] of its slots' work.
pub(crate) const SHALLOW_AHEAD: usize = 64;

/// The deepest an executor's queue may be: `ahead` (`dispatch_ahead`), and beyond
/// [`SHALLOW_AHEAD`] no more than `horizon`, what its slots finish in [`REFILL_HORIZON`].
pub(crate) fn ahead_ceiling(ahead: usize, horizon: usize) -> usize {
    ahead.min(horizon.max(SHALLOW_AHEAD)).max(1)
}

/// The tasks `slots` slots finish in [`REFILL_HORIZON`] when `finished` attempts took `busy` in
/// all (saturating: tasks that take no measurable time cover any depth).
pub(crate) fn cover(slots: usize, finished: u32, busy: Duration) -> usize {
    let per_task = busy.as_nanos() / u128::from(finished.max(1));
    let tasks = (slots as u128).saturating_mul(REFILL_HORIZON.as_nanos()) / per_task.max(1);
    usize::try_from(tasks).unwrap_or(usize::MAX)
}

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    /// Whether executor `i` holds tasks and has not reported for [`STALL_AFTER`].
    pub(super) fn stalled(&self, i: usize, now: Instant) -> bool {
        // An instant comparison, not a duration: this runs for every executor on every credit.
        self.assigned[i] > 0 && self.stalls_at[i].is_some_and(|at| now >= at)
    }

    /// Executor `i` reported (or, idle, was given a task) at `now`: it stalls only if it stays
    /// quiet for [`STALL_AFTER`] from here.
    pub(super) fn heard(&mut self, i: usize, now: Instant) {
        self.stalls_at[i] = now.checked_add(STALL_AFTER);
    }

    /// Tasks queued at executor `i` that no credit covers yet.
    pub(super) fn uncovered(&self, i: usize) -> usize {
        self.queued[i].saturating_sub(self.covered[i])
    }

    /// The executor with the fewest tasks running or about to (a credit on its way), among
    /// those `eligible` says.
    pub(super) fn least_running(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.executors.len())
            .filter(|&i| !self.dead[i] && eligible(i))
            .min_by_key(|&i| self.assigned[i] - self.uncovered(i).min(self.assigned[i]))
    }

    /// Takes up to `max` tasks out of executor `i`'s queue, oldest first, and out of its books:
    /// they no longer count as queued or assigned there, nor for their key (they count again
    /// when dispatched). The queue's lock is held only for the take, never by a handler: a blocked
    /// executor need not answer, and a task the executor
    /// takes at the same moment is not taken here.
    pub(super) fn steal_from(&mut self, i: usize, max: usize) -> Vec<Task<T>> {
        let stolen = self.queues[i].take_up_to(max);
        if !stolen.is_empty() {
            self.assigned[i] = self.assigned[i].saturating_sub(stolen.len());
            self.queued[i] = self.queued[i].saturating_sub(stolen.len());
            for task in &stolen {
                self.pace_returned(task);
            }
        }
        stolen
    }

    /// Puts tasks taken back from an executor at the buffer's front, in their order (they were
    /// fetched before anything still buffered).
    pub(super) fn unsteal(&mut self, tasks: Vec<Task<T>>) {
        for task in tasks.into_iter().rev() {
            self.buffer.push_front(task);
        }
    }

    /// While some executor can run tasks, takes back every task queued at a
    /// [stalled](STALL_AFTER) one, into the buffer.
    fn reclaim_stalled(&mut self, now: Instant) {
        let e = self.executors.len();
        if !(0..e).any(|i| !self.dead[i] && !self.stalled(i, now)) {
            return;
        }
        for i in 0..e {
            if self.dead[i] || !self.stalled(i, now) || self.queues[i].is_empty() {
                continue;
            }
            let stolen = self.steal_from(i, usize::MAX);
            if !stolen.is_empty() {
                Counters::add(&self.counters.stolen, stolen.len() as u64);
                self.counters
                    .metrics
                    .count(Count::Stolen, stolen.len() as u64);
                tracing::debug!(
                    executor = i,
                    tasks = stolen.len(),
                    "executor stalled; its queued tasks are taken back"
                );
                self.unsteal(stolen);
            }
        }
    }

    /// A credit for executor `i` found no buffered task: takes one queued at another executor
    /// that no credit covers (a stalled one first, then the longest queue), so it runs at `i`
    /// rather than wait there. `None` if no other executor has one.
    fn steal_for(&mut self, i: usize, now: Instant) -> Option<Task<T>> {
        let j = (0..self.executors.len())
            .filter(|&j| j != i && !self.dead[j] && self.uncovered(j) > 0)
            .max_by_key(|&j| (self.stalled(j, now), self.uncovered(j)))?;
        let stolen = self.steal_from(j, 1);
        if stolen.is_empty() {
            return None;
        }
        Counters::add(&self.counters.stolen, 1);
        self.counters.metrics.count(Count::Stolen, 1);
        self.unsteal(stolen);
        // Through the pace check like any buffered task (it may be another that starts).
        self.take_startable(now)
    }

    /// Arms a timer for the moment an executor that holds queued tasks would be stalled, while
    /// credits wait at the Fetcher with nothing to run: those tasks are then taken back for
    /// them (a credit already on its way to a thread that blocked stays there until it answers).
    pub(super) fn arm_stall_check(&mut self, now: Instant, ctx: &mut Context<Self>) {
        if self.stall_check.is_some() || self.credits == 0 || self.executors.len() < 2 {
            return;
        }
        let due = (0..self.executors.len())
            .filter(|&i| !self.dead[i] && !self.stalled(i, now) && !self.queues[i].is_empty())
            .filter_map(|i| self.stalls_at[i])
            .min();
        if let Some(due) = due {
            let delay = due.saturating_duration_since(now);
            self.stall_check = Some(ctx.run_later(delay, |act, ctx| {
                act.stall_check = None;
                act.pump(ctx);
            }));
        }
    }

    /// Spends credits and hands tasks to the executors, one `Execute` per executor:
    ///
    /// 0. first, tasks queued at a [stalled](STALL_AFTER) executor are taken back into the
    ///    buffer while another executor can run them;
    /// 1. each credit to the executor running the fewest tasks (so CPU-bound work spreads over
    ///    every thread) among those not stalled (any, if all are), with one of
    ///    the tasks already queued there, else a buffered task; with the buffer empty, with a
    ///    task taken from another executor's queue that no credit covers (so no task waits
    ///    behind a long one, or a blocked thread, while a slot is free elsewhere); failing
    ///    that (the task is still on its way there), to that executor for its own queue;
    /// 2. then, with no credit left, buffered tasks ahead into the executors' queues, up to
    ///    each one's `ahead_target`, shortest queue first, so an executor refills a slot the
    ///    moment a task ends.
    ///
    /// `now` is the caller's one clock reading for its whole handler: the stall checks compare
    /// against it.
    pub(super) fn dispatch(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        let e = self.executors.len();
        if e > 1 && self.queued.iter().any(|&q| q > 0) {
            self.reclaim_stalled(now);
        }
        let ahead = if self.pace.allows_ahead() {
            self.ahead
        } else {
            0
        };
        if self.credits == 0 && (ahead == 0 || self.buffer.is_empty()) {
            return;
        }
        // Per executor: tasks pushed into its queue, credits sent (a vector kept between calls).
        let mut batches = std::mem::take(&mut self.batches);
        batches.clear();
        batches.resize(e, (0, 0));
        while self.credits > 0 {
            // A stalled executor only if every one is (a slot must not idle for it).
            let Some(mut i) = self
                .least_running(|j| !self.stalled(j, now))
                .or_else(|| self.least_running(|_| true))
            else {
                break;
            };
            if self.uncovered(i) == 0 || self.stalled(i, now) {
                let task = self.take_startable(now).or_else(|| {
                    if self.stalled(i, now) {
                        None
                    } else {
                        self.steal_for(i, now)
                    }
                });
                if let Some(task) = task {
                    self.push_task(&mut batches, i, task, now);
                } else if let Some(j) = self
                    .least_running(|j| self.uncovered(j) > 0 && !self.stalled(j, now))
                    .or_else(|| self.least_running(|j| self.uncovered(j) > 0))
                {
                    // A stalled executor's queue only if no other has one: its queued tasks
                    // would otherwise wait for a credit that never comes (a long task is
                    // not a blocked thread; only the executor can tell them apart).
                    i = j;
                } else {
                    break;
                }
            }
            batches[i].1 += 1;
            self.covered[i] += 1;
            self.credits -= 1;
        }
        while ahead > 0 && !self.buffer.is_empty() {
            let eligible = |f: &Self, i: usize| {
                !f.dead[i] && f.uncovered(i) < f.ahead_target[i] && !f.stalled(i, now)
            };
            let Some(i) = (0..e)
                .filter(|&i| eligible(self, i))
                .min_by_key(|&i| self.uncovered(i))
            else {
                break;
            };
            // Shortest queue first, as one task at a time would go: `i` takes tasks until it is
            // as long as the next shortest (then the lower index wins a tie), in one block.
            let level = (0..e)
                .filter(|&j| j != i && eligible(self, j))
                .map(|j| self.uncovered(j))
                .min();
            let mut n = self.ahead_target[i] - self.uncovered(i);
            if let Some(level) = level {
                n = n.min(level.saturating_sub(self.uncovered(i)).max(1));
            }
            // Pushed under one lock of the executor's queue.
            let queue = Arc::clone(&self.queues[i]);
            let mut queued = queue.locked();
            for _ in 0..n.min(self.buffer.len()) {
                if let Some(task) = self.buffer.pop_front() {
                    queued.push_back(self.book_task(&mut batches, i, task, now));
                }
            }
        }
        for (i, (exec, &(tasks, credits))) in self.executors.iter().zip(&batches).enumerate() {
            if tasks > 0 || credits > 0 {
                exec.do_send(Execute::new(i, tasks, credits, &self.returns));
            }
        }
        self.batches = batches;
    }

    /// Queues `task` at executor `i` (its `Execute` tells it; a credit may go along).
    pub(super) fn push_task(
        &mut self,
        batches: &mut [(u32, u32)],
        i: usize,
        task: Task<T>,
        now: Instant,
    ) {
        let task = self.book_task(batches, i, task, now);
        self.queues[i].push(task);
    }

    /// Counts `task` as queued at executor `i` (its key, its progress channel, the books);
    /// the caller pushes it into that executor's queue.
    fn book_task(
        &mut self,
        batches: &mut [(u32, u32)],
        i: usize,
        mut task: Task<T>,
        now: Instant,
    ) -> Task<T> {
        self.note_key(&task);
        if !self.trackers.is_empty() {
            if let Some(t) = self.trackers.get(&task.id) {
                task.progress = Some(t.progress.clone());
            }
        }
        batches[i].0 += 1;
        if self.assigned[i] == 0 {
            // Idle until now: its silence so far says nothing.
            self.heard(i, now);
        }
        self.assigned[i] += 1;
        self.queued[i] += 1;
        task
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Ready> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, msg: Ready, ctx: &mut Self::Context) {
        self.credits = self.credits.saturating_add(msg.credits);
        let work_waits = !self.buffer.is_empty() || self.source.queued().map_or(true, |q| q > 0);
        // One clock reading for the whole handler: reports, pace, the stall checks of dispatch.
        let now = Instant::now();
        for (i, d) in msg.executors.iter().enumerate().take(self.assigned.len()) {
            if *d != ExecutorDelta::default() {
                self.heard(i, now);
            }
            self.assigned[i] = self.assigned[i].saturating_sub(d.finished as usize);
            self.queued[i] = self.queued[i].saturating_sub(d.dequeued as usize);
            self.covered[i] = self.covered[i].saturating_sub(d.credits_used as usize);
            if d.finished > 0 && self.ahead > 0 && !self.dead[i] {
                let t = self.ahead_target[i];
                let mut next = (2 * d.finished as usize).max(t - t / 8);
                // Slots went back while work waited: the queue ran dry before its refill came.
                if d.freed > 0 && work_waits {
                    next = next.max(t + d.freed as usize);
                }
                // Enough for its slots to run `REFILL_HORIZON` without a refill, at the mean
                // task duration it reported: short tasks on a thread that competes for a core
                // with the System thread do not wait for the System thread to get one.
                let slots = self.assigned[i] - self.uncovered(i).min(self.assigned[i]);
                let horizon = cover(slots.max(1), d.finished, d.busy);
                next = next.max(horizon);
                // Deeper than `SHALLOW_AHEAD` only while the queue still holds at most
                // `REFILL_HORIZON` of its slots' work: tiny tasks get a queue that covers many
                // round trips to the System thread (`noop`: each hop's wake-up is then paid
                // per several hundred tasks, not per 64), while tasks of measurable length keep
                // a shallow one (a queued task is committed to its executor: the work one
                // executor may hold when the other runs dry, and a later higher-priority task's
                // wait, stay within that horizon).
                self.ahead_target[i] = next.clamp(1, ahead_ceiling(self.ahead, horizon));
            }
        }
        if !msg.executors.is_empty() {
            let finished = msg.executors.iter().map(|d| u64::from(d.finished)).sum();
            let active = self.waiting.is_none() || self.assigned.iter().any(|&a| a > 0);
            self.tuning.finished(finished, now, active);
        }
        self.pace_ready(msg.pauses, &msg.acks, now);
        if !msg.acks.is_empty() {
            self.record_acks(msg.acks, ctx);
        }
        self.pump_at(now, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::{ahead_ceiling, cover, REFILL_HORIZON, SHALLOW_AHEAD};
    use crate::builder::DEFAULT_DISPATCH_AHEAD;

    /// Only tasks so short that the queue holds at most `REFILL_HORIZON` of work queue deeper
    /// than `SHALLOW_AHEAD`; an explicit `dispatch_ahead` below it is kept as it is.
    #[test]
    fn only_tiny_tasks_queue_deeper_than_the_shallow_depth() {
        let ahead = DEFAULT_DISPATCH_AHEAD;
        // No-op tasks (≈ 100 ns): the whole default depth.
        let tiny = cover(8, 1_000, Duration::from_micros(100));
        assert_eq!(ahead_ceiling(ahead, tiny), ahead);
        // 50 µs CPU-bound tasks on two slots: 2 ms of work is 80 tasks.
        let cpu = cover(2, 100, Duration::from_micros(5_000));
        assert_eq!((cpu, ahead_ceiling(ahead, cpu)), (80, 80));
        // 2 ms tasks on 50 slots: 50 tasks of work, the shallow depth still applies.
        let sleep = cover(50, 10, Duration::from_millis(20));
        assert_eq!(ahead_ceiling(ahead, sleep), SHALLOW_AHEAD);
        // Long tasks, or an explicit smaller bound: that bound; 0 never yields a zero ceiling.
        assert_eq!(ahead_ceiling(8, tiny), 8);
        assert_eq!(ahead_ceiling(0, tiny), 1);
    }
    use std::time::Duration;

    #[test]
    fn a_queue_covers_the_refill_horizon_at_the_measured_task_duration() {
        let us = Duration::from_micros;
        // Two slots of 50 µs tasks: 2 × 2 ms / 50 µs.
        assert_eq!(cover(2, 10, us(500)), 80);
        // One slot of tasks as long as the horizon: one task.
        assert_eq!(cover(1, 4, REFILL_HORIZON * 4), 1);
        // Tasks longer than the horizon need nothing queued for it.
        assert_eq!(cover(3, 1, Duration::from_millis(100)), 0);
        // Tasks that took no measurable time: any depth (the caller caps it).
        assert_eq!(cover(1, 5, Duration::ZERO), 2_000_000);
        assert!(cover(usize::MAX, 1, Duration::from_nanos(1)) >= usize::MAX / 2);
        // No attempt reported: judged as one.
        assert_eq!(cover(1, 0, us(1_000)), 2);
    }
}
