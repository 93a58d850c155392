//! Executors: run task futures, many at once, and report each attempt's end exactly once.
//!
//! An executor polls each attempt once as it starts, in a reused pinned box; one that ended
//! there (a short task) is reported by the driver without ever entering the running set, and
//! one still pending moves, in its box, into a [`FuturesUnordered`] that one driver future
//! polls, so a wake-up costs O(tasks that are ready), not O(tasks running) as one `ctx.spawn`
//! per task would (actix polls every spawned item on every wake). The driver collects every
//! attempt that ended during one wake and reports them in a single [`Done`].
//!
//! A handler is called inside `catch_unwind`, and its future polled inside one too: a panic
//! becomes [`Outcome::Panicked`] with its message; the executor and the credit survive.
//!
//! Each executor also keeps a short local queue of tasks dispatched ahead of credits. A task
//! starts only with a credit that came in an [`Execute`], or in the slot another task of this
//! executor just left: the slot changes hands without a round trip through the Scheduler and
//! the Fetcher, and the bound holds because no slot is ever created here. What it cannot use
//! goes back in the next [`Done`] (`freed`).
//!
//! That queue is shared with the Fetcher ([`LocalQueue`], its lock held only for a push or a
//! take): the Fetcher pushes tasks in, and takes them back from an executor that stopped
//! reporting (a handler blocks its thread) to run them elsewhere. Each task leaves the queue
//! exactly once, taken here or there; a thread blocked in a handler holds no lock, and the
//! blocked executor need not answer. The executor counts only
//! what it took (`Done::dequeued`); the Fetcher counts what it took back.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context as TaskCx, Poll, Waker};
use std::time::Duration;

use actix::prelude::*;
use futures::future::CatchUnwind;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::handler::{BoxError, TaskHandler};
use crate::messages::CancelOutcome;
use crate::metrics::{Count, WallClock};
use crate::protocol::{CancelRunning, Done, Drain, DrainReport, Execute, LocalQueue, ReturnPath};
use crate::shutdown::DropGuard;
use crate::stats::Counters;
use crate::task::{Abort, CancelBoard, Finished, Outcome, RetryAfter, Task, TaskContext, TaskId};
use crate::trace::{self, TraceConfig};

pin_project_lite::pin_project! {
    /// One attempt in flight; resolves to its [`Finished`] report and its span (in which the
    /// executor records the outcome).
    ///
    /// The timeout is a timer polled beside the task (no allocation). A forced cancel sets
    /// `killed` and wakes the task through the waker it was last polled with, so the set polls it
    /// once more and it ends as `Cancelled`; dropping it then drops the handler's future.
    struct Running<F> {
        id: TaskId,
        attempt: u32,
        max_attempts: u32,
        span: tracing::Span,
        timeout: Duration,
        killed: bool,
        waker: Option<Waker>,
        #[pin]
        deadline: Option<Sleep>,
        // When the attempt started (its latency, for an adaptive limit).
        began: Instant,
        // `None` once dropped: a future that ends by timeout or cancellation is dropped inside
        // `catch_unwind` too, so a panicking destructor cannot take the executor down.
        #[pin]
        fut: Option<CatchUnwind<AssertUnwindSafe<F>>>,
    }
}

