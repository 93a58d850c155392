//! Acks: one ack call to the source at a time, what arrives meanwhile batched into the next;
//! a failed batch retried after a backoff, ahead of newer acks; trackers resolved once the
//! source holds a final state (`trackers.rs`); heartbeats that keep leases alive.

use actix::prelude::*;
use futures::FutureExt;
use tracing::Instrument;

use super::Fetcher;
use crate::messages::TaskEvent;
use crate::metrics::{Count, Stopwatch};
use crate::source::Source;
use crate::stats::Counters;
use crate::task::{Ack, Disposition, FinalState};
use crate::trace;

/// The most acks the source has not recorded yet (in flight, waiting, or failed and waiting for
/// their retry) before the Fetcher stops fetching: while a store refuses acks, new work would
/// only add to a backlog that lives in memory (and, for a durable source, to work that runs
/// again when leases expire). Fetching resumes once the backlog is below it.
pub(crate) const MAX_UNRECORDED_ACKS: usize = 10_000;

/// One ack call's batch, as the Fetcher remembers it until the call lands.
pub(super) struct AckBatch {
    /// How many acks the call carries.
    len: usize,
    /// Whether any sends a task back to the source (retry, snooze).
    requeue: bool,
    /// The acks themselves, to retry them or to resolve trackers and tell subscribers; `None`
    /// when the source's ack cannot fail and nobody listens (see `send_acks`).
    copy: Option<Vec<Ack>>,
}

