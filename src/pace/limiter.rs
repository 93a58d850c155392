//! Adaptive concurrency: a [`Limiter`] watches each attempt's latency and whether the
//! downstream was overloaded, and moves the Scheduler's limit between its bounds.

use std::fmt;
use std::time::Duration;

/// One attempt's end, as a [`Limiter`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sample {
    /// How long the attempt ran.
    pub latency: Duration,
    /// The downstream was overloaded: the handler answered
    /// [`Backpressure`](crate::Backpressure), or the attempt timed out.
    pub overloaded: bool,
    /// Attempts running when it ended (itself included).
    pub in_flight: usize,
}

/// Moves the concurrency limit from what it observes; plug one in with
/// [`PollerBuilder::adaptive`](crate::PollerBuilder::adaptive). [`Aimd`] and [`Gradient`] ship
/// with the crate; see docs/pace.md for which to use when.
///
/// # Examples
///
/// ```
/// use actix_poller::{Limiter, Sample};
///
/// /// Halves on overload, else creeps up by one, in [1, 64].
/// #[derive(Debug)]
/// struct Halving(usize);
///
/// impl Limiter for Halving {
///     fn limit(&self) -> usize {
///         self.0
///     }
///     fn observe(&mut self, sample: Sample) -> usize {
///         self.0 = if sample.overloaded { self.0 / 2 } else { self.0 + 1 }.clamp(1, 64);
///         self.0
///     }
/// }
/// # let _ = Halving(1);
/// ```
pub trait Limiter: fmt::Debug + Send + 'static {
    /// The current limit (the first one before any sample). At least 1 is used.
    fn limit(&self) -> usize;

    /// Takes one attempt's end into account; returns the new limit.
    fn observe(&mut self, sample: Sample) -> usize;
}

/// Fewest samples a round trip's latency is judged from (at a limit below it, one "round
/// trip" spans several): the median of fewer is mostly timer jitter.
const MIN_ROUND_TRIP: usize = 16;

/// One round trip's worth of latencies (about `limit` samples, at least [`MIN_ROUND_TRIP`]),
/// judged by their median, and the best such median seen: the unloaded latency.
///
/// Medians of round trips, not single samples: with timer and scheduling jitter the best
/// *sample* is far below a typical unloaded latency (a 5 ms call takes 5.0–7 ms), and a
/// limiter comparing with it reads jitter as load. Overloaded answers (often fast refusals)
/// count as overload, never as latency.
#[derive(Debug, Clone, Default)]
struct RoundTrip {
    latencies: Vec<f64>,
    samples: usize,
    overloaded: bool,
    best: Option<f64>,
}

/// A completed round trip.
#[derive(Debug, Clone, Copy)]
struct RoundTripEnd {
    /// The median latency of its answered attempts, in seconds (`None`: all were overloaded).
    median: Option<f64>,
    /// The best median seen so far, this one included.
    best: Option<f64>,
    /// One of its attempts was overloaded.
    overloaded: bool,
}

impl RoundTrip {
    /// Adds a sample; once `limit` (at least [`MIN_ROUND_TRIP`]) have come, ends the round trip.
    fn push(&mut self, s: Sample, limit: f64) -> Option<RoundTripEnd> {
        self.samples += 1;
        if s.overloaded {
            self.overloaded = true;
        } else {
            self.latencies.push(s.latency.as_secs_f64());
        }
        if (self.samples as f64) < limit.max(MIN_ROUND_TRIP as f64) {
            return None;
        }
        let median = if self.latencies.is_empty() {
            None
        } else {
            let mid = self.latencies.len() / 2;
            let (_, m, _) = self.latencies.select_nth_unstable_by(mid, f64::total_cmp);
            Some(*m)
        };
        // A median of a few answers among refusals is no unloaded latency.
        if self.latencies.len() >= MIN_ROUND_TRIP / 2 {
            if let Some(m) = median {
                self.best = Some(self.best.map_or(m, |b| b.min(m)));
            }
        }
        let end = RoundTripEnd {
            median,
            best: self.best,
            overloaded: self.overloaded,
        };
        self.latencies.clear();
        self.samples = 0;
        self.overloaded = false;
        Some(end)
    }
}

