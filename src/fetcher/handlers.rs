//! The messages the Fetcher answers besides `Ready` and `Notify`: submits (and the enqueue
//! they run), cancel, dead tasks, progress, and the shutdown's `StopFetching` / `CloseSource`.

use std::any::Any;
use std::ops::Range;
use std::sync::Arc;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio::sync::{oneshot, watch};

use super::{Fetcher, Phase};
use crate::error::{SourceError, SubmitError};
use crate::messages::{
    Cancel, CancelOutcome, GetCounts, GetProgress, GetStatus, ListDead, PurgeDead, Receipt,
    RerunDead, Submit, SubmitBatch,
};
use crate::metrics::Count;
use crate::protocol::{CancelRunning, CloseSource, StopFetching};
use crate::source::memory::MemorySource;
use crate::source::{NewBatch, NewTask, Source};
use crate::stats::Counters;
use crate::task::{
    Ack, DeadTask, Disposition, FinalState, Progress, QueueCounts, Task, TaskId, TaskOptions,
    TaskState, TaskStatus,
};
use crate::trace::Parent;

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    /// Turns an enqueue's result into receipts, registering trackers.
    fn enqueued(
        &mut self,
        res: Result<Ids, SubmitError<Vec<T>>>,
        track: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Vec<Receipt>, SubmitError<Vec<T>>> {
        let ids = res?;
        let n = ids.len() as u64;
        Counters::add(&self.counters.submitted, n);
        self.counters.metrics.count(Count::Submitted, n);
        let mut receipt = |id| {
            if !track {
                return Receipt::untracked(id);
            }
            let (done, rx) = oneshot::channel();
            let (progress, progress_rx) = watch::channel(Progress::default());
            self.track(id, done, progress);
            Receipt::tracked(id, rx, progress_rx)
        };
        let receipts = match ids {
            Ids::Run(run) => run.map(TaskId).map(&mut receipt).collect(),
            Ids::List(ids) => ids.into_iter().map(&mut receipt).collect(),
        };
        self.counters.set_queued(self.source.queued());
        self.wake(ctx);
        Ok(receipts)
    }

    fn submit(
        &mut self,
        tasks: Vec<T>,
        track: bool,
        options: TaskOptions,
        parent: Option<Arc<Parent>>,
        ctx: &mut Context<Self>,
    ) -> Answer<Self, Result<Vec<Receipt>, SubmitError<Vec<T>>>> {
        if self.phase != Phase::Running {
            return Answer::Now(Err(SubmitError::Closed(tasks)));
        }
        let attempts = self.default_attempts;
        // One `NewTask` of options for the whole batch: the source stores the payloads as they
        // are (the in-memory source) or makes its own tasks of them.
        let shared = NewTask::with_options((), options, attempts).with_parent(parent);
        let batch = NewBatch::new(tasks, shared);
        // The in-memory source (the default) answers its ids as a run: the receipts are then
        // the only list a large batch makes (issue 14's peak memory).
        let source: &mut dyn Any = &mut self.source;
        if let Some(memory) = source.downcast_mut::<MemorySource<T>>() {
            let res = memory.enqueue_run(batch).map(Ids::Run);
            return Answer::Now(self.enqueued(res, track, ctx));
        }
        let mut fut = self.source.enqueue_batch(batch);
        if let Some(res) = (&mut fut).now_or_never() {
            return Answer::Now(self.enqueued(res.map(Ids::from), track, ctx));
        }
        self.pending_enqueues += 1;
        // A tracked task may finish before this reply is handled: keep what finishes meanwhile.
        let seq = track.then(|| self.early.begin());
        Answer::Later(Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            act.pending_enqueues -= 1;
            let out = act.enqueued(res.map(Ids::from), track, ctx);
            if let Some(seq) = seq {
                act.early.end(seq);
            }
            act.notify_idle();
            out
        })))
    }
}

/// The ids of an enqueue's tasks, in order: a run (`first..end`) or a list.
enum Ids {
    Run(Range<u64>),
    List(Vec<TaskId>),
}

impl Ids {
    fn len(&self) -> usize {
        match self {
            Ids::Run(run) => (run.end - run.start) as usize,
            Ids::List(ids) => ids.len(),
        }
    }
}

impl From<Vec<TaskId>> for Ids {
    /// A run if the ids are consecutive (a source's sequence, often): the list is freed
    /// before the receipts are made, so a large batch does not hold both.
    fn from(ids: Vec<TaskId>) -> Self {
        let consecutive = ids
            .windows(2)
            .all(|w| w[0].0.checked_add(1) == Some(w[1].0));
        match (consecutive, ids.first(), ids.last()) {
            (true, Some(first), Some(last)) if last.0 < u64::MAX => Ids::Run(first.0..last.0 + 1),
            _ => Ids::List(ids),
        }
    }
}

/// A submit's answer: now (no allocation) or when an asynchronous enqueue lands.
enum Answer<A: Actor, R> {
    Now(R),
    Later(ResponseActFuture<A, R>),
}

