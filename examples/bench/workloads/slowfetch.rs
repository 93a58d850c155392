//! slowfetch-batch / slowfetch-single: a source whose every fetch call costs 1 ms; how well
//! prefetch hides it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::source::{FetchLimits, Fetched, Source, WakeOn};
use actix_poller::{Ack, Notify, Poller, Task, TaskContext, TaskId};
use futures::future::{ready, LocalBoxFuture};
use tokio::sync::Semaphore;

use crate::harness::{
    base_runtime, finish, in_system, run_detail, Clock, Placement, Report, Row, Run, Tally, Unit,
};

/// The cost of one fetch call in the slowfetch workloads.
const FETCH_COST: Duration = Duration::from_millis(1);
/// How long a slowfetch task sleeps.
const SLOW_TASK: Duration = Duration::from_millis(5);

/// Fetch-call counters shared by a slow source and the report.
#[derive(Debug, Default)]
struct FetchStats {
    calls: AtomicU64,
    ns: AtomicU64,
}

impl FetchStats {
    /// The mean duration of a fetch call.
    fn mean(&self) -> Duration {
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.ns.load(Ordering::Relaxed) / calls)
    }
}

/// A source whose every fetch call costs [`FETCH_COST`] however many tasks it returns (a
/// database round trip, or a remote service). It hands out `remaining` tasks once `open` is set
/// (before that, its fetches return nothing at once), so the clock can start at a `Notify`.
struct SlowSource {
    open: Arc<AtomicBool>,
    remaining: usize,
    next_id: u64,
    limits: FetchLimits,
    stats: Arc<FetchStats>,
}

impl Source<()> for SlowSource {
    type Error = Infallible;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<()>, Infallible>> {
        if !self.open.load(Ordering::Acquire) {
            return Box::pin(ready(Ok(Fetched::empty(WakeOn::submit()))));
        }
        let n = max.min(self.remaining);
        self.remaining -= n;
        let first = self.next_id;
        self.next_id += n as u64;
        let tasks: Vec<Task<()>> = (1..=n as u64)
            .map(|i| Task::new(TaskId(first + i), ()))
            .collect();
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            let started = Instant::now();
            tokio::time::sleep(FETCH_COST).await;
            stats.calls.fetch_add(1, Ordering::Relaxed);
            stats
                .ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            // Fewer than asked for only once the source ran dry: then wait for a notify.
            Ok(if n < max {
                Fetched::drained(tasks, WakeOn::submit())
            } else {
                Fetched::new(tasks, WakeOn::submit())
            })
        })
    }

    fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Infallible>> {
        Box::pin(ready(Ok(())))
    }

    fn limits(&self) -> FetchLimits {
        self.limits
    }
}

/// The fetch limits of a slowfetch variant with `workers` slots.
fn slow_limits(single: bool, workers: usize) -> FetchLimits {
    if single {
        FetchLimits::default().max_batch(1).max_in_flight(workers)
    } else {
        FetchLimits::default()
    }
}

/// Runs `n` slow tasks on our poller with `prefetch` (`None`: the builder's default, tuned).
async fn slowfetch_ours(
    placement: Placement,
    n: usize,
    workers: usize,
    single: bool,
    prefetch: Option<usize>,
) -> Result<(Run, Arc<FetchStats>), String> {
    let tally = Tally::new(n);
    let t = Arc::clone(&tally);
    let open = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FetchStats::default());
    let source = SlowSource {
        open: Arc::clone(&open),
        remaining: n,
        next_id: 0,
        limits: slow_limits(single, workers),
        stats: Arc::clone(&stats),
    };
    let mut builder = Poller::<()>::builder().workers(workers);
    if let Some(p) = prefetch {
        builder = builder.prefetch(p);
    }
    let builder = builder.source(source);
    let poller = placement
        .apply(builder)
        .start(move |(), _cx: TaskContext| {
            let t = Arc::clone(&t);
            async move {
                t.timed_sleep(SLOW_TASK).await;
                Ok::<(), Infallible>(())
            }
        })
        .map_err(|e| format!("start: {e}"))?;
    let clock = Clock::start();
    open.store(true, Ordering::Release);
    poller.notify_recipient().do_send(Notify);
    tally.wait().await?;
    let run = clock.stop(n, tally.busy());
    finish(&poller, Some(n)).await?;
    Ok((run, stats))
}

