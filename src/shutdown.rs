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

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Recipient;
use actix_rt::Arbiter;
use tokio::sync::oneshot;

use crate::error::{ShutdownError, SourceError};
use crate::protocol::{BeginShutdown, CloseSource, Drain, Flush, StopFetching};
use crate::task::Task;

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
    /// instead and hands back none.
    pub handed_back: Vec<Task<T>>,
}

/// The addresses the drain sequence talks to, kept by the handle.
pub(crate) struct ShutdownLinks<T: Send + 'static> {
    pub(crate) begin: Recipient<BeginShutdown>,
    pub(crate) stop_fetching: Recipient<StopFetching<T>>,
    pub(crate) drains: Vec<Recipient<Drain<T>>>,
    pub(crate) flush: Recipient<Flush>,
    pub(crate) close: Recipient<CloseSource<T>>,
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

    // Phase 1: no fetch starts, nothing more is dispatched.
    let held = links
        .stop_fetching
        .send(StopFetching(PhantomData))
        .await
        .unwrap_or_default();

    // Phase 2: drain until the deadline, then cancel.
    let deadline = tokio::time::Instant::now() + grace;
    let (finished_during_drain, cancelled, mut unstarted) = drain(&links.drains, deadline).await;
    // Tasks queued at executors were fetched before those the Fetcher still held.
    unstarted.extend(held);

    // The Scheduler forwards the last acks; the source records them, then takes back what was
    // never started.
    let _ = links.flush.send(Flush).await;
    let closed = links.close.send(CloseSource { unstarted }).await;

    stop_all(plan).await;
    tracing::debug!(finished_during_drain, cancelled, "shutdown complete");

    match closed {
        Ok(Ok(handed_back)) => Ok(ShutdownReport {
            finished_during_drain,
            cancelled,
            handed_back,
        }),
        Ok(Err(e)) => Err(ShutdownError::Source(e)),
        Err(_) => Err(ShutdownError::Source(SourceError::new(
            "the fetcher stopped early",
        ))),
    }
}

/// Asks every executor to drain until `deadline`; sums what they report: (finished, cancelled,
/// unstarted tasks in executor order). Executors report their last `Done` before replying.
async fn drain<T: Send + 'static>(
    drains: &[Recipient<Drain<T>>],
    deadline: tokio::time::Instant,
) -> (usize, usize, Vec<Task<T>>) {
    let replies: Vec<_> = drains
        .iter()
        .map(|exec| {
            let (reply, rx) = oneshot::channel();
            exec.do_send(Drain { deadline, reply });
            rx
        })
        .collect();
    let (mut finished, mut cancelled, mut unstarted) = (0, 0, Vec::new());
    for report in futures::future::join_all(replies)
        .await
        .into_iter()
        .flatten()
    {
        finished += report.finished;
        cancelled += report.cancelled;
        unstarted.extend(report.unstarted);
    }
    (finished, cancelled, unstarted)
}

/// Stops and joins every arbiter of the plan, then waits until every actor has been dropped.
async fn stop_all(plan: ShutdownPlan) {
    for arbiter in plan.arbiters {
        arbiter.stop();
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
    }
    for gone in plan.actors_gone {
        let _ = gone.await;
    }
}
