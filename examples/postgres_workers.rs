//! Several instances of an application sharing one PostgreSQL queue.
//!
//! ```text
//! export ACTIX_POLLER_PG_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run --example postgres_workers --features postgres            # 3 workers, 3 000 tasks
//! cargo run --example postgres_workers --features postgres -- 5 10000 # 5 workers, 10 000 tasks
//! ```
//!
//! The first process is the coordinator: it creates the queue (schema `actix_poller_example`),
//! starts the workers (this same program, with `worker NAME`), enqueues the tasks in batches
//! while they run, and reports who did what. Each worker is an ordinary poller on a
//! [`PgSource`]: they fetch with `FOR UPDATE SKIP LOCKED`, so no two run the same task, and they
//! are woken by `LISTEN/NOTIFY` when tasks arrive. Each execution is recorded in a table, so the
//! report can show that no task ran twice (none would unless a worker died mid-task: delivery is
//! at least once).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use actix_poller::source::postgres::{PgConfig, PgSource};
use actix_poller::source::NewTask;
use actix_poller::{Poller, TaskContext};

const SCHEMA: &str = "actix_poller_example";

fn url() -> String {
    std::env::var("ACTIX_POLLER_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn config() -> PgConfig {
    PgConfig::new(url())
        .schema(SCHEMA)
        .lease(Duration::from_secs(10))
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "actix_poller=warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        let name = args.get(1).cloned().unwrap_or_else(|| "worker".into());
        return worker(name).await;
    }
    let workers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let tasks: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3_000);
    coordinator(workers, tasks).await
}

async fn coordinator(workers: usize, tasks: u32) -> Result<(), Box<dyn std::error::Error>> {
    // A clean queue for the demonstration.
    let admin = sqlx::PgPool::connect(&url()).await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&admin)
        .await?;
    let source = PgSource::<u32>::connect(config()).await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE {SCHEMA}.executions (task_id BIGINT NOT NULL, worker TEXT NOT NULL);
         CREATE TABLE {SCHEMA}.control (enqueuing_done BOOLEAN NOT NULL);
         INSERT INTO {SCHEMA}.control VALUES (false);"
    ))
    .execute(&admin)
    .await?;
    let queue = source.queue();
    drop(source);

    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = (0..workers)
        .map(|i| {
            Command::new(&exe)
                .args(["worker", &format!("worker-{i}")])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    println!("started {workers} workers; enqueuing {tasks} tasks");

    let start = Instant::now();
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(250) {
        queue
            .enqueue(chunk.iter().copied().map(NewTask::new).collect())
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query(&format!(
        "UPDATE {SCHEMA}.control SET enqueuing_done = true"
    ))
    .execute(&admin)
    .await?;
    let mut failed_workers = 0;
    for (i, child) in children.iter_mut().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            eprintln!("WRONG RESULT: worker-{i} exited with {status}");
            failed_workers += 1;
        }
    }
    println!("all workers finished in {:.2?}", start.elapsed());

    let per_worker: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT worker, count(*) FROM {SCHEMA}.executions GROUP BY worker ORDER BY worker"
    ))
    .fetch_all(&admin)
    .await?;
    for (worker, n) in &per_worker {
        println!("  {worker}: {n} tasks");
    }
    let (distinct, runs): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(DISTINCT task_id), count(*) FROM {SCHEMA}.executions"
    ))
    .fetch_one(&admin)
    .await?;
    println!(
        "{distinct} distinct tasks ran, {runs} executions (duplicates: {})",
        runs - distinct
    );
    // The example checks its own result: every worker exited cleanly, every enqueued task ran,
    // and none ran twice (no worker was killed, so no lease expired).
    let enqueued = i64::from(tasks);
    if failed_workers > 0 || distinct != enqueued || runs != distinct {
        eprintln!(
            "WRONG RESULT: {failed_workers} workers failed; {distinct} distinct of {enqueued} \
             enqueued; {} duplicates",
            runs - distinct
        );
        std::process::exit(1);
    }
    // Closed, the pools say goodbye to the server; dropped at exit, each connection would be a
    // "connection reset by peer" in its log.
    queue.pool().close().await;
    admin.close().await;
    Ok(())
}

async fn worker(name: String) -> Result<(), Box<dyn std::error::Error>> {
    let source = PgSource::<u32>::connect(config().application_name(name.clone())).await?;
    let pool = source.pool().clone();
    let db = pool.clone();
    let me = name.clone();
    let poller =
        Poller::builder()
            .source(source)
            .workers(16)
            .start(move |_n: u32, cx: TaskContext| {
                let (db, me) = (db.clone(), me.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await; // the "work"
                    sqlx::query(&format!(
                        "INSERT INTO {SCHEMA}.executions (task_id, worker) VALUES ($1, $2)"
                    ))
                    .bind(cx.id().0 as i64)
                    .bind(&me)
                    .execute(&db)
                    .await?;
                    Ok::<_, sqlx::Error>(())
                }
            })?;
    let db = sqlx::PgPool::connect(&url()).await?;
    // Done when the coordinator has enqueued everything and nothing is left.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (done, left): (bool, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT enqueuing_done FROM {SCHEMA}.control),
                    (SELECT count(*) FROM {SCHEMA}.actix_poller_tasks
                     WHERE state IN ('queued', 'running'))"
        ))
        .fetch_one(&db)
        .await?;
        if done && left == 0 {
            break;
        }
    }
    poller.shutdown(Duration::from_secs(10)).await?;
    // The shutdown closed the poller's own connections; the source's pool (the handler's
    // too) and this one are the caller's to close.
    pool.close().await;
    db.close().await;
    Ok(())
}
