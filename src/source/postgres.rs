//! A durable source in PostgreSQL, shared by any number of pollers on any number of machines
//! (feature `postgres`).
//!
//! * **Schema**: one table (default `actix_poller_tasks`, in the configured schema), created and
//!   upgraded at start by the crate's versioned migrations (`migrations/postgres/*.sql`, applied
//!   in one transaction under an advisory lock, so pollers starting together do not race; the
//!   applied versions are kept in `<table>_migrations`). Turn them off with
//!   [`PgConfig::migrate`] if you manage the schema yourself.
//! * **Enqueue**: a batch is one `INSERT … SELECT … FROM unnest(…)` statement. With
//!   [`PgQueue::enqueue_in`] it runs inside the caller's own transaction: the tasks exist only if
//!   that transaction commits.
//! * **Fetch**: one statement leases up to `n` due tasks (highest priority, then earliest due,
//!   then first enqueued) with `FOR UPDATE SKIP LOCKED`: pollers never wait for each other and
//!   never lease the same task.
//! * **Wake-ups**: an insert trigger sends `NOTIFY` on commit; each source keeps one `LISTEN`
//!   connection (reconnected when it drops, with a wake-up in case a notification was missed),
//!   plus a jittered fallback poll ([`PgConfig::poll_interval`]). The signal a fetch hands back
//!   is subscribed before its query runs, so a notification that arrives during an empty fetch
//!   is not lost.
//! * **Leases**: a fetched task is leased for [`PgConfig::lease`]; the poller's heartbeat extends
//!   the leases of the tasks this poller runs, takes back tasks whose lease expired (their worker
//!   died: the attempt counts, and a task out of attempts goes dead), and prunes old finished
//!   tasks. Times are the server's (`now()`), so machines need not agree on the time.
//! * **Acks**: one `UPDATE … FROM unnest(…)` statement per batch, retried a few times if the
//!   connection drops.
//! * **Payloads** are JSON (`jsonb`, serde). A row whose payload does not decode goes dead with
//!   the decoder's error; the others run.
//!
//! # Delivery: at least once
//!
//! A task runs at least once: a poller that dies leaves its leases to expire, and another poller
//! runs the task again, its attempt counted. A task can therefore run more than once: make
//! handlers idempotent (an upsert, a unique key on what the task produces, a check of whether the
//! work is done). A late ack from a poller whose lease expired changes nothing.
//!
//! # Errors at run time
//!
//! If the database goes away, fetches fail and the Fetcher backs off (with jitter) and tries
//! again; acks are retried, and acks that still fail leave their leases to expire, so the tasks
//! run again; the `LISTEN` connection reconnects. Nothing queued is lost, and the poller carries
//! on when the database returns.
//!
//! # Examples
//!
//! ```no_run
//! use actix_poller::source::postgres::{PgConfig, PgSource};
//! use actix_poller::{Poller, RetryPolicy};
//! use std::time::Duration;
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = PgConfig::new("postgres://postgres@127.0.0.1:5432/app").schema("jobs");
//!     let source = PgSource::<String>::connect(config).await?;
//!     let queue = source.queue(); // enqueue from anywhere, even inside your own transaction
//!     let poller = Poller::builder()
//!         .source(source)
//!         .retry(RetryPolicy::attempts(5))
//!         .workers(32)
//!         .start(|email: String, _cx| async move {
//!             let _ = email; // ... send it, idempotently ...
//!             Ok::<_, std::io::Error>(())
//!         })?;
//!     let mut tx = queue.pool().begin().await?;
//!     // ... the user's own writes ...
//!     queue.enqueue_in(&mut tx, vec![actix_poller::source::NewTask::new("hi".into())]).await?;
//!     tx.commit().await?; // the task exists from here on, and the poller is notified
//!     poller.shutdown(Duration::from_secs(10)).await?;
//!     Ok(())
//! }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use super::durable::{self, Leased, Migration, Row, Signal};
use super::{EnqueueResult, FetchLimits, Fetched, NewTask, RetrySupport, Source};
use crate::task::{Ack, DeadTask, Task, TaskId};

const QUERIES: &str = include_str!("sql/postgres.sql");

/// The crate's migrations for PostgreSQL: version, description, SQL.
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "create the task table and its notify trigger",
        include_str!("../../migrations/postgres/0001_create_tasks.sql"),
    ),
    (
        2,
        "index leases by lease_until, not by state",
        include_str!("../../migrations/postgres/0002_lease_index.sql"),
    ),
];