/// Additive increase, multiplicative decrease: +1 per round trip (`1 / limit` per success)
/// while the limit is in use (at least half of it in flight), times `backoff` (default 0.9) on
/// an overloaded attempt or one slower than the latency threshold (if set), at most once per
/// round trip (the attempts already in flight at a backoff do not count again). Simple and
/// robust when the downstream says when it is overloaded (429/503, timeouts); blind to latency
/// unless given a threshold ([`latency_threshold`](Self::latency_threshold), absolute, per
/// attempt) or a tolerance ([`latency_tolerance`](Self::latency_tolerance), relative to the
/// unloaded latency it learns, per round trip).
#[derive(Debug, Clone)]
pub struct Aimd {
    min: usize,
    max: usize,
    limit: f64,
    backoff: f64,
    threshold: Option<Duration>,
    /// Back off when a round trip's median latency passes this × the best one.
    tolerance: Option<f64>,
    round_trip: RoundTrip,
    /// Samples still to ignore overload in after a backoff (those in flight when it happened).
    cooldown: usize,
}

impl Aimd {
    /// Starts at `min`, moves in `[min, max]` (`min` at least 1, `max` at least `min`).
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        Aimd {
            min,
            max: max.max(min),
            limit: min as f64,
            backoff: 0.9,
            threshold: None,
            tolerance: None,
            round_trip: RoundTrip::default(),
            cooldown: 0,
        }
    }

    /// The factor applied on overload (clamped to `[0.1, 0.99]`; default 0.9).
    pub fn backoff(mut self, factor: f64) -> Self {
        self.backoff = if factor.is_nan() {
            0.9
        } else {
            factor.clamp(0.1, 0.99)
        };
        self
    }

    /// An attempt slower than `d` counts as overloaded.
    pub fn latency_threshold(mut self, d: Duration) -> Self {
        self.threshold = Some(d);
        self
    }

    /// A round trip whose median latency is above `t` × the unloaded latency counts as
    /// overloaded (`t` at least 1; NaN: 1.2). The unloaded latency is learned: the best
    /// round-trip median seen. The limit then settles where latency reaches about `t` × the
    /// unloaded one, without being told the downstream's latency (unlike
    /// [`latency_threshold`](Self::latency_threshold)); a median, so single slow attempts do
    /// not count.
    pub fn latency_tolerance(mut self, t: f64) -> Self {
        self.tolerance = Some(if t.is_nan() { 1.2 } else { t.max(1.0) });
        self
    }
}

impl Limiter for Aimd {
    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn observe(&mut self, s: Sample) -> usize {
        let mut slow = self.threshold.is_some_and(|t| s.latency > t);
        if let Some(tolerance) = self.tolerance {
            if let Some(end) = self.round_trip.push(s, self.limit) {
                slow |= matches!((end.median, end.best), (Some(m), Some(b)) if m > tolerance * b);
            }
        }
        if s.overloaded || slow {
            if self.cooldown == 0 {
                self.limit *= self.backoff;
                self.cooldown = s.in_flight;
            }
        } else if s.in_flight.saturating_mul(2) >= self.limit as usize {
            self.limit += 1.0 / self.limit.max(1.0);
        }
        self.cooldown = self.cooldown.saturating_sub(1);
        self.limit = self.limit.clamp(self.min as f64, self.max as f64);
        self.limit as usize
    }
}

