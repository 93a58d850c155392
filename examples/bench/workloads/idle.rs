//! idle: a poller with nothing to do; the CPU time and fetch calls it costs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_poller::{Poller, TaskContext};
use futures::future::ready;
use tokio::sync::{mpsc, Semaphore};

use crate::harness::{
    base_dispatch, base_runtime, cpu_ticks, finish, in_system, thread_delta, threads, within,
    Placement, Report, Row, Tally, ThreadStat, Unit,
};

/// What an idle window cost.
#[derive(Debug, Clone)]
struct Idle {
    cpu: Duration,
    ticks: u64,
    fetches: u64,
    /// The threads that ran during the window, busiest first.
    woke: Vec<ThreadStat>,
}

/// Measures CPU time, fetch calls and thread wake-ups over `window`, after a short settling
/// time.
async fn idle_window(window: Duration, fetches: impl Fn() -> u64) -> Result<Idle, String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, t0, f0) = (threads(), cpu_ticks(), fetches());
    tokio::time::sleep(window).await;
    let (after, t1, f1) = (threads(), cpu_ticks(), fetches());
    let (Some(t0), Some(t1)) = (t0, t1) else {
        return Err("cannot read /proc/self/stat (process CPU time)".into());
    };
    if before.is_empty() || after.is_empty() {
        return Err("cannot read /proc/self/task (thread CPU time)".into());
    }
    let mut woke: Vec<ThreadStat> = thread_delta(&before, &after)
        .into_iter()
        .filter(|t| t.slices > 0 || !t.cpu.is_zero())
        .collect();
    woke.sort_by_key(|t| std::cmp::Reverse(t.cpu));
    Ok(Idle {
        cpu: woke.iter().map(|t| t.cpu).sum(),
        ticks: t1.saturating_sub(t0),
        fetches: f1 - f0,
        woke,
    })
}

/// `name: CPU µs ×wake-ups` for each thread that ran.
fn fmt_wakeups(w: &[ThreadStat]) -> String {
    if w.is_empty() {
        return "none".into();
    }
    w.iter()
        .map(|t| {
            format!(
                "{} {:.0} µs ×{}",
                t.name,
                t.cpu.as_secs_f64() * 1e6,
                t.slices
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Our poller (K = 16), idle after one task.
async fn idle_ours(placement: Placement, window: Duration) -> Result<Idle, String> {
    let poller = placement
        .apply(Poller::<u64>::builder().workers(16))
        .start(|_: u64, _cx: TaskContext| ready(Ok::<(), Infallible>(())))
        .map_err(|e| format!("start: {e}"))?;
    let receipt = poller
        .submit_tracked(1)
        .await
        .map_err(|e| format!("submit: {e}"))?;
    within("the first task", receipt.outcome())
        .await?
        .map_err(|e| e.to_string())?;
    let idle = idle_window(window, || poller.stats().fetch_calls).await;
    finish(&poller, Some(1)).await?;
    idle
}

/// The baseline (mpsc + semaphore, K = 16), idle after one task.
fn idle_base(window: Duration) -> Result<Idle, String> {
    let rt = base_runtime()?;
    rt.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let tally = Tally::new(1);
        let t = Arc::clone(&tally);
        let fetches = Arc::new(AtomicU64::new(0));
        let f = Arc::clone(&fetches);
        let dispatcher = tokio::spawn(base_dispatch(
            rx,
            Arc::new(Semaphore::new(16)),
            move |_| {
                let t = Arc::clone(&t);
                async move { t.record(Duration::ZERO) }
            },
            f,
        ));
        tx.send(1).map_err(|_| "the baseline dispatcher stopped")?;
        tally.wait().await?;
        let idle = idle_window(window, || fetches.load(Ordering::Relaxed)).await;
        drop(tx);
        let _ = dispatcher.await;
        idle
    })
}

/// idle: the poller idle for a window: CPU time consumed and fetch calls made.
pub(crate) fn idle(window: Duration, placements: &[Placement]) -> Result<Report, String> {
    let base = idle_base(window)?;
    let mut report = Report::default();
    // The targets are per 5 s; scale a shorter (smoke) window.
    let per_5s = 5.0 / window.as_secs_f64();
    for &placement in placements {
        let ours = in_system(idle_ours(placement, window))?;
        let config = format!("{}, K=16, {:.1} s", placement.name(), window.as_secs_f64());
        report.rows.push(Row {
            workload: "idle",
            config: config.clone(),
            metric: "CPU time",
            unit: Unit::Ms,
            ours: ours.cpu.as_secs_f64() * 1e3,
            base: Some(base.cpu.as_secs_f64() * 1e3),
            target: "< 10 ms per 5 s",
            met: Some(ours.cpu.as_secs_f64() * 1e3 * per_5s < 10.0),
        });
        report.rows.push(Row {
            workload: "idle",
            config,
            metric: "fetch calls",
            unit: Unit::Count,
            ours: ours.fetches as f64,
            base: Some(base.fetches as f64),
            target: "0",
            met: Some(ours.fetches == 0),
        });
        report.details.push(format!(
            "idle {}: {} clock ticks of process CPU in /proc/self/stat (10 ms each); threads that \
             ran (CPU, times scheduled in): {} (the measuring thread included)",
            placement.name(),
            ours.ticks,
            fmt_wakeups(&ours.woke)
        ));
    }
    report.details.push(format!(
        "idle baseline: {} clock ticks; threads that ran: {}; its fetch calls are dispatch-loop \
         `recv` calls",
        base.ticks,
        fmt_wakeups(&base.woke)
    ));
    Ok(report)
}
