//! A generic cell rate algorithm over `tokio::time::Instant` (so it runs under paused time).
//!
//! Each start pushes a theoretical arrival time (`tat`) one emission interval `t = per / n`
//! further; a start is allowed while `tat - tau <= now`, where `tau = t * (burst - 1)` is how far
//! ahead of the steady rate a burst may run. In any window of length `w` at most
//! `burst + w / t` starts pass.

use std::time::Duration;

use tokio::time::Instant;

use super::RateLimit;
use crate::retry::deadline_after;

/// One rate limit's state.
#[derive(Debug, Clone)]
pub(crate) struct Gcra {
    /// The emission interval: `per / n`.
    t: Duration,
    /// The burst tolerance: `t * (burst - 1)`.
    tau: Duration,
    /// The theoretical arrival time of the next start; `None` before the first.
    tat: Option<Instant>,
}

impl Gcra {
    /// The state of `limit`, nothing started yet. `limit.n` must be at least 1 (the builder
    /// refuses 0); a 0 is read as 1 here rather than divided by.
    pub(crate) fn new(limit: RateLimit) -> Self {
        let t = limit.per / limit.n.max(1);
        let tau = t
            .checked_mul(limit.burst.max(1) - 1)
            .unwrap_or(Duration::MAX);
        Gcra { t, tau, tat: None }
    }

    /// `Ok` if a start may happen at `now`, else the earliest instant it may.
    pub(crate) fn check(&self, now: Instant) -> Result<(), Instant> {
        let Some(tat) = self.tat else { return Ok(()) };
        match tat.checked_sub(self.tau) {
            Some(earliest) if earliest > now => Err(earliest),
            _ => Ok(()),
        }
    }

    /// Records a start at `now`.
    pub(crate) fn take(&mut self, now: Instant) {
        let base = self.tat.map_or(now, |tat| tat.max(now));
        self.tat = Some(deadline_after(base, self.t));
    }

    /// Whether the state is back to "nothing started" (it may be dropped).
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        !self.tat.is_some_and(|tat| tat > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_spaces_starts() {
        let now = Instant::now();
        let mut g = Gcra::new(RateLimit::new(10, Duration::from_secs(1), 3));
        for _ in 0..3 {
            assert_eq!(g.check(now), Ok(()));
            g.take(now);
        }
        assert_eq!(g.check(now), Err(now + Duration::from_millis(100)));
        let later = now + Duration::from_millis(100);
        assert_eq!(g.check(later), Ok(()));
        g.take(later);
        assert_eq!(g.check(later), Err(now + Duration::from_millis(200)));
    }

    #[test]
    fn huge_periods_do_not_panic() {
        let now = Instant::now();
        let mut g = Gcra::new(RateLimit::new(1, Duration::MAX, u32::MAX));
        g.take(now);
        let _ = g.check(now);
        let mut g = Gcra::new(RateLimit::new(0, Duration::MAX, 1));
        g.take(now);
        assert!(g.check(now).is_err());
        assert!(!g.is_idle(now));
    }
}
