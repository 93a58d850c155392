//! The PostgreSQL dialect: the server's clock, lists bound as arrays, `FOR UPDATE SKIP LOCKED`,
//! wake-ups by `LISTEN`/`NOTIFY`, bookkeeping optionally with asynchronous commit.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgQueryResult, Postgres,
};
use sqlx::{Arguments, Connection};

use super::common::{self, Migration, Signal};
use super::config::{DurableConfig, QueuePace};
use super::dialect::{Args, Dialect, List, Names};
use super::error::DurableError;
use super::queue::DurableQueue;
use super::source::DurableSource;

/// The PostgreSQL store (feature `postgres`): see [`crate::source::postgres`].
#[derive(Debug, Clone, Copy)]
pub struct PgDialect;

impl super::sealed::Sealed for PgDialect {}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redacted(&self.url))
            .field("schema", &self.schema)
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .field("async_commit", &self.async_commit)
            .field("statement_timeout", &self.statement_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .finish()
    }
}

/// `url` without its password (`user:password@` and a `password=` parameter), for logs.
fn redacted(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme) = out.find("://") {
        let rest = scheme + 3;
        let end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..end].rfind('@') {
            if let Some(colon) = out[rest..rest + at].find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(start) = out.find("password=") {
        let value = start + "password=".len();
        let end = out[value..].find('&').map_or(out.len(), |i| value + i);
        out.replace_range(value..end, "***");
    }
    out
}

/// What can go wrong with a [`PgSource`]: [`DurableError`] for PostgreSQL (it is never
/// [`Open`](DurableError::Open)).
pub type PgError = DurableError<PgDialect>;

/// How to open a [`PgSource`]: the URL, the schema and table, leases, polling, retention.
/// Start one with [`PgConfig::new`]; the setters every durable source has are
/// [`DurableConfig`]'s, PostgreSQL's own are [`schema`](PgConfig::schema),
/// [`connect_timeout`](PgConfig::connect_timeout),
/// [`application_name`](PgConfig::application_name),
/// [`async_commit`](PgConfig::async_commit),
/// [`statement_timeout`](PgConfig::statement_timeout) and
/// [`lock_timeout`](PgConfig::lock_timeout).
pub type PgConfig = DurableConfig<PgDialect>;

impl DurableConfig<PgDialect> {
    /// The database at `url` (`postgres://user:password@host:port/database`), with the
    /// defaults: no schema (the connection's `search_path`), table
    /// [`DEFAULT_TABLE`](super::DEFAULT_TABLE), 30 s leases, a 5 s fallback poll with 20 %
    /// jitter, completed tasks kept 24 h, migrations on, fetches of at most 1 000 tasks, 8
    /// pooled connections.
    pub fn new(url: impl Into<String>) -> Self {
        DurableConfig::with_store(PgOptions {
            url: url.into(),
            schema: None,
            connect_timeout: Duration::from_secs(10),
            application_name: "actix-poller".to_owned(),
            async_commit: true,
            statement_timeout: Some(DEFAULT_STATEMENT_TIMEOUT),
            lock_timeout: Some(DEFAULT_LOCK_TIMEOUT),
        })
    }

