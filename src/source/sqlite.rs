//! A durable source in a SQLite database: tasks survive a crash of the process (feature
//! `sqlite`).
//!
//! SQLite is the embedded durable choice: one file on one machine, no server. Several processes
//! on the same machine may share the file; SQLite lets one of them write at a time, and every
//! state change here is one statement, so two pollers never lease the same task.
//!
//! * **Schema**: one table (default `actix_poller_tasks`), created and upgraded at start by the
//!   crate's versioned migrations (`migrations/sqlite/*.sql`, applied in one `BEGIN IMMEDIATE`
//!   transaction; the applied versions are kept in `<table>_migrations`). Turn them off with
//!   [`SqliteConfig::migrate`] if you manage the schema yourself.
//! * **Enqueue**: a batch is one `INSERT … SELECT … FROM json_each(?)` statement.
//! * **Fetch**: one `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …` statement leases up to
//!   `n` due tasks, highest priority first, then earliest due, then first enqueued.
//! * **Leases**: a fetched task is leased for [`SqliteConfig::lease`]; the poller's heartbeat
//!   extends the leases of the tasks this poller runs, takes back tasks whose lease expired (their
//!   worker died: the attempt counts, and a task out of attempts goes dead) and prunes old
//!   finished tasks.
//! * **Acks**: one `UPDATE … FROM json_each(?)` statement per batch.
//! * **Wake-ups**: a local submit (through the poller or a [`SqliteQueue`] of this source) wakes
//!   the poller at once; tasks written by other processes are seen by a jittered poll
//!   ([`SqliteConfig::poll_interval`]).
//! * **Payloads** are JSON (serde). A row whose payload does not decode goes dead with the
//!   decoder's error; the others run.
//!
//! # Delivery: at least once
//!
//! A task runs at least once: a poller that dies (killed, crashed, machine lost) leaves its
//! leases to expire, and the task runs again, its attempt counted. A task can therefore run more
//! than once: make handlers idempotent (an upsert instead of an insert, a unique key on what the
//! task produces, a check of whether the work is done). Tasks still queued are never lost.
//!
//! Durability: WAL journal with `synchronous = NORMAL` by default, which survives a crash of the
//! process (the case leases are for); [`SqliteConfig::full_sync`] also survives a power loss,
//! at the cost of an fsync per commit.
//!
//! # Examples
//!
//! ```no_run
//! use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
//! use actix_poller::{Poller, RetryPolicy};
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { image: String, width: u32 }
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let source = SqliteSource::<Resize>::connect(SqliteConfig::new("tasks.db")).await?;
//!     let poller = Poller::builder()
//!         .source(source)
//!         .retry(RetryPolicy::attempts(5))
//!         .workers(8)
//!         .start(|job: Resize, _cx| async move {
//!             let _ = (job.image, job.width); // ... resize, idempotently ...
//!             Ok::<_, std::io::Error>(())
//!         })?;
//!     poller.submit(Resize { image: "a.png".into(), width: 640 }).await.ok();
//!     poller.shutdown(Duration::from_secs(10)).await?;
//!     Ok(())
//! }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::watch;

use super::durable::{self, Leased, Migration, Row, Signal};
use super::{EnqueueResult, FetchLimits, Fetched, NewTask, RetrySupport, Source};
use crate::task::{Ack, DeadTask, Task, TaskId};

const QUERIES: &str = include_str!("sql/sqlite.sql");

/// The crate's migrations for SQLite: version, description, SQL.
const MIGRATIONS: &[Migration] = &[(
    1,
    "create the task table",
    include_str!("../../migrations/sqlite/0001_create_tasks.sql"),
)];

/// The default table name.
pub const DEFAULT_TABLE: &str = "actix_poller_tasks";

/// How many finished rows one prune statement deletes at most.
const PRUNE_BATCH: i64 = 5_000;
/// How many prune statements one heartbeat runs at most.
const PRUNE_ROUNDS: usize = 20;

