//! Pace control toward the downstream: per-key concurrency limits, rate limits (GCRA), pause
//! state, and the [`Backpressure`] a handler returns when the service it calls says "slow down".
//!
//! The state here is plain data owned by the Fetcher (no locks): the Fetcher asks
//! [`Pace::check`] whether a buffered task may start now, and records starts and ends. See
//! docs/pace.md.

mod gcra;
mod limiter;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::deadline_after;

pub(crate) use gcra::Gcra;
pub use limiter::{Aimd, Gradient, Limiter, Sample};

/// A task's pace key: the customer, tenant or API host its work goes to. Tasks with the same key
/// share that key's concurrency limit, rate limit and pause.
///
/// Cheap to clone (one reference count) and one pointer wide, so a queued task pays 8 bytes for
/// it.
///
/// # Examples
///
/// ```
/// use actix_poller::{Key, TaskOptions};
///
/// let key = Key::new("customer-42");
/// let options = TaskOptions::new().key(key.clone());
/// assert_eq!(options.get_key(), Some(&key));
/// assert_eq!(key.as_str(), "customer-42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<Box<str>>);

/// A key serializes as its name (written out: serde's `Arc` support needs its `rc` feature).
#[cfg(feature = "serde")]
impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Key {
    /// A key with this name.
    pub fn new(name: impl Into<Box<str>>) -> Self {
        Key(Arc::new(name.into()))
    }

    /// The key's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Key {
    fn from(name: &str) -> Self {
        Key::new(name)
    }
}

impl From<String> for Key {
    fn from(name: String) -> Self {
        Key::new(name)
    }
}

impl From<&Key> for Key {
    fn from(key: &Key) -> Self {
        key.clone()
    }
}

/// At most `n` task starts per `per`, with bursts of up to `burst` starts at once (a GCRA: starts
/// are spaced `per / n` apart on average, and up to `burst` may come back to back after a quiet
/// period).
///
/// # Examples
///
/// ```
/// use actix_poller::RateLimit;
/// use std::time::Duration;
///
/// // 100 starts a second, at most 10 at once.
/// let limit = RateLimit::new(100, Duration::from_secs(1), 10);
/// # let _ = limit;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub(crate) n: u32,
    pub(crate) per: Duration,
    pub(crate) burst: u32,
}

impl RateLimit {
    /// `n` starts per `per`, bursts of `burst`. `n = 0` is refused when the poller starts
    /// ([`StartError::ZeroRate`](crate::StartError::ZeroRate)); `burst` is at least 1; a `per`
    /// too long for the clock (e.g. `Duration::MAX`) means "far future".
    pub fn new(n: u32, per: Duration, burst: u32) -> Self {
        RateLimit {
            n,
            per,
            burst: burst.max(1),
        }
    }

    /// The starts allowed per period.
    pub fn get_n(&self) -> u32 {
        self.n
    }

    /// The period.
    pub fn get_per(&self) -> Duration {
        self.per
    }

    /// The largest burst.
    pub fn get_burst(&self) -> u32 {
        self.burst
    }
}

/// What a handler returns (boxed, as the error or inside one: it is found through
/// [`Error::source`](std::error::Error::source)) when the downstream says "slow down", e.g. an
/// HTTP 429 or 503 with `Retry-After`: the task's key (or the whole poller) pauses for the
/// duration while other keys keep running, and the task runs again after it without losing an
/// attempt.
///
/// A `Duration::MAX` pause means "far future" (until
/// [`Poller::resume_key`](crate::Poller::resume_key) or
/// [`Poller::resume`](crate::Poller::resume)).
///
/// # Examples
///
/// ```
/// use actix_poller::{Backpressure, BoxError};
/// use std::time::Duration;
///
/// fn on_429(retry_after: Duration) -> BoxError {
///     Backpressure::pause_key_for(retry_after).into()
/// }
/// # let _ = on_429(Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backpressure {
    pub(crate) scope: PauseScope,
    pub(crate) after: Duration,
}

/// What a [`Backpressure`] pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PauseScope {
    /// The task's key (the whole poller for a task without a key).
    Key,
    /// The whole poller.
    Poller,
}

impl Backpressure {
    /// Pauses the task's key for `d` (a task without a key pauses the whole poller) and snoozes
    /// the task for `d`.
    pub fn pause_key_for(d: Duration) -> Self {
        Backpressure {
            scope: PauseScope::Key,
            after: d,
        }
    }

    /// Pauses the whole poller for `d` and snoozes the task for `d`.
    pub fn pause_for(d: Duration) -> Self {
        Backpressure {
            scope: PauseScope::Poller,
            after: d,
        }
    }

    /// What it pauses.
    pub fn scope(&self) -> PauseScope {
        self.scope
    }

    /// For how long.
    pub fn duration(&self) -> Duration {
        self.after
    }

