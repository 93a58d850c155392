//! [`DurableSource`]: the [`Source`] every durable store shares.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Pool;
use tokio::sync::watch;
use tokio::time::Instant;

use super::common::{self, Leased, Signal};
use super::config::{DurableConfig, QueuePace};
use super::dialect::{Arg, List, StatusRow, Store};
use super::error::DurableError;
use super::keeper::{Conns, Keeper};
use super::migrate;
use super::queue::DurableQueue;
use super::Sql;
use crate::error::{SourceError, SubmitError};
use crate::pace::Key;
use crate::source::{
    EnqueueResult, FetchLimits, Fetched, FinalStates, NewTask, RetrySupport, Source, WakeOn,
};
use crate::task::{Ack, DeadTask, FinalState, QueueCounts, Task, TaskId, TaskState, TaskStatus};

/// How many prune statements one heartbeat runs at most (each deletes at most the dialect's
/// `PRUNE_BATCH` rows), so one heartbeat stays short.
const PRUNE_ROUNDS: usize = 20;

/// How long closing a source waits for each of its pools (the bookkeeping connections, the
/// `LISTEN` connection) to close: a connection out for a statement is closed when it comes
/// back.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Under queue-wide pace, how soon a poller that claimed nothing while tasks are due looks
/// again: they wait for a key's running tasks to end (perhaps in another process, which tells
/// no one), a key's pause, or the rate.
const PACED_RECHECK: Duration = Duration::from_millis(20);

/// A durable task source: tasks in a database table, leased to the poller that runs them.
/// Users name it [`SqliteSource`](crate::source::sqlite::SqliteSource) or
/// [`PgSource`](crate::source::postgres::PgSource); see those modules for each store.
pub struct DurableSource<T, D: Store> {
    queue: DurableQueue<T, D>,
    /// Fetches, acks, heartbeats and releases (PostgreSQL: possibly with asynchronous commit),
    /// on connections kept between statements.
    bookkeeping: Keeper<D::Db>,
    owner: i64,
    lease: Duration,
    poll_interval: Duration,
    poll_jitter: f64,
    retention: Option<Duration>,
    dead_retention: Option<Duration>,
    batch: usize,
    /// How many lease expiries in a row make a task dead.
    expiries: u32,
    leased: Leased,
    /// Queue-wide pace (PostgreSQL's `PgConfig::queue_pace`): the queue's stored pace, as read
    /// at open and at each heartbeat; with one, claims go through `fetch_paced` (which reads
    /// the limits from the store itself) and pauses are stored.
    pace: Rc<Cell<Option<QueuePace>>>,
    /// The task that listens for other processes' enqueues (PostgreSQL `LISTEN`), and the
    /// pool of its connection.
    listener: Option<(tokio::task::JoinHandle<()>, Pool<D::Db>)>,
}

impl<T, D: Store> fmt::Debug for DurableSource<T, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableSource")
            .field("table", &self.queue.table)
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .field("leased", &self.leased.borrow().len())
            .finish_non_exhaustive()
    }
}

impl<T, D: Store> Drop for DurableSource<T, D> {
    /// A source dropped without [`close`](Source::close) (never given to a poller, or its
    /// poller's `System` stopped under it) closes its own connections with a goodbye too, in
    /// a task, when a runtime is there to run it.
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(stop_listening(listener));
            } else {
                listener.0.abort();
            }
        }
        self.bookkeeping.close_detached(CLOSE_WAIT);
    }
}

/// Stops the `LISTEN` task by closing its pool: sqlx's listener ends its wait for a
/// notification when its pool closes (the task returns on `PoolClosed`), sends `UNLISTEN`, and
/// hands its connection back, which the closed pool closes with a goodbye. Aborted instead,
/// the task dropped the listener mid-wait, and now and then its connection went without one.
/// Aborted anyway after [`CLOSE_WAIT`].
async fn stop_listening<DB: sqlx::Database>((task, pool): (tokio::task::JoinHandle<()>, Pool<DB>)) {
    let _ = tokio::time::timeout(CLOSE_WAIT, pool.close()).await;
    task.abort();
}

