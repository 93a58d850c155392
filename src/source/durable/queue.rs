//! Enqueueing into a durable source's table from anywhere in the process.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use sqlx::{Database, Pool};
use tokio::sync::watch;

use super::common::{self, Signal};
use super::config::DurableConfig;
use super::dialect::{Arg, Dialect, List, Store};
use super::error::DurableError;
use super::Sql;
use crate::source::NewTask;
use crate::task::TaskId;

/// Enqueues into a durable source's table from anywhere (cheap to clone, `Send + Sync`), alone
/// or inside the caller's own transaction ([`enqueue_in`](Self::enqueue_in)). The pollers are
/// woken: PostgreSQL notifies every poller on the table when the insert commits; SQLite wakes
/// this source's poller at once, and pollers in other processes find the tasks by polling.
///
/// Get one from the source's `queue()`, or build one on a pool with [`new`](Self::new).
pub struct DurableQueue<T, D: Dialect> {
    pub(crate) pool: Pool<D::Db>,
    pub(crate) sql: Arc<Sql>,
    pub(crate) table: Arc<str>,
    pub(crate) signal: Arc<Signal>,
    /// The attempts of a task enqueued without them.
    pub(crate) default_attempts: u32,
    _payload: PhantomData<fn(T)>,
}

impl<T, D: Dialect> Clone for DurableQueue<T, D> {
    fn clone(&self) -> Self {
        DurableQueue {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            table: Arc::clone(&self.table),
            signal: Arc::clone(&self.signal),
            default_attempts: self.default_attempts,
            _payload: PhantomData,
        }
    }
}

impl<T, D: Dialect> fmt::Debug for DurableQueue<T, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableQueue")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<T, D: Store> DurableQueue<T, D> {
    /// The queue of a source: its statements, wake-up signal and default attempts.
    pub(crate) fn of(
        pool: Pool<D::Db>,
        sql: Arc<Sql>,
        table: &str,
        signal: Arc<Signal>,
        default_attempts: u32,
    ) -> Self {
        DurableQueue {
            pool,
            sql,
            table: table.into(),
            signal,
            default_attempts,
            _payload: PhantomData,
        }
    }

    /// A queue on the table `config` names, through `pool` (no migration, no listener; a
    /// [`notify`](Self::notify) wakes no poller of this process).
    ///
    /// # Errors
    ///
    /// The store's configuration error for an invalid table or schema name.
    pub fn new(pool: Pool<D::Db>, config: &DurableConfig<D>) -> Result<Self, DurableError<D>> {
        let names = D::names(config)?;
        let sql = Arc::new(Sql::new::<D>(&names));
        let (signal, _) = watch::channel(0u64);
        let signal = Arc::new(signal);
        Ok(Self::of(
            pool,
            sql,
            &names.table,
            signal,
            config.default_attempts,
        ))
    }

    /// A queue on the table `config` names, on a pool of its own opened as a source opens
    /// its pool: `config`'s connection settings and pool size, and no ping before each
    /// statement (sqlx's default pool pings every connection it hands out: a round trip more
    /// per enqueue). For a process that enqueues and runs no poller; no migration, no listener.
    ///
    /// # Errors
    ///
    /// As [`connect`](super::DurableSource::connect) before its migrations: an invalid
    /// configuration, a database that cannot be opened or reached.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # mod example {
    /// use actix_poller::source::postgres::{PgConfig, PgError, PgQueue};
    /// use actix_poller::source::NewTask;
    /// # async fn f() -> Result<(), PgError> {
    /// let queue = PgQueue::<String>::connect(&PgConfig::new("postgres://app@db/app")).await?;
    /// queue.enqueue(vec![NewTask::new("resize photo 7".into())]).await?;
    /// # Ok(()) }
    /// # }
    /// ```
    pub async fn connect(config: &DurableConfig<D>) -> Result<Self, DurableError<D>> {
        D::names(config)?;
        let pool = D::connect(config).await?;
        Self::new(pool, config)
    }

    /// The connection pool (for the caller's own transactions).
    pub fn pool(&self) -> &Pool<D::Db> {
        &self.pool
    }

    /// Wakes the source's poller: new tasks may be due (e.g. after committing a transaction
    /// that [`enqueue_in`](Self::enqueue_in) wrote to, on SQLite; PostgreSQL's pollers are
    /// notified by the commit).
    pub fn notify(&self) {
        common::bump(&self.signal);
    }
}

impl<T: Serialize, D: Store> DurableQueue<T, D> {
    /// Enqueues a batch in one statement; returns the new ids, in the batch's order.
    ///
    /// # Errors
    ///
    /// The store's encoding error if a payload does not serialize as JSON; its database error
    /// if the insert fails (then nothing was inserted).
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
    pub async fn enqueue(&self, tasks: Vec<NewTask<T>>) -> Result<Vec<TaskId>, DurableError<D>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = common::new_rows(&tasks, self.default_attempts)?;
        let mut conn = self.pool.acquire().await?;
        let ids = self.insert(&mut conn, rows).await?;
        if !D::NOTIFIES {
            self.notify();
        }
        Ok(ids)
    }

    /// Enqueues a batch on `conn`, typically the caller's open transaction (`&mut *tx`): the
    /// tasks exist only if it commits. PostgreSQL notifies the pollers when it does; on SQLite,
    /// call [`notify`](Self::notify) after the commit to wake the poller at once (otherwise its
    /// poll finds them).
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue); a failed statement also aborts the caller's transaction
    /// on PostgreSQL, as any failed statement does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # mod example {
    /// # use actix_poller::source::postgres::{PgQueue, PgError};
    /// use actix_poller::source::NewTask;
    /// # async fn f(queue: PgQueue<String>) -> Result<(), PgError> {
    /// let mut tx = queue.pool().begin().await?;
    /// sqlx::query("UPDATE accounts SET welcomed = true WHERE id = 7").execute(&mut *tx).await?;
    /// queue.enqueue_in(&mut tx, vec![NewTask::new("welcome mail for 7".into())]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// # }
    /// ```
    pub async fn enqueue_in(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        tasks: Vec<NewTask<T>>,
    ) -> Result<Vec<TaskId>, DurableError<D>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = common::new_rows(&tasks, self.default_attempts)?;
        Ok(self.insert(conn, rows).await?)
    }

    /// Inserts encoded rows on `conn`; the new ids in the batch's order.
    pub(crate) async fn insert(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        rows: Vec<common::NewRow>,
    ) -> Result<Vec<TaskId>, sqlx::Error> {
        let ids = D::ints(
            conn,
            &self.sql.enqueue,
            vec![Arg::List(List::Tasks(rows)), Arg::Now],
        )
        .await?;
        // Ids grow in insert order: sorted, they are the batch's order.
        Ok(common::sorted_ids(ids))
    }
}
