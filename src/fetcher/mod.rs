//! The Fetcher: the only owner of the [`Source`].
//!
//! State it owns, and the rules it keeps:
//!
//! * `credits`: run slots granted by the Scheduler and not yet spent. A task is dispatched to an
//!   executor only by spending one, so the Fetcher can never start more than it was granted.
//! * `buffer`: tasks fetched and not yet dispatched. It holds at most `credits + prefetch` tasks
//!   (counting fetches in flight), so the Fetcher never asks the source for more than it may run
//!   soon; with `prefetch = 0` it never fetches more than the free slots. `prefetch` is the
//!   builder's, or tuned from measured throughput × fetch latency (`prefetch.rs`).
//! * `waiting`: set when a fetch came back drained (empty, or [`Fetched::drained`]). No fetch starts until a wake-up (a submit, a
//!   [`Notify`], or the source's [`WakeOn`](crate::source::WakeOn) time or signal) clears it.
//! * `epoch`: bumped by every wake-up. A fetch that comes back short after the epoch moved is not
//!   trusted to mean "empty": the Fetcher asks again, so a submit that raced a fetch is never lost.
//! * `backing_off`: set after a fetch error until the backoff timer fires; wake-ups do not cut
//!   it short, so a failing source is called a bounded number of times.

//!
//! The Fetcher is split by concern: this file holds its state, fetching (`pump`, `fetched`,
//! waiting and waking) and its lifecycle; `dispatch.rs` spends credits and hands tasks to the
//! executors; `prefetch.rs` tunes how far ahead to fetch; `acks.rs` batches acks to the source, retries failed batches, heartbeats, and
//! resolves trackers; `handlers.rs` answers the messages users and the shutdown send (submit,
//! cancel, dead tasks, progress, stop, close).

mod acks;
mod dispatch;
mod handlers;
mod lost;
mod pace;
mod prefetch;
mod trackers;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::messages::Notify;
use crate::metrics::{Sample, Stopwatch};
use crate::protocol::{CancelRunning, Execute, LocalQueue, ReturnPath};
use crate::retry::Backoff;
use crate::shutdown::DropGuard;
use crate::source::{FetchLimits, Fetched, Source, WakeOn};
use crate::stats::Counters;
use crate::task::{Ack, QueueCounts, Task, TaskId};
use crate::trace;

pub use trackers::TRACKING_LIMIT;

/// How often the Fetcher samples the gauges and counts the source's tasks (see
/// [`Fetcher::sample`]), unless counting takes long (see [`COUNT_SPACING`]).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// After a periodic count that took `d`, the next one waits at least `COUNT_SPACING × d`, so
/// counting takes at most 1 / (1 + `COUNT_SPACING`) of the time (5 %). A durable source counts
/// with indexes, but a count is linear in the tasks it counts: a PostgreSQL queue of 1 000 000
/// due rows costs 60 ms of the server's time per count when vacuumed, 400 ms right after a
/// bulk insert (issue 14); every 5 s, that was 8 % of a server core.
pub(crate) const COUNT_SPACING: u32 = 19;
use trackers::{Early, Resolver, Tracker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Shutdown began: no fetch starts, nothing is dispatched.
    Stopping,
}

