//! The Fetcher: the only owner of the [`Source`].
//!
//! State it owns, and the rules it keeps:
//!
//! * `credits`: run slots granted by the Scheduler and not yet spent. A task is dispatched to an
//!   executor only by spending one, so the Fetcher can never start more than it was granted.
//! * `buffer`: tasks fetched and not yet dispatched. It holds at most `credits + prefetch` tasks
//!   (counting fetches in flight), so the Fetcher never asks the source for more than it may run
//!   soon; with `prefetch = 0` it never fetches more than the free slots.
//! * `waiting`: set when a fetch came back short. No fetch starts until a wake-up (a submit, a
//!   [`Notify`], or the source's [`WakeOn`](crate::source::WakeOn) time or signal) clears it.
//! * `epoch`: bumped by every wake-up. A fetch that comes back short after the epoch moved is not
//!   trusted to mean "empty": the Fetcher asks again, so a submit that raced a fetch is never lost.
//! * `backing_off`: set after a fetch error until the backoff timer fires; wake-ups do not cut
//!   it short, so a failing source is called a bounded number of times.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use actix::prelude::*;
use futures::FutureExt;
use tokio::sync::oneshot;

use std::time::Duration;

use futures::future::LocalBoxFuture;
use tokio::sync::watch;

use crate::error::{SourceError, SubmitError};
use crate::messages::{
    Cancel, CancelOutcome, CancelRunning, CloseSource, Execute, GetProgress, ListDead, Notify,
    PurgeDead, Ready, Receipt, RerunDead, StopFetching, Submit, SubmitBatch,
};
use crate::poller::DropGuard;
use crate::source::{EnqueueResult, FetchLimits, Fetched, NewTask, Source, WakeOn};
use crate::stats::Counters;
use crate::task::{
    Ack, Backoff, DeadTask, Disposition, FinalState, Progress, Task, TaskId, TaskOptions,
};

/// A submitter waiting for a task's final state, and the channel its progress goes to.
struct Tracker {
    done: oneshot::Sender<FinalState>,
    progress: watch::Sender<Progress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Shutdown began: no fetch starts, nothing is dispatched.
    Stopping,
}

pub(crate) struct Fetcher<T: Send + 'static, S> {
    source: S,
    limits: FetchLimits,
    prefetch: usize,
    executors: Vec<Recipient<Execute<T>>>,
    cancel_running: Vec<Recipient<CancelRunning>>,
    default_attempts: u32,
    cancel_grace: Duration,
    /// Tasks dispatched to each executor and not yet reported finished.
    assigned: Vec<usize>,
    /// Tasks dispatched to each executor and not yet reported out of its queue.
    queued: Vec<usize>,
    /// Credits sent to each executor and not yet reported spent or given back.
    covered: Vec<usize>,
    /// How many tasks each executor may hold queued beyond the credits it was sent: at most
    /// `ahead`; per executor, twice what it finished between two reports (so a queue covers a
    /// round trip to the Fetcher and back with a margin), halving at most per report, at least 1.
    ahead: usize,
    ahead_target: Vec<usize>,
    credits: usize,
    buffer: VecDeque<Task<T>>,
    /// Tasks asked for by the fetches in flight.
    requested: usize,
    in_flight: usize,
    epoch: u64,
    waiting: Option<Vec<SpawnHandle>>,
    fetch_backoff: Backoff,
    fetch_failures: u32,
    backing_off: Option<SpawnHandle>,
    phase: Phase,
    stop_reply: Option<oneshot::Sender<Vec<Task<T>>>>,
    trackers: HashMap<TaskId, Tracker>,
    /// Enqueues in flight (async sources) and the final states seen meanwhile, so a task that
    /// finishes before its enqueue's reply is handled still reaches its tracker.
    pending_enqueues: usize,
    early: Vec<(TaskId, FinalState)>,
    acks_in_flight: usize,
    /// Acks that arrived while an ack call was in flight (or waiting to be retried); sent
    /// together when it lands.
    pending_acks: Vec<Ack>,
    /// Failed ack calls in a row; a failed batch is retried after a backoff, ahead of newer acks.
    ack_failures: u32,
    /// The timer of a failed batch's retry; it counts as an ack in flight.
    ack_retry: Option<SpawnHandle>,
    /// `CloseSource` arrived: a failed ack is no longer retried.
    closing: bool,
    heartbeat_in_flight: bool,
    /// `CloseSource` waiting for acks and enqueues in flight to land.
    ack_idle: Vec<oneshot::Sender<()>>,
    counters: Arc<Counters>,
    _guard: DropGuard,
}