/// Runs `sql` on a connection of `pool`; how many rows it changed.
async fn count<D: Store>(pool: &impl Conns<D::Db>, sql: &str, args: Vec<Arg>) -> sqlx::Result<u64> {
    let mut conn = pool.get().await?;
    let counted = D::count(&mut *conn, sql, args).await;
    pool.put(conn, counted.is_ok());
    counted
}

/// Runs `sql` on a connection of `pool`; the integer each row returned.
async fn ints<D: Store>(
    pool: &impl Conns<D::Db>,
    sql: &str,
    args: Vec<Arg>,
) -> sqlx::Result<Vec<i64>> {
    let mut conn = pool.get().await?;
    let ints = D::ints(&mut *conn, sql, args).await;
    pool.put(conn, ints.is_ok());
    ints
}

/// Records a batch of acks, retrying what may pass on a second try (a dropped connection). A
/// batch the store refuses for its data (a value out of range, say) is split in halves until
/// the one ack it refuses is alone: that one is left out (its lease expires and the task runs
/// again), so one bad ack costs one task, not every later ack. Returns the ids left out.
///
/// # Errors
///
/// The first error retrying cannot help that is not about the data (the database is gone):
/// the whole batch is then to be retried later (acks already recorded match no lease then,
/// and change nothing).
async fn record_acks<D: Store>(
    pool: &impl Conns<D::Db>,
    sql: &Sql,
    owner: i64,
    rows: Vec<common::AckRow>,
) -> sqlx::Result<Vec<i64>> {
    // Completed tasks (the usual case) through the lean statement, the rest through the
    // general one: at most two statements, one for a batch of one kind.
    let (completed, other): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|row| row.2 == common::ACK_COMPLETED);
    let mut unstorable =
        record_ack_batches::<D>(pool, &sql.ack_completed, owner, completed, |rows| {
            List::Leases(rows.iter().map(|row| (row.0, row.5)).collect())
        })
        .await?;
    unstorable.extend(record_ack_batches::<D>(pool, &sql.ack, owner, other, List::Acks).await?);
    Ok(unstorable)
}

/// [`record_acks`] for one statement: `list` makes its list argument of a batch.
async fn record_ack_batches<D: Store>(
    pool: &impl Conns<D::Db>,
    sql: &str,
    owner: i64,
    rows: Vec<common::AckRow>,
    list: fn(Vec<common::AckRow>) -> List,
) -> sqlx::Result<Vec<i64>> {
    let mut unstorable = Vec::new();
    if rows.is_empty() {
        return Ok(unstorable);
    }
    let mut batches = vec![rows];
    while let Some(mut batch) = batches.pop() {
        let stored = common::with_retries(5, D::is_data_error, || {
            let args = vec![Arg::List(list(batch.clone())), Arg::Int(owner), Arg::Now];
            count::<D>(pool, sql, args)
        })
        .await;
        match stored {
            Ok(_) => {}
            Err(e) if D::is_data_error(&e) && batch.len() > 1 => {
                let second = batch.split_off(batch.len() / 2);
                batches.push(second);
                batches.push(batch);
            }
            Err(e) if D::is_data_error(&e) => {
                let id = batch.first().map_or(0, |row| row.0);
                tracing::error!(
                    task = id,
                    error = %e,
                    "the store refuses this ack; the task's lease will expire and it runs again"
                );
                unstorable.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(unstorable)
}

/// Marks dead the fetched rows whose payload does not decode (`bad`: id and the decoder's
/// error). A row that cannot be marked keeps its lease, which expires: it is tried again later.
/// Never fails: the fetch that leased the other rows must hand them over.
async fn bury<D: Store>(pool: &impl Conns<D::Db>, sql: &Sql, owner: i64, bad: Vec<(i64, String)>) {
    for (id, error) in &bad {
        tracing::error!(task = id, %error, "a task's payload does not decode; it is dead");
    }
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(error = %e, "could not mark the tasks dead; they will be tried again");
            return;
        }
    };
    let mut ok = true;
    for (id, error) in bad {
        let error = common::stored_text(error);
        let args = vec![Arg::Int(id), Arg::Text(error), Arg::Int(owner), Arg::Now];
        if let Err(e) = D::count(&mut *conn, &sql.bury, args).await {
            tracing::error!(task = id, error = %e, "could not mark the task dead");
            ok = false;
        }
    }
    pool.put(conn, ok);
}

/// Microseconds from now to the earliest queued task (negative: overdue), by `statement`;
/// `None` when none is queued or the store could not say (the poll interval applies then).
/// Never fails: the fetch that asks may have leased tasks, which it must hand over.
async fn next_due<D: Store>(pool: &impl Conns<D::Db>, statement: &str) -> Option<i64> {
    let asked = match pool.get().await {
        Ok(mut conn) => {
            let asked = D::maybe_int(&mut *conn, statement, vec![Arg::Now]).await;
            pool.put(conn, asked.is_ok());
            asked
        }
        Err(e) => Err(e),
    };
    asked.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "next due time unknown; polling");
        None
    })
}

