//! Executors: run task futures, many at once, and report each attempt's end exactly once.
//!
//! An executor keeps its running tasks in a [`FuturesUnordered`] that one driver future polls,
//! so a wake-up costs O(tasks that are ready), not O(tasks running) as one `ctx.spawn` per task
//! would (actix polls every spawned item on every wake). The driver collects every attempt that
//! ended during one wake and reports them in a single [`Done`].
//!
//! A handler is called inside `catch_unwind`, and its future polled inside one too: a panic
//! becomes [`Outcome::Panicked`] with its message; the executor and the credit survive.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context as TaskCx, Poll, Waker};
use std::time::Duration;

use actix::prelude::*;
use futures::future::CatchUnwind;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::messages::{CancelRunning, Done, Drain, DrainReport, Execute};
use crate::poller::DropGuard;
use crate::task::{Abort, CancelBoard, Finished, Outcome, RetryAfter, Task, TaskContext, TaskId};

/// The error type handlers may return: anything that converts into a boxed error (`String`,
/// `&str`, `std::io::Error`, `anyhow::Error`, your own error types, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What runs a task: an async function of the payload and a [`TaskContext`].
///
/// Implemented for every `Fn(T, TaskContext) -> impl Future<Output = Result<(), E>>` where
/// `E: Into<BoxError>`. The future need not be `Send`: an executor polls its tasks on its own
/// arbiter thread, so per-executor state may be an `Rc` (see
/// [`PollerBuilder::start_with`](crate::PollerBuilder::start_with)).
///
/// # Examples
///
/// ```
/// use actix_poller::{TaskContext, TaskHandler};
///
/// async fn resize(path: String, cx: TaskContext) -> Result<(), std::io::Error> {
///     println!("task {} attempt {}: {path}", cx.id(), cx.attempt());
///     Ok(())
/// }
///
/// fn takes_handler<H: TaskHandler<String>>(_h: H) {}
/// takes_handler(resize);
/// ```
pub trait TaskHandler<T>: 'static {
    /// The handler's error.
    type Error: Into<BoxError>;
    /// The future one call returns.
    type Future: Future<Output = Result<(), Self::Error>> + 'static;

    /// Runs one attempt of `task`.
    fn call(&self, task: T, cx: TaskContext) -> Self::Future;
}

impl<T, F, Fut, E> TaskHandler<T> for F
where
    F: Fn(T, TaskContext) -> Fut + 'static,
    Fut: Future<Output = Result<(), E>> + 'static,
    E: Into<BoxError>,
{
    type Error = E;
    type Future = Fut;

    fn call(&self, task: T, cx: TaskContext) -> Fut {
        self(task, cx)
    }
}

pin_project_lite::pin_project! {
    /// One attempt in flight; resolves to its [`Finished`] report.
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
        #[pin]
        fut: CatchUnwind<AssertUnwindSafe<F>>,
    }
}

impl<F, E> Future for Running<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Finished;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Finished> {
        let this = self.project();
        let outcome = if *this.killed {
            Outcome::Cancelled
        } else {
            let _entered = this.span.enter();
            match this.fut.poll(cx) {
                Poll::Ready(Ok(Ok(()))) => Outcome::Completed,
                Poll::Ready(Ok(Err(e))) => classify(e.into()),
                Poll::Ready(Err(panic)) => Outcome::Panicked(panic_message(panic.as_ref())),
                Poll::Pending => {
                    if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *this.waker = Some(cx.waker().clone());
                    }
                    if let Some(deadline) = this.deadline.as_pin_mut() {
                        ready!(deadline.poll(cx));
                        return Poll::Ready(Finished {
                            id: *this.id,
                            attempt: *this.attempt,
                            max_attempts: *this.max_attempts,
                            outcome: Outcome::TimedOut(*this.timeout),
                        });
                    }
                    return Poll::Pending;
                }
            }
        };
        Poll::Ready(Finished {
            id: *this.id,
            attempt: *this.attempt,
            max_attempts: *this.max_attempts,
            outcome,
        })
    }
}

