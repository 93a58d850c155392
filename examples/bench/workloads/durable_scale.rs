#![cfg_attr(
    not(feature = "postgres"),
    allow(dead_code, unused_imports, unused_macros, unused_variables)
)]
//! durable-pg-scale: issue 14's two scale targets for PostgreSQL, builder defaults, K = 16.
//!
//! * **depth**: the same 20 000 tasks drained (clock from `start` to the 20 000th task's end)
//!   from a queue of 20 000 rows (the baseline) and from a queue of 1 000 000 rows (ours), each
//!   on a fresh table, interleaved run by run (the order alternates). Target: ours ≥ 0.9 × the
//!   baseline in every run.
//! * **processes**: N rows drained by one process (the baseline) and by three processes sharing
//!   the queue (ours), each process an ordinary poller (this program re-executed, see
//!   [`drain_child`]). The clock runs from the moment every process is connected and told to
//!   go to the last task's end in any of them. Afterwards: every row completed at its first
//!   attempt and the handler calls of all processes add up to N, i.e. no task ran twice.
//!   Target: three processes ≥ 1 × one, 0 duplicates.
//!
//! Needs the `postgres` feature and `ACTIX_POLLER_PG_URL`; each run works in a fresh schema,
//! dropped afterwards.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::source::NewTask;
use actix_poller::{Poller, TaskContext};

use crate::harness::{finish, in_system, within, Clock, Report, Row, Unit};

/// The environment variable that makes the bench a draining child (its value: the schema).
pub(crate) const CHILD: &str = "BENCH_PG_DRAIN_SCHEMA";

/// The rows drained at each depth.
const DRAINED: usize = 20_000;
/// The deep queue.
const DEEP: usize = 1_000_000;
/// The processes sharing the queue.
const PROCESSES: usize = 3;
/// K per process.
const K: usize = 16;

#[cfg(feature = "postgres")]
fn url() -> Result<String, String> {
    std::env::var("ACTIX_POLLER_PG_URL")
        .map_err(|_| "durable-pg-scale needs ACTIX_POLLER_PG_URL".to_string())
}

#[cfg(feature = "postgres")]
fn config(url: &str, schema: &str) -> actix_poller::source::postgres::PgConfig {
    actix_poller::source::postgres::PgConfig::new(url).schema(schema)
}

/// A fresh schema name for one run.
fn fresh_schema() -> String {
    format!("ap_scale_{}_{:x}", std::process::id(), fastrand::u32(..))
}

/// Creates the queue in `schema` and enqueues `n` rows.
#[cfg(feature = "postgres")]
async fn preload(url: &str, schema: &str, n: usize) -> Result<(), String> {
    use actix_poller::source::postgres::PgSource;
    let source = PgSource::<u64>::connect(config(url, schema))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    crate::workloads::durable::preload!(source, n);
    source.pool().close().await;
    Ok(())
}

