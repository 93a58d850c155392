//! Our poller and the baseline, on a queue: the runners the queue workloads (noop, sleep, cpu)
//! share, and the baseline's dispatch loop the other workloads reuse.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_poller::source::memory::DEFAULT_HISTORY_AGE;
use actix_poller::{MemorySource, Poller, TaskHandler};
use tokio::sync::{mpsc, Semaphore};

use super::table::{fmt_val, Report, Row, Unit};
use super::{base_runtime, finish, in_system, median, Clock, Placement, Run, Tally, HISTORY};

/// Runs `payloads` on our poller (in-memory source, `workers` slots); the clock runs from the
/// submit to the moment `tally` has seen every task finish.
pub(crate) async fn ours_queue<T, H>(
    placement: Placement,
    workers: usize,
    payloads: Vec<T>,
    tally: Arc<Tally>,
    handler: H,
) -> Result<Run, String>
where
    T: Send + 'static,
    H: TaskHandler<T> + Clone + Send + Sync,
{
    let n = payloads.len();
    let source = MemorySource::bounded(n.max(1)).map_err(|e| format!("source: {e}"))?;
    let source = match HISTORY.load(Ordering::Relaxed) {
        usize::MAX => source,
        h => source.history(h, DEFAULT_HISTORY_AGE),
    };
    let builder = Poller::<T>::builder().workers(workers).source(source);
    let poller = placement
        .apply(builder)
        .start_handler(handler)
        .map_err(|e| format!("start: {e}"))?;
    let clock = Clock::start();
    if let Err(e) = poller.submit_batch(payloads).await {
        let _ = finish(&poller, None).await;
        return Err(format!("submit: {e}"));
    }
    tally.wait().await?;
    let run = clock.stop(n, tally.busy());
    finish(&poller, Some(n)).await?;
    Ok(run)
}

/// The baseline's dispatch loop on a queue: take a permit, fetch one task, spawn it; the task
/// gives the permit back when it ends. Counts its fetches (`recv` calls) in `fetches`.
pub(crate) async fn base_dispatch<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    sem: Arc<Semaphore>,
    run: F,
    fetches: Arc<AtomicU64>,
) where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            return;
        };
        fetches.fetch_add(1, Ordering::Relaxed);
        let Some(task) = rx.recv().await else {
            return;
        };
        let fut = run(task);
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

/// Runs `payloads` on the baseline with `workers` permits; the clock runs from the first send to
/// the moment `tally` has seen every task finish.
pub(crate) fn base_queue<T, F, Fut>(
    workers: usize,
    payloads: Vec<T>,
    tally: Arc<Tally>,
    run: F,
) -> Result<Run, String>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let n = payloads.len();
    let rt = base_runtime()?;
    rt.block_on(async move {
        let (tx, rx) = mpsc::unbounded_channel();
        let sem = Arc::new(Semaphore::new(workers));
        let fetches = Arc::new(AtomicU64::new(0));
        let dispatcher = tokio::spawn(base_dispatch(rx, sem, run, fetches));
        let clock = Clock::start();
        for p in payloads {
            tx.send(p).map_err(|_| "the baseline dispatcher stopped")?;
        }
        tally.wait().await?;
        let run = clock.stop(n, tally.busy());
        drop(tx);
        let _ = dispatcher.await;
        Ok(run)
    })
}

/// The median runs of a queue workload: ours per placement, and the baseline.
pub(crate) struct Medians {
    pub(crate) ours: Vec<(Placement, Run)>,
    pub(crate) base: Run,
}

impl Medians {
    /// The report of the queue workload `name` with `workers` slots: for each placement, the
    /// rows `rows` makes from its config column, its median run and the baseline's, and a
    /// detail line; the baseline's detail line last.
    pub(crate) fn report(
        &self,
        name: &str,
        workers: usize,
        rows: impl Fn(String, &Run, &Run) -> Vec<Row>,
    ) -> Report {
        let mut report = Report::default();
        for (placement, ours) in &self.ours {
            let config = format!("{}, K={workers}", placement.name());
            report.rows.extend(rows(config, ours, &self.base));
            report
                .details
                .push(run_detail(name, placement.name(), workers, ours));
        }
        report
            .details
            .push(run_detail(name, "baseline", workers, &self.base));
        report
    }
}

/// Runs a queue workload `repeat` times on each placement and on the baseline, interleaved so
/// that drifting machine load hits every side alike, and keeps the median of each.
/// Each run is `tasks` u64 tasks; `ours_handler` and `base_task` build one side's task from that
/// run's tally.
pub(crate) fn queue_workload<H, F, Fut>(
    placements: &[Placement],
    repeat: usize,
    workers: usize,
    tasks: usize,
    ours_handler: impl Fn(Arc<Tally>) -> H,
    base_task: impl Fn(Arc<Tally>) -> F,
) -> Result<Medians, String>
where
    H: TaskHandler<u64> + Clone + Send + Sync,
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut ours: Vec<Vec<Run>> = placements.iter().map(|_| Vec::new()).collect();
    let mut base = Vec::new();
    for _ in 0..repeat {
        for (placement, runs) in placements.iter().zip(&mut ours) {
            let payload: Vec<u64> = (0..tasks as u64).collect();
            let tally = Tally::new(payload.len());
            let handler = ours_handler(Arc::clone(&tally));
            runs.push(in_system(ours_queue(
                *placement, workers, payload, tally, handler,
            ))?);
        }
        let payload: Vec<u64> = (0..tasks as u64).collect();
        let tally = Tally::new(payload.len());
        let task = base_task(Arc::clone(&tally));
        base.push(base_queue(workers, payload, tally, task)?);
    }
    let ours = placements
        .iter()
        .zip(ours)
        .map(|(p, runs)| median(runs).map(|r| (*p, r)).ok_or("no run"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Medians {
        ours,
        base: median(base).ok_or("no run")?,
    })
}

/// A detail line on where a run's time went, for a run with `workers` slots.
pub(crate) fn run_detail(name: &str, side: &str, workers: usize, r: &Run) -> String {
    let mut line = format!(
        "{name} {side}: {} tasks in {:.1} ms = {}, process CPU {:.2} cores, {:.3} thread \
         wake-ups per task",
        r.tasks,
        r.elapsed.as_secs_f64() * 1e3,
        fmt_val(r.rate(), Unit::Rate),
        r.cores_used(),
        r.slices
            .map_or(f64::NAN, |s| s as f64 / r.tasks.max(1) as f64),
    );
    let busiest: Vec<String> = r
        .busiest
        .iter()
        .flatten()
        .filter(|b| !b.cpu.is_zero())
        .map(ToString::to_string)
        .collect();
    if !busiest.is_empty() {
        line += &format!(" [threads: {}]", busiest.join("; "));
    }
    if !r.busy.is_zero() {
        // A slot's cycle is workers ÷ rate; what the task does not use of it, the slot sat free
        // between one task's end and the next one's start.
        let cycle = workers as f64 / r.rate();
        line += &format!(
            ", mean task {:.0} µs (measured inside), {:.1} busy workers on average, a slot free \
             {:.0} µs between tasks",
            r.mean_task().as_secs_f64() * 1e6,
            r.avg_busy(),
            (cycle - r.mean_task().as_secs_f64()) * 1e6,
        );
    }
    line
}
