//! Shutdown as one concept: what each actor holds so shutdown can tell it is gone
//! ([`DropGuard`]), what only the Scheduler holds until shutdown begins ([`ShutdownPlan`]), the
//! drain sequence the handle runs ([`run`]), and what it reports ([`ShutdownReport`]).
//!
//! The sequence, in order (each step waits for the one before):
//!
//! 1. `BeginShutdown` → Scheduler: no credit is granted any more; the plan is handed out once.
//! 2. `StopFetching` → Fetcher: no fetch starts, nothing is dispatched; the tasks it fetched and
//!    never dispatched come back.
//! 3. `Drain` → every executor: running tasks finish until the deadline, the rest are cancelled
//!    (interrupted); each executor sends its last `Done` *before* it replies.
//! 4. `Flush` → Scheduler: the last acks go to the Fetcher.
//! 5. `CloseSource` → Fetcher: acks in flight land, the source takes back what never started.
//! 6. Every arbiter the poller started is stopped and joined; every actor is dropped.
//!
//! Every wait is bounded, so `shutdown(grace)` returns within `grace` + [`SHUTDOWN_SLACK`]
//! whatever a handler or the source does: fetches in flight get [`STOP_FETCHING_WAIT`] (the
//! Fetcher's answer one [`DRAIN_REPLY_WAIT`] more), the
//! drain replies [`DRAIN_REPLY_WAIT`] past the deadline, the last acks and the source's close
//! [`CLOSE_WAIT`], the arbiters' threads and the actors' drops [`STOP_ALL_WAIT`]. What did not
//! finish in time is named in [`ShutdownReport::unfinished`].

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use actix_rt::Arbiter;
use futures::future::Either;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

use crate::error::{ShutdownError, SourceError};
use crate::protocol::{Abandon, BeginShutdown, CloseSource, Drain, Flush, StopFetching};
use crate::retry::deadline_after;
use crate::stats::Counters;
use crate::task::{Task, TaskId};

/// How much longer than its `grace` [`Poller::shutdown`](crate::Poller::shutdown) may take at
/// most: the sum of the bounded waits around the drain (2 s for fetches in flight to land, 1 s
/// for executors to answer past the deadline, 2 s for the last acks and the source's close, 1 s
/// for the arbiter threads to exit and the actors to be dropped). It returns sooner unless a
/// handler blocks its thread or a source call hangs; what did not finish is named in
/// [`ShutdownReport::unfinished`].
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(6);

/// How long fetches in flight when fetching stops may take to land. Tasks of a fetch that
/// lands later still go back to the source at close.
pub(crate) const STOP_FETCHING_WAIT: Duration = Duration::from_secs(1);
/// How long past the drain deadline an executor may take to reply (it cancels what still
/// runs at the deadline, so only a handler blocking its thread makes it late).
const DRAIN_REPLY_WAIT: Duration = Duration::from_secs(1);
/// How long the last acks and the source's close may take together.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long the arbiter threads may take to exit and the actors to be dropped.
const STOP_ALL_WAIT: Duration = Duration::from_secs(1);

/// Held by an actor; dropping it (when the actor is dropped) closes the paired receiver, which is
/// how shutdown knows the actor is gone.
pub(crate) type DropGuard = oneshot::Sender<()>;

/// What only the Scheduler holds until shutdown begins, handed out once.
#[derive(Debug, Default)]
pub(crate) struct ShutdownPlan {
    /// The arbiters the poller started (one per executor unless they run on the current one).
    pub(crate) arbiters: Vec<Arbiter>,
    /// One receiver per actor; each closes when its actor's [`DropGuard`] is dropped.
    pub(crate) actors_gone: Vec<oneshot::Receiver<()>>,
}

impl ShutdownPlan {
    /// A new guard for one actor; shutdown waits until it is dropped.
    pub(crate) fn guard(&mut self) -> DropGuard {
        let (tx, rx) = oneshot::channel();
        self.actors_gone.push(rx);
        tx
    }
}

