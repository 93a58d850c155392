//! How to open a durable source: the settings every store has, and the store's own.

use std::fmt;
use std::time::Duration;

use super::dialect::Dialect;

/// The default table name.
pub const DEFAULT_TABLE: &str = "actix_poller_tasks";

/// The attempts a task enqueued without them gets ([`DurableConfig::default_attempts`]).
pub const DEFAULT_ATTEMPTS: u32 = 5;

/// How to open a durable source: the table, leases, polling, retention, and the store's own
/// settings (see [`SqliteConfig`](crate::source::sqlite::SqliteConfig) and
/// [`PgConfig`](crate::source::postgres::PgConfig), whose `new` starts one).
pub struct DurableConfig<D: Dialect> {
    pub(crate) table: String,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) poll_jitter: f64,
    pub(crate) retention: Option<Duration>,
    pub(crate) dead_retention: Option<Duration>,
    pub(crate) migrate: bool,
    pub(crate) batch: usize,
    pub(crate) max_connections: u32,
    pub(crate) expiries: u32,
    pub(crate) default_attempts: u32,
    /// Queue-wide pace (PostgreSQL only).
    pub(crate) queue_pace: Option<QueuePace>,
    /// Whether `queue_pace` replaces the queue's stored pace at open (PostgreSQL only).
    pub(crate) replace_queue_pace: bool,
    /// The store's own settings.
    pub(crate) store: D::Options,
}

impl<D: Dialect> Clone for DurableConfig<D> {
    fn clone(&self) -> Self {
        DurableConfig {
            table: self.table.clone(),
            lease: self.lease,
            poll_interval: self.poll_interval,
            poll_jitter: self.poll_jitter,
            retention: self.retention,
            dead_retention: self.dead_retention,
            migrate: self.migrate,
            batch: self.batch,
            max_connections: self.max_connections,
            expiries: self.expiries,
            default_attempts: self.default_attempts,
            queue_pace: self.queue_pace,
            replace_queue_pace: self.replace_queue_pace,
            store: self.store.clone(),
        }
    }
}

impl<D: Dialect> fmt::Debug for DurableConfig<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableConfig")
            .field("store", &self.store)
            .field("table", &self.table)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("poll_jitter", &self.poll_jitter)
            .field("retention", &self.retention)
            .field("dead_retention", &self.dead_retention)
            .field("migrate", &self.migrate)
            .field("batch", &self.batch)
            .field("max_connections", &self.max_connections)
            .field("lease_expiries", &self.expiries)
            .field("default_attempts", &self.default_attempts)
            .field("queue_pace", &self.queue_pace)
            .field("replace_queue_pace", &self.replace_queue_pace)
            .finish()
    }
}

impl<D: Dialect> DurableConfig<D> {
    /// The defaults, with the store's own settings.
    pub(crate) fn with_store(store: D::Options) -> Self {
        DurableConfig {
            table: DEFAULT_TABLE.to_owned(),
            lease: Duration::from_secs(30),
            poll_interval: D::POLL_INTERVAL,
            poll_jitter: 0.2,
            retention: Some(Duration::from_secs(24 * 3600)),
            dead_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            migrate: true,
            batch: 1_000,
            max_connections: D::POOL_SIZE,
            expiries: 5,
            default_attempts: DEFAULT_ATTEMPTS,
            queue_pace: None,
            replace_queue_pace: false,
            store,
        }
    }