    /// The server aborts any statement of the source's connections that runs longer
    /// (default [`DEFAULT_STATEMENT_TIMEOUT`], 30 s; `None`: the server's setting). Every
    /// statement the poller runs is short (batches are bounded); this bounds the one that is
    /// not, so a stuck query costs an error and a retry, not a stalled queue or a shutdown that
    /// waits on it. Migrations lift it for their own transaction. Enqueues in the caller's own
    /// transaction ([`enqueue_in`](super::DurableQueue::enqueue_in)) follow the caller's
    /// connection.
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.store.statement_timeout = timeout;
        self
    }

    /// The server aborts any statement of the source's connections that waits longer for a
    /// lock (default [`DEFAULT_LOCK_TIMEOUT`], 10 s; `None`: the server's setting): a fetch
    /// skips locked rows, so only a lock held on the whole table (a migration, a `VACUUM FULL`,
    /// a user's `LOCK TABLE`) makes the poller wait, and then it fails and retries instead of
    /// queueing every connection behind it.
    pub fn lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.store.lock_timeout = timeout;
        self
    }

    /// Pace controls shared by every poller on this queue, their state in the database: a
    /// global rate limit, a per-key concurrency limit, and pauses of the queue or of a key
    /// that every process sees and that survive a restart (default: none; every limit and
    /// pause is then per poller). With it, [`Poller::pause`](crate::Poller::pause),
    /// [`pause_key`](crate::Poller::pause_key), their `_for` forms, the resumes, the same
    /// messages, and a handler's [`Backpressure`](crate::Backpressure), are stored instead of
    /// held by the poller.
    ///
    /// Claims then run one at a time on the queue (each in a short transaction holding a row
    /// lock on the queue's pace row), and count as starts: a claimed task is "running" for the
    /// key limit until its ack lands or its lease expires (a killed process's tasks count until
    /// their leases expire). See docs/pace.md ("Across processes") for what it costs.
    ///
    /// The pace is the queue's, stored in the database: the first poller opened with one stores
    /// it, and every claim reads its limits there. A poller opened with another pace is refused
    /// ([`PgError::PaceMismatch`](DurableError::PaceMismatch), naming both); one opened without
    /// `queue_pace` on a queue that has a pace adopts it (at open, or at its next heartbeat if
    /// the pace was set after it opened). To change a queue's pace, open one poller with
    /// [`replace_queue_pace`](Self::replace_queue_pace).
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::source::postgres::{PgConfig, QueuePace};
    /// use actix_poller::RateLimit;
    /// use std::time::Duration;
    ///
    /// let config = PgConfig::new("postgres://localhost/app").queue_pace(
    ///     QueuePace::new()
    ///         .rate_limit(RateLimit::new(50, Duration::from_secs(1), 5))
    ///         .key_limit(2),
    /// );
    /// # let _ = config;
    /// ```
    pub fn queue_pace(mut self, pace: QueuePace) -> Self {
        self.queue_pace = Some(pace);
        self.replace_queue_pace = false;
        self
    }

    /// As [`queue_pace`](Self::queue_pace), and `pace` replaces the queue's stored pace when
    /// the source opens, whatever it was: how an operator changes a queue's pace. Every poller
    /// on the queue, running ones too, claims under the new pace from its next claim (the
    /// limits are read from the database at each claim; their pause state and the rate's
    /// history are kept); one opened later with the old pace is refused, so update the others'
    /// configuration to `pace` (or remove their `queue_pace`: they adopt the stored one).
    ///
    /// Meant for the change itself (a deploy step, an admin tool): pollers left opening with
    /// `replace_queue_pace` of different paces would take turns replacing it. A pace cannot be
    /// removed this way: [`QueuePace::new()`] has no limit (stored pauses only); docs/pace.md
    /// says how to remove one.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::source::postgres::{PgConfig, QueuePace};
    ///
    /// // From now on at most 8 running per key, across every poller on the queue.
    /// let config =
    ///     PgConfig::new("postgres://localhost/app").replace_queue_pace(QueuePace::new().key_limit(8));
    /// # let _ = config;
    /// ```
    pub fn replace_queue_pace(mut self, pace: QueuePace) -> Self {
        self.queue_pace = Some(pace);
        self.replace_queue_pace = true;
        self
    }

    /// The schema of the table (created by the migrations if missing): a plain identifier.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.store.schema = Some(schema.into());
        self
    }

    /// How long to wait for a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.store.connect_timeout = timeout;
        self
    }

    /// The `application_name` of the source's connections (default `actix-poller`), as
    /// `pg_stat_activity` shows it.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.store.application_name = name.into();
        self
    }

    /// Whether the poller's own bookkeeping (fetches, acks, lease extensions, releases) commits
    /// with `synchronous_commit = off` (default `true`). The bookkeeping runs on a second pool
    /// of the same size either way (its connections also plan with `enable_seqscan = off`, so
    /// a plan cached while the table was small never scans it whole).
    ///
    /// It saves a WAL flush per statement on the hot path (lower latency, more tasks per
    /// second) and stays within "at least once": if the *server* crashes, the last fraction of a
    /// second of those commits may be lost, so a lease is forgotten (the task runs again) or an
    /// ack is (its lease expires and the task runs again). Enqueues are never affected: they
    /// commit as the caller's connection says.
    pub fn async_commit(mut self, on: bool) -> Self {
        self.store.async_commit = on;
        self
    }
}

/// The options of `config`'s connections, or why its URL is malformed.
fn connect_options(
    config: &DurableConfig<PgDialect>,
) -> Result<PgConnectOptions, DurableError<PgDialect>> {
    let store = &config.store;
    let mut options = PgConnectOptions::from_str(&store.url)
        .map_err(|e| DurableError::Config(format!("malformed PostgreSQL URL: {e}")))?
        .application_name(&store.application_name);
    for (name, timeout) in [
        ("statement_timeout", store.statement_timeout),
        ("lock_timeout", store.lock_timeout),
    ] {
        if let Some(timeout) = timeout {
            options = options.options([(name, timeout_setting(timeout))]);
        }
    }
    Ok(options)
}

/// The settings of the bookkeeping pool's connections (fetches, acks, heartbeats, releases).
///
/// `enable_seqscan = off`: each of those statements finds its rows through an index (the due
/// index, the primary key, the lease index, the finished index). sqlx prepares them once per
/// connection, and after five executions PostgreSQL keeps a generic plan costed on the table
/// as it was then. A poller started on an empty or small table (a new deployment, a test, the
/// latency bench) therefore kept plans that scan the whole table to find a row by its id, and
/// with completed rows kept for a day (the default retention) every fetch and ack read the
/// whole table until an `ANALYZE` invalidated the plans (issue 14: 52 and 46 buffers for a
/// one-row fetch and ack at 2 000 rows, growing with the table, against 17 and 11). Off, the
/// planner takes the index whenever one applies, whatever size the table had.
const BOOKKEEPING_SETTINGS: [(&str, &str); 1] = [("enable_seqscan", "off")];

/// A pooled connection idle at least this long is pinged before use (see [`pool_options`]).
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The options of the source's pools. sqlx pings every connection it takes from the pool by
/// default (`test_before_acquire`): a round trip before every statement, a third of the round
/// trips of a fetch or an ack on the hot path (issue 14). Only a connection that sat idle
/// [`PING_IDLE_AFTER`] or longer is pinged here: that is where a connection the server or the
/// network dropped is found, and replaced unseen; a connection in steady use that breaks fails
/// its statement instead, which the poller retries (a fetch after its backoff, an ack batch
/// at once and then after a backoff, a heartbeat at the next interval).
fn pool_options(config: &DurableConfig<PgDialect>) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.store.connect_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            }
            .boxed()
        })
}

/// PostgreSQL's own settings. Their `Debug` does not show the URL's password.
#[derive(Clone)]
pub struct PgOptions {
    url: String,
    schema: Option<String>,
    connect_timeout: Duration,
    application_name: String,
    async_commit: bool,
    statement_timeout: Option<Duration>,
    lock_timeout: Option<Duration>,
}

