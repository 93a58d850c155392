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
#[cfg(feature = "postgres")]
use futures::future::FutureExt;
use futures::future::LocalBoxFuture;

use crate::harness::{
    finish, in_system, median, run_detail, spread, within, Clock, Report, Row, Run, Tally, Unit,
};

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

/// The CPU time (ns) the PostgreSQL backends serving `app` used so far, read from
/// `/proc/PID/schedstat` (the server runs on this machine; nanoseconds, where `stat`'s clock
/// ticks are 10 ms); 0 if unknown. A backend that has exited is not counted: read it while the
/// pools are open.
#[cfg(feature = "postgres")]
pub(crate) async fn backend_cpu_ns(monitor: &sqlx::PgPool, app: &str) -> u64 {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(app)
            .fetch_all(monitor)
            .await
            .unwrap_or_default();
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Reads the CPU time (ns) a store's server used so far (PostgreSQL's backends).
type Probe<'a> = Box<dyn Fn() -> LocalBoxFuture<'a, u64> + 'a>;

/// Drains `n` queued rows from `source` through K no-op workers; `prefetch`: `None` = defaults.
/// With `backends`, also the server's CPU per task (µs).
async fn drain<S: Source<u64> + RetrySupport<u64>>(
    source: S,
    n: usize,
    k: usize,
    prefetch: Option<usize>,
    server: Option<Probe<'_>>,
) -> Result<(Run, Option<f64>, u64), String> {
    let tally = Tally::new(n);
    let t = Arc::clone(&tally);
    let mut b = Poller::<u64>::builder().workers(k);
    if let Some(p) = prefetch {
        b = b.prefetch(p);
    }
    let before = match &server {
        Some(ticks) => ticks().await,
        None => 0,
    };
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
    let fetches = poller.stats().fetch_calls;
    let server = match &server {
        // ns, in µs per task; the backends live as long as the pools, past here.
        Some(ticks) => Some(ticks().await.saturating_sub(before) as f64 * 1e-3 / n.max(1) as f64),
        None => None,
    };
    finish(&poller, Some(n)).await?;
    Ok((run, server, fetches))
}

/// Enqueues `n` rows through the source's queue API, in chunks (a macro: it serves both stores'
/// queue types).
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
// Used by durable-pg-scale, which needs `postgres`.
#[cfg_attr(not(feature = "postgres"), allow(unused_imports))]
pub(crate) use preload;

/// One run on a fresh store.
async fn one(
    store: Store,
    n: usize,
    k: usize,
    prefetch: Option<usize>,
) -> Result<(Run, Option<f64>, u64), String> {
    let tag = format!("{}_{:x}", std::process::id(), fastrand::u64(..));
    match store {
        #[cfg(feature = "postgres")]
        Store::Postgres => {
            use actix_poller::source::postgres::{PgConfig, PgSource};
            let url = std::env::var("ACTIX_POLLER_PG_URL")
                .map_err(|_| "durable-pg needs ACTIX_POLLER_PG_URL".to_string())?;
            let schema = format!("ap_bench_{tag}");
            let app = format!("ap-bench-{tag}");
            let monitor = sqlx::PgPool::connect(&url)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let source = PgSource::<u64>::connect(
                PgConfig::new(&url).schema(&schema).application_name(&app),
            )
            .await
            .map_err(|e| format!("connect: {e}"))?;
            preload!(source, n);
            let probe: Probe<'_> = Box::new(|| backend_cpu_ns(&monitor, &app).boxed_local());
            let run = drain(source, n, k, prefetch, Some(probe)).await;
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&monitor)
                .await;
            monitor.close().await;
            run
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite => {
            use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
            let path = std::env::temp_dir().join(format!("ap-bench-{tag}.db"));
            let source = SqliteSource::<u64>::connect(SqliteConfig::new(&path))
                .await
                .map_err(|e| format!("open: {e}"))?;
            preload!(source, n);
            let run = drain(source, n, k, prefetch, None).await;
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
    let (mut server, mut server_base) = (Vec::new(), Vec::new());
    let (mut fetches, mut fetches_base) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let (run, cpu, f) = in_system(one(store, n, k, None))?;
        ours.push(run);
        server.extend(cpu);
        fetches.push(f);
        let (run, cpu, f) = in_system(one(store, n, k, Some(0)))?;
        base.push(run);
        server_base.extend(cpu);
        fetches_base.push(f);
    }
    // CPU per task, µs: the poller's process, and (PostgreSQL) the server's backends.
    let cpu = |runs: &[Run], server: &mut Vec<f64>, fetches: &mut Vec<u64>| {
        let mut client: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.cpu.map(|c| c.as_secs_f64() * 1e6 / r.tasks.max(1) as f64))
            .collect();
        client.sort_by(f64::total_cmp);
        server.sort_by(f64::total_cmp);
        let mid = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        let mut s = format!("; CPU per task (median): process {:.1} µs", mid(&client));
        if !server.is_empty() {
            s += &format!(", server backends {:.1} µs", mid(server));
        }
        fetches.sort_unstable();
        if let Some(f) = fetches.get(fetches.len() / 2) {
            s += &format!(
                "; {f} fetch calls (median), {:.0} tasks per call",
                n as f64 / (*f).max(1) as f64
            );
        }
        s
    };
    let cpu_ours = cpu(&ours, &mut server, &mut fetches);
    let cpu_base = cpu(&base, &mut server_base, &mut fetches_base);
    let (omin, omed, omax) = spread(&ours);
    let (bmin, bmed, bmax) = spread(&base);
    let (o, b) = (median(ours).ok_or("no run")?, median(base).ok_or("no run")?);
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
        "{}; tasks/s min/median/max over {repeat} runs: {omin:.0} / {omed:.0} / {omax:.0}{cpu_ours}",
        run_detail(name, &config, k, &o)
    ));
    report.details.push(format!(
        "{}; tasks/s min/median/max over {repeat} runs: {bmin:.0} / {bmed:.0} / {bmax:.0}{cpu_base}",
        run_detail(name, "baseline (.prefetch(0), the old default)", k, &b)
    ));
    Ok(report)
}
