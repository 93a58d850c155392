//! Dispatch: the Fetcher spends its credits and hands tasks to the executors, and keeps each
//! executor's dispatch-ahead queue at its adaptive target (from the deltas in `Ready`).

use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::{Fetcher, Phase};
use crate::protocol::{Execute, ExecutorDelta, Ready};
use crate::source::Source;
use crate::task::Task;

/// An executor that holds tasks and has not reported for this long is *stalled*: a handler may
/// block its thread, or it runs only long tasks. It is sent nothing more ahead; a credit goes
/// to it (with a task, or for its own queue) only when no other executor can take one;
/// so a blocked thread keeps at most what it held when it went quiet (its running tasks and
/// its queue, at most `dispatch_ahead`) while the others take the rest. Queued tasks are never
/// taken back: a blocked executor cannot answer, and no task may run twice.
pub(crate) const STALL_AFTER: Duration = Duration::from_millis(100);

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    /// Whether executor `i` holds tasks and has not reported for [`STALL_AFTER`].
    pub(super) fn stalled(&self, i: usize, now: Instant) -> bool {
        self.assigned[i] > 0 && now.saturating_duration_since(self.last_heard[i]) >= STALL_AFTER
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

    /// Spends credits and hands tasks to the executors, one `Execute` per executor:
    ///
    /// 1. each credit to the executor running the fewest tasks (so CPU-bound work spreads over
    ///    every thread) among those not [stalled](STALL_AFTER) (any, if all are), with one of
    ///    the tasks already queued there, else a buffered task; with
    ///    the buffer empty, to an executor that has queued tasks no credit covers (so no task
    ///    waits behind a long one while a slot is free elsewhere);
    /// 2. then, with no credit left, buffered tasks ahead into the executors' queues, up to
    ///    each one's `ahead_target`, shortest queue first, so an executor refills a slot the
    ///    moment a task ends.
    pub(super) fn dispatch(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        let e = self.executors.len();
        let mut batches: Vec<(Vec<Task<T>>, u32)> = Vec::new();
        let ahead = if self.pace.allows_ahead() {
            self.ahead
        } else {
            0
        };
        if self.credits > 0 || (ahead > 0 && !self.buffer.is_empty()) {
            batches.resize_with(e, || (Vec::new(), 0));
        } else {
            return;
        }
        let now = Instant::now();
        while self.credits > 0 {
            // A stalled executor only if every one is (a slot must not idle for it).
            let Some(mut i) = self
                .least_running(|j| !self.stalled(j, now))
                .or_else(|| self.least_running(|_| true))
            else {
                break;
            };
            if self.uncovered(i) == 0 || self.stalled(i, now) {
                if let Some(task) = self.take_startable(now) {
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
            let Some(i) = (0..e)
                .filter(|&i| {
                    !self.dead[i]
                        && self.uncovered(i) < self.ahead_target[i]
                        && !self.stalled(i, now)
                })
                .min_by_key(|&i| self.uncovered(i))
            else {
                break;
            };
            if let Some(task) = self.buffer.pop_front() {
                self.push_task(&mut batches, i, task, now);
            }
        }
        for (i, (exec, (tasks, credits))) in self.executors.iter().zip(batches).enumerate() {
            if !tasks.is_empty() || credits > 0 {
                exec.do_send(Execute::new(i, tasks, credits, &self.returns));
            }
        }
    }

    /// Adds `task` to executor `i`'s batch (queued there; a credit may go along).
    pub(super) fn push_task(
        &mut self,
        batches: &mut [(Vec<Task<T>>, u32)],
        i: usize,
        mut task: Task<T>,
        now: Instant,
    ) {
        self.note_key(&task);
        if !self.trackers.is_empty() {
            if let Some(t) = self.trackers.get(&task.id) {
                task.progress = Some(t.progress.clone());
            }
        }
        batches[i].0.push(task);
        if self.assigned[i] == 0 {
            // Idle until now: its silence so far says nothing.
            self.last_heard[i] = now;
        }
        self.assigned[i] += 1;
        self.queued[i] += 1;
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Ready> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, msg: Ready, ctx: &mut Self::Context) {
        self.credits = self.credits.saturating_add(msg.credits);
        let work_waits = !self.buffer.is_empty() || self.source.queued().map_or(true, |q| q > 0);
        let now = (!msg.executors.is_empty()).then(Instant::now);
        for (i, d) in msg.executors.iter().enumerate().take(self.assigned.len()) {
            if let Some(now) = now {
                if *d != ExecutorDelta::default() {
                    self.last_heard[i] = now;
                }
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
                self.ahead_target[i] = next.clamp(1, self.ahead.max(1));
            }
        }
        if let Some(now) = now {
            let finished = msg.executors.iter().map(|d| u64::from(d.finished)).sum();
            let active = self.waiting.is_none() || self.assigned.iter().any(|&a| a > 0);
            self.tuning.finished(finished, now, active);
        }
        self.pace_ready(msg.pauses, &msg.acks);
        if !msg.acks.is_empty() {
            self.record_acks(msg.acks, ctx);
        }
        self.pump(ctx);
    }
}
