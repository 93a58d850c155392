//! Metrics (issue 13) through the [`metrics`](https://docs.rs/metrics) facade, behind the
//! `metrics` feature; without it every type here is empty and every call compiles to nothing.
//!
//! Every handle is registered once, when the poller is built ([`Metrics::new`], on the thread
//! that calls `start`), and labelled with the poller's name: the actors only bump handles, never
//! look a metric up by name. A recorder installed with `metrics::with_local_recorder` around
//! `start` therefore sees everything the poller's actors record, whichever thread they run on.
//! docs/observability.md ("Metrics") lists every name, type, unit and label.
//!
//! The hot path's cost (docs/benchmarks.md, "The `metrics` feature's overhead"): counters are
//! added once per executor report (`Done`: [`Tally`], [`Count::Started`]), not per attempt;
//! per attempt there are only the two histogram samples, and no clock read of their own: the
//! run time is the executor's `Finished::elapsed`, and the queue wait reads the instant the
//! executor takes as the attempt starts, turned into wall time by the executor's [`WallClock`].

#[cfg(feature = "metrics")]
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::source::Fetched;
#[cfg(feature = "metrics")]
use crate::task::Outcome;
use crate::task::{Finished, QueueCounts, Task};

/// Metric names (OpenTelemetry's messaging conventions where one fits, `actix_poller.*`
/// otherwise).
#[cfg(feature = "metrics")]
pub(crate) mod names {
    pub(crate) const SUBMITTED: &str = "messaging.client.sent.messages";
    pub(crate) const STARTED: &str = "messaging.client.consumed.messages";
    pub(crate) const ATTEMPTS: &str = "actix_poller.attempts";
    pub(crate) const RETRIED: &str = "actix_poller.tasks.retried";
    pub(crate) const DEAD: &str = "actix_poller.tasks.dead";
    pub(crate) const CANCELLED: &str = "actix_poller.tasks.cancelled";
    pub(crate) const LOST: &str = "actix_poller.tasks.lost";
    pub(crate) const DROPPED_SUBMITS: &str = "actix_poller.submits.dropped";
    pub(crate) const FETCH_ERRORS: &str = "actix_poller.fetch.errors";
    pub(crate) const ACK_ERRORS: &str = "actix_poller.ack.errors";
    pub(crate) const HEARTBEAT_ERRORS: &str = "actix_poller.heartbeat.errors";
    pub(crate) const EXECUTORS_LOST: &str = "actix_poller.executors.lost";
    pub(crate) const STOLEN: &str = "actix_poller.tasks.stolen";
    pub(crate) const BUSY: &str = "actix_poller.workers.busy";
    pub(crate) const LIMIT: &str = "actix_poller.workers.limit";
    pub(crate) const BUFFERED: &str = "actix_poller.tasks.buffered";
    pub(crate) const QUEUED: &str = "actix_poller.tasks.queued";
    pub(crate) const OLDEST: &str = "actix_poller.queue.oldest_age";
    pub(crate) const PENDING_ACKS: &str = "actix_poller.acks.pending";
    pub(crate) const LEASES: &str = "actix_poller.leases.held";
    pub(crate) const QUEUE_WAIT: &str = "actix_poller.queue.wait.duration";
    pub(crate) const PROCESS: &str = "messaging.process.duration";
    pub(crate) const OPERATION: &str = "messaging.client.operation.duration";
    pub(crate) const BATCH: &str = "messaging.batch.message_count";
}

/// The attempt outcomes, as the `outcome` label spells them (exclusive: every attempt counts
/// under exactly one).
#[cfg(feature = "metrics")]
const OUTCOMES: [&str; 8] = [
    "completed",
    "failed",
    "panicked",
    "timed_out",
    "aborted",
    "cancelled",
    "snoozed",
    "backpressured",
];

