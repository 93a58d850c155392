//! Pace control in the Fetcher: "may this task start now?" (per-key concurrency and rate
//! limits, the global rate limit, pauses), without head-of-line blocking: a buffered task whose
//! key may not start yet stays in the buffer, in its place, while tasks behind it pass.
//!
//! A task counts for its key from the moment it is dispatched (with a credit: while pace is
//! active nothing is queued ahead at an executor) until its ack comes back in a `Ready`, or it
//! comes back unstarted from an executor that died.

use actix::prelude::*;
use tokio::time::Instant;

use super::Fetcher;
use crate::messages::{Pause, PauseKey, Resume, ResumeKey};
use std::time::Duration;

use crate::pace::{Backpressure, Key, PauseScope, Verdict};
use crate::source::Source;
use crate::task::{Ack, Task, TaskId};

/// At most this many buffered tasks that may not start yet are held beyond the buffer's usual
/// bound (`credits + prefetch`), so other keys' tasks can be fetched past them. Beyond it the
/// Fetcher fetches nothing more until some of them start: memory stays bounded.
pub(crate) const PARKED_LIMIT: usize = 4096;

impl<T: Send + 'static, S: Source<T>> Fetcher<T, S> {
    /// The first buffered task that may start now, taken out of the buffer and counted as
    /// started. `None` when none may; then the earliest instant one may is remembered for
    /// [`arm_pace_timer`](Self::arm_pace_timer).
    pub(super) fn take_startable(&mut self, now: Instant) -> Option<Task<T>> {
        if self.pace.is_idle() {
            self.parked = 0;
            return self.buffer.pop_front();
        }
        self.pace.expire(now);
        // What holds every task (a pause of the poller, the global rate) first: one check.
        let found = match self.pace.check(None, now) {
            Verdict::Go => (0..self.buffer.len()).find(|&i| {
                match self.pace.check(self.buffer[i].key.as_ref(), now) {
                    Verdict::Go => true,
                    Verdict::Until(at) => {
                        self.pace_next = Some(self.pace_next.map_or(at, |n| n.min(at)));
                        false
                    }
                    Verdict::Blocked => false,
                }
            }),
            Verdict::Until(at) => {
                self.pace_next = Some(self.pace_next.map_or(at, |n| n.min(at)));
                None
            }
            Verdict::Blocked => None,
        };
        let Some(i) = found else {
            self.parked = self.buffer.len();
            return None;
        };
        self.parked = i;
        let task = self.buffer.remove(i)?;
        self.pace.start(task.key.as_ref(), now);
        if let Some(key) = &task.key {
            if self.pace.counts(key) {
                self.pace_keys.insert(task.id, key.clone());
            }
        }
        Some(task)
    }

    /// Buffered tasks that may not start yet and do not count against the buffer's bound.
    pub(super) fn parked(&self) -> usize {
        self.parked.min(PARKED_LIMIT).min(self.buffer.len())
    }

    /// Wakes the Fetcher when the earliest rate-limited or paused task may start.
    pub(super) fn arm_pace_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(at) = self.pace_next.take() else {
            return;
        };
        if let Some((t, h)) = self.pace_timer {
            if t <= at {
                return;
            }
            ctx.cancel_future(h);
        }
        let delay = at.saturating_duration_since(Instant::now());
        let h = ctx.run_later(delay, |act, ctx| {
            act.pace_timer = None;
            act.pump(ctx);
        });
        self.pace_timer = Some((at, h));
    }

    /// A `Ready`'s backpressure answers (read before its acks: the running task's key is known
    /// until its ack lands) and acks (their tasks no longer run).
    pub(super) fn pace_ready(
        &mut self,
        pauses: Vec<(TaskId, Backpressure)>,
        acks: &[Ack],
        now: Instant,
    ) {
        for (id, b) in pauses {
            let key = self
                .pace_keys
                .get(&id)
                .cloned()
                .or_else(|| self.keys_of.get(&id).cloned());
            match (b.scope(), key) {
                (PauseScope::Key, Some(key)) => {
                    tracing::info!(%key, after = ?b.duration(), "key paused by backpressure");
                    self.pause_scope(Some(key), Some(b.duration()), now);
                }
                _ => {
                    tracing::info!(after = ?b.duration(), "poller paused by backpressure");
                    self.pause_scope(None, Some(b.duration()), now);
                }
            }
        }
        if self.pace_keys.is_empty() && self.keys_of.is_empty() {
            return;
        }
        for ack in acks {
            self.keys_of.remove(&ack.id);
            if let Some(key) = self.pace_keys.remove(&ack.id) {
                self.pace.end(&key);
            }
        }
    }

    /// Pauses the whole poller (`key = None`) or one key: in the source's store when it keeps
    /// pauses shared by every poller on it (PostgreSQL's queue-wide pace), else here.
    fn pause_scope(&mut self, key: Option<Key>, duration: Option<Duration>, now: Instant) {
        match self.source.store_pause(key.clone(), duration) {
            Some(stored) => spawn_stored("pause", key, stored),
            None => match key {
                Some(key) => self.pace.pause_key(key, duration, now),
                None => self.pace.pause(duration, now),
            },
        }
    }

    /// Resumes the whole poller (`key = None`) or one key, in the store or here (as
    /// [`pause_scope`](Self::pause_scope)).
    fn resume_scope(&mut self, key: Option<Key>) {
        match self.source.store_resume(key.clone()) {
            Some(stored) => spawn_stored("resume", key, stored),
            None => match key {
                Some(key) => self.pace.resume_key(&key),
                None => self.pace.resume(),
            },
        }
    }

    /// `task` came back unstarted (its executor died): it no longer counts for its key.
    pub(super) fn pace_returned(&mut self, task: &Task<T>) {
        self.keys_of.remove(&task.id);
        if let Some(key) = self.pace_keys.remove(&task.id) {
            self.pace.end(&key);
        }
    }

    /// Remembers the key of a task dispatched while pace is idle, so a backpressure answer
    /// can pause its key.
    pub(super) fn note_key(&mut self, task: &Task<T>) {
        if let Some(key) = &task.key {
            if !self.pace_keys.contains_key(&task.id) {
                self.keys_of.insert(task.id, key.clone());
            }
        }
    }
}

/// Runs a stored pause or resume; a failure is logged (the caller sent a message and waits for
/// no answer).
fn spawn_stored<E: std::fmt::Display + 'static>(
    what: &'static str,
    key: Option<Key>,
    stored: futures::future::LocalBoxFuture<'static, Result<(), E>>,
) {
    actix::spawn(async move {
        match stored.await {
            Ok(()) => tracing::info!(what, key = ?key, "stored for every poller on the queue"),
            Err(error) => tracing::error!(what, key = ?key, %error, "could not store it"),
        }
    });
}

impl<T: Send + 'static, S: Source<T>> Handler<Pause> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, msg: Pause, ctx: &mut Self::Context) {
        self.pause_scope(None, msg.duration, Instant::now());
        self.pump(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<Resume> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, _msg: Resume, ctx: &mut Self::Context) {
        self.resume_scope(None);
        self.pump(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<PauseKey> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, msg: PauseKey, ctx: &mut Self::Context) {
        self.pause_scope(Some(msg.key), msg.duration, Instant::now());
        self.pump(ctx);
    }
}

impl<T: Send + 'static, S: Source<T>> Handler<ResumeKey> for Fetcher<T, S> {
    type Result = ();

    fn handle(&mut self, msg: ResumeKey, ctx: &mut Self::Context) {
        self.resume_scope(Some(msg.key));
        self.pump(ctx);
    }
}