    /// The `Backpressure` in `error` or in its chain of sources, if any.
    pub(crate) fn find(error: &(dyn std::error::Error + 'static)) -> Option<Backpressure> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(b) = e.downcast_ref::<Backpressure>() {
                return Some(*b);
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Display for Backpressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            PauseScope::Key => write!(f, "backpressure: pause the key for {:?}", self.after),
            PauseScope::Poller => write!(f, "backpressure: pause the poller for {:?}", self.after),
        }
    }
}

impl std::error::Error for Backpressure {}

/// The pace options a builder collects.
#[derive(Debug, Clone, Default)]
pub(crate) struct PaceConfig {
    /// Default per-key concurrency.
    pub(crate) key_limit: Option<usize>,
    pub(crate) key_limits: HashMap<Key, usize>,
    pub(crate) rate: Option<RateLimit>,
    /// Default per-key rate.
    pub(crate) key_rate: Option<RateLimit>,
    pub(crate) key_rates: HashMap<Key, RateLimit>,
}

impl PaceConfig {
    /// Whether any limit is set (then no task is queued ahead at an executor: every start is
    /// decided by the Fetcher when a slot is free).
    pub(crate) fn limits_anything(&self) -> bool {
        self.key_limit.is_some()
            || !self.key_limits.is_empty()
            || self.rate.is_some()
            || self.key_rate.is_some()
            || !self.key_rates.is_empty()
    }

    /// Whether some rate has `n = 0`.
    pub(crate) fn has_zero_rate(&self) -> bool {
        self.rate
            .iter()
            .chain(self.key_rate.iter())
            .chain(self.key_rates.values())
            .any(|r| r.n == 0)
    }

    fn key_limit(&self, key: &Key) -> Option<usize> {
        self.key_limits.get(key).copied().or(self.key_limit)
    }

    fn key_rate(&self, key: &Key) -> Option<RateLimit> {
        self.key_rates.get(key).copied().or(self.key_rate)
    }
}

/// Whether a task may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Yes.
    Go,
    /// Not before this instant (a rate limit or a timed pause).
    Until(Instant),
    /// Not until something ends or is resumed (a concurrency limit, or an open-ended pause).
    Blocked,
}

/// A pause: until an instant, or until resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paused {
    Until(Instant),
    Indefinitely,
}

impl Paused {
    fn verdict(self, now: Instant) -> Option<Verdict> {
        match self {
            Paused::Indefinitely => Some(Verdict::Blocked),
            Paused::Until(t) if t > now => Some(Verdict::Until(t)),
            Paused::Until(_) => None,
        }
    }

    /// The longer of two pauses.
    fn max(self, other: Paused) -> Paused {
        match (self, other) {
            (Paused::Until(a), Paused::Until(b)) => Paused::Until(a.max(b)),
            _ => Paused::Indefinitely,
        }
    }
}

/// How many idle per-key rate states are kept before the expired ones are dropped.
const IDLE_KEYS: usize = 1024;

/// The Fetcher's pace state: limits, what runs per key, rate states, pauses.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    config: PaceConfig,
    global: Option<Gcra>,
    key_rates: HashMap<Key, Gcra>,
    running: HashMap<Key, usize>,
    paused: Option<Paused>,
    key_paused: HashMap<Key, Paused>,
}

impl Pace {
    pub(crate) fn new(config: PaceConfig) -> Self {
        Pace {
            global: config.rate.map(Gcra::new),
            config,
            ..Pace::default()
        }
    }

    /// Whether every task may start at once (no limit set, nothing paused): the Fetcher then
    /// skips the checks.
    pub(crate) fn is_idle(&self) -> bool {
        !self.config.limits_anything() && self.paused.is_none() && self.key_paused.is_empty()
    }

    /// Whether tasks may be queued ahead at executors (started there without asking the Fetcher).
    pub(crate) fn allows_ahead(&self) -> bool {
        self.is_idle()
    }

    /// May a task with `key` start at `now`? Commits nothing.
    pub(crate) fn check(&self, key: Option<&Key>, now: Instant) -> Verdict {
        if let Some(v) = self.paused.and_then(|p| p.verdict(now)) {
            return v;
        }
        let mut later: Option<Instant> = None;
        if let Some(g) = &self.global {
            if let Err(at) = g.check(now) {
                later = Some(at);
            }
        }
        if let Some(key) = key {
            if let Some(v) = self.key_paused.get(key).and_then(|p| p.verdict(now)) {
                match v {
                    Verdict::Until(at) => later = Some(later.map_or(at, |l| l.max(at))),
                    other => return other,
                }
            }
            if let Some(limit) = self.config.key_limit(key) {
                if self.running.get(key).copied().unwrap_or(0) >= limit {
                    return Verdict::Blocked;
                }
            }
            if let Some(rate) = self.config.key_rate(key) {
                let at = match self.key_rates.get(key) {
                    Some(g) => g.check(now).err(),
                    None => Gcra::new(rate).check(now).err(),
                };
                if let Some(at) = at {
                    later = Some(later.map_or(at, |l| l.max(at)));
                }
            }
        }
        later.map_or(Verdict::Go, Verdict::Until)
    }