// Nothing in the Fetcher is ever pinned in place (its futures are boxed), so it may move freely
// whatever `T` and `S` are; actix requires actors to be `Unpin`.
impl<T: Send, S> Unpin for Fetcher<T, S> {}

impl<T: Send, S> fmt::Debug for Fetcher<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("credits", &self.credits)
            .field("buffered", &self.buffer.len())
            .field("in_flight", &self.in_flight)
            .field("waiting", &self.waiting.is_some())
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

pub(crate) struct FetcherConfig {
    pub(crate) prefetch: usize,
    pub(crate) ahead: usize,
    pub(crate) fetch_backoff: Backoff,
    pub(crate) default_attempts: u32,
    pub(crate) cancel_grace: Duration,
}

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    pub(crate) fn new(
        source: S,
        executors: Vec<Recipient<Execute<T>>>,
        cancel_running: Vec<Recipient<CancelRunning>>,
        config: FetcherConfig,
        counters: Arc<Counters>,
        guard: DropGuard,
    ) -> Self {
        let limits = source.limits();
        counters.set_queued(source.queued());
        Fetcher {
            limits,
            prefetch: config.prefetch,
            assigned: vec![0; executors.len()],
            queued: vec![0; executors.len()],
            covered: vec![0; executors.len()],
            ahead: config.ahead,
            ahead_target: vec![config.ahead.min(1); executors.len()],
            executors,
            cancel_running,
            default_attempts: config.default_attempts,
            cancel_grace: config.cancel_grace,
            source,
            credits: 0,
            buffer: VecDeque::new(),
            requested: 0,
            in_flight: 0,
            epoch: 0,
            waiting: None,
            fetch_backoff: config.fetch_backoff,
            fetch_failures: 0,
            backing_off: None,
            phase: Phase::Running,
            stop_reply: None,
            trackers: HashMap::new(),
            pending_enqueues: 0,
            early: Vec::new(),
            acks_in_flight: 0,
            pending_acks: Vec::new(),
            ack_failures: 0,
            ack_retry: None,
            closing: false,
            heartbeat_in_flight: false,
            ack_idle: Vec::new(),
            counters,
            _guard: guard,
        }
    }

    /// Dispatch what credits allow, then start fetches while there is room for more tasks.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Running {
            return;
        }
        self.dispatch();
        while self.waiting.is_none() && self.backing_off.is_none() {
            let room: usize = self
                .queued
                .iter()
                .zip(&self.covered)
                .zip(&self.ahead_target)
                .map(|((q, c), t)| t.saturating_sub(q.saturating_sub(*c)))
                .sum();
            let want = (self.credits + self.prefetch + room)
                .saturating_sub(self.buffer.len() + self.requested);
            if want == 0 || self.in_flight >= self.limits.max_in_flight {
                break;
            }
            let n = want.min(self.limits.max_batch);
            self.requested += n;
            self.in_flight += 1;
            Counters::add(&self.counters.fetch_calls, 1);
            let epoch = self.epoch;
            let mut fut = self.source.fetch(n);
            match (&mut fut).now_or_never() {
                // A source that answers at once (the in-memory one) costs no spawn.
                Some(res) => self.fetched(n, epoch, res, ctx),
                None => {
                    ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                        act.fetched(n, epoch, res, ctx);
                        act.pump(ctx);
                    }));
                }
            }
            self.dispatch();
        }
        let ahead: usize = self
            .queued
            .iter()
            .zip(&self.covered)
            .map(|(q, c)| q.saturating_sub(*c))
            .sum();
        self.counters.buffered.store(
            (self.buffer.len() + ahead) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn fetched(
        &mut self,
        n: usize,
        epoch: u64,
        res: Result<Fetched<T>, S::Error>,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight -= 1;
        self.requested -= n;
        match res {
            Ok(fetched) => {
                self.fetch_failures = 0;
                let got = fetched.tasks.len();
                self.buffer.extend(fetched.tasks);
                self.counters.set_queued(self.source.queued());
                // Short, and nothing woke us while the fetch was in flight: the source is
                // drained for now. Otherwise the loop in `pump` asks again.
                if got < n && epoch == self.epoch && self.phase == Phase::Running {
                    self.wait_on(fetched.wake_on, ctx);
                }
            }
            Err(error) => {
                Counters::add(&self.counters.fetch_errors, 1);
                // Fetches in flight together fail together: one backoff round, not one per
                // fetch, or N concurrent fetches would push the delay N steps at once.
                if self.backing_off.is_some() {
                    tracing::debug!(%error, "fetch failed during backoff");
                } else {
                    self.fetch_failures = self.fetch_failures.saturating_add(1);
                    let delay = self.fetch_backoff.delay(self.fetch_failures);
                    tracing::warn!(
                        %error,
                        failures = self.fetch_failures,
                        ?delay,
                        "fetch failed; backing off"
                    );
                    if self.phase == Phase::Running {
                        self.backing_off = Some(ctx.run_later(delay, |act, ctx| {
                            act.backing_off = None;
                            act.pump(ctx);
                        }));
                    }
                }
            }
        }
        if self.phase == Phase::Stopping && self.in_flight == 0 {
            self.reply_stopped();
        }
    }

    /// The source is empty for now: sleep until a submit, a notify, or what `wake_on` says.
    fn wait_on(&mut self, wake_on: WakeOn, ctx: &mut Context<Self>) {
        self.cancel_wait(ctx);
        let mut handles = Vec::new();
        if let Some(at) = wake_on.at {
            let delay = at.saturating_duration_since(tokio::time::Instant::now());
            handles.push(ctx.run_later(delay, |act, ctx| act.wake(ctx)));
        }
        if let Some(signal) = wake_on.signal {
            handles.push(ctx.spawn(
                actix::fut::wrap_future::<_, Self>(signal).map(|(), act, ctx| act.wake(ctx)),
            ));
        }
        self.waiting = Some(handles);
    }

    fn cancel_wait(&mut self, ctx: &mut Context<Self>) {
        for h in self.waiting.take().into_iter().flatten() {
            ctx.cancel_future(h);
        }
    }

    /// Something may be new in the source.
    fn wake(&mut self, ctx: &mut Context<Self>) {
        self.epoch = self.epoch.wrapping_add(1);
        self.cancel_wait(ctx);
        self.pump(ctx);
    }

    /// Tasks queued at executor `i` that no credit covers yet.
    fn uncovered(&self, i: usize) -> usize {
        self.queued[i].saturating_sub(self.covered[i])
    }

    /// The executor with the fewest tasks running or about to (a credit on its way), among
    /// those `eligible` says.
    fn least_running(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.executors.len())
            .filter(|&i| eligible(i))
            .min_by_key(|&i| self.assigned[i] - self.uncovered(i).min(self.assigned[i]))
    }

    /// Spends credits and hands tasks to the executors, one `Execute` per executor:
    ///
    /// 1. each credit to the executor running the fewest tasks (so CPU-bound work spreads over
    ///    every thread), with one of the tasks already queued there, else a buffered task; with
    ///    the buffer empty, to an executor that has queued tasks no credit covers (so no task
    ///    waits behind a long one while a slot is free elsewhere);
    /// 2. then, with no credit left, buffered tasks ahead into the executors' queues, up to
    ///    each one's `ahead_target`, shortest queue first, so an executor refills a slot the
    ///    moment a task ends.
    fn dispatch(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        let e = self.executors.len();
        let mut batches: Vec<(Vec<Task<T>>, u32)> = Vec::new();
        if self.credits > 0 || (self.ahead > 0 && !self.buffer.is_empty()) {
            batches.resize_with(e, || (Vec::new(), 0));
        }
        while self.credits > 0 {
            let Some(mut i) = self.least_running(|_| true) else {
                break;
            };
            if self.uncovered(i) == 0 {
                if let Some(task) = self.buffer.pop_front() {
                    self.push_task(&mut batches, i, task);
                } else if let Some(j) = self.least_running(|j| self.uncovered(j) > 0) {
                    i = j;
                } else {
                    break;
                }
            }
            batches[i].1 += 1;
            self.covered[i] += 1;
            self.credits -= 1;
        }
        while self.ahead > 0 && !self.buffer.is_empty() {
            let Some(i) = (0..e)
                .filter(|&i| self.uncovered(i) < self.ahead_target[i])
                .min_by_key(|&i| self.uncovered(i))
            else {
                break;
            };
            if let Some(task) = self.buffer.pop_front() {
                self.push_task(&mut batches, i, task);
            }
        }
        for (exec, (tasks, credits)) in self.executors.iter().zip(batches) {
            if !tasks.is_empty() || credits > 0 {
                exec.do_send(Execute { tasks, credits });
            }
        }
    }

    /// Adds `task` to executor `i`'s batch (queued there; a credit may go along).
    fn push_task(&mut self, batches: &mut [(Vec<Task<T>>, u32)], i: usize, mut task: Task<T>) {
        if !self.trackers.is_empty() {
            if let Some(t) = self.trackers.get(&task.id) {
                task.progress = Some(t.progress.clone());
            }
        }
        batches[i].0.push(task);
        self.assigned[i] += 1;
        self.queued[i] += 1;
    }

    fn reply_stopped(&mut self) {
        if let Some(reply) = self.stop_reply.take() {
            let _ = reply.send(self.buffer.drain(..).collect());
        }
    }

    fn record_acks(&mut self, mut acks: Vec<Ack>, ctx: &mut Context<Self>) {
        if !self.source.can_requeue() {
            for ack in &mut acks {
                if matches!(
                    ack.disposition,
                    Disposition::Retry { .. } | Disposition::Snooze { .. }
                ) {
                    Counters::add(&self.counters.dead, 1);
                    ack.disposition = Disposition::Dead {
                        error: "asked to run again, but the source keeps no copy of a started \
                                task (turn retries on: PollerBuilder::retry)"
                            .into(),
                    };
                }
            }
        }
        if self.acks_in_flight > 0 {
            // One ack call at a time: what arrives meanwhile goes in the next call, so a slow
            // store sees few large batches instead of a call per `Ready`.
            self.pending_acks.extend(acks);
            return;
        }
        self.send_acks(acks, ctx);
    }

    fn send_acks(&mut self, acks: Vec<Ack>, ctx: &mut Context<Self>) {
        // The copy is what a failed call retries, and what tells trackers their final state
        // once the source has recorded it.
        let mut fut = self.source.ack(acks.clone());
        match (&mut fut).now_or_never() {
            Some(res) => self.acked(acks, res, ctx),
            None => {
                self.acks_in_flight += 1;
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    act.acks_in_flight -= 1;
                    act.acked(acks, res, ctx);
                }));
            }
        }
    }

    /// An ack call landed. On success, trackers learn the final states the source now holds; on
    /// failure the batch is retried after a backoff (acks are what make a durable source's
    /// work final: dropping them would re-run completed tasks once their leases expire).
    fn acked(&mut self, acks: Vec<Ack>, res: Result<(), S::Error>, ctx: &mut Context<Self>) {
        match res {
            Ok(()) => {
                self.ack_failures = 0;
                if !self.trackers.is_empty() || self.pending_enqueues > 0 {
                    for ack in &acks {
                        if let Some(state) = FinalState::from_ack(ack) {
                            self.resolve(ack.id, state);
                        }
                    }
                }
                // A task going back to the source (retry, snooze) may be due before anything
                // else wakes the Fetcher: now that the source has it, fetch again to learn the
                // next due time.
                if acks.iter().any(|a| !a.disposition.is_final()) {
                    self.wake(ctx);
                }
            }
            Err(error) => {
                Counters::add(&self.counters.ack_errors, 1);
                if self.closing {
                    tracing::error!(
                        %error,
                        acks = acks.len(),
                        "the source failed to record acks at shutdown; a durable source runs \
                         those tasks again once their leases expire"
                    );
                } else {
                    self.ack_failures = self.ack_failures.saturating_add(1);
                    let delay = self.fetch_backoff.delay(self.ack_failures);
                    tracing::warn!(
                        %error,
                        acks = acks.len(),
                        failures = self.ack_failures,
                        ?delay,
                        "the source failed to record acks; retrying"
                    );
                    let mut retry = acks;
                    retry.append(&mut self.pending_acks);
                    self.pending_acks = retry;
                    self.acks_in_flight += 1;
                    self.ack_retry = Some(ctx.run_later(delay, |act, ctx| {
                        act.ack_retry = None;
                        act.acks_in_flight -= 1;
                        act.send_pending_acks(ctx);
                    }));
                    return;
                }
            }
        }
        self.send_pending_acks(ctx);
        self.notify_idle();
    }

    /// Sends the acks that waited for the call in flight, if none is in flight now.
    fn send_pending_acks(&mut self, ctx: &mut Context<Self>) {
        if self.acks_in_flight == 0 && !self.pending_acks.is_empty() {
            let next = std::mem::take(&mut self.pending_acks);
            self.send_acks(next, ctx);
        }
    }

    /// Tells a tracked task's submitter its final state.
    fn resolve(&mut self, id: TaskId, state: FinalState) {
        if let Some(t) = self.trackers.remove(&id) {
            let _ = t.done.send(state);
        } else if self.pending_enqueues > 0 {
            self.early.push((id, state));
        }
    }

    /// Lets the source extend its leases. One heartbeat at a time: a slow store is not piled on.
    /// Heartbeats go on while a shutdown drains, until the source closes: tasks still running
    /// then (or whose acks have not landed) keep their leases however long the drain takes.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.closing || self.heartbeat_in_flight {
            return;
        }
        self.heartbeat_in_flight = true;
        ctx.spawn(
            self.source
                .heartbeat()
                .into_actor(self)
                .map(|res, act, _ctx| {
                    act.heartbeat_in_flight = false;
                    if let Err(error) = res {
                        Counters::add(&act.counters.heartbeat_errors, 1);
                        tracing::warn!(%error, "heartbeat failed; leases may expire");
                    }
                }),
        );
    }

    /// Wakes a pending `CloseSource` once no ack and no enqueue is in flight.
    fn notify_idle(&mut self) {
        if self.acks_in_flight == 0 && self.pending_enqueues == 0 {
            for tx in self.ack_idle.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    /// Turns an enqueue's result into receipts, registering trackers.
    fn enqueued(
        &mut self,
        res: EnqueueResult<T>,
        track: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Vec<Receipt>, SubmitError<Vec<T>>> {
        let ids = res?;
        Counters::add(&self.counters.submitted, ids.len() as u64);
        let receipts = ids
            .into_iter()
            .map(|id| {
                if !track {
                    return Receipt::untracked(id);
                }
                let (done, rx) = oneshot::channel();
                let (progress, progress_rx) = watch::channel(Progress::default());
                match self.early.iter().position(|(e, _)| *e == id) {
                    Some(pos) => {
                        let _ = done.send(self.early.swap_remove(pos).1);
                    }
                    None => {
                        self.trackers.insert(id, Tracker { done, progress });
                    }
                }
                Receipt::tracked(id, rx, progress_rx)
            })
            .collect();
        self.counters.set_queued(self.source.queued());
        self.wake(ctx);
        Ok(receipts)
    }

    fn submit(
        &mut self,
        tasks: Vec<T>,
        track: bool,
        options: TaskOptions,
        ctx: &mut Context<Self>,
    ) -> Answer<Self, Result<Vec<Receipt>, SubmitError<Vec<T>>>> {
        if self.phase != Phase::Running {
            return Answer::Now(Err(SubmitError::Closed(tasks)));
        }
        let attempts = self.default_attempts;
        let mut fut = self.source.enqueue(
            tasks
                .into_iter()
                .map(|t| NewTask::with_options(t, options, attempts))
                .collect(),
        );
        if let Some(res) = (&mut fut).now_or_never() {
            return Answer::Now(self.enqueued(res, track, ctx));
        }
        self.pending_enqueues += 1;
        Answer::Later(Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            act.pending_enqueues -= 1;
            let out = act.enqueued(res, track, ctx);
            if act.pending_enqueues == 0 {
                act.early.clear();
            }
            act.notify_idle();
            out
        })))
    }
}