impl<F, E> Future for Running<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = (Finished, tracing::Span);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<(Finished, tracing::Span)> {
        let this = self.project();
        let mut fut = this.fut;
        let outcome = if *this.killed {
            Outcome::Cancelled
        } else if let Some(running) = fut.as_mut().as_pin_mut() {
            let _entered = this.span.enter();
            match running.poll(cx) {
                Poll::Ready(Ok(Ok(()))) => Outcome::Completed,
                Poll::Ready(Ok(Err(e))) => classify(e.into()),
                Poll::Ready(Err(panic)) => Outcome::Panicked(panic_message(panic.as_ref())),
                Poll::Pending => {
                    if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *this.waker = Some(cx.waker().clone());
                    }
                    let Some(deadline) = this.deadline.as_pin_mut() else {
                        return Poll::Pending;
                    };
                    ready!(deadline.poll(cx));
                    Outcome::TimedOut(*this.timeout)
                }
            }
        } else {
            // Already dropped (a panicking destructor was reported): never polled again.
            return Poll::Pending;
        };
        // Ended: drop the handler's future here, where a panic in its destructor is caught.
        let dropped = catch_unwind(AssertUnwindSafe(|| fut.set(None)));
        let outcome = match dropped {
            Ok(()) => outcome,
            Err(panic) => Outcome::Panicked(format!(
                "panicked while dropped: {}",
                panic_message(panic.as_ref())
            )),
        };
        let fin = Finished {
            id: *this.id,
            attempt: *this.attempt,
            max_attempts: *this.max_attempts,
            outcome,
            elapsed: this.began.elapsed(),
        };
        Poll::Ready((fin, std::mem::replace(this.span, tracing::Span::none())))
    }
}

impl<F, E> Running<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    /// Polls the attempt once as it starts, so it begins its work now rather than after every
    /// other future the set has ready (when a cohort of timers fires, a slot would otherwise sit
    /// idle while the rest of the cohort ends). Its end, if this poll reached it: the attempt then
    /// never enters the running set (no node allocated for it); the driver reports it.
    fn poll_at_start(
        self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Option<(Finished, tracing::Span)> {
        match self.poll(cx) {
            Poll::Ready(ended) => Some(ended),
            Poll::Pending => None,
        }
    }
}

/// A pinned home for one attempt, reused from attempt to attempt: an attempt is polled there as
/// it starts, and only one still pending after that poll moves into the running set (the box
/// moves, not the pinned future).
type Slot<F> = Pin<Box<Option<Running<F>>>>;

/// An attempt in the running set: its slot, handed back with its end so the box is reused.
struct InSet<F>(Option<Slot<F>>);

impl<F> Unpin for InSet<F> {}

impl<F> InSet<F> {
    /// The attempt, until it ended.
    fn attempt(&self) -> Option<&Running<F>> {
        self.0
            .as_ref()
            .and_then(|slot| slot.as_ref().get_ref().as_ref())
    }

    fn attempt_mut(&mut self) -> Option<Pin<&mut Running<F>>> {
        self.0.as_mut().and_then(|slot| slot.as_mut().as_pin_mut())
    }
}

impl<F, E> Future for InSet<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = ((Finished, tracing::Span), Slot<F>);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(running) = this.attempt_mut() else {
            // Ended and handed back: the set never polls it again.
            return Poll::Pending;
        };
        let ended = ready!(running.poll(cx));
        let Some(mut slot) = this.0.take() else {
            return Poll::Pending;
        };
        // The handler's future is already dropped (inside `catch_unwind`); this drops the rest.
        slot.as_mut().set(None);
        Poll::Ready((ended, slot))
    }
}

