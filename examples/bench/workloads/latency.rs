//! latency: tasks submitted one at a time at a steady rate; submit→start p50 / p99.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::{Poller, TaskContext};
use futures::future::ready;
use tokio::sync::{mpsc, Semaphore};

use crate::harness::{
    base_dispatch, base_runtime, finish, in_system, quantile, Placement, Report, Row, Tally, Unit,
};

/// Submissions per second in the latency workload.
const LATENCY_RATE: u64 = 1_000;

/// Sorted submit→start latencies from the per-task slots.
fn sorted(slots: &[AtomicU64]) -> Vec<Duration> {
    let mut v: Vec<Duration> = slots
        .iter()
        .map(|s| Duration::from_nanos(s.load(Ordering::Relaxed)))
        .collect();
    v.sort();
    v
}

/// Submits `count` tasks one at a time at [`LATENCY_RATE`] to our poller (K = 16); each task
/// stores now − the `Instant` its payload carries.
async fn latency_ours(placement: Placement, count: usize) -> Result<Vec<Duration>, String> {
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let tally = Tally::new(count);
    let (s, t) = (Arc::clone(&slots), Arc::clone(&tally));
    let poller = placement
        .apply(Poller::<(usize, Instant)>::builder().workers(16))
        .start(move |(i, at): (usize, Instant), _cx: TaskContext| {
            let waited = at.elapsed();
            if let Some(slot) = s.get(i) {
                slot.store(waited.as_nanos() as u64, Ordering::Relaxed);
            }
            t.record(Duration::ZERO);
            ready(Ok::<(), Infallible>(()))
        })
        .map_err(|e| format!("start: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
    for i in 0..count {
        tick.tick().await;
        poller
            .submit((i, Instant::now()))
            .await
            .map_err(|e| format!("submit: {e}"))?;
    }
    tally.wait().await?;
    finish(&poller, Some(count)).await?;
    Ok(sorted(&slots))
}

/// The same on the baseline: one `send` per tick into its mpsc.
fn latency_base(count: usize) -> Result<Vec<Duration>, String> {
    let rt = base_runtime()?;
    rt.block_on(async {
        let slots: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let tally = Tally::new(count);
        let (s, t) = (Arc::clone(&slots), Arc::clone(&tally));
        let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
        let dispatcher = tokio::spawn(base_dispatch(
            rx,
            Arc::new(Semaphore::new(16)),
            move |(i, at): (usize, Instant)| {
                let (s, t) = (Arc::clone(&s), Arc::clone(&t));
                async move {
                    let waited = at.elapsed();
                    if let Some(slot) = s.get(i) {
                        slot.store(waited.as_nanos() as u64, Ordering::Relaxed);
                    }
                    t.record(Duration::ZERO);
                }
            },
            Arc::new(AtomicU64::new(0)),
        ));
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
        for i in 0..count {
            tick.tick().await;
            tx.send((i, Instant::now()))
                .map_err(|_| "the baseline dispatcher stopped")?;
        }
        tally.wait().await?;
        drop(tx);
        let _ = dispatcher.await;
        Ok(sorted(&slots))
    })
}

/// latency: tasks submitted one at a time at a steady rate: submit→start p50 / p99.
pub(crate) fn latency(count: usize, placements: &[Placement]) -> Result<Report, String> {
    let base = latency_base(count)?;
    let mut report = Report::default();
    for &placement in placements {
        let ours = in_system(latency_ours(placement, count))?;
        for (metric, q) in [("submit→start p50", 0.5), ("submit→start p99", 0.99)] {
            report.rows.push(Row {
                workload: "latency",
                config: format!("{}, K=16", placement.name()),
                metric,
                unit: Unit::Us,
                ours: quantile(&ours, q).as_secs_f64() * 1e6,
                base: Some(quantile(&base, q).as_secs_f64() * 1e6),
                target: "",
                met: None,
            });
        }
        report.details.push(format!(
            "latency {}: max {:.0} µs (baseline max {:.0} µs)",
            placement.name(),
            quantile(&ours, 1.0).as_secs_f64() * 1e6,
            quantile(&base, 1.0).as_secs_f64() * 1e6
        ));
    }
    report.details.push(format!(
        "latency: {count} tasks submitted one at a time at {LATENCY_RATE}/s; each task measures \
         now − the Instant in its payload"
    ));
    Ok(report)
}
