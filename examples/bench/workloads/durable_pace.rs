#![cfg_attr(
    not(feature = "postgres"),
    allow(dead_code, unused_imports, unused_macros, unused_variables)
)]
//! durable-pg-pace: what PostgreSQL's queue-wide pace (`PgConfig::queue_pace`, issue 15) costs
//! when it does not bind. N rows under 64 keys queued before the clock starts, K = 16 no-op
//! workers with the builder's defaults; the clock runs from `start` to the last task's end.
//!
//! Ours: a queue-wide rate of 1 000 000 starts/s (bursts of 1 000) and 1 000 000 running per key
//! — far above what one poller reaches, so every claim pays the pace's lock and bookkeeping but
//! none waits. The baseline: the same rows and poller without queue pace, interleaved run by
//! run. Needs the `postgres` feature and `ACTIX_POLLER_PG_URL`; a fresh schema per run.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use actix_poller::{Poller, TaskContext};

use crate::harness::{
    finish, in_system, median, run_detail, spread, within, Clock, Report, Row, Run, Tally, Unit,
};

/// One run on a fresh schema; `paced`: with a queue-wide pace that does not bind.
#[cfg(feature = "postgres")]
async fn one(n: usize, k: usize, paced: bool) -> Result<Run, String> {
    use actix_poller::source::postgres::{PgConfig, PgSource, QueuePace};
    use actix_poller::source::NewTask;
    use actix_poller::RateLimit;

    let url = std::env::var("ACTIX_POLLER_PG_URL")
        .map_err(|_| "durable-pg-pace needs ACTIX_POLLER_PG_URL".to_string())?;
    let schema = format!("ap_bench_{}_{:x}", std::process::id(), fastrand::u64(..));
    let mut config = PgConfig::new(&url).schema(&schema);
    if paced {
        config = config.queue_pace(
            QueuePace::new()
                .rate_limit(RateLimit::new(1_000_000, Duration::from_secs(1), 1_000))
                .key_limit(1_000_000),
        );
    }
    let source = PgSource::<u64>::connect(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let queue = source.queue();
    let all: Vec<u64> = (0..n as u64).collect();
    for chunk in all.chunks(5_000) {
        let tasks = chunk
            .iter()
            .map(|&i| {
                let mut t = NewTask::new(i);
                t.key = Some(format!("key-{}", i % 64).into());
                t
            })
            .collect();
        within("enqueue", queue.enqueue(tasks))
            .await?
            .map_err(|e| format!("enqueue: {e}"))?;
    }
    let tally = Tally::new(n);
    let t = Arc::clone(&tally);
    let clock = Clock::start();
    let poller = Poller::<u64>::builder()
        .workers(k)
        .source(source)
        .start(move |_: u64, _cx: TaskContext| {
            t.record(Duration::ZERO);
            ready(Ok::<(), Infallible>(()))
        })
        .map_err(|e| format!("start: {e}"))?;
    tally.wait().await?;
    let run = clock.stop(n, Duration::ZERO);
    finish(&poller, Some(n)).await?;
    if let Ok(pool) = sqlx::PgPool::connect(&url).await {
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
    Ok(run)
}

#[cfg(not(feature = "postgres"))]
async fn one(_: usize, _: usize, _: bool) -> Result<Run, String> {
    Err("durable-pg-pace needs the bench built with `--features postgres`".into())
}

/// durable-pg-pace: tasks/s with a queue-wide pace that does not bind, against none,
/// interleaved; min / median / max over `repeat` runs.
pub(crate) fn durable_pace(n: usize, k: usize, repeat: usize) -> Result<Report, String> {
    let name = "durable-pg-pace";
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        ours.push(in_system(one(n, k, true))?);
        base.push(in_system(one(n, k, false))?);
    }
    let (omin, omed, omax) = spread(&ours);
    let (bmin, bmed, bmax) = spread(&base);
    let (o, b) = (median(ours).ok_or("no run")?, median(base).ok_or("no run")?);
    let config = format!("K={k}, {n} queued under 64 keys, queue pace not binding");
    let mut report = Report::default();
    report.rows.push(Row {
        workload: name,
        config: config.clone(),
        metric: "tasks/s",
        unit: Unit::Rate,
        ours: o.rate(),
        base: Some(b.rate()),
        target: "measured (issue 15)",
        met: None,
    });
    report.details.push(format!(
        "{}; tasks/s min/median/max over {repeat} runs: {omin:.0} / {omed:.0} / {omax:.0}",
        run_detail(name, &config, k, &o)
    ));
    report.details.push(format!(
        "{}; tasks/s min/median/max over {repeat} runs: {bmin:.0} / {bmed:.0} / {bmax:.0}",
        run_detail(name, "baseline (no queue pace)", k, &b)
    ));
    Ok(report)
}