/// The default [`PgConfig::statement_timeout`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [`PgConfig::lock_timeout`].
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A server timeout setting: milliseconds, at least 1 (0 would mean "none"), at most what the
/// server takes (`i32::MAX` ms).
fn timeout_setting(d: Duration) -> String {
    format!("{}ms", d.as_millis().clamp(1, i32::MAX as u128))
}

impl Dialect for PgDialect {
    type Db = Postgres;
    type Options = PgOptions;
    type File = std::convert::Infallible;
    type Server = String;

    const NAME: &'static str = "PostgreSQL";
    const QUERIES: &'static str = include_str!("sql/postgres.sql");
    const MIGRATIONS: &'static [Migration] = &[
        include_str!("../../../migrations/postgres/0001_create_tasks.sql"),
        include_str!("../../../migrations/postgres/0002_lease_index.sql"),
        include_str!("../../../migrations/postgres/0003_lease_seq.sql"),
        include_str!("../../../migrations/postgres/0004_lease_expiries.sql"),
        include_str!("../../../migrations/postgres/0005_leased_at.sql"),
        include_str!("../../../migrations/postgres/0006_traceparent.sql"),
        include_str!("../../../migrations/postgres/0007_pace_key.sql"),
        include_str!("../../../migrations/postgres/0008_queue_pace.sql"),
        include_str!("../../../migrations/postgres/0009_stored_queue_pace.sql"),
        include_str!("../../../migrations/postgres/0010_fillfactor.sql"),
        include_str!("../../../migrations/postgres/0011_next_index_unusable_by_fetch.sql"),
    ];
    const PRUNE_BATCH: i64 = 10_000;
    const POLL_INTERVAL: Duration = Duration::from_secs(5);
    const POOL_SIZE: u32 = 8;
    const NOTIFIES: bool = true;
    const FETCH_NEXT_DUE: bool = true;
    const KEPT_PING_AFTER: Duration = PING_IDLE_AFTER;

    fn names(config: &DurableConfig<Self>) -> Result<Names, DurableError<Self>> {
        let schema = config.store.schema.as_ref();
        for (what, name) in [("table", Some(&config.table)), ("schema", schema)] {
            if let Some(name) = name {
                if !common::valid_identifier(name) {
                    return Err(DurableError::Config(format!(
                        "{what} name {name:?} must be a plain identifier (letters, digits, _; \
                         at most 48 bytes)"
                    )));
                }
            }
        }
        let prefix = schema.map_or(String::new(), |s| format!("\"{s}\"."));
        let name = &config.table;
        let table = format!("{prefix}\"{name}\"");
        let channel = channel(schema.map(String::as_str), name);
        let create_schema = schema.map_or(String::new(), |s| {
            format!("CREATE SCHEMA IF NOT EXISTS \"{s}\";")
        });
        Ok(Names {
            table: table.clone(),
            vars: vec![
                ("prefix", prefix.clone()),
                ("table", table),
                ("name", name.clone()),
                ("function", format!("{prefix}\"{name}_notify\"")),
                ("migrations", format!("{prefix}\"{name}_migrations\"")),
                ("pace", format!("{prefix}\"{name}_pace\"")),
                ("channel", channel),
                ("create_schema", create_schema),
            ],
        })
    }

    fn connect(config: &DurableConfig<Self>) -> BoxFuture<'_, Result<PgPool, DurableError<Self>>> {
        async move {
            let options = connect_options(config)?;
            let target = format!(
                "{}:{} (database {})",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or("<default>")
            );
            pool_options(config)
                .connect_with(options)
                .await
                .map_err(|source| DurableError::Connect { target, source })
        }
        .boxed()
    }

    /// Always a pool of its own, whose connections plan with `BOOKKEEPING_SETTINGS` (and,
    /// with [`PgConfig::async_commit`], commit asynchronously).
    fn bookkeeping_pool(pool: &PgPool, config: &DurableConfig<Self>) -> PgPool {
        let mut options = (*pool.connect_options())
            .clone()
            .options(BOOKKEEPING_SETTINGS);
        if config.store.async_commit {
            options = options.options([("synchronous_commit", "off")]);
        }
        pool_options(config).connect_lazy_with(options)
    }

    fn listen<'a>(
        pool: &'a PgPool,
        names: &'a Names,
        signal: Arc<Signal>,
    ) -> BoxFuture<'a, Result<Option<(tokio::task::JoinHandle<()>, PgPool)>, DurableError<Self>>>
    {
        async move {
            let channel = names
                .vars
                .iter()
                .find(|(k, _)| *k == "channel")
                .map_or("", |(_, v)| v.as_str());
            // Its own connection, outside the pool: a pool of one is not starved by it.
            let own = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with((*pool.connect_options()).clone());
            let mut listener = PgListener::connect_with(&own).await?;
            listener.listen(channel).await?;
            Ok(Some((tokio::spawn(listen(listener, signal)), own)))
        }
        .boxed()
    }

    fn bind_list(out: &mut Args<'_, Self>, list: List) -> Result<(), BoxDynError> {
        match list {
            List::Ids(ids) => out.add(ids),
            List::Leases(leases) => {
                let (ids, seqs): (Vec<i64>, Vec<i64>) = leases.into_iter().unzip();
                out.add(ids)?;
                out.add(seqs)
            }
            List::Acks(acks) => {
                let seqs: Vec<i64> = acks.iter().map(|ack| ack.5).collect();
                let acks = acks
                    .into_iter()
                    .map(|a| (a.0, a.1, a.2, a.3, a.4))
                    .collect();
                let (ids, attempts, kinds, after, errors) = columns(acks);
                out.add(ids)?;
                out.add(attempts)?;
                out.add(kinds)?;
                out.add(after)?;
                out.add(errors)?;
                out.add(seqs)
            }
            List::Tasks(tasks) => {
                let traces: Vec<Option<String>> = tasks.iter().map(|t| t.5.clone()).collect();
                let keys: Vec<Option<String>> = tasks.iter().map(|t| t.6.clone()).collect();
                let tasks = tasks
                    .into_iter()
                    .map(|t| (t.0, t.1, t.2, t.3, t.4))
                    .collect();
                let (payloads, priorities, delays, attempts, timeouts) = columns(tasks);
                out.add(payloads)?;
                out.add(priorities)?;
                out.add(delays)?;
                out.add(attempts)?;
                out.add(timeouts)?;
                out.add(traces)?;
                out.add(keys)
            }
        }
    }

    /// The statements read the server's clock (`now()`): nothing to bind.
    fn bind_now(_: &mut Args<'_, Self>) -> Result<(), BoxDynError> {
        Ok(())
    }

    /// SQLSTATE class 22 (data exception: a NUL in a text, a time out of range) or 54 (a
    /// program limit exceeded), or a value that does not encode.
    fn is_data_error(error: &sqlx::Error) -> bool {
        match error {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            _ => false,
        }
    }

    fn affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// PostgreSQL's longest identifier, in bytes: a longer `NOTIFY` channel is an error.