/// What can go wrong with a [`SqliteSource`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The database file could not be opened or created.
    #[error("cannot open the SQLite database at {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: sqlx::Error,
    },
    /// The configuration is invalid (e.g. a table name that is not a plain identifier).
    #[error("invalid SQLite source configuration: {0}")]
    Config(String),
    /// A migration failed; nothing of it was applied.
    #[error("SQLite migration {version} ({description}) failed: {source}")]
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
        "the SQLite table was migrated to version {found} by a newer actix-poller; this one \
         knows up to {known}"
    )]
    SchemaTooNew {
        /// The newest version found in the database.
        found: i64,
        /// The newest version this crate knows.
        known: i64,
    },
    /// A statement failed.
    #[error("SQLite error: {0}")]
    Database(#[from] sqlx::Error),
    /// A payload could not be encoded as JSON.
    #[error("cannot encode a payload as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How to open a [`SqliteSource`]: the file, the table, leases, polling, retention.
///
/// # Examples
///
/// ```
/// use actix_poller::source::sqlite::SqliteConfig;
/// use std::time::Duration;
///
/// let config = SqliteConfig::new("/var/lib/app/tasks.db")
///     .table("mail_tasks")
///     .lease(Duration::from_secs(60))
///     .completed_retention(Some(Duration::from_secs(3600)));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    path: PathBuf,
    table: String,
    lease: Duration,
    poll_interval: Duration,
    poll_jitter: f64,
    retention: Option<Duration>,
    migrate: bool,
    batch: usize,
    max_connections: u32,
    busy_timeout: Duration,
    full_sync: bool,
}

