//! The SQLite source runs the conformance suite (`tests/conformance/mod.rs`), each test on its
//! own database file, plus what only SQLite has.
#![cfg(feature = "sqlite")]

#[macro_use]
mod conformance;

use std::path::PathBuf;
use std::time::Duration;

use actix_poller::source::sqlite::{SqliteConfig, SqliteError, SqliteSource};
use actix_poller::TaskId;
use conformance::{Harness, Job, Row};
use futures::future::LocalBoxFuture;
use sqlx::Connection;

/// A fresh database file per test, removed when the property passed.
struct Sqlite;

fn temp_db() -> PathBuf {
    std::env::temp_dir().join(format!(
        "actix-poller-test-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ))
}

fn config(path: &std::path::Path, lease: Duration) -> SqliteConfig {
    SqliteConfig::new(path)
        .lease(lease)
        .poll_interval(Duration::from_millis(100))
}

impl Harness for Sqlite {
    type Source = SqliteSource<Job>;
    type Store = PathBuf;

    fn store(&self) -> LocalBoxFuture<'static, PathBuf> {
        Box::pin(async { temp_db() })
    }

    fn source(&self, store: &PathBuf, lease: Duration) -> LocalBoxFuture<'static, Self::Source> {
        let config = config(store, lease);
        Box::pin(async move {
            SqliteSource::connect(config)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"))
        })
    }

    fn durable(&self) -> bool {
        true
    }

    fn insert_raw(&self, store: &PathBuf, json: &str) -> LocalBoxFuture<'static, ()> {
        let (path, json) = (store.clone(), json.to_owned());
        Box::pin(async move {
            let s = SqliteSource::<Job>::connect(SqliteConfig::new(&path))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            sqlx::query(
                "INSERT INTO actix_poller_tasks (payload, run_at, enqueued_at) VALUES (?1, 0, 0)",
            )
            .bind(json)
            .execute(s.pool())
            .await
            .unwrap_or_else(|e| panic!("raw insert: {e}"));
        })
    }

    fn row(&self, store: &PathBuf, id: TaskId) -> LocalBoxFuture<'static, Row> {
        let path = store.clone();
        Box::pin(async move {
            let s = SqliteSource::<Job>::connect(SqliteConfig::new(&path))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            sqlx::query_as(
                "SELECT state, attempt, last_error FROM actix_poller_tasks WHERE id = ?1",
            )
            .bind(id.0 as i64)
            .fetch_one(s.pool())
            .await
            .unwrap_or_else(|e| panic!("row {id:?}: {e}"))
        })
    }

    fn refuse_completing(&self, store: &PathBuf, id: TaskId) -> LocalBoxFuture<'static, ()> {
        let path = store.clone();
        Box::pin(async move {
            let s = SqliteSource::<Job>::connect(SqliteConfig::new(&path))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            // SQLITE_CONSTRAINT_TRIGGER: a data error to the source.
            sqlx::query(&format!(
                "CREATE TRIGGER refuse_completing_{n} BEFORE UPDATE OF state \
                 ON actix_poller_tasks WHEN OLD.id = {n} AND NEW.state = 'completed' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
                n = id.0
            ))
            .execute(s.pool())
            .await
            .unwrap_or_else(|e| panic!("trigger: {e}"));
        })
    }

    fn cleanup(&self, store: &PathBuf) -> LocalBoxFuture<'static, ()> {
        let path = store.clone();
        Box::pin(async move {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        })
    }
}

conformance_tests!(Sqlite);
durable_conformance_tests!(Sqlite);

