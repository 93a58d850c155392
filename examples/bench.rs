//! The benchmark suite: our poller against a raw tokio baseline, workload by workload.
//!
//! ```text
//! cargo run --release --example bench -- --workload all
//! cargo run --release --example bench -- --workload noop --n 200000
//! cargo run --release --example bench -- --workload slowfetch-single --prefetch 0,8,16,32
//! cargo run --release --example bench -- --smoke          # tiny sizes: checks the program works
//! ```
//!
//! Every workload runs on our poller ("ours") and on a baseline built from tokio alone: an
//! unbounded mpsc queue, a `Semaphore(K)` and one `tokio::spawn` per task on a multi-thread
//! runtime with 2 workers, fetching inside its dispatch loop. The table prints ours, the
//! baseline and ours ÷ baseline: ratios are what to compare between runs, absolute figures drift
//! with the machine and its load. `docs/benchmarks.md` says what each figure means and lists the
//! targets.
//!
//! Nothing here asserts a timing: a missed target is printed, never a failure. The program exits
//! 1 only when a workload did not work (a task lost, a poller that would not start), and 2 on bad
//! command-line input.

use std::convert::Infallible;
use std::future::Future;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::source::{FetchLimits, Fetched, Source, WakeOn};
use actix_poller::{Ack, Notify, Poller, PollerBuilder, Task, TaskContext, TaskHandler, TaskId};
use futures::future::{ready, LocalBoxFuture};
use tokio::sync::{mpsc, Semaphore};

// ---- Command line ------------------------------------------------------------------------

/// Printed for `--help` and, on stderr, for bad input.
const USAGE: &str = "\
usage: bench [--workload W] [--n N] [--repeat R] [--prefetch P[,P...]] [--placement X]
             [--workers K] [--executors E] [--ahead A] [--smoke]

  --workload W   noop | sleep | slowfetch-batch | slowfetch-single | slowfetch | cpu | idle
                 | memory | latency | all  (default: all; may be given more than once)
  --n N          task count for every workload that has one (1 to 100000000)
  --repeat R     runs of each throughput workload; the median is reported (default 3, smoke 1)
  --prefetch P   prefetch value(s) for the slowfetch workloads, comma-separated: a sweep
                 (default: batch 50, single 25)
  --placement X  current | own | both: where our executors run, for every workload
                 (default: both for noop, cpu, idle, latency; own for the others)
  --workers K    K for noop, sleep, slowfetch and cpu (default 16, 100, 50, 4)
  --executors E  executors on their own arbiters (default: one per core)
  --ahead A      tasks each executor may hold queued beyond its credits (default: the crate's,
                 workers ÷ executors rounded up, at most 64)
  --smoke        tiny sizes: checks that every workload works; its figures mean nothing
  --help         this text
";

/// A workload of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Noop,
    Sleep,
    SlowfetchBatch,
    SlowfetchSingle,
    Cpu,
    Idle,
    Memory,
    Latency,
}

/// Every workload, in the order `all` runs them.
const ALL: [Workload; 8] = [
    Workload::Noop,
    Workload::Sleep,
    Workload::SlowfetchBatch,
    Workload::SlowfetchSingle,
    Workload::Cpu,
    Workload::Idle,
    Workload::Memory,
    Workload::Latency,
];

impl Workload {
    /// The name used on the command line and in the table.
    fn name(self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Sleep => "sleep",
            Workload::SlowfetchBatch => "slowfetch-batch",
            Workload::SlowfetchSingle => "slowfetch-single",
            Workload::Cpu => "cpu",
            Workload::Idle => "idle",
            Workload::Memory => "memory",
            Workload::Latency => "latency",
        }
    }

    /// The workloads a command-line name stands for.
    fn parse(name: &str) -> Option<Vec<Workload>> {
        match name {
            "all" => Some(ALL.to_vec()),
            "slowfetch" => Some(vec![Workload::SlowfetchBatch, Workload::SlowfetchSingle]),
            _ => ALL.iter().find(|w| w.name() == name).map(|w| vec![*w]),
        }
    }
}

/// How big each workload is.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    noop: usize,
    sleep: usize,
    slowfetch: usize,
    cpu: usize,
    idle: Duration,
    memory: usize,
    latency: usize,
}

impl Sizes {
    /// The full suite: a few minutes on a 2-core machine.
    const FULL: Sizes = Sizes {
        noop: 200_000,
        sleep: 50_000,
        slowfetch: 10_000,
        cpu: 20_000,
        idle: Duration::from_secs(5),
        memory: 1_000_000,
        latency: 2_000,
    };

    /// `--smoke`: tiny, seconds in all.
    const SMOKE: Sizes = Sizes {
        noop: 1_000,
        sleep: 200,
        slowfetch: 200,
        cpu: 200,
        idle: Duration::from_millis(200),
        memory: 10_000,
        latency: 50,
    };

    /// Every task count set to `n`.
    fn with_n(mut self, n: usize) -> Sizes {
        self.noop = n;
        self.sleep = n;
        self.slowfetch = n;
        self.cpu = n;
        self.memory = n;
        self.latency = n;
        self
    }
}

/// Which side a `--child` process measures (the memory workload runs in fresh processes, so the
/// allocator's leftovers from one side do not hide the other's growth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Ours,
    Baseline,
}

/// What the command line asked for.
#[derive(Debug)]
struct Opts {
    workloads: Vec<Workload>,
    sizes: Sizes,
    smoke: bool,
    repeat: usize,
    prefetch: Option<Vec<usize>>,
    /// `--placement`: run every workload on these placements instead of its defaults.
    placements: Option<Vec<Placement>>,
    /// `--workers`: K for the throughput workloads instead of each one's own.
    workers: Option<usize>,
    /// `--executors`: executors for the own-arbiters placement.
    executors: Option<usize>,
    /// Internal: measure one side of the memory workload and print it.
    child: Option<Side>,
}

/// The outcome of parsing the command line.
#[derive(Debug)]
enum Parsed {
    Run(Opts),
    Help,
}

