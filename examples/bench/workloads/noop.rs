//! noop: tasks that do nothing; what dispatch itself costs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_poller::TaskContext;
use futures::future::ready;

use crate::harness::{queue_workload, Placement, Report, Row, Unit};

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
        n,
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
    Ok(m.report("noop", k, |config, ours, base| {
        vec![Row {
            workload: "noop",
            config,
            metric: "tasks/s",
            unit: Unit::Rate,
            ours: ours.rate(),
            base: Some(base.rate()),
            target: "ratio ≥ 1.0",
            met: Some(ours.rate() >= base.rate()),
        }]
    }))
}