pub(crate) struct Fetcher<T: Send + 'static, S> {
    source: S,
    limits: FetchLimits,
    /// The builder's `prefetch`; `None`: tuned (see `prefetch.rs`).
    prefetch: Option<usize>,
    tuning: prefetch::Tuning,
    executors: Vec<Recipient<Execute<T>>>,
    cancel_running: Vec<Recipient<CancelRunning>>,
    /// Each executor's queue, shared with it: dispatch pushes tasks in, and takes back the
    /// ones queued at a stalled or dead executor (see `dispatch.rs`).
    queues: Vec<Arc<LocalQueue<T>>>,
    /// The timer that looks again once an executor holding queued tasks may have stalled.
    stall_check: Option<SpawnHandle>,
    /// `dispatch`'s per-executor tallies (tasks pushed, credits sent), kept between calls.
    batches: Vec<(u32, u32)>,
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
    /// When each executor would be stalled: `dispatch::STALL_AFTER` after it last reported (or,
    /// idle, was last given a task), if it holds tasks by then (`None`: never). Kept as that
    /// instant so the check on every credit compares two instants.
    stalls_at: Vec<Option<tokio::time::Instant>>,
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
    /// Enqueues in flight (async sources).
    pending_enqueues: usize,
    /// Final states seen while tracked enqueues were in flight, so a task that finishes before
    /// its enqueue's reply is handled still reaches its tracker (bounded: see `trackers.rs`).
    early: Early,
    /// Resolves trackers from a store shared with other pollers, and expires them.
    resolver: Resolver,
    acks_in_flight: usize,
    /// Acks that arrived while an ack call was in flight (or waiting to be retried); sent
    /// together when it lands.
    pending_acks: Vec<Ack>,
    /// Acks given to `record_acks` that the source has not recorded yet; at
    /// `acks::MAX_UNRECORDED_ACKS` no fetch starts.
    unrecorded: usize,
    /// Failed ack calls in a row; a failed batch is retried after a backoff, ahead of newer acks.
    ack_failures: u32,
    /// The timer of a failed batch's retry; it counts as an ack in flight.
    ack_retry: Option<SpawnHandle>,
    /// `CloseSource` arrived: a failed ack is no longer retried.
    closing: bool,
    heartbeat_in_flight: bool,
    /// When the last heartbeat began (to warn of one that comes late).
    last_beat: Option<tokio::time::Instant>,
    /// A `counts` call of the periodic sample is in flight.
    counting: bool,
    /// No periodic count before this: the last one's duration × [`COUNT_SPACING`] after it.
    count_after: Option<tokio::time::Instant>,
    /// `CloseSource` waiting for acks and enqueues in flight to land.
    ack_idle: Vec<oneshot::Sender<()>>,
    counters: Arc<Counters>,
    /// Executors that died (see `lost.rs`): nothing is dispatched to them.
    dead: Vec<bool>,
    /// Where an `Execute` that never reaches its executor sends its tasks back.
    returns: Arc<ReturnPath<T>>,
    /// Pace control (see `pace.rs`): limits, what runs per key, pauses.
    pace: crate::pace::Pace,
    subscribers: Vec<Recipient<crate::TaskEvent>>,
    /// Keyed tasks counted against their key's concurrency limit while they run.
    pace_keys: HashMap<TaskId, crate::pace::Key>,
    /// Other keyed tasks that run (so a backpressure answer finds its key).
    keys_of: HashMap<TaskId, crate::pace::Key>,
    /// Buffered tasks that may not start yet (from the last dispatch).
    parked: usize,
    /// The earliest instant a rate-limited or paused task may start, for the timer.
    pace_next: Option<tokio::time::Instant>,
    pace_timer: Option<(tokio::time::Instant, SpawnHandle)>,
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

/// How the Fetcher reaches one executor: its mailbox for work and for cancels, and its queue.
pub(crate) struct ExecutorEnds<T: Send + 'static> {
    pub(crate) execute: Recipient<Execute<T>>,
    pub(crate) cancel: Recipient<CancelRunning>,
    pub(crate) queue: Arc<LocalQueue<T>>,
}