    /// The table's name: a plain identifier (letters, digits, `_`; at most 48 bytes). Default
    /// [`DEFAULT_TABLE`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a fetched task stays leased to this poller without a heartbeat (default 30 s,
    /// at least 30 ms). The heartbeat runs every third of it. A task whose worker died runs
    /// again about this long after.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// How often an idle poller looks for due tasks it was not told of (default: SQLite 1 s,
    /// PostgreSQL 5 s; at least 1 ms). SQLite: tasks written by other processes are found this
    /// way (local submits wake the poller at once). PostgreSQL: the fallback when a
    /// notification is missed.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    /// The poll's jitter, a fraction of the interval (default 0.2; clamped to `0.0..=1.0`).
    pub fn poll_jitter(mut self, jitter: f64) -> Self {
        self.poll_jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// How long completed and cancelled tasks are kept before the heartbeat prunes them
    /// (default 24 h; `None`: kept forever). Dead tasks: see
    /// [`dead_retention`](Self::dead_retention).
    pub fn completed_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// How long dead tasks are kept, for [`Poller::dead_tasks`](crate::Poller::dead_tasks) and
    /// a re-run, before the heartbeat prunes them (default 30 days, counted from their death;
    /// `None`: kept until purged).
    pub fn dead_retention(mut self, retention: Option<Duration>) -> Self {
        self.dead_retention = retention;
        self
    }

    /// How many times in a row a task's lease may expire before the task is dead (default 5,
    /// at least 1).
    ///
    /// A lease expires when its poller died or stalled, perhaps before the task started (queued
    /// ahead at an executor, or prefetched): an expiry therefore costs the task no attempt, and
    /// it runs again. This limit is the guard against a task that kills its worker each time
    /// (a crash, an out-of-memory kill): after that many expiries with no ack recorded between,
    /// it is dead, with the reason in its error. A task that never started goes dead this way
    /// only if its poller died that many times while holding it.
    pub fn lease_expiries(mut self, n: u32) -> Self {
        self.expiries = n.max(1);
        self
    }

    /// The attempts of a task enqueued without them (default [`DEFAULT_ATTEMPTS`], at least 1):
    /// [`NewTask::new`](crate::source::NewTask::new) through [`queue()`](super::DurableSource::queue)
    /// or [`DurableQueue::new`](super::DurableQueue::new), typically from another process or a
    /// transaction. Tasks a poller submits get its retry policy instead
    /// ([`PollerBuilder::retry`](crate::PollerBuilder::retry)), or their own
    /// [`TaskOptions::max_attempts`](crate::TaskOptions::max_attempts).
    ///
    /// Why above one: a durable queue's tasks outlive the process that enqueued them, and a
    /// transient failure (the downstream restarting) should not make them dead; the delay
    /// between attempts is the running poller's backoff. Set it to the poller's attempts to
    /// make both paths alike.
    pub fn default_attempts(mut self, attempts: u32) -> Self {
        self.default_attempts = attempts.max(1);
        self
    }

    /// Whether to apply the crate's migrations at start (default `true`).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// The most tasks one fetch leases (default 1 000, at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The connection pool's size (default: SQLite 4, PostgreSQL 8; at least 1). PostgreSQL:
    /// the size of each of the source's pools: the main pool (enqueues, cancels, dead tasks;
    /// the `LISTEN` connection is one more, its own) and, with
    /// [`async_commit`](crate::source::postgres::PgConfig::async_commit), the pool for
    /// fetches, acks and heartbeats. SQLite: the size of the main pool; fetches, acks and
    /// heartbeats write through one more connection of their own (one writer at a time, so they
    /// queue for it rather than collide on the file's lock).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

impl fmt::Display for QueuePace {
    /// `50 per 1s (burst 5), key limit 2`; `no limit (stored pauses only)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.rate, self.key_limit) {
            (None, None) => f.write_str("no limit (stored pauses only)"),
            (rate, key_limit) => {
                if let Some(r) = rate {
                    write!(f, "{} per {:?} (burst {})", r.n, r.per, r.burst.max(1))?;
                }
                match (rate, key_limit) {
                    (Some(_), Some(k)) => write!(f, ", key limit {k}"),
                    (None, Some(k)) => write!(f, "key limit {k}"),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Pace controls shared by every poller on a PostgreSQL queue, kept in the database
/// ([`PgConfig::queue_pace`](crate::source::postgres::PgConfig::queue_pace)): a global rate
/// limit, a per-key concurrency limit, and stored pauses. See docs/pace.md ("Across processes").
///
/// # Examples
///
/// ```
/// use actix_poller::source::durable::QueuePace;
/// use actix_poller::RateLimit;
/// use std::time::Duration;
///
/// // 100 claims a second across every process (bursts of 10), 4 running per key.
/// let pace = QueuePace::new()
///     .rate_limit(RateLimit::new(100, Duration::from_secs(1), 10))
///     .key_limit(4);
/// # let _ = pace;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuePace {
    pub(crate) rate: Option<crate::RateLimit>,
    pub(crate) key_limit: Option<u32>,
}

impl QueuePace {
    /// No limit: only the stored pauses (which every `QueuePace` has).
    pub fn new() -> Self {
        QueuePace::default()
    }

    /// At most `limit.n` claims per `limit.per` across every process, bursts of `limit.burst`
    /// (a GCRA whose state is in the database). `n = 0` is refused at connect.
    pub fn rate_limit(mut self, limit: crate::RateLimit) -> Self {
        self.rate = Some(limit);
        self
    }

    /// At most `k` tasks of any one key leased at once across every process (claimed and not
    /// yet acknowledged: running, or in a poller's buffer). `k = 0` is refused at connect.
    pub fn key_limit(mut self, k: u32) -> Self {
        self.key_limit = Some(k);
        self
    }

    /// The emission interval (µs, at least 1) and burst of the rate limit, or `(0, 0)` for none.
    pub(crate) fn rate_args(&self) -> (i64, i64) {
        self.rate.map_or((0, 0), |r| {
            let t = r.per / r.n.max(1);
            (super::common::micros(t).max(1), i64::from(r.burst.max(1)))
        })
    }

    /// Whether claims under `other` are held to the same limits: the same rate's emission
    /// interval (µs) and burst (50 per second is 5 per 100 ms), the same key limit.
    pub(crate) fn same_limits(&self, other: &QueuePace) -> bool {
        self.rate_args() == other.rate_args() && self.key_limit == other.key_limit
    }

    /// How the pace is stored: the rate as given (`n`, `per` in µs, burst), its emission
    /// interval (µs), the key limit; 0 for "none".
    pub(crate) fn stored(&self) -> [i64; 5] {
        let (interval, burst) = self.rate_args();
        let (n, per) = self.rate.map_or((0, 0), |r| {
            (i64::from(r.n), super::common::micros(r.per).max(1))
        });
        [n, per, burst, interval, self.key_limit.map_or(0, i64::from)]
    }

    /// The pace a stored row holds (`n`, `per` in µs, burst, key limit; `None`, 0 or out of
    /// range: none).
    pub(crate) fn from_stored(
        n: Option<i64>,
        per_us: Option<i64>,
        burst: Option<i64>,
        key_limit: Option<i64>,
    ) -> QueuePace {
        let positive = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
        let rate = positive(n).map(|n| {
            let per = std::time::Duration::from_micros(per_us.unwrap_or(0).max(1) as u64);
            crate::RateLimit::new(n, per, positive(burst).unwrap_or(1))
        });
        QueuePace {
            rate,
            key_limit: positive(key_limit),
        }
    }

    /// Why this pace cannot be used, if it cannot.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        if self.rate.is_some_and(|r| r.n == 0) {
            return Some("a queue-wide rate limit of 0 starts per period");
        }
        if self.key_limit == Some(0) {
            return Some("a queue-wide key limit of 0 (pause the key instead)");
        }
        None
    }
}