/// The default table name.
pub const DEFAULT_TABLE: &str = "actix_poller_tasks";

/// How many finished rows one prune statement deletes at most.
const PRUNE_BATCH: i64 = 10_000;
/// How many prune statements one heartbeat runs at most.
const PRUNE_ROUNDS: usize = 20;

/// What can go wrong with a [`PgSource`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The database could not be reached at start.
    #[error(
        "cannot connect to PostgreSQL at {target}: {source} (is the server running, and the \
         URL right?)"
    )]
    Connect {
        /// Host, port and database (no password).
        target: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The configuration is invalid (a malformed URL, a table or schema name that is not a plain
    /// identifier).
    #[error("invalid PostgreSQL source configuration: {0}")]
    Config(String),
    /// A migration failed; nothing of it was applied.
    #[error("PostgreSQL migration {version} ({description}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// What it does.
        description: &'static str,
        /// Why it failed.
        source: sqlx::Error,
    },
    /// The database holds a schema newer than this version of the crate knows.
    #[error(
        "the PostgreSQL table was migrated to version {found} by a newer actix-poller; this \
         one knows up to {known}"
    )]
    SchemaTooNew {
        /// The newest version found in the database.
        found: i64,
        /// The newest version this crate knows.
        known: i64,
    },
    /// A statement failed.
    #[error("PostgreSQL error: {0}")]
    Database(#[from] sqlx::Error),
    /// A payload could not be encoded as JSON.
    #[error("cannot encode a payload as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How to open a [`PgSource`]: the URL, the schema and table, leases, polling, retention.
///
/// # Examples
///
/// ```
/// use actix_poller::source::postgres::PgConfig;
/// use std::time::Duration;
///
/// let config = PgConfig::new("postgres://app@db.internal/app")
///     .schema("background")
///     .table("mail")
///     .lease(Duration::from_secs(60))
///     .poll_interval(Duration::from_secs(10))
///     .completed_retention(Some(Duration::from_secs(7 * 24 * 3600)));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct PgConfig {
    url: String,
    schema: Option<String>,
    table: String,
    lease: Duration,
    poll_interval: Duration,
    poll_jitter: f64,
    retention: Option<Duration>,
    migrate: bool,
    batch: usize,
    max_connections: u32,
    connect_timeout: Duration,
    application_name: String,
    async_commit: bool,
}

