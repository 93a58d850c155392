//! The self-tuning prefetch: how many tasks the Fetcher fetches ahead of its free slots when the
//! builder did not set [`prefetch`](crate::PollerBuilder::prefetch).
//!
//! Little's law: to keep every slot busy while a fetch is on its way, the Fetcher must hold what
//! the workers finish during a fetch round trip, throughput × fetch latency. The tuned prefetch
//! is twice that (one round trip in flight, one of margin), from two measurements:
//!
//! * the **fetch latency**: a moving average of the time from a `fetch` call to its answer (0
//!   for a source that answers at once, like the in-memory one: it needs no prefetch);
//! * the **throughput**: a moving average of the tasks the executors finished per second,
//!   sampled over windows of at least [`WINDOW`] in which some task finished, spanning only
//!   time when tasks ran or the source was not known empty (an idle poller keeps its last
//!   figure, so a burst after a pause starts tuned).
//!
//! Starved of prefetch, the workers still finish at least half of what they could (or the
//! fetch takes longer than a task), so 2 × the measured throughput × latency is at least the full
//! throughput × latency: the estimate climbs to what keeps every slot busy within a few windows.
//!
//! Bounded twice: by memory, at [`max_for`] (8 per worker, between 1 024 and 10 000 tasks), and for
//! a source with leases (one that asks for heartbeats), so that the buffer is what the workers
//! finish in one heartbeat interval at most: a task never waits unstarted long enough to risk
//! its lease even if a heartbeat fails.

use std::time::Duration;

use tokio::time::Instant;

/// The shortest window over which a throughput sample is taken.
pub(crate) const WINDOW: Duration = Duration::from_millis(10);

/// The tuned prefetch never exceeds this many tasks per worker…
const PER_WORKER: usize = 8;
/// …nor this many in all, however many workers…
const MAX_TASKS: usize = 10_000;
/// …and may always reach this many: a few workers fed by a slow source, or a fast one whose
/// every call costs a round trip and a statement (a durable source: at K = 16, PostgreSQL
/// drains 1.4 × faster with 1 024 than with 8 per worker, its server spending 16 instead of
/// 21 µs per task; issue 14). A thousand tasks in hand cost little memory.
const MIN_CAP: usize = 1024;

/// The memory bound of the tuned prefetch for `workers` slots.
pub(crate) fn max_for(workers: usize) -> usize {
    workers.saturating_mul(PER_WORKER).clamp(MIN_CAP, MAX_TASKS)
}

/// The measurements and the tuned value.
#[derive(Debug)]
pub(crate) struct Tuning {
    /// Moving average of a fetch's round trip, in seconds.
    latency: f64,
    /// Moving average of tasks finished per second.
    rate: f64,
    window_start: Option<Instant>,
    window_finished: u64,
    /// The memory bound.
    cap: usize,
    /// The source's heartbeat interval, in seconds, if it leases tasks.
    lease_window: Option<f64>,
}

impl Tuning {
    pub(crate) fn new(workers: usize, heartbeat: Option<Duration>) -> Self {
        Tuning {
            latency: 0.0,
            rate: 0.0,
            window_start: None,
            window_finished: 0,
            cap: max_for(workers),
            lease_window: heartbeat.map(|h| h.as_secs_f64()),
        }
    }

    /// A fetch came back `took` after it was called.
    pub(crate) fn fetch_took(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        // The first sample sets the average; later ones move it by a quarter.
        self.latency = if self.latency == 0.0 {
            s
        } else {
            0.75 * self.latency + 0.25 * s
        };
    }

    /// The executors reported `finished` more tasks finished at `now`; `active`: tasks are
    /// running or the source may hold more (a window spans only such time: the time the
    /// workers starve for a fetch counts, the time the source is empty and idle does not).
    pub(crate) fn finished(&mut self, finished: u64, now: Instant, active: bool) {
        if !active {
            // Idle: keep the last figure; the next window opens when work comes back.
            self.window_start = None;
            self.window_finished = 0;
            return;
        }
        let Some(start) = self.window_start else {
            // The window opens at this report: what finished before it is not in it.
            self.window_start = Some(now);
            return;
        };
        self.window_finished = self.window_finished.saturating_add(finished);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW || self.window_finished == 0 {
            return;
        }
        let sample = self.window_finished as f64 / elapsed.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            sample
        } else {
            0.5 * self.rate + 0.5 * sample
        };
        self.window_start = Some(now);
        self.window_finished = 0;
    }

    /// The tuned prefetch: 2 × throughput × fetch latency, within the bounds.
    pub(crate) fn prefetch(&self) -> usize {
        let mut want = 2.0 * self.rate * self.latency;
        if let Some(w) = self.lease_window {
            want = want.min(self.rate * w);
        }
        // `as` saturates (NaN → 0); the cap bounds it.
        (want.ceil() as usize).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuning for `workers` that saw `tasks` finish over `over`, from `t0`, and fetches of
    /// `fetch` each.
    fn measured(
        workers: usize,
        heartbeat: Option<Duration>,
        t0: Instant,
        (tasks, over): (u64, Duration),
        fetch: Duration,
    ) -> Tuning {
        let mut t = Tuning::new(workers, heartbeat);
        t.finished(1, t0, true);
        t.finished(tasks, t0 + over, true);
        t.fetch_took(fetch);
        t
    }

    #[test]
    fn zero_until_a_fetch_takes_time() {
        let t0 = Instant::now();
        let t = measured(
            16,
            None,
            t0,
            (1000, Duration::from_millis(20)),
            Duration::ZERO,
        );
        assert_eq!(t.prefetch(), 0, "an instant source needs no prefetch");
    }

    #[test]
    fn littles_law_twice_over() {
        // 80 tasks in 10 ms = 8 000 tasks/s; 2 ms per fetch: 16 per round trip, 32 tuned.
        let ms = Duration::from_millis;
        let t = measured(50, None, Instant::now(), (80, ms(10)), ms(2));
        assert_eq!(t.prefetch(), 32);
    }

    #[test]
    fn bounded_by_memory_and_by_the_lease() {
        let (t0, s) = (Instant::now(), Duration::from_secs(1));
        let t = measured(4, None, t0, (1_000_000, s), s);
        assert_eq!(t.prefetch(), max_for(4));
        assert_eq!(max_for(4), 1024);
        assert_eq!(max_for(200), 1600);
        assert_eq!(max_for(usize::MAX), 10_000);

        // 100 tasks/s, 1 s fetches, a 100 ms heartbeat: 10 tasks wait at most one interval.
        let t = measured(1000, Some(Duration::from_millis(100)), t0, (100, s), s);
        assert_eq!(t.prefetch(), 10);
    }

    #[test]
    fn an_idle_window_keeps_the_last_rate() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut t = measured(50, None, t0, (100, ms(10)), ms(10));
        let tuned = t.prefetch();
        assert!(tuned > 0);
        // Idle for a minute: the window closes; the first task after it opens a new one.
        let later = t0 + Duration::from_secs(60);
        t.finished(0, t0 + ms(15), false);
        t.finished(1, later, true);
        t.finished(100, later + ms(10), true);
        assert_eq!(t.prefetch(), tuned, "the idle minute is not in the rate");
        // Reports with nothing finished do not close a window: starving for a fetch counts.
        t.finished(0, later + ms(20), true);
        t.finished(0, later + ms(40), true);
        t.finished(Duration::MAX.as_secs(), later + ms(1000), true);
        assert!(t.prefetch() <= max_for(50));
    }
}