/// Parses the arguments (without the program name). Never panics: bad input is an `Err`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut workloads: Vec<Workload> = Vec::new();
    let (mut n, mut repeat, mut prefetch, mut child) = (None, None, None, None);
    let (mut placements, mut workers, mut executors) = (None, None, None);
    let mut smoke = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs {what}"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--smoke" => smoke = true,
            "--workload" | "-w" => {
                let v = value("a workload name")?;
                let ws = Workload::parse(&v).ok_or_else(|| format!("unknown workload {v:?}"))?;
                for w in ws {
                    if !workloads.contains(&w) {
                        workloads.push(w);
                    }
                }
            }
            "--n" | "-n" => n = Some(count(&value("a task count")?, "--n", 1, MAX_N)?),
            "--repeat" => repeat = Some(count(&value("a run count")?, "--repeat", 1, 1_000)?),
            "--prefetch" => {
                let v = value("a list of prefetch values")?;
                let list = v
                    .split(',')
                    .map(|p| count(p, "--prefetch", 0, MAX_N))
                    .collect::<Result<Vec<_>, _>>()?;
                prefetch = Some(list);
            }
            "--placement" => {
                placements = Some(match value("a placement")?.as_str() {
                    "current" => vec![Placement::Current],
                    "own" => vec![Placement::Own],
                    "both" => vec![Placement::Current, Placement::Own],
                    other => return Err(format!("unknown placement {other:?}")),
                })
            }
            "--workers" => workers = Some(count(&value("a count")?, "--workers", 1, MAX_N)?),
            "--executors" => executors = Some(count(&value("a count")?, "--executors", 1, 256)?),
            "--ahead" => {
                let a = count(&value("a count")?, "--ahead", 0, 1_000_000)?;
                AHEAD.store(a, Ordering::Relaxed);
            }
            "--child" => {
                child = Some(match value("a side")?.as_str() {
                    "memory-ours" => Side::Ours,
                    "memory-baseline" => Side::Baseline,
                    other => return Err(format!("unknown child role {other:?}")),
                })
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if workloads.is_empty() {
        workloads = ALL.to_vec();
    }
    let mut sizes = if smoke { Sizes::SMOKE } else { Sizes::FULL };
    if let Some(n) = n {
        sizes = sizes.with_n(n);
    }
    Ok(Parsed::Run(Opts {
        workloads,
        sizes,
        smoke,
        repeat: repeat.unwrap_or(if smoke { 1 } else { 3 }),
        prefetch,
        placements,
        workers,
        executors,
        child,
    }))
}

/// The largest task count, worker count or prefetch accepted: far beyond what fits the suite's
/// few minutes, and small enough that no size computation overflows.
const MAX_N: usize = 100_000_000;

/// A count in `min..=max`.
fn count(v: &str, flag: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not a count from {min} to {max}")),
    }
}

// ---- Measurement helpers -----------------------------------------------------------------

/// Where our executors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// `.on_current_arbiter()`: one executor on the System thread, next to Fetcher and Scheduler.
    Current,
    /// The default: one executor per core (or `--executors`), each on its own arbiter thread.
    Own,
}

/// `--executors`: how many own-arbiter executors to start (default: one per core).
static EXECUTORS: AtomicUsize = AtomicUsize::new(0);

/// `--ahead`: `PollerBuilder::dispatch_ahead` for every poller (default: the crate's).
static AHEAD: AtomicUsize = AtomicUsize::new(usize::MAX);

impl Placement {
    /// The name in the table's config column.
    fn name(self) -> &'static str {
        match self {
            Placement::Current => "current arbiter",
            Placement::Own => "own arbiters",
        }
    }

    /// Applies the placement to a builder.
    fn apply<T: Send + 'static, S: Source<T>>(self, b: PollerBuilder<T, S>) -> PollerBuilder<T, S> {
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

/// What tasks report: how many finished and how long they were busy (measured inside each
/// task). Wakes the waiter when `target` tasks have finished.
#[derive(Debug)]
struct Tally {
    target: usize,
    done: AtomicUsize,
    busy_ns: AtomicU64,
    all_done: tokio::sync::Notify,
}

impl Tally {
    /// A tally that is complete after `target` tasks.
    fn new(target: usize) -> Arc<Tally> {
        Arc::new(Tally {
            target,
            done: AtomicUsize::new(0),
            busy_ns: AtomicU64::new(0),
            all_done: tokio::sync::Notify::new(),
        })
    }

    /// One task finished after being busy for `busy` (zero when not measured).
    fn record(&self, busy: Duration) {
        if !busy.is_zero() {
            self.busy_ns
                .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            // Stores a permit if no one waits yet: the wake-up cannot be lost.
            self.all_done.notify_one();
        }
    }

    /// Resolves once `target` tasks have finished.
    async fn wait(&self) -> Result<(), String> {
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
    fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
}

/// One throughput run.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Tasks run.
    tasks: usize,
    /// From the first submit (or the source opening) to the last task's end.
    elapsed: Duration,
    /// The sum of task durations measured inside the tasks.
    busy: Duration,
    /// Process CPU time over `elapsed`, all threads (see [`sched_totals`]).
    cpu: Option<Duration>,
    /// Times a thread of the process was scheduled in over `elapsed`.
    slices: Option<u64>,
}

impl Run {
    /// Tasks per second.
    fn rate(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }

    /// The mean task duration measured inside the tasks.
    fn mean_task(&self) -> Duration {
        self.busy / self.tasks.max(1) as u32
    }

    /// Average busy workers: tasks/s × mean task duration.
    fn avg_busy(&self) -> f64 {
        self.rate() * self.mean_task().as_secs_f64()
    }

    /// Cores the whole process kept busy: CPU time ÷ wall time (shows what other load left us).
    fn cores_used(&self) -> f64 {
        self.cpu
            .map_or(f64::NAN, |c| c.as_secs_f64() / self.elapsed.as_secs_f64())
    }
}

/// A clock for one throughput run: wall time, process CPU time and thread wake-ups.
#[derive(Debug, Clone)]
struct Clock {
    wall: Instant,
    threads: Vec<ThreadStat>,
}

impl Clock {
    /// Starts the clock.
    fn start() -> Clock {
        Clock {
            threads: threads(),
            wall: Instant::now(),
        }
    }

    /// Stops the clock: the run of `tasks` that were busy `busy` in all.
    fn stop(self, tasks: usize, busy: Duration) -> Run {
        let elapsed = self.wall.elapsed();
        let after = threads();
        let known = !self.threads.is_empty() && !after.is_empty();
        let delta = thread_delta(&self.threads, &after);
        Run {
            tasks,
            elapsed,
            busy,
            cpu: known.then(|| delta.iter().map(|d| d.cpu).sum()),
            slices: known.then(|| delta.iter().map(|d| d.slices).sum()),
        }
    }
}

/// The run with the median rate.
fn median(mut runs: Vec<Run>) -> Option<Run> {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs.get(runs.len() / 2).copied()
}

