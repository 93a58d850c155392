#![cfg_attr(
    not(feature = "postgres"),
    allow(dead_code, unused_imports, unused_macros, unused_variables)
)]
//! durable-pg-latency: insert→start latency through PostgreSQL. A producer thread with its own
//! connection (another process, as far as the poller can tell) inserts one row at a time at a
//! steady [`RATE`] through a `PgQueue`; the poller (K = 16, builder defaults) waits idle, so
//! each wake-up travels by `NOTIFY`. Each task's handler takes its start time.
//!
//! The breakdown per task comes from the poller's own tracing, caught by a layer installed on the
//! poller's thread only: the listener's `actix_poller.notified` event (a notification arrived),
//! the Fetcher's `actix_poller.signalled` event (the listener's signal reached it), and the
//! `actix_poller.fetch` span (opened when the fetch is called, `tasks` recorded when it lands).
//! At [`RATE`] the stages of one task end long before the next insert, so each task's stamps are
//! the first ones after its insert began.

use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_poller::source::NewTask;
use actix_poller::{Poller, TaskContext};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::harness::{finish, in_system, quantile, within, Report, Row, Tally, Unit};

/// Inserts per second.
pub(crate) const RATE: u64 = 200;

/// A stamp's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The listener heard a notification.
    Notified,
    /// The Fetcher was woken by the source's signal.
    Signalled,
    /// A fetch was called (span id).
    FetchStart(u64),
    /// A fetch landed with this many tasks (span id, tasks).
    FetchLanded(u64, u64),
}

/// Stamps in ns since `base`.
#[derive(Clone)]
struct Stamps {
    base: Instant,
    all: Arc<Mutex<Vec<(Kind, u64)>>>,
}

impl Stamps {
    fn push(&self, kind: Kind) {
        let at = self.base.elapsed().as_nanos() as u64;
        if let Ok(mut all) = self.all.lock() {
            all.push((kind, at));
        }
    }
}

/// Reads the `tasks` field of a fetch span.
struct TasksField(Option<u64>);

