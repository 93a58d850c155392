//! One file per workload; [`run_workload`] picks each one's sizes, K and placements.

use crate::cli::{Opts, Workload};
use crate::harness::{Placement, Report};

pub(crate) mod adaptive;
pub(crate) mod cpu;
pub(crate) mod durable;
pub(crate) mod durable_latency;
pub(crate) mod durable_pace;
pub(crate) mod durable_scale;
pub(crate) mod idle;
pub(crate) mod latency;
pub(crate) mod memory;
pub(crate) mod noop;
pub(crate) mod sleep;
pub(crate) mod slowfetch;

use adaptive::{adaptive, Timing};
use cpu::cpu;
use durable::{durable, Store};
use durable_latency::durable_latency;
use durable_pace::durable_pace;
use durable_scale::durable_scale;
use idle::idle;
use latency::latency;
use memory::memory;
use noop::noop;
use sleep::sleep;
use slowfetch::slowfetch;

/// Runs one workload.
pub(crate) fn run_workload(w: Workload, opts: &Opts) -> Result<Report, String> {
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
            // The builder's default (tuned) unless `--prefetch` says otherwise.
            let p = opts.prefetch.clone().unwrap_or_else(|| vec![None]);
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
        Workload::Adaptive => {
            let timing = if opts.smoke {
                Timing::SMOKE
            } else {
                Timing::FULL
            };
            adaptive(opts.repeat, timing)
        }
        Workload::DurablePg => durable(Store::Postgres, s.durable, k(16), opts.repeat),
        Workload::DurableSqlite => durable(Store::Sqlite, s.durable, k(16), opts.repeat),
        Workload::DurablePgLatency => durable_latency(s.durable_latency, opts.repeat),
        Workload::DurablePgPace => durable_pace(s.durable, k(16), opts.repeat),
        Workload::DurablePgScale => durable_scale(s.durable, opts.repeat, opts.smoke),
    }
}