impl<A: Actor<Context = Context<A>>, R: 'static> Answer<A, R> {
    fn map<U: 'static>(self, f: impl FnOnce(R) -> U + 'static) -> Answer<A, U> {
        match self {
            Answer::Now(r) => Answer::Now(f(r)),
            Answer::Later(fut) => Answer::Later(Box::pin(fut.map(move |r, _, _| f(r)))),
        }
    }
}

/// The reply to a submit message. Unlike actix's own responses it notices an answer no one
/// hears (the message came by `do_send` or `try_send`, or the sender stopped waiting): a
/// refused task would vanish silently there, so it is logged and counted
/// (`Stats::dropped_submits`) instead. `None` is a source that broke the `enqueue` contract:
/// no answer can be built, the sender sees the message as undelivered.
pub(crate) struct SubmitReply<A: Actor, R> {
    answer: Answer<A, Option<R>>,
    counters: Arc<Counters>,
}

impl<T: Send + 'static, S: Source<T>, X: 'static, Y: 'static, M> MessageResponse<Fetcher<T, S>, M>
    for SubmitReply<Fetcher<T, S>, Result<X, SubmitError<Y>>>
where
    M: Message<Result = Result<X, SubmitError<Y>>>,
{
    fn handle(self, ctx: &mut Context<Fetcher<T, S>>, tx: Option<OneshotSender<M::Result>>) {
        let counters = self.counters;
        match self.answer {
            Answer::Now(r) => deliver(r, tx, &counters),
            Answer::Later(fut) => {
                ctx.spawn(fut.map(move |r, _, _| deliver(r, tx, &counters)));
            }
        }
    }
}

/// Hands a submit's answer to its sender; a refusal no one hears is logged and counted.
fn deliver<X, Y>(
    answer: Option<Result<X, SubmitError<Y>>>,
    tx: Option<OneshotSender<Result<X, SubmitError<Y>>>>,
    counters: &Counters,
) {
    let Some(answer) = answer else {
        return;
    };
    let unheard = match tx {
        Some(tx) => tx.send(answer).err(),
        None => Some(answer),
    };
    if let Some(Err(refused)) = unheard {
        Counters::add(&counters.dropped_submits, 1);
        counters.metrics.count(Count::DroppedSubmits, 1);
        tracing::error!(
            error = %refused,
            "a submit was refused but its sender did not wait for the answer (do_send, \
             try_send, or a dropped request): the task is lost; use `send` to get it back"
        );
    }
}

/// The [`Source::enqueue`] contract (one id per task, or every task back), checked where a batch
/// of one becomes one. A source that breaks it gets no answer built (and an error logged).
fn one<V>(mut batch: Vec<V>) -> Option<V> {
    if batch.len() != 1 {
        tracing::error!(
            got = batch.len(),
            "Source::enqueue broke its contract: it must answer one id per task, or hand every \
             task back"
        );
    }
    batch.pop()
}

