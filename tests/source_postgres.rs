//! The PostgreSQL source runs the conformance suite (`tests/conformance/mod.rs`), each test in
//! its own schema (so tests run in parallel), plus what only PostgreSQL has: enqueue inside the
//! caller's transaction, LISTEN/NOTIFY wake-ups, a clear error when the server is unreachable.
//!
//! Needs a server: set `ACTIX_POLLER_PG_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`).
#![cfg(feature = "postgres")]

#[macro_use]
mod conformance;
mod pg;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use actix_poller::source::postgres::{PgConfig, PgError, PgSource};
use actix_poller::source::NewTask;
use actix_poller::{FinalState, Poller};
use actix_poller::{TaskId, TaskState};
use conformance::{bounded, Harness, Job, Row};
use futures::future::LocalBoxFuture;
use pg::{config, drop_schema, fresh_schema, pg_url};

/// A fresh schema per test, dropped when the property passed.
struct Postgres;

impl Harness for Postgres {
    type Source = PgSource<Job>;
    type Store = String;

    fn store(&self) -> LocalBoxFuture<'static, String> {
        Box::pin(async { fresh_schema() })
    }

    fn source(&self, store: &String, lease: Duration) -> LocalBoxFuture<'static, Self::Source> {
        let config = config(store).lease(lease);
        Box::pin(async move {
            PgSource::connect(config)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"))
        })
    }

    fn durable(&self) -> bool {
        true
    }

    fn insert_raw(&self, store: &String, json: &str) -> LocalBoxFuture<'static, ()> {
        let (schema, json) = (store.clone(), json.to_owned());
        Box::pin(async move {
            let pool = pg::pool().await;
            sqlx::query(&format!(
                "INSERT INTO \"{schema}\".actix_poller_tasks (payload) VALUES ($1::jsonb)"
            ))
            .bind(json)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("raw insert: {e}"));
        })
    }

    fn row(&self, store: &String, id: TaskId) -> LocalBoxFuture<'static, Row> {
        let schema = store.clone();
        Box::pin(async move {
            let pool = pg::pool().await;
            let row = sqlx::query_as::<_, (String, i32, Option<String>)>(&format!(
                "SELECT state, attempt, last_error FROM \"{schema}\".actix_poller_tasks \
                 WHERE id = $1"
            ))
            .bind(id.0 as i64)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("row {id:?}: {e}"));
            pool.close().await;
            (row.0, row.1.into(), row.2)
        })
    }

    fn refuse_completing(&self, store: &String, id: TaskId) -> LocalBoxFuture<'static, ()> {
        let schema = store.clone();
        Box::pin(async move {
            let pool = pg::pool().await;
            // SQLSTATE 22023 (invalid_parameter_value): class 22, a data error to the source.
            let statements = [
                format!(
                    "CREATE FUNCTION \"{schema}\".refuse_completing() RETURNS trigger \
                     LANGUAGE plpgsql AS $$ BEGIN \
                     RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22023'; END $$"
                ),
                format!(
                    "CREATE TRIGGER refuse_completing BEFORE UPDATE OF state \
                     ON \"{schema}\".actix_poller_tasks FOR EACH ROW \
                     WHEN (OLD.id = {n} AND NEW.state = 'completed') \
                     EXECUTE FUNCTION \"{schema}\".refuse_completing()",
                    n = id.0
                ),
            ];
            for sql in statements {
                sqlx::query(&sql)
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("trigger: {e}"));
            }
            pool.close().await;
        })
    }

    fn cleanup(&self, store: &String) -> LocalBoxFuture<'static, ()> {
        let schema = store.clone();
        Box::pin(async move { drop_schema(&schema).await })
    }
}

conformance_tests!(Postgres);
durable_conformance_tests!(Postgres);

/// An unreachable server is a clear error at start, naming host, port and database.
#[actix_rt::test]
async fn unreachable_server_is_a_clear_error() {
    let config = PgConfig::new("postgres://postgres@127.0.0.1:1/nowhere")
        .connect_timeout(Duration::from_secs(2));
    let err = PgSource::<Job>::connect(config).await.expect_err("port 1");
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1:1") && text.contains("nowhere"),
        "{text}"
    );
    let err = PgSource::<Job>::connect(PgConfig::new("mysql://x"))
        .await
        .expect_err("bad URL");
    assert!(
        matches!(err, PgError::Config(_) | PgError::Connect { .. }),
        "{err:?}"
    );
    let err = PgSource::<Job>::connect(PgConfig::new(pg_url()).schema("no good"))
        .await
        .expect_err("bad schema");
    assert!(matches!(err, PgError::Config(_)), "{err:?}");
}

