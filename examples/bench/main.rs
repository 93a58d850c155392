//! The benchmark suite: our poller against a raw tokio baseline, workload by workload.
//!
//! ```text
//! cargo run --release --example bench -- --workload all
//! cargo run --release --example bench -- --workload noop --n 200000
//! cargo run --release --example bench -- --workload slowfetch-single --prefetch 0,8,16,32
//! cargo run --release --example bench -- --workload adaptive --repeat 3
//! cargo run --release --example bench --features postgres -- --workload durable-pg-scale
//! cargo run --release --example bench -- --smoke          # tiny sizes: checks the program works
//! ```
//!
//! Every workload but `adaptive` runs on our poller ("ours") and on a baseline built from tokio
//! alone (`adaptive` compares its limiters with a sweep of fixed `workers` instead): an
//! unbounded mpsc queue, a `Semaphore(K)` and one `tokio::spawn` per task on a multi-thread
//! runtime with 2 workers, fetching inside its dispatch loop. The table prints ours, the
//! baseline and ours ÷ baseline: ratios are what to compare between runs, absolute figures drift
//! with the machine and its load. `docs/benchmarks.md` says what each figure means and lists the
//! targets.
//!
//! Nothing here asserts a timing: a missed target is printed, never a failure. The program exits
//! 1 only when a workload did not work (a task lost, a poller that would not start), and 2 on bad
//! command-line input.
//!
//! The files: `cli.rs` parses the command line; `harness/` holds what every workload shares
//! (where executors run, clocks and tallies, `/proc` readings, the queue runners for our poller
//! and the baseline, the results table); `workloads/` holds one file per workload.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

mod cli;
mod harness;
mod workloads;

use cli::{parse_args, Parsed, Side, USAGE};
use harness::{in_system, print_table, EXECUTORS};
use workloads::memory::{memory_base, memory_ours};
use workloads::run_workload;

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

fn main() -> ExitCode {
    // A process of durable-pg-scale's shared queue: it drains, driven over stdin and stdout.
    if let Ok(schema) = std::env::var(workloads::durable_scale::CHILD) {
        return match workloads::durable_scale::drain_child(&schema) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench drain child: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    // The `metrics` feature's cost with a real recorder behind it (docs/benchmarks.md): the
    // pollers register their metrics at start, so the recorder goes in first.
    #[cfg(feature = "metrics")]
    if std::env::var_os("BENCH_PROMETHEUS").is_some() {
        if let Err(e) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
            eprintln!("bench: no Prometheus recorder: {e}");
            return ExitCode::FAILURE;
        }
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
    let mut blocks = Vec::new();
    for &w in &opts.workloads {
        let started = Instant::now();
        eprint!("running {} ... ", w.name());
        match run_workload(w, &opts) {
            Ok(report) => {
                eprintln!("{:.1} s", started.elapsed().as_secs_f64());
                rows.extend(report.rows);
                details.extend(report.details);
                blocks.extend(report.blocks);
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
    for b in &blocks {
        println!("\n{b}");
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
