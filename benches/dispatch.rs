//! Criterion micro-benchmarks of the dispatch path.
//!
//! * `round_trip/<placement>`: submit one tracked no-op task and await its outcome
//!   (Submit → Fetcher → Execute → Executor → Done → Scheduler → Ready → Fetcher → tracker),
//!   with the executor on the current arbiter and on its own arbiter thread.
//! * `submit/single`, `submit/batch_100`: submit alone, into a poller whose one worker is held
//!   by a blocked task, so no submitted task starts and only the enqueue path is timed. Each
//!   sample gets a fresh poller; setting it up and shutting it down is not timed.
//!
//! Everything runs inside one actix System (`System::new()`, then `block_on` per sample), timed
//! with `iter_custom`.
//!
//! ```text
//! cargo bench --bench dispatch
//! ```

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::{Poller, TaskContext};
use actix_rt::SystemRunner;
use criterion::{criterion_main, Criterion, Throughput};
use tokio::sync::{Notify, Semaphore};

/// Grace period for the shutdowns between samples.
const GRACE: Duration = Duration::from_secs(5);

/// `round_trip/current_arbiter` and `round_trip/own_arbiter`.
fn round_trip(c: &mut Criterion) {
    let sys = actix_rt::System::new();
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    for (name, current) in [("current_arbiter", true), ("own_arbiter", false)] {
        let poller = sys.block_on(async {
            let builder = Poller::<u64>::builder().workers(16).executors(1);
            let builder = if current {
                builder.on_current_arbiter()
            } else {
                builder
            };
            builder
                .start(|_: u64, _cx: TaskContext| ready(Ok::<(), Infallible>(())))
                .expect("a valid configuration inside an actix System")
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        let receipt = poller.submit_tracked(i).await.expect("room in the queue");
                        black_box(receipt.outcome().await.expect("a tracked outcome"));
                    }
                    start.elapsed()
                })
            })
        });
        sys.block_on(poller.shutdown(GRACE))
            .expect("first shutdown");
    }
    group.finish();
}

/// A poller whose single worker is held by a blocked task: submitted tasks only queue.
/// Returns the poller and the gate that releases the blocked task.
async fn blocked_poller(capacity: usize) -> (Poller<u64>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(Notify::new());
    let (g, s) = (Arc::clone(&gate), Arc::clone(&started));
    let poller = Poller::<u64>::builder()
        .workers(1)
        .on_current_arbiter()
        .capacity(capacity)
        .start(move |_: u64, _cx: TaskContext| {
            let (g, s) = (Arc::clone(&g), Arc::clone(&s));
            async move {
                s.notify_one();
                let _ = g.acquire().await;
                Ok::<(), Infallible>(())
            }
        })
        .expect("a valid configuration inside an actix System");
    poller.submit(0).await.expect("room in the queue");
    started.notified().await;
    (poller, gate)
}

/// Times `iters` submits of `batch` tasks each into a fresh blocked poller.
fn time_submits(sys: &SystemRunner, iters: u64, batch: usize) -> Duration {
    sys.block_on(async {
        let capacity = (iters as usize).saturating_mul(batch).saturating_add(1);
        let (poller, gate) = blocked_poller(capacity).await;
        let start = Instant::now();
        if batch == 1 {
            for i in 0..iters {
                black_box(poller.submit(i).await.expect("room in the queue"));
            }
        } else {
            for i in 0..iters {
                let tasks = vec![i; batch];
                black_box(poller.submit_batch(tasks).await.expect("room in the queue"));
            }
        }
        let elapsed = start.elapsed();
        gate.close();
        poller.shutdown(GRACE).await.expect("first shutdown");
        elapsed
    })
}

/// `submit/single` and `submit/batch_100`.
fn submit(c: &mut Criterion) {
    let sys = actix_rt::System::new();
    let mut group = c.benchmark_group("submit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter_custom(|iters| time_submits(&sys, iters, 1))
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100", |b| {
        b.iter_custom(|iters| time_submits(&sys, iters, 100))
    });
    group.finish();
}

/// Short runs: the machine is small and shared.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// The benchmark group (what `criterion_group!` would generate, but documented).
fn dispatch() {
    let mut criterion = config().configure_from_args();
    round_trip(&mut criterion);
    submit(&mut criterion);
}

criterion_main!(dispatch);