/// Tells the pollers that tasks are due: the store's notification, or this process's signal.
async fn announce<D: Store>(
    pool: &impl Conns<D::Db>,
    sql: &Sql,
    signal: &Signal,
) -> sqlx::Result<()> {
    if D::NOTIFIES {
        count::<D>(pool, &sql.notify, vec![]).await?;
    } else {
        common::bump(signal);
    }
    Ok(())
}

/// The queue's stored pace (`None`: it has none). PostgreSQL; `None` for a store without
/// queue-wide pace.
async fn stored_pace<D: Store>(
    pool: &impl Conns<D::Db>,
    sql: &Sql,
) -> sqlx::Result<Option<QueuePace>> {
    let Some(paced) = &sql.paced else {
        return Ok(None);
    };
    let mut conn = pool.get().await?;
    let rows = D::paces(&mut *conn, &paced.read, vec![]).await;
    pool.put(conn, rows.is_ok());
    Ok(rows?
        .into_iter()
        .find(|row| row.0)
        .map(|(_, n, per, burst, key_limit)| QueuePace::from_stored(n, per, burst, key_limit)))
}

/// At open: stores `configured` as the queue's pace when the queue has none (or always, when
/// `replace`), and returns the queue's pace after; a configured pace other than the stored one
/// is refused ([`DurableError::PaceMismatch`]). `None` when the store has no queue-wide pace.
async fn open_pace<D: Store>(
    pool: &Pool<D::Db>,
    sql: &Sql,
    configured: Option<QueuePace>,
    replace: bool,
) -> Result<Option<QueuePace>, DurableError<D>> {
    let (Some(paced), Some(pace)) = (&sql.paced, configured) else {
        return Ok(stored_pace::<D>(pool, sql).await?);
    };
    let mut args: Vec<Arg> = pace.stored().into_iter().map(Arg::Int).collect();
    args.push(Arg::Int(i64::from(replace)));
    count::<D>(pool, &paced.declare, args).await?;
    match stored_pace::<D>(pool, sql).await? {
        Some(stored) if !stored.same_limits(&pace) => Err(DurableError::PaceMismatch {
            stored,
            configured: pace,
        }),
        stored => Ok(stored.or(Some(pace))),
    }
}

/// Takes back tasks whose lease expired; announces them if some are queued again.
async fn reclaim<D: Store>(
    pool: &impl Conns<D::Db>,
    sql: &Sql,
    signal: &Signal,
    expiries: u32,
) -> sqlx::Result<()> {
    let mut conn = pool.get().await?;
    let args = vec![Arg::Int(expiries.into()), Arg::Now];
    let states = D::texts(&mut *conn, &sql.reclaim, args).await;
    pool.put(conn, states.is_ok());
    let states = states?;
    if common::report_reclaimed(&states) {
        announce::<D>(pool, sql, signal).await?;
    }
    Ok(())
}