/// What [`Poller::shutdown`](crate::Poller::shutdown) did.
#[derive(Debug)]
#[non_exhaustive]
pub struct ShutdownReport<T> {
    /// Tasks that finished (in any state) while running tasks were drained.
    pub finished_during_drain: usize,
    /// Tasks still running at the deadline, dropped. Unless their cancellation had been asked
    /// for, they were only *interrupted* ([`Outcome::Interrupted`](crate::Outcome)): the source
    /// takes them back with the attempt not counted (a durable source makes them due again; the
    /// in-memory source hands them back below when retries are on, as it then keeps a copy).
    pub cancelled: usize,
    /// Tasks handed back: with the in-memory source, those dispatched or fetched but not started
    /// (in the order they were fetched), then everything still queued, including interrupted
    /// ones it kept a copy of (each at the back of its priority); a durable source releases them
    /// instead and hands back none. Tasks an executor held when it died (see
    /// [`executors_lost`](Self::executors_lost)) are here too when they never started.
    pub handed_back: Vec<Task<T>>,
    /// Tasks held by actors that died and that could not be handed back or released: those
    /// running on a lost executor when the source keeps no copy of them (the in-memory source
    /// without retries), and any task held when no actor was left to take it back. Empty means
    /// nothing was lost. (At most 100,000 ids; [`Stats::lost`](crate::Stats::lost) counts all.)
    pub lost: Vec<TaskId>,
    /// Executors that were gone before they could be drained: their arbiter had stopped (the
    /// actix `System` stopping stops every arbiter, for instance on Ctrl-C under actix-web's
    /// default signal handling) or their actor had panicked outside a task. What they held is
    /// in `handed_back`, released to a durable source, or in `lost`.
    pub executors_lost: Vec<usize>,
    /// What did not finish within its bounded wait (see [`SHUTDOWN_SLACK`]). Empty when the
    /// shutdown completed: every actor dropped, every arbiter thread joined.
    pub unfinished: Vec<Unfinished>,
}

/// A step of [`Poller::shutdown`](crate::Poller::shutdown) that did not finish within its
/// bounded wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unfinished {
    /// Fetching did not stop in time (the Fetcher did not answer). Tasks its fetches still
    /// bring go back to the source at close.
    Fetch,
    /// This executor did not answer its drain by the deadline plus the slack: a handler blocks
    /// its thread. The tasks it runs and holds are neither finished nor handed back: a durable
    /// source runs them again once their leases expire; in memory they are counted in
    /// [`Stats::lost`](crate::Stats::lost) if the executor ever stops.
    Executor(usize),
    /// The last acks could not be forwarded in time (the Scheduler did not answer).
    Flush,
    /// The source did not take back its unstarted tasks in time (an ack or a release hung);
    /// the Fetcher was stopped with the call in flight. A durable source gets those tasks back
    /// once their leases expire.
    Close,
    /// This executor's arbiter thread did not exit in time (a handler blocks it); it exits
    /// once the handler returns.
    Arbiter(usize),
    /// This many actors were not dropped in time.
    Actors(usize),
}

/// The addresses the drain sequence talks to, kept by the handle.
pub(crate) struct ShutdownLinks<T: Send + 'static> {
    pub(crate) begin: Recipient<BeginShutdown>,
    pub(crate) stop_fetching: Recipient<StopFetching<T>>,
    pub(crate) drains: Vec<Recipient<Drain<T>>>,
    pub(crate) flush: Recipient<Flush>,
    pub(crate) close: Recipient<CloseSource<T>>,
    pub(crate) abandon: Recipient<Abandon>,
    pub(crate) counters: Arc<Counters>,
}

impl<T: Send + 'static> Clone for ShutdownLinks<T> {
    fn clone(&self) -> Self {
        ShutdownLinks {
            begin: self.begin.clone(),
            stop_fetching: self.stop_fetching.clone(),
            drains: self.drains.clone(),
            flush: self.flush.clone(),
            close: self.close.clone(),
            abandon: self.abandon.clone(),
            counters: Arc::clone(&self.counters),
        }
    }
}

