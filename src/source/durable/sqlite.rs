//! The SQLite dialect: one file, one writer at a time, the client's clock, lists bound as JSON
//! (read by `json_each`), wake-ups by a local signal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::error::BoxDynError;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::Arguments;

use super::common::{self, Migration};
use super::config::DurableConfig;
use super::dialect::{Args, Dialect, List, Names};
use super::error::DurableError;
use super::queue::DurableQueue;
use super::source::DurableSource;

/// The SQLite store (feature `sqlite`): see [`crate::source::sqlite`].
#[derive(Debug, Clone, Copy)]
pub struct SqliteDialect;

impl super::sealed::Sealed for SqliteDialect {}

/// What can go wrong with a [`SqliteSource`]: [`DurableError`] for SQLite (it is never
/// [`Connect`](DurableError::Connect)).
pub type SqliteError = DurableError<SqliteDialect>;

/// How to open a [`SqliteSource`]: the file, the table, leases, polling, retention. Start one
/// with [`SqliteConfig::new`]; the setters every durable source has are
/// [`DurableConfig`]'s, SQLite's own are [`busy_timeout`](SqliteConfig::busy_timeout) and
/// [`full_sync`](SqliteConfig::full_sync).
pub type SqliteConfig = DurableConfig<SqliteDialect>;

impl DurableConfig<SqliteDialect> {
    /// The database at `path` (created if missing), with the defaults: table
    /// [`DEFAULT_TABLE`](super::DEFAULT_TABLE), 30 s leases, a 1 s poll with 20 % jitter,
    /// completed tasks kept for 24 h, migrations on, fetches of at most 1 000 tasks, 4 pooled
    /// connections (and one of the poller's own for its writes), a 10 s busy timeout.
    pub fn new(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let busy_timeout = Duration::from_secs(10);
        DurableConfig::with_store(SqliteOptions {
            path,
            busy_timeout,
            full_sync: false,
        })
    }

    /// How long a statement waits for another process's write to finish (default 10 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.store.busy_timeout = timeout;
        self
    }

    /// `synchronous = FULL`: every commit is on disk before it returns, so a power loss loses
    /// nothing (default `false`: `NORMAL`, which survives a crash of the process).
    pub fn full_sync(mut self, full: bool) -> Self {
        self.store.full_sync = full;
        self
    }
}

/// SQLite's own settings.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    path: PathBuf,
    busy_timeout: Duration,
    full_sync: bool,
}

impl Dialect for SqliteDialect {
    type Db = Sqlite;
    type Options = SqliteOptions;
    type File = PathBuf;
    type Server = std::convert::Infallible;