/// A database that cannot be opened is a clear error at start, naming the file.
#[actix_rt::test]
async fn unopenable_database_is_a_clear_error() {
    let path = PathBuf::from("/nonexistent-dir/for/sure/tasks.db");
    let err = SqliteSource::<Job>::connect(SqliteConfig::new(&path))
        .await
        .expect_err("no such directory");
    assert!(matches!(err, SqliteError::Open { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/nonexistent-dir/for/sure/tasks.db"),
        "{err}"
    );
    let err = SqliteSource::<Job>::connect(SqliteConfig::new(temp_db()).table("bad name"))
        .await
        .expect_err("bad table name");
    assert!(matches!(err, SqliteError::Config(_)), "{err:?}");
}

/// Migrations are versioned: a second start applies nothing; they can be turned off.
#[actix_rt::test]
async fn migrations_apply_once() {
    let path = temp_db();
    let a = SqliteSource::<Job>::connect(SqliteConfig::new(&path).table("jobs"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = SqliteSource::<Job>::connect(SqliteConfig::new(&path).table("jobs"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM jobs_migrations")
        .fetch_all(b.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    drop((a, b));
    let other = temp_db();
    let err = SqliteSource::<Job>::connect(SqliteConfig::new(&other).migrate(false))
        .await
        .expect_err("no table and no migrations: the start-up reclaim fails");
    assert!(err.to_string().contains("no such table"), "{err}");
    Sqlite.cleanup(&path).await;
    Sqlite.cleanup(&other).await;
}

/// Dead tasks are kept for `dead_retention`, then the heartbeat prunes them (issue 12.15).
#[actix_rt::test]
async fn dead_tasks_are_pruned_after_their_retention() {
    use actix_poller::source::{NewTask, Source};
    use actix_poller::{Ack, Disposition};
    let path = temp_db();
    let config = SqliteConfig::new(&path).dead_retention(Some(Duration::from_millis(1)));
    let mut s = SqliteSource::<Job>::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.enqueue(vec![NewTask::new(1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let task = s.fetch(1).await.unwrap_or_else(|e| panic!("{e}")).tasks;
    let dead = Disposition::Dead { error: "no".into() };
    let ack = Ack {
        id: task[0].id,
        attempt: task[0].attempt,
        disposition: dead,
    };
    s.ack(vec![ack]).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.dead_tasks(10).await.map(|d| d.len()).ok(), Some(1));
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.heartbeat().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.dead_tasks(10).await.map(|d| d.len()).ok(),
        Some(0),
        "pruned"
    );
    drop(s);
    Sqlite.cleanup(&path).await;
}

/// An ack that cannot be written at shutdown (the database is locked by another process) is
/// given up after its last try; its lease then expires, and the task runs again, its attempt
/// not counted: at least once, nothing lost (issue 16).
#[actix_rt::test]
async fn an_ack_given_up_at_shutdown_runs_the_task_again() {
    use actix_poller::source::{NewTask, Source};
    use actix_poller::Poller;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let path = temp_db();
    let lease = Duration::from_millis(300);
    let cfg = || config(&path, lease).busy_timeout(Duration::from_millis(20));
    let source = SqliteSource::<Job>::connect(cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = source
        .queue()
        .enqueue(vec![NewTask::new(7)])
        .await
        .unwrap_or_else(|e| panic!("{e}"))[0];
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let poller = Poller::<Job>::builder()
        .source(source)
        .workers(1)
        .on_current_arbiter()
        .start(move |_n: Job, _cx| {
            r.fetch_add(1, SeqCst);
            let mut open = open_rx.clone();
            async move {
                let _ = open.wait_for(|o| *o).await;
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    conformance::bounded("the task starts", async {
        while runs.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Another process locks the database: the ack (and the heartbeat) cannot be written.
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = open_tx.send(true);
    conformance::bounded("shutdown", poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Its lease expires; another poller takes it back and runs it again.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert_ne!(
        Sqlite.row(&path, id).await.0,
        "completed",
        "the ack was given up"
    );
    let mut b = SqliteSource::<Job>::connect(cfg())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    b.heartbeat().await.unwrap_or_else(|e| panic!("{e}"));
    let again = b.fetch(1).await.unwrap_or_else(|e| panic!("{e}")).tasks;
    assert_eq!(again.len(), 1, "the task runs again");
    assert_eq!(
        (again[0].id, again[0].attempt),
        (id, 1),
        "the expiry cost no attempt"
    );
    drop(b);
    Sqlite.cleanup(&path).await;
}

/// A task enqueued through the queue without attempts gets the source's default (above one, so
/// a transient failure does not make it dead), configurable; explicit attempts win (issue 12.2).
#[actix_rt::test]
async fn tasks_enqueued_without_attempts_get_the_source_default() {
    use actix_poller::source::durable::DEFAULT_ATTEMPTS;
    use actix_poller::source::{NewTask, Source};
    use actix_poller::TaskOptions;
    const { assert!(DEFAULT_ATTEMPTS > 1) };
    for (configured, want) in [(None, DEFAULT_ATTEMPTS), (Some(2), 2)] {
        let path = temp_db();
        let mut config = SqliteConfig::new(&path);
        if let Some(n) = configured {
            config = config.default_attempts(n);
        }
        let mut s = SqliteSource::<Job>::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let explicit = NewTask::with_options(2, TaskOptions::new().max_attempts(7), 1);
        s.queue()
            .enqueue(vec![NewTask::new(1), explicit])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = s.fetch(2).await.unwrap_or_else(|e| panic!("{e}")).tasks;
        let attempts: Vec<_> = got.iter().map(|t| (t.payload, t.max_attempts)).collect();
        assert_eq!(attempts, vec![(1, want), (2, 7)]);
        drop(s);
        Sqlite.cleanup(&path).await;
    }
}

/// A durable source cannot say `queued` without asking the store: the Fetcher counts it 5 s
/// after start and every few seconds, so `Stats::queued` is known (it stayed `None` before).
#[actix_rt::test]
async fn stats_queued_is_known_for_a_durable_source() {
    let path = temp_db();
    let source = SqliteSource::<Job>::connect(SqliteConfig::new(&path))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let poller = actix_poller::Poller::<Job>::builder()
        .source(source)
        .workers(1)
        .on_current_arbiter()
        .start(|_job: Job, _cx| async { Ok::<_, std::io::Error>(()) })
        .unwrap_or_else(|e| panic!("{e}"));
    // The first count is 5 s after the start: wait for its answer (bounded).
    let known = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(q) = poller.stats().queued {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("Stats::queued still None after 20 s"));
    assert_eq!(known, 0);
    poller
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&path);
}
