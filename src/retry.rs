//! How tasks (and failing fetches and acks) wait before trying again: [`RetryPolicy`] (attempts
//! and backoff for tasks) and [`Backoff`] (exponential, capped, with jitter).

use std::time::Duration;

use tokio::time::Instant;

/// How far "far future" is: a deadline a user's duration would put past what an `Instant` can
/// hold (`Duration::MAX`, a huge backoff) is clamped to this far from now. About 30 years, as
/// tokio's own "never" is: further than any process lives, near enough for every timer.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// `now + d`, never panicking: a duration past [`FAR_FUTURE`] (e.g. `Duration::MAX`) means "far
/// future". Every deadline built from a duration a user or a store can influence goes through
/// here (delays, snoozes, retries, wake-ups, fetch and ack backoffs).
pub(crate) fn deadline_after(now: Instant, d: Duration) -> Instant {
    let d = d.min(FAR_FUTURE);
    // `now` near the end of what an `Instant` holds: the latest instant we can still name.
    now.checked_add(d)
        .or_else(|| now.checked_add(d / 2))
        .unwrap_or(now)
}

/// How a task type retries: how many attempts in all, and the delay before each retry.
///
/// Retries are opt-in: the default is one attempt. A task waiting for its retry is back in its
/// source with a due time and holds no worker slot.
///
/// # Examples
///
/// ```
/// use actix_poller::{Backoff, RetryPolicy};
/// use std::time::Duration;
///
/// // 5 attempts, 1 s doubling to 10 min, 20 % jitter (the default backoff for retries).
/// let p = RetryPolicy::attempts(5);
/// assert_eq!(p.max_attempts(), 5);
/// // 3 attempts, always 30 s apart.
/// let p = RetryPolicy::attempts(3).fixed(Duration::from_secs(30));
/// assert_eq!(p.backoff().delay(2), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
}

impl Default for RetryPolicy {
    /// One attempt, no retry.
    fn default() -> Self {
        RetryPolicy::attempts(1)
    }
}

impl RetryPolicy {
    /// No retry: one attempt.
    pub fn none() -> Self {
        RetryPolicy::default()
    }

    /// `max_attempts` attempts in all (0 is taken as 1), with exponential backoff from 1 s
    /// doubling to 10 min, 20 % jitter.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(600)),
        }
    }

    /// Uses `backoff` between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Waits exactly `delay` between attempts.
    pub fn fixed(self, delay: Duration) -> Self {
        self.with_backoff(Backoff::new(delay, delay).with_jitter(0.0))
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

/// Exponential backoff with jitter and a cap.
///
/// The `n`-th delay (1-based) is `initial × multiplier^(n-1)`, capped at `max`, then reduced by a
/// random fraction of at most `jitter` (so delays spread out but never exceed the cap):
/// `delay ∈ [(1 − jitter) × d, d]`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use actix_poller::Backoff;
///
/// let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_jitter(0.0);
/// assert_eq!(b.delay(1), Duration::from_millis(10));
/// assert_eq!(b.delay(2), Duration::from_millis(20));
/// assert_eq!(b.delay(30), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for Backoff {
    /// 50 ms, doubling, capped at 30 s, 20 % jitter.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// Doubling from `initial` up to `max`, with 20 % jitter. `max` is raised to `initial` if
    /// smaller.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            ..Backoff::default()
        }
    }

    /// Sets the growth factor per step (clamped to at least 1.0).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the jitter fraction (clamped to `0.0..=1.0`).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter fraction.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The delay before the `n`-th retry (1-based; 0 is treated as 1), jitter applied.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(64) as i32;
        let raw = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = raw.min(self.max.as_secs_f64());
        // Only shortened, never lengthened: the cap holds.
        scaled(capped, 1.0 - self.jitter * fastrand::f64()).unwrap_or(self.max)
    }
}

/// `secs × factor` as a duration; `None` past what a `Duration` holds (`Duration::MAX`'s seconds
/// round up past it as an `f64`). The one place jitter turns seconds back into a duration.
fn scaled(secs: f64, factor: f64) -> Option<Duration> {
    Duration::try_from_secs_f64((secs * factor).max(0.0)).ok()
}

/// `d` spread by up to `± jitter × d` (`jitter` in `0.0..=1.0`), at least 1 ms and at most
/// [`FAR_FUTURE`]. For periodic work (polls) that many
/// processes do at once.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn spread(d: Duration, jitter: f64) -> Duration {
    let d = d.min(FAR_FUTURE);
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * fastrand::f64() - 1.0);
    scaled(d.as_secs_f64(), factor)
        .unwrap_or(FAR_FUTURE)
        .clamp(Duration::from_millis(1), FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_in_its_band_and_never_panics() {
        for _ in 0..1000 {
            let d = spread(Duration::from_secs(10), 0.2).as_secs_f64();
            assert!((8.0 - 1e-9..=12.0 + 1e-9).contains(&d), "{d}");
        }
        assert!(spread(Duration::MAX, 1.0) <= FAR_FUTURE);
        assert_eq!(spread(Duration::ZERO, 0.5), Duration::from_millis(1));
    }

    #[test]
    fn backoff_stays_within_jitter_band_and_cap() {
        let b =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(500)).with_jitter(0.5);
        for n in 1..100 {
            let nominal = (10.0 * 2f64.powi(n as i32 - 1)).min(500.0) / 1000.0;
            let d = b.delay(n).as_secs_f64();
            assert!(d <= nominal + 1e-9, "n={n} d={d} nominal={nominal}");
            assert!(d >= nominal * 0.5 - 1e-9, "n={n} d={d} nominal={nominal}");
        }
        assert_eq!(b.with_jitter(7.0).jitter(), 1.0);
        assert_eq!(b.with_jitter(f64::NAN).jitter(), 0.0);
    }

    #[test]
    fn huge_backoffs_do_not_panic() {
        let b = Backoff::new(Duration::MAX, Duration::MAX).with_multiplier(1e300);
        for n in [0, 1, 2, 64, u32::MAX] {
            assert!(b.delay(n) <= Duration::MAX);
        }
        let b = Backoff::new(Duration::ZERO, Duration::MAX).with_multiplier(1e300);
        assert!(b.delay(u32::MAX) <= Duration::MAX);
    }

    #[test]
    fn deadline_after_clamps_to_far_future() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