    /// A task with `key` starts at `now` (after [`check`](Self::check) said `Go`).
    pub(crate) fn start(&mut self, key: Option<&Key>, now: Instant) {
        if let Some(g) = &mut self.global {
            g.take(now);
        }
        let Some(key) = key else { return };
        if self.config.key_limit(key).is_some() {
            let n = self.running.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
        }
        if let Some(rate) = self.config.key_rate(key) {
            if self.key_rates.len() >= IDLE_KEYS {
                self.key_rates.retain(|_, g| !g.is_idle(now));
            }
            self.key_rates
                .entry(key.clone())
                .or_insert_with(|| Gcra::new(rate))
                .take(now);
        }
        if matches!(self.key_paused.get(key), Some(Paused::Until(t)) if *t <= now) {
            self.key_paused.remove(key);
        }
    }

    /// A task with `key` that [started](Self::start) ended (or never reached a handler).
    pub(crate) fn end(&mut self, key: &Key) {
        if let Some(n) = self.running.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(key);
            }
        }
    }

    /// Whether tasks with `key` are counted while they run (they have a concurrency limit).
    pub(crate) fn counts(&self, key: &Key) -> bool {
        self.config.key_limit(key).is_some()
    }

    /// Running tasks counted for `key`.
    #[cfg(test)]
    pub(crate) fn running(&self, key: &Key) -> usize {
        self.running.get(key).copied().unwrap_or(0)
    }

    /// Pauses the whole poller for `d` (`None`: until resumed); a longer pause already in
    /// place stays.
    pub(crate) fn pause(&mut self, d: Option<Duration>, now: Instant) {
        let p = Self::pause_of(d, now);
        self.paused = Some(self.paused.map_or(p, |old| old.max(p)));
    }

    /// Pauses `key` for `d` (`None`: until resumed).
    pub(crate) fn pause_key(&mut self, key: Key, d: Option<Duration>, now: Instant) {
        let p = Self::pause_of(d, now);
        let slot = self.key_paused.entry(key).or_insert(p);
        *slot = slot.max(p);
    }

    /// Resumes the whole poller (paused keys stay paused).
    pub(crate) fn resume(&mut self) {
        self.paused = None;
    }

    /// Resumes `key`.
    pub(crate) fn resume_key(&mut self, key: &Key) {
        self.key_paused.remove(key);
    }

    /// Drops timed pauses that are over (so an idle poller goes back to the fast path).
    pub(crate) fn expire(&mut self, now: Instant) {
        if matches!(self.paused, Some(Paused::Until(t)) if t <= now) {
            self.paused = None;
        }
        self.key_paused
            .retain(|_, p| !matches!(p, Paused::Until(t) if *t <= now));
    }

    fn pause_of(d: Option<Duration>, now: Instant) -> Paused {
        d.map_or(Paused::Indefinitely, |d| {
            Paused::Until(deadline_after(now, d))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limit_blocks_only_its_key() {
        let now = Instant::now();
        let mut pace = Pace::new(PaceConfig {
            key_limit: Some(1),
            ..PaceConfig::default()
        });
        let (a, b) = (Key::new("a"), Key::new("b"));
        assert_eq!(pace.check(Some(&a), now), Verdict::Go);
        pace.start(Some(&a), now);
        assert_eq!(pace.check(Some(&a), now), Verdict::Blocked);
        assert_eq!(pace.check(Some(&b), now), Verdict::Go);
        assert_eq!(pace.check(None, now), Verdict::Go);
        pace.end(&a);
        assert_eq!(pace.running(&a), 0);
        assert_eq!(pace.check(Some(&a), now), Verdict::Go);
    }

    #[test]
    fn pauses_clamp_and_expire() {
        let now = Instant::now();
        let mut pace = Pace::default();
        let a = Key::new("a");
        pace.pause_key(a.clone(), Some(Duration::MAX), now);
        assert!(matches!(pace.check(Some(&a), now), Verdict::Until(_)));
        assert_eq!(pace.check(None, now), Verdict::Go);
        pace.resume_key(&a);
        assert!(pace.is_idle());
        pace.pause(Some(Duration::from_secs(1)), now);
        assert_eq!(
            pace.check(None, now),
            Verdict::Until(now + Duration::from_secs(1))
        );
        pace.expire(now + Duration::from_secs(1));
        assert!(pace.is_idle());
        pace.pause(None, now);
        assert_eq!(pace.check(Some(&a), now), Verdict::Blocked);
    }

    #[test]
    fn backpressure_is_found_through_sources() {
        #[derive(Debug)]
        struct Wrapper(Backpressure);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "http 429")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let b = Backpressure::pause_key_for(Duration::from_secs(3));
        let boxed: crate::BoxError = Box::new(Wrapper(b));
        assert_eq!(Backpressure::find(boxed.as_ref()), Some(b));
        let plain: crate::BoxError = "nope".into();
        assert_eq!(Backpressure::find(plain.as_ref()), None);
    }

    #[test]
    fn a_key_costs_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<Key>>(),
            std::mem::size_of::<usize>()
        );
    }
}