const MAX_IDENTIFIER: usize = 63;

/// The `LISTEN`/`NOTIFY` channel of a table: `schema.table`, or, when that is longer than
/// PostgreSQL allows (two long names), `actix_poller_` and a stable hash of it (FNV-1a, the same
/// in every process and version).
fn channel(schema: Option<&str>, table: &str) -> String {
    let full = schema.map_or_else(|| table.to_owned(), |s| format!("{s}.{table}"));
    if full.len() <= MAX_IDENTIFIER {
        return full;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("actix_poller_{hash:016x}")
}

/// Five columns.
type Columns<A, B, C, D, E> = (Vec<A>, Vec<B>, Vec<C>, Vec<D>, Vec<E>);

/// Rows of five as five columns: PostgreSQL takes a batch as one array per column.
fn columns<A, B, C, D, E>(rows: Vec<(A, B, C, D, E)>) -> Columns<A, B, C, D, E> {
    let mut out = (vec![], vec![], vec![], vec![], vec![]);
    for (a, b, c, d, e) in rows {
        out.0.push(a);
        out.1.push(b);
        out.2.push(c);
        out.3.push(d);
        out.4.push(e);
    }
    out
}

/// The `LISTEN` loop: every notification (and every reconnection, when notifications may have
/// been missed) bumps the signal the fetches wait on.
async fn listen(mut listener: PgListener, signal: Arc<Signal>) {
    let mut failures: u32 = 0;
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => {
                failures = 0;
                // For a latency breakdown (the bench's durable-pg-latency stamps it).
                tracing::trace!(name: "actix_poller.notified", "a notification arrived");
                common::bump(&signal);
            }
            Ok(None) => {
                tracing::warn!("the LISTEN connection was lost; reconnected");
                common::bump(&signal);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay =
                    crate::task::Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
                        .delay(failures);
                tracing::warn!(%error, ?delay, "the LISTEN connection failed; retrying");
                common::bump(&signal);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A durable task source in PostgreSQL. See the [module docs](crate::source::postgres). Open one with
/// [`PgSource::connect`].
pub type PgSource<T> = DurableSource<T, PgDialect>;

/// Enqueues into a [`PgSource`]'s table from anywhere (cheap to clone, `Send + Sync`), alone or
/// inside the caller's transaction. Every poller on the table is notified on commit. Get one
/// from [`PgSource::queue`], open one in a process that only enqueues with [`PgQueue::connect`], or
/// build one on a pool of yours with [`PgQueue::new`].
pub type PgQueue<T> = DurableQueue<T, PgDialect>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::durable::race_test::{
        a_completed_ack_answers_only_its_own_lease,
        a_short_batch_is_drained_and_wakes_for_what_follows,
        a_wake_up_racing_an_empty_fetch_is_not_lost,
    };
    use crate::source::durable::Sql;
    use crate::source::{NewTask, Source};

    fn names(config: DurableConfig<PgDialect>) -> Result<Names, DurableError<PgDialect>> {
        PgDialect::names(&config)
    }

    /// sqlx pings a pooled connection before every use unless told not to: one round trip more
    /// per fetch and per ack (issue 14). The source's pools ping only a connection that sat
    /// idle a while.
    #[test]
    fn pooled_connections_are_pinged_only_after_idling() {
        let options = pool_options(&PgConfig::new("postgres://localhost/x"));
        assert!(!options.get_test_before_acquire());
        assert_eq!(PING_IDLE_AFTER, Duration::from_secs(1));
    }

    #[test]
    fn every_statement_is_in_the_file() {
        let names = names(
            DurableConfig::<PgDialect>::new("postgres://x")
                .schema("s")
                .table("t"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names.table, "\"s\".\"t\"");
        let sql = Sql::new::<PgDialect>(&names);
        assert!(sql.fetch.contains("SKIP LOCKED"));
        assert!(sql.notify.contains("'s.t'"));
        assert!(sql
            .migrate_lock
            .contains("CREATE SCHEMA IF NOT EXISTS \"s\""));
        assert!(!sql.dead_purge_all.contains('{'));
    }

    /// Two long names make a channel PostgreSQL would refuse: it is shortened, stably and
    /// distinctly (issue 12.6).
    #[test]
    fn long_names_get_a_short_channel() {
        assert_eq!(channel(Some("s"), "t"), "s.t");
        let (a, b) = ("a".repeat(48), "b".repeat(48));
        let long = channel(Some(&a), &b);
        assert!(long.len() <= MAX_IDENTIFIER, "{long}");
        assert_eq!(long, channel(Some(&a), &b), "stable");
        assert_ne!(long, channel(Some(&b), &a), "distinct");
        let names = names(DurableConfig::<PgDialect>::new("x").schema(&a).table(&b))
            .unwrap_or_else(|e| panic!("{e}"));
        let sql = Sql::new::<PgDialect>(&names);
        assert!(sql.notify.contains(&long));
    }

    /// Neither `Debug` nor anything logged shows the password (issue 12.15).
    #[test]
    fn debug_hides_the_password() {
        let config = DurableConfig::<PgDialect>::new("postgres://app:s3cret@db:5432/app");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("app:***@db"),
            "{shown}"
        );
        let query = redacted("postgres://db/app?user=a&password=s3cret&sslmode=require");
        assert_eq!(
            query,
            "postgres://db/app?user=a&password=***&sslmode=require"
        );
        assert_eq!(redacted("postgres://a@db/x"), "postgres://a@db/x");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(names(DurableConfig::<PgDialect>::new("x").schema("a b")).is_err());
        assert!(names(DurableConfig::<PgDialect>::new("x").table("t\"")).is_err());
        assert!(names(
            DurableConfig::<PgDialect>::new("x")
                .schema("ok")
                .table("ok_2")
        )
        .is_ok());
    }

    /// A configuration in a schema of its own (dropped by the test), polling every 600 s.
    /// Drops a test's schema (and its tables) at the end of the test; a failure to drop is
    /// not the test's result.
    async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(pool)
            .await;
    }

    fn config() -> (PgConfig, String) {
        let url = std::env::var("ACTIX_POLLER_PG_URL").unwrap_or_else(|_| {
            panic!(
                "set ACTIX_POLLER_PG_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run \
                 the PostgreSQL tests"
            )
        });
        let schema = format!("ap_unit_{:x}", fastrand::u64(..));
        let config = PgConfig::new(url)
            .schema(&schema)
            .poll_interval(Duration::from_secs(600));
        (config, schema)
    }

    /// A source opened in a schema of its own, with what the statement tests read.
    struct Opened {
        source: PgSource<u32>,
        pool: sqlx::PgPool,
        config: PgConfig,
        schema: String,
        names: Names,
        sql: Sql,
    }

    async fn opened() -> Opened {
        let (config, schema) = config();
        let source = PgSource::<u32>::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = source.pool().clone();
        let names = names(config.clone()).unwrap_or_else(|e| panic!("{e}"));
        let sql = Sql::new::<PgDialect>(&names);
        Opened {
            source,
            pool,
            config,
            schema,
            names,
            sql,
        }
    }

    /// The bookkeeping connections' cached plans find rows through the indexes, even a generic
    /// plan cached while the table was small: once the table has grown (completed rows kept
    /// for a day), a fetch and an ack still read a few pages, not the whole table (issue 14).
    /// sqlx prepares each statement once per connection; PostgreSQL keeps a generic plan after
    /// five executions, as it does for these `PREPARE`d ones.
    #[actix_rt::test]
    async fn plans_cached_on_a_small_table_use_the_indexes() {
        let Opened {
            source,
            pool,
            config,
            schema,
            names,
            sql,
        } = opened().await;
        let bookkeeping = PgDialect::bookkeeping_pool(&pool, &config);
        let mut conn = bookkeeping
            .acquire()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let prepare = format!(
            "PREPARE f(bigint, bigint, bigint) AS {}; \
             PREPARE a(bigint[], bigint[], bigint) AS {}",
            sql.fetch, sql.ack_completed
        );
        sqlx::raw_sql(&prepare)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // On a table of a few rows: the plans PostgreSQL caches then.
        for i in 0..8 {
            source
                .queue()
                .enqueue(vec![NewTask::new(i)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::raw_sql(
                "EXECUTE f(10, 1, 30000000); \
                 EXECUTE a(ARRAY[]::bigint[], ARRAY[]::bigint[], 1)",
            )
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        // A day of completed tasks later.
        let grow = format!(
            "INSERT INTO {} (state, payload, finished_at) \
             SELECT 'completed', '0', now() FROM generate_series(1, 5000)",
            names.table
        );
        sqlx::raw_sql(&grow)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for statement in [
            "EXPLAIN EXECUTE f(10, 1, 30000000)",
            "EXPLAIN EXECUTE a(ARRAY[1]::bigint[], ARRAY[1]::bigint[], 1)",
        ] {
            let plan: Vec<String> = sqlx::query_scalar(statement)
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
            let plan = plan.join("\n");
            assert!(
                !plan.contains("Seq Scan"),
                "{statement} scans the table: {plan}"
            );
        }
        drop(conn);
        bookkeeping.close().await;
        drop_schema(&pool, &schema).await;
    }

    /// The counts read partial indexes only, never the table, whatever the statistics: on a
    /// fresh queue of 50 000 due and 1 000 delayed rows (no `ANALYZE`: a bulk enqueue the
    /// autovacuum has not reached), then analyzed; custom and generic plans alike. The
    /// statement before (issue 14) counted with its predicates alone, and on a fresh table of
    /// 1 000 000 rows the planner scanned the whole table three times in parallel (0.9–1.2 s
    /// per count, JIT compiled). Then the counts themselves.
    #[actix_rt::test]
    async fn counts_read_indexes_only_whatever_the_statistics() {
        let Opened {
            source: _source,
            pool,
            schema,
            names,
            sql,
            ..
        } = opened().await;
        let table = &names.table;
        let mut conn = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        let setup = format!(
            "INSERT INTO {table} (payload, run_at) \
             SELECT '0', now() - interval '1 minute' FROM generate_series(1, 50000); \
             INSERT INTO {table} (payload, run_at, attempt) \
             SELECT '0', now() + interval '1 day', g % 2 FROM generate_series(1, 1000) g; \
             PREPARE c AS {};",
            sql.counts
        );
        sqlx::raw_sql(&setup)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (when, before) in [("no statistics", ""), ("analyzed", "ANALYZE {table}")] {
            sqlx::raw_sql(&before.replace("{table}", table))
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{when}: {e}"));
            for mode in ["force_custom_plan", "force_generic_plan"] {
                sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
                    .execute(&mut *conn)
                    .await
                    .unwrap_or_else(|e| panic!("{when}, {mode}: {e}"));
                let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE c")
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap_or_else(|e| panic!("{when}, {mode}: {e}"));
                let plan = plan.join("\n");
                assert!(
                    !plan.contains("Seq Scan") && !plan.contains("Bitmap Heap Scan"),
                    "{when}, {mode}: the counts read the table:\n{plan}"
                );
            }
        }
        let row = sqlx::query("EXECUTE c")
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let counts: Vec<i64> = (0..5)
            .map(|i| sqlx::Row::try_get::<i64, _>(&row, i).unwrap_or(-1))
            .collect();
        assert_eq!(
            counts,
            [50_000, 500, 500, 0, 0],
            "due, scheduled, retrying, running, dead"
        );
        let age: i64 = sqlx::Row::try_get(&row, 5).unwrap_or(-1);
        assert!(
            age >= 60_000_000,
            "the oldest due task waits a minute: {age} µs"
        );
        drop(conn);
        drop_schema(&pool, &schema).await;
    }

    /// Buffers read by the plan node `name` (and the nodes under it) of a JSON `EXPLAIN
    /// (ANALYZE, BUFFERS)`; `None` when the plan has no such node.
    fn buffers_of(plan: &serde_json::Value, name: &str) -> Option<u64> {
        let blocks = |node: &serde_json::Value| {
            ["Shared Hit Blocks", "Shared Read Blocks"]
                .iter()
                .map(|key| {
                    node.get(key)
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0)
                })
                .sum()
        };
        if plan.get("Subplan Name").and_then(serde_json::Value::as_str) == Some(name) {
            return Some(blocks(plan));
        }
        plan.get("Plans")?
            .as_array()?
            .iter()
            .find_map(|child| buffers_of(child, name))
    }

    /// VACUUMs `table` once no transaction that began before this call is still open (another
    /// test's, on the same server): a snapshot that old keeps the rows the scenario updated
    /// alive to VACUUM, and their index entries would be read by the fetch under test, as
    /// they are by any scan while a long transaction holds them back.
    async fn vacuum_when_no_older_snapshot(pool: &sqlx::PgPool, table: &str) {
        let mark: i64 = sqlx::query_scalar("SELECT txid_current()")
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mark = (mark % (1_i64 << 32)).to_string();
        let older = "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND (age(backend_xmin) >= age($1::xid) OR age(backend_xid) >= age($1::xid))";
        for _ in 0..3000 {
            let open: i64 = sqlx::query_scalar(older)
                .bind(&mark)
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // VACUUM alone: not in the implicit transaction of a multi-statement query.
        sqlx::raw_sql(&format!("VACUUM {table}"))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A fetch reads the due rows' index entries, not the delayed rows', whatever the planner's
    /// statistics say (issue 14): 100 000 rows delayed by a day while 3 are due, statistics
    /// taken (1) with the rows delayed, (2) then the rows come due (the statistics predate it:
    /// a scheduled batch's hour arrives), (3) with the rows due, then they are delayed again.
    /// With the due index scanned in fetch order across priorities, (3) read all 100 000
    /// entries; with the `run_at` index the planner chose in (2), it read every due row and
    /// sorted them, for a batch of 10 (2 959 buffers). The plan is the generic one sqlx's
    /// prepared statement gets. Buffer counts, not times: the same on a loaded machine. Then
    /// 20 distinct priorities (more than the per-priority read takes): the fetch in fetch
    /// order, highest priority first. The same for the claim under queue-wide pace (issue 14:
    /// its candidates were read in fetch order).
    #[actix_rt::test]
    async fn a_fetch_reads_the_due_rows_only_whatever_the_statistics() {
        let Opened {
            source: _source,
            pool,
            schema,
            names,
            sql,
            ..
        } = opened().await;
        let table = &names.table;
        let mut conn = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        // The claim under queue-wide pace reads its candidates the same way: a pace row with
        // no limits, so it claims what the plain fetch would.
        let paced = sql
            .paced
            .as_ref()
            .unwrap_or_else(|| panic!("no paced claim"));
        sqlx::query(&paced.declare)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let setup = format!(
            "INSERT INTO {table} (payload, run_at) \
             SELECT '0', now() + interval '1 day' FROM generate_series(1, 100000); \
             SET plan_cache_mode = force_generic_plan; \
             PREPARE plain_fetch(bigint, bigint, bigint) AS {}; \
             PREPARE paced_claim(bigint, bigint, bigint) AS {};",
            sql.fetch, paced.fetch
        );
        sqlx::raw_sql(&setup)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let scenarios = [
            ("statistics of delayed rows", "ANALYZE {table}", ""),
            (
                "delayed rows come due after the statistics",
                "ANALYZE {table}",
                "UPDATE {table} SET run_at = now() - interval '1 hour' \
                 WHERE state = 'queued' AND run_at > now()",
            ),
            (
                "due rows delayed after the statistics",
                "UPDATE {table} SET run_at = now() - interval '1 hour' \
                 WHERE state = 'queued' AND run_at > now(); ANALYZE {table}",
                "UPDATE {table} SET run_at = now() + interval '1 day' \
                 WHERE state = 'queued' AND run_at < now() - interval '1 minute'",
            ),
        ];
        for (statement, (scenario, before, after)) in ["plain_fetch", "paced_claim"]
            .into_iter()
            .flat_map(|statement| scenarios.iter().map(move |s| (statement, *s)))
        {
            let scenario = format!("{statement}: {scenario}");
            let scenario = scenario.as_str();
            // Three due rows: the fetch takes them in priority order.
            let prepare = format!(
                "UPDATE {table} SET run_at = now() + interval '1 day' \
                 WHERE state = 'queued' AND run_at <= now(); \
                 {before}; \
                 INSERT INTO {table} (payload, priority, run_at) \
                 VALUES ('1', 0, now() - interval '1 second'), ('2', 5, now()), \
                        ('3', 0, now() - interval '2 seconds'); \
                 {after}",
                before = before.replace("{table}", table),
                after = after.replace("{table}", table),
            );
            sqlx::raw_sql(&prepare)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{scenario}: {e}"));
            vacuum_when_no_older_snapshot(&pool, table).await;
            let due: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {table} WHERE state = 'queued' AND run_at <= now()"
            ))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{scenario}: {e}"));
            // The plan, as JSON (sqlx's `json` feature is off: read the value's text).
            let row = sqlx::query(&format!(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {statement}(10, 1, 30000000)"
            ))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{scenario}: {e}"));
            let text = sqlx::Row::try_get_raw(&row, 0)
                .and_then(|value| value.as_str().map_err(sqlx::Error::Decode))
                .unwrap_or_else(|e| panic!("{scenario}: {e}"));
            let explained: serde_json::Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{scenario}: {e}"));
            let plan = &explained[0]["Plan"];
            let scans: Vec<u64> = ["CTE few", "CTE many"]
                .iter()
                .filter_map(|name| buffers_of(plan, name))
                .collect();
            assert!(
                !scans.is_empty(),
                "{scenario}: no due-row scan in {explained:#}"
            );
            let picked: u64 = scans.iter().sum();
            assert!(
                picked <= 100,
                "{scenario} ({due} due): the fetch's scan read {picked} buffers: {explained:#}"
            );
            let payloads: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT payload::text FROM {table} WHERE state = 'running' ORDER BY leased_at, \
                 priority DESC, run_at"
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{scenario}: {e}"));
            let expected = if due >= 10 { 10 } else { 3 };
            assert_eq!(payloads.len(), expected, "{scenario} ({due} due)");
            if expected == 3 {
                assert_eq!(
                    payloads,
                    ["2", "3", "1"],
                    "{scenario}: priority, then due time"
                );
            }
            sqlx::raw_sql(&format!("DELETE FROM {table} WHERE state = 'running'"))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{scenario}: {e}"));
        }
        // More distinct priorities than the per-priority read takes: fetch order still holds.
        let many = format!(
            "DELETE FROM {table}; \
             INSERT INTO {table} (payload, priority, run_at) \
             SELECT to_jsonb(g), g % 20, now() - interval '1 second' FROM generate_series(1, 200) g; \
             INSERT INTO {table} (payload, priority, run_at) \
             VALUES ('999', 100, now() + interval '1 day')"
        );
        sqlx::raw_sql(&many)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (statement, expected) in [
            ("plain_fetch", [[19; 10].as_slice(), &[18; 5]].concat()),
            ("paced_claim", [[18; 5].as_slice(), &[17; 10]].concat()),
        ] {
            let rows = sqlx::query(&format!("EXECUTE {statement}(15, 1, 30000000)"))
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
            let mut priorities: Vec<i64> = rows
                .iter()
                .map(|row| sqlx::Row::try_get::<i64, _>(row, 3).unwrap_or(-1))
                .collect();
            priorities.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(
                priorities, expected,
                "{statement}: 21 priorities: the highest due ones first"
            );
        }
        drop(conn);
        drop_schema(&pool, &schema).await;
    }

    /// A bookkeeping connection the server closed while the keeper kept it (an idle-session
    /// timeout, a restart, an operator's `pg_terminate_backend`) is found by the ping before
    /// its next use and replaced: the statement runs on a fresh connection, not on the dead one.
    #[actix_rt::test]
    async fn a_kept_connection_the_server_closed_is_replaced() {
        use crate::source::durable::keeper::{Conns, Keeper};
        let Opened {
            source: _source,
            pool,
            schema,
            ..
        } = opened().await;
        let keeper = Keeper::new(pool.clone(), Duration::ZERO);
        let mut conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        keeper.put(conn, true);
        assert_eq!(keeper.kept(), 1);
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
            .bind(pid)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(killed);
        let mut conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        let now: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("a statement on the replaced connection: {e}"));
        assert_ne!(now, pid, "a fresh connection");
        keeper.put(conn, true);
        drop_schema(&pool, &schema).await;
    }

    /// A table made by the migrations before the fillfactor one (0010) is upgraded in place:
    /// its queued tasks stay queued and are fetched as before, a delayed one stays delayed, and
    /// the table leaves room on its pages for the fetch's and the ack's row versions (issue 14).
    #[actix_rt::test]
    async fn a_table_of_the_old_migrations_upgrades_and_keeps_its_tasks() {
        let (config, schema) = config();
        let names = names(config.clone()).unwrap_or_else(|e| panic!("{e}"));
        let vars: Vec<(&str, &str)> = names.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sql = Sql::new::<PgDialect>(&names);
        let pool = PgDialect::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let fill = |text: &str| common::fill(text, &vars);
        // The schema as the crate's previous release left it: migrations 1 to 9, recorded.
        let old = 9; // 0010_fillfactor.sql is the 10th
        assert!(PgDialect::MIGRATIONS[old].contains("fillfactor = 50"));
        let mut setup = fill("{create_schema}");
        setup.push_str(&sql.migrations_table);
        setup.push(';');
        for (version, text) in (1..).zip(&PgDialect::MIGRATIONS[..old]) {
            setup.push_str(&fill(text));
            setup.push_str(&fill(&format!(
                ";\nINSERT INTO {{migrations}} (version, description) VALUES ({version}, 'old');\n"
            )));
        }
        // Tasks queued by it: three due, one delayed by an hour.
        setup.push_str(&fill(
            "INSERT INTO {table} (payload) VALUES ('1'), ('2'), ('3'); \
             INSERT INTO {table} (payload, run_at) VALUES ('4', now() + interval '1 hour');",
        ));
        sqlx::raw_sql(&setup)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("the old migrations: {e}"));
        let fillfactor = format!(
            "SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class \
             WHERE oid = '{}'::regclass",
            names.table
        );
        let before: String = sqlx::query_scalar(&fillfactor)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(before, "", "the old table has the default fillfactor");

        let mut source = PgSource::<u32>::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("the upgrade: {e}"));
        let after: String = sqlx::query_scalar(&fillfactor)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(after, "fillfactor=50");
        let versions: Vec<i64> =
            sqlx::query_scalar(&fill("SELECT version FROM {migrations} ORDER BY version"))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        let all = PgDialect::MIGRATIONS.len() as i64;
        assert_eq!(versions, (1..=all).collect::<Vec<_>>());

        let fetched = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
        let mut payloads: Vec<u32> = fetched.tasks.iter().map(|t| t.payload).collect();
        payloads.sort_unstable();
        assert_eq!(payloads, [1, 2, 3], "the due tasks, once each");
        let delayed = fetched.wake_on.at.expect("a time to look again");
        assert!(
            delayed > tokio::time::Instant::now() + Duration::from_secs(60),
            "the delayed task is not due: no look again soon"
        );
        let acks = fetched
            .tasks
            .iter()
            .map(crate::task::Ack::completed)
            .collect();
        source.ack(acks).await.unwrap_or_else(|e| panic!("{e}"));
        let states: Vec<String> =
            sqlx::query_scalar(&fill("SELECT state FROM {table} ORDER BY id"))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(states, ["completed", "completed", "completed", "queued"]);
        drop(source);
        drop_schema(&pool, &schema).await;
    }

    /// A short batch is drained, wakes at the next due time the fetch statement reported, and
    /// for a later notification (issue 14).
    #[actix_rt::test]
    async fn a_short_batch_is_drained() {
        let (config, schema) = config();
        let source = PgSource::<u32>::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = source.pool().clone();
        let other = PgQueue::<u32>::new(pool.clone(), &config).unwrap_or_else(|e| panic!("{e}"));
        a_short_batch_is_drained_and_wakes_for_what_follows(source, other).await;
        drop_schema(&pool, &schema).await;
    }

    /// A completed task's ack counts only for the lease it answers.
    #[actix_rt::test]
    async fn a_completed_ack_answers_only_its_lease() {
        let (config, schema) = config();
        let source = PgSource::<u32>::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = source.pool().clone();
        a_completed_ack_answers_only_its_own_lease(source).await;
        drop_schema(&pool, &schema).await;
    }

    /// A due row the fetch skipped (locked by another worker's transaction) makes a short
    /// batch look again soon, not at the fallback poll: that worker may give it back.
    #[actix_rt::test]
    async fn a_short_batch_past_a_locked_row_looks_again_soon() {
        let (config, schema) = config();
        let mut source = PgSource::<u32>::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = source.pool().clone();
        let ids = source
            .queue()
            .enqueue(vec![NewTask::new(1), NewTask::new(2)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut locker = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        let locked = format!(
            "SELECT id FROM \"{schema}\".\"{}\" WHERE id = {} FOR UPDATE",
            crate::source::durable::DEFAULT_TABLE,
            ids[1].0
        );
        sqlx::raw_sql(&locked)
            .execute(&mut *locker)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let asked = tokio::time::Instant::now();
        let short = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(short.tasks.len(), 1);
        assert!(short.drained);
        let at = short.wake_on.at.expect("a time to look again");
        assert!(
            at < asked + Duration::from_secs(60),
            "looks again soon for the locked due row, not at the 600 s poll: {:?}",
            at - asked
        );
        drop(locker);
        drop_schema(&pool, &schema).await;
    }

    /// A notification racing an empty fetch still wakes the poller.
    #[actix_rt::test]
    async fn a_notification_racing_an_empty_fetch_is_not_lost() {
        let (config, schema) = config();
        let source = PgSource::<u32>::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = source.pool().clone();
        let other = PgQueue::<u32>::new(pool.clone(), &config).unwrap_or_else(|e| panic!("{e}"));
        let settle = Duration::from_millis(200);
        a_wake_up_racing_an_empty_fetch_is_not_lost(source, other, settle).await;
        drop_schema(&pool, &schema).await;
    }
}
