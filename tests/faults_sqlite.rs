//! Faults on the SQLite source: a worker process killed with SIGKILL at random moments, again
//! and again, and restarted. At the end every task has completed, none is lost, and the
//! duplicates (executions recorded in a table) are no more than the tasks in flight at the
//! kills.
#![cfg(feature = "sqlite")]

mod faults;

use std::path::PathBuf;
use std::time::Duration;

use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
use actix_poller::source::NewTask;
use actix_poller::{Poller, TaskContext, TaskOptions};
use faults::{kill_9, random_ms, spawn_child, wait_exit, CHILD, LEASE, TASKS, WORK, WORKERS};

const DB: &str = "ACTIX_POLLER_FAULT_DB";

fn config(path: &std::path::Path) -> SqliteConfig {
    SqliteConfig::new(path)
        .lease(LEASE)
        .poll_interval(Duration::from_millis(100))
}

/// The worker process: runs a poller on the database until nothing is left.
#[test]
fn fault_child() {
    let Some(path) = std::env::var_os(DB) else {
        return; // an ordinary test run: nothing to do
    };
    assert!(std::env::var_os(CHILD).is_some());
    actix_rt::System::new().block_on(async move {
        let path = PathBuf::from(path);
        let source = SqliteSource::<u32>::connect(config(&path))
            .await
            .unwrap_or_else(|e| panic!("child connect: {e}"));
        let pool = source.pool().clone();
        let db = pool.clone();
        let poller = Poller::builder()
            .source(source)
            .workers(WORKERS)
            .start(move |_n: u32, cx: TaskContext| {
                let db = db.clone();
                async move {
                    tokio::time::sleep(WORK).await;
                    sqlx::query("INSERT INTO executions (task_id, attempt) VALUES (?1, ?2)")
                        .bind(cx.id().0 as i64)
                        .bind(cx.attempt())
                        .execute(&db)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                }
            })
            .unwrap_or_else(|e| panic!("child start: {e}"));
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM actix_poller_tasks WHERE state IN ('queued', 'running')",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(1);
            if left == 0 {
                break;
            }
        }
        let _ = poller.shutdown(Duration::from_secs(5)).await;
    });
}

/// 25 kills at random moments, then a last run to the end.
#[actix_rt::test]
async fn kill_9_at_random_moments_loses_nothing() {
    let path = std::env::temp_dir().join(format!("ap-faults-{:x}.db", fastrand::u64(..)));
    let source = SqliteSource::<u32>::connect(config(&path))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = source.pool().clone();
    sqlx::raw_sql("CREATE TABLE executions (task_id INTEGER NOT NULL, attempt INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let many = TaskOptions::new().max_attempts(100);
    source
        .queue()
        .enqueue(
            (0..TASKS)
                .map(|n| NewTask::with_options(n, many.clone(), 1))
                .collect(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(source);

    let env = [(DB, path.to_string_lossy().into_owned())];
    // What a dead worker held: rows leased (by it: one worker at a time) and never acknowledged.
    let mut held = std::collections::HashSet::new();
    let leases = || async {
        sqlx::query_scalar::<_, i64>("SELECT id FROM actix_poller_tasks WHERE state = 'running'")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut kills = 0;
    let started = std::time::Instant::now();
    for _ in 0..25 {
        let mut child = spawn_child(&env);
        tokio::time::sleep(random_ms(30, 300)).await;
        if !kill_9(&mut child) {
            break; // the queue is done
        }
        kills += 1;
        held.extend(leases().await);
    }
    let mut last = spawn_child(&env);
    assert!(
        wait_exit(&mut last, Duration::from_secs(60)).await,
        "the last run finishes the rest"
    );

    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM actix_poller_tasks WHERE state = 'completed'")
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let executions: Vec<i64> = sqlx::query_scalar("SELECT task_id FROM executions")
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let runs = executions.len() as i64;
    let distinct = executions
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as i64;
    let duplicates = runs - distinct;
    let in_flight = held.len();
    let twice = faults::duplicated_within(&executions, &held);
    println!(
        "sqlite kill -9: {kills} kills, {TASKS} tasks, completed {completed}, executed {distinct} \
         distinct in {runs} runs, duplicates {duplicates}, in flight at the kills {in_flight}, \
         {:.1?}",
        started.elapsed()
    );
    assert_eq!(completed, TASKS as i64, "every task completed");
    assert_eq!(distinct, TASKS as i64, "none lost");
    assert!(twice.len() <= in_flight, "run twice only if held at a kill");
    assert!(in_flight > 0, "the kills hit running work");
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
