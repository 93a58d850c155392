//! What a store brings to the durable source: a [`Dialect`] (its SQL, how it binds arguments,
//! how it connects, and its wake-ups) — and [`Store`], the statement runners written once over
//! every dialect.
//!
//! The durable source speaks in *statements* (named sections of the dialect's SQL file) and
//! store-neutral [`Arg`]s; the dialect decides how each argument is bound (PostgreSQL binds a
//! list as an array, SQLite as a JSON text its `json_each` reads) and what its clock is
//! (PostgreSQL reads `now()` on the server; SQLite is bound the client's time).

use std::fmt;
use std::sync::Arc;

use futures::future::{self, BoxFuture, FutureExt};
use sqlx::database::Database;
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::common::{AckRow, Migration, NewRow, Signal};
use super::config::DurableConfig;
use super::error::DurableError;

/// One argument of a statement, as the durable source gives it. Integers and texts bind alike
/// everywhere; the dialect binds lists and the clock.
#[derive(Debug)]
pub enum Arg {
    /// An integer.
    Int(i64),
    /// A text.
    Text(String),
    /// A list.
    List(List),
    /// The store's clock, always the last argument: a store whose SQL reads its own clock (the
    /// PostgreSQL server's `now()`) binds nothing for it; SQLite binds the client's time (µs
    /// since the Unix epoch).
    Now,
}

/// A list argument: the dialect binds it as its store takes lists (PostgreSQL arrays, one per
/// column; SQLite one JSON text).
#[derive(Debug)]
pub enum List {
    /// Task ids.
    Ids(Vec<i64>),
    /// Leases: task ids and their lease sequences.
    Leases(Vec<(i64, i64)>),
    /// A batch of acks.
    Acks(Vec<AckRow>),
    /// A batch of new tasks.
    Tasks(Vec<NewRow>),
}

/// The placeholders of a dialect's SQL files for one configuration, and the table's name as
/// the source reports it.
#[derive(Debug, Clone)]
pub struct Names {
    /// The table's name as `table()` reports it.
    pub table: String,
    /// `{placeholder}` → text.
    pub vars: Vec<(&'static str, String)>,
}

/// The arguments of one statement, as its database takes them.
pub(crate) type Args<'q, D> = <<D as Dialect>::Db as Database>::Arguments<'q>;

/// A store the durable source runs on: an SQL engine's statements, argument binding, connection
/// set-up and wake-ups. The source's logic (leases, acks, heartbeats, dead tasks, migrations) is
/// written once over this trait; a new store is a new dialect.
pub trait Dialect: super::sealed::Sealed + Sized + Send + Sync + 'static {
    /// The `sqlx` database.
    type Db: Database;
    /// The store's own settings (file, URL, …), kept in [`DurableConfig`].
    type Options: Clone + fmt::Debug + Send + Sync + 'static;
    /// Where a database file lives, for errors (SQLite: a path; a server store: an uninhabited
    /// type).
    type File: fmt::Debug + Send + Sync + 'static;
    /// Which server, for errors (PostgreSQL: host, port and database; a file store: an
    /// uninhabited type).
    type Server: fmt::Display + fmt::Debug + Send + Sync + 'static;

    /// The store's name, for messages.
    const NAME: &'static str;
    /// The statements, one per `-- name:` section.
    const QUERIES: &'static str;
    /// The crate's migrations, in order.
    const MIGRATIONS: &'static [Migration];
    /// How many finished rows one prune statement deletes at most.
    const PRUNE_BATCH: i64;
    /// The default [`poll_interval`](DurableConfig::poll_interval).
    const POLL_INTERVAL: std::time::Duration;
    /// The default [`max_connections`](DurableConfig::max_connections).
    const POOL_SIZE: u32;
    /// Whether the store itself tells every poller of new tasks (PostgreSQL's `NOTIFY`, sent
    /// by an insert trigger and the `notify` statement). If not (SQLite), the source wakes its
    /// own poller after local enqueues, and other processes find tasks by polling.
    const NOTIFIES: bool;
    /// Whether the `fetch` statement's last column is, on a short batch (fewer rows than
    /// asked for), the microseconds from now to the earliest queued task it left (negative:
    /// overdue; NULL: none). If not (its last column is always NULL), the source asks
    /// `next_due` after a short batch.
    const FETCH_NEXT_DUE: bool = false;
    /// A bookkeeping connection kept between statements (see `keeper.rs`) is pinged before
    /// use when it sat idle this long (`Duration::MAX`: never).
    const KEPT_PING_AFTER: std::time::Duration = std::time::Duration::MAX;

