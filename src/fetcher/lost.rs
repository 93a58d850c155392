//! Executors that die under the poller (their arbiter stopped, their actor panicked outside a
//! task): the Fetcher stops sending them work, takes back the tasks they never started, spends
//! their unspent credits elsewhere, and counts lost what was running there when the source
//! keeps no copy of it. Also the shutdown's last resort when the source does not close in time.

use actix::prelude::*;

use super::Fetcher;
use crate::protocol::{Abandon, Orphans};
use crate::source::Source;

impl<T: Send + 'static, S: Source<T>> Handler<Orphans<T>> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, mut msg: Orphans<T>, ctx: &mut Self::Context) {
        let i = msg.executor;
        if let Some(dead) = self.dead.get_mut(i) {
            if !*dead {
                *dead = true;
                tracing::error!(executor = i, "executor lost; no more work goes to it");
            }
        }
        // Its books no longer matter: what it held comes back in this message (tasks, unspent
        // credits) and in its last `Done` (ends, slots). No room is kept for it either, so the
        // Fetcher fetches nothing on its behalf.
        for books in [
            &mut self.assigned,
            &mut self.queued,
            &mut self.covered,
            &mut self.ahead_target,
        ] {
            if let Some(n) = books.get_mut(i) {
                *n = 0;
            }
        }
        self.credits += msg.credits as usize;
        if self.source.can_requeue() {
            // Their `Interrupted` ends come through the Scheduler as releases: the source runs
            // them again (or hands them back at shutdown).
            msg.interrupted.clear();
        } else {
            msg.interrupted_are_lost();
        }
        // What it took out of its queue, then what is still there (pushed before the Fetcher
        // knew; nothing is pushed there any more). Fetched before anything still buffered:
        // back at the front, in their order.
        let mut back = std::mem::take(&mut msg.unstarted);
        if let Some(queue) = self.queues.get(i) {
            back.extend(queue.take_up_to(usize::MAX));
        }
        for task in back.into_iter().rev() {
            self.pace_returned(&task);
            self.buffer.push_front(task);
        }
        if self.dead.iter().all(|d| *d) {
            tracing::error!("every executor is lost: no task runs until shutdown hands them back");
        }
        self.pump(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Abandon> for Fetcher<T, S> {
    type Result = ();

    /// The shutdown gave up waiting for the source to close: stop now. Dropping the actor drops
    /// the source and its call in flight; trackers learn the poller shut down.
    fn handle(&mut self, _msg: Abandon, ctx: &mut Self::Context) {
        self.trackers.clear();
        ctx.stop();
    }
}