/// A task enqueued in the caller's transaction exists only if it commits; on commit the
/// poller is woken by NOTIFY (its fallback poll is a minute away).
#[actix_rt::test]
async fn enqueue_in_the_callers_transaction() {
    let schema = fresh_schema();
    let source = PgSource::<Job>::connect(config(&schema).poll_interval(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let queue = source.queue();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let poller = Poller::<Job>::builder()
        .source(source)
        .on_current_arbiter()
        .start(move |n: Job, _cx| {
            r.fetch_add(n as usize, SeqCst);
            async { Ok::<_, std::convert::Infallible>(()) }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Let the first (empty) fetch happen: from here on only a notification wakes the poller.
    bounded("the first fetch", async {
        while poller.stats().fetch_calls == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let mut tx = queue.pool().begin().await.unwrap_or_else(|e| panic!("{e}"));
    let gone = queue
        .enqueue_in(&mut tx, vec![NewTask::new(1000)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));

    let mut tx = queue.pool().begin().await.unwrap_or_else(|e| panic!("{e}"));
    let ids = queue
        .enqueue_in(&mut tx, vec![NewTask::new(1), NewTask::new(2)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids.len(), 2);
    // Uncommitted: no other connection (the poller's fetches included) sees the rows.
    let counts = poller
        .counts()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a durable source counts"));
    assert_eq!(counts.waiting() + counts.running, 0, "{counts:?}");
    assert_eq!(ran.load(SeqCst), 0, "not before the commit");
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    bounded("woken by NOTIFY", async {
        while ran.load(SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // A completed task's row stays (dead-row retention aside) and says so: `None` below means
    // the row does not exist, not that it was cleaned up.
    for &id in &ids {
        bounded("acked", async {
            loop {
                let status = poller.status(id).await.unwrap_or_else(|e| panic!("{e}"));
                if status.is_some_and(|s| matches!(s.state, TaskState::Completed { .. })) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    for id in gone {
        let status = poller.status(id).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.is_none(),
            "the rolled-back task never existed: {status:?}"
        );
    }
    assert_eq!(ran.load(SeqCst), 3, "tasks 1 and 2, once each");
    poller
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop_schema(&schema).await;
}

/// Tasks submitted by another process's queue (here: another pool) reach an idle poller
/// through NOTIFY, not the fallback poll, and tracked submits through the poller complete.
#[actix_rt::test]
async fn notifications_wake_an_idle_poller_promptly() {
    let schema = fresh_schema();
    let source = PgSource::<Job>::connect(config(&schema).poll_interval(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let other = PgSource::<Job>::connect(config(&schema))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .queue();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let poller = Poller::<Job>::builder()
        .source(source)
        .on_current_arbiter()
        .start(move |_n: Job, _cx| {
            r.fetch_add(1, SeqCst);
            async { Ok::<_, std::convert::Infallible>(()) }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    for round in 1..=20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = tokio::time::Instant::now();
        other
            .enqueue(vec![NewTask::new(round)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        bounded("woken", async {
            while ran.load(SeqCst) < round as usize {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "round {round}: {:?}",
            sent.elapsed()
        );
    }
    let receipt = poller
        .submit_tracked(7)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bounded("outcome", receipt.outcome()).await,
        Ok(FinalState::Completed)
    );
    poller
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop_schema(&schema).await;
}

/// A long schema and a long table name: their `NOTIFY` channel would pass PostgreSQL's 63 bytes,
/// which made every insert fail; the channel is shortened, and enqueues work (issue 12.6).
#[actix_rt::test]
async fn long_schema_and_table_names_work() {
    let mut schema = format!("{}_", fresh_schema());
    while schema.len() < 46 {
        schema.push('s');
    }
    let table = "t".repeat(45);
    let config = config(&schema)
        .table(&table)
        .poll_interval(Duration::from_secs(600));
    let mut source = PgSource::<Job>::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let queue = source.queue();
    use actix_poller::source::Source;
    queue
        .enqueue(vec![NewTask::new(7)])
        .await
        .unwrap_or_else(|e| panic!("enqueue: {e}"));
    let got = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.tasks.len(), 1);
    drop(source);
    drop_schema(&schema).await;
}

/// A pool of one: the `LISTEN` connection is its own, so it does not take the pool's only
/// connection and starve enqueues (issue 12.15).
#[actix_rt::test]
async fn a_pool_of_one_is_not_starved_by_listen() {
    let schema = fresh_schema();
    let config = config(&schema)
        .max_connections(1)
        .async_commit(false)
        .connect_timeout(Duration::from_secs(2));
    let mut source = bounded("connect", PgSource::<Job>::connect(config))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    bounded("enqueue", source.queue().enqueue(vec![NewTask::new(1)]))
        .await
        .unwrap_or_else(|e| panic!("enqueue: {e}"));
    use actix_poller::source::Source;
    let got = bounded("fetch", source.fetch(10))
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"));
    assert_eq!(got.tasks.len(), 1);
    drop(source);
    drop_schema(&schema).await;
}

/// Index and trigger names derived from a mixed-case table name are quoted: they keep its case
/// (issue 12.15).
#[actix_rt::test]
async fn index_names_keep_the_table_name_case() {
    let schema = fresh_schema();
    let source = PgSource::<Job>::connect(config(&schema).table("MixedCase"))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut names: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE schemaname = $1")
            .bind(&schema)
            .fetch_all(source.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    names.sort();
    for suffix in ["_dead", "_due", "_finished", "_lease_until", "_next"] {
        let name = format!("MixedCase{suffix}");
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    drop(source);
    drop_schema(&schema).await;
}

/// A process that only enqueues opens its queue with `PgQueue::connect`: a pool of its own with
/// the crate's settings, no migration; a poller elsewhere runs what it enqueues.
#[actix_rt::test]
async fn a_queue_opened_alone_enqueues_for_the_pollers() {
    use actix_poller::source::postgres::PgQueue;
    use actix_poller::source::Source;
    let schema = fresh_schema();
    let mut source = PgSource::<Job>::connect(config(&schema))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let queue = PgQueue::<Job>::connect(&config(&schema).max_connections(1))
        .await
        .unwrap_or_else(|e| panic!("queue: {e}"));
    let ids = queue
        .enqueue(vec![NewTask::new(7)])
        .await
        .unwrap_or_else(|e| panic!("enqueue: {e}"));
    let fetched = source
        .fetch(10)
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"));
    let got: Vec<TaskId> = fetched.tasks.iter().map(|task| task.id).collect();
    assert_eq!(got, ids);
    let missing = PgQueue::<Job>::connect(&config(&schema).table("bad name")).await;
    assert!(matches!(missing, Err(PgError::Config(_))), "{missing:?}");
    drop((source, queue));
    drop_schema(&schema).await;
}

/// `sslmode=require` works: the `postgres` feature builds sqlx with TLS (rustls), and the
/// connections are encrypted (issue 12.15). Needs a server with `ssl = on`.
#[actix_rt::test]
async fn sslmode_require_connects_over_tls() {
    let schema = fresh_schema();
    let url = pg_url();
    let url = format!(
        "{url}{}sslmode=require",
        if url.contains('?') { "&" } else { "?" }
    );
    let source = PgSource::<Job>::connect(PgConfig::new(url).schema(&schema))
        .await
        .unwrap_or_else(|e| panic!("connect with sslmode=require: {e}"));
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(source.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tls, "the connection is encrypted");
    drop(source);
    drop_schema(&schema).await;
}

/// The source's connections carry a statement and a lock timeout (issue 12.11): a statement that
/// would run for ever is cut by the server; the defaults are set; `None` leaves the server's.
#[actix_rt::test]
async fn statements_and_lock_waits_are_bounded_by_the_server() {
    use actix_poller::source::postgres::{DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
    let schema = fresh_schema();
    let source = PgSource::<Job>::connect(config(&schema))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let show = |name: &'static str| {
        let pool = source.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let secs = |d: Duration| format!("{}s", d.as_secs());
    assert_eq!(
        show("statement_timeout").await,
        secs(DEFAULT_STATEMENT_TIMEOUT)
    );
    assert_eq!(show("lock_timeout").await, secs(DEFAULT_LOCK_TIMEOUT));
    drop(source);

    let short = config(&schema)
        .statement_timeout(Some(Duration::from_millis(100)))
        .lock_timeout(None);
    let source = PgSource::<Job>::connect(short)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = bounded(
        "a cut statement",
        sqlx::query("SELECT pg_sleep(30)").execute(source.pool()),
    )
    .await
    .expect_err("the server cuts a statement past the timeout");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let plain = pg::pool().await;
    let lock = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW lock_timeout")
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(
        lock(source.pool().clone()).await,
        lock(plain.clone()).await,
        "None leaves the server's setting"
    );
    plain.close().await;
    drop(source);
    drop_schema(&schema).await;
}

/// A poller shut down closes the source's own connections (its bookkeeping pool, its `LISTEN`
/// connection) with PostgreSQL's goodbye, not a dropped socket, and so does a source dropped
/// unused: the server counts no session as abandoned (dropped, each was one, and a
/// "connection reset by peer" in the server's log: 47 lines for one run of the
/// `postgres_workers` example). In a database of its own, so that no other test's sessions
/// count; the caller closes the pools it enqueues through (`PgSource::pool`, `PgQueue::pool`),
/// as the module docs say.
#[actix_rt::test]
async fn a_shut_down_poller_says_goodbye_to_the_server() {
    let admin = pg::pool().await;
    let (db, own) = pg::own_database(&admin).await;
    let config = PgConfig::new(own).max_connections(4);
    // A source opened only for its queue and dropped (as an app's enqueue-only side may).
    let unused = PgSource::<Job>::connect(config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let queue = unused.queue();
    drop(unused);
    let source = PgSource::<Job>::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = source.pool().clone();
    let poller = Poller::<Job>::builder()
        .source(source)
        .workers(4)
        .start(|_n: Job, _cx| async { Ok::<_, std::convert::Infallible>(()) })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut receipts = Vec::new();
    for n in 0..20 {
        receipts.push(
            poller
                .submit_tracked(n)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    for receipt in receipts {
        assert_eq!(
            bounded("outcome", receipt.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
    queue
        .enqueue(vec![NewTask::new(99)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    poller
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pool.close().await;
    queue.pool().close().await;
    // Every session of the database has ended (bounded), then its statistics.
    pg::until_count(
        &admin,
        "the poller's sessions to end",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"),
        0,
    )
    .await;
    let (sessions, abandoned): (i64, i64) = sqlx::query_as(
        "SELECT sessions, sessions_abandoned FROM pg_stat_database WHERE datname = $1",
    )
    .bind(&db)
    .fetch_one(&admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = sqlx::raw_sql(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
    assert!(
        sessions >= 3,
        "the poller's sessions were counted: {sessions}"
    );
    assert_eq!(
        abandoned, 0,
        "of {sessions} sessions, {abandoned} abandoned"
    );
}

/// The database dropped under a running poller (`DROP DATABASE … WITH (FORCE)`: every
/// connection terminated, every reconnection refused): the shutdown still returns within its
/// grace plus `SHUTDOWN_SLACK`, as `Poller::shutdown` promises, although the source can
/// release nothing and its pools close on dead connections (each close waits at most 2 s);
/// it returns the source's error ("database … does not exist"). 2.3–2.5 s here.
#[actix_rt::test]
async fn a_shutdown_ends_when_the_database_is_gone() {
    let admin = pg::pool().await;
    let (db, own) = pg::own_database(&admin).await;
    let source = PgSource::<Job>::connect(PgConfig::new(own).max_connections(4))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = source.pool().clone();
    let started = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&started);
    let poller = Poller::<Job>::builder()
        .source(source)
        .workers(4)
        .start(move |_n: Job, _cx| {
            s.fetch_add(1, SeqCst);
            async { futures::future::pending::<Result<(), std::convert::Infallible>>().await }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..20 {
        poller.submit(n).await.unwrap_or_else(|e| panic!("{e}"));
    }
    // Four running (they never end), and tasks fetched that cannot start: leased, to release.
    bounded("four tasks running and some buffered", async {
        while started.load(SeqCst) < 4 || poller.stats().buffered == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    pool.close().await;
    sqlx::raw_sql(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    admin.close().await;
    let grace = Duration::from_millis(500);
    let began = tokio::time::Instant::now();
    let result = tokio::time::timeout(
        grace + actix_poller::SHUTDOWN_SLACK + Duration::from_secs(2),
        poller.shutdown(grace),
    )
    .await
    .unwrap_or_else(|_| panic!("the shutdown did not return"));
    let took = began.elapsed();
    assert!(
        took <= grace + actix_poller::SHUTDOWN_SLACK,
        "the shutdown took {took:?}"
    );
    // The source could release none of the buffered tasks: it says so.
    assert!(
        matches!(result, Err(actix_poller::ShutdownError::Source(_))),
        "the release failed, and the shutdown says so: {result:?}"
    );
}
