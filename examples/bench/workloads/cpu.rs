//! cpu: tasks of pure CPU work; whether our dispatch keeps the cores busy.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::TaskContext;

use crate::harness::{queue_workload, Placement, Report, Row, Run, Unit};

/// `iters` rounds of xorshift: pure CPU work the optimizer cannot remove.
fn spin(iters: u64) -> u64 {
    let mut x = std::hint::black_box(0x9E37_79B9_7F4A_7C15_u64);
    for i in 0..std::hint::black_box(iters) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    std::hint::black_box(x)
}

/// The iterations of [`spin`] that take about `target`, and the mean duration of one such task
/// measured over `reps` runs on this thread.
fn calibrate(target: Duration, reps: u32) -> (u64, Duration) {
    const PROBE: u64 = 200_000;
    let fastest = (0..5)
        .map(|_| {
            let t = Instant::now();
            spin(PROBE);
            t.elapsed()
        })
        .min()
        .unwrap_or(target);
    let iters = (PROBE as f64 * target.as_secs_f64() / fastest.as_secs_f64().max(1e-9)) as u64;
    let iters = iters.max(1);
    let t = Instant::now();
    for _ in 0..reps {
        spin(iters);
    }
    (iters, t.elapsed() / reps.max(1))
}

/// cpu: ~50 µs of pure CPU work per task, K = 4: tasks/s, and cores kept busy (tasks/s × the
/// single-task time measured alone).
pub(crate) fn cpu(
    n: usize,
    k: usize,
    repeat: usize,
    smoke: bool,
    placements: &[Placement],
) -> Result<Report, String> {
    let (iters, single) = calibrate(Duration::from_micros(50), if smoke { 100 } else { 4_000 });
    let m = queue_workload(
        placements,
        repeat,
        k,
        n,
        |t| {
            move |_: u64, _cx: TaskContext| {
                let t = Arc::clone(&t);
                async move {
                    spin(iters);
                    t.record(Duration::ZERO);
                    Ok::<(), Infallible>(())
                }
            }
        },
        |t| {
            move |_: u64| {
                let t = Arc::clone(&t);
                async move {
                    spin(iters);
                    t.record(Duration::ZERO);
                }
            }
        },
    )?;
    let cores = |r: &Run| r.rate() * single.as_secs_f64();
    // The baseline's 2 workers keep 2 cores busy on a quiet machine. If it got much less, other
    // load took the cores and the ratio says more about that load than about us: not judged.
    let free = std::thread::available_parallelism().map_or(1, |n| n.get().min(2)) as f64;
    let quiet = m.base.cores_used() >= 0.9 * free;
    let mut report = m.report("cpu", k, |config, ours, base| {
        vec![
            Row {
                workload: "cpu",
                config: config.clone(),
                metric: "tasks/s",
                unit: Unit::Rate,
                ours: ours.rate(),
                base: Some(base.rate()),
                target: if quiet {
                    "ratio ≥ 0.97"
                } else {
                    "ratio ≥ 0.97 (machine busy: not judged)"
                },
                met: quiet.then(|| ours.rate() >= 0.97 * base.rate()),
            },
            Row {
                workload: "cpu",
                config,
                metric: "cores busy",
                unit: Unit::Plain,
                ours: cores(ours),
                base: Some(cores(base)),
                target: "",
                met: None,
            },
        ]
    });
    report.details.push(format!(
        "cpu: one task = {iters} xorshift rounds = {:.1} µs alone on one core",
        single.as_secs_f64() * 1e6
    ));
    if !quiet {
        report.details.push(format!(
            "cpu: the baseline's process used {:.2} of {free} cores: other load on the machine; \
             the cpu ratios of this run are not judged",
            m.base.cores_used()
        ));
    }
    Ok(report)
}