/// Runs the shutdown sequence (see the [module docs](self)); `closed` is set as soon as the
/// Scheduler accepted it, so submits fail fast.
pub(crate) async fn run<T: Send + 'static>(
    links: &ShutdownLinks<T>,
    closed: &AtomicBool,
    grace: Duration,
) -> Result<ShutdownReport<T>, ShutdownError> {
    let plan = match links.begin.send(BeginShutdown).await {
        Ok(Some(plan)) => plan,
        _ => return Err(ShutdownError::AlreadyShutDown),
    };
    closed.store(true, Ordering::Release);
    tracing::debug!(?grace, "shutdown: stop fetching");
    let mut unfinished = Vec::new();

    // Phase 1: no fetch starts, nothing more is dispatched. The Fetcher answers within
    // `STOP_FETCHING_WAIT` however long its fetches take; the extra second covers a busy thread.
    let stop = links.stop_fetching.send(StopFetching(PhantomData));
    let held = match tokio::time::timeout(STOP_FETCHING_WAIT + DRAIN_REPLY_WAIT, stop).await {
        Ok(held) => held.unwrap_or_default(),
        Err(_) => {
            unfinished.push(Unfinished::Fetch);
            Vec::new()
        }
    };

    // Phase 2: drain until the deadline, then cancel.
    let deadline = deadline_after(Instant::now(), grace);
    let drained = drain(&links.drains, deadline).await;
    unfinished.extend(drained.stuck.iter().map(|&i| Unfinished::Executor(i)));
    // Tasks queued at executors were fetched before those the Fetcher still held.
    let mut unstarted = drained.unstarted;
    unstarted.extend(held);

    // The Scheduler forwards the last acks; the source records them, then takes back what was
    // never started.
    let close_by = Instant::now() + CLOSE_WAIT;
    if timeout_at(close_by, links.flush.send(Flush)).await.is_err() {
        unfinished.push(Unfinished::Flush);
    }
    let closed = match timeout_at(close_by, links.close.send(CloseSource { unstarted })).await {
        Ok(closed) => closed,
        Err(_) => {
            unfinished.push(Unfinished::Close);
            links.abandon.do_send(Abandon);
            Ok(Ok(Vec::new()))
        }
    };

    stop_all(plan, &mut unfinished).await;
    let lost = links.counters.take_lost();
    let report = |handed_back| ShutdownReport {
        finished_during_drain: drained.finished,
        cancelled: drained.cancelled,
        handed_back,
        lost,
        executors_lost: drained.died,
        unfinished,
    };
    match closed {
        Ok(Ok(handed_back)) => {
            let report = report(handed_back);
            if report.lost.is_empty() && report.unfinished.is_empty() {
                tracing::debug!(
                    finished_during_drain = report.finished_during_drain,
                    cancelled = report.cancelled,
                    "shutdown complete"
                );
            } else {
                tracing::warn!(
                    lost = report.lost.len(),
                    executors_lost = ?report.executors_lost,
                    unfinished = ?report.unfinished,
                    "shutdown complete, but not everything ended cleanly"
                );
            }
            Ok(report)
        }
        Ok(Err(e)) => Err(ShutdownError::Source(e)),
        Err(_) => Err(ShutdownError::Source(SourceError::new(
            "the fetcher stopped early",
        ))),
    }
}

/// What the executors reported to their drains, summed.
struct Drained<T> {
    finished: usize,
    cancelled: usize,
    /// Tasks queued at executors, in executor order.
    unstarted: Vec<Task<T>>,
    /// Executors already gone: their reply channel closed unanswered.
    died: Vec<usize>,
    /// Executors that did not answer in time.
    stuck: Vec<usize>,
}

