//! A durable queue in SQLite: stop it half-way, run it again, and it finishes the rest.
//!
//! ```text
//! cargo run --example sqlite --features sqlite -- --stop-after 60   # does 60 of 200, stops
//! cargo run --example sqlite --features sqlite                      # finishes the other 140
//! cargo run --example sqlite --features sqlite -- --reset           # starts over
//! ```
//!
//! Ctrl-C stops it the same way: the poller drains, tasks it fetched but never started go back
//! to the queue at once, their attempt not counted. Killing it (`kill -9`) works too: the tasks
//! it had leased run again once their lease (5 s here) expires, and an expiry costs no attempt.
//! That is "at least once" delivery, so the handler is idempotent: it records its result with
//! `INSERT OR IGNORE`, keyed by the task.
//!
//! Every run ends with exact counts: thumbnails made, tasks left, tasks dead, and tasks lost
//! (none of those); it exits with an error when a task is lost or the counts do not add up.
//!
//! The database file is `actix-poller-example.db` in the system's temporary directory, or the
//! path in `ACTIX_POLLER_SQLITE`.

use std::path::PathBuf;
use std::time::Duration;

use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
use actix_poller::source::NewTask;
use actix_poller::{Poller, RetryPolicy, TaskContext, TaskOptions};
use serde::{Deserialize, Serialize};

/// One unit of work: make a thumbnail of an image.
#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    image: String,
    width: u32,
}

const TASKS: u32 = 200;

/// Attempts per task: the poller's retry policy, and what each task is enqueued with.
const ATTEMPTS: u32 = 3;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "actix_poller=info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let stop_after: Option<u64> = args
        .iter()
        .position(|a| a == "--stop-after")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let path = std::env::var_os("ACTIX_POLLER_SQLITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("actix-poller-example.db"));
    if args.iter().any(|a| a == "--reset") {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    let source =
        SqliteSource::<Thumbnail>::connect(SqliteConfig::new(&path).lease(Duration::from_secs(5)))
            .await?;
    let pool = source.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS thumbnails (image TEXT PRIMARY KEY, width INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // First run: fill the queue. Later runs find the tasks left over.
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM actix_poller_tasks")
        .fetch_one(&pool)
        .await?;
    if total == 0 {
        let ids = source
            .queue()
            .enqueue(
                (0..TASKS)
                    .map(|i| {
                        let job = Thumbnail {
                            image: format!("photo-{i:03}.jpg"),
                            width: 320,
                        };
                        NewTask::with_options(job, TaskOptions::new(), ATTEMPTS)
                    })
                    .collect(),
            )
            .await?;
        println!("enqueued {} tasks into {}", ids.len(), path.display());
    }
    let left = remaining(&pool).await?;
    println!("{left} tasks to do");

    let db = pool.clone();
    let poller = Poller::builder()
        .source(source)
        .workers(8)
        .retry(RetryPolicy::attempts(ATTEMPTS))
        .start(move |job: Thumbnail, _cx: TaskContext| {
            let db = db.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await; // the "work"
                                                                     // Idempotent: a second run of the same task changes nothing.
                sqlx::query("INSERT OR IGNORE INTO thumbnails (image, width) VALUES (?1, ?2)")
                    .bind(&job.image)
                    .bind(job.width)
                    .execute(&db)
                    .await?;
                Ok::<_, sqlx::Error>(())
            }
        })?;

    let ctrl_c = actix_rt::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut ctrl_c => {
                println!("interrupted; stopping, run again to finish the rest");
                break;
            }
        }
        let done = poller.stats().completed;
        if stop_after.is_some_and(|n| done >= n) {
            println!("stopping after {done} tasks; run again to finish the rest");
            break;
        }
        if remaining(&pool).await? == 0 {
            println!("all done");
            break;
        }
    }
    poller.shutdown(Duration::from_secs(10)).await?;
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
    let made = count("SELECT count(*) FROM thumbnails").await?;
    let left = remaining(&pool).await?;
    let dead = count("SELECT count(*) FROM actix_poller_tasks WHERE state = 'dead'").await?;
    let tasks = count("SELECT count(*) FROM actix_poller_tasks").await?;
    // A task finished without its thumbnail, or a thumbnail without its task.
    let lost = count(
        "SELECT count(*) FROM actix_poller_tasks t
         WHERE t.state NOT IN ('queued', 'running', 'dead')
           AND NOT EXISTS (SELECT 1 FROM thumbnails WHERE image = t.payload ->> 'image')",
    )
    .await?;
    println!("{made} thumbnails made, {left} tasks left, {dead} dead, {lost} lost");
    // Each image is made, or its task is left or dead; none is lost. (An image made whose task
    // is still left, its ack lost, is counted in both: at least once.)
    if lost > 0 || tasks != i64::from(TASKS) || made + left + dead < tasks {
        eprintln!("the counts do not add up: {tasks} tasks in the table, {TASKS} enqueued");
        std::process::exit(1);
    }
    Ok(())
}

/// Tasks not finished yet (queued, delayed or leased).
async fn remaining(pool: &sqlx::SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM actix_poller_tasks WHERE state IN ('queued', 'running')",
    )
    .fetch_one(pool)
    .await
}
