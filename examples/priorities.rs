//! Priorities: three producers feed one poller; among due tasks the higher priority runs first,
//! FIFO within a priority.
//!
//! ```text
//! cargo run --example priorities
//! ```
//!
//! A bulk importer queues 300 low-priority tasks at once; a user-facing producer then adds 30
//! normal ones, and an alerting producer 10 urgent ones. With 4 workers the urgent tasks jump the
//! queue: the summary shows each class's mean wait from submit to start.

use std::error::Error;
use std::time::{Duration, Instant};

use actix_poller::{FinalState, Poller, Receipt, SubmitBatch, TaskContext, TaskOptions};
use futures::future::join_all;

mod check;

/// The producers: class, tasks, priority.
const CLASSES: [(&str, usize, i32); 3] =
    [("bulk", 300, -10), ("normal", 30, 0), ("urgent", 10, 10)];

/// A task: its class and when it was submitted.
#[derive(Debug, Clone)]
struct Job {
    class: &'static str,
    submitted: Instant,
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (waits_tx, mut waits_rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = Poller::<Job>::builder()
        .workers(4)
        .on_current_arbiter()
        .start(move |job: Job, _cx: TaskContext| {
            // Record the wait from submit to start, then "work" for 2 ms.
            let _ = waits_tx.send((job.class, job.submitted.elapsed()));
            async {
                actix_rt::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, std::convert::Infallible>(())
            }
        })?;

    // Three producers, each with its own priority, all through the same handle.
    let produce = |(class, n, priority): (&'static str, usize, i32)| {
        let poller = poller.clone();
        async move {
            let jobs = (0..n)
                .map(|_| Job {
                    class,
                    submitted: Instant::now(),
                })
                .collect();
            let batch = SubmitBatch::new(jobs)
                .options(TaskOptions::new().priority(priority))
                .tracked();
            poller
                .submit_batch_with(batch)
                .await
                .map_err(|e| format!("{class}: {e}"))
        }
    };
    let [bulk, normal, urgent] = CLASSES;
    let bulk = produce(bulk).await?;
    let (normal, urgent) = futures::join!(produce(normal), produce(urgent));
    let receipts: Vec<Receipt> = bulk.into_iter().chain(normal?).chain(urgent?).collect();

    let outcomes = join_all(receipts.into_iter().map(Receipt::outcome)).await;
    let completed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(FinalState::Completed)))
        .count();

    println!("{}", poller.topology().named("priorities").to_mermaid());
    let mut waits: Vec<(&str, Duration)> = Vec::new();
    while let Ok(w) = waits_rx.try_recv() {
        waits.push(w);
    }
    println!(
        "{completed} of {} tasks completed. Mean wait from submit to start:",
        outcomes.len()
    );
    for class in ["urgent", "normal", "bulk"] {
        let mine: Vec<Duration> = waits
            .iter()
            .filter(|(c, _)| *c == class)
            .map(|(_, d)| *d)
            .collect();
        let mean = mine.iter().sum::<Duration>() / mine.len().max(1) as u32;
        println!("  {class:>6}: {:>4} tasks, {mean:>10.2?}", mine.len());
    }
    poller.shutdown(Duration::from_secs(5)).await?;

    // Every task ran once: each class's count of starts is its count of tasks.
    let total: usize = CLASSES.iter().map(|(_, n, _)| n).sum();
    let mut check = check::Check::new("priorities");
    check
        .eq("receipts", outcomes.len(), total)
        .eq("completed", completed, total)
        .eq("starts recorded", waits.len(), total)
        .eq("stats.started", poller.stats().started, total as u64);
    for (class, n, _) in CLASSES {
        let started = waits.iter().filter(|(c, _)| *c == class).count();
        check.eq(&format!("{class} tasks started"), started, n);
    }
    check.exit_if_wrong();
    Ok(())
}