    /// The SQL placeholders for `config`.
    ///
    /// # Errors
    ///
    /// An invalid configuration (e.g. a table name that is not a plain identifier).
    fn names(config: &DurableConfig<Self>) -> Result<Names, DurableError<Self>>;

    /// Opens the pool `config` describes.
    fn connect(
        config: &DurableConfig<Self>,
    ) -> BoxFuture<'_, Result<Pool<Self::Db>, DurableError<Self>>>;

    /// The pool of the poller's own bookkeeping (fetches, acks, heartbeats, releases): `pool`
    /// unless the store runs those with other settings (PostgreSQL: planner settings, and
    /// asynchronous commit). The source keeps this pool's connections between statements
    /// (`keeper.rs`), so a dialect whose callers also take connections from `pool` itself (a
    /// caller's transaction) must return a pool of its own here, as both dialects do.
    fn bookkeeping_pool(pool: &Pool<Self::Db>, config: &DurableConfig<Self>) -> Pool<Self::Db> {
        let _ = config;
        pool.clone()
    }

    /// Starts listening for tasks other processes enqueue: a task that bumps `signal` on each
    /// (PostgreSQL's `LISTEN`), and the pool of its own connection (the source closes it with
    /// itself); `None` when the store has no notifications.
    #[allow(clippy::type_complexity)]
    fn listen<'a>(
        pool: &'a Pool<Self::Db>,
        names: &'a Names,
        signal: Arc<Signal>,
    ) -> BoxFuture<
        'a,
        Result<Option<(tokio::task::JoinHandle<()>, Pool<Self::Db>)>, DurableError<Self>>,
    > {
        let _ = (pool, names, signal);
        future::ready(Ok(None)).boxed()
    }

    /// Binds a list.
    ///
    /// # Errors
    ///
    /// The list cannot be encoded.
    fn bind_list(out: &mut Args<'_, Self>, list: List) -> Result<(), BoxDynError>;

    /// Binds the clock ([`Arg::Now`]), if the statements do not read the store's own.
    ///
    /// # Errors
    ///
    /// The time cannot be encoded.
    fn bind_now(out: &mut Args<'_, Self>) -> Result<(), BoxDynError>;

    /// Whether `error` is about the data a statement was given (a value the store refuses):
    /// retrying it cannot help, splitting the batch can.
    fn is_data_error(error: &sqlx::Error) -> bool;

    /// How many rows a statement changed.
    fn affected(result: &<Self::Db as Database>::QueryResult) -> u64;
}

/// A fetched row: id, attempt, max attempts, priority, timeout (ms), payload (JSON),
/// enqueued at and due at (µs since the epoch), lease sequence, W3C `traceparent`, pace key.
pub(crate) type FetchedRow = (
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

/// A row of the `fetch` statement: a [`FetchedRow`], then (see [`Dialect::FETCH_NEXT_DUE`])
/// the next due time after a short batch.
pub(crate) type FetchedDueRow = (
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// A dead row: id, attempts, error, died at (µs since the epoch).
pub(crate) type DeadRow = (i64, i64, String, i64);

/// A finished row: id, state, attempt, last error.
pub(crate) type FinalRow = (i64, String, i64, Option<String>);

/// A task's status row: id, state, attempt, max attempts, last error, then (µs since the epoch)
/// due at, enqueued at, finished at, leased at, and the store's now; then the pace key.
pub(crate) type StatusRow = (
    i64,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    Option<String>,
);

/// Counts by state: queued (due), scheduled, retrying, running, dead.
/// Queued (due), scheduled, retrying, running, dead; the oldest due task's age in µs (NULL when
/// none is due).
pub(crate) type CountsRow = (i64, i64, i64, i64, i64, Option<i64>);

/// The queue's stored pace (PostgreSQL): whether it has one; the rate's n, period (µs) and
/// burst; the key limit.
pub(crate) type PaceRow = (bool, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// The statement runners, written once for every dialect whose `sqlx` driver can run them
/// (implemented for every such [`Dialect`]; not to be implemented by hand).
pub trait Store: Dialect {
    /// Binds `args`, in order.
    ///
    /// # Errors
    ///
    /// An argument cannot be encoded.
    fn bind<'q>(args: Vec<Arg>) -> Result<Args<'q, Self>, BoxDynError>;

    /// Runs a statement; how many rows it changed.
    fn count<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Runs a statement returning one integer per row (ids, versions).
    fn ints<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<i64>, sqlx::Error>>;

    /// Runs a statement returning one nullable integer.
    fn maybe_int<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>>;

    /// Runs a statement returning one text per row (the states a reclaim set).
    fn texts<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>>;

    /// Runs the fetch statement.
    fn fetched<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<FetchedRow>, sqlx::Error>>;

    /// Runs the `fetch` statement (the one without queue-wide pace): its rows, and the next
    /// due time its last column reports.
    fn fetched_due<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<FetchedDueRow>, sqlx::Error>>;

    /// Runs the dead-task listing.
    fn dead<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<DeadRow>, sqlx::Error>>;

    /// Runs the final-state lookup.
    fn finals<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<FinalRow>, sqlx::Error>>;

    /// Runs the status lookup.
    fn statuses<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<StatusRow>, sqlx::Error>>;

    /// Runs the counts by state.
    fn counts<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<CountsRow>, sqlx::Error>>;

    /// Runs the stored-pace lookup.
    fn paces<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<PaceRow>, sqlx::Error>>;

    /// Runs SQL without arguments (several statements may be given).
    fn raw<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// The answer to a statement whose arguments could not be bound.
fn unbound<'a, R: Send + 'a>(e: BoxDynError) -> BoxFuture<'a, Result<R, sqlx::Error>> {
    future::ready(Err(sqlx::Error::Encode(e))).boxed()
}

type Row<D> = <<D as Dialect>::Db as Database>::Row;

/// Runs a statement returning rows of `R`: the one body of every typed row runner below.
fn rows<'a, D, R>(
    conn: &'a mut <D::Db as Database>::Connection,
    sql: &'a str,
    args: Vec<Arg>,
) -> BoxFuture<'a, Result<Vec<R>, sqlx::Error>>
where
    D: Store,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'r> R: FromRow<'r, Row<D>> + Send + Unpin + 'a,
{
    match D::bind(args) {
        Ok(args) => sqlx::query_as_with(sql, args).fetch_all(conn).boxed(),
        Err(e) => unbound(e),
    }
}

impl<D> Store for D
where
    D: Dialect,
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'r> (i64,): FromRow<'r, Row<D>>,
    for<'r> (Option<i64>,): FromRow<'r, Row<D>>,
    for<'r> (String,): FromRow<'r, Row<D>>,
    for<'r> FetchedRow: FromRow<'r, Row<D>>,
    for<'r> FetchedDueRow: FromRow<'r, Row<D>>,
    for<'r> DeadRow: FromRow<'r, Row<D>>,
    for<'r> FinalRow: FromRow<'r, Row<D>>,
    for<'r> StatusRow: FromRow<'r, Row<D>>,
    for<'r> CountsRow: FromRow<'r, Row<D>>,
    for<'r> PaceRow: FromRow<'r, Row<D>>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> String: Encode<'q, D::Db> + Type<D::Db>,
{
    fn bind<'q>(args: Vec<Arg>) -> Result<Args<'q, D>, BoxDynError> {
        let mut out = Args::<'q, D>::default();
        for arg in args {
            match arg {
                Arg::Int(n) => out.add(n)?,
                Arg::Text(s) => out.add(s)?,
                Arg::List(list) => D::bind_list(&mut out, list)?,
                Arg::Now => D::bind_now(&mut out)?,
            }
        }
        Ok(out)
    }

    fn count<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        match D::bind(args) {
            Ok(args) => sqlx::query_with(sql, args)
                .execute(conn)
                .map(|r| r.map(|done| D::affected(&done)))
                .boxed(),
            Err(e) => unbound(e),
        }
    }

    fn ints<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<i64>, sqlx::Error>> {
        match D::bind(args) {
            Ok(args) => sqlx::query_scalar_with(sql, args).fetch_all(conn).boxed(),
            Err(e) => unbound(e),
        }
    }

    fn maybe_int<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
        match D::bind(args) {
            Ok(args) => sqlx::query_scalar_with(sql, args).fetch_one(conn).boxed(),
            Err(e) => unbound(e),
        }
    }

    fn texts<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>> {
        match D::bind(args) {
            Ok(args) => sqlx::query_scalar_with(sql, args).fetch_all(conn).boxed(),
            Err(e) => unbound(e),
        }
    }

    fn fetched<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<FetchedRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn fetched_due<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<FetchedDueRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn dead<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<DeadRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn finals<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<FinalRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn statuses<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<StatusRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn counts<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<CountsRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn paces<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<PaceRow>, sqlx::Error>> {
        rows::<D, _>(conn, sql, args)
    }

    fn raw<'a>(
        conn: &'a mut <D::Db as Database>::Connection,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        conn.execute(sql).map(|r| r.map(drop)).boxed()
    }
}