/// A handler's error: a [`Backpressure`](crate::Backpressure) (or an error wrapping one)
/// pauses and snoozes, a [`RetryAfter`] snoozes, an [`Abort`] kills, anything else fails.
fn classify(error: BoxError) -> Outcome {
    if let Some(b) = crate::pace::Backpressure::find(error.as_ref()) {
        Outcome::Backpressured(b)
    } else if let Some(RetryAfter(after)) = error.downcast_ref::<RetryAfter>() {
        Outcome::Snoozed(*after)
    } else if let Some(Abort(reason)) = error.downcast_ref::<Abort>() {
        Outcome::Aborted(reason.clone())
    } else {
        Outcome::Failed(error.to_string())
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// At most this many boxes of ended attempts are kept for reuse per executor (see [`Slot`]).
const SPARE_SLOTS: usize = 256;

/// What every executor is told at start besides its links: the default per-attempt timeout and
/// the attempt spans' settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) timeout: Option<Duration>,
    pub(crate) trace: TraceConfig,
}

struct Draining<T> {
    reply: oneshot::Sender<DrainReport<T>>,
    report: DrainReport<T>,
}

pub(crate) struct Executor<T: Send + 'static, H: TaskHandler<T>> {
    index: usize,
    handler: H,
    /// The poller's name and the retry log level, for the attempt spans.
    trace: TraceConfig,
    /// Per-attempt timeout for tasks that set none.
    default_timeout: Option<Duration>,
    cancels: Rc<CancelBoard>,
    scheduler: Recipient<Done>,
    /// Attempts still pending after their first poll.
    running: FuturesUnordered<InSet<H::Future>>,
    /// Where the next attempt starts (see [`Slot`]), and boxes of ended attempts for reuse (at
    /// most [`SPARE_SLOTS`]).
    stage: Slot<H::Future>,
    spare: Vec<Slot<H::Future>>,
    /// Attempts that ended at their first poll, not yet reported: the driver takes them before
    /// the set's ends, each freeing its slot as a set's end does.
    ended_at_start: VecDeque<(Finished, tracing::Span)>,
    /// Tasks dispatched ahead: each starts with a credit from an `Execute`, or in a slot a task
    /// of this executor just left, unless the Fetcher steals it first (see the module docs).
    queue: Arc<LocalQueue<T>>,
    /// When a start brings the queue down to this length (half its length after the last
    /// refill), the executor reports at once rather than at the end of the wake, so the next
    /// refill is on its way while the rest still runs.
    low_water: usize,
    /// Reported at the low-water mark since the queue was last refilled above it (an `Execute`,
    /// or a take that finds the queue longer than the last one left it).
    asked: bool,
    /// The queue's length after this executor's last take (read with the take, one lock).
    left: usize,
    /// Ends not yet reported: flushed in one `Done` at the end of every wake, with the counts
    /// below.
    finished: Vec<Finished>,
    freed: u32,
    dequeued: u32,
    credits_used: u32,
    started: u64,
    /// Wall time from the attempts' start instants, for the queue-wait histogram.
    wall: WallClock,
    // Its flow is mirrored by the Scheduler from each `Done` (see `Done::started`); the
    // executor counts only its own loss (`Stats::executors_lost`, in `Drop`).
    counters: Arc<Counters>,
    draining: Option<Draining<T>>,
    /// Drained and replied: this executor stopped because a shutdown asked it to.
    retired: bool,
    /// Where what this executor holds goes if it dies (see the `Drop` impl).
    back: Arc<ReturnPath<T>>,
    _guard: DropGuard,
    _payload: std::marker::PhantomData<fn(T)>,
}

// The handler is never pinned in place and the task futures live in `FuturesUnordered`, which
// pins each one on the heap, so the executor may move freely; actix requires actors to be `Unpin`.
impl<T: Send, H: TaskHandler<T>> Unpin for Executor<T, H> {}

