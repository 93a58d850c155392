//! [`Keeper`]: the poller's bookkeeping connections, kept between statements.
//!
//! sqlx pings a connection every time it goes back to its pool (sqlx-core 0.8,
//! `return_to_pool`: a `Sync` and its `ReadyForQuery`, whatever the pool's options), so every
//! statement run through a pool costs a second round trip: on PostgreSQL a wake-up of the
//! server's backend and, on the thread that dropped the connection, a task that writes and
//! reads the socket (on the Fetcher's thread, 30 µs of a one-task wake-up's dispatch); on
//! SQLite a round trip to the connection's worker thread, which does every write (issue 14).
//! The bookkeeping statements (fetches, acks, heartbeats, releases) get their connection from a
//! `Keeper` instead: one that ran its statements without an error is kept for the next one;
//! one that failed, or was dropped mid-statement (a cancelled future), goes back to the pool,
//! whose ping on return flushes a pending rollback and closes a broken connection.
//!
//! What the pool did for connections it held, the keeper does for the ones it keeps: one idle
//! for the dialect's [`KEPT_PING_AFTER`](super::Dialect::KEPT_PING_AFTER) or longer is pinged
//! before use (a dead one is dropped, and the next is tried), and each goes back through the
//! pool once every [`CYCLE`], so the pool's lifetime and idle rules still apply to it. A caller
//! that finds no kept connection waits on the pool; while one does, a connection finishing its
//! statement goes back to the pool for it, not to the keeper (the pool's connections may all
//! be kept: nothing else would return one).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Pool};
use tokio::time::Instant;

/// How long a kept connection stays out of its pool at most: after that it goes back once
/// (and is pinged there), so the pool's `max_lifetime` and `idle_timeout` apply to it.
pub(crate) const CYCLE: Duration = Duration::from_secs(60);

/// Where a statement gets its connection, and where it goes after: a pool (every connection
/// back to it), or a [`Keeper`].
pub(crate) trait Conns<DB: Database> {
    /// A connection handed out.
    type Conn: std::ops::DerefMut<Target = DB::Connection>;

    /// A connection.
    fn get(&self) -> LocalBoxFuture<'_, sqlx::Result<Self::Conn>>;

    /// Hands `conn` back after its statements; `ok` when they all succeeded.
    fn put(&self, conn: Self::Conn, ok: bool);
}

impl<DB: Database> Conns<DB> for Pool<DB> {
    type Conn = PoolConnection<DB>;

    fn get(&self) -> LocalBoxFuture<'_, sqlx::Result<PoolConnection<DB>>> {
        self.acquire().boxed_local()
    }

    fn put(&self, conn: PoolConnection<DB>, _ok: bool) {
        drop(conn);
    }
}

/// A connection handed out by a [`Keeper`]: derefs to the connection.
pub(crate) struct Kept<DB: Database> {
    conn: PoolConnection<DB>,
    /// When it came out of the pool.
    from_pool: Instant,
}

impl<DB: Database> std::ops::Deref for Kept<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Database> std::ops::DerefMut for Kept<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

/// A kept connection, and when it was handed back.
struct Idle<DB: Database> {
    kept: Kept<DB>,
    since: Instant,
}

/// The bookkeeping pool with the connections it handed out kept between statements (see the
/// module docs). Cheap to clone: clones share the kept connections. Not `Send`: a source's
/// futures run on its poller's thread.
pub(crate) struct Keeper<DB: Database> {
    pool: Pool<DB>,
    state: Rc<State<DB>>,
}

struct State<DB: Database> {
    /// Kept connections, the most recently used last.
    idle: RefCell<Vec<Idle<DB>>>,
    /// Callers waiting on the pool.
    waiting: Cell<usize>,
    /// Ping a kept connection idle this long before using it.
    ping_after: Duration,
}

impl<DB: Database> Clone for Keeper<DB> {
    fn clone(&self) -> Self {
        Keeper {
            pool: self.pool.clone(),
            state: Rc::clone(&self.state),
        }
    }
}

