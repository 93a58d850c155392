//! The command line: which workloads to run, and how big.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::harness::{Placement, AHEAD, HISTORY};

/// Printed for `--help` and, on stderr, for bad input.
pub(crate) const USAGE: &str = "\
usage: bench [--workload W] [--n N] [--repeat R] [--prefetch P[,P...]] [--placement X]
             [--workers K] [--executors E] [--ahead A] [--history H] [--smoke]

  --workload W   noop | sleep | slowfetch-batch | slowfetch-single | slowfetch | cpu | idle
                 | memory | latency | adaptive | durable-pg | durable-sqlite
                 | durable-pg-latency | durable | durable-pg-pace | durable-pg-scale | all
                 (default: all; may be given more than once; the durable ones need the bench
                 built with `--features postgres,sqlite`, and durable-pg* ACTIX_POLLER_PG_URL)
  --n N          task count for every workload that has one (1 to 100000000)
  --repeat R     runs of each throughput workload (and of adaptive); the median is reported
                 (default 3, smoke 1)
  --prefetch P   prefetch value(s) for the slowfetch workloads, comma-separated: a sweep;
                 `auto` = the builder's default, tuned (default: auto)
  --placement X  current | own | both: where our executors run, for every workload
                 (default: both for noop, cpu, idle, latency; own for the others)
  --workers K    K for noop, sleep, slowfetch and cpu (default 16, 100, 50, 4)
  --executors E  executors on their own arbiters (default: one per core)
  --ahead A      tasks each executor may hold queued beyond its credits (default: the crate's,
                 DEFAULT_DISPATCH_AHEAD, adapting below it)
  --history H    final states the in-memory source keeps for `Poller::status` (default:
                 the crate's, 10000; 0 keeps none)
  --smoke        tiny sizes: checks that every workload works; its figures mean nothing
  --help         this text
";

/// A workload of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    Noop,
    Sleep,
    SlowfetchBatch,
    SlowfetchSingle,
    Cpu,
    Idle,
    Memory,
    Latency,
    Adaptive,
    DurablePg,
    DurableSqlite,
    DurablePgLatency,
    DurablePgPace,
    DurablePgScale,
}

/// Every workload, in the order `all` runs them (the durable ones only when the bench is built
/// with their feature).
pub(crate) const ALL: [Workload; 14] = [
    Workload::Noop,
    Workload::Sleep,
    Workload::SlowfetchBatch,
    Workload::SlowfetchSingle,
    Workload::Cpu,
    Workload::Idle,
    Workload::Memory,
    Workload::Latency,
    Workload::Adaptive,
    Workload::DurablePg,
    Workload::DurableSqlite,
    Workload::DurablePgLatency,
    Workload::DurablePgPace,
    Workload::DurablePgScale,
];

impl Workload {
    /// The name used on the command line and in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Sleep => "sleep",
            Workload::SlowfetchBatch => "slowfetch-batch",
            Workload::SlowfetchSingle => "slowfetch-single",
            Workload::Cpu => "cpu",
            Workload::Idle => "idle",
            Workload::Memory => "memory",
            Workload::Latency => "latency",
            Workload::Adaptive => "adaptive",
            Workload::DurablePg => "durable-pg",
            Workload::DurableSqlite => "durable-sqlite",
            Workload::DurablePgLatency => "durable-pg-latency",
            Workload::DurablePgPace => "durable-pg-pace",
            Workload::DurablePgScale => "durable-pg-scale",
        }
    }

    /// Whether this build can run it (the durable workloads need their cargo feature).
    // A `match`, not `matches!`: which arms are true depends on the features (with none, every
    // durable arm is false, which is what clippy's lint sees).
    #[allow(clippy::match_like_matches_macro)]
    pub(crate) fn built(self) -> bool {
        match self {
            Workload::DurablePg
            | Workload::DurablePgLatency
            | Workload::DurablePgPace
            | Workload::DurablePgScale => {
                cfg!(feature = "postgres")
            }
            Workload::DurableSqlite => cfg!(feature = "sqlite"),
            _ => true,
        }
    }

    /// The workloads a command-line name stands for.
    pub(crate) fn parse(name: &str) -> Option<Vec<Workload>> {
        match name {
            "all" => Some(ALL.iter().copied().filter(|w| w.built()).collect()),
            "slowfetch" => Some(vec![Workload::SlowfetchBatch, Workload::SlowfetchSingle]),
            "durable" => Some(vec![
                Workload::DurablePg,
                Workload::DurableSqlite,
                Workload::DurablePgLatency,
            ]),
            _ => ALL.iter().find(|w| w.name() == name).map(|w| vec![*w]),
        }
    }
}