/// How long any one step may take before the workload is reported as stuck (a lost task or a
/// hung shutdown must fail the run, not hang it). Far above any expected duration.
const STUCK: Duration = Duration::from_secs(120);

/// `fut`, or an error naming `what` if it takes longer than [`STUCK`].
async fn within<F: Future>(what: &str, fut: F) -> Result<F::Output, String> {
    tokio::time::timeout(STUCK, fut)
        .await
        .map_err(|_| format!("stuck for {} s in: {what}", STUCK.as_secs()))
}

/// Runs `fut` in a fresh actix System on this thread.
fn in_system<F: Future>(fut: F) -> F::Output {
    actix_rt::System::new().block_on(fut)
}

/// The baseline's runtime: multi-thread, 2 workers.
fn base_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("baseline runtime: {e}"))
}

/// Shuts `poller` down, then checks that `expect` tasks completed (none lost).
async fn finish<T: Send + 'static>(
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

/// One thread's scheduler counters, from `/proc/self/task/<tid>/{comm,schedstat}`: CPU time in
/// nanoseconds (`/proc/self/stat` counts 10 ms ticks, too coarse for the idle target) and how
/// many times it was scheduled in (each wake-up of a parked thread is one).
#[derive(Debug, Clone)]
struct ThreadStat {
    tid: u64,
    name: String,
    cpu: Duration,
    slices: u64,
}

/// Every live thread's counters (empty if `/proc` cannot be read).
fn threads() -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        let tid = path.file_name()?.to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let mut fields = stat.split_whitespace();
        let cpu = Duration::from_nanos(fields.next()?.parse().ok()?);
        let slices = fields.nth(1)?.parse().ok()?;
        Some(ThreadStat {
            tid,
            name: name.trim().to_string(),
            cpu,
            slices,
        })
    })
    .collect()
}

/// What each thread did between two snapshots. A thread born in between counts in full; one
/// that exited in between is missed (the runs keep their threads to the end).
fn thread_delta(before: &[ThreadStat], after: &[ThreadStat]) -> Vec<ThreadStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.tid == a.tid);
            ThreadStat {
                tid: a.tid,
                name: a.name.clone(),
                cpu: a.cpu.saturating_sub(b.map_or(Duration::ZERO, |b| b.cpu)),
                slices: a.slices.saturating_sub(b.map_or(0, |b| b.slices)),
            }
        })
        .collect()
}

/// Process CPU time from `/proc/self/stat` (utime + stime, in 10 ms ticks), as a cross-check.
fn cpu_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in bytes, from `/proc/self/status` (VmRSS, in kB).
fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The `q`-quantile (nearest rank) of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

// ---- The results table -------------------------------------------------------------------

/// How a figure is printed.
#[derive(Clone, Copy, Debug)]
enum Unit {
    /// Tasks per second.
    Rate,
    /// A plain fraction or factor.
    Plain,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Bytes.
    Bytes,
    /// A count.
    Count,
}

/// Formats `v` in `unit`.
fn fmt_val(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Rate if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Unit::Rate if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        Unit::Rate => format!("{v:.0} /s"),
        Unit::Plain => format!("{v:.3}"),
        Unit::Ms => format!("{v:.2} ms"),
        Unit::Us => format!("{v:.1} µs"),
        Unit::Bytes => format!("{v:.1} B"),
        Unit::Count => format!("{v:.0}"),
    }
}

/// One line of the results table.
#[derive(Debug)]
struct Row {
    workload: &'static str,
    config: String,
    metric: &'static str,
    unit: Unit,
    ours: f64,
    base: Option<f64>,
    target: &'static str,
    /// Whether the target was met; `None` when the row has no target.
    met: Option<bool>,
}

impl Row {
    /// ours ÷ baseline, when there is a non-zero baseline.
    fn ratio(&self) -> Option<f64> {
        self.base.filter(|b| *b > 0.0).map(|b| self.ours / b)
    }
}

/// Prints the rows as a Markdown table (pasteable into docs/benchmarks.md).
fn print_table(rows: &[Row]) {
    println!("| workload | config | metric | ours | baseline | ours ÷ baseline | target | met |");
    println!("|---|---|---|---:|---:|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.config,
            r.metric,
            fmt_val(r.ours, r.unit),
            r.base.map_or("—".into(), |b| fmt_val(b, r.unit)),
            r.ratio().map_or("—".into(), |x| format!("{x:.3}")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
}

/// What a workload produced: table rows and detail lines.
#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
    details: Vec<String>,
}

// ---- Our poller and the baseline, on a queue ---------------------------------------------

/// Runs `payloads` on our poller (in-memory source, `workers` slots); the clock runs from the
/// submit to the moment `tally` has seen every task finish.
async fn ours_queue<T, H>(
    placement: Placement,
    workers: usize,
    payloads: Vec<T>,
    tally: Arc<Tally>,
    handler: H,
) -> Result<Run, String>
where
    T: Send + 'static,
    H: TaskHandler<T> + Clone + Send + Sync,
{
    let n = payloads.len();
    let builder = Poller::<T>::builder().workers(workers).capacity(n.max(1));
    let poller = placement
        .apply(builder)
        .start_handler(handler)
        .map_err(|e| format!("start: {e}"))?;
    let clock = Clock::start();
    if let Err(e) = poller.submit_batch(payloads).await {
        let _ = finish(&poller, None).await;
        return Err(format!("submit: {e}"));
    }
    tally.wait().await?;
    let run = clock.stop(n, tally.busy());
    finish(&poller, Some(n)).await?;
    Ok(run)
}

/// The baseline's dispatch loop on a queue: take a permit, fetch one task, spawn it; the task
/// gives the permit back when it ends. Counts its fetches (`recv` calls) in `fetches`.
async fn base_dispatch<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    sem: Arc<Semaphore>,
    run: F,
    fetches: Arc<AtomicU64>,
) where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            return;
        };
        fetches.fetch_add(1, Ordering::Relaxed);
        let Some(task) = rx.recv().await else {
            return;
        };
        let fut = run(task);
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