impl PgConfig {
    /// The database at `url` (`postgres://user:password@host:port/database`), with the
    /// defaults: no schema (the connection's `search_path`), table [`DEFAULT_TABLE`], 30 s
    /// leases, a 5 s fallback poll with 20 % jitter, completed tasks kept 24 h, migrations on,
    /// fetches of at most 1 000 tasks, 8 pooled connections.
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            poll_jitter: 0.2,
            retention: Some(Duration::from_secs(24 * 3600)),
            migrate: true,
            batch: 1_000,
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            application_name: "actix-poller".to_owned(),
            async_commit: true,
        }
    }

    /// The schema of the table (created by the migrations if missing): a plain identifier.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    durable::config_setters! {
        /// How often an idle poller looks for due tasks without a notification (default 5 s):
        /// the fallback when a notification is missed.
        fn poll_interval;

        /// The size of each of the source's pools (default 8): the main pool (enqueues, the
        /// `LISTEN` connection, which keeps one of its connections, cancels, dead tasks) and, with
        /// [`async_commit`](Self::async_commit), the pool for fetches, acks and heartbeats.
        fn max_connections;
    }

    /// How long to wait for a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `application_name` of the source's connections (default `actix-poller`), as
    /// `pg_stat_activity` shows it.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Whether the poller's own bookkeeping (fetches, acks, lease extensions, releases) commits
    /// with `synchronous_commit = off` (default `true`), through a second pool of the same size.
    ///
    /// It saves a WAL flush per statement on the hot path (lower latency, more tasks per
    /// second) and stays within "at least once": if the *server* crashes, the last fraction of a
    /// second of those commits may be lost, so a lease is forgotten (the task runs again) or an
    /// ack is (its lease expires and the task runs again). Enqueues are never affected: they
    /// commit as the caller's connection says.
    pub fn async_commit(mut self, on: bool) -> Self {
        self.async_commit = on;
        self
    }

    fn check(&self) -> Result<(), PgError> {
        for (what, name) in [
            ("table", Some(&self.table)),
            ("schema", self.schema.as_ref()),
        ] {
            if let Some(name) = name {
                if !durable::valid_identifier(name) {
                    return Err(PgError::Config(format!(
                        "{what} name {name:?} must be a plain identifier (letters, digits, _; \
                         at most 48 bytes)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Placeholders of the SQL files.
    fn names(&self) -> Names {
        let prefix = self
            .schema
            .as_ref()
            .map_or(String::new(), |s| format!("\"{s}\"."));
        let table = &self.table;
        Names {
            prefix: prefix.clone(),
            table: format!("{prefix}\"{table}\""),
            name: table.clone(),
            function: format!("{prefix}\"{table}_notify\""),
            migrations: format!("{prefix}\"{table}_migrations\""),
            channel: match &self.schema {
                Some(s) => format!("{s}.{table}"),
                None => table.clone(),
            },
        }
    }
}

#[derive(Debug)]
struct Names {
    /// The quoted schema and a dot, or nothing (to name the table's indexes).
    prefix: String,
    table: String,
    name: String,
    function: String,
    migrations: String,
    channel: String,
}

impl Names {
    fn vars(&self) -> [(&str, &str); 5] {
        [
            ("prefix", self.prefix.as_str()),
            ("table", self.table.as_str()),
            ("name", self.name.as_str()),
            ("function", self.function.as_str()),
            ("channel", self.channel.as_str()),
        ]
    }
}

// The statements every durable source has, and (PostgreSQL) `notify`.
durable::statements!(notify);

impl Sql {
    fn new(names: &Names) -> Self {
        let vars = names.vars();
        Sql::render(|name| durable::statement(QUERIES, name, &vars))
    }
}

/// A durable task source in PostgreSQL. See the [module docs](self).
pub struct PgSource<T> {
    queue: PgQueue<T>,
    owner: i64,
    lease: Duration,
    poll_interval: Duration,
    poll_jitter: f64,
    retention: Option<Duration>,
    batch: usize,
    leased: Leased,
    /// Fetches, acks, heartbeats and releases: commits that need not wait for the WAL flush
    /// (see [`PgConfig::async_commit`]).
    leases: PgPool,
    /// Bumped by the `LISTEN` task on every notification.
    signal: Arc<Signal>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl<T> fmt::Debug for PgSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSource")
            .field("table", &self.queue.table)
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .field("leased", &self.leased.borrow().len())
            .finish_non_exhaustive()
    }
}

impl<T> Drop for PgSource<T> {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

/// Enqueues into a [`PgSource`]'s table from anywhere (cheap to clone, `Send + Sync`), alone or
/// inside the caller's transaction. Every poller on the table is notified on commit. Get one
/// from [`PgSource::queue`], or build one with [`PgQueue::new`].
pub struct PgQueue<T> {
    pool: PgPool,
    sql: Arc<Sql>,
    table: Arc<str>,
    _payload: PhantomData<fn(T)>,
}

impl<T> Clone for PgQueue<T> {
    fn clone(&self) -> Self {
        PgQueue {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            table: Arc::clone(&self.table),
            _payload: PhantomData,
        }
    }
}

impl<T> fmt::Debug for PgQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgQueue")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A batch as the `enqueue` statement takes it: payloads, priorities, delays (µs), attempts,
/// timeouts (ms).
type Columns = (Vec<String>, Vec<i32>, Vec<i64>, Vec<i32>, Vec<Option<i64>>);

fn columns<T: Serialize>(tasks: &[NewTask<T>]) -> Result<Columns, serde_json::Error> {
    let mut c: Columns = Default::default();
    for t in tasks {
        c.0.push(serde_json::to_string(&t.payload)?);
        c.1.push(t.priority);
        c.2.push(durable::delay_us(t.run_at));
        c.3.push(t.max_attempts.clamp(1, i32::MAX as u32) as i32);
        c.4.push(durable::timeout_ms(t.timeout));
    }
    Ok(c)
}

async fn insert<'c, E>(executor: E, sql: &str, c: Columns) -> Result<Vec<TaskId>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let ids: Vec<i64> = sqlx::query_scalar(sql)
        .bind(c.0)
        .bind(c.1)
        .bind(c.2)
        .bind(c.3)
        .bind(c.4)
        .fetch_all(executor)
        .await?;
    // Ids grow in insert order: sorted, they are the batch's order.
    Ok(durable::sorted_ids(ids))
}

impl<T: Serialize> PgQueue<T> {
    /// A queue on the table `config` names, through `pool` (no migration, no listener).
    ///
    /// # Errors
    ///
    /// [`PgError::Config`] for an invalid table or schema name.
    pub fn new(pool: PgPool, config: &PgConfig) -> Result<Self, PgError> {
        config.check()?;
        Ok(PgQueue {
            pool,
            sql: Arc::new(Sql::new(&config.names())),
            table: config.names().table.into(),
            _payload: PhantomData,
        })
    }

    /// Enqueues a batch in one statement; returns the new ids, in the batch's order.
    ///
    /// # Errors
    ///
    /// [`PgError::Encode`] if a payload does not serialize; [`PgError::Database`] if the insert
    /// fails (then nothing was inserted).
    pub async fn enqueue(&self, tasks: Vec<NewTask<T>>) -> Result<Vec<TaskId>, PgError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let c = columns(&tasks)?;
        Ok(insert(&self.pool, &self.sql.enqueue, c).await?)
    }

    /// Enqueues a batch on `conn`, typically the caller's open transaction (`&mut tx`): the
    /// tasks exist only if it commits, and the pollers are notified when it does.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue); a failed statement also aborts the caller's transaction,
    /// as any failed statement does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use actix_poller::source::postgres::{PgQueue, PgError};
    /// use actix_poller::source::NewTask;
    /// # async fn f(queue: PgQueue<String>) -> Result<(), PgError> {
    /// let mut tx = queue.pool().begin().await?;
    /// sqlx::query("UPDATE accounts SET welcomed = true WHERE id = 7").execute(&mut *tx).await?;
    /// queue.enqueue_in(&mut tx, vec![NewTask::new("welcome mail for 7".into())]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        tasks: Vec<NewTask<T>>,
    ) -> Result<Vec<TaskId>, PgError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let c = columns(&tasks)?;
        Ok(insert(conn, &self.sql.enqueue, c).await?)
    }

    /// The connection pool (for the caller's own transactions).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl<T> PgSource<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    /// Connects, applies the migrations unless turned off, starts listening for notifications,
    /// and takes back tasks whose lease expired while no poller ran.
    ///
    /// Call it inside a tokio runtime (the actix `System` counts): the `LISTEN` connection runs
    /// as a task of that runtime until the source is closed or dropped.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`] when the server cannot be reached (it names host, port and
    /// database); [`PgError::Config`] for a malformed URL or name; [`PgError::Migration`] /
    /// [`PgError::SchemaTooNew`] when the schema cannot be brought to this crate's version.
    pub async fn connect(config: PgConfig) -> Result<Self, PgError> {
        config.check()?;
        let options = PgConnectOptions::from_str(&config.url)
            .map_err(|e| PgError::Config(format!("malformed PostgreSQL URL: {e}")))?
            .application_name(&config.application_name);
        let target = format!(
            "{}:{} (database {})",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("<default>")
        );
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|source| PgError::Connect { target, source })?;
        Self::with_pool(pool, config).await
    }

    /// Uses an existing pool. Only the schema, table, lease, poll, retention, migration,
    /// batch and async-commit settings of `config` apply (and its pool size, for the second
    /// pool [`PgConfig::async_commit`] opens with the same connect options). The `LISTEN`
    /// connection keeps one of the pool's connections.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), without [`PgError::Connect`].
    pub async fn with_pool(pool: PgPool, config: PgConfig) -> Result<Self, PgError> {
        config.check()?;
        let names = config.names();
        if config.migrate {
            migrate(&pool, &config, &names).await?;
        }
        let sql = Arc::new(Sql::new(&names));
        let leases = if config.async_commit {
            let options = (*pool.connect_options())
                .clone()
                .options([("synchronous_commit", "off")]);
            PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(config.connect_timeout)
                .connect_lazy_with(options)
        } else {
            pool.clone()
        };
        let (signal, _) = watch::channel(0u64);
        let signal = Arc::new(signal);
        // Listening before the first fetch: no notification after this point is missed.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&names.channel).await?;
        let listener = tokio::spawn(listen(listener, Arc::clone(&signal)));
        let source = PgSource {
            queue: PgQueue {
                pool,
                sql,
                table: names.table.as_str().into(),
                _payload: PhantomData,
            },
            owner: durable::new_owner(),
            lease: config.lease,
            poll_interval: config.poll_interval,
            poll_jitter: config.poll_jitter,
            retention: config.retention,
            batch: config.batch,
            leased: Leased::default(),
            leases,
            signal,
            listener: Some(listener),
        };
        reclaim(&source.leases, &source.queue.sql).await?;
        Ok(source)
    }

    /// A handle to enqueue from anywhere, alone or in the caller's transaction.
    pub fn queue(&self) -> PgQueue<T> {
        self.queue.clone()
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.queue.pool
    }

    /// The schema-qualified, quoted table name.
    pub fn table(&self) -> &str {
        &self.queue.table
    }
}

/// The `LISTEN` loop: every notification (and every reconnection, when notifications may have
/// been missed) bumps the signal the fetches wait on.
async fn listen(mut listener: PgListener, signal: Arc<Signal>) {
    let mut failures: u32 = 0;
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => {
                failures = 0;
                durable::bump(&signal);
            }
            Ok(None) => {
                tracing::warn!("the LISTEN connection was lost; reconnected");
                durable::bump(&signal);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay =
                    crate::task::Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
                        .delay(failures);
                tracing::warn!(%error, ?delay, "the LISTEN connection failed; retrying");
                durable::bump(&signal);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn reclaim(pool: &PgPool, sql: &Sql) -> Result<(), sqlx::Error> {
    let states: Vec<String> = sqlx::query_scalar(&sql.reclaim).fetch_all(pool).await?;
    if durable::report_reclaimed(&states) {
        sqlx::query(&sql.notify).execute(pool).await?;
    }
    Ok(())
}

/// Applies the crate's migrations not yet applied, in one transaction holding an advisory lock
/// on the table's name, so pollers starting together apply them once.
async fn migrate(pool: &PgPool, config: &PgConfig, names: &Names) -> Result<(), PgError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("actix-poller:{}", names.table))
        .execute(&mut *tx)
        .await?;
    if let Some(schema) = &config.schema {
        sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut *tx)
            .await?;
    }
    let migrations = &names.migrations;
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {migrations} (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .execute(&mut *tx)
    .await?;
    let applied: HashSet<i64> =
        sqlx::query_scalar::<_, i64>(&format!("SELECT version FROM {migrations}"))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let pending = durable::pending_migrations(MIGRATIONS, &applied)
        .map_err(|(found, known)| PgError::SchemaTooNew { found, known })?;
    for (version, description, text) in pending {
        let wrap = |source| PgError::Migration {
            version: *version,
            description,
            source,
        };
        sqlx::raw_sql(&durable::fill(text, &names.vars()))
            .execute(&mut *tx)
            .await
            .map_err(wrap)?;
        sqlx::query(&format!(
            "INSERT INTO {migrations} (version, description) VALUES ($1, $2)"
        ))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
        tracing::info!(table = %names.table, version, description, "applied a migration");
    }
    tx.commit().await?;
    Ok(())
}

type FetchedRow = (i64, i32, i32, i32, Option<i64>, String, i64, i64);

impl<T> Source<T> for PgSource<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    type Error = PgError;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, PgError>> {
        let pool = self.leases.clone();
        let sql = Arc::clone(&self.queue.sql);
        let leased = self.leased.clone();
        let owner = self.owner;
        let lease_us = durable::micros(self.lease);
        let poll = durable::jittered(self.poll_interval, self.poll_jitter);
        // Subscribed before the query: a notification during an empty fetch still wakes.
        let signal = durable::wait_for_bump(&self.signal);
        let max = max.min(self.batch).max(1);
        async move {
            let rows: Vec<FetchedRow> = sqlx::query_as(&sql.fetch)
                .bind(max as i64)
                .bind(owner)
                .bind(lease_us)
                .fetch_all(&pool)
                .await?;
            let full = rows.len() >= max;
            let mut rows: Vec<Row> = rows
                .into_iter()
                .map(|r| Row {
                    id: r.0,
                    attempt: r.1.into(),
                    max_attempts: r.2.into(),
                    priority: r.3.into(),
                    timeout_ms: r.4,
                    payload: r.5,
                    enqueued_at_us: r.6,
                    run_at_us: r.7,
                })
                .collect();
            durable::sort_rows(&mut rows);
            let (tasks, bad) = durable::decode_rows::<T>(rows, &leased);
            let bury = |id: i64, error: String| {
                sqlx::query(&sql.bury)
                    .bind(id)
                    .bind(error)
                    .bind(owner)
                    .execute(&pool)
            };
            // Not run unless the fetch came back empty.
            let next_wait_us = sqlx::query_scalar(&sql.next_due).fetch_one(&pool);
            Ok(durable::after_fetch(tasks, bad, full, poll, signal, bury, next_wait_us).await)
        }
        .boxed_local()
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), PgError>> {
        let leased = Rc::clone(&self.leased);
        let acked = self
            .leased
            .borrow()
            .stamps(acks.iter().map(|ack| ack.id.0 as i64));
        let pool = self.leases.clone();
        let sql = Arc::clone(&self.queue.sql);
        let owner = self.owner;
        let rows = durable::ack_rows(acks);
        async move {
            let mut ids = Vec::with_capacity(rows.len());
            let mut attempts = Vec::with_capacity(rows.len());
            let mut kinds = Vec::with_capacity(rows.len());
            let mut after = Vec::with_capacity(rows.len());
            let mut errors = Vec::with_capacity(rows.len());
            for (id, attempt, kind, after_us, error) in rows {
                ids.push(id);
                attempts.push(attempt);
                kinds.push(kind);
                after.push(after_us);
                errors.push(error);
            }
            durable::with_retries(5, || {
                sqlx::query(&sql.ack)
                    .bind(&ids)
                    .bind(&attempts)
                    .bind(&kinds)
                    .bind(&after)
                    .bind(&errors)
                    .bind(owner)
                    .execute(&pool)
            })
            .await?;
            // Only now: until the ack lands (it may fail and wait for its retry), the heartbeat
            // keeps extending these leases, so no other poller takes the tasks back and runs
            // them again.
            leased.borrow_mut().forget_stamped(acked);
            Ok(())
        }
        .boxed_local()
    }

    fn limits(&self) -> FetchLimits {
        FetchLimits {
            max_batch: self.batch,
            max_in_flight: 1,
        }
    }

    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        let queue = self.queue.clone();
        durable::enqueue_or_hand_back(tasks, columns, move |c| async move {
            insert(&queue.pool, &queue.sql.enqueue, c).await
        })
        .boxed_local()
    }

    fn cancel(&mut self, id: TaskId) -> LocalBoxFuture<'static, Result<bool, PgError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let done = sqlx::query(&sql.cancel)
                .bind(id.0 as i64)
                .execute(&pool)
                .await?;
            Ok(done.rows_affected() > 0)
        }
        .boxed_local()
    }

    fn dead_tasks(
        &mut self,
        limit: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<DeadTask>, PgError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let rows: Vec<(i64, i32, String, i64)> = sqlx::query_as(&sql.dead_list)
                .bind(limit.min(i64::MAX as usize) as i64)
                .fetch_all(&pool)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, attempts, error, died)| {
                    durable::dead_task(id, attempts, error, durable::system_time(died))
                })
                .collect())
        }
        .boxed_local()
    }

    fn rerun_dead(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<Vec<TaskId>, PgError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let rerun: Vec<i64> = sqlx::query_scalar(&sql.dead_rerun)
                .bind(durable::raw_ids(&ids))
                .fetch_all(&pool)
                .await?;
            let rerun = durable::sorted_ids(rerun);
            if !rerun.is_empty() {
                sqlx::query(&sql.notify).execute(&pool).await?;
            }
            Ok(rerun)
        }
        .boxed_local()
    }

    fn purge_dead(
        &mut self,
        ids: Option<Vec<TaskId>>,
    ) -> LocalBoxFuture<'static, Result<usize, PgError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let done = match ids {
                None => sqlx::query(&sql.dead_purge_all).execute(&pool).await?,
                Some(ids) => {
                    sqlx::query(&sql.dead_purge)
                        .bind(durable::raw_ids(&ids))
                        .execute(&pool)
                        .await?
                }
            };
            Ok(done.rows_affected() as usize)
        }
        .boxed_local()
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.lease / 3)
    }

    fn heartbeat(&mut self) -> LocalBoxFuture<'static, Result<(), PgError>> {
        let pool = self.leases.clone();
        let sql = Arc::clone(&self.queue.sql);
        let owner = self.owner;
        let lease_us = durable::micros(self.lease);
        let retention = self.retention;
        let ids: Vec<i64> = self.leased.borrow().ids();
        async move {
            if !ids.is_empty() {
                let extended = sqlx::query(&sql.extend)
                    .bind(&ids)
                    .bind(owner)
                    .bind(lease_us)
                    .execute(&pool)
                    .await?;
                durable::report_extended(ids.len(), extended.rows_affected());
            }
            reclaim(&pool, &sql).await?;
            if let Some(keep) = retention {
                durable::prune(PRUNE_BATCH, PRUNE_ROUNDS, || async {
                    let pruned = sqlx::query(&sql.prune)
                        .bind(durable::micros(keep))
                        .bind(PRUNE_BATCH)
                        .execute(&pool)
                        .await?;
                    Ok(pruned.rows_affected())
                })
                .await?;
            }
            Ok(())
        }
        .boxed_local()
    }

    fn close(
        &mut self,
        unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, PgError>> {
        let ids: Vec<i64> = unstarted.iter().map(|t| t.id.0 as i64).collect();
        self.leased.borrow_mut().forget(ids.iter().copied());
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        let pool = self.leases.clone();
        let sql = Arc::clone(&self.queue.sql);
        let owner = self.owner;
        async move {
            if !ids.is_empty() {
                let released = durable::with_retries(3, || {
                    sqlx::query(&sql.release)
                        .bind(&ids)
                        .bind(owner)
                        .execute(&pool)
                })
                .await?;
                tracing::debug!(
                    released = released.rows_affected(),
                    "released unstarted tasks"
                );
                // Other pollers may be idle: tell them.
                sqlx::query(&sql.notify).execute(&pool).await?;
            }
            Ok(Vec::new())
        }
        .boxed_local()
    }
}

