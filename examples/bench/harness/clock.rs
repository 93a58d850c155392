//! Clocks and tallies: what tasks report, and what one throughput run measured.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::procfs::{thread_delta, threads, ThreadStat};
use super::within;

/// What tasks report: how many finished and how long they were busy (measured inside each
/// task). Wakes the waiter when `target` tasks have finished.
#[derive(Debug)]
pub(crate) struct Tally {
    target: usize,
    done: AtomicUsize,
    busy_ns: AtomicU64,
    all_done: tokio::sync::Notify,
}

impl Tally {
    /// A tally that is complete after `target` tasks.
    pub(crate) fn new(target: usize) -> Arc<Tally> {
        Arc::new(Tally {
            target,
            done: AtomicUsize::new(0),
            busy_ns: AtomicU64::new(0),
            all_done: tokio::sync::Notify::new(),
        })
    }

    /// One task finished after being busy for `busy` (zero when not measured).
    pub(crate) fn record(&self, busy: Duration) {
        if !busy.is_zero() {
            self.busy_ns
                .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            // Stores a permit if no one waits yet: the wake-up cannot be lost.
            self.all_done.notify_one();
        }
    }

    /// One task that sleeps for `nap`, its duration measured inside it and recorded.
    pub(crate) async fn timed_sleep(&self, nap: Duration) {
        let started = Instant::now();
        tokio::time::sleep(nap).await;
        self.record(started.elapsed());
    }

    /// Resolves once `target` tasks have finished.
    pub(crate) async fn wait(&self) -> Result<(), String> {
        if self.done.load(Ordering::Acquire) >= self.target {
            return Ok(());
        }
        within("waiting for the tasks", self.all_done.notified())
            .await
            .map_err(|e| {
                let done = self.done.load(Ordering::Acquire);
                format!("{e} ({done} of {} finished)", self.target)
            })
    }

    /// The sum of the measured task durations.
    pub(crate) fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
}

/// One throughput run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    /// Tasks run.
    pub(crate) tasks: usize,
    /// From the first submit (or the source opening) to the last task's end.
    pub(crate) elapsed: Duration,
    /// The sum of task durations measured inside the tasks.
    pub(crate) busy: Duration,
    /// Process CPU time over `elapsed`, all threads (see [`sched_totals`]).
    pub(crate) cpu: Option<Duration>,
    /// Times a thread of the process was scheduled in over `elapsed`.
    pub(crate) slices: Option<u64>,
    /// The busiest threads over `elapsed`, busiest first: where the CPU went, and how long each
    /// waited on a run queue for a core (a thread that shares a core with another waits).
    pub(crate) busiest: [Option<Busy>; 4],
}

/// One thread's share of a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Busy {
    /// `main` (the bench's thread: the actix System's, or the baseline's `block_on`),
    /// `arbiter`, `tokio` (a baseline worker), or `other`.
    pub(crate) kind: &'static str,
    pub(crate) cpu: Duration,
    pub(crate) wait: Duration,
    pub(crate) slices: u64,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:.1} ms CPU, {:.1} ms waiting for a core, {} wake-ups",
            self.kind,
            self.cpu.as_secs_f64() * 1e3,
            self.wait.as_secs_f64() * 1e3,
            self.slices
        )
    }
}

impl Run {
    /// Tasks per second.
    pub(crate) fn rate(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }

    /// The mean task duration measured inside the tasks.
    pub(crate) fn mean_task(&self) -> Duration {
        self.busy / self.tasks.max(1) as u32
    }

    /// Average busy workers: tasks/s × mean task duration.
    pub(crate) fn avg_busy(&self) -> f64 {
        self.rate() * self.mean_task().as_secs_f64()
    }

    /// Cores the whole process kept busy: CPU time ÷ wall time (shows what other load left us).
    pub(crate) fn cores_used(&self) -> f64 {
        self.cpu
            .map_or(f64::NAN, |c| c.as_secs_f64() / self.elapsed.as_secs_f64())
    }
}

/// A clock for one throughput run: wall time, process CPU time and thread wake-ups.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    wall: Instant,
    threads: Vec<ThreadStat>,
}

impl Clock {
    /// Starts the clock.
    pub(crate) fn start() -> Clock {
        Clock {
            threads: threads(),
            wall: Instant::now(),
        }
    }

    /// Stops the clock: the run of `tasks` that were busy `busy` in all.
    pub(crate) fn stop(self, tasks: usize, busy: Duration) -> Run {
        let elapsed = self.wall.elapsed();
        let after = threads();
        let known = !self.threads.is_empty() && !after.is_empty();
        let mut delta = thread_delta(&self.threads, &after);
        let cpu = known.then(|| delta.iter().map(|d| d.cpu).sum());
        let slices = known.then(|| delta.iter().map(|d| d.slices).sum());
        delta.sort_by_key(|t| std::cmp::Reverse(t.cpu));
        let mut busiest = [None; 4];
        for (slot, t) in busiest.iter_mut().zip(&delta) {
            let pid = u64::from(std::process::id());
            let kind = if t.tid == pid {
                "main"
            } else if t.name.starts_with("actix-rt") {
                "arbiter"
            } else if t.name.starts_with("tokio") {
                "tokio"
            } else {
                "other"
            };
            *slot = Some(Busy {
                kind,
                cpu: t.cpu,
                wait: t.wait,
                slices: t.slices,
            });
        }
        Run {
            tasks,
            elapsed,
            busy,
            cpu,
            slices,
            busiest,
        }
    }
}

/// The run with the median rate.
pub(crate) fn median(mut runs: Vec<Run>) -> Option<Run> {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs.get(runs.len() / 2).copied()
}

/// The min, median and max rate of `runs` (zeros when there is none).
pub(crate) fn spread(runs: &[Run]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = runs.iter().map(Run::rate).collect();
    r.sort_by(f64::total_cmp);
    let at = |i: usize| r.get(i).copied().unwrap_or(0.0);
    (at(0), at(r.len() / 2), at(r.len().saturating_sub(1)))
}

/// The `q`-quantile (nearest rank) of sorted `v`.
pub(crate) fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