impl<T, D> DurableSource<T, D>
where
    T: Serialize + DeserializeOwned + 'static,
    D: Store,
{
    /// Connects, applies the migrations unless turned off, starts listening for other
    /// processes' enqueues (PostgreSQL), and takes back tasks whose lease expired while no
    /// poller ran.
    ///
    /// PostgreSQL: call it inside a tokio runtime (the actix `System` counts): the `LISTEN`
    /// connection runs as a task of that runtime until the source is closed or dropped.
    ///
    /// # Errors
    ///
    /// The store's errors: the database cannot be opened or reached (SQLite `Open`, PostgreSQL
    /// `Connect`, which name the file or the host), an invalid configuration (`Config`), a
    /// schema that cannot be brought to this crate's version (`Migration`, `SchemaTooNew`).
    pub async fn connect(config: DurableConfig<D>) -> Result<Self, DurableError<D>> {
        D::names(&config)?;
        let pool = D::connect(&config).await?;
        Self::with_pool(pool, config).await
    }

    /// Uses an existing pool (its connect options are the caller's: for SQLite, WAL and a busy
    /// timeout are advised). Only the table, schema, lease, poll, retention, migration, batch
    /// and (PostgreSQL) async-commit settings of `config` apply, and its pool size for
    /// PostgreSQL's second pool, the poller's bookkeeping (see
    /// [`PgConfig::async_commit`](crate::source::postgres::PgConfig::async_commit)), opened
    /// with the same connect options (plus `enable_seqscan = off`, and `synchronous_commit =
    /// off` unless async commit is off) but not the pool's hooks: session state an
    /// `after_connect` sets (a role, a `search_path`) does not reach it, so name the schema in
    /// the config. A connection pooler that refuses startup options must be bypassed for it.
    /// PostgreSQL's `LISTEN` connection is its own, opened with the pool's connect options,
    /// outside the pool.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), without the connection errors.
    pub async fn with_pool(
        pool: Pool<D::Db>,
        config: DurableConfig<D>,
    ) -> Result<Self, DurableError<D>> {
        let names = D::names(&config)?;
        let sql = Arc::new(Sql::new::<D>(&names));
        if let Some(pace) = &config.queue_pace {
            if let Some(why) = pace.invalid() {
                return Err(DurableError::Config(format!("queue pace: {why}")));
            }
            if sql.paced.is_none() {
                return Err(DurableError::Config(format!(
                    "{} has no queue-wide pace",
                    D::NAME
                )));
            }
        }
        if config.migrate {
            let vars: Vec<(&str, &str)> =
                names.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            migrate::migrate::<D>(&pool, &sql, &vars, &names.table).await?;
        }
        let pace =
            open_pace::<D>(&pool, &sql, config.queue_pace, config.replace_queue_pace).await?;
        let bookkeeping = Keeper::new(D::bookkeeping_pool(&pool, &config), D::KEPT_PING_AFTER);
        let (signal, _) = watch::channel(0u64);
        let signal = Arc::new(signal);
        // Listening before the first fetch: no notification after this point is missed.
        let listener = D::listen(&pool, &names, Arc::clone(&signal)).await?;
        let source = DurableSource {
            queue: DurableQueue::of(pool, sql, &names.table, signal, config.default_attempts),
            bookkeeping,
            owner: common::new_owner(),
            lease: config.lease,
            poll_interval: config.poll_interval,
            poll_jitter: config.poll_jitter,
            retention: config.retention,
            dead_retention: config.dead_retention,
            batch: config.batch,
            expiries: config.expiries,
            leased: Leased::default(),
            pace: Rc::new(Cell::new(pace)),
            listener,
        };
        let (pool, signal) = (&source.bookkeeping, &source.queue.signal);
        reclaim::<D>(pool, &source.queue.sql, signal, source.expiries).await?;
        Ok(source)
    }

    /// A handle to enqueue from anywhere, alone or in the caller's transaction; its enqueues
    /// wake this source's poller.
    pub fn queue(&self) -> DurableQueue<T, D> {
        self.queue.clone()
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool<D::Db> {
        &self.queue.pool
    }

    /// The table's name (PostgreSQL: schema-qualified and quoted).
    pub fn table(&self) -> &str {
        &self.queue.table
    }

    /// The queue-wide pace this source claims under (PostgreSQL): the queue's, stored in the
    /// database, as read when the source opened and at each heartbeat since (a poller opened
    /// without [`queue_pace`](crate::source::postgres::PgConfig::queue_pace) on a queue that
    /// has one adopts it). `None`: the queue has none; always `None` on SQLite.
    pub fn queue_pace(&self) -> Option<QueuePace> {
        self.pace.get()
    }
}

impl<T, D> Source<T> for DurableSource<T, D>
where
    T: Serialize + DeserializeOwned + 'static,
    D: Store,
{
    type Error = DurableError<D>;

    fn fetch(
        &mut self,
        max: usize,
    ) -> LocalBoxFuture<'static, Result<Fetched<T>, DurableError<D>>> {
        let pool = self.bookkeeping.clone();
        let sql = Arc::clone(&self.queue.sql);
        let leased = self.leased.clone();
        let owner = self.owner;
        let lease_us = common::micros(self.lease);
        let poll = crate::retry::spread(self.poll_interval, self.poll_jitter);
        // Subscribed before the query: a wake-up during an empty fetch is not lost.
        let signal = common::wait_for_bump(&self.queue.signal);
        let max = max.min(self.batch).max(1);
        let paced = sql.paced.is_some() && self.pace.get().is_some();
        async move {
            let mut args = vec![
                Arg::Int(max.min(i64::MAX as usize) as i64),
                Arg::Int(owner),
                Arg::Int(lease_us),
            ];
            let paced = sql.paced.as_ref().filter(|_| paced);
            // The next due time, when the fetch statement reported it (a short batch).
            let mut reported = None;
            let mut rows = match paced {
                None => {
                    let mut conn = pool.get().await?;
                    args.push(Arg::Now);
                    let rows = D::fetched_due(&mut *conn, &sql.fetch, args).await;
                    pool.put(conn, rows.is_ok());
                    let rows = rows?;
                    if D::FETCH_NEXT_DUE {
                        reported = rows.first().map(|row| row.11);
                    }
                    rows.into_iter().map(common::without_next_due).collect()
                }
                Some(paced) => {
                    // One claim at a time on the queue: the lock, then the claim in a fresh
                    // snapshot that sees every claim committed before (see `pace_lock`), under
                    // the limits stored with the queue.
                    args.push(Arg::Now);
                    let mut conn = pool.get().await?;
                    let claimed = async {
                        let mut tx =
                            sqlx::Connection::begin_with(&mut *conn, paced.lock.clone()).await?;
                        let rows = D::fetched(&mut *tx, &paced.fetch, args).await?;
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>(rows)
                    }
                    .await;
                    // A failed claim's rollback is flushed by the pool, on the connection's
                    // return to it.
                    pool.put(conn, claimed.is_ok());
                    claimed?
                }
            };
            let full = rows.len() >= max;
            common::sort_rows(&mut rows);
            let (tasks, bad) = common::decode_rows::<T>(rows, &leased);
            let buried = !bad.is_empty();
            if buried {
                bury::<D>(&pool, &sql, owner, bad).await;
            }
            // A full batch (there may be more), a buried row (the batch came back shorter
            // than the rows fetched), or, under queue-wide pace, some tasks (a claim may stop
            // short of the due rows: a key's limit, the rate): hand them over now and ask again
            // at once, rather than delay them by a query for the next due time (the next
            // fetch, if empty, makes it).
            if full || buried || (paced.is_some() && !tasks.is_empty()) {
                return Ok(Fetched::new(tasks, WakeOn::after(Duration::ZERO)));
            }
            // A short batch: every due row not leased elsewhere was taken, so the source is
            // drained for now (issue 14: no follow-up empty fetch). A task enqueued after the
            // statement's snapshot wakes the poller through `signal`, subscribed before it.
            let next = match reported {
                Some(next) => next,
                None => {
                    let statement = paced.map_or(&sql.next_due, |p| &p.next_due);
                    next_due::<D>(&pool, statement).await
                }
            };
            let mut at = crate::retry::deadline_after(Instant::now(), poll);
            if let Some(wait_us) = next {
                // A due row another poller is leasing right now, or (queue-wide pace) held by
                // a key's limit or pause or by the rate: look again shortly.
                let least = if paced.is_some() {
                    PACED_RECHECK
                } else {
                    Duration::from_millis(5)
                };
                let wait = Duration::from_micros(wait_us.max(0) as u64).max(least);
                at = at.min(crate::retry::deadline_after(Instant::now(), wait));
            }
            Ok(Fetched::drained(tasks, WakeOn::at(at).or_signal(signal)))
        }
        .boxed_local()
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), DurableError<D>>> {
        let leased = Rc::clone(&self.leased);
        let acked = self
            .leased
            .borrow()
            .stamps(acks.iter().map(|ack| ack.id.0 as i64));
        let keys: Vec<(i64, u32)> = acks.iter().map(|a| (a.id.0 as i64, a.attempt)).collect();
        let leases = self.leased.borrow_mut().answered(&keys);
        let pool = self.bookkeeping.clone();
        let sql = Arc::clone(&self.queue.sql);
        let owner = self.owner;
        let rows = common::ack_rows(acks, leases.clone());
        async move {
            let unstorable = match record_acks::<D>(&pool, &sql, owner, rows).await {
                Ok(unstorable) => unstorable,
                Err(e) => {
                    // Perhaps recorded, the reply lost: if these acks come again, they answer
                    // the same leases, whatever this poller leased since.
                    leased
                        .borrow_mut()
                        .unanswered(keys.into_iter().zip(leases).collect());
                    return Err(e.into());
                }
            };
            // Only now: until the ack lands (it may fail and wait for its retry), the heartbeat
            // keeps extending these leases, so no other poller takes the tasks back and runs
            // them again. An ack the store refuses leaves its lease to expire: the task runs
            // again (at least once), and the rest of the batch is not held up by it.
            let mut leased = leased.borrow_mut();
            leased.forget_stamped(acked);
            let _ = leased.forget(unstorable);
            Ok(())
        }
        .boxed_local()
    }

    fn limits(&self) -> FetchLimits {
        FetchLimits::default().max_batch(self.batch)
    }

    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        let queue = self.queue.clone();
        async move {
            let failed = |tasks: Vec<NewTask<T>>, error: SourceError| {
                tracing::error!(%error, "enqueue failed; batch handed back");
                Err(SubmitError::Source {
                    task: tasks.into_iter().map(|t| t.payload).collect(),
                    error,
                })
            };
            let rows = match common::new_rows(&tasks, queue.default_attempts) {
                Ok(rows) => rows,
                // A payload that does not encode never will: not worth a retry.
                Err(e) => {
                    let error = format!("a payload does not encode as JSON: {e}");
                    return failed(tasks, SourceError::permanent(error));
                }
            };
            let inserted = match queue.pool.acquire().await {
                Ok(mut conn) => queue.insert(&mut conn, rows).await,
                Err(e) => Err(e),
            };
            match inserted {
                Ok(ids) => Ok(ids),
                Err(e) => failed(tasks, SourceError::new(format!("enqueue failed: {e}"))),
            }
        }
        .boxed_local()
    }

    fn cancel(&mut self, id: TaskId) -> LocalBoxFuture<'static, Result<bool, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let args = vec![Arg::Int(id.0 as i64), Arg::Now];
            Ok(count::<D>(&pool, &sql.cancel, args).await? > 0)
        }
        .boxed_local()
    }

    fn dead_tasks(
        &mut self,
        limit: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<DeadTask>, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let mut conn = pool.acquire().await?;
            let limit = Arg::Int(limit.min(i64::MAX as usize) as i64);
            let rows = D::dead(&mut *conn, &sql.dead_list, vec![limit]).await?;
            Ok(rows
                .into_iter()
                .map(|(id, attempts, error, died)| {
                    common::dead_task(id, attempts, error, common::system_time(died))
                })
                .collect())
        }
        .boxed_local()
    }

    fn final_states(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<FinalStates, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let mut conn = pool.acquire().await?;
            let args = vec![Arg::List(List::Ids(common::raw_ids(&ids)))];
            let rows = D::finals(&mut *conn, &sql.final_states, args).await?;
            Ok(rows
                .into_iter()
                .filter_map(|(id, state, attempt, error)| {
                    let state = match state.as_str() {
                        "completed" => FinalState::Completed,
                        "cancelled" => FinalState::Cancelled,
                        "dead" => FinalState::Dead {
                            error: error.unwrap_or_default(),
                            attempts: attempt.clamp(0, u32::MAX.into()) as u32,
                        },
                        _ => return None,
                    };
                    Some((TaskId(id as u64), state))
                })
                .collect())
        }
        .boxed_local()
    }

    fn status(
        &mut self,
        id: TaskId,
    ) -> LocalBoxFuture<'static, Result<Option<TaskStatus>, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let raw = i64::try_from(id.0).unwrap_or(i64::MAX);
            let mut conn = pool.acquire().await?;
            let rows = D::statuses(&mut *conn, &sql.status, vec![Arg::Int(raw), Arg::Now]).await?;
            Ok(rows.into_iter().next().and_then(status_of))
        }
        .boxed_local()
    }

    fn counts(&mut self) -> LocalBoxFuture<'static, Result<Option<QueueCounts>, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let mut conn = pool.acquire().await?;
            let rows = D::counts(&mut *conn, &sql.counts, vec![Arg::Now]).await?;
            Ok(rows.into_iter().next().map(|(q, s, r, run, dead, oldest)| {
                let n = |c: i64| c.max(0) as u64;
                QueueCounts {
                    queued: n(q),
                    scheduled: n(s),
                    retrying: n(r),
                    running: n(run),
                    dead: n(dead),
                    oldest_queued_age: oldest.map(|us| Duration::from_micros(n(us))),
                }
            }))
        }
        .boxed_local()
    }

    fn rerun_dead(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<Vec<TaskId>, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        async move {
            let args = vec![Arg::List(List::Ids(common::raw_ids(&ids))), Arg::Now];
            let rerun = common::sorted_ids(ints::<D>(&pool, &sql.dead_rerun, args).await?);
            if !rerun.is_empty() {
                announce::<D>(&pool, &sql, &signal).await?;
            }
            Ok(rerun)
        }
        .boxed_local()
    }

    fn purge_dead(
        &mut self,
        ids: Option<Vec<TaskId>>,
    ) -> LocalBoxFuture<'static, Result<usize, DurableError<D>>> {
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        async move {
            let purged = match ids {
                None => count::<D>(&pool, &sql.dead_purge_all, vec![]).await?,
                Some(ids) => {
                    let args = vec![Arg::List(List::Ids(common::raw_ids(&ids)))];
                    count::<D>(&pool, &sql.dead_purge, args).await?
                }
            };
            Ok(purged as usize)
        }
        .boxed_local()
    }

    fn final_states_interval(&self) -> Option<Duration> {
        // Tasks in the table may be run by any poller sharing it.
        Some(self.poll_interval)
    }

    fn store_pause(
        &mut self,
        key: Option<Key>,
        duration: Option<Duration>,
    ) -> Option<LocalBoxFuture<'static, Result<(), DurableError<D>>>> {
        self.pace.get()?;
        let statement = self.queue.sql.paced.as_ref()?.pause.clone();
        let pool = self.queue.pool.clone();
        let (kind, name) = scope(key);
        let us = duration.map_or(-1, common::delay);
        Some(
            async move {
                let args = vec![Arg::Int(kind), Arg::Text(name), Arg::Int(us), Arg::Now];
                count::<D>(&pool, &statement, args).await?;
                Ok(())
            }
            .boxed_local(),
        )
    }

    fn store_resume(
        &mut self,
        key: Option<Key>,
    ) -> Option<LocalBoxFuture<'static, Result<(), DurableError<D>>>> {
        self.pace.get()?;
        let statement = self.queue.sql.paced.as_ref()?.resume.clone();
        let pool = self.queue.pool.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        let (kind, name) = scope(key);
        Some(
            async move {
                let args = vec![Arg::Int(kind), Arg::Text(name), Arg::Now];
                count::<D>(&pool, &statement, args).await?;
                // Pollers waiting out the pause: look now.
                announce::<D>(&pool, &sql, &signal).await?;
                Ok(())
            }
            .boxed_local(),
        )
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.lease / 3)
    }

    fn heartbeat(&mut self) -> LocalBoxFuture<'static, Result<(), DurableError<D>>> {
        let pool = self.bookkeeping.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        let owner = self.owner;
        let lease_us = common::micros(self.lease);
        let retention = self.retention;
        let dead_retention = self.dead_retention;
        let expiries = self.expiries;
        let held = self.leased.borrow().held();
        let pace = Rc::clone(&self.pace);
        async move {
            if !held.is_empty() {
                let asked = held.len();
                let args = vec![
                    Arg::List(List::Leases(held)),
                    Arg::Int(owner),
                    Arg::Int(lease_us),
                    Arg::Now,
                ];
                let extended = count::<D>(&pool, &sql.extend, args).await?;
                common::report_extended(asked, extended);
            }
            reclaim::<D>(&pool, &sql, &signal, expiries).await?;
            // The queue's pace as stored now: one set or replaced since (a poller opened
            // without a pace adopts it here), or none, if an operator removed it.
            if sql.paced.is_some() {
                pace.set(stored_pace::<D>(&pool, &sql).await?);
            }
            for (statement, keep) in [(&sql.prune, retention), (&sql.prune_dead, dead_retention)] {
                let Some(keep) = keep else { continue };
                for _ in 0..PRUNE_ROUNDS {
                    let args = vec![
                        Arg::Int(common::micros(keep)),
                        Arg::Int(D::PRUNE_BATCH),
                        Arg::Now,
                    ];
                    if count::<D>(&pool, statement, args).await? < D::PRUNE_BATCH as u64 {
                        break;
                    }
                }
            }
            Ok(())
        }
        .boxed_local()
    }

    fn close(
        &mut self,
        unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, DurableError<D>>> {
        let ids = unstarted.iter().map(|t| t.id.0 as i64);
        let leases = self.leased.borrow_mut().forget(ids);
        let listener = self.listener.take();
        let pool = self.bookkeeping.clone();
        let sql = Arc::clone(&self.queue.sql);
        let signal = Arc::clone(&self.queue.signal);
        let owner = self.owner;
        async move {
            let released = async {
                if !leases.is_empty() {
                    let released = common::with_retries(3, D::is_data_error, || {
                        let args = vec![Arg::List(List::Leases(leases.clone())), Arg::Int(owner)];
                        count::<D>(&pool, &sql.release, args)
                    })
                    .await?;
                    tracing::debug!(released, "released unstarted tasks");
                    // Other pollers may be idle: tell them.
                    announce::<D>(&pool, &sql, &signal).await?;
                }
                Ok(Vec::new())
            }
            .await;
            // The source's own connections (not the pool of `pool()`, which the caller's
            // queues share), each closed with a goodbye: dropped, each was a "connection reset
            // by peer" in the server's log and an abandoned session in its statistics.
            if let Some(listener) = listener {
                stop_listening(listener).await;
            }
            pool.close(CLOSE_WAIT).await;
            released
        }
        .boxed_local()
    }
}