/// Runs `payloads` on the baseline with `workers` permits; the clock runs from the first send to
/// the moment `tally` has seen every task finish.
fn base_queue<T, F, Fut>(
    workers: usize,
    payloads: Vec<T>,
    tally: Arc<Tally>,
    run: F,
) -> Result<Run, String>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let n = payloads.len();
    let rt = base_runtime()?;
    rt.block_on(async move {
        let (tx, rx) = mpsc::unbounded_channel();
        let sem = Arc::new(Semaphore::new(workers));
        let fetches = Arc::new(AtomicU64::new(0));
        let dispatcher = tokio::spawn(base_dispatch(rx, sem, run, fetches));
        let clock = Clock::start();
        for p in payloads {
            tx.send(p).map_err(|_| "the baseline dispatcher stopped")?;
        }
        tally.wait().await?;
        let run = clock.stop(n, tally.busy());
        drop(tx);
        let _ = dispatcher.await;
        Ok(run)
    })
}

// ---- Queue workloads: noop, sleep, cpu ---------------------------------------------------

/// The median runs of a queue workload: ours per placement, and the baseline.
struct Medians {
    ours: Vec<(Placement, Run)>,
    base: Run,
}

/// Runs a queue workload `repeat` times on each placement and on the baseline, interleaved so
/// that drifting machine load hits every side alike, and keeps the median of each.
/// `ours_handler` and `base_task` build one side's task from that run's tally.
fn queue_workload<T, H, F, Fut>(
    placements: &[Placement],
    repeat: usize,
    workers: usize,
    payloads: impl Fn() -> Vec<T>,
    ours_handler: impl Fn(Arc<Tally>) -> H,
    base_task: impl Fn(Arc<Tally>) -> F,
) -> Result<Medians, String>
where
    T: Send + 'static,
    H: TaskHandler<T> + Clone + Send + Sync,
    F: Fn(T) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut ours: Vec<Vec<Run>> = placements.iter().map(|_| Vec::new()).collect();
    let mut base = Vec::new();
    for _ in 0..repeat {
        for (placement, runs) in placements.iter().zip(&mut ours) {
            let payload = payloads();
            let tally = Tally::new(payload.len());
            let handler = ours_handler(Arc::clone(&tally));
            runs.push(in_system(ours_queue(
                *placement, workers, payload, tally, handler,
            ))?);
        }
        let payload = payloads();
        let tally = Tally::new(payload.len());
        let task = base_task(Arc::clone(&tally));
        base.push(base_queue(workers, payload, tally, task)?);
    }
    let ours = placements
        .iter()
        .zip(ours)
        .map(|(p, runs)| median(runs).map(|r| (*p, r)).ok_or("no run"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Medians {
        ours,
        base: median(base).ok_or("no run")?,
    })
}

/// A detail line on where a run's time went, for a run with `workers` slots.
fn run_detail(name: &str, side: &str, workers: usize, r: &Run) -> String {
    let mut line = format!(
        "{name} {side}: {} tasks in {:.1} ms = {}, process CPU {:.2} cores, {:.3} thread \
         wake-ups per task",
        r.tasks,
        r.elapsed.as_secs_f64() * 1e3,
        fmt_val(r.rate(), Unit::Rate),
        r.cores_used(),
        r.slices
            .map_or(f64::NAN, |s| s as f64 / r.tasks.max(1) as f64),
    );
    if !r.busy.is_zero() {
        // A slot's cycle is workers ÷ rate; what the task does not use of it, the slot sat free
        // between one task's end and the next one's start.
        let cycle = workers as f64 / r.rate();
        line += &format!(
            ", mean task {:.0} µs (measured inside), {:.1} busy workers on average, a slot free \
             {:.0} µs between tasks",
            r.mean_task().as_secs_f64() * 1e6,
            r.avg_busy(),
            (cycle - r.mean_task().as_secs_f64()) * 1e6,
        );
    }
    line
}

/// noop: N tasks that do nothing, K = 16: dispatch overhead in tasks/s.
fn noop(n: usize, k: usize, repeat: usize, placements: &[Placement]) -> Result<Report, String> {
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

/// sleep: each task awaits a 1 ms timer, K = 100: efficiency = average busy workers ÷ K, with
/// the task duration measured inside the task (tokio rounds a 1 ms sleep up to about 2 ms).
fn sleep(n: usize, k: usize, repeat: usize, placements: &[Placement]) -> Result<Report, String> {
    const NAP: Duration = Duration::from_millis(1);
    let m = queue_workload(
        placements,
        repeat,
        k,
        || (0..n as u64).collect(),
        |t| {
            move |_: u64, _cx: TaskContext| {
                let t = Arc::clone(&t);
                async move {
                    let started = Instant::now();
                    tokio::time::sleep(NAP).await;
                    t.record(started.elapsed());
                    Ok::<(), Infallible>(())
                }
            }
        },
        |t| {
            move |_: u64| {
                let t = Arc::clone(&t);
                async move {
                    let started = Instant::now();
                    tokio::time::sleep(NAP).await;
                    t.record(started.elapsed());
                }
            }
        },
    )?;
    let eff = |r: &Run| r.avg_busy() / k as f64;
    let mut report = Report::default();
    for (placement, ours) in &m.ours {
        report.rows.push(Row {
            workload: "sleep",
            config: format!("{}, K={k}", placement.name()),
            metric: "efficiency",
            unit: Unit::Plain,
            ours: eff(ours),
            base: Some(eff(&m.base)),
            target: "ours ≥ 0.99",
            met: Some(eff(ours) >= 0.99),
        });
        report
            .details
            .push(run_detail("sleep", placement.name(), k, ours));
    }
    report
        .details
        .push(run_detail("sleep", "baseline", k, &m.base));
    Ok(report)
}

// ---- slowfetch -----------------------------------------------------------------------------

/// The prefetch slowfetch-batch runs with unless `--prefetch` says otherwise: the smallest value
/// of the sweep `--prefetch 0,10,25,35,50` that meets its target with a margin (= K; see
/// docs/benchmarks.md).
const DEFAULT_PREFETCH_BATCH: usize = 50;
/// The prefetch slowfetch-single runs with unless `--prefetch` says otherwise (sweep
/// `--prefetch 0,8,16,25,50`; = K/2).
const DEFAULT_PREFETCH_SINGLE: usize = 25;

/// The cost of one fetch call in the slowfetch workloads.
const FETCH_COST: Duration = Duration::from_millis(1);
/// How long a slowfetch task sleeps.
const SLOW_TASK: Duration = Duration::from_millis(5);

/// Fetch-call counters shared by a slow source and the report.
#[derive(Debug, Default)]
struct FetchStats {
    calls: AtomicU64,
    ns: AtomicU64,
}

impl FetchStats {
    /// The mean duration of a fetch call.
    fn mean(&self) -> Duration {
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.ns.load(Ordering::Relaxed) / calls)
    }
}