/// A latency gradient (after Netflix's concurrency-limits and TCP Vegas): once per round trip
/// it compares the round trip's median latency with the best median seen (the unloaded
/// latency) and shrinks the limit in proportion as latency grows (halves it on overload),
/// growing by about `√limit` while latency stays near the best. Finds a downstream's capacity
/// from latency alone, before it starts refusing work; needs latencies that mostly reflect
/// load (not payload size).
#[derive(Debug, Clone)]
pub struct Gradient {
    min: usize,
    max: usize,
    limit: f64,
    /// The round trip under way, and the unloaded latency estimate: the best round-trip
    /// median seen. (It does not forget: a forgetting minimum drifts up whenever the limit
    /// hovers above the capacity.)
    round_trip: RoundTrip,
    tolerance: f64,
    smoothing: f64,
}

impl Gradient {
    /// Starts at `min`, moves in `[min, max]` (`min` at least 1, `max` at least `min`).
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        Gradient {
            min,
            max: max.max(min),
            limit: min as f64,
            round_trip: RoundTrip::default(),
            tolerance: 1.1,
            smoothing: 0.2,
        }
    }

    /// How much slower than the best latency still counts as unloaded (at least 1; default
    /// 1.1). Raise it for noisy latencies; the limit settles near where latency reaches
    /// `tolerance` times the best.
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = if t.is_nan() { 1.5 } else { t.max(1.0) };
        self
    }
}

impl Limiter for Gradient {
    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn observe(&mut self, s: Sample) -> usize {
        let Some(end) = self.round_trip.push(s, self.limit) else {
            return self.limit as usize;
        };
        let gradient = match (end.overloaded, end.median, end.best) {
            (false, Some(median), Some(best)) => {
                (self.tolerance * best / median.max(1e-9)).clamp(0.5, 1.0)
            }
            // Overloaded, or no answer to judge: back off.
            _ => 0.5,
        };
        // Unloaded: probe upwards by √limit; loaded: shrink in proportion to the slowdown.
        let target = if gradient >= 1.0 {
            self.limit + self.limit.sqrt()
        } else {
            self.limit * gradient
        };
        // `smoothing` of the step per round trip: below 16 a "round trip" of 16 samples spans
        // several, and moves as much as they would have.
        let trips = (MIN_ROUND_TRIP as f64 / self.limit.max(1.0)).max(1.0);
        let step = (target - self.limit) * (self.smoothing * trips).min(1.0);
        self.limit = (self.limit + step).clamp(self.min as f64, self.max as f64);
        self.limit as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: f64, overloaded: bool, in_flight: usize) -> Sample {
        Sample {
            latency: Duration::from_secs_f64(ms / 1000.0),
            overloaded,
            in_flight,
        }
    }

    /// A downstream of capacity `c`: latency 10 ms up to `c` in flight, growing past it;
    /// overloaded past `2c`. Returns the mean limit over the last 1000 samples.
    fn settle(l: &mut dyn Limiter, c: usize) -> usize {
        let mut sum = 0;
        for i in 0..20_000 {
            let n = l.limit();
            let ms = if n <= c {
                10.0
            } else {
                10.0 * n as f64 / c as f64
            };
            l.observe(sample(ms, n > 2 * c, n));
            if i >= 19_000 {
                sum += l.limit();
            }
        }
        sum / 1000
    }

    #[test]
    fn aimd_stays_in_bounds_and_backs_off() {
        let mut a = Aimd::new(2, 10);
        for _ in 0..1000 {
            a.observe(sample(1.0, false, 10));
        }
        assert_eq!(a.limit(), 10);
        a.observe(sample(1.0, true, 10));
        assert_eq!(a.limit(), 9);
        for _ in 0..8 {
            a.observe(sample(1.0, true, 10));
        }
        assert_eq!(a.limit(), 9, "one backoff per round trip");
        for _ in 0..1000 {
            a.observe(sample(1.0, true, 10));
        }
        assert_eq!(a.limit(), 2);
        let mut a = Aimd::new(1, 1000).latency_threshold(Duration::from_millis(15));
        let got = settle(&mut a, 32);
        // Backs off once latency passes 1.5 × the unloaded one, i.e. past 1.5 C in flight.
        assert!(
            (32..=54).contains(&got),
            "aimd with a threshold settled at {got}"
        );
    }