impl<T> RetrySupport<T> for PgSource<T> {
    /// Nothing to do: the table keeps every payload.
    fn enable_retries(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_in_the_file() {
        let names = PgConfig::new("postgres://x").schema("s").table("t").names();
        assert_eq!(names.table, "\"s\".\"t\"");
        assert_eq!(names.channel, "s.t");
        let sql = Sql::new(&names);
        assert!(sql.fetch.contains("SKIP LOCKED"));
        assert!(sql.notify.contains("'s.t'"));
        assert!(!sql.dead_purge_all.contains('{'));
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(PgConfig::new("x").schema("a b").check().is_err());
        assert!(PgConfig::new("x").table("t\"").check().is_err());
        assert!(PgConfig::new("x")
            .schema("ok")
            .table("ok_2")
            .check()
            .is_ok());
    }

    fn url() -> String {
        std::env::var("ACTIX_POLLER_PG_URL").unwrap_or_else(|_| {
            panic!(
                "set ACTIX_POLLER_PG_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run \
                 the PostgreSQL tests"
            )
        })
    }

    /// The lost wake-up race: a fetch finds nothing; a task is committed (and its notification
    /// delivered) after the fetch's query but before the Fetcher waits on the fetch's signal.
    /// The signal was subscribed before the query, so it has already fired.
    #[actix_rt::test]
    async fn a_notification_racing_an_empty_fetch_is_not_lost() {
        let schema = format!("ap_unit_{:x}", fastrand::u64(..));
        let config = PgConfig::new(url())
            .schema(&schema)
            .poll_interval(Duration::from_secs(600));
        let mut source = PgSource::<u32>::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let other =
            PgQueue::<u32>::new(source.pool().clone(), &config).unwrap_or_else(|e| panic!("{e}"));

        // No notification: the signal stays quiet (the test can tell a wake from none).
        let quiet = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(quiet.tasks.is_empty());
        let signal = quiet.wake_on.signal.expect("a LISTEN signal");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), signal)
                .await
                .is_err(),
            "no spurious wake-up"
        );

        // The race: the fetch ran (empty) before the insert; the notification lands before
        // anyone waits on the signal.
        let empty = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(empty.tasks.is_empty());
        other
            .enqueue(vec![NewTask::new(1)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let signal = empty.wake_on.signal.expect("a LISTEN signal");
        tokio::time::timeout(Duration::from_millis(50), signal)
            .await
            .expect("the notification that raced the empty fetch wakes the poller");

        // A notification that arrives while the fetch future exists but before it ran.
        let pending = source.fetch(10);
        other
            .enqueue(vec![NewTask::new(2)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = pending.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.tasks.len(), 2, "the query sees both");

        let _ = sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(source.pool())
            .await;
    }
}