impl SqliteConfig {
    /// The database at `path` (created if missing), with the defaults: table
    /// [`DEFAULT_TABLE`], 30 s leases, a 1 s poll with 20 % jitter, completed tasks kept for
    /// 24 h, migrations on, fetches of at most 1 000 tasks.
    pub fn new(path: impl AsRef<Path>) -> Self {
        SqliteConfig {
            path: path.as_ref().to_path_buf(),
            table: DEFAULT_TABLE.to_owned(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            poll_jitter: 0.2,
            retention: Some(Duration::from_secs(24 * 3600)),
            migrate: true,
            batch: 1_000,
            max_connections: 4,
            busy_timeout: Duration::from_secs(10),
            full_sync: false,
        }
    }

    durable::config_setters! {
        /// How often an idle poller looks for tasks written by other processes (default 1 s);
        /// local submits wake it at once.
        fn poll_interval;

        /// The connection pool's size (default 4).
        fn max_connections;
    }

    /// How long a statement waits for another process's write to finish (default 10 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// `synchronous = FULL`: every commit is on disk before it returns, so a power loss loses
    /// nothing (default `false`: `NORMAL`, which survives a crash of the process).
    pub fn full_sync(mut self, full: bool) -> Self {
        self.full_sync = full;
        self
    }

    fn connect_options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if self.full_sync {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(self.busy_timeout)
    }
}

// The statements every durable source has.
durable::statements!();

impl Sql {
    fn new(table: &str) -> Self {
        let quoted = format!("\"{table}\"");
        let vars = [("table", quoted.as_str()), ("name", table)];
        Sql::render(|name| durable::statement(QUERIES, name, &vars))
    }
}

/// A durable task source in a SQLite database. See the [module docs](self).
pub struct SqliteSource<T> {
    queue: SqliteQueue<T>,
    owner: i64,
    lease: Duration,
    poll_interval: Duration,
    poll_jitter: f64,
    retention: Option<Duration>,
    batch: usize,
    leased: Leased,
}

impl<T> fmt::Debug for SqliteSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSource")
            .field("table", &self.queue.table)
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .field("leased", &self.leased.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Enqueues into a [`SqliteSource`]'s table from anywhere in the process (cheap to clone,
/// `Send + Sync`); the source's poller is woken at once. Get one from [`SqliteSource::queue`].
pub struct SqliteQueue<T> {
    pool: SqlitePool,
    sql: Arc<Sql>,
    table: Arc<str>,
    signal: Arc<Signal>,
    _payload: PhantomData<fn(T)>,
}

impl<T> Clone for SqliteQueue<T> {
    fn clone(&self) -> Self {
        SqliteQueue {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            table: Arc::clone(&self.table),
            signal: Arc::clone(&self.signal),
            _payload: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SqliteQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Encodes a batch for the `enqueue` statement.
fn encode_batch<T: Serialize>(tasks: &[NewTask<T>]) -> Result<String, serde_json::Error> {
    let now = durable::now_us();
    let rows = tasks
        .iter()
        .map(|t| {
            Ok((
                serde_json::to_string(&t.payload)?,
                t.priority,
                now + durable::delay_us(t.run_at),
                t.max_attempts.max(1),
                durable::timeout_ms(t.timeout),
            ))
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    serde_json::to_string(&rows)
}

async fn insert<'c, E>(executor: E, sql: &str, batch: &str) -> Result<Vec<TaskId>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let ids: Vec<i64> = sqlx::query_scalar(sql)
        .bind(batch)
        .bind(durable::now_us())
        .fetch_all(executor)
        .await?;
    // Ids grow in insert order: sorted, they are the batch's order.
    Ok(durable::sorted_ids(ids))
}

impl<T: Serialize> SqliteQueue<T> {
    /// Enqueues a batch in one statement; returns the new ids, in the batch's order.
    ///
    /// # Errors
    ///
    /// [`SqliteError::Encode`] if a payload does not serialize; [`SqliteError::Database`] if
    /// the insert fails (then nothing was inserted).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    /// use actix_poller::source::NewTask;
    /// # async fn f() -> Result<(), actix_poller::source::sqlite::SqliteError> {
    /// let source = SqliteSource::<String>::connect(SqliteConfig::new("tasks.db")).await?;
    /// let queue = source.queue();
    /// let ids = queue.enqueue(vec![NewTask::new("a".to_string())]).await?;
    /// assert_eq!(ids.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue(&self, tasks: Vec<NewTask<T>>) -> Result<Vec<TaskId>, SqliteError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let batch = encode_batch(&tasks)?;
        let ids = insert(&self.pool, &self.sql.enqueue, &batch).await?;
        self.notify();
        Ok(ids)
    }

    /// Enqueues a batch on `conn`, e.g. inside the caller's own transaction
    /// (`&mut *tx`): the tasks exist only if it commits. Call [`notify`](Self::notify) after
    /// the commit to wake the poller at once (otherwise its poll finds them).
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_in(
        &self,
        conn: &mut SqliteConnection,
        tasks: Vec<NewTask<T>>,
    ) -> Result<Vec<TaskId>, SqliteError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let batch = encode_batch(&tasks)?;
        Ok(insert(conn, &self.sql.enqueue, &batch).await?)
    }

    /// Wakes the source's poller: new tasks may be due.
    pub fn notify(&self) {
        durable::bump(&self.signal);
    }

    /// The connection pool (for the caller's own transactions).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl<T> SqliteSource<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    /// Opens (creating if missing) the database, applies the migrations unless turned off, and
    /// takes back tasks whose lease expired while no poller ran.
    ///
    /// # Errors
    ///
    /// [`SqliteError::Open`] when the file cannot be opened or created (a missing directory,
    /// no permission, not a database); [`SqliteError::Config`] for an invalid table name;
    /// [`SqliteError::Migration`] / [`SqliteError::SchemaTooNew`] when the schema cannot be
    /// brought to this crate's version.
    pub async fn connect(config: SqliteConfig) -> Result<Self, SqliteError> {
        check_table(&config.table)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.busy_timeout + Duration::from_secs(5))
            .connect_with(config.connect_options())
            .await
            .map_err(|source| SqliteError::Open {
                path: config.path.clone(),
                source,
            })?;
        Self::with_pool(pool, config).await
    }

    /// Uses an existing pool (its connect options are the caller's: WAL and a busy timeout are
    /// advised). Only the table, lease, poll, retention, migration and batch settings of
    /// `config` apply.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), without [`SqliteError::Open`].
    pub async fn with_pool(pool: SqlitePool, config: SqliteConfig) -> Result<Self, SqliteError> {
        check_table(&config.table)?;
        if config.migrate {
            migrate(&pool, &config.table).await?;
        }
        let sql = Arc::new(Sql::new(&config.table));
        let (signal, _) = watch::channel(0u64);
        let source = SqliteSource {
            queue: SqliteQueue {
                pool,
                sql,
                table: config.table.as_str().into(),
                signal: Arc::new(signal),
                _payload: PhantomData,
            },
            owner: durable::new_owner(),
            lease: config.lease,
            poll_interval: config.poll_interval,
            poll_jitter: config.poll_jitter,
            retention: config.retention,
            batch: config.batch,
            leased: Leased::default(),
        };
        source.reclaim_now().await?;
        Ok(source)
    }

    /// A handle to enqueue from anywhere in the process; it wakes this source's poller.
    pub fn queue(&self) -> SqliteQueue<T> {
        self.queue.clone()
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.queue.pool
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.queue.table
    }

    /// Takes back tasks whose lease expired; wakes the poller if some are queued again.
    async fn reclaim_now(&self) -> Result<(), sqlx::Error> {
        reclaim(&self.queue.pool, &self.queue.sql, &self.queue.signal).await
    }
}

async fn reclaim(pool: &SqlitePool, sql: &Sql, signal: &Signal) -> Result<(), sqlx::Error> {
    let states: Vec<String> = sqlx::query_scalar(&sql.reclaim)
        .bind(durable::now_us())
        .fetch_all(pool)
        .await?;
    if durable::report_reclaimed(&states) {
        durable::bump(signal);
    }
    Ok(())
}

fn check_table(table: &str) -> Result<(), SqliteError> {
    if durable::valid_identifier(table) {
        Ok(())
    } else {
        Err(SqliteError::Config(format!(
            "table name {table:?} must be a plain identifier (letters, digits, _; at most 48 bytes)"
        )))
    }
}

/// Applies the crate's migrations not yet applied, in one `BEGIN IMMEDIATE` transaction (so two
/// processes starting at once do not both apply them).
async fn migrate(pool: &SqlitePool, table: &str) -> Result<(), SqliteError> {
    let mut conn = pool.acquire().await?;
    let quoted = format!("\"{table}\"");
    let migrations = format!("\"{table}_migrations\"");
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result: Result<(), SqliteError> = async {
        sqlx::raw_sql(&format!(
            "CREATE TABLE IF NOT EXISTS {migrations} (version INTEGER PRIMARY KEY, \
             description TEXT NOT NULL, applied_at INTEGER NOT NULL)"
        ))
        .execute(&mut *conn)
        .await?;
        let applied: HashSet<i64> =
            sqlx::query_scalar::<_, i64>(&format!("SELECT version FROM {migrations}"))
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
        let pending = durable::pending_migrations(MIGRATIONS, &applied)
            .map_err(|(found, known)| SqliteError::SchemaTooNew { found, known })?;
        for (version, description, text) in pending {
            let sql = durable::fill(text, &[("table", quoted.as_str()), ("name", table)]);
            let wrap = |source| SqliteError::Migration {
                version: *version,
                description,
                source,
            };
            sqlx::raw_sql(&sql)
                .execute(&mut *conn)
                .await
                .map_err(wrap)?;
            sqlx::query(&format!(
                "INSERT INTO {migrations} (version, description, applied_at) VALUES (?1, ?2, ?3)"
            ))
            .bind(version)
            .bind(description)
            .bind(durable::now_us())
            .execute(&mut *conn)
            .await
            .map_err(wrap)?;
            tracing::info!(table, version, description, "applied a migration");
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

type FetchedRow = (i64, i64, i64, i64, Option<i64>, String, i64, i64);

impl<T> Source<T> for SqliteSource<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    type Error = SqliteError;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, SqliteError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let leased = self.leased.clone();
        let owner = self.owner;
        let lease_us = durable::micros(self.lease);
        let poll = durable::jittered(self.poll_interval, self.poll_jitter);
        // Created before the read: a local enqueue during the fetch still wakes the poller.
        let signal = durable::wait_for_bump(&self.queue.signal);
        let max = max.min(self.batch).max(1);
        async move {
            let now = durable::now_us();
            let rows: Vec<FetchedRow> = sqlx::query_as(&sql.fetch)
                .bind(now)
                .bind(owner)
                .bind(now + lease_us)
                .bind(max as i64)
                .fetch_all(&pool)
                .await?;
            let full = rows.len() >= max;
            let mut rows: Vec<Row> = rows
                .into_iter()
                .map(|r| Row {
                    id: r.0,
                    attempt: r.1,
                    max_attempts: r.2,
                    priority: r.3,
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
                    .bind(durable::now_us())
                    .bind(owner)
                    .execute(&pool)
            };
            // Not run unless the fetch came back empty.
            let next_wait_us = async {
                let due: Option<i64> = sqlx::query_scalar(&sql.next_due).fetch_one(&pool).await?;
                Ok(due.map(|due| due - durable::now_us()))
            };
            Ok(durable::after_fetch(tasks, bad, full, poll, signal, bury, next_wait_us).await)
        }
        .boxed_local()
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), SqliteError>> {
        let leased = Rc::clone(&self.leased);
        let acked = self
            .leased
            .borrow()
            .stamps(acks.iter().map(|ack| ack.id.0 as i64));
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let owner = self.owner;
        let rows = durable::ack_rows(acks);
        async move {
            let batch = serde_json::to_string(&rows)?;
            durable::with_retries(5, || {
                sqlx::query(&sql.ack)
                    .bind(&batch)
                    .bind(durable::now_us())
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
        durable::enqueue_or_hand_back(tasks, encode_batch, move |batch| async move {
            insert(&queue.pool, &queue.sql.enqueue, &batch).await
        })
        .boxed_local()
    }

    fn cancel(&mut self, id: TaskId) -> LocalBoxFuture<'static, Result<bool, SqliteError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let done = sqlx::query(&sql.cancel)
                .bind(id.0 as i64)
                .bind(durable::now_us())
                .execute(&pool)
                .await?;
            Ok(done.rows_affected() > 0)
        }
        .boxed_local()
    }

    fn dead_tasks(
        &mut self,
        limit: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<DeadTask>, SqliteError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let rows: Vec<(i64, i64, String, i64)> = sqlx::query_as(&sql.dead_list)
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
    ) -> LocalBoxFuture<'static, Result<Vec<TaskId>, SqliteError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        async move {
            let rerun: Vec<i64> = sqlx::query_scalar(&sql.dead_rerun)
                .bind(serde_json::to_string(&durable::raw_ids(&ids))?)
                .bind(durable::now_us())
                .fetch_all(&pool)
                .await?;
            let rerun = durable::sorted_ids(rerun);
            if !rerun.is_empty() {
                durable::bump(&signal);
            }
            Ok(rerun)
        }
        .boxed_local()
    }

    fn purge_dead(
        &mut self,
        ids: Option<Vec<TaskId>>,
    ) -> LocalBoxFuture<'static, Result<usize, SqliteError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let done = match ids {
                None => sqlx::query(&sql.dead_purge_all).execute(&pool).await?,
                Some(ids) => {
                    sqlx::query(&sql.dead_purge)
                        .bind(serde_json::to_string(&durable::raw_ids(&ids))?)
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

    fn heartbeat(&mut self) -> LocalBoxFuture<'static, Result<(), SqliteError>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        let owner = self.owner;
        let lease_us = durable::micros(self.lease);
        let retention = self.retention;
        let ids: Vec<i64> = self.leased.borrow().ids();
        async move {
            if !ids.is_empty() {
                let extended = sqlx::query(&sql.extend)
                    .bind(durable::now_us() + lease_us)
                    .bind(serde_json::to_string(&ids)?)
                    .bind(owner)
                    .execute(&pool)
                    .await?;
                durable::report_extended(ids.len(), extended.rows_affected());
            }
            reclaim(&pool, &sql, &signal).await?;
            if let Some(keep) = retention {
                let before = durable::now_us() - durable::micros(keep);
                durable::prune(PRUNE_BATCH, PRUNE_ROUNDS, || async {
                    let pruned = sqlx::query(&sql.prune)
                        .bind(before)
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
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, SqliteError>> {
        let ids: Vec<i64> = unstarted.iter().map(|t| t.id.0 as i64).collect();
        self.leased.borrow_mut().forget(ids.iter().copied());
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        let owner = self.owner;
        async move {
            if !ids.is_empty() {
                let batch = serde_json::to_string(&ids)?;
                let released = durable::with_retries(3, || {
                    sqlx::query(&sql.release)
                        .bind(&batch)
                        .bind(owner)
                        .execute(&pool)
                })
                .await?;
                tracing::debug!(
                    released = released.rows_affected(),
                    "released unstarted tasks"
                );
                durable::bump(&signal);
            }
            Ok(Vec::new())
        }
        .boxed_local()
    }
}

impl<T> RetrySupport<T> for SqliteSource<T> {
    /// Nothing to do: the table keeps every payload.
    fn enable_retries(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_in_the_file() {
        let sql = Sql::new("t");
        assert!(sql.fetch.contains("\"t\""));
        assert!(sql.ack.contains("json_each"));
        assert!(!sql.dead_purge_all.contains('{'));
    }

    #[test]
    fn bad_table_names_are_refused() {
        assert!(check_table("tasks").is_ok());
        assert!(matches!(
            check_table("x; DROP TABLE y"),
            Err(SqliteError::Config(_))
        ));
    }

    /// A local enqueue that lands after an empty fetch's query, before the Fetcher waits on
    /// the fetch's signal, still wakes it: the signal was subscribed before the query.
    #[actix_rt::test]
    async fn a_local_enqueue_racing_an_empty_fetch_is_not_lost() {
        let path = std::env::temp_dir().join(format!("ap-unit-{:x}.db", fastrand::u64(..)));
        let mut source = SqliteSource::<u32>::connect(
            SqliteConfig::new(&path).poll_interval(Duration::from_secs(600)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let queue = source.queue();
        let quiet = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
        let signal = quiet.wake_on.signal.expect("a local signal");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), signal)
                .await
                .is_err(),
            "no spurious wake-up"
        );
        let empty = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(empty.tasks.is_empty());
        queue
            .enqueue(vec![NewTask::new(1)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let signal = empty.wake_on.signal.expect("a local signal");
        tokio::time::timeout(Duration::from_millis(50), signal)
            .await
            .expect("the enqueue that raced the empty fetch wakes the poller");
        drop(source);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}