impl<DB: Database> Keeper<DB> {
    /// Keeps `pool`'s connections between statements; one idle `ping_after` or longer is
    /// pinged before use (`Duration::MAX`: never).
    pub(crate) fn new(pool: Pool<DB>, ping_after: Duration) -> Self {
        Keeper {
            pool,
            state: Rc::new(State {
                idle: RefCell::new(Vec::new()),
                waiting: Cell::new(0),
                ping_after,
            }),
        }
    }

    /// Closes the pool, the kept connections first, each with its protocol's goodbye
    /// (PostgreSQL's `Terminate`), not a dropped socket, which the server logs as a connection
    /// reset by its peer and counts as an abandoned session. Connections out for a statement
    /// are closed as they come back, waited for at most `wait`. Nothing is kept after.
    pub(crate) async fn close(&self, wait: Duration) {
        let idle = std::mem::take(&mut *self.state.idle.borrow_mut());
        close_all(idle, self.pool.clone(), wait).await;
    }

    /// [`close`](Self::close) in a task of its own (from a `Drop`), when a tokio runtime is
    /// current; else nothing (the connections are dropped with the pool).
    pub(crate) fn close_detached(&self, wait: Duration) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let idle = std::mem::take(&mut *self.state.idle.borrow_mut());
        tokio::spawn(close_all(idle, self.pool.clone(), wait));
    }

    /// How many connections are kept idle now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.state.idle.borrow().len()
    }

    /// A connection: the most recently used kept one, pinged first when it sat idle long
    /// enough; else one from the pool.
    async fn take(&self) -> sqlx::Result<Kept<DB>> {
        loop {
            let next = self.state.idle.borrow_mut().pop();
            let Some(Idle { mut kept, since }) = next else {
                break;
            };
            if since.elapsed() >= self.state.ping_after && kept.conn.ping().await.is_err() {
                // Back to the pool, which pings it again and closes it; try the next one.
                drop(kept);
                continue;
            }
            return Ok(kept);
        }
        let waiting = Waiting::new(&self.state.waiting);
        let conn = self.pool.acquire().await?;
        drop(waiting);
        Ok(Kept {
            conn,
            from_pool: Instant::now(),
        })
    }
}

impl<DB: Database> Conns<DB> for Keeper<DB> {
    type Conn = Kept<DB>;

    fn get(&self) -> LocalBoxFuture<'_, sqlx::Result<Kept<DB>>> {
        self.take().boxed_local()
    }

    fn put(&self, kept: Kept<DB>, ok: bool) {
        let now = Instant::now();
        if ok
            && self.state.waiting.get() == 0
            && now.saturating_duration_since(kept.from_pool) < CYCLE
            && !self.pool.is_closed()
        {
            self.state.idle.borrow_mut().push(Idle { kept, since: now });
        }
        // Else (failed, wanted by a caller waiting on the pool, due for its cycle through the
        // pool, or the pool closed) dropped: back to the pool, which closes it if closed.
    }
}

/// Closes `idle`, then `pool` (waiting for the connections out of it), for at most `wait`.
async fn close_all<DB: Database>(idle: Vec<Idle<DB>>, pool: Pool<DB>, wait: Duration) {
    let closing = async {
        for Idle { kept, .. } in idle {
            let _ = kept.conn.close().await;
        }
        pool.close().await;
    };
    let _ = tokio::time::timeout(wait, closing).await;
}

/// Counts a caller waiting on the pool, until dropped (also when its future is).
struct Waiting<'a>(&'a Cell<usize>);