/// A source whose every fetch call costs [`FETCH_COST`] however many tasks it returns (a
/// database round trip, or a remote service). It hands out `remaining` tasks once `open` is set
/// (before that, its fetches return nothing at once), so the clock can start at a `Notify`.
struct SlowSource {
    open: Arc<AtomicBool>,
    remaining: usize,
    next_id: u64,
    limits: FetchLimits,
    stats: Arc<FetchStats>,
}

impl Source<()> for SlowSource {
    type Error = Infallible;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<()>, Infallible>> {
        if !self.open.load(Ordering::Acquire) {
            return Box::pin(ready(Ok(Fetched::empty(WakeOn::submit()))));
        }
        let n = max.min(self.remaining);
        self.remaining -= n;
        let first = self.next_id;
        self.next_id += n as u64;
        let tasks: Vec<Task<()>> = (1..=n as u64)
            .map(|i| Task::new(TaskId(first + i), ()))
            .collect();
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            let started = Instant::now();
            tokio::time::sleep(FETCH_COST).await;
            stats.calls.fetch_add(1, Ordering::Relaxed);
            stats
                .ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            // Fewer than asked for only once the source ran dry: then wait for a notify.
            Ok(Fetched::new(tasks, WakeOn::submit()))
        })
    }

    fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Infallible>> {
        Box::pin(ready(Ok(())))
    }

    fn limits(&self) -> FetchLimits {
        self.limits
    }
}

/// The fetch limits of a slowfetch variant with `workers` slots.
fn slow_limits(single: bool, workers: usize) -> FetchLimits {
    if single {
        FetchLimits {
            max_batch: 1,
            max_in_flight: workers,
        }
    } else {
        FetchLimits::default()
    }
}

/// Runs `n` slow tasks on our poller with `prefetch`.
async fn slowfetch_ours(
    placement: Placement,
    n: usize,
    workers: usize,
    single: bool,
    prefetch: usize,
) -> Result<(Run, Arc<FetchStats>), String> {
    let tally = Tally::new(n);
    let t = Arc::clone(&tally);
    let open = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FetchStats::default());
    let source = SlowSource {
        open: Arc::clone(&open),
        remaining: n,
        next_id: 0,
        limits: slow_limits(single, workers),
        stats: Arc::clone(&stats),
    };
    let builder = Poller::<()>::builder()
        .workers(workers)
        .prefetch(prefetch)
        .source(source);
    let poller = placement
        .apply(builder)
        .start(move |(), _cx: TaskContext| {
            let t = Arc::clone(&t);
            async move {
                let started = Instant::now();
                tokio::time::sleep(SLOW_TASK).await;
                t.record(started.elapsed());
                Ok::<(), Infallible>(())
            }
        })
        .map_err(|e| format!("start: {e}"))?;
    let clock = Clock::start();
    open.store(true, Ordering::Release);
    poller.notify_recipient().do_send(Notify);
    tally.wait().await?;
    let run = clock.stop(n, tally.busy());
    finish(&poller, Some(n)).await?;
    Ok((run, stats))
}