/// A handler's error: a [`RetryAfter`] snoozes, an [`Abort`] kills, anything else fails.
fn classify(error: BoxError) -> Outcome {
    if let Some(RetryAfter(after)) = error.downcast_ref::<RetryAfter>() {
        Outcome::Snoozed(*after)
    } else if let Some(Abort(reason)) = error.downcast_ref::<Abort>() {
        Outcome::Aborted(reason.clone())
    } else {
        Outcome::Failed(error.to_string())
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

struct Draining {
    reply: oneshot::Sender<DrainReport>,
    report: DrainReport,
}

pub(crate) struct Executor<T: 'static, H: TaskHandler<T>> {
    index: usize,
    handler: H,
    /// Per-attempt timeout for tasks that set none.
    default_timeout: Option<Duration>,
    cancels: Rc<CancelBoard>,
    scheduler: Recipient<Done>,
    running: FuturesUnordered<Running<H::Future>>,
    /// Ends not yet reported: flushed in one `Done` at the end of every wake.
    finished: Vec<Finished>,
    draining: Option<Draining>,
    _guard: DropGuard,
    _payload: std::marker::PhantomData<fn(T)>,
}

// The handler is never pinned in place and the task futures live in `FuturesUnordered`, which
// pins each one on the heap, so the executor may move freely; actix requires actors to be `Unpin`.
impl<T, H: TaskHandler<T>> Unpin for Executor<T, H> {}

impl<T, H: TaskHandler<T>> fmt::Debug for Executor<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("index", &self.index)
            .field("running", &self.running.len())
            .field("draining", &self.draining.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Executor<T, H> {
    pub(crate) fn new(
        index: usize,
        handler: H,
        default_timeout: Option<Duration>,
        scheduler: Recipient<Done>,
        guard: DropGuard,
    ) -> Self {
        Executor {
            index,
            handler,
            default_timeout,
            cancels: Rc::default(),
            scheduler,
            running: FuturesUnordered::new(),
            finished: Vec::new(),
            draining: None,
            _guard: guard,
            _payload: std::marker::PhantomData,
        }
    }

    fn start(&mut self, task: Task<T>) {
        let span = tracing::info_span!("task", id = task.id.0, attempt = task.attempt);
        let timeout = task.timeout.or(self.default_timeout);
        let deadline = timeout.map(|t| Instant::now() + t);
        let cx = TaskContext::new(&task, self.index, deadline, Rc::clone(&self.cancels));
        let (id, attempt, max_attempts) = (task.id, task.attempt, task.max_attempts);
        let called = {
            let _entered = span.enter();
            catch_unwind(AssertUnwindSafe(|| self.handler.call(task.payload, cx)))
        };
        match called {
            Ok(fut) => self.running.push(Running {
                id,
                attempt,
                max_attempts,
                span,
                timeout: timeout.unwrap_or_default(),
                killed: false,
                waker: None,
                deadline: deadline.map(tokio::time::sleep_until),
                fut: AssertUnwindSafe(fut).catch_unwind(),
            }),
            Err(panic) => self.finished.push(Finished {
                id,
                attempt,
                max_attempts,
                outcome: Outcome::Panicked(panic_message(panic.as_ref())),
            }),
        }
    }

    /// Records one attempt's end. Once cancellation was requested, any end but success counts
    /// as `Cancelled`.
    fn finished(&mut self, mut fin: Finished) {
        if self.cancels.is_cancelled(fin.id) && fin.outcome != Outcome::Completed {
            fin.outcome = Outcome::Cancelled;
        }
        self.cancels.forget(fin.id);
        self.finished.push(fin);
    }

    /// The grace after a cancel request passed: drop the task if it still runs.
    fn kill(&mut self, id: TaskId, attempt: u32) {
        for mut r in Pin::new(&mut self.running).iter_pin_mut() {
            if r.id == id && r.attempt == attempt {
                let this = r.as_mut().project();
                *this.killed = true;
                if let Some(w) = this.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Reports every end collected since the last flush, in one message.
    fn flush(&mut self) {
        if self.finished.is_empty() {
            return;
        }
        let finished = std::mem::take(&mut self.finished);
        if let Some(d) = &mut self.draining {
            d.report.finished += finished.len();
        }
        self.scheduler.do_send(Done {
            executor: self.index,
            finished,
        });
    }

    /// During a drain: once nothing runs, reply and stop.
    fn finish_drain_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_empty() {
            self.flush();
            if let Some(d) = self.draining.take() {
                let _ = d.reply.send(d.report);
                ctx.stop();
            }
        }
    }

    /// The drain deadline passed: drop what still runs (dropping a future cancels it). A task
    /// whose cancellation was requested ends `Cancelled`; the others were only interrupted, and
    /// go back to their source (`Outcome::Interrupted`).
    fn cancel_all(&mut self, ctx: &mut Context<Self>) {
        self.flush();
        let cancels = &self.cancels;
        let cancelled: Vec<Finished> = Pin::new(&self.running)
            .iter_pin_ref()
            .map(|r| r.get_ref())
            .map(|r| Finished {
                id: r.id,
                attempt: r.attempt,
                max_attempts: r.max_attempts,
                outcome: if cancels.is_cancelled(r.id) {
                    Outcome::Cancelled
                } else {
                    Outcome::Interrupted
                },
            })
            .collect();
        for fin in &cancelled {
            self.cancels.forget(fin.id);
        }
        self.running.clear();
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
            });
        }
        self.finish_drain_if_idle(ctx);
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
        while let Poll::Ready(Some(fin)) = act.running.poll_next_unpin(cx) {
            act.finished(fin);
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

    fn handle(&mut self, msg: Execute<T>, _ctx: &mut Self::Context) {
        for task in msg.tasks {
            self.start(task);
        }
        // The driver runs after this handler (actix polls items after the mailbox) and flushes.
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Handler<CancelRunning> for Executor<T, H> {
    type Result = bool;

    fn handle(&mut self, msg: CancelRunning, ctx: &mut Self::Context) -> bool {
        let attempt = Pin::new(&self.running)
            .iter_pin_ref()
            .find(|r| r.get_ref().id == msg.id)
            .map(|r| r.get_ref().attempt);
        let Some(attempt) = attempt else {
            return false;
        };
        tracing::debug!(task = %msg.id, grace = ?msg.grace, "cancelling a running task");
        self.cancels.request(msg.id);
        let id = msg.id;
        ctx.run_later(msg.grace, move |act, _ctx| act.kill(id, attempt));
        true
    }
}

impl<T: Send + 'static, H: TaskHandler<T>> Handler<Drain> for Executor<T, H> {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) {
        // The reply travels on its own channel, not as this handler's response: the executor
        // stops right after replying, and a response future would be dropped with it.
        self.draining = Some(Draining {
            reply: msg.reply,
            report: DrainReport::default(),
        });
        let delay = msg
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        ctx.run_later(delay, |act, ctx| act.cancel_all(ctx));
        self.finish_drain_if_idle(ctx);
    }
}
