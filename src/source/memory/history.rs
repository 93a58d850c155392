//! What the in-memory source remembers of tasks it no longer queues, for
//! [`Source::status`](crate::source::Source::status): the tasks it handed out and saw no final
//! ack for (running), and the last final states (a bounded ring).
//!
//! Cost per task: one insert and one removal in a map keyed by id with a multiplicative hash
//! (ids are sequential), and one push into the ring. A status lookup scans the ring (at most
//! its capacity) and the queues.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::task::{TaskId, TaskState, TaskStatus};

/// How many final states [`MemorySource::default`](super::MemorySource) keeps for
/// [`Source::status`](crate::source::Source::status).
pub const DEFAULT_HISTORY: usize = 10_000;

/// How long a final state is kept at most (an hour), whatever the count.
pub const DEFAULT_HISTORY_AGE: Duration = Duration::from_secs(3600);

/// Fibonacci hashing of a `u64` id: sequential ids spread over the whole hash.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A task handed out: when, and its attempt.
#[derive(Debug, Clone, Copy)]
struct Out {
    since_us: u64,
    enqueued_us: u64,
    attempt: u32,
    max_attempts: u32,
}

/// Final states kept: what it ended as, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Completed,
    Dead,
    Cancelled,
}

#[derive(Debug)]
struct Ended {
    id: u64,
    end: End,
    attempt: u32,
    max_attempts: u32,
    at_us: u64,
    enqueued_us: u64,
}

/// The running tasks and the last final states.
#[derive(Debug)]
pub(super) struct History {
    out: HashMap<u64, Out, BuildHasherDefault<IdHasher>>,
    /// The last error of tasks whose attempt failed and that will run again (bounded by the
    /// queue's capacity: each waits in the queue or runs).
    errors: HashMap<u64, String, BuildHasherDefault<IdHasher>>,
    ended: VecDeque<Ended>,
    capacity: usize,
    /// The longest a final state is kept, in µs (read on every `ended`).
    max_age_us: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            out: HashMap::default(),
            errors: HashMap::default(),
            ended: VecDeque::new(),
            capacity: DEFAULT_HISTORY,
            max_age_us: micros(DEFAULT_HISTORY_AGE),
        }
    }
}

pub(super) fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(u64::MAX as u128) as u64)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn time(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

impl History {
    /// Keeps at most `n` final states, none older than `max_age`.
    pub(super) fn bound(&mut self, n: usize, max_age: Duration) {
        self.capacity = n;
        self.max_age_us = micros(max_age);
        self.trim(micros_since_epoch(SystemTime::now()));
    }

    /// A task was handed out now.
    pub(super) fn handed_out(
        &mut self,
        id: TaskId,
        attempt: u32,
        max_attempts: u32,
        enqueued_us: u64,
        now_us: u64,
    ) {
        let out = Out {
            since_us: now_us,
            enqueued_us,
            attempt,
            max_attempts,
        };
        self.out.insert(id.0, out);
    }

    /// A handed-out task came back without a final state (retry, snooze, release, close).
    pub(super) fn back(&mut self, id: TaskId) {
        self.out.remove(&id.0);
    }

    /// A handed-out task failed and will run again.
    pub(super) fn failed(&mut self, id: TaskId, error: &str) {
        self.out.remove(&id.0);
        self.errors.insert(id.0, error.to_owned());
    }

    /// The last error of a task that will run again, if it failed before.
    pub(super) fn last_error(&self, id: TaskId) -> Option<String> {
        self.errors.get(&id.0).cloned()
    }

    /// A task reached a final state at `now` (µs since the Unix epoch, read once per batch of
    /// acks): `attempt` is its last attempt (0 if it never ran).
    pub(super) fn ended(&mut self, id: TaskId, end: End, attempt: u32, now: u64) {
        let out = self.out.remove(&id.0);
        if !self.errors.is_empty() {
            self.errors.remove(&id.0);
        }
        if self.capacity == 0 {
            return;
        }
        self.ended.push_back(Ended {
            id: id.0,
            end,
            attempt,
            max_attempts: out.map_or(attempt.max(1), |o| o.max_attempts),
            at_us: now,
            enqueued_us: out.map_or(0, |o| o.enqueued_us),
        });
        self.trim(now);
    }

    fn trim(&mut self, now_us: u64) {
        let oldest = now_us.saturating_sub(self.max_age_us);
        while self.ended.len() > self.capacity
            || self.ended.front().is_some_and(|e| e.at_us < oldest)
        {
            self.ended.pop_front();
        }
    }

    /// The status of a task handed out or ended, if remembered; `error` is the dead list's
    /// reason for a dead task.
    pub(super) fn status(
        &self,
        id: TaskId,
        error: impl FnOnce() -> Option<String>,
    ) -> Option<TaskStatus> {
        if let Some(out) = self.out.get(&id.0) {
            let state = TaskState::Running {
                since: Some(time(out.since_us)),
            };
            let mut status = TaskStatus::new(id, state);
            status.attempt = out.attempt;
            status.max_attempts = out.max_attempts;
            status.enqueued_at = Some(time(out.enqueued_us));
            status.last_error = self.last_error(id);
            return Some(status);
        }
        let e = self.ended.iter().rev().find(|e| e.id == id.0)?;
        let at = Some(time(e.at_us));
        let state = match e.end {
            End::Completed => TaskState::Completed { at },
            End::Dead => TaskState::Dead { at },
            End::Cancelled => TaskState::Cancelled { at },
        };
        let mut status = TaskStatus::new(id, state);
        status.attempt = e.attempt;
        status.max_attempts = e.max_attempts;
        status.enqueued_at = (e.enqueued_us > 0).then(|| time(e.enqueued_us));
        if e.end == End::Dead {
            status.last_error = error();
        }
        Some(status)
    }

    /// How many tasks are handed out.
    pub(super) fn running(&self) -> usize {
        self.out.len()
    }
}