impl<T, D: Store> RetrySupport<T> for DurableSource<T, D> {
    /// Nothing to do: the table keeps every payload.
    fn enable_retries(&mut self) {}
}

/// A stored pause's scope: kind 0 (the queue, key '') or 1 (a key).
fn scope(key: Option<Key>) -> (i64, String) {
    key.map_or((0, String::new()), |k| (1, k.as_str().to_owned()))
}

/// A status row as a [`TaskStatus`]; `None` for a state the crate does not know (a row written
/// by a newer version).
fn status_of(row: StatusRow) -> Option<TaskStatus> {
    let (id, state, attempt, max, error, run_at, enqueued, finished, leased, now, key) = row;
    let at = finished.map(common::system_time);
    let attempt = attempt.clamp(0, u32::MAX.into()) as u32;
    let state = match state.as_str() {
        "queued" if run_at <= now => TaskState::Queued,
        "queued" if attempt == 0 => TaskState::Scheduled {
            run_at: common::system_time(run_at),
        },
        "queued" => TaskState::Retrying {
            run_at: common::system_time(run_at),
        },
        "running" => TaskState::Running {
            since: leased.map(common::system_time),
        },
        "completed" => TaskState::Completed { at },
        "dead" => TaskState::Dead { at },
        "cancelled" => TaskState::Cancelled { at },
        _ => return None,
    };
    let mut status = TaskStatus::new(TaskId(id.max(0) as u64), state);
    status.attempt = attempt;
    status.max_attempts = max.clamp(1, u32::MAX.into()) as u32;
    status.enqueued_at = Some(common::system_time(enqueued));
    status.last_error = error;
    status.key = key.map(crate::pace::Key::new);
    Some(status)
}