impl<T: Send, H: TaskHandler<T>> fmt::Debug for Executor<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("index", &self.index)
            .field("running", &self.running.len())
            .field("queued", &self.queue.len())
            .field("draining", &self.draining.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Executor<T, H> {
    pub(crate) fn new(
        index: usize,
        handler: H,
        settings: Settings,
        scheduler: Recipient<Done>,
        counters: Arc<Counters>,
        back: Arc<ReturnPath<T>>,
        guard: DropGuard,
    ) -> Self {
        let Settings {
            timeout: default_timeout,
            trace,
        } = settings;
        Executor {
            index,
            handler,
            trace,
            default_timeout,
            cancels: Rc::default(),
            scheduler,
            running: FuturesUnordered::new(),
            stage: Box::pin(None),
            spare: Vec::new(),
            ended_at_start: VecDeque::new(),
            queue: Arc::new(LocalQueue::new(Arc::clone(&counters))),
            low_water: 0,
            asked: false,
            left: 0,
            finished: Vec::new(),
            freed: 0,
            dequeued: 0,
            credits_used: 0,
            started: 0,
            wall: WallClock::default(),
            counters,
            draining: None,
            retired: false,
            back,
            _guard: guard,
            _payload: std::marker::PhantomData,
        }
    }

    /// This executor's queue, for the Fetcher.
    pub(crate) fn queue(&self) -> Arc<LocalQueue<T>> {
        Arc::clone(&self.queue)
    }

    /// The next queued task, unless draining (a drain starts nothing new).
    fn next_queued(&mut self) -> Option<Task<T>> {
        if self.draining.is_some() {
            return None;
        }
        let (task, left) = self.queue.take_counted();
        if task.is_some() && left >= self.left {
            // The Fetcher refilled the queue since the last take, while this wake still runs
            // (tasks that end at their first poll can keep one wake going through many
            // refills): re-arm the low-water report for the refill, as `Execute` would. Else
            // the ends after the first report wait for the queue to run dry, and the
            // executor sleeps a round trip to the System thread at every refill (cpu, issue 14).
            self.low_water = left.div_ceil(2);
            self.asked = false;
        }
        self.left = left;
        let task = task?;
        self.dequeued += 1;
        Some(task)
    }

    /// Empties the queue (what the Fetcher has not stolen), counting each task dequeued.
    fn take_queue(&mut self) -> Vec<Task<T>> {
        let tasks = self.queue.take_up_to(usize::MAX);
        self.dequeued += tasks.len() as u32;
        tasks
    }

    /// A slot is free: a queued task takes it over, or it goes back to the Scheduler. `cx` is
    /// the driver's when called from it (see [`Running::poll_at_start`]).
    fn fill_slot(&mut self, cx: &mut TaskCx<'_>) {
        let mut next = self.next_queued();
        while let Some(task) = next {
            if self.start(task, cx) {
                return;
            }
            // It ended at once (its handler panicked when called): the slot is free again.
            next = self.next_queued();
        }
        self.freed += 1;
    }

    /// Starts one attempt in a slot this executor holds, and polls it once. `false` when its
    /// handler panicked when called (the attempt ended without a future).
    fn start(&mut self, mut task: Task<T>, poll_cx: &mut TaskCx<'_>) -> bool {
        self.started += 1;
        // One clock read: the attempt's start (its run time, for an adaptive limit and the
        // run-time histogram), its deadline, and its queue wait (the `metrics` feature).
        let now = Instant::now();
        self.counters.metrics.started(&task, &mut self.wall, now);
        let parent = task.trace.take();
        let span = trace::attempt_span(
            &self.trace,
            task.id,
            task.attempt,
            self.index,
            parent.as_deref(),
        );
        drop(parent);
        let timeout = task.timeout.or(self.default_timeout);
        // A timeout too long to represent as an instant (`Duration::MAX`) is no timeout.
        let deadline = timeout.and_then(|t| now.checked_add(t));
        let cx = TaskContext::new(&task, self.index, deadline, Rc::clone(&self.cancels));
        let (id, attempt, max_attempts) = (task.id, task.attempt, task.max_attempts);
        let called = {
            let _entered = span.enter();
            catch_unwind(AssertUnwindSafe(|| self.handler.call(task.payload, cx)))
        };
        match called {
            Ok(fut) => {
                self.stage.as_mut().set(Some(Running {
                    id,
                    attempt,
                    max_attempts,
                    span,
                    timeout: timeout.unwrap_or_default(),
                    killed: false,
                    waker: None,
                    deadline: deadline.map(tokio::time::sleep_until),
                    began: now,
                    fut: Some(AssertUnwindSafe(fut).catch_unwind()),
                }));
                let ended = self
                    .stage
                    .as_mut()
                    .as_pin_mut()
                    .and_then(|r| r.poll_at_start(poll_cx));
                if let Some(ended) = ended {
                    self.stage.as_mut().set(None);
                    self.ended_at_start.push_back(ended);
                } else {
                    // Still pending: it moves into the set, in its box; the next starts in another.
                    let next = self.spare.pop().unwrap_or_else(|| Box::pin(None));
                    let slot = std::mem::replace(&mut self.stage, next);
                    self.running.push(InSet(Some(slot)));
                }
                true
            }
            Err(panic) => {
                let fin = Finished {
                    id,
                    attempt,
                    max_attempts,
                    outcome: Outcome::Panicked(panic_message(panic.as_ref())),
                    elapsed: Duration::ZERO,
                };
                trace::attempt_ended(&span, &fin, self.trace.retry_level);
                self.finished.push(fin);
                false
            }
        }
    }

    /// Records one attempt's end, on its span too. Once cancellation was requested, any end but
    /// success counts as `Cancelled`.
    fn finished(&mut self, mut fin: Finished, span: &tracing::Span) {
        if self.cancels.is_cancelled(fin.id) && fin.outcome != Outcome::Completed {
            fin.outcome = Outcome::Cancelled;
        }
        trace::attempt_ended(span, &fin, self.trace.retry_level);
        self.cancels.forget(fin.id);
        self.finished.push(fin);
    }

    /// The grace after a cancel request passed: drop the task if it still runs.
    fn kill(&mut self, id: TaskId, attempt: u32) {
        for r in Pin::new(&mut self.running).iter_pin_mut() {
            let Some(mut r) = r.get_mut().attempt_mut() else {
                continue;
            };
            if r.id == id && r.attempt == attempt {
                let this = r.as_mut().project();
                *this.killed = true;
                if let Some(w) = this.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Reports every end, freed slot and dequeued task since the last flush, in one message.
    fn flush(&mut self) {
        if self.finished.is_empty()
            && self.freed == 0
            && self.dequeued == 0
            && self.credits_used == 0
        {
            return;
        }
        let finished = std::mem::take(&mut self.finished);
        if let Some(d) = &mut self.draining {
            d.report.finished += finished.len();
        }
        self.scheduler.do_send(Done {
            executor: self.index,
            finished,
            freed: std::mem::take(&mut self.freed),
            dequeued: std::mem::take(&mut self.dequeued),
            credits_used: std::mem::take(&mut self.credits_used),
            // Counted by the Scheduler with the ends, so `Stats::busy` never reads past the limit.
            started: u32::try_from(std::mem::take(&mut self.started)).unwrap_or(u32::MAX),
        });
    }

    /// During a drain: once nothing runs, reply and stop.
    fn finish_drain_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_empty() && self.ended_at_start.is_empty() {
            self.flush();
            if let Some(d) = self.draining.take() {
                self.retired = true;
                // The shutdown stopped waiting (this executor answered too late: a handler
                // blocked its thread): its unstarted tasks go back the way a dead executor's do.
                if let Err(report) = d.reply.send(d.report) {
                    self.back.send(self.index, report.unstarted, Vec::new(), 0);
                }
                ctx.stop();
            }
        }
    }

    /// The drain deadline passed: drop what still runs (dropping a future cancels it). A task
    /// whose cancellation was requested ends `Cancelled`; the others were only interrupted, and
    /// go back to their source (`Outcome::Interrupted`).
    fn cancel_all(&mut self, ctx: &mut Context<Self>) {
        // Ended already: reported as they are (a drain starts nothing, so their slots are freed).
        while let Some((fin, span)) = self.ended_at_start.pop_front() {
            self.finished(fin, &span);
            self.freed += 1;
        }
        self.flush();
        let cancelled = self.ends_of_running();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.running.clear())) {
            tracing::error!(
                executor = self.index,
                panic = panic_message(panic.as_ref()),
                "a task future panicked while dropped at the drain deadline"
            );
        }
        let dropped = cancelled.len() as u32;
        if let Some(d) = &mut self.draining {
            d.report.cancelled += cancelled.len();
            tracing::warn!(
                executor = self.index,
                cancelled = cancelled.len(),
                "drain deadline passed; cancelling running tasks"
            );
        }
        if !cancelled.is_empty() {
            self.scheduler.do_send(Done {
                executor: self.index,
                finished: cancelled,
                freed: dropped,
                ..Done::default()
            });
        }
        self.finish_drain_if_idle(ctx);
    }
}

/// An executor dropped while it holds tasks died under the poller: its arbiter stopped (the
/// actix `System` stopping does that), or its actor panicked outside a task. Nothing it held
/// vanishes: the attempts that ended are reported, the running ones end `Interrupted` (their
/// futures are dropped; the source takes them back where it keeps a copy) and their slots go
/// back to the Scheduler, and the tasks it never started go back to the Fetcher, which stops
/// sending it work. An executor that a shutdown drained holds nothing and is not counted lost.
impl<T: Send + 'static, H: TaskHandler<T>> Drop for Executor<T, H> {
    fn drop(&mut self) {
        if !self.retired {
            Counters::add(&self.counters.executors_lost, 1);
            self.counters.metrics.count(Count::ExecutorsLost, 1);
        }
        // A drain's reply channel closes only at the end, after the last `Done` and the tasks
        // went out: the shutdown, seeing it closed, then finds them where they went.
        let (reply, mut unstarted) = match self.draining.take() {
            Some(d) => (Some(d.reply), d.report.unstarted),
            None => (None, Vec::new()),
        };
        unstarted.extend(self.take_queue());
        // Ended at their first poll and not yet reported: their ends as they are, slots freed.
        while let Some((fin, span)) = self.ended_at_start.pop_front() {
            self.finished(fin, &span);
            self.freed += 1;
        }
        let ended = self.ends_of_running();
        let interrupted: Vec<TaskId> = ended
            .iter()
            .filter(|f| f.outcome == Outcome::Interrupted)
            .map(|f| f.id)
            .collect();
        if self.retired && unstarted.is_empty() && ended.is_empty() {
            self.flush();
            drop(reply);
            return;
        }
        tracing::error!(
            executor = self.index,
            running = ended.len(),
            queued = unstarted.len(),
            "executor stopped without a shutdown; taking its tasks back"
        );
        self.freed += ended.len() as u32;
        self.finished.extend(ended);
        self.flush();
        self.back.send(self.index, unstarted, interrupted, 0);
        drop(reply);
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Executor<T, H> {
    /// The ends of the tasks still running, about to be dropped: `Cancelled` if their
    /// cancellation was requested, else `Interrupted` (they go back to their source).
    fn ends_of_running(&self) -> Vec<Finished> {
        let cancels = &self.cancels;
        let ends: Vec<Finished> = Pin::new(&self.running)
            .iter_pin_ref()
            .filter_map(|r| r.get_ref().attempt())
            .map(|r| {
                let fin = Finished {
                    id: r.id,
                    attempt: r.attempt,
                    max_attempts: r.max_attempts,
                    outcome: if cancels.is_cancelled(r.id) {
                        Outcome::Cancelled
                    } else {
                        Outcome::Interrupted
                    },
                    elapsed: r.began.elapsed(),
                };
                trace::attempt_ended(&r.span, &fin, self.trace.retry_level);
                fin
            })
            .collect();
        for fin in &ends {
            cancels.forget(fin.id);
        }
        ends
    }
}

/// Polls the executor's task set; the only item the executor ever spawns.
struct Driver;

impl<T: Send + 'static, H: TaskHandler<T>> ActorFuture<Executor<T, H>> for Driver {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Executor<T, H>,
        ctx: &mut Context<Executor<T, H>>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<()> {
        loop {
            let (fin, span) = if let Some(ended) = act.ended_at_start.pop_front() {
                ended
            } else if let Poll::Ready(Some((ended, slot))) = act.running.poll_next_unpin(cx) {
                if act.spare.len() < SPARE_SLOTS {
                    act.spare.push(slot);
                }
                ended
            } else {
                break;
            };
            act.finished(fin, &span);
            act.fill_slot(cx);
            if !act.asked && act.dequeued > 0 && act.left <= act.low_water {
                act.asked = true;
                act.flush();
            }
        }
        act.flush();
        if act.draining.is_some() {
            act.finish_drain_if_idle(ctx);
        }
        // Never ready: new tasks arrive through `Execute`, after which actix polls us again.
        Poll::Pending
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Actor for Executor<T, H> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(Driver);
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Handler<Execute<T>> for Executor<T, H> {
    type Result = ();

    fn handle(&mut self, mut msg: Execute<T>, ctx: &mut Self::Context) {
        // The tasks are in the queue already; their count matters only if undelivered.
        let (_tasks, credits) = msg.take();
        if ctx.state() != ActorState::Running {
            // Handled while the actor is being torn down (its arbiter stopped): start nothing.
            // The queued tasks stay, and `Drop` sends them back; the credits go back unused.
            self.credits_used += credits;
            self.freed += credits;
            return;
        }
        if self.draining.is_some() {
            // Dispatched before the drain began (the Fetcher stops first, so this should not
            // happen): never started, so handed back.
            let unstarted = self.take_queue();
            if let Some(d) = &mut self.draining {
                d.report.unstarted.extend(unstarted);
            }
        }
        let queued = self.queue.len();
        if queued > 0 {
            self.low_water = queued / 2;
            self.asked = false;
        }
        self.credits_used += credits;
        // No task context in a handler: the first poll registers a no-op waker, and the
        // set's own poll (the driver runs right after this handler) registers the real one.
        let mut cx = TaskCx::from_waker(futures::task::noop_waker_ref());
        for _ in 0..credits {
            self.fill_slot(&mut cx);
        }
        // The driver runs after this handler (actix polls items after the mailbox) and flushes.
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Handler<CancelRunning> for Executor<T, H> {
    type Result = MessageResult<CancelRunning>;

    fn handle(&mut self, msg: CancelRunning, ctx: &mut Self::Context) -> Self::Result {
        // A task queued here and not started is the Fetcher's to cancel: it takes the queues
        // back before it asks the executors (see its `Cancel` handler).
        let attempt = Pin::new(&self.running)
            .iter_pin_ref()
            .filter_map(|r| r.get_ref().attempt())
            .find(|r| r.id == msg.id)
            .map(|r| r.attempt)
            // Ended at its first poll, not reported yet: its end counts as cancelled unless it
            // succeeded, as for one still running.
            .or_else(|| {
                self.ended_at_start
                    .iter()
                    .find(|(f, _)| f.id == msg.id)
                    .map(|(f, _)| f.attempt)
            });
        let Some(attempt) = attempt else {
            return MessageResult(CancelOutcome::NotFound);
        };
        tracing::debug!(task = %msg.id, grace = ?msg.grace, "cancelling a running task");
        self.cancels.request(msg.id);
        let id = msg.id;
        ctx.run_later(msg.grace, move |act, _ctx| act.kill(id, attempt));
        MessageResult(CancelOutcome::Signalled)
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Handler<Drain<T>> for Executor<T, H> {
    type Result = ();

    fn handle(&mut self, msg: Drain<T>, ctx: &mut Self::Context) {
        // The reply travels on its own channel, not as this handler's response: the executor
        // stops right after replying, and a response future would be dropped with it. Queued
        // tasks never started: they go back with the report.
        let unstarted = self.take_queue();
        self.draining = Some(Draining {
            reply: msg.reply,
            report: DrainReport {
                unstarted,
                ..DrainReport::default()
            },
        });
        let delay = msg
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        ctx.run_later(delay, |act, ctx| act.cancel_all(ctx));
        self.finish_drain_if_idle(ctx);
    }
}
