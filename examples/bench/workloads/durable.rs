#![cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_macros, unused_variables)
)]
//! durable-pg / durable-sqlite: N rows queued in a PostgreSQL table (or a SQLite file) before
//! the clock starts, K = 16 no-op workers with the builder's defaults; the clock runs from
//! `start` to the last task's end (fetch, run and ack of every row).
//!
//! The baseline is the same poller with the defaults of before the tuned prefetch
//! (`.prefetch(0)`: never fetch more than the free slots), interleaved run by run: the ratio is
//! what the tuning buys. Needs the `postgres` / `sqlite` feature; PostgreSQL reads its server
//! from `ACTIX_POLLER_PG_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`) and works in a
//! fresh schema per run, dropped afterwards.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use actix_poller::source::{NewTask, RetrySupport, Source};
use actix_poller::{Poller, TaskContext};

use crate::harness::{finish, in_system, run_detail, within, Clock, Report, Row, Run, Tally, Unit};

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    Postgres,
    Sqlite,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Postgres => "durable-pg",
            Store::Sqlite => "durable-sqlite",
        }
    }
}

/// Drains `n` queued rows from `source` through K no-op workers; `prefetch`: `None` = defaults.
async fn drain<S: Source<u64> + RetrySupport<u64>>(
    source: S,
    n: usize,
    k: usize,
    prefetch: Option<usize>,
) -> Result<Run, String> {
    let tally = Tally::new(n);
    let t = Arc::clone(&tally);
    let mut b = Poller::<u64>::builder().workers(k);
    if let Some(p) = prefetch {
        b = b.prefetch(p);
    }
    let clock = Clock::start();
    let poller = b
        .source(source)
        .start(move |_: u64, _cx: TaskContext| {
            t.record(Duration::ZERO);
            ready(Ok::<(), Infallible>(()))
        })
        .map_err(|e| format!("start: {e}"))?;
    tally.wait().await?;
    let run = clock.stop(n, Duration::ZERO);
    finish(&poller, Some(n)).await?;
    Ok(run)
}

/// Enqueues `n` rows through the source's queue API, in chunks.
macro_rules! preload {
    ($source:expr, $n:expr) => {{
        let queue = $source.queue();
        let all: Vec<u64> = (0..$n as u64).collect();
        for chunk in all.chunks(5_000) {
            within(
                "enqueue",
                queue.enqueue(chunk.iter().copied().map(NewTask::new).collect()),
            )
            .await?
            .map_err(|e| format!("enqueue: {e}"))?;
        }
    }};
}

/// One run on a fresh store.
async fn one(store: Store, n: usize, k: usize, prefetch: Option<usize>) -> Result<Run, String> {
    let tag = format!("{}_{:x}", std::process::id(), fastrand::u64(..));
    match store {
        #[cfg(feature = "postgres")]
        Store::Postgres => {
            use actix_poller::source::postgres::{PgConfig, PgSource};
            let url = std::env::var("ACTIX_POLLER_PG_URL")
                .map_err(|_| "durable-pg needs ACTIX_POLLER_PG_URL".to_string())?;
            let schema = format!("ap_bench_{tag}");
            let source = PgSource::<u64>::connect(
                PgConfig::new(&url)
                    .schema(&schema)
                    .completed_retention(None),
            )
            .await
            .map_err(|e| format!("connect: {e}"))?;
            preload!(source, n);
            let run = drain(source, n, k, prefetch).await;
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&pool)
                    .await;
                pool.close().await;
            }
            run
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite => {
            use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
            let path = std::env::temp_dir().join(format!("ap-bench-{tag}.db"));
            let source =
                SqliteSource::<u64>::connect(SqliteConfig::new(&path).completed_retention(None))
                    .await
                    .map_err(|e| format!("open: {e}"))?;
            preload!(source, n);
            let run = drain(source, n, k, prefetch).await;
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            run
        }
        #[allow(unreachable_patterns)]
        _ => Err(format!(
            "{} needs the bench built with `--features {}`",
            store.name(),
            if store == Store::Postgres {
                "postgres"
            } else {
                "sqlite"
            }
        )),
    }
}

/// durable-pg / durable-sqlite: tasks/s with the defaults, against `.prefetch(0)`, interleaved;
/// min / median / max over `repeat` runs.
pub(crate) fn durable(store: Store, n: usize, k: usize, repeat: usize) -> Result<Report, String> {
    let name = store.name();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        ours.push(in_system(one(store, n, k, None))?);
        base.push(in_system(one(store, n, k, Some(0)))?);
    }
    let spread = |runs: &[Run]| {
        let mut r: Vec<f64> = runs.iter().map(Run::rate).collect();
        r.sort_by(f64::total_cmp);
        let at = |i: usize| r.get(i).copied().unwrap_or(0.0);
        (at(0), at(r.len() / 2), at(r.len().saturating_sub(1)))
    };
    let pick = |mut runs: Vec<Run>| {
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let i = runs.len() / 2;
        runs.into_iter().nth(i).ok_or("no run")
    };
    let (omin, omed, omax) = spread(&ours);
    let (bmin, bmed, bmax) = spread(&base);
    let (o, b) = (pick(ours)?, pick(base)?);
    let (target, goal) = match store {
        Store::Postgres => ("≥ 50 k/s", 50_000.0),
        Store::Sqlite => ("≥ 100 k/s", 100_000.0),
    };
    let config = format!("K={k}, {n} queued, defaults");
    let mut report = Report::default();
    report.rows.push(Row {
        workload: name,
        config: config.clone(),
        metric: "tasks/s",
        unit: Unit::Rate,
        ours: o.rate(),
        base: Some(b.rate()),
        target,
        met: Some(omin >= goal),
    });
    report.details.push(format!(
        "{}; tasks/s min/median/max over {repeat} runs: {omin:.0} / {omed:.0} / {omax:.0}",
        run_detail(name, &config, k, &o)
    ));
    report.details.push(format!(
        "{}; tasks/s min/median/max over {repeat} runs: {bmin:.0} / {bmed:.0} / {bmax:.0}",
        run_detail(name, "baseline (.prefetch(0), the old default)", k, &b)
    ));
    Ok(report)
}