/// The index of an outcome in [`OUTCOMES`].
#[cfg(feature = "metrics")]
fn outcome_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Completed => 0,
        Outcome::Failed(_) => 1,
        Outcome::Panicked(_) => 2,
        Outcome::TimedOut(_) => 3,
        Outcome::Aborted(_) => 4,
        Outcome::Cancelled | Outcome::Interrupted => 5,
        Outcome::Snoozed(_) => 6,
        Outcome::Backpressured(_) => 7,
    }
}

/// The states the `state` label of the queued gauge takes, in [`QueueCounts`]' order.
#[cfg(feature = "metrics")]
const STATES: [&str; 5] = ["queued", "scheduled", "retrying", "running", "dead"];

/// One poller's metric handles.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Handles {
    submitted: ::metrics::Counter,
    started: ::metrics::Counter,
    attempts: [::metrics::Counter; 8],
    retried: ::metrics::Counter,
    dead: ::metrics::Counter,
    cancelled: ::metrics::Counter,
    lost: ::metrics::Counter,
    dropped_submits: ::metrics::Counter,
    fetch_errors: ::metrics::Counter,
    ack_errors: ::metrics::Counter,
    heartbeat_errors: ::metrics::Counter,
    executors_lost: ::metrics::Counter,
    stolen: ::metrics::Counter,
    busy: ::metrics::Gauge,
    limit: ::metrics::Gauge,
    buffered: ::metrics::Gauge,
    queued: [::metrics::Gauge; 5],
    oldest: ::metrics::Gauge,
    pending_acks: ::metrics::Gauge,
    leases: ::metrics::Gauge,
    queue_wait: ::metrics::Histogram,
    process: [::metrics::Histogram; 8],
    fetch: ::metrics::Histogram,
    ack: ::metrics::Histogram,
    batch: ::metrics::Histogram,
}

/// A poller's metrics: its registered handles with the feature, nothing without.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    handles: Option<Box<Handles>>,
}

#[cfg(feature = "metrics")]
impl Handles {
    fn new(name: &str, limit: usize) -> Handles {
        use ::metrics::{counter, gauge, histogram};
        let poller = ("poller", name.to_owned());
        let outcome_counters = OUTCOMES.map(|o| {
            counter!(
                names::ATTEMPTS,
                &[poller.clone(), ("outcome", o.to_owned())]
            )
        });
        let process = OUTCOMES
            .map(|o| histogram!(names::PROCESS, &[poller.clone(), ("outcome", o.to_owned())]));
        let queued =
            STATES.map(|s| gauge!(names::QUEUED, &[poller.clone(), ("state", s.to_owned())]));
        let operation = |op: &str| {
            histogram!(
                names::OPERATION,
                &[poller.clone(), ("messaging.operation.name", op.to_owned())]
            )
        };
        let p = std::slice::from_ref(&poller);
        let limit_gauge = gauge!(names::LIMIT, p);
        limit_gauge.set(limit as f64);
        Handles {
            limit: limit_gauge,
            submitted: counter!(names::SUBMITTED, p),
            started: counter!(names::STARTED, p),
            attempts: outcome_counters,
            retried: counter!(names::RETRIED, p),
            dead: counter!(names::DEAD, p),
            cancelled: counter!(names::CANCELLED, p),
            lost: counter!(names::LOST, p),
            dropped_submits: counter!(names::DROPPED_SUBMITS, p),
            fetch_errors: counter!(names::FETCH_ERRORS, p),
            ack_errors: counter!(names::ACK_ERRORS, p),
            heartbeat_errors: counter!(names::HEARTBEAT_ERRORS, p),
            executors_lost: counter!(names::EXECUTORS_LOST, p),
            stolen: counter!(names::STOLEN, p),
            busy: gauge!(names::BUSY, p),
            buffered: gauge!(names::BUFFERED, p),
            queued,
            oldest: gauge!(names::OLDEST, p),
            pending_acks: gauge!(names::PENDING_ACKS, p),
            leases: gauge!(names::LEASES, p),
            queue_wait: histogram!(names::QUEUE_WAIT, p),
            process,
            fetch: operation("receive"),
            ack: operation("settle"),
            batch: histogram!(names::BATCH, p),
        }
    }
}