impl Visit for TasksField {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "tasks" {
            self.0 = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "tasks" {
            self.0 = Some(value.max(0) as u64);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Stamps {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "actix_poller.fetch" {
            self.push(Kind::FetchStart(id.into_u64()));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if ctx.metadata(id).map(|m| m.name()) == Some("actix_poller.fetch") {
            let mut tasks = TasksField(None);
            values.record(&mut tasks);
            if let Some(n) = tasks.0 {
                self.push(Kind::FetchLanded(id.into_u64(), n));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        match event.metadata().name() {
            "actix_poller.notified" => self.push(Kind::Notified),
            "actix_poller.signalled" => self.push(Kind::Signalled),
            _ => {}
        }
    }
}

/// One task's times, ns since the base: insert called, insert returned, handler started.
struct Times {
    called: Vec<AtomicU64>,
    returned: Vec<AtomicU64>,
    started: Vec<AtomicU64>,
}

/// The stages of one task, ns (the commit→NOTIFY stage may be negative: the notification can
/// reach the listener before the producer sees its commit's reply).
#[derive(Clone, Copy, Debug, Default)]
struct Stages {
    insert: i64,
    notify: i64,
    hop: i64,
    fetch_wait: i64,
    fetch: i64,
    dispatch: i64,
}

/// Matches each task's stamps; `None` for a task no notification woke (a fetch already under
/// way, or the fallback poll, brought it).
fn stages(times: &Times, stamps: &[(Kind, u64)], i: usize) -> Option<Stages> {
    let t0 = times.called[i].load(Ordering::Relaxed);
    let t1 = times.returned[i].load(Ordering::Relaxed);
    let ts = times.started[i].load(Ordering::Relaxed);
    let within = |k: Kind, from: u64| {
        stamps
            .iter()
            .find(|(kind, at)| *kind == k && *at >= from && *at <= ts)
            .map(|(_, at)| *at)
    };
    let notified = within(Kind::Notified, t0)?;
    let signalled = within(Kind::Signalled, notified)?;
    // The fetch that brought it: the last one to land with tasks before the handler started.
    let (id, landed) = stamps.iter().rev().find_map(|(kind, at)| match kind {
        Kind::FetchLanded(id, n) if *n > 0 && *at <= ts && *at >= signalled => Some((*id, *at)),
        _ => None,
    })?;
    let called = stamps
        .iter()
        .rev()
        .find(|(kind, at)| *kind == Kind::FetchStart(id) && *at <= landed)
        .map(|(_, at)| *at)?;
    let d = |a: u64, b: u64| b as i64 - a as i64;
    Some(Stages {
        insert: d(t0, t1),
        notify: d(t1, notified),
        hop: d(notified, signalled),
        fetch_wait: d(signalled, called),
        fetch: d(called, landed),
        dispatch: d(landed, ts),
    })
}

/// The `q` quantile of `v` in µs.
fn q_us(v: &mut [i64], q: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64 / 1e3
}

/// One run's insert→start latencies (sorted), the stages of the tasks a NOTIFY woke, how many
/// others, and the poller's backends' CPU per task (µs).
type Outcome = (Vec<Duration>, Vec<Stages>, usize, f64);

/// One run: `n` inserts at [`RATE`] into a fresh table.
#[cfg(feature = "postgres")]
fn one(n: usize) -> Result<Outcome, String> {
    use actix_poller::source::postgres::{PgConfig, PgQueue, PgSource};

    let url = std::env::var("ACTIX_POLLER_PG_URL")
        .map_err(|_| "durable-pg-latency needs ACTIX_POLLER_PG_URL".to_string())?;
    let schema = format!(
        "ap_bench_lat_{}_{:x}",
        std::process::id(),
        fastrand::u32(..)
    );
    // The poller's connections by name, for their backends' CPU (the producer's is unnamed).
    let app = format!("ap-bench-{schema}");
    let config = PgConfig::new(&url).schema(&schema).application_name(&app);
    let server_ns = Arc::new(AtomicU64::new(0));
    let server = Arc::clone(&server_ns);
    let base = Instant::now();
    let stamps = Stamps {
        base,
        all: Arc::new(Mutex::new(Vec::with_capacity(n * 8))),
    };
    let times = Arc::new(Times {
        called: (0..n).map(|_| AtomicU64::new(0)).collect(),
        returned: (0..n).map(|_| AtomicU64::new(0)).collect(),
        started: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let filter = tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("actix_poller"));
    let subscriber = tracing_subscriber::registry().with(stamps.clone().with_filter(filter));
    let run = tracing::subscriber::with_default(subscriber, || {
        in_system(async {
            let monitor = sqlx::PgPool::connect(&url)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let source = PgSource::<u64>::connect(config.clone())
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let cpu_before = super::durable::backend_cpu_ns(&monitor, &app).await;
            let tally = Tally::new(n);
            let (t, tm) = (Arc::clone(&tally), Arc::clone(&times));
            let poller = Poller::<u64>::builder()
                .workers(16)
                .source(source)
                .start(move |i: u64, _cx: TaskContext| {
                    if let Some(slot) = tm.started.get(i as usize) {
                        slot.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    t.record(Duration::ZERO);
                    ready(Ok::<(), Infallible>(()))
                })
                .map_err(|e| format!("start: {e}"))?;
            // The producer: its own thread, runtime and connection.
            // Named apart: the backends' CPU counted below is the poller's.
            let (tm, cfg) = (
                Arc::clone(&times),
                config.clone().application_name(format!("{app}-producer")),
            );
            let producer = std::thread::spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("producer runtime: {e}"))?;
                rt.block_on(async move {
                    // A pool of its own, opened with the crate's settings, as a process that
                    // only enqueues opens one.
                    let queue = PgQueue::<u64>::connect(&cfg.max_connections(1))
                        .await
                        .map_err(|e| format!("producer connect: {e}"))?;
                    let mut tick =
                        tokio::time::interval(Duration::from_nanos(1_000_000_000 / RATE));
                    for i in 0..n {
                        tick.tick().await;
                        tm.called[i].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        queue
                            .enqueue(vec![NewTask::new(i as u64)])
                            .await
                            .map_err(|e| format!("enqueue: {e}"))?;
                        tm.returned[i].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    Ok(())
                })
            });
            let waited = tally.wait().await;
            let cpu_after = super::durable::backend_cpu_ns(&monitor, &app).await;
            server.store(cpu_after.saturating_sub(cpu_before), Ordering::Relaxed);
            monitor.close().await;
            let produced = producer
                .join()
                .map_err(|_| "the producer panicked".to_string())
                .and_then(|r| r);
            finish(&poller, Some(n)).await?;
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                let _ = within("drop", sqlx::raw_sql(&drop).execute(&pool)).await;
                pool.close().await;
            }
            waited?;
            produced
        })
    });
    run?;
    let all = stamps.all.lock().map_err(|_| "stamps poisoned")?.clone();
    let mut lat: Vec<Duration> = (0..n)
        .map(|i| {
            let (a, b) = (
                times.called[i].load(Ordering::Relaxed),
                times.started[i].load(Ordering::Relaxed),
            );
            Duration::from_nanos(b.saturating_sub(a))
        })
        .collect();
    lat.sort();
    let found: Vec<Stages> = (0..n).filter_map(|i| stages(&times, &all, i)).collect();
    let other = n - found.len();
    let server = server_ns.load(Ordering::Relaxed) as f64 * 1e-3 / n.max(1) as f64;
    Ok((lat, found, other, server))
}

#[cfg(not(feature = "postgres"))]
fn one(_: usize) -> Result<Outcome, String> {
    Err("durable-pg-latency needs the bench built with `--features postgres`".into())
}

/// durable-pg-latency: p50 / p99 insert→start over `repeat` runs of `n` inserts (min / median /
/// max of each over the runs), and the per-stage breakdown of the median run.
pub(crate) fn durable_latency(n: usize, repeat: usize) -> Result<Report, String> {
    let mut runs = Vec::new();
    for _ in 0..repeat {
        runs.push(one(n)?);
    }
    let mut p50s: Vec<Duration> = runs.iter().map(|r| quantile(&r.0, 0.50)).collect();
    let mut p99s: Vec<Duration> = runs.iter().map(|r| quantile(&r.0, 0.99)).collect();
    p50s.sort();
    p99s.sort();
    let mid = |v: &[Duration]| v[v.len() / 2];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let config = format!("K=16, {n} inserts at {RATE}/s, defaults");
    let mut report = Report::default();
    for (metric, v, goal, target) in [
        ("insert→start p50", &p50s, 1_000.0, "≤ 1.0 ms"),
        ("insert→start p99", &p99s, 3_000.0, "≤ 3 ms"),
    ] {
        report.rows.push(Row {
            workload: "durable-pg-latency",
            config: config.clone(),
            metric,
            unit: Unit::Us,
            ours: us(mid(v)),
            base: None,
            target,
            met: Some(v.iter().all(|d| us(*d) <= goal)),
        });
    }
    report.details.push(format!(
        "durable-pg-latency: insert→start p50 min/median/max over {repeat} runs: {:.0} / {:.0} / \
         {:.0} µs; p99 {:.0} / {:.0} / {:.0} µs",
        us(p50s[0]),
        us(mid(&p50s)),
        us(p50s[p50s.len() - 1]),
        us(p99s[0]),
        us(mid(&p99s)),
        us(p99s[p99s.len() - 1]),
    ));
    // The stages of the run whose p50 is the median.
    let median_p50 = mid(&p50s);
    let mut server: Vec<f64> = runs.iter().map(|r| r.3).collect();
    server.sort_by(f64::total_cmp);
    if let Some((lat, found, other, _)) = runs.iter().find(|r| quantile(&r.0, 0.50) == median_p50) {
        let col = |f: fn(&Stages) -> i64| -> Vec<i64> { found.iter().map(f).collect() };
        let mut line = format!(
            "durable-pg-latency stages (median run; {} tasks woken by a NOTIFY, {other} by a fetch \
             already under way or the poll; max {:.0} µs), p50 / p99 µs:",
            found.len(),
            us(lat[lat.len() - 1]),
        );
        for (name, mut v) in [
            ("insert + commit", col(|s| s.insert)),
            ("commit → NOTIFY heard", col(|s| s.notify)),
            ("listener → Fetcher", col(|s| s.hop)),
            ("Fetcher → fetch called", col(|s| s.fetch_wait)),
            ("fetch query", col(|s| s.fetch)),
            ("fetch landed → handler", col(|s| s.dispatch)),
        ] {
            let p50 = q_us(&mut v, 0.5);
            let p99 = q_us(&mut v, 0.99);
            line += &format!(" {name} {p50:.0} / {p99:.0};");
        }
        line.pop();
        line += &format!(
            "; the poller's backends' CPU per task min/median/max {:.0} / {:.0} / {:.0} µs",
            server[0],
            server[server.len() / 2],
            server[server.len() - 1]
        );
        report.details.push(line);
    }
    Ok(report)
}