#[cfg(feature = "postgres")]
async fn drop_schema(url: &str, schema: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(url).await {
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// A diagnosis of the depth figure (`BENCH_SCALE_SETTLE=1`): after the preload, what the
/// server would otherwise do during the drain, done before it: vacuum and analyze the table
/// (autovacuum's pass after a bulk insert), then a checkpoint (the WAL the bulk insert wrote).
#[cfg(feature = "postgres")]
async fn settle(url: &str, schema: &str) -> Result<(), String> {
    let admin = sqlx::PgPool::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    for statement in [
        format!("VACUUM ANALYZE \"{schema}\".actix_poller_tasks"),
        "CHECKPOINT".to_string(),
    ] {
        sqlx::raw_sql(&statement)
            .execute(&admin)
            .await
            .map_err(|e| format!("{statement}: {e}"))?;
    }
    admin.close().await;
    Ok(())
}

/// Depth: drains `drained` tasks from a queue of `depth` rows; tasks/s.
#[cfg(feature = "postgres")]
async fn at_depth(url: &str, depth: usize, drained: usize) -> Result<f64, String> {
    use actix_poller::source::postgres::PgSource;
    let schema = fresh_schema();
    let result = async {
        preload(url, &schema, depth).await?;
        if std::env::var_os("BENCH_SCALE_SETTLE").is_some() {
            settle(url, &schema).await?;
        }
        let source = PgSource::<u64>::connect(config(url, &schema))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tally = crate::harness::Tally::new(drained);
        let t = Arc::clone(&tally);
        let clock = Clock::start();
        let poller = Poller::<u64>::builder()
            .workers(K)
            .source(source)
            .start(move |_: u64, _cx: TaskContext| {
                t.record(Duration::ZERO);
                std::future::ready(Ok::<(), std::convert::Infallible>(()))
            })
            .map_err(|e| format!("start: {e}"))?;
        tally.wait().await?;
        let run = clock.stop(drained, Duration::ZERO);
        // The rest stays queued: shut down (the drain finishes what was fetched).
        finish(&poller, None).await?;
        Ok(run.rate())
    }
    .await;
    drop_schema(url, &schema).await;
    result
}

/// The child's side: connect to the queue in `schema`, say `ready`, wait for `go` on stdin,
/// run a K = 16 poller with the defaults until `stop`, then print the handler calls and the
/// last task's end (µs after `go`).
pub(crate) fn drain_child(schema: &str) -> Result<(), String> {
    #[cfg(feature = "postgres")]
    {
        use actix_poller::source::postgres::PgSource;
        let url = url()?;
        in_system(async {
            let source = PgSource::<u64>::connect(config(&url, schema))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut out = std::io::stdout();
            writeln!(out, "ready").map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
            let mut lines = BufReader::new(std::io::stdin()).lines();
            let read = |lines: &mut std::io::Lines<BufReader<std::io::Stdin>>| {
                lines.next().transpose().map_err(|e| e.to_string())
            };
            if read(&mut lines)?.as_deref() != Some("go") {
                return Err("expected `go`".into());
            }
            let go = Instant::now();
            let calls = Arc::new(AtomicUsize::new(0));
            let last_end = Arc::new(AtomicU64::new(0));
            let (c, l) = (Arc::clone(&calls), Arc::clone(&last_end));
            let poller = Poller::<u64>::builder()
                .workers(K)
                .source(source)
                .start(move |_: u64, _cx: TaskContext| {
                    c.fetch_add(1, Ordering::Relaxed);
                    l.fetch_max(go.elapsed().as_micros() as u64, Ordering::Relaxed);
                    std::future::ready(Ok::<(), std::convert::Infallible>(()))
                })
                .map_err(|e| format!("start: {e}"))?;
            // Blocking read on another thread: the system's thread keeps running the poller.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(read(&mut lines));
            });
            let stop = within("the coordinator's stop", rx)
                .await?
                .map_err(|_| "stdin reader gone".to_string())??;
            if stop.as_deref() != Some("stop") {
                return Err(format!("expected `stop`, got {stop:?}"));
            }
            finish(&poller, None).await?;
            println!(
                "calls={} last_end_us={}",
                calls.load(Ordering::Relaxed),
                last_end.load(Ordering::Relaxed)
            );
            Ok(())
        })
    }
    #[cfg(not(feature = "postgres"))]
    {
        Err(format!(
            "{schema}: durable-pg-scale needs the postgres feature"
        ))
    }
}

/// A child process and its stdout's lines.
struct Proc {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Proc {
    fn spawn(schema: &str) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .env(CHILD, schema)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Proc {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("to child: {e}"))
    }

    fn hear(&mut self) -> Result<String, String> {
        self.lines
            .next()
            .ok_or("child exited early")?
            .map_err(|e| format!("from child: {e}"))
    }
}

/// What one multi-process run measured.
struct Shared {
    rate: f64,
    calls: usize,
    rerun: i64,
    left: i64,
}

/// Processes: `procs` children drain `n` rows; tasks/s over the slowest child, handler calls,
/// rows run more than once, rows not completed.
#[cfg(feature = "postgres")]
fn shared(url: &str, n: usize, procs: usize) -> Result<Shared, String> {
    let schema = fresh_schema();
    let result = (|| {
        in_system(preload(url, &schema, n))?;
        let mut children = (0..procs)
            .map(|_| Proc::spawn(&schema))
            .collect::<Result<Vec<_>, _>>()?;
        for c in &mut children {
            let line = c.hear()?;
            if line != "ready" {
                return Err(format!("child said {line:?}"));
            }
        }
        for c in &mut children {
            c.say("go")?;
        }
        // Done when no row is queued or running: checked every 20 ms (two probes of the
        // partial indexes on those states, cheap beside the drain); then every row counted.
        let t = format!("\"{schema}\".actix_poller_tasks");
        let busy_sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {t} WHERE state = 'queued') \
             OR EXISTS (SELECT 1 FROM {t} WHERE state = 'running')"
        );
        let left_sql = format!("SELECT count(*) FROM {t} WHERE state <> 'completed'");
        let rerun_sql = format!("SELECT count(*) FROM {t} WHERE attempt > 1");
        let (left, rerun) = in_system(async {
            let db = sqlx::PgPool::connect(url)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let busy: bool = sqlx::query_scalar(&busy_sql)
                    .fetch_one(&db)
                    .await
                    .map_err(|e| format!("probe: {e}"))?;
                if !busy || started.elapsed() > Duration::from_secs(120) {
                    break;
                }
            }
            let left: i64 = sqlx::query_scalar(&left_sql)
                .fetch_one(&db)
                .await
                .map_err(|e| format!("count: {e}"))?;
            let rerun: i64 = sqlx::query_scalar(&rerun_sql)
                .fetch_one(&db)
                .await
                .map_err(|e| format!("count: {e}"))?;
            db.close().await;
            Ok::<_, String>((left, rerun))
        })?;
        let (mut calls, mut last) = (0usize, 0u64);
        for c in &mut children {
            c.say("stop")?;
            let line = c.hear()?;
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("child said {line:?}"))
            };
            calls += field("calls=")? as usize;
            last = last.max(field("last_end_us=")?);
            let status = c.child.wait().map_err(|e| format!("wait: {e}"))?;
            if !status.success() {
                return Err(format!("a child exited with {status}"));
            }
        }
        Ok(Shared {
            rate: n as f64 / (last.max(1) as f64 / 1e6),
            calls,
            rerun,
            left,
        })
    })();
    in_system(drop_schema(url, &schema));
    result
}