/// Which counter a [`Metrics::count`] call bumps (the ones with no richer hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Submitted,
    /// Attempts started, added per executor report.
    Started,
    Cancelled,
    Dead,
    DroppedSubmits,
    HeartbeatErrors,
    ExecutorsLost,
    /// Queued tasks the Fetcher took back from an executor's queue (`Stats::stolen`).
    Stolen,
    Lost,
}

impl Metrics {
    /// Registers the poller's handles with the recorder in place now (the global one, or a
    /// local one set on this thread); sets the limit gauge.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str, limit: usize) -> Metrics {
        Metrics {
            #[cfg(feature = "metrics")]
            handles: Some(Box::new(Handles::new(name, limit))),
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn count(&self, which: Count, n: u64) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            let c = match which {
                Count::Submitted => &h.submitted,
                Count::Started => &h.started,
                Count::Cancelled => &h.cancelled,
                Count::Dead => &h.dead,
                Count::DroppedSubmits => &h.dropped_submits,
                Count::HeartbeatErrors => &h.heartbeat_errors,
                Count::ExecutorsLost => &h.executors_lost,
                Count::Stolen => &h.stolen,
                Count::Lost => &h.lost,
            };
            c.increment(n);
        }
    }

    /// An executor starts an attempt at `now` (the instant it read as the attempt began):
    /// records how long a first attempt waited since it became due (submitted, or its delay
    /// ran out; later attempts waited out a backoff, which says nothing about the queue).
    /// `wall` turns `now` into wall time without another clock read (the start itself is
    /// counted per report: [`Count::Started`]).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn started<T>(&self, task: &Task<T>, wall: &mut WallClock, now: Instant) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            if task.attempt == 1 {
                let due = match task.due_us {
                    0 => micros_since_epoch(task.enqueued_at),
                    us => us,
                };
                // A wall clock stepped back since reads as no wait.
                let waited = wall.micros_at(now).saturating_sub(due);
                h.queue_wait.record(waited as f64 / 1e6);
            }
        }
    }

    /// The Scheduler settled one executor report's attempts ([`Tally`]): `dead` of them went
    /// dead, `retried` will run again, `cancelled` were cancelled (or interrupted).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn settled(&self, tally: &Tally, dead: u64, retried: u64, cancelled: u64) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            for (c, n) in h.attempts.iter().zip(tally.attempts) {
                if n > 0 {
                    c.increment(n);
                }
            }
            for (c, n) in [
                (&h.dead, dead),
                (&h.retried, retried),
                (&h.cancelled, cancelled),
            ] {
                if n > 0 {
                    c.increment(n);
                }
            }
        }
    }

    /// Tasks running now (started − finished, as the Scheduler mirrors them).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn busy(&self, busy: u64) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            h.busy.set(busy as f64);
        }
    }

    /// The concurrency limit moved (an adaptive limiter, `PollerBuilder::adaptive`).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn limit(&self, limit: usize) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            h.limit.set(limit as f64);
        }
    }

    /// A fetch call landed after `clock` started.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn fetched<T, E>(&self, clock: &Stopwatch, res: &Result<Fetched<T>, E>) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            if let Some(took) = clock.duration() {
                h.fetch.record(took.as_secs_f64());
            }
            match res {
                Ok(fetched) => h.batch.record(fetched.tasks.len() as f64),
                Err(_) => h.fetch_errors.increment(1),
            }
        }
    }

    /// An ack call landed after `clock` started.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn acked<E>(&self, clock: &Stopwatch, res: &Result<(), E>) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            if let Some(took) = clock.duration() {
                h.ack.record(took.as_secs_f64());
            }
            if res.is_err() {
                h.ack_errors.increment(1);
            }
        }
    }

    /// The Fetcher's periodic sample: tasks buffered, acks not recorded, tasks held (leases,
    /// for a durable source), and the source's counts by state when it can count.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn sampled(&self, sample: &Sample) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            h.buffered.set(sample.buffered as f64);
            h.pending_acks.set(sample.pending_acks as f64);
            h.leases.set(sample.held as f64);
        }
    }

    /// The source's counts by state, and its oldest due task's age (0 when none is due).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn counted(&self, counts: &QueueCounts) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            let values = [
                counts.queued,
                counts.scheduled,
                counts.retrying,
                counts.running,
                counts.dead,
            ];
            for (g, v) in h.queued.iter().zip(values) {
                g.set(v as f64);
            }
            h.oldest.set(
                counts
                    .oldest_queued_age
                    .map_or(0.0, |age| age.as_secs_f64()),
            );
        }
    }

    /// Whether anything records: the Fetcher skips its sampling timer otherwise.
    pub(crate) fn enabled(&self) -> bool {
        #[cfg(feature = "metrics")]
        {
            self.handles.is_some()
        }
        #[cfg(not(feature = "metrics"))]
        {
            false
        }
    }
}