pub(crate) struct FetcherConfig {
    pub(crate) workers: usize,
    pub(crate) prefetch: Option<usize>,
    pub(crate) ahead: usize,
    pub(crate) fetch_backoff: Backoff,
    pub(crate) default_attempts: u32,
    pub(crate) cancel_grace: Duration,
    pub(crate) pace: crate::pace::PaceConfig,
    /// Who hears of retries and final states ([`TaskEvent`](crate::TaskEvent)).
    pub(crate) subscribers: Vec<Recipient<crate::TaskEvent>>,
}

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    pub(crate) fn new(
        source: S,
        ends: Vec<ExecutorEnds<T>>,
        config: FetcherConfig,
        counters: Arc<Counters>,
        guard: DropGuard,
        returns: Arc<ReturnPath<T>>,
    ) -> Self {
        let limits = source.limits();
        let (mut executors, mut cancel_running, mut queues) = (Vec::new(), Vec::new(), Vec::new());
        for end in ends {
            executors.push(end.execute);
            cancel_running.push(end.cancel);
            queues.push(end.queue);
        }
        let resolve_every = source.final_states_interval();
        counters.set_queued(source.queued());
        Fetcher {
            limits,
            prefetch: config.prefetch,
            tuning: prefetch::Tuning::new(config.workers, source.heartbeat_interval()),
            assigned: vec![0; executors.len()],
            queued: vec![0; executors.len()],
            covered: vec![0; executors.len()],
            ahead: config.ahead,
            ahead_target: vec![config.ahead.min(1); executors.len()],
            dead: vec![false; executors.len()],
            returns,
            stalls_at: vec![
                tokio::time::Instant::now().checked_add(dispatch::STALL_AFTER);
                executors.len()
            ],
            executors,
            cancel_running,
            queues,
            stall_check: None,
            batches: Vec::new(),
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
            early: Early::default(),
            resolver: Resolver::new(resolve_every),
            acks_in_flight: 0,
            pending_acks: Vec::new(),
            unrecorded: 0,
            ack_failures: 0,
            ack_retry: None,
            closing: false,
            heartbeat_in_flight: false,
            last_beat: None,
            counting: false,
            count_after: None,
            ack_idle: Vec::new(),
            counters,
            pace: crate::pace::Pace::new(config.pace),
            subscribers: config.subscribers,
            pace_keys: HashMap::new(),
            keys_of: HashMap::new(),
            parked: 0,
            pace_next: None,
            pace_timer: None,
            _guard: guard,
        }
    }

    /// Dispatch what credits allow, then start fetches while there is room for more tasks.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        self.pump_at(tokio::time::Instant::now(), ctx);
    }

    /// [`pump`](Self::pump) with the caller's clock reading (one per handler).
    pub(super) fn pump_at(&mut self, now: tokio::time::Instant, ctx: &mut Context<Self>) {
        if self.phase != Phase::Running {
            return;
        }
        self.dispatch(now);
        while self.waiting.is_none() && self.backing_off.is_none() {
            let room = self
                .queued
                .iter()
                .zip(&self.covered)
                .zip(&self.ahead_target)
                .map(|((q, c), t)| t.saturating_sub(q.saturating_sub(*c)))
                .fold(0usize, usize::saturating_add);
            // Saturating: `workers(usize::MAX)` or `prefetch(usize::MAX)` mean "unbounded".
            let prefetch = self.prefetch.unwrap_or_else(|| self.tuning.prefetch());
            let want = self
                .credits
                .saturating_add(prefetch)
                .saturating_add(room)
                .saturating_sub((self.buffer.len() - self.parked()).saturating_add(self.requested));
            if want == 0
                || self.in_flight >= self.limits.max_in_flight
                || self.unrecorded >= acks::MAX_UNRECORDED_ACKS
            {
                break;
            }
            let n = want.min(self.limits.max_batch);
            self.requested += n;
            self.in_flight += 1;
            Counters::add(&self.counters.fetch_calls, 1);
            let epoch = self.epoch;
            let clock = Stopwatch::start();
            let span = trace::fetch_span(n);
            let mut fut = span.in_scope(|| self.source.fetch(n)).instrument(span);
            match (&mut fut).now_or_never() {
                // A source that answers at once (the in-memory one) costs no spawn.
                Some(res) => {
                    self.tuning.fetch_took(Duration::ZERO);
                    trace::fetch_landed(fut.span(), &res);
                    self.counters.metrics.fetched(&clock, &res);
                    self.fetched(n, epoch, res, ctx);
                }
                None => {
                    let called = tokio::time::Instant::now();
                    let span = fut.span().clone();
                    ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                        act.tuning.fetch_took(called.elapsed());
                        trace::fetch_landed(&span, &res);
                        act.counters.metrics.fetched(&clock, &res);
                        act.fetched(n, epoch, res, ctx);
                        act.pump(ctx);
                    }));
                }
            }
            self.dispatch(now);
        }
        self.arm_pace_timer(ctx);
        self.arm_stall_check(now, ctx);
        self.mirror_buffered();
    }

    /// Mirrors `Stats::buffered`: the buffer, plus tasks queued ahead at executors that no
    /// credit covers yet.
    pub(super) fn mirror_buffered(&self) {
        let ahead = self
            .queued
            .iter()
            .zip(&self.covered)
            .map(|(q, c)| q.saturating_sub(*c))
            .fold(0usize, usize::saturating_add);
        self.counters.buffered.store(
            self.buffer.len().saturating_add(ahead) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The periodic sample: the `metrics` feature's gauges, and the source's counts by state
    /// (one counts call at a time, spaced by [`COUNT_SPACING`] × the last one's duration; not
    /// once the source is closing). A source that cannot say
    /// [`Source::queued`] (a durable one) gets `Stats::queued` from these counts.
    pub(super) fn sample(&mut self, ctx: &mut Context<Self>) {
        if self.counters.metrics.enabled() {
            let dispatched = self
                .assigned
                .iter()
                .fold(0usize, |a, n| a.saturating_add(*n));
            let buffered = self
                .counters
                .buffered
                .load(std::sync::atomic::Ordering::Relaxed);
            self.counters.metrics.sampled(&Sample {
                buffered,
                pending_acks: self.unrecorded as u64,
                held: (self.buffer.len() as u64)
                    .saturating_add(dispatched as u64)
                    .saturating_add(self.unrecorded as u64),
            });
        }
        let now = tokio::time::Instant::now();
        if self.counting || self.closing || self.count_after.is_some_and(|after| now < after) {
            return;
        }
        self.counting = true;
        ctx.spawn(
            self.source
                .counts()
                .into_actor(self)
                .map(move |res, act, _ctx| {
                    act.counting = false;
                    let took = now.elapsed();
                    act.count_after = took
                        .checked_mul(COUNT_SPACING)
                        .and_then(|wait| tokio::time::Instant::now().checked_add(wait));
                    match res {
                        Ok(Some(counts)) => act.counted(&counts),
                        Ok(None) => {}
                        Err(error) => tracing::debug!(%error, "counting the source's tasks failed"),
                    }
                }),
        );
    }

    /// The source counted its tasks (for the sample or a [`GetCounts`](crate::messages::GetCounts)).
    pub(super) fn counted(&mut self, counts: &QueueCounts) {
        self.counters.metrics.counted(counts);
        if self.source.queued().is_none() {
            self.counters.set_queued(Some(counts.waiting()));
        }
    }

    pub(super) fn fetched(
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
                let drained = fetched.is_drained();
                self.buffer.extend(fetched.tasks);
                self.counters.set_queued(self.source.queued());
                // The source said it is drained, and nothing woke us while the fetch was in
                // flight: wait. Otherwise the loop in `pump` asks again (a short answer alone
                // never means "empty": a one-task-per-call source would stall).
                if drained && epoch == self.epoch && self.phase == Phase::Running {
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
    pub(super) fn wait_on(&mut self, wake_on: WakeOn, ctx: &mut Context<Self>) {
        self.cancel_wait(ctx);
        let mut handles = Vec::new();
        if let Some(at) = wake_on.at {
            let delay = at.saturating_duration_since(tokio::time::Instant::now());
            handles.push(ctx.run_later(delay, |act, ctx| act.wake(ctx)));
        }
        if let Some(signal) = wake_on.signal {
            handles.push(ctx.spawn(actix::fut::wrap_future::<_, Self>(signal).map(
                |(), act, ctx| {
                    // For a latency breakdown (the bench's durable-pg-latency stamps it).
                    tracing::trace!(name: "actix_poller.signalled", "woken by the source's signal");
                    act.wake(ctx)
                },
            )));
        }
        self.waiting = Some(handles);
    }

    pub(super) fn cancel_wait(&mut self, ctx: &mut Context<Self>) {
        for h in self.waiting.take().into_iter().flatten() {
            ctx.cancel_future(h);
        }
    }

    /// Something may be new in the source.
    pub(super) fn wake(&mut self, ctx: &mut Context<Self>) {
        self.epoch = self.epoch.wrapping_add(1);
        self.cancel_wait(ctx);
        self.pump(ctx);
    }

    pub(super) fn reply_stopped(&mut self) {
        if let Some(reply) = self.stop_reply.take() {
            // Nobody waits any more: they stay, and go back to the source at close.
            if let Err(tasks) = reply.send(self.buffer.drain(..).collect()) {
                self.buffer.extend(tasks);
            }
        }
    }
}

impl<T: Send + 'static, S: Source<T>> Actor for Fetcher<T, S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(every) = self.source.heartbeat_interval() {
            // The first beat is judged late from here: a thread blocked from the start (a
            // handler that blocks on its first task) is as dangerous to leases as one later.
            self.last_beat = Some(tokio::time::Instant::now());
            ctx.run_interval(every, |act, ctx| act.heartbeat(ctx));
        }
        // Only a source that cannot say `queued` (a durable one) is counted for `Stats`; with
        // the `metrics` feature every source is, for the gauges. A durable source is first
        // counted at the first tick, not now: a poller starts when it has the most to catch
        // up, and the count of a big queue takes the store's time (issue 14: 0.4 s of a
        // server core at 1 000 000 rows, the whole of a 20 000-task drain). Several replicas
        // deployed at once do not count together at their start either.
        if self.source.queued().is_none() {
            self.count_after = tokio::time::Instant::now().checked_add(SAMPLE_EVERY / 2);
        }
        if self.counters.metrics.enabled() || self.source.queued().is_none() {
            self.sample(ctx);
            ctx.run_interval(SAMPLE_EVERY, |act, ctx| act.sample(ctx));
        }
        self.start_resolving(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Notify> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, _msg: Notify, ctx: &mut Self::Context) {
        self.wake(ctx);
    }
}