/// Runs `n` slow tasks on the baseline: its dispatch loop takes one permit (plus every free one
/// for a batch source), fetches that many in one call, and spawns them.
fn slowfetch_base(
    n: usize,
    workers: usize,
    single: bool,
) -> Result<(Run, Arc<FetchStats>), String> {
    let rt = base_runtime()?;
    let tally = Tally::new(n);
    let stats = Arc::new(FetchStats::default());
    let max_batch = slow_limits(single, workers).max_batch;
    let (t, s) = (Arc::clone(&tally), Arc::clone(&stats));
    rt.block_on(async move {
        let sem = Arc::new(Semaphore::new(workers));
        let clock = Clock::start();
        let dispatcher = tokio::spawn(async move {
            let mut remaining = n;
            loop {
                let Ok(first) = Arc::clone(&sem).acquire_owned().await else {
                    return;
                };
                let mut permits = vec![first];
                while permits.len() < max_batch {
                    match Arc::clone(&sem).try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                // The fetch, inside the dispatch loop.
                let fetch_started = Instant::now();
                tokio::time::sleep(FETCH_COST).await;
                let got = permits.len().min(remaining);
                remaining -= got;
                s.calls.fetch_add(1, Ordering::Relaxed);
                s.ns.fetch_add(fetch_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if got == 0 {
                    return;
                }
                for permit in permits.into_iter().take(got) {
                    let t = Arc::clone(&t);
                    tokio::spawn(async move {
                        let started = Instant::now();
                        tokio::time::sleep(SLOW_TASK).await;
                        t.record(started.elapsed());
                        drop(permit);
                    });
                }
            }
        });
        tally.wait().await?;
        let run = clock.stop(n, tally.busy());
        dispatcher.abort();
        Ok((run, stats))
    })
}

/// slowfetch-batch / slowfetch-single: 5 ms tasks, K = 50, 1 ms per fetch call: utilization =
/// average busy workers ÷ K, for each prefetch value.
fn slowfetch(
    n: usize,
    k: usize,
    repeat: usize,
    single: bool,
    prefetch: &[usize],
    placements: &[Placement],
) -> Result<Report, String> {
    let name = if single {
        "slowfetch-single"
    } else {
        "slowfetch-batch"
    };
    // The serialized baseline fetches one task per call: fewer tasks keep its run short.
    let base_n = if single { (n / 10).max(1) } else { n };
    let configs: Vec<(Placement, usize)> = placements
        .iter()
        .flat_map(|pl| prefetch.iter().map(move |p| (*pl, *p)))
        .collect();
    let mut ours: Vec<Vec<(Run, Arc<FetchStats>)>> = configs.iter().map(|_| Vec::new()).collect();
    let mut base = Vec::new();
    for _ in 0..repeat {
        for ((placement, p), runs) in configs.iter().zip(&mut ours) {
            runs.push(in_system(slowfetch_ours(*placement, n, k, single, *p))?);
        }
        base.push(slowfetch_base(base_n, k, single)?);
    }
    /// The pair with the median rate.
    fn pick(mut v: Vec<(Run, Arc<FetchStats>)>) -> Option<(Run, Arc<FetchStats>)> {
        v.sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
        let i = v.len() / 2;
        v.into_iter().nth(i)
    }
    let (base, base_stats) = pick(base).ok_or("no run")?;
    let util = |r: &Run| r.avg_busy() / k as f64;
    let (target, goal) = if single {
        ("ours ≥ 0.9", 0.9)
    } else {
        ("ours ≥ 0.95", 0.95)
    };
    let fetches = |s: &FetchStats| {
        format!(
            "{} fetch calls of mean {:.2} ms",
            s.calls.load(Ordering::Relaxed),
            s.mean().as_secs_f64() * 1e3
        )
    };
    let mut report = Report::default();
    for ((placement, p), runs) in configs.iter().zip(ours) {
        let (run, stats) = pick(runs).ok_or("no run")?;
        let config = format!("{}, K={k}, prefetch {p}", placement.name());
        report.rows.push(Row {
            workload: name,
            config: config.clone(),
            metric: "utilization",
            unit: Unit::Plain,
            ours: util(&run),
            base: Some(util(&base)),
            target,
            met: Some(util(&run) >= goal),
        });
        report.details.push(format!(
            "{}; {}",
            run_detail(name, &config, k, &run),
            fetches(&stats)
        ));
    }
    report.details.push(format!(
        "{}; {}",
        run_detail(name, "baseline", k, &base),
        fetches(&base_stats)
    ));
    Ok(report)
}

// ---- cpu -----------------------------------------------------------------------------------

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
fn cpu(
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
        || (0..n as u64).collect(),
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
    let mut report = Report::default();
    for (placement, ours) in &m.ours {
        let config = format!("{}, K={k}", placement.name());
        report.rows.push(Row {
            workload: "cpu",
            config: config.clone(),
            metric: "tasks/s",
            unit: Unit::Rate,
            ours: ours.rate(),
            base: Some(m.base.rate()),
            target: if quiet {
                "ratio ≥ 0.97"
            } else {
                "ratio ≥ 0.97 (machine busy: not judged)"
            },
            met: quiet.then(|| ours.rate() >= 0.97 * m.base.rate()),
        });
        report.rows.push(Row {
            workload: "cpu",
            config,
            metric: "cores busy",
            unit: Unit::Plain,
            ours: cores(ours),
            base: Some(cores(&m.base)),
            target: "",
            met: None,
        });
        report
            .details
            .push(run_detail("cpu", placement.name(), k, ours));
    }
    report
        .details
        .push(run_detail("cpu", "baseline", k, &m.base));
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

// ---- idle ----------------------------------------------------------------------------------

/// What an idle window cost.
#[derive(Debug, Clone)]
struct Idle {
    cpu: Duration,
    ticks: u64,
    fetches: u64,
    /// The threads that ran during the window, busiest first.
    woke: Vec<ThreadStat>,
}

/// Measures CPU time, fetch calls and thread wake-ups over `window`, after a short settling
/// time.
async fn idle_window(window: Duration, fetches: impl Fn() -> u64) -> Result<Idle, String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, t0, f0) = (threads(), cpu_ticks(), fetches());
    tokio::time::sleep(window).await;
    let (after, t1, f1) = (threads(), cpu_ticks(), fetches());
    let (Some(t0), Some(t1)) = (t0, t1) else {
        return Err("cannot read /proc/self/stat (process CPU time)".into());
    };
    if before.is_empty() || after.is_empty() {
        return Err("cannot read /proc/self/task (thread CPU time)".into());
    }
    let mut woke: Vec<ThreadStat> = thread_delta(&before, &after)
        .into_iter()
        .filter(|t| t.slices > 0 || !t.cpu.is_zero())
        .collect();
    woke.sort_by_key(|t| std::cmp::Reverse(t.cpu));
    Ok(Idle {
        cpu: woke.iter().map(|t| t.cpu).sum(),
        ticks: t1.saturating_sub(t0),
        fetches: f1 - f0,
        woke,
    })
}

/// `name: CPU µs ×wake-ups` for each thread that ran.
fn fmt_wakeups(w: &[ThreadStat]) -> String {
    if w.is_empty() {
        return "none".into();
    }
    w.iter()
        .map(|t| {
            format!(
                "{} {:.0} µs ×{}",
                t.name,
                t.cpu.as_secs_f64() * 1e6,
                t.slices
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Our poller (K = 16), idle after one task.
async fn idle_ours(placement: Placement, window: Duration) -> Result<Idle, String> {
    let poller = placement
        .apply(Poller::<u64>::builder().workers(16))
        .start(|_: u64, _cx: TaskContext| ready(Ok::<(), Infallible>(())))
        .map_err(|e| format!("start: {e}"))?;
    let receipt = poller
        .submit_tracked(1)
        .await
        .map_err(|e| format!("submit: {e}"))?;
    within("the first task", receipt.outcome())
        .await?
        .map_err(|e| e.to_string())?;
    let idle = idle_window(window, || poller.stats().fetch_calls).await;
    finish(&poller, Some(1)).await?;
    idle
}

/// The baseline (mpsc + semaphore, K = 16), idle after one task.
fn idle_base(window: Duration) -> Result<Idle, String> {
    let rt = base_runtime()?;
    rt.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let tally = Tally::new(1);
        let t = Arc::clone(&tally);
        let fetches = Arc::new(AtomicU64::new(0));
        let f = Arc::clone(&fetches);
        let dispatcher = tokio::spawn(base_dispatch(
            rx,
            Arc::new(Semaphore::new(16)),
            move |_| {
                let t = Arc::clone(&t);
                async move { t.record(Duration::ZERO) }
            },
            f,
        ));
        tx.send(1).map_err(|_| "the baseline dispatcher stopped")?;
        tally.wait().await?;
        let idle = idle_window(window, || fetches.load(Ordering::Relaxed)).await;
        drop(tx);
        let _ = dispatcher.await;
        idle
    })
}

/// idle: the poller idle for a window: CPU time consumed and fetch calls made.
fn idle(window: Duration, placements: &[Placement]) -> Result<Report, String> {
    let base = idle_base(window)?;
    let mut report = Report::default();
    // The targets are per 5 s; scale a shorter (smoke) window.
    let per_5s = 5.0 / window.as_secs_f64();
    for &placement in placements {
        let ours = in_system(idle_ours(placement, window))?;
        let config = format!("{}, K=16, {:.1} s", placement.name(), window.as_secs_f64());
        report.rows.push(Row {
            workload: "idle",
            config: config.clone(),
            metric: "CPU time",
            unit: Unit::Ms,
            ours: ours.cpu.as_secs_f64() * 1e3,
            base: Some(base.cpu.as_secs_f64() * 1e3),
            target: "< 10 ms per 5 s",
            met: Some(ours.cpu.as_secs_f64() * 1e3 * per_5s < 10.0),
        });
        report.rows.push(Row {
            workload: "idle",
            config,
            metric: "fetch calls",
            unit: Unit::Count,
            ours: ours.fetches as f64,
            base: Some(base.fetches as f64),
            target: "0",
            met: Some(ours.fetches == 0),
        });
        report.details.push(format!(
            "idle {}: {} clock ticks of process CPU in /proc/self/stat (10 ms each); threads that \
             ran (CPU, times scheduled in): {} (the measuring thread included)",
            placement.name(),
            ours.ticks,
            fmt_wakeups(&ours.woke)
        ));
    }
    report.details.push(format!(
        "idle baseline: {} clock ticks; threads that ran: {}; its fetch calls are dispatch-loop \
         `recv` calls",
        base.ticks,
        fmt_wakeups(&base.woke)
    ));
    Ok(report)
}

// ---- memory --------------------------------------------------------------------------------

/// Submits per message when filling our queue.
const CHUNK: usize = 10_000;

/// In a child process: queue `n` u64 tasks in our poller (1 worker, blocked by its first task)
/// and return the RSS growth.
async fn memory_ours(n: usize) -> Result<u64, String> {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let (g, s) = (Arc::clone(&gate), Arc::clone(&started));
    let poller = Poller::<u64>::builder()
        .workers(1)
        .capacity(n + 1)
        .start(move |x: u64, _cx: TaskContext| {
            let (g, s) = (Arc::clone(&g), Arc::clone(&s));
            async move {
                if x == 0 {
                    s.notify_one();
                    let _ = g.acquire().await;
                }
                Ok::<(), Infallible>(())
            }
        })
        .map_err(|e| format!("start: {e}"))?;
    poller.submit(0).await.map_err(|e| format!("submit: {e}"))?;
    within("the first task starting", started.notified()).await?;
    let before = rss_bytes().ok_or("cannot read /proc/self/status")?;
    let mut next = 1u64;
    while next <= n as u64 {
        let end = (next + CHUNK as u64).min(n as u64 + 1);
        poller
            .submit_batch((next..end).collect())
            .await
            .map_err(|e| format!("submit: {e}"))?;
        next = end;
    }
    let after = rss_bytes().ok_or("cannot read /proc/self/status")?;
    // Waiting: in the source's queue, or dispatched ahead to the executor (`buffered`).
    let stats = poller.stats();
    let queued = stats.queued.map(|q| q + stats.buffered);
    gate.add_permits(1);
    finish(&poller, None).await?;
    if queued != Some(n as u64) {
        return Err(format!("{queued:?} tasks waiting, expected {n}"));
    }
    Ok(after.saturating_sub(before))
}

/// In a child process: queue `n` u64 tasks in the baseline's mpsc (1 permit, held by a blocked
/// first task) and return the RSS growth.
fn memory_base(n: usize) -> Result<u64, String> {
    let rt = base_runtime()?;
    rt.block_on(async {
        let gate = Arc::new(Semaphore::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let (g, s) = (Arc::clone(&gate), Arc::clone(&started));
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let dispatcher = tokio::spawn(base_dispatch(
            rx,
            Arc::new(Semaphore::new(1)),
            move |x| {
                let (g, s) = (Arc::clone(&g), Arc::clone(&s));
                async move {
                    if x == 0 {
                        s.notify_one();
                        let _ = g.acquire().await;
                    }
                }
            },
            Arc::new(AtomicU64::new(0)),
        ));
        tx.send(0).map_err(|_| "the baseline dispatcher stopped")?;
        within("the first task starting", started.notified()).await?;
        let before = rss_bytes().ok_or("cannot read /proc/self/status")?;
        for x in 1..=n as u64 {
            tx.send(x).map_err(|_| "the baseline dispatcher stopped")?;
        }
        let after = rss_bytes().ok_or("cannot read /proc/self/status")?;
        dispatcher.abort();
        gate.close();
        Ok(after.saturating_sub(before))
    })
}

/// Runs one side of the memory workload in a fresh process and reads its RSS growth.
fn memory_child(side: Side, n: usize) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let role = match side {
        Side::Ours => "memory-ours",
        Side::Baseline => "memory-baseline",
    };
    let mut child = Command::new(exe)
        .args(["--child", role, "--n", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the {role} child: {e}"))?;
    let started = Instant::now();
    // Poll for the exit so a stuck child is killed instead of hanging the suite. (Its output
    // is a line or two: it cannot fill the pipe and block.)
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < STUCK => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the {role} child was stuck for {} s",
                    STUCK.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for the {role} child: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading the {role} child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the {role} child failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("rss_delta_bytes="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("the {role} child printed no figure: {stdout}"))
}

/// memory: bytes per queued task (RSS growth ÷ N) with N u64 tasks queued behind a blocked worker.
fn memory(n: usize) -> Result<Report, String> {
    let ours = memory_child(Side::Ours, n)? as f64 / n as f64;
    let base = memory_child(Side::Baseline, n)? as f64 / n as f64;
    let payload = std::mem::size_of::<u64>() as f64;
    let mut report = Report::default();
    report.rows.push(Row {
        workload: "memory",
        config: format!("{n} queued u64 tasks"),
        metric: "bytes/task",
        unit: Unit::Bytes,
        ours,
        base: Some(base),
        target: "",
        met: None,
    });
    report.rows.push(Row {
        workload: "memory",
        config: format!("{n} queued u64 tasks"),
        metric: "bytes/task beyond payload",
        unit: Unit::Bytes,
        ours: ours - payload,
        base: Some(base - payload),
        target: "≤ 64 B",
        met: Some(ours - payload <= 64.0),
    });
    report.details.push(format!(
        "memory: RSS growth while queueing, each side in a fresh process; for scale, \
         size_of::<Task<u64>>() = {} B (the envelope a source hands out; the in-memory queue \
         keeps its own, smaller entries)",
        std::mem::size_of::<Task<u64>>()
    ));
    Ok(report)
}

// ---- latency -------------------------------------------------------------------------------

/// Submissions per second in the latency workload.
const LATENCY_RATE: u64 = 1_000;

/// Sorted submit→start latencies from the per-task slots.
fn sorted(slots: &[AtomicU64]) -> Vec<Duration> {
    let mut v: Vec<Duration> = slots
        .iter()
        .map(|s| Duration::from_nanos(s.load(Ordering::Relaxed)))
        .collect();
    v.sort();
    v
}

/// Submits `count` tasks one at a time at [`LATENCY_RATE`] to our poller (K = 16); each task
/// stores now − the `Instant` its payload carries.
async fn latency_ours(placement: Placement, count: usize) -> Result<Vec<Duration>, String> {
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let tally = Tally::new(count);
    let (s, t) = (Arc::clone(&slots), Arc::clone(&tally));
    let poller = placement
        .apply(Poller::<(usize, Instant)>::builder().workers(16))
        .start(move |(i, at): (usize, Instant), _cx: TaskContext| {
            let waited = at.elapsed();
            if let Some(slot) = s.get(i) {
                slot.store(waited.as_nanos() as u64, Ordering::Relaxed);
            }
            t.record(Duration::ZERO);
            ready(Ok::<(), Infallible>(()))
        })
        .map_err(|e| format!("start: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
    for i in 0..count {
        tick.tick().await;
        poller
            .submit((i, Instant::now()))
            .await
            .map_err(|e| format!("submit: {e}"))?;
    }
    tally.wait().await?;
    finish(&poller, Some(count)).await?;
    Ok(sorted(&slots))
}

/// The same on the baseline: one `send` per tick into its mpsc.
fn latency_base(count: usize) -> Result<Vec<Duration>, String> {
    let rt = base_runtime()?;
    rt.block_on(async {
        let slots: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let tally = Tally::new(count);
        let (s, t) = (Arc::clone(&slots), Arc::clone(&tally));
        let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
        let dispatcher = tokio::spawn(base_dispatch(
            rx,
            Arc::new(Semaphore::new(16)),
            move |(i, at): (usize, Instant)| {
                let (s, t) = (Arc::clone(&s), Arc::clone(&t));
                async move {
                    let waited = at.elapsed();
                    if let Some(slot) = s.get(i) {
                        slot.store(waited.as_nanos() as u64, Ordering::Relaxed);
                    }
                    t.record(Duration::ZERO);
                }
            },
            Arc::new(AtomicU64::new(0)),
        ));
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
        for i in 0..count {
            tick.tick().await;
            tx.send((i, Instant::now()))
                .map_err(|_| "the baseline dispatcher stopped")?;
        }
        tally.wait().await?;
        drop(tx);
        let _ = dispatcher.await;
        Ok(sorted(&slots))
    })
}

/// latency: tasks submitted one at a time at a steady rate: submit→start p50 / p99.
fn latency(count: usize, placements: &[Placement]) -> Result<Report, String> {
    let base = latency_base(count)?;
    let mut report = Report::default();
    for &placement in placements {
        let ours = in_system(latency_ours(placement, count))?;
        for (metric, q) in [("submit→start p50", 0.5), ("submit→start p99", 0.99)] {
            report.rows.push(Row {
                workload: "latency",
                config: format!("{}, K=16", placement.name()),
                metric,
                unit: Unit::Us,
                ours: quantile(&ours, q).as_secs_f64() * 1e6,
                base: Some(quantile(&base, q).as_secs_f64() * 1e6),
                target: "",
                met: None,
            });
        }
        report.details.push(format!(
            "latency {}: max {:.0} µs (baseline max {:.0} µs)",
            placement.name(),
            quantile(&ours, 1.0).as_secs_f64() * 1e6,
            quantile(&base, 1.0).as_secs_f64() * 1e6
        ));
    }
    report.details.push(format!(
        "latency: {count} tasks submitted one at a time at {LATENCY_RATE}/s; each task measures \
         now − the Instant in its payload"
    ));
    Ok(report)
}

// ---- main ----------------------------------------------------------------------------------

/// The machine, for the header: core count, CPU model, load average.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cores} cores, {model}, load average {load}")
}

/// Runs one workload.
fn run_workload(w: Workload, opts: &Opts) -> Result<Report, String> {
    let s = &opts.sizes;
    // Both placements where the trade-off matters; the default placement elsewhere.
    let both = [Placement::Current, Placement::Own];
    let placements = |default: &[Placement]| opts.placements.clone().unwrap_or(default.to_vec());
    let k = |default: usize| opts.workers.unwrap_or(default);
    match w {
        Workload::Noop => noop(s.noop, k(16), opts.repeat, &placements(&both)),
        Workload::Sleep => sleep(s.sleep, k(100), opts.repeat, &placements(&[Placement::Own])),
        Workload::SlowfetchBatch | Workload::SlowfetchSingle => {
            let single = w == Workload::SlowfetchSingle;
            let default = if single {
                DEFAULT_PREFETCH_SINGLE
            } else {
                DEFAULT_PREFETCH_BATCH
            };
            let p = opts.prefetch.clone().unwrap_or_else(|| vec![default]);
            slowfetch(
                s.slowfetch,
                k(50),
                opts.repeat,
                single,
                &p,
                &placements(&[Placement::Own]),
            )
        }
        Workload::Cpu => cpu(s.cpu, k(4), opts.repeat, opts.smoke, &placements(&both)),
        Workload::Idle => idle(s.idle, &placements(&both)),
        Workload::Memory => memory(s.memory),
        Workload::Latency => latency(s.latency, &placements(&both)),
    }
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(e) = opts.executors {
        EXECUTORS.store(e, Ordering::Relaxed);
    }
    if let Some(side) = opts.child {
        let n = opts.sizes.memory;
        let res = match side {
            Side::Ours => in_system(memory_ours(n)),
            Side::Baseline => memory_base(n),
        };
        return match res {
            Ok(bytes) => {
                println!("rss_delta_bytes={bytes}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }

    println!("machine: {}", machine());
    if opts.smoke {
        println!("smoke run: tiny sizes, the figures mean nothing");
    }
    if let Some(e) = opts.executors {
        println!("own arbiters: {e} executors (--executors)");
    }
    let suite = Instant::now();
    let (mut rows, mut details, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for &w in &opts.workloads {
        let started = Instant::now();
        eprint!("running {} ... ", w.name());
        match run_workload(w, &opts) {
            Ok(report) => {
                eprintln!("{:.1} s", started.elapsed().as_secs_f64());
                rows.extend(report.rows);
                details.extend(report.details);
            }
            Err(e) => {
                eprintln!("FAILED: {e}");
                failed.push(format!("{}: {e}", w.name()));
            }
        }
    }
    println!();
    print_table(&rows);
    println!();
    for d in &details {
        println!("- {d}");
    }
    println!("\nsuite took {:.1} s", suite.elapsed().as_secs_f64());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failed {
            eprintln!("failed: {f}");
        }
        ExitCode::FAILURE
    }
}