impl<'a> Waiting<'a> {
    fn new(count: &'a Cell<usize>) -> Self {
        count.set(count.get() + 1);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl<DB: Database> Drop for State<DB> {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut());
        if tokio::runtime::Handle::try_current().is_ok() {
            // Back to the pool (sqlx returns a connection in a task of the runtime).
            drop(idle);
        } else {
            // No runtime to return them in: closed here, outside the pool.
            for idle in idle {
                drop(idle.kept.conn.detach());
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use sqlx::sqlite::{Sqlite, SqlitePoolOptions};

    /// A pool of in-memory databases: each connection has its own, so a table tells which
    /// connection a statement ran on.
    async fn pool(size: u32) -> Pool<Sqlite> {
        SqlitePoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect("sqlite::memory:")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn run(conn: &mut Kept<Sqlite>, sql: &str) -> sqlx::Result<()> {
        sqlx::query(sql).execute(&mut **conn).await.map(|_| ())
    }

    /// A connection whose statements succeeded is kept, not returned to the pool (so not
    /// pinged), and handed out again; one whose statement failed goes back to the pool.
    #[actix_rt::test]
    async fn a_connection_is_kept_after_success_and_returned_after_failure() {
        let pool = pool(1).await;
        let keeper = Keeper::new(pool.clone(), Duration::MAX);
        let mut conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        run(&mut conn, "CREATE TABLE mark (x)")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        keeper.put(conn, true);
        assert_eq!(keeper.kept(), 1);
        assert_eq!(pool.num_idle(), 0, "kept out of the pool");
        let mut conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        run(&mut conn, "SELECT x FROM mark")
            .await
            .unwrap_or_else(|e| panic!("the kept connection again: {e}"));
        assert_eq!(keeper.kept(), 0);
        let failed = run(&mut conn, "SELECT nothing FROM nowhere").await;
        assert!(failed.is_err());
        keeper.put(conn, failed.is_ok());
        assert_eq!(
            keeper.kept(),
            0,
            "a failed statement's connection is not kept"
        );
        // Back in the pool (sqlx returns it in a task): the pool hands it out again.
        let mut again = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("SELECT x FROM mark")
            .execute(&mut *again)
            .await
            .unwrap_or_else(|e| panic!("the same connection, from the pool: {e}"));
    }

    /// A caller waiting on a pool whose every connection is out gets the next one handed
    /// back, instead of waiting while the keeper keeps it (until the pool's timeout fails it).
    #[actix_rt::test]
    async fn a_caller_waiting_on_the_pool_gets_the_next_connection() {
        let keeper = Keeper::new(pool(1).await, Duration::MAX);
        let held = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        let other = keeper.clone();
        let waiter = actix_rt::spawn(async move {
            let conn = other.get().await.unwrap_or_else(|e| panic!("{e}"));
            other.put(conn, true);
        });
        // Until the waiter waits on the pool.
        while keeper.state.waiting.get() == 0 {
            tokio::task::yield_now().await;
        }
        keeper.put(held, true);
        assert_eq!(keeper.kept(), 0, "handed back to the pool for the waiter");
        tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .unwrap_or_else(|_| panic!("the waiter never got the connection"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keeper.kept(), 1, "the waiter's connection is kept after it");
    }

    /// A kept connection idle past the threshold is pinged before use and handed out; one
    /// out of the pool longer than a cycle goes back to it.
    #[actix_rt::test]
    async fn an_idle_kept_connection_is_pinged_and_a_long_kept_one_cycles() {
        let keeper = Keeper::new(pool(2).await, Duration::ZERO);
        let conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        keeper.put(conn, true);
        let mut conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
        run(&mut conn, "SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        conn.from_pool = Instant::now()
            .checked_sub(CYCLE)
            .unwrap_or_else(|| panic!("a monotonic clock a minute old"));
        keeper.put(conn, true);
        assert_eq!(keeper.kept(), 0, "cycled through the pool");
    }

    /// A keeper dropped where no runtime is current (a source moved out of its `System` and
    /// dropped after it ended) closes the connections it keeps instead of returning them: sqlx
    /// returns a connection to its pool in a task, and spawning one there panics. Seen failing
    /// with the keeper always returning them.
    #[test]
    fn a_keeper_dropped_outside_a_runtime_closes_its_connections() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let (keeper, pool) = runtime.block_on(async {
            let pool = pool(1).await;
            let keeper = Keeper::new(pool.clone(), Duration::MAX);
            let conn = keeper.get().await.unwrap_or_else(|e| panic!("{e}"));
            keeper.put(conn, true);
            (keeper, pool)
        });
        assert_eq!(keeper.kept(), 1);
        drop(runtime);
        assert!(tokio::runtime::Handle::try_current().is_err());
        drop(keeper);
        assert_eq!(
            pool.size(),
            0,
            "the kept connection closed, not in the pool"
        );
    }
}