impl<T: Send + 'static, S: Source<T>> Handler<Submit<T>> for Fetcher<T, S> {
    type Result = SubmitReply<Self, Result<Receipt, SubmitError<T>>>;

    fn handle(&mut self, mut msg: Submit<T>, ctx: &mut Self::Context) -> Self::Result {
        let task = msg.task.take();
        // A batch of one in, a batch of one out.
        let answer = self
            .submit(vec![task], msg.track, msg.options, msg.parent, ctx)
            .map(|r| match r {
                Ok(receipts) => one(receipts).map(Ok),
                Err(e) => match e {
                    SubmitError::Full(t) => one(t).map(SubmitError::Full),
                    SubmitError::Closed(t) => one(t).map(SubmitError::Closed),
                    SubmitError::Unsupported(t) => one(t).map(SubmitError::Unsupported),
                    SubmitError::Source { task, error } => {
                        one(task).map(|task| SubmitError::Source { task, error })
                    }
                    SubmitError::Unknown => Some(SubmitError::Unknown),
                }
                .map(Err),
            });
        SubmitReply {
            answer,
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<SubmitBatch<T>> for Fetcher<T, S> {
    type Result = SubmitReply<Self, Result<Vec<Receipt>, SubmitError<Vec<T>>>>;

    fn handle(&mut self, mut msg: SubmitBatch<T>, ctx: &mut Self::Context) -> Self::Result {
        let tasks = msg.tasks.take();
        let answer = self
            .submit(tasks, msg.track, msg.options, msg.parent, ctx)
            .map(Some);
        SubmitReply {
            answer,
            counters: Arc::clone(&self.counters),
        }
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
        // Fetches in flight land in the buffer; the last one to land replies, or the timer
        // below if they take too long (what they bring later goes back at close).
        let (tx, rx) = oneshot::channel();
        self.stop_reply = Some(tx);
        ctx.run_later(crate::shutdown::STOP_FETCHING_WAIT, |act, _ctx| {
            if act.stop_reply.is_some() {
                tracing::warn!(
                    fetches = act.in_flight,
                    "fetches still in flight when fetching stopped; their tasks go back at close"
                );
            }
            act.reply_stopped();
        });
        ActorResponse::r#async(
            actix::fut::wrap_future::<_, Self>(rx).map(|r, _, _| r.unwrap_or_default()),
        )
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<CloseSource<T>> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<Vec<Task<T>>, SourceError>>;

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
        // Tasks that came back from a lost executor after fetching stopped go back too.
        let mut unstarted = msg.unstarted;
        unstarted.extend(self.buffer.drain(..));
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
                // Every unstarted task went back to the source (or the report): none is held.
                act.counters
                    .buffered
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                ctx.stop();
                res.map_err(SourceError::new)
            }),
        )
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Cancel> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, SourceError>>;

    fn handle(&mut self, msg: Cancel, ctx: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        if self.cancel_unstarted(id, ctx) {
            return Box::pin(actix::fut::ready(Ok(CancelOutcome::Dequeued)));
        }
        let running = self.cancel_running.clone();
        let grace = self.cancel_grace;
        Box::pin(
            self.source
                .cancel(id)
                .into_actor(self)
                .then(move |res, act, ctx| {
                    let answer: LocalBoxFuture<'static, _> = match res {
                        Err(e) => Box::pin(futures::future::ready(Err(SourceError::new(e)))),
                        Ok(true) => {
                            Counters::add(&act.counters.cancelled, 1);
                            act.counters.metrics.count(Count::Cancelled, 1);
                            act.counters.set_queued(act.source.queued());
                            act.resolve(id, FinalState::Cancelled);
                            Box::pin(futures::future::ready(Ok(CancelOutcome::Dequeued)))
                        }
                        // Dispatched while the source was asked (a fetch in flight had it).
                        Ok(false) if act.cancel_unstarted(id, ctx) => {
                            Box::pin(futures::future::ready(Ok(CancelOutcome::Dequeued)))
                        }
                        // Not waiting: maybe running on one of the executors.
                        Ok(false) => Box::pin(async move {
                            let asks = running.iter().map(|e| e.send(CancelRunning { id, grace }));
                            // Running there: signalled.
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

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    /// Cancels task `id` if it is fetched and not started: buffered, or queued at an executor
    /// (the queues are taken back first; what else was there is dispatched again). Leased
    /// from the source, so the source hears it as an ack.
    fn cancel_unstarted(&mut self, id: TaskId, ctx: &mut Context<Self>) -> bool {
        let mut took = false;
        if self.phase == Phase::Running && !self.buffer.iter().any(|t| t.id == id) {
            for i in 0..self.queues.len() {
                let back = self.steal_from(i, usize::MAX);
                took |= !back.is_empty();
                self.unsteal(back);
            }
        }
        let found = self
            .buffer
            .iter()
            .position(|t| t.id == id)
            .and_then(|pos| self.buffer.remove(pos));
        let Some(task) = found else {
            if took {
                self.pump(ctx);
            }
            return false;
        };
        Counters::add(&self.counters.cancelled, 1);
        self.counters.metrics.count(Count::Cancelled, 1);
        let ack = Ack {
            id,
            attempt: task.attempt,
            disposition: Disposition::Cancelled,
        };
        self.record_acks(vec![ack], ctx);
        self.pump(ctx);
        true
    }
}

/// Runs a source operation whose error becomes a [`SourceError`].
fn source_op<T: Send + 'static, S: Source<T>, R: 'static>(
    act: &mut Fetcher<T, S>,
    fut: LocalBoxFuture<'static, Result<R, S::Error>>,
) -> ResponseActFuture<Fetcher<T, S>, Result<R, SourceError>> {
    Box::pin(
        fut.into_actor(act)
            .map(|res, _, _| res.map_err(SourceError::new)),
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

impl<T: Send + 'static, S: Source<T>> Handler<GetStatus> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<Option<TaskStatus>, SourceError>>;

    /// The source's answer, with the progress of a tracked task this poller runs.
    fn handle(&mut self, msg: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        let fut = self.source.status(msg.id);
        Box::pin(source_op(self, fut).map(move |res, act, _| {
            res.map(|status| {
                status.map(|mut status| {
                    if matches!(status.state, TaskState::Running { .. }) {
                        status.progress = act
                            .trackers
                            .get(&msg.id)
                            .map(|t| t.progress.borrow().clone());
                    }
                    status
                })
            })
        }))
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<GetCounts> for Fetcher<T, S> {
    type Result = ResponseActFuture<Self, Result<Option<QueueCounts>, SourceError>>;

    fn handle(&mut self, _msg: GetCounts, _ctx: &mut Self::Context) -> Self::Result {
        let fut = self.source.counts();
        Box::pin(source_op(self, fut).map(|res, act, _ctx| {
            if let Ok(Some(counts)) = &res {
                act.counted(counts);
            }
            res
        }))
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
