//! Quick start: 2,000 short tasks through 16 workers, with a progress bar.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The tasks go into the in-memory source in one batch; the Scheduler lets at most 16 run at
//! once, spread over two executor threads. The bar follows the mirrored counters
//! (`poller.stats()`); the end is decided by the tasks' receipts, not by the counters.

use std::error::Error;
use std::time::{Duration, Instant};

use actix_poller::{FinalState, Poller};
use futures::future::join_all;
use indicatif::{ProgressBar, ProgressStyle};

mod check;

const TASKS: u32 = 2_000;

/// Whether task `n` fails (every 500th).
fn fails(n: u32) -> bool {
    n % 500 == 499
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let began = Instant::now();
    let poller =
        Poller::<u32>::builder()
            .workers(16)
            .executors(2)
            .start(|n: u32, _cx| async move {
                // A few milliseconds of "work": a call to a slow service, say.
                actix_rt::time::sleep(Duration::from_millis(2 + u64::from(n % 4))).await;
                if fails(n) {
                    return Err(format!("task {n}: the service said no"));
                }
                Ok(())
            })?;

    let receipts = poller
        .submit_batch_tracked((0..TASKS).collect())
        .await
        .map_err(|e| format!("could not queue the tasks: {e}"))?;

    let bar = ProgressBar::new(u64::from(TASKS)).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks, {msg}",
    )?);
    let ticker = {
        let (bar, poller) = (bar.clone(), poller.clone());
        actix_rt::spawn(async move {
            loop {
                let s = poller.stats();
                bar.set_position(s.completed + s.failed);
                bar.set_message(format!("{} running", s.busy));
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let outcomes = join_all(receipts.into_iter().map(|r| r.outcome())).await;
    ticker.abort();
    bar.finish_and_clear();

    let completed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(FinalState::Completed)))
        .count();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(FinalState::Dead { .. })))
        .count();
    let stats = poller.stats();
    println!("{}", poller.topology().to_mermaid());
    println!(
        "quickstart: {TASKS} tasks ran through {} workers on {} executor threads in {:.2?}: \
         {completed} completed and {failed} failed (every 500th task returns an error, which \
         the poller counts and reports; it does not retry them, as each task has one attempt). \
         The Fetcher made {} fetch calls, each asking for as many tasks as there were free \
         slots (about {} on average), never more.",
        poller.workers(),
        poller.executors(),
        began.elapsed(),
        stats.fetch_calls,
        stats.started / stats.fetch_calls.max(1),
    );

    poller.shutdown(Duration::from_secs(5)).await?;

    // Every task settled once, as expected: the receipts and the poller's counters agree.
    let will_fail = (0..TASKS).filter(|n| fails(*n)).count();
    let stats = poller.stats();
    check::Check::new("quickstart")
        .eq("receipts", outcomes.len(), TASKS as usize)
        .eq("completed", completed, TASKS as usize - will_fail)
        .eq("dead", failed, will_fail)
        .eq("stats.submitted", stats.submitted, u64::from(TASKS))
        .eq("stats.started", stats.started, u64::from(TASKS))
        .eq("stats.completed", stats.completed, completed as u64)
        .eq("stats.dead", stats.dead, failed as u64)
        .exit_if_wrong();
    Ok(())
}