/// What the Fetcher samples for [`Metrics::sampled`].
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sample {
    /// Fetched, not started (`Stats::buffered`).
    pub(crate) buffered: u64,
    /// Acks the source has not recorded yet.
    pub(crate) pending_acks: u64,
    /// Tasks this poller holds: buffered, dispatched and not finished, or finished and not
    /// recorded (for a durable source, the leases it holds).
    pub(crate) held: u64,
}

/// A start time for a fetch or ack latency: an [`Instant`](std::time::Instant) with the
/// feature, nothing (and no clock read) without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl Stopwatch {
    /// Starts now.
    #[inline]
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }

    #[cfg(feature = "metrics")]
    fn duration(&self) -> Option<Duration> {
        Some(self.at.elapsed())
    }
}

/// One executor report's attempts by outcome, for [`Metrics::settled`]; each attempt's run time
/// is recorded as it is added. Empty without the feature.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    #[cfg(feature = "metrics")]
    attempts: [u64; 8],
}

impl Tally {
    /// Counts `fin`'s outcome, and records its run time (`elapsed` is the executor's own
    /// measure, which the adaptive limit reads too; zero for a task cancelled before it
    /// started, which never ran and records none).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn add(&mut self, metrics: &Metrics, fin: &Finished) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &metrics.handles {
            let i = outcome_index(&fin.outcome);
            if let Some(n) = self.attempts.get_mut(i) {
                *n += 1;
            }
            let never_ran = fin.elapsed.is_zero() && matches!(fin.outcome, Outcome::Cancelled);
            if let (false, Some(hist)) = (never_ran, h.process.get(i)) {
                hist.record(fin.elapsed.as_secs_f64());
            }
        }
    }
}

/// `t` in whole microseconds since the Unix epoch (0 before it).
#[cfg(feature = "metrics")]
fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An executor's link between the monotonic clock it reads anyway (an attempt's start) and
/// the wall clock a task's due time is on: one wall-clock read per second at most, instead of
/// one per attempt, and integer microseconds (one subtraction of instants per attempt). Empty
/// without the feature.
#[derive(Debug, Default)]
pub(crate) struct WallClock {
    #[cfg(feature = "metrics")]
    anchor: Option<(Instant, u64)>,
}

#[cfg(feature = "metrics")]
impl WallClock {
    /// How long an anchor serves: the wall clock may be slewed meanwhile, by far less than a
    /// queue wait's resolution matters (a step is seen at the next anchor).
    const REFRESH: Duration = Duration::from_secs(1);

    /// The wall clock at `now`, in µs since the Unix epoch.
    fn micros_at(&mut self, now: Instant) -> u64 {
        if let Some((instant, wall_us)) = self.anchor {
            let elapsed = now.saturating_duration_since(instant);
            if elapsed < Self::REFRESH {
                // Below a second: its microseconds are all in `subsec_micros`.
                return wall_us.saturating_add(u64::from(elapsed.subsec_micros()));
            }
        }
        let wall_us = micros_since_epoch(SystemTime::now());
        self.anchor = Some((now, wall_us));
        wall_us
    }
}