    const NAME: &'static str = "SQLite";
    const QUERIES: &'static str = include_str!("sql/sqlite.sql");
    const MIGRATIONS: &'static [Migration] = &[
        include_str!("../../../migrations/sqlite/0001_create_tasks.sql"),
        include_str!("../../../migrations/sqlite/0002_lease_seq.sql"),
        include_str!("../../../migrations/sqlite/0003_lease_expiries.sql"),
        include_str!("../../../migrations/sqlite/0004_leased_at.sql"),
        include_str!("../../../migrations/sqlite/0005_traceparent.sql"),
        include_str!("../../../migrations/sqlite/0006_pace_key.sql"),
    ];
    const PRUNE_BATCH: i64 = 5_000;
    const POLL_INTERVAL: Duration = Duration::from_secs(1);
    const POOL_SIZE: u32 = 4;
    const NOTIFIES: bool = false;

    fn names(config: &DurableConfig<Self>) -> Result<Names, DurableError<Self>> {
        let table = &config.table;
        if !common::valid_identifier(table) {
            return Err(DurableError::Config(format!(
                "table name {table:?} must be a plain identifier (letters, digits, _; at most 48 \
                 bytes)"
            )));
        }
        Ok(Names {
            table: table.clone(),
            vars: vec![
                ("table", format!("\"{table}\"")),
                ("name", table.clone()),
                ("migrations", format!("\"{table}_migrations\"")),
            ],
        })
    }

    fn connect(
        config: &DurableConfig<Self>,
    ) -> BoxFuture<'_, Result<SqlitePool, DurableError<Self>>> {
        let store = &config.store;
        let options = SqliteConnectOptions::new()
            .filename(&store.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if store.full_sync {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(store.busy_timeout);
        SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(store.busy_timeout + Duration::from_secs(5))
            // A file has no peer to lose: sqlx's default ping before every acquire would only
            // add a round trip to the connection's worker thread per statement (issue 14).
            .test_before_acquire(false)
            .connect_with(options)
            .map(|r| {
                r.map_err(|source| DurableError::Open {
                    path: store.path.clone(),
                    source,
                })
            })
            .boxed()
    }

    /// One connection of its own: SQLite lets one writer at a time into the file, and every
    /// statement of the poller's bookkeeping writes (a fetch leases, an ack records). Two of
    /// them on two connections (a fetch while the previous batch's ack is on its way, as the
    /// Fetcher runs them) collide on the write lock, and the loser sleeps in SQLite's busy
    /// handler, 1 ms and more at a time; queued for one connection, they wait only for each
    /// other (issue 14). Enqueues, cancels and reads keep the configured pool.
    ///
    /// Its row buffer holds a whole fetch: sqlx's worker thread hands rows over a channel (50
    /// by default) and slept each time a fetch of up to `batch` rows filled it. The configured
    /// pool keeps sqlx's default: it is the caller's too, for queries of their own.
    fn bookkeeping_pool(pool: &SqlitePool, config: &DurableConfig<Self>) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.store.busy_timeout + Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_lazy_with(
                (*pool.connect_options())
                    .clone()
                    .row_buffer_size(config.batch.saturating_add(1)),
            )
    }

    fn bind_list(out: &mut Args<'_, Self>, list: List) -> Result<(), BoxDynError> {
        let json = match list {
            List::Ids(ids) => serde_json::to_string(&ids)?,
            List::Leases(leases) => serde_json::to_string(&leases)?,
            List::Acks(acks) => serde_json::to_string(&acks)?,
            List::Tasks(tasks) => serde_json::to_string(&tasks)?,
        };
        out.add(json)
    }

    fn bind_now(out: &mut Args<'_, Self>) -> Result<(), BoxDynError> {
        out.add(common::now_us())
    }

    /// `SQLITE_TOOBIG`, `SQLITE_CONSTRAINT`, `SQLITE_MISMATCH` or `SQLITE_RANGE` (with their
    /// extended codes), or a value that does not encode.
    fn is_data_error(error: &sqlx::Error) -> bool {
        match error {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(e) => e
                .code()
                .and_then(|code| code.parse::<i64>().ok())
                .is_some_and(|code| matches!(code & 0xff, 18 | 19 | 20 | 25)),
            _ => false,
        }
    }

    fn affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// A durable task source in a SQLite database. See the [module docs](crate::source::sqlite). Open one with
/// [`SqliteSource::connect`].
pub type SqliteSource<T> = DurableSource<T, SqliteDialect>;

