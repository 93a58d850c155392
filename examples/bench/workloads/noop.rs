//! noop: tasks that do nothing; what dispatch itself costs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_poller::TaskContext;
use futures::future::ready;

use crate::harness::{queue_workload, run_detail, Placement, Report, Row, Unit};

/// noop: N tasks that do nothing, K = 16: dispatch overhead in tasks/s.
pub(crate) fn noop(
    n: usize,
    k: usize,
    repeat: usize,
    placements: &[Placement],
) -> Result<Report, String> {
    let m = queue_workload(
        placements,
        repeat,
        k,
        || (0..n as u64).collect(),
        |t| {
            move |_: u64, _cx: TaskContext| {
                t.record(Duration::ZERO);
                ready(Ok::<(), Infallible>(()))
            }
        },
        |t| {
            move |_: u64| {
                let t = Arc::clone(&t);
                async move { t.record(Duration::ZERO) }
            }
        },
    )?;
    let mut report = Report::default();
    for (placement, ours) in &m.ours {
        report.rows.push(Row {
            workload: "noop",
            config: format!("{}, K={k}", placement.name()),
            metric: "tasks/s",
            unit: Unit::Rate,
            ours: ours.rate(),
            base: Some(m.base.rate()),
            target: "ratio ≥ 1.0",
            met: Some(ours.rate() >= m.base.rate()),
        });
        report
            .details
            .push(run_detail("noop", placement.name(), k, ours));
    }
    report
        .details
        .push(run_detail("noop", "baseline", k, &m.base));
    Ok(report)
}