/// Asks every executor to drain until `deadline`; sums what they report. Executors report their
/// last `Done` before replying; one that is gone reported what it held as it died (see the
/// executor's `Drop`); one that does not answer by `deadline` + [`DRAIN_REPLY_WAIT`] (wall
/// clock: see [`real_sleep`]) is stuck.
async fn drain<T: Send + 'static>(drains: &[Recipient<Drain<T>>], deadline: Instant) -> Drained<T> {
    let replies: Vec<_> = drains
        .iter()
        .map(|exec| {
            let (reply, rx) = oneshot::channel();
            exec.do_send(Drain { deadline, reply });
            rx
        })
        .collect();
    let limit = async {
        tokio::time::sleep_until(deadline).await;
        real_sleep(DRAIN_REPLY_WAIT).await;
    };
    let mut out = Drained {
        finished: 0,
        cancelled: 0,
        unstarted: Vec::new(),
        died: Vec::new(),
        stuck: Vec::new(),
    };
    for (i, reply) in settle_by(replies, limit).await.into_iter().enumerate() {
        match reply {
            Some(Ok(report)) => {
                out.finished += report.finished;
                out.cancelled += report.cancelled;
                out.unstarted.extend(report.unstarted);
            }
            Some(Err(_)) => out.died.push(i),
            None => out.stuck.push(i),
        }
    }
    out
}

/// Stops every arbiter of the plan and waits, at most [`STOP_ALL_WAIT`] (wall clock), until
/// their threads have exited and every actor has been dropped; notes what did not.
async fn stop_all(plan: ShutdownPlan, unfinished: &mut Vec<Unfinished>) {
    let limit = real_sleep(STOP_ALL_WAIT).boxed().shared();
    // A thread blocked in a handler cannot be joined in time: each join runs on a thread of its
    // own, left to finish on its own if the wait runs out.
    let joins: Vec<_> = plan
        .arbiters
        .into_iter()
        .map(|arbiter| {
            arbiter.stop();
            let (tx, rx) = oneshot::channel();
            let joiner = std::thread::Builder::new()
                .name("actix-poller-join".into())
                .spawn(move || {
                    let _ = arbiter.join();
                    let _ = tx.send(());
                });
            if let Err(error) = joiner {
                tracing::warn!(%error, "could not start a thread to join an arbiter");
            }
            rx
        })
        .collect();
    for (i, joined) in settle_by(joins, limit.clone())
        .await
        .into_iter()
        .enumerate()
    {
        if !matches!(joined, Some(Ok(()))) {
            unfinished.push(Unfinished::Arbiter(i));
        }
    }
    let gone = settle_by(plan.actors_gone, limit).await;
    let alive = gone.iter().filter(|g| g.is_none()).count();
    if alive > 0 {
        unfinished.push(Unfinished::Actors(alive));
    }
}

/// Awaits every future of `futs` until `limit` ends; the outputs in order, `None` for those
/// that had not ended.
async fn settle_by<F: Future>(
    futs: Vec<F>,
    limit: impl Future<Output = ()>,
) -> Vec<Option<F::Output>> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut pending: FuturesUnordered<_> = futs
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.map(move |o| (i, o)))
        .collect();
    let mut limit = std::pin::pin!(limit);
    loop {
        match futures::future::select(pending.next(), limit.as_mut()).await {
            Either::Left((Some((i, o)), _)) => {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(o);
                }
            }
            Either::Left((None, _)) | Either::Right(_) => return out,
        }
    }
}

/// Sleeps `d` on the wall clock, for waits on other threads (executors on their arbiters,
/// arbiter threads exiting). Tokio's clock will not do there: a test that pauses it has it jump
/// ahead whenever this thread idles, which would end such a wait before the other thread could
/// answer. A timer thread sleeps instead; dropping the future wakes and ends it at once.
async fn real_sleep(d: Duration) {
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let (fire, fired) = oneshot::channel::<()>();
    let timer = std::thread::Builder::new()
        .name("actix-poller-timer".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(d) {
                let _ = fire.send(());
            }
        });
    match timer {
        Ok(_) => {
            let _cancel_on_drop = cancel;
            let _ = fired.await;
        }
        Err(_) => tokio::time::sleep(d).await,
    }
}
