//! What every workload shares: where our executors run, how long a step may take, the System
//! and runtime each side runs on; and, in the submodules, clocks and tallies (`clock`), `/proc`
//! readings (`procfs`), the queue runners for our poller and the baseline (`runners`) and the
//! results table (`table`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_poller::source::Source;
use actix_poller::{Poller, PollerBuilder};

mod clock;
mod procfs;
mod runners;
mod table;

pub(crate) use clock::{median, quantile, spread, Clock, Run, Tally};
pub(crate) use procfs::{cpu_ticks, peak_rss_bytes, rss_bytes, thread_delta, threads, ThreadStat};
pub(crate) use runners::{base_dispatch, base_queue, ours_queue, queue_workload, run_detail};
pub(crate) use table::{print_table, Report, Row, Unit};

/// Where our executors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// `.on_current_arbiter()`: one executor on the System thread, next to Fetcher and Scheduler.
    Current,
    /// The default: one executor per core (or `--executors`), each on its own arbiter thread.
    Own,
}

/// `--executors`: how many own-arbiter executors to start (default: one per core).
pub(crate) static EXECUTORS: AtomicUsize = AtomicUsize::new(0);

/// `--ahead`: `PollerBuilder::dispatch_ahead` for every poller (default: the crate's).
pub(crate) static AHEAD: AtomicUsize = AtomicUsize::new(usize::MAX);

/// `--history`: how many final states the in-memory source keeps for `Poller::status`
/// (`MemorySource::history`; default: the crate's, `DEFAULT_HISTORY`).
pub(crate) static HISTORY: AtomicUsize = AtomicUsize::new(usize::MAX);

impl Placement {
    /// The name in the table's config column.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Placement::Current => "current arbiter",
            Placement::Own => "own arbiters",
        }
    }

    /// Applies the placement to a builder.
    pub(crate) fn apply<T: Send + 'static, S: Source<T>>(
        self,
        b: PollerBuilder<T, S>,
    ) -> PollerBuilder<T, S> {
        let b = match AHEAD.load(Ordering::Relaxed) {
            usize::MAX => b,
            a => b.dispatch_ahead(a),
        };
        match self {
            Placement::Current => b.on_current_arbiter(),
            Placement::Own => match EXECUTORS.load(Ordering::Relaxed) {
                0 => b,
                e => b.executors(e),
            },
        }
    }
}

/// How long any one step may take before the workload is reported as stuck (a lost task or a
/// hung shutdown must fail the run, not hang it). Far above any expected duration.
pub(crate) const STUCK: Duration = Duration::from_secs(120);

/// `fut`, or an error naming `what` if it takes longer than [`STUCK`].
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> Result<F::Output, String> {
    tokio::time::timeout(STUCK, fut)
        .await
        .map_err(|_| format!("stuck for {} s in: {what}", STUCK.as_secs()))
}

/// Runs `fut` in a fresh actix System on this thread.
pub(crate) fn in_system<F: Future>(fut: F) -> F::Output {
    actix_rt::System::new().block_on(fut)
}

/// The baseline's runtime: multi-thread, 2 workers.
pub(crate) fn base_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("baseline runtime: {e}"))
}

/// Shuts `poller` down, then checks that `expect` tasks completed (none lost).
pub(crate) async fn finish<T: Send + 'static>(
    poller: &Poller<T>,
    expect: Option<usize>,
) -> Result<(), String> {
    within("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await?
        .map_err(|e| format!("shutdown: {e}"))?;
    let completed = poller.stats().completed;
    match expect {
        Some(n) if completed != n as u64 => Err(format!("{completed} of {n} tasks completed")),
        _ => Ok(()),
    }
}
