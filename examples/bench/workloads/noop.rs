//! noop: tasks that do nothing; what dispatch itself costs. Also its peak memory: one run of
//! each side in a fresh process, VmHWM read at the end.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_poller::TaskContext;
use futures::future::{ready, Ready};

use crate::harness::{
    base_queue, ours_queue, peak_rss_bytes, queue_workload, Placement, Report, Row, Tally, Unit,
};
use crate::workloads::memory::{child_figure, PEAK_CHILD};

/// Our handler: records a zero-length task.
fn ours_task(t: Arc<Tally>) -> impl Fn(u64, TaskContext) -> Ready<Result<(), Infallible>> + Clone {
    move |_: u64, _cx: TaskContext| {
        t.record(Duration::ZERO);
        ready(Ok::<(), Infallible>(()))
    }
}

/// The baseline's task: records a zero-length task when polled.
fn base_task(t: Arc<Tally>) -> impl Fn(u64) -> BaseNoop {
    move |_: u64| BaseNoop(Some(Arc::clone(&t)))
}

/// The baseline's task future (what an `async move { t.record(ZERO) }` block is, named so that
/// the function above can return it).
struct BaseNoop(Option<Arc<Tally>>);

impl Future for BaseNoop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if let Some(t) = self.0.take() {
            t.record(Duration::ZERO);
        }
        Poll::Ready(())
    }
}

/// noop: N tasks that do nothing, K = 16: dispatch overhead in tasks/s; and each side's peak
/// RSS for one run of N tasks, each in a fresh process.
pub(crate) fn noop(
    n: usize,
    k: usize,
    repeat: usize,
    placements: &[Placement],
) -> Result<Report, String> {
    let m = queue_workload(placements, repeat, k, n, ours_task, base_task)?;
    let mut report = m.report("noop", k, |config, ours, base| {
        vec![Row {
            workload: "noop",
            config,
            metric: "tasks/s",
            unit: Unit::Rate,
            ours: ours.rate(),
            base: Some(base.rate()),
            target: "ours ≥ 1.5 × baseline",
            met: Some(ours.rate() >= 1.5 * base.rate()),
        }]
    });
    let ours = child_figure("noop-peak-ours", "memory-ours", n, &[(PEAK_CHILD, k)])? as f64;
    let base = child_figure(
        "noop-peak-baseline",
        "memory-baseline",
        n,
        &[(PEAK_CHILD, k)],
    )? as f64;
    report.rows.push(Row {
        workload: "noop",
        config: format!("peak RSS, {n} tasks, K={k}"),
        metric: "peak RSS",
        unit: Unit::MiB,
        ours,
        base: Some(base),
        target: "ours ≤ 2 × baseline",
        met: Some(ours <= 2.0 * base),
    });
    report.details.push(format!(
        "noop peak RSS: VmHWM of a fresh process that runs one noop of {n} tasks (own arbiters, \
         the builder's defaults but workers and capacity; baseline: its runtime and channel), \
         ours {:.1} MiB, baseline {:.1} MiB, ratio {:.2}",
        ours / 1048576.0,
        base / 1048576.0,
        ours / base
    ));
    Ok(report)
}

/// In a child process: one noop run of `n` tasks on our poller; its peak RSS.
pub(crate) async fn peak_ours(n: usize, k: usize) -> Result<u64, String> {
    let payload: Vec<u64> = (0..n as u64).collect();
    let tally = Tally::new(n);
    let handler = ours_task(Arc::clone(&tally));
    ours_queue(Placement::Own, k, payload, tally, handler).await?;
    peak_rss_bytes().ok_or_else(|| "cannot read VmHWM from /proc/self/status".into())
}

/// In a child process: one noop run of `n` tasks on the baseline; its peak RSS.
pub(crate) fn peak_base(n: usize, k: usize) -> Result<u64, String> {
    let payload: Vec<u64> = (0..n as u64).collect();
    let tally = Tally::new(n);
    let task = base_task(Arc::clone(&tally));
    base_queue(k, payload, tally, task)?;
    peak_rss_bytes().ok_or_else(|| "cannot read VmHWM from /proc/self/status".into())
}