/// The [`Source::enqueue`] contract, checked where a batch of one becomes one.
const ONE_PER_TASK: &str =
    "Source::enqueue broke its contract: it must answer one id per task, or hand every task back";

/// A reply now (no allocation) or later.
enum Answer<A: Actor, R> {
    Now(R),
    Later(ResponseActFuture<A, R>),
}

impl<A: Actor<Context = Context<A>>, R: 'static> Answer<A, R> {
    fn map<U: 'static>(self, f: impl FnOnce(R) -> U + 'static) -> ActorResponse<A, U> {
        match self {
            Answer::Now(r) => ActorResponse::reply(f(r)),
            Answer::Later(fut) => ActorResponse::r#async(fut.map(move |r, _, _| f(r))),
        }
    }
}

impl<T: Send + 'static, S: Source<T>> Actor for Fetcher<T, S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(every) = self.source.heartbeat_interval() {
            ctx.run_interval(every, |act, ctx| act.heartbeat(ctx));
        }
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Ready> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, msg: Ready, ctx: &mut Self::Context) {
        self.credits += msg.credits;
        let work_waits = !self.buffer.is_empty() || self.source.queued().map_or(true, |q| q > 0);
        for (i, d) in msg.executors.iter().enumerate().take(self.assigned.len()) {
            self.assigned[i] = self.assigned[i].saturating_sub(d.finished as usize);
            self.queued[i] = self.queued[i].saturating_sub(d.dequeued as usize);
            self.covered[i] = self.covered[i].saturating_sub(d.credits_used as usize);
            if d.finished > 0 && self.ahead > 0 {
                let t = self.ahead_target[i];
                let mut next = (2 * d.finished as usize).max(t - t / 8);
                // Slots went back while work waited: the queue ran dry before its refill came.
                if d.freed > 0 && work_waits {
                    next = next.max(t + d.freed as usize);
                }
                self.ahead_target[i] = next.clamp(1, self.ahead.max(1));
            }
        }
        if !msg.acks.is_empty() {
            self.record_acks(msg.acks, ctx);
        }
        self.pump(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Notify> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, _msg: Notify, ctx: &mut Self::Context) {
        self.wake(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Submit<T>> for Fetcher<T, S> {
    type Result = ActorResponse<Self, Result<Receipt, SubmitError<T>>>;

    fn handle(&mut self, mut msg: Submit<T>, ctx: &mut Self::Context) -> Self::Result {
        let tasks = msg.tasks.take();
        // A batch of one in, a batch of one out.
        self.submit(tasks, msg.track, msg.options, ctx).map(|r| {
            r.map(|mut receipts| receipts.pop().expect(ONE_PER_TASK))
                .map_err(|e| e.map(|mut tasks| tasks.pop().expect(ONE_PER_TASK)))
        })
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<SubmitBatch<T>> for Fetcher<T, S> {
    type Result = ActorResponse<Self, Result<Vec<Receipt>, SubmitError<Vec<T>>>>;

    fn handle(&mut self, mut msg: SubmitBatch<T>, ctx: &mut Self::Context) -> Self::Result {
        let tasks = msg.tasks.take();
        self.submit(tasks, msg.track, msg.options, ctx).map(|r| r)
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<StopFetching<T>> for Fetcher<T, S> {
    type Result = ActorResponse<Self, Vec<Task<T>>>;

    fn handle(&mut self, _msg: StopFetching<T>, ctx: &mut Self::Context) -> Self::Result {
        self.phase = Phase::Stopping;
        self.cancel_wait(ctx);
        if let Some(h) = self.backing_off.take() {
            ctx.cancel_future(h);
        }
        if self.in_flight == 0 {
            return ActorResponse::reply(self.buffer.drain(..).collect());
        }
        // Fetches in flight land in the buffer; the last one to land replies.
        let (tx, rx) = oneshot::channel();
        self.stop_reply = Some(tx);
        ActorResponse::r#async(
            actix::fut::wrap_future::<_, Self>(rx).map(|r, _, _| r.unwrap_or_default()),
        )
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<CloseSource<T>> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<Vec<Task<T>>, String>>;

    fn handle(&mut self, msg: CloseSource<T>, ctx: &mut Self::Context) -> Self::Result {
        // Acks go to the source before it closes, so a durable source records every final state;
        // enqueues in flight get their reply before the Fetcher stops. A batch waiting for its
        // retry gets one last try now, not after its backoff.
        self.closing = true;
        if let Some(h) = self.ack_retry.take() {
            ctx.cancel_future(h);
            self.acks_in_flight -= 1;
            self.send_pending_acks(ctx);
        }
        let acks_idle = (self.acks_in_flight > 0 || self.pending_enqueues > 0).then(|| {
            let (tx, rx) = oneshot::channel();
            self.ack_idle.push(tx);
            rx
        });
        let unstarted = msg.unstarted;
        Box::pin(
            actix::fut::wrap_future::<_, Self>(async move {
                if let Some(rx) = acks_idle {
                    let _ = rx.await;
                }
            })
            .then(move |(), act, _ctx| act.source.close(unstarted).into_actor(act))
            .map(|res, act, ctx| {
                // Trackers of tasks that never finished learn it now (OutcomeError::ShutDown).
                act.trackers.clear();
                act.counters.set_queued(act.source.queued());
                ctx.stop();
                res.map_err(|e| e.to_string())
            }),
        )
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Cancel> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, SourceError>>;

    fn handle(&mut self, msg: Cancel, ctx: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        // Fetched but not started: leased from the source, so the source hears it as an ack.
        if let Some(pos) = self.buffer.iter().position(|t| t.id == id) {
            if let Some(task) = self.buffer.remove(pos) {
                Counters::add(&self.counters.cancelled, 1);
                let ack = Ack {
                    id,
                    attempt: task.attempt,
                    disposition: Disposition::Cancelled,
                };
                self.record_acks(vec![ack], ctx);
                return Box::pin(actix::fut::ready(Ok(CancelOutcome::Dequeued)));
            }
        }
        let running = self.cancel_running.clone();
        let grace = self.cancel_grace;
        Box::pin(
            self.source
                .cancel(id)
                .into_actor(self)
                .then(move |res, act, _ctx| {
                    let answer: LocalBoxFuture<'static, _> = match res {
                        Err(e) => Box::pin(futures::future::ready(Err(SourceError(e.to_string())))),
                        Ok(true) => {
                            Counters::add(&act.counters.cancelled, 1);
                            act.counters.set_queued(act.source.queued());
                            act.resolve(id, FinalState::Cancelled);
                            Box::pin(futures::future::ready(Ok(CancelOutcome::Dequeued)))
                        }
                        // Not waiting: maybe running on one of the executors.
                        Ok(false) => Box::pin(async move {
                            let asks = running.iter().map(|e| e.send(CancelRunning { id, grace }));
                            // Queued at an executor (dispatched ahead): dequeued there; else
                            // running there: signalled.
                            Ok(futures::future::join_all(asks)
                                .await
                                .into_iter()
                                .flatten()
                                .find(|o| *o != CancelOutcome::NotFound)
                                .unwrap_or(CancelOutcome::NotFound))
                        }),
                    };
                    answer.into_actor(act)
                }),
        )
    }
}

/// Runs a source operation whose error becomes a [`SourceError`].
fn source_op<T: Send + 'static, S: Source<T>, R: 'static>(
    act: &mut Fetcher<T, S>,
    fut: LocalBoxFuture<'static, Result<R, S::Error>>,
) -> ResponseActFuture<Fetcher<T, S>, Result<R, SourceError>> {
    Box::pin(
        fut.into_actor(act)
            .map(|res, _, _| res.map_err(|e| SourceError(e.to_string()))),
    )
}

impl<T: Send + 'static, S: Source<T>> Handler<ListDead> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<Vec<DeadTask>, SourceError>>;

    fn handle(&mut self, msg: ListDead, _ctx: &mut Self::Context) -> Self::Result {
        let fut = self.source.dead_tasks(msg.limit);
        source_op(self, fut)
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<RerunDead> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<Vec<TaskId>, SourceError>>;

    fn handle(&mut self, msg: RerunDead, _ctx: &mut Self::Context) -> Self::Result {
        let fut = self.source.rerun_dead(msg.ids);
        Box::pin(source_op(self, fut).map(|res, act, ctx| {
            act.counters.set_queued(act.source.queued());
            act.wake(ctx);
            res
        }))
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<PurgeDead> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<usize, SourceError>>;

    fn handle(&mut self, msg: PurgeDead, _ctx: &mut Self::Context) -> Self::Result {
        let fut = self.source.purge_dead(msg.ids);
        source_op(self, fut)
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<GetProgress> for Fetcher<T, S> {
    type Result = Option<Progress>;

    fn handle(&mut self, msg: GetProgress, _ctx: &mut Self::Context) -> Option<Progress> {
        self.trackers
            .get(&msg.id)
            .map(|t| t.progress.borrow().clone())
    }
}