/// Runs `n` slow tasks on the baseline: its dispatch loop takes one permit (plus every free one
/// for a batch source), fetches that many in one call, and spawns them.
fn slowfetch_base(
    n: usize,
    workers: usize,
    single: bool,
) -> Result<(Run, Arc<FetchStats>), String> {
    let rt = base_runtime()?;
    let tally = Tally::new(n);
    let stats = Arc::new(FetchStats::default());
    let max_batch = slow_limits(single, workers).max_batch;
    let (t, s) = (Arc::clone(&tally), Arc::clone(&stats));
    rt.block_on(async move {
        let sem = Arc::new(Semaphore::new(workers));
        let clock = Clock::start();
        let dispatcher = tokio::spawn(async move {
            let mut remaining = n;
            loop {
                let Ok(first) = Arc::clone(&sem).acquire_owned().await else {
                    return;
                };
                let mut permits = vec![first];
                while permits.len() < max_batch {
                    match Arc::clone(&sem).try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                // The fetch, inside the dispatch loop.
                let fetch_started = Instant::now();
                tokio::time::sleep(FETCH_COST).await;
                let got = permits.len().min(remaining);
                remaining -= got;
                s.calls.fetch_add(1, Ordering::Relaxed);
                s.ns.fetch_add(fetch_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if got == 0 {
                    return;
                }
                for permit in permits.into_iter().take(got) {
                    let t = Arc::clone(&t);
                    tokio::spawn(async move {
                        t.timed_sleep(SLOW_TASK).await;
                        drop(permit);
                    });
                }
            }
        });
        tally.wait().await?;
        let run = clock.stop(n, tally.busy());
        dispatcher.abort();
        Ok((run, stats))
    })
}

/// slowfetch-batch / slowfetch-single: 5 ms tasks, K = 50, 1 ms per fetch call: utilization =
/// average busy workers ÷ K, for each prefetch value.
pub(crate) fn slowfetch(
    n: usize,
    k: usize,
    repeat: usize,
    single: bool,
    prefetch: &[Option<usize>],
    placements: &[Placement],
) -> Result<Report, String> {
    let name = if single {
        "slowfetch-single"
    } else {
        "slowfetch-batch"
    };
    // The serialized baseline fetches one task per call: fewer tasks keep its run short.
    let base_n = if single { (n / 10).max(1) } else { n };
    let configs: Vec<(Placement, Option<usize>)> = placements
        .iter()
        .flat_map(|pl| prefetch.iter().map(move |p| (*pl, *p)))
        .collect();
    let mut ours: Vec<Vec<(Run, Arc<FetchStats>)>> = configs.iter().map(|_| Vec::new()).collect();
    let mut base = Vec::new();
    for _ in 0..repeat {
        for ((placement, p), runs) in configs.iter().zip(&mut ours) {
            runs.push(in_system(slowfetch_ours(*placement, n, k, single, *p))?);
        }
        base.push(slowfetch_base(base_n, k, single)?);
    }
    /// The pair with the median rate.
    fn pick(mut v: Vec<(Run, Arc<FetchStats>)>) -> Option<(Run, Arc<FetchStats>)> {
        v.sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
        let i = v.len() / 2;
        v.into_iter().nth(i)
    }
    let (base, base_stats) = pick(base).ok_or("no run")?;
    let util = |r: &Run| r.avg_busy() / k as f64;
    let (target, goal) = if single {
        ("ours ≥ 0.95", 0.95)
    } else {
        ("ours ≥ 0.97", 0.97)
    };
    let fetches = |s: &FetchStats| {
        format!(
            "{} fetch calls of mean {:.2} ms",
            s.calls.load(Ordering::Relaxed),
            s.mean().as_secs_f64() * 1e3
        )
    };
    let mut report = Report::default();
    // min / median / max utilization over the runs: every run must meet the target.
    let spread = |runs: &[(Run, Arc<FetchStats>)]| {
        let mut u: Vec<f64> = runs.iter().map(|(r, _)| util(r)).collect();
        u.sort_by(f64::total_cmp);
        let min = u.first().copied().unwrap_or(0.0);
        let max = u.last().copied().unwrap_or(0.0);
        let med = u.get(u.len() / 2).copied().unwrap_or(0.0);
        (min, med, max)
    };
    for ((placement, p), runs) in configs.iter().zip(ours) {
        let (min, med, max) = spread(&runs);
        let (run, stats) = pick(runs).ok_or("no run")?;
        let p = p.map_or_else(|| "defaults".to_string(), |p| format!("prefetch {p}"));
        let config = format!("{}, K={k}, {p}", placement.name());
        report.rows.push(Row {
            workload: name,
            config: config.clone(),
            metric: "utilization",
            unit: Unit::Plain,
            ours: util(&run),
            base: Some(util(&base)),
            target,
            met: Some(min >= goal),
        });
        report.details.push(format!(
            "{}; {}; utilization min/median/max over {} runs: {min:.3} / {med:.3} / {max:.3}",
            run_detail(name, &config, k, &run),
            fetches(&stats),
            repeat
        ));
    }
    report.details.push(format!(
        "{}; {}",
        run_detail(name, "baseline", k, &base),
        fetches(&base_stats)
    ));
    Ok(report)
}
