//! sleep: tasks that await a 1 ms timer; how busy K slots are kept.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_poller::TaskContext;

use crate::harness::{queue_workload, Placement, Report, Row, Run, Unit};

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
        n,
        |t| {
            move |_: u64, _cx: TaskContext| {
                let t = Arc::clone(&t);
                async move {
                    t.timed_sleep(NAP).await;
                    Ok::<(), Infallible>(())
                }
            }
        },
        |t| {
            move |_: u64| {
                let t = Arc::clone(&t);
                async move { t.timed_sleep(NAP).await }
            }
        },
    )?;
    let eff = |r: &Run| r.avg_busy() / k as f64;
    Ok(m.report("sleep", k, |config, ours, base| {
        vec![Row {
            workload: "sleep",
            config,
            metric: "efficiency",
            unit: Unit::Plain,
            ours: eff(ours),
            base: Some(eff(base)),
            target: "ours ≥ 0.99",
            met: Some(eff(ours) >= 0.99),
        }]
    }))
}