    #[test]
    fn gradient_finds_the_capacity_from_latency() {
        for c in [8, 32, 128] {
            let mut g = Gradient::new(1, 1000);
            let got = settle(&mut g, c);
            let (lo, hi) = (c * 8 / 10, c * 12 / 10 + 1);
            assert!(
                (lo..=hi).contains(&got),
                "gradient settled at {got} for capacity {c}"
            );
        }
    }

    #[test]
    fn aimd_tolerance_finds_the_capacity_and_ignores_single_slow_attempts() {
        for c in [8, 32, 128] {
            let mut a = Aimd::new(1, 1000).latency_tolerance(1.2);
            let got = settle(&mut a, c);
            // Backs off once a round trip's median passes 1.2 × the unloaded latency: past
            // 1.2 C in flight, to 0.9 of that. At a small C a round trip of at least 16
            // samples spans two, and it overshoots by a step or two.
            assert!(
                (c..=c * 13 / 10 + 3).contains(&got),
                "aimd with a tolerance settled at {got} for capacity {c}"
            );
        }
        let mut a = Aimd::new(1, 64).latency_tolerance(1.5);
        for _ in 0..20_000 {
            a.observe(sample(10.0, false, 64));
        }
        assert_eq!(a.limit(), 64);
        // One attempt in ten is very slow: the round trips' medians are not.
        for i in 0..5_000 {
            let ms = if i % 10 == 0 { 100.0 } else { 10.0 };
            a.observe(sample(ms, false, 64));
        }
        assert_eq!(a.limit(), 64, "single slow attempts are no overload");
        // The whole round trip is slow: back off.
        for _ in 0..64 {
            a.observe(sample(30.0, false, 64));
        }
        assert!(a.limit() < 64, "a slow round trip backs off");
    }

    /// Fast refusals ("overloaded" at once) are overload, not the unloaded latency: the limit
    /// comes back once the downstream answers again.
    #[test]
    fn gradient_takes_no_fast_refusal_for_the_unloaded_latency() {
        let mut g = Gradient::new(1, 100);
        for _ in 0..20_000 {
            g.observe(sample(10.0, false, 50));
        }
        assert_eq!(g.limit(), 100);
        for _ in 0..100 {
            g.observe(sample(0.01, true, 100));
        }
        let low = g.limit();
        assert!(low < 100, "overload backs off");
        for _ in 0..20_000 {
            g.observe(sample(10.0, false, 50));
        }
        assert_eq!(
            g.limit(),
            100,
            "back up once the answers come at the unloaded latency"
        );
    }

    /// Jitter that does not grow with load (one attempt in twenty fast, the others spread over
    /// 6–6.5 ms) is no load: the limit climbs to its max.
    #[test]
    fn gradient_reads_no_load_into_jitter() {
        let mut g = Gradient::new(1, 200);
        for i in 0..50_000u32 {
            let ms = if i % 20 == 0 {
                5.0
            } else {
                6.0 + f64::from(i % 7) / 14.0
            };
            g.observe(sample(ms, false, g.limit()));
        }
        assert_eq!(g.limit(), 200, "jitter read as load");
    }

    /// Below 16, a round trip of 16 samples spans several real ones: the limit moves as much
    /// as they would have, so it leaves `min` about as fast as it grows past 16.
    #[test]
    fn gradient_leaves_min_fast() {
        let mut g = Gradient::new(1, 1000);
        let mut samples = 0;
        while g.limit() < 16 && samples < 100_000 {
            g.observe(sample(10.0, false, g.limit()));
            samples += 1;
        }
        // About 10 windows of 16 samples; a per-window step of 0.2 × √limit took 30.
        assert!(samples <= 16 * 15, "{samples} samples to reach 16");
    }
}
