//! sleep: tasks that await a 1 ms timer; how busy K slots are kept.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::TaskContext;

use crate::harness::{queue_workload, run_detail, Placement, Report, Row, Run, Unit};

/// sleep: each task awaits a 1 ms timer, K = 100: efficiency = average busy workers ÷ K, with
/// the task duration measured inside the task (tokio rounds a 1 ms sleep up to about 2 ms).
pub(crate) fn sleep(
    n: usize,
    k: usize,
    repeat: usize,
    placements: &[Placement],
) -> Result<Report, String> {
    const NAP: Duration = Duration::from_millis(1);
    let m = queue_workload(
        placements,
        repeat,
        k,
        || (0..n as u64).collect(),
        |t| {
            move |_: u64, _cx: TaskContext| {
                let t = Arc::clone(&t);
                async move {
                    let started = Instant::now();
                    tokio::time::sleep(NAP).await;
                    t.record(started.elapsed());
                    Ok::<(), Infallible>(())
                }
            }
        },
        |t| {
            move |_: u64| {
                let t = Arc::clone(&t);
                async move {
                    let started = Instant::now();
                    tokio::time::sleep(NAP).await;
                    t.record(started.elapsed());
                }
            }
        },
    )?;
    let eff = |r: &Run| r.avg_busy() / k as f64;
    let mut report = Report::default();
    for (placement, ours) in &m.ours {
        report.rows.push(Row {
            workload: "sleep",
            config: format!("{}, K={k}", placement.name()),
            metric: "efficiency",
            unit: Unit::Plain,
            ours: eff(ours),
            base: Some(eff(&m.base)),
            target: "ours ≥ 0.99",
            met: Some(eff(ours) >= 0.99),
        });
        report
            .details
            .push(run_detail("sleep", placement.name(), k, ours));
    }
    report
        .details
        .push(run_detail("sleep", "baseline", k, &m.base));
    Ok(report)
}