/// Enqueues into a [`SqliteSource`]'s table from anywhere in the process (cheap to clone,
/// `Send + Sync`); the source's poller is woken at once. Get one from [`SqliteSource::queue`].
pub type SqliteQueue<T> = DurableQueue<T, SqliteDialect>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::durable::race_test::{
        a_completed_ack_answers_only_its_own_lease,
        a_short_batch_is_drained_and_wakes_for_what_follows,
        a_wake_up_racing_an_empty_fetch_is_not_lost,
    };
    use crate::source::durable::Sql;

    /// A database file in the temporary directory, removed (with its WAL files) when dropped,
    /// even when the test fails.
    struct TempDb(std::path::PathBuf);

    impl TempDb {
        fn new() -> Self {
            TempDb(std::env::temp_dir().join(format!("ap-unit-{:x}.db", fastrand::u64(..))))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    #[test]
    fn every_statement_is_in_the_file() {
        let names = SqliteDialect::names(&DurableConfig::<SqliteDialect>::new("x").table("t"));
        let sql = Sql::new::<SqliteDialect>(&names.unwrap_or_else(|e| panic!("{e}")));
        assert!(sql.fetch.contains("\"t\""));
        assert!(sql.ack.contains("json_each"));
        assert!(!sql.dead_purge_all.contains('{'));
    }

    #[test]
    fn bad_table_names_are_refused() {
        assert!(
            SqliteDialect::names(&DurableConfig::<SqliteDialect>::new("x").table("tasks")).is_ok()
        );
        assert!(matches!(
            SqliteDialect::names(
                &DurableConfig::<SqliteDialect>::new("x").table("x; DROP TABLE y")
            ),
            Err(DurableError::Config(_))
        ));
    }

    /// The poller's writes (fetches, acks, heartbeats) share one connection, so they queue
    /// for it instead of colliding on the file's write lock and sleeping in SQLite's busy
    /// handler (issue 14); no connection is pinged before use. Its row buffer holds a fetch
    /// (sqlx shows it only in the options' `Debug`); the caller's pool keeps sqlx's 50.
    #[actix_rt::test]
    async fn bookkeeping_writes_through_one_connection() {
        let db = TempDb::new();
        let config = SqliteConfig::new(&db.0);
        let pool = SqliteDialect::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let bookkeeping = SqliteDialect::bookkeeping_pool(&pool, &config);
        assert_eq!(bookkeeping.options().get_max_connections(), 1);
        assert!(!bookkeeping.options().get_test_before_acquire());
        assert!(!pool.options().get_test_before_acquire());
        assert_eq!(pool.options().get_max_connections(), config.max_connections);
        let buffer = |options: &sqlx::sqlite::SqliteConnectOptions| {
            let debug = format!("{options:?}");
            debug
                .split("row_channel_size: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok())
        };
        assert_eq!(buffer(&bookkeeping.connect_options()), Some(1_001));
        assert_eq!(buffer(&pool.connect_options()), Some(50));
        pool.close().await;
    }

    /// A pool on a fresh database with the task table, and the statements for it.
    async fn table(db: &TempDb) -> (SqlitePool, Sql, String) {
        let config = SqliteConfig::new(&db.0);
        let names = SqliteDialect::names(&config).unwrap_or_else(|e| panic!("{e}"));
        let sql = Sql::new::<SqliteDialect>(&names);
        let source = SqliteSource::<u32>::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (source.pool().clone(), sql, names.table)
    }

    /// Rows straight into the table: (priority, microseconds from now to run_at).
    async fn insert(pool: &SqlitePool, table: &str, rows: &[(i64, i64)]) {
        let now = common::now_us();
        let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        for &(priority, delay) in rows {
            sqlx::query(&format!(
                "INSERT INTO {table} (payload, priority, run_at, enqueued_at) VALUES ('0', ?, ?, ?)"
            ))
            .bind(priority)
            .bind(now + delay)
            .bind(now)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// The ids the fetch leases, sorted: its batch of `limit` at `now`.
    async fn fetched(
        conn: &mut sqlx::SqliteConnection,
        sql: &Sql,
        limit: i64,
        now: i64,
    ) -> Vec<i64> {
        let mut ids: Vec<i64> = sqlx::query_scalar(&sql.fetch)
            .bind(limit)
            .bind(1_i64)
            .bind(30_000_000_i64)
            .bind(now)
            .fetch_all(conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ids.sort_unstable();
        ids
    }

    /// The ids a fetch of `limit` at `now` must lease, sorted: the due queued rows in fetch
    /// order (priority, highest first; then due time, then id), the first `limit`.
    async fn expected(pool: &SqlitePool, table: &str, limit: i64, now: i64) -> Vec<i64> {
        let mut ids: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE state = 'queued' AND run_at <= ? \
             ORDER BY priority DESC, run_at, id LIMIT ?"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        ids.sort_unstable();
        ids
    }

    /// A fetch reads the due rows' index entries, not the delayed rows' (issue 14): 20 000
    /// rows delayed by a day at three priorities while 3 are due, with no statistics, with
    /// statistics of delayed rows, and with statistics taken while the rows were due. The
    /// plan, from SQLite's planner (the bundled one: what every user runs): each priority's
    /// due range searched (`priority=? AND run_at<?`), no sort. The work: SQLite's count of
    /// virtual-machine instructions (its progress handler, called at every one), not a time;
    /// a scan in fetch order, as the statement was, steps through the 20 000 delayed entries
    /// behind the highest priority's due rows on every short fetch (23 ms at 200 000), and so
    /// does the fallback arm for many priorities if it runs when it should not. Then the batch
    /// itself: the three due rows.
    #[actix_rt::test]
    async fn a_fetch_reads_the_due_rows_only_whatever_the_statistics() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let db = TempDb::new();
        let (pool, sql, table) = table(&db).await;
        let mut conn = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        let steps = std::sync::Arc::new(AtomicU64::new(0));
        let counter = steps.clone();
        conn.lock_handle()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .set_progress_handler(1, move || {
                counter.fetch_add(1, Ordering::Relaxed);
                true
            });
        let delayed: Vec<(i64, i64)> = (0..20_000).map(|i| (i % 3, 86_400_000_000)).collect();
        insert(&pool, &table, &delayed).await;
        let due_range = format!("INDEX {table}_due (priority=? AND run_at<?)");
        let scenarios = [
            ("no statistics", ""),
            ("statistics of delayed rows", "ANALYZE"),
            (
                "statistics of due rows",
                "UPDATE {table} SET run_at = 0 WHERE state = 'queued'; ANALYZE; \
                 UPDATE {table} SET run_at = 9000000000000000 WHERE state = 'queued'",
            ),
        ];
        for (scenario, before) in scenarios {
            sqlx::raw_sql(&before.replace("{table}", &table))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{scenario}: {e}"));
            insert(&pool, &table, &[(0, -1_000_000), (5, 0), (0, -2_000_000)]).await;
            let now = common::now_us();
            let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {}", sql.fetch))
                .bind(10_i64)
                .bind(1_i64)
                .bind(30_000_000_i64)
                .bind(now)
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{scenario}: {e}"))
                .iter()
                .map(|row| sqlx::Row::try_get::<String, _>(row, 3).unwrap_or_default())
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains(&due_range) && !plan.contains("TEMP B-TREE"),
                "{scenario}: the fetch does not search each priority's due range:\n{plan}"
            );
            let want = expected(&pool, &table, 10, now).await;
            assert_eq!(want.len(), 3, "{scenario}");
            steps.store(0, Ordering::Relaxed);
            let got = fetched(&mut conn, &sql, 10, now).await;
            let work = steps.load(Ordering::Relaxed);
            assert_eq!(got, want, "{scenario}");
            assert!(
                work < 2_000,
                "{scenario}: the fetch of 3 rows took {work} instructions"
            );
            sqlx::raw_sql(&format!("DELETE FROM {table} WHERE state = 'running'"))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{scenario}: {e}"));
        }
        drop(conn);
        pool.close().await;
    }

    /// The fetch leases exactly the rows the plain statement would, in every case: few or many
    /// priorities (16 and 17 distinct: either side of the per-priority read), due and delayed
    /// rows, rows already running, batches shorter and longer than what is due. Each case
    /// fetches until nothing is due, so the later fetches see the gaps the earlier ones left.
    #[actix_rt::test]
    async fn a_fetch_leases_the_rows_of_fetch_order() {
        let db = TempDb::new();
        let (pool, sql, table) = table(&db).await;
        let mut conn = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        let mut rng = fastrand::Rng::with_seed(14);
        for case in 0..40 {
            let priorities = [1, 2, 5, 16, 17, 40][case % 6];
            let rows: Vec<(i64, i64)> = (0..rng.usize(0..300))
                .map(|_| {
                    let delay = if rng.bool() {
                        -rng.i64(0..1_000_000)
                    } else {
                        rng.i64(1_000_000..1_000_000_000)
                    };
                    (rng.i64(0..priorities) * 7 - 20, delay)
                })
                .collect();
            insert(&pool, &table, &rows).await;
            let now = common::now_us();
            loop {
                let limit = rng.i64(1..60);
                let want = expected(&pool, &table, limit, now).await;
                let got = fetched(&mut conn, &sql, limit, now).await;
                assert_eq!(
                    got, want,
                    "case {case}: {priorities} priorities, batch {limit}"
                );
                if got.is_empty() {
                    break;
                }
            }
            sqlx::raw_sql(&format!("DELETE FROM {table}"))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("case {case}: {e}"));
        }
        drop(conn);
        pool.close().await;
    }

    /// A local enqueue racing an empty fetch still wakes the poller.
    #[actix_rt::test]
    async fn a_local_enqueue_racing_an_empty_fetch_is_not_lost() {
        let db = TempDb::new();
        let config = SqliteConfig::new(&db.0).poll_interval(Duration::from_secs(600));
        let source = SqliteSource::<u32>::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let queue = source.queue();
        a_wake_up_racing_an_empty_fetch_is_not_lost(source, queue, Duration::ZERO).await;
    }

    /// A short batch is drained, wakes at the next due time, and for a later local enqueue.
    #[actix_rt::test]
    async fn a_short_batch_is_drained() {
        let db = TempDb::new();
        let config = SqliteConfig::new(&db.0).poll_interval(Duration::from_secs(600));
        let source = SqliteSource::<u32>::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let queue = source.queue();
        a_short_batch_is_drained_and_wakes_for_what_follows(source, queue).await;
    }

    /// A completed task's ack counts only for the lease it answers.
    #[actix_rt::test]
    async fn a_completed_ack_answers_only_its_lease() {
        let db = TempDb::new();
        let source = SqliteSource::<u32>::connect(SqliteConfig::new(&db.0))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        a_completed_ack_answers_only_its_own_lease(source).await;
    }
}