/// min / median / max of `v`.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    (at(0), at(v.len() / 2), at(v.len().saturating_sub(1)))
}

/// Pushes one comparison's row (medians) and detail line: `sides[0]` (ours) against `sides[1]`
/// (the baseline), run by run; met when every run's ratio reaches `target.1`.
fn compare(
    report: &mut Report,
    what: &str,
    config: String,
    sides: [(String, Vec<f64>); 2],
    target: (&'static str, f64),
    note: String,
) {
    let [(ours_name, ours), (base_name, base)] = sides;
    let ratios = ours
        .iter()
        .zip(&base)
        .map(|(o, b)| o / b)
        .collect::<Vec<_>>();
    let runs = ratios.len();
    let (rmin, rmed, rmax) = spread(ratios);
    let (omin, omed, omax) = spread(ours);
    let (bmin, bmed, bmax) = spread(base);
    report.details.push(format!(
        "durable-pg-scale {what} ({config}), {runs} interleaved runs, tasks/s min/median/max: \
         {ours_name} {omin:.0} / {omed:.0} / {omax:.0}, {base_name} {bmin:.0} / {bmed:.0} / \
         {bmax:.0}; ratio per run {rmin:.3} / {rmed:.3} / {rmax:.3}{note}"
    ));
    report.rows.push(Row {
        workload: "durable-pg-scale",
        config,
        metric: "tasks/s",
        unit: Unit::Rate,
        ours: omed,
        base: Some(bmed),
        target: target.0,
        met: Some(rmin >= target.1),
    });
}

/// durable-pg-scale: depth and processes, `repeat` interleaved runs each.
pub(crate) fn durable_scale(n: usize, repeat: usize, smoke: bool) -> Result<Report, String> {
    #[cfg(feature = "postgres")]
    {
        let url = url()?;
        let (drained, deep) = if smoke { (200, 2_000) } else { (DRAINED, DEEP) };
        let mut report = Report::default();

        let (mut shallow_r, mut deep_r) = (Vec::new(), Vec::new());
        for i in 0..repeat {
            let (s, d) = if i % 2 == 0 {
                let s = in_system(at_depth(&url, drained, drained))?;
                (s, in_system(at_depth(&url, deep, drained))?)
            } else {
                let d = in_system(at_depth(&url, deep, drained))?;
                (in_system(at_depth(&url, drained, drained))?, d)
            };
            shallow_r.push(s);
            deep_r.push(d);
        }
        compare(
            &mut report,
            "depth",
            format!("K={K}, {drained} drained at {deep} queued vs at {drained}"),
            [
                (format!("at {deep} queued"), deep_r),
                (format!("at {drained} queued"), shallow_r),
            ],
            ("≥ 0.9 × in every run", 0.9),
            String::new(),
        );

        let n = if smoke { n.min(600) } else { n };
        let (mut one, mut many) = (Vec::new(), Vec::new());
        let mut dup = 0i64;
        for i in 0..repeat {
            let order = if i % 2 == 0 {
                [1, PROCESSES]
            } else {
                [PROCESSES, 1]
            };
            for procs in order {
                let r = shared(&url, n, procs)?;
                if r.left != 0 || r.calls != n {
                    return Err(format!(
                        "{procs} processes: {} rows not completed, {} handler calls for {n} rows",
                        r.left, r.calls
                    ));
                }
                dup += r.rerun;
                if procs == 1 {
                    one.push(r.rate)
                } else {
                    many.push(r.rate)
                }
            }
        }
        let config = format!("{PROCESSES} processes × K={K} vs one, {n} queued");
        compare(
            &mut report,
            "processes",
            config.clone(),
            [
                (format!("{PROCESSES} processes"), many),
                ("one".to_string(), one),
            ],
            ("≥ 1 × in every run, 0 duplicates", 1.0),
            format!("; every row completed, handler calls = rows, {dup} rows at attempt > 1"),
        );
        if let Some(row) = report.rows.last_mut() {
            row.met = row.met.map(|met| met && dup == 0);
        }
        report.rows.push(Row {
            workload: "durable-pg-scale",
            config,
            metric: "rows run twice",
            unit: Unit::Count,
            ours: dup as f64,
            base: None,
            target: "0",
            met: Some(dup == 0),
        });
        Ok(report)
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (n, repeat, smoke);
        Err("durable-pg-scale needs the bench built with `--features postgres`".into())
    }
}