/// Whether `S::ack` cannot fail: its error type is `Infallible`.
fn ack_is_infallible<T: Send + 'static, S: Source<T>>() -> bool {
    std::any::TypeId::of::<S::Error>() == std::any::TypeId::of::<std::convert::Infallible>()
}

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    pub(super) fn record_acks(&mut self, mut acks: Vec<Ack>, ctx: &mut Context<Self>) {
        if !self.source.can_requeue() {
            for ack in &mut acks {
                if matches!(
                    ack.disposition,
                    Disposition::Retry { .. } | Disposition::Snooze { .. }
                ) {
                    Counters::add(&self.counters.dead, 1);
                    self.counters.metrics.count(Count::Dead, 1);
                    ack.disposition = Disposition::Dead {
                        error: "asked to run again, but the source keeps no copy of a started \
                                task (turn retries on: PollerBuilder::retry)"
                            .into(),
                    };
                }
            }
        }
        self.unrecorded = self.unrecorded.saturating_add(acks.len());
        if self.acks_in_flight > 0 {
            // One ack call at a time: what arrives meanwhile goes in the next call, so a slow
            // store sees few large batches instead of a call per `Ready`.
            self.pending_acks.extend(acks);
            return;
        }
        self.send_acks(acks, ctx);
    }

    pub(super) fn send_acks(&mut self, acks: Vec<Ack>, ctx: &mut Context<Self>) {
        // The copy is what a failed call retries, and what tells trackers and subscribers the
        // final states once the source has recorded them. A source whose `ack` cannot fail (its
        // error type is `Infallible`: the in-memory one) needs none when nobody listens.
        let batch = AckBatch {
            len: acks.len(),
            requeue: acks.iter().any(|a| !a.disposition.is_final()),
            copy: (!ack_is_infallible::<T, S>()
                || !self.subscribers.is_empty()
                || !self.trackers.is_empty()
                || self.early.wanted())
            .then(|| acks.clone()),
        };
        let clock = Stopwatch::start();
        let span = trace::ack_span(acks.len());
        let mut fut = span.in_scope(|| self.source.ack(acks)).instrument(span);
        match (&mut fut).now_or_never() {
            Some(res) => {
                self.counters.metrics.acked(&clock, &res);
                self.acked(batch, res, ctx);
            }
            None => {
                self.acks_in_flight += 1;
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    act.acks_in_flight -= 1;
                    act.counters.metrics.acked(&clock, &res);
                    act.acked(batch, res, ctx);
                }));
            }
        }
    }

    /// An ack call landed. On success, trackers learn the final states the source now holds; on
    /// failure the batch is retried after a backoff (acks are what make a durable source's
    /// work final: dropping them would re-run completed tasks once their leases expire).
    pub(super) fn acked(
        &mut self,
        batch: AckBatch,
        res: Result<(), S::Error>,
        ctx: &mut Context<Self>,
    ) {
        let AckBatch { len, requeue, copy } = batch;
        let acks = copy.unwrap_or_default();
        match res {
            Ok(()) => {
                self.ack_failures = 0;
                let held_back = self.unrecorded >= MAX_UNRECORDED_ACKS;
                self.unrecorded = self.unrecorded.saturating_sub(len);
                if held_back && self.unrecorded < MAX_UNRECORDED_ACKS {
                    // Fetching stopped for the backlog: it may go on.
                    self.pump(ctx);
                }
                for sub in &self.subscribers {
                    for event in acks.iter().filter_map(TaskEvent::from_ack) {
                        sub.do_send(event);
                    }
                }
                if !self.trackers.is_empty() || self.early.wanted() {
                    for ack in &acks {
                        if let Some(state) = FinalState::from_ack(ack) {
                            self.resolve(ack.id, state);
                        }
                    }
                }
                // A task going back to the source (retry, snooze) may be due before anything
                // else wakes the Fetcher: now that the source has it, fetch again to learn the
                // next due time.
                if requeue {
                    self.wake(ctx);
                }
            }
            Err(error) => {
                Counters::add(&self.counters.ack_errors, 1);
                if self.closing || acks.len() < len {
                    // Closing; or no copy was kept, which happens only for a source whose ack
                    // cannot fail: nothing to retry.
                    self.unrecorded = self.unrecorded.saturating_sub(len);
                    tracing::error!(
                        %error,
                        acks = len,
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
                        // `CloseSource` may have taken this retry (and counted it out) while the
                        // timer was already due: actix cancels lazily, so the closure can still
                        // run. Whoever takes the handle counts the retry out, once.
                        if act.ack_retry.take().is_none() {
                            return;
                        }
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
    pub(super) fn send_pending_acks(&mut self, ctx: &mut Context<Self>) {
        if self.acks_in_flight == 0 && !self.pending_acks.is_empty() {
            let next = std::mem::take(&mut self.pending_acks);
            self.send_acks(next, ctx);
        }
    }

    /// Lets the source extend its leases. One heartbeat at a time: a slow store is not piled on.
    /// Heartbeats go on while a shutdown drains, until the source closes: tasks still running
    /// then (or whose acks have not landed) keep their leases however long the drain takes.
    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.closing || self.heartbeat_in_flight {
            return;
        }
        // The timer shares the Fetcher's mailbox and thread: a starved or blocked thread
        // delays it. A durable source's interval is a third of its lease, so a beat later than
        // its interval plus half a lease may come after some leases expired.
        let now = tokio::time::Instant::now();
        if let (Some(last), Some(every)) = (self.last_beat, self.source.heartbeat_interval()) {
            let late = now.saturating_duration_since(last).saturating_sub(every);
            if late > every.saturating_mul(3) / 2 {
                tracing::warn!(
                    ?late,
                    interval = ?every,
                    "heartbeat late by more than half a lease: the poller's thread is starved \
                     or blocked, and leases may expire"
                );
            }
        }
        self.last_beat = Some(now);
        self.heartbeat_in_flight = true;
        let span = trace::heartbeat_span();
        ctx.spawn(
            span.in_scope(|| self.source.heartbeat())
                .instrument(span)
                .into_actor(self)
                .map(|res, act, _ctx| {
                    act.heartbeat_in_flight = false;
                    if let Err(error) = res {
                        Counters::add(&act.counters.heartbeat_errors, 1);
                        act.counters.metrics.count(Count::HeartbeatErrors, 1);
                        tracing::warn!(%error, "heartbeat failed; leases may expire");
                    }
                }),
        );
    }

    /// Wakes a pending `CloseSource` once no ack and no enqueue is in flight.
    pub(super) fn notify_idle(&mut self) {
        if self.acks_in_flight == 0 && self.pending_enqueues == 0 {
            for tx in self.ack_idle.drain(..) {
                let _ = tx.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ack_is_infallible;
    use crate::source::memory::MemorySource;
    use crate::source::{Fetched, Source, WakeOn};
    use crate::task::Ack;
    use futures::future::LocalBoxFuture;
    use futures::FutureExt;

    struct Failing;

    impl Source<u8> for Failing {
        type Error = std::io::Error;

        fn fetch(
            &mut self,
            _max: usize,
        ) -> LocalBoxFuture<'static, Result<Fetched<u8>, Self::Error>> {
            async { Ok(Fetched::empty(WakeOn::default())) }.boxed_local()
        }

        fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Self::Error>> {
            async { Err(std::io::Error::other("refused")) }.boxed_local()
        }
    }

    /// Only a source whose ack cannot fail goes without the retry copy of its batches.
    #[test]
    fn only_an_infallible_ack_skips_the_retry_copy() {
        assert!(ack_is_infallible::<u8, MemorySource<u8>>());
        assert!(!ack_is_infallible::<u8, Failing>());
    }
}