/// How big each workload is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub(crate) noop: usize,
    pub(crate) sleep: usize,
    pub(crate) slowfetch: usize,
    pub(crate) cpu: usize,
    pub(crate) idle: Duration,
    pub(crate) memory: usize,
    pub(crate) latency: usize,
    pub(crate) durable: usize,
    pub(crate) durable_latency: usize,
}

impl Sizes {
    /// The full suite: a few minutes on a 2-core machine.
    pub(crate) const FULL: Sizes = Sizes {
        noop: 200_000,
        sleep: 50_000,
        slowfetch: 10_000,
        cpu: 20_000,
        idle: Duration::from_secs(5),
        memory: 1_000_000,
        latency: 2_000,
        durable: 50_000,
        durable_latency: 2_000,
    };

    /// `--smoke`: tiny, seconds in all.
    pub(crate) const SMOKE: Sizes = Sizes {
        noop: 1_000,
        sleep: 200,
        slowfetch: 200,
        cpu: 200,
        idle: Duration::from_millis(200),
        memory: 10_000,
        latency: 50,
        durable: 500,
        durable_latency: 20,
    };

    /// Every task count set to `n`.
    pub(crate) fn with_n(mut self, n: usize) -> Sizes {
        self.noop = n;
        self.sleep = n;
        self.slowfetch = n;
        self.cpu = n;
        self.memory = n;
        self.latency = n;
        self.durable = n;
        self.durable_latency = n;
        self
    }
}

/// Which side a `--child` process measures (the memory workload runs in fresh processes, so the
/// allocator's leftovers from one side do not hide the other's growth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Ours,
    Baseline,
}

/// What the command line asked for.
#[derive(Debug)]
pub(crate) struct Opts {
    pub(crate) workloads: Vec<Workload>,
    pub(crate) sizes: Sizes,
    pub(crate) smoke: bool,
    pub(crate) repeat: usize,
    pub(crate) prefetch: Option<Vec<Option<usize>>>,
    /// `--placement`: run every workload on these placements instead of its defaults.
    pub(crate) placements: Option<Vec<Placement>>,
    /// `--workers`: K for the throughput workloads instead of each one's own.
    pub(crate) workers: Option<usize>,
    /// `--executors`: executors for the own-arbiters placement.
    pub(crate) executors: Option<usize>,
    /// Internal: measure one side of the memory workload and print it.
    pub(crate) child: Option<Side>,
}

/// The outcome of parsing the command line.
#[derive(Debug)]
pub(crate) enum Parsed {
    Run(Opts),
    Help,
}

/// Parses the arguments (without the program name). Never panics: bad input is an `Err`.
pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
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
                    .map(|p| match p {
                        "auto" => Ok(None),
                        p => count(p, "--prefetch", 0, MAX_N).map(Some),
                    })
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
            "--history" => {
                let h = count(&value("a count")?, "--history", 0, 100_000_000)?;
                HISTORY.store(h, Ordering::Relaxed);
            }
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
        workloads = ALL.iter().copied().filter(|w| w.built()).collect();
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
pub(crate) const MAX_N: usize = 100_000_000;

/// A count in `min..=max`.
pub(crate) fn count(v: &str, flag: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not a count from {min} to {max}")),
    }
}
