//! adaptive: an adaptive limit against a simulated downstream with a hidden capacity C (issue 15).
//!
//! The downstream answers a call in [`BASE`] (plus up to [`JITTER`]) while at most C calls are
//! in flight, in `BASE × in_flight ÷ C` past that, and answers "overloaded" at once past 2C (the handler turns
//! that into `Backpressure::pause_for(0)`, the overload outcome the limiter sees; the task runs
//! again without losing an attempt). The poller runs with the builder's defaults plus the
//! limiter, starting at `min` = 1 and not told C. One run, for each C:
//!
//! 1. a sweep of fixed `workers` values (C/2, C, 3C/2, 2C) without a limiter: the best
//!    throughput, and the unloaded latency (the p50 at C/2);
//! 2. for each limiter: C for `settle`, where the second half is the settled window (the
//!    limit's mean / min / max, p99 latency, overloaded answers, throughput); then C doubles
//!    and, once the limit has followed (or after `follow_max`), halves again: how long the limit
//!    takes to follow each change.
//!
//! "Followed" at `t`: the mean limit over `[t, t + hold]` is within ±20 % of where this limiter
//! settled at C (its mean ÷ C), times the new capacity: for a limiter that settles at C, within
//! ±20 % of the new C. "Finds C in": the same, from the start, within ±20 % of C.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_poller::{
    Aimd, Backpressure, BoxError, Gradient, Limiter, Poller, PollerBuilder, Sample, TaskContext,
};

use crate::harness::{finish, in_system, quantile, Report, Row, Unit};

/// The downstream's latency with at most C calls in flight.
const BASE: Duration = Duration::from_millis(5);
/// The limiters' bounds; `workers` (the ceiling) is set to `MAX`.
const MIN: usize = 1;
const MAX: usize = 1024;
/// Each call's latency varies by up to this much. Without it, calls one after another start
/// in step with tokio's 1 ms timer ticks and take less than calls at random phases: the
/// limiters would read the timer's rounding as load.
const JITTER: Duration = Duration::from_millis(1);
/// How often the limit is sampled and the queue topped up.
const TICK: Duration = Duration::from_millis(10);
/// Tasks kept queued, so that the limit, never the queue, bounds what runs.
const BACKLOG: usize = 4096;
/// "Within ±20 % of C".
const BAND: f64 = 0.2;

/// The limiters compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algo {
    /// `Aimd::new(MIN, MAX)`, defaults: learns from overload only.
    Aimd,
    /// `Aimd::new(MIN, MAX).latency_tolerance(1.1)`.
    AimdTolerance,
    /// `Gradient::new(MIN, MAX)`, defaults.
    Gradient,
}

impl Algo {
    const ALL: [Algo; 3] = [Algo::Aimd, Algo::AimdTolerance, Algo::Gradient];

    fn name(self) -> &'static str {
        match self {
            Algo::Aimd => "AIMD",
            Algo::AimdTolerance => "AIMD, tolerance 1.1",
            Algo::Gradient => "Gradient",
        }
    }

    fn limiter(self) -> Box<dyn Limiter> {
        match self {
            Algo::Aimd => Box::new(Aimd::new(MIN, MAX)),
            Algo::AimdTolerance => Box::new(Aimd::new(MIN, MAX).latency_tolerance(1.1)),
            Algo::Gradient => Box::new(Gradient::new(MIN, MAX)),
        }
    }

    /// The builder with this limiter, traced into `BENCH_ADAPTIVE_TRACE` if set.
    fn apply(
        self,
        b: PollerBuilder<u64>,
        ds: &Arc<Downstream>,
        label: String,
    ) -> PollerBuilder<u64> {
        match std::env::var_os("BENCH_ADAPTIVE_TRACE") {
            Some(dir) => b.adaptive(Traced {
                inner: self.limiter(),
                ds: Arc::clone(ds),
                path: std::path::Path::new(&dir).join(format!("{label}.csv")),
                rows: Vec::new(),
            }),
            None => b.adaptive(BoxedLimiter(self.limiter())),
        }
    }
}

/// A boxed limiter as a [`Limiter`] (the builder takes `impl Limiter`).
#[derive(Debug)]
struct BoxedLimiter(Box<dyn Limiter>);

impl Limiter for BoxedLimiter {
    fn limit(&self) -> usize {
        self.0.limit()
    }
    fn observe(&mut self, sample: Sample) -> usize {
        self.0.observe(sample)
    }
}

/// Diagnosis (`BENCH_ADAPTIVE_TRACE=dir`): every sample the limiter sees and the limit it
/// answers, with the downstream's capacity at the time, written to `dir/label.csv` when the
/// poller drops it.
#[derive(Debug)]
struct Traced {
    inner: Box<dyn Limiter>,
    ds: Arc<Downstream>,
    path: std::path::PathBuf,
    /// (µs since the epoch, latency µs, overloaded, in_flight, capacity, limit after)
    rows: Vec<(u64, u64, bool, usize, usize, usize)>,
}

impl Limiter for Traced {
    fn limit(&self) -> usize {
        self.inner.limit()
    }
    fn observe(&mut self, s: Sample) -> usize {
        let next = self.inner.observe(s);
        self.rows.push((
            self.ds.now().as_micros() as u64,
            s.latency.as_micros() as u64,
            s.overloaded,
            s.in_flight,
            self.ds.capacity.load(Ordering::Relaxed),
            next,
        ));
        next
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let mut out = String::from("t_us,latency_us,overloaded,in_flight,capacity,limit\n");
        for (t, l, o, n, c, lim) in &self.rows {
            out.push_str(&format!("{t},{l},{},{n},{c},{lim}\n", u8::from(*o)));
        }
        if let Err(e) = std::fs::write(&self.path, out) {
            eprintln!("trace {}: {e}", self.path.display());
        }
    }
}

/// How long each part of a run lasts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// The capacities C.
    pub(crate) caps: &'static [usize],
    /// At C from `min`; the second half is the settled window.
    pub(crate) settle: Duration,
    /// Each fixed `workers` value of the sweep; the last two thirds are measured.
    pub(crate) sweep: Duration,
    /// The window over which the mean limit must be within the band to count as followed.
    pub(crate) hold: Duration,
    /// How long the limit may take to follow a change before the run goes on without it.
    pub(crate) follow_max: Duration,
}

impl Timing {
    /// The full workload: about a minute per run on a 2-core machine.
    pub(crate) const FULL: Timing = Timing {
        caps: &[8, 32, 128],
        settle: Duration::from_secs(4),
        sweep: Duration::from_millis(1500),
        hold: Duration::from_secs(1),
        follow_max: Duration::from_secs(30),
    };

    /// `--smoke`: checks that the workload works.
    pub(crate) const SMOKE: Timing = Timing {
        caps: &[8],
        settle: Duration::from_millis(400),
        sweep: Duration::from_millis(200),
        hold: Duration::from_millis(100),
        follow_max: Duration::from_millis(500),
    };
}

/// One call's end, as the downstream saw it.
#[derive(Clone, Copy, Debug)]
struct Call {
    /// Since the downstream's epoch.
    end: Duration,
    latency: Duration,
    /// What the model asked for (the sleep): `latency` minus this is the timer's rounding and
    /// the machine's scheduling (CPU contention), not the downstream's load.
    model: Duration,
    overloaded: bool,
}

/// The simulated downstream.
#[derive(Debug)]
struct Downstream {
    epoch: Instant,
    capacity: AtomicUsize,
    in_flight: AtomicUsize,
    /// Calls so far: picks each call's jitter.
    count: AtomicUsize,
    calls: Mutex<Vec<Call>>,
}

impl Downstream {
    fn new(capacity: usize) -> Arc<Downstream> {
        Arc::new(Downstream {
            epoch: Instant::now(),
            capacity: AtomicUsize::new(capacity),
            in_flight: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// One call: `BASE` up to C in flight, `BASE × in_flight ÷ C` past it, plus a jitter spread
    /// evenly over [0, [`JITTER`]); "overloaded" at once past 2C.
    async fn call(&self) -> Result<(), BoxError> {
        let started = Instant::now();
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let c = self.capacity.load(Ordering::Relaxed).max(1);
        let overloaded = n > 2 * c;
        let mut model = Duration::ZERO;
        if !overloaded {
            // The golden-ratio sequence: evenly spread, no two calls in a row alike.
            let k = self.count.fetch_add(1, Ordering::Relaxed) as f64;
            let jitter = JITTER.mul_f64((k * 0.618_033_988_7).fract());
            model = BASE.mul_f64(n.max(c) as f64 / c as f64) + jitter;
            tokio::time::sleep(model).await;
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let call = Call {
            end: self.now(),
            latency: started.elapsed(),
            model,
            overloaded,
        };
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        if overloaded {
            Err(Backpressure::pause_for(Duration::ZERO).into())
        } else {
            Ok(())
        }
    }

    /// What the calls that ended in `[from, to)` saw.
    fn window(&self, from: Duration, to: Duration) -> Window {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let mut latencies = Vec::new();
        let mut models = Vec::new();
        let mut excess = Vec::new();
        let mut overloaded = 0;
        for c in calls.iter().filter(|c| c.end >= from && c.end < to) {
            if c.overloaded {
                overloaded += 1;
            } else {
                latencies.push(c.latency);
                models.push(c.model);
                excess.push(c.latency.saturating_sub(c.model));
            }
        }
        latencies.sort();
        models.sort();
        excess.sort();
        let secs = (to - from).as_secs_f64();
        Window {
            throughput: latencies.len() as f64 / secs,
            p50: quantile(&latencies, 0.5),
            p99: quantile(&latencies, 0.99),
            model_p50: quantile(&models, 0.5),
            excess_p50: quantile(&excess, 0.5),
            excess_p99: quantile(&excess, 0.99),
            overloaded: overloaded as f64 / (overloaded + latencies.len()).max(1) as f64,
        }
    }
}

/// What the downstream saw over a window.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Calls answered (not "overloaded") per second.
    throughput: f64,
    /// Latency of the answered calls.
    p50: Duration,
    p99: Duration,
    /// The modelled latency's p50 (the downstream's load alone).
    model_p50: Duration,
    /// Measured − modelled latency, per call: the timer and the machine, not the downstream.
    excess_p50: Duration,
    excess_p99: Duration,
    /// Overloaded answers ÷ all calls.
    overloaded: f64,
}

/// The limit every [`TICK`], since the downstream's epoch.
type Trace = Vec<(Duration, usize)>;

/// Runs until `done(trace, now)`, sampling the limit into `trace` and keeping [`BACKLOG`] tasks
/// queued.
async fn drive(
    poller: &Poller<u64>,
    ds: &Downstream,
    trace: &mut Trace,
    mut done: impl FnMut(&Trace, Duration) -> bool,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let stats = poller.stats();
        let now = ds.now();
        trace.push((now, stats.limit as usize));
        if done(trace, now) {
            return Ok(());
        }
        let waiting = stats.queued.unwrap_or(0) + stats.buffered;
        let short = BACKLOG.saturating_sub(waiting as usize);
        if short > 0 {
            poller
                .submit_batch(vec![0; short])
                .await
                .map_err(|e| format!("submit: {e}"))?;
        }
    }
}

/// Whether `mean` is within [`BAND`] of `target`.
fn in_band(mean: f64, target: f64) -> bool {
    (mean / target - 1.0).abs() <= BAND
}

/// The first time at or after `from` at which the limit, and its mean over the next `hold`, are
/// within [`BAND`] of `target`, as an offset from `from`; `None` if no such window has completed yet.
fn followed(trace: &Trace, from: Duration, hold: Duration, target: f64) -> Option<Duration> {
    let start = trace.iter().position(|(t, _)| *t >= from)?;
    let last = trace.last()?.0;
    for (i, &(t, l)) in trace.iter().enumerate().skip(start) {
        if t + hold > last {
            return None;
        }
        if !in_band(l as f64, target) {
            continue;
        }
        let window = &trace[i..];
        let n = window.iter().take_while(|(u, _)| *u <= t + hold).count();
        let mean = window[..n].iter().map(|(_, l)| *l).sum::<usize>() as f64 / n.max(1) as f64;
        if in_band(mean, target) {
            return Some(t - from);
        }
    }
    None
}

/// The mean, min and max limit over `[from, to]`.
fn limit_stats(trace: &Trace, from: Duration, to: Duration) -> (f64, usize, usize) {
    let v: Vec<usize> = trace
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, l)| *l)
        .collect();
    let mean = v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let min = v.iter().copied().min().unwrap_or(0);
    let max = v.iter().copied().max().unwrap_or(0);
    (mean, min, max)
}

/// A poller with the builder's defaults (and `workers`) calling `ds`.
fn start(builder: PollerBuilder<u64>, ds: &Arc<Downstream>) -> Result<Poller<u64>, String> {
    let ds = Arc::clone(ds);
    builder
        .start(move |_: u64, _cx: TaskContext| {
            let ds = Arc::clone(&ds);
            async move { ds.call().await }
        })
        .map_err(|e| format!("start: {e}"))
}

/// One fixed `workers` value at capacity `c`: what the downstream saw over the measured part.
async fn fixed(c: usize, workers: usize, t: Timing) -> Result<Window, String> {
    let ds = Downstream::new(c);
    let poller = start(Poller::<u64>::builder().workers(workers), &ds)?;
    let mut trace = Trace::new();
    let res = drive(&poller, &ds, &mut trace, |_, now| now >= t.sweep).await;
    finish(&poller, None).await?;
    res?;
    Ok(ds.window(t.sweep / 3, t.sweep))
}

/// One adaptive run at capacity `c`.
#[derive(Clone, Copy, Debug)]
struct AdaptiveRun {
    /// The limit over the settled window.
    mean: f64,
    min: usize,
    max: usize,
    /// From the start (at `min`) until the limit had found C.
    settled: Option<Duration>,
    window: Window,
    /// How long the limit took to follow C → 2C, then 2C → C.
    up: Option<Duration>,
    down: Option<Duration>,
}

/// Moves the capacity to `cap`; runs until the limit has followed to `target` (and held for
/// `t.hold`), or for at most `t.follow_max` more; returns how long it took, if it did.
async fn follow(
    poller: &Poller<u64>,
    ds: &Downstream,
    trace: &mut Trace,
    (cap, target): (usize, f64),
    t: Timing,
) -> Result<Option<Duration>, String> {
    let from = ds.now();
    ds.capacity.store(cap, Ordering::Relaxed);
    let cap = target;
    // Windows are checked in the order they complete: the first one within the band ends it.
    drive(poller, ds, trace, |tr, now| {
        now >= from + t.follow_max + t.hold
            || (now >= from + t.hold
                && in_band(limit_stats(tr, now - t.hold, now).0, cap)
                && followed(tr, from, t.hold, cap).is_some())
    })
    .await?;
    Ok(followed(trace, from, t.hold, cap))
}

async fn adaptive_run(c: usize, algo: Algo, t: Timing, run: usize) -> Result<AdaptiveRun, String> {
    let ds = Downstream::new(c);
    let label = format!("c{c}-{}-run{run}", algo.name().replace([' ', ','], ""));
    let poller = start(
        algo.apply(Poller::<u64>::builder().workers(MAX), &ds, label),
        &ds,
    )?;
    let mut trace = Trace::new();
    let res = async {
        drive(&poller, &ds, &mut trace, |_, now| now >= t.settle).await?;
        // Followed: near where this limiter settled at C, scaled to the new capacity.
        let ratio = limit_stats(&trace, t.settle / 2, t.settle).0 / c as f64;
        let up = follow(&poller, &ds, &mut trace, (2 * c, ratio * 2.0 * c as f64), t).await?;
        let down = follow(&poller, &ds, &mut trace, (c, ratio * c as f64), t).await?;
        Ok::<_, String>((up, down))
    }
    .await;
    finish(&poller, None).await?;
    let (up, down) = res?;
    let (mean, min, max) = limit_stats(&trace, t.settle / 2, t.settle);
    Ok(AdaptiveRun {
        mean,
        min,
        max,
        settled: followed(&trace, Duration::ZERO, t.hold, c as f64)
            .filter(|s| *s + t.hold <= t.settle),
        window: ds.window(t.settle / 2, t.settle),
        up,
        down,
    })
}

/// One run at capacity `c`: the sweep, then each limiter.
struct CapRun {
    /// (workers, window) for each fixed value.
    sweep: Vec<(usize, Window)>,
    adaptive: Vec<AdaptiveRun>,
}

impl CapRun {
    fn best(&self) -> (usize, f64) {
        self.sweep
            .iter()
            .map(|(w, win)| (*w, win.throughput))
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
    }

    /// The p50 latency at the lowest fixed value (C/2: unloaded).
    fn unloaded(&self) -> Duration {
        self.sweep.first().map_or(BASE, |(_, w)| w.p50)
    }
}

/// min / median / max of `v`.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    (at(0), at(v.len() / 2), at(v.len().saturating_sub(1)))
}

fn fmt_spread((lo, med, hi): (f64, f64, f64), f: impl Fn(f64) -> String) -> String {
    format!("{} / {} / {}", f(lo), f(med), f(hi))
}

/// Seconds, or "> follow_max" for a change the limit did not follow.
fn secs(d: Option<Duration>) -> f64 {
    d.map_or(f64::INFINITY, |d| d.as_secs_f64())
}

fn fmt_secs(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2} s")
    } else {
        "never".into()
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// adaptive: `repeat` runs; the table shows the median run, the block min / median / max.
pub(crate) fn adaptive(repeat: usize, t: Timing) -> Result<Report, String> {
    let mut runs: Vec<Vec<CapRun>> = t.caps.iter().map(|_| Vec::new()).collect();
    let mut loads = Vec::new();
    for run in 0..repeat {
        for (&c, runs) in t.caps.iter().zip(&mut runs) {
            if std::env::var("BENCH_ADAPTIVE_CAPS")
                .is_ok_and(|v| !v.split(',').any(|x| x.trim() == c.to_string()))
            {
                continue;
            }
            let mut sweep = Vec::new();
            for w in [c / 2, c, c * 3 / 2, c * 2] {
                sweep.push((w.max(1), in_system(fixed(c, w.max(1), t))?));
            }
            let mut adaptive = Vec::new();
            for algo in Algo::ALL {
                adaptive.push(in_system(adaptive_run(c, algo, t, run + 1))?);
            }
            runs.push(CapRun { sweep, adaptive });
        }
        loads.push(load());
    }

    let mut report = Report::default();
    let mut block = vec![
        "| C | limiter | limit mean ÷ C | limit min ÷ C | limit max ÷ C | finds C in | p99 ÷ unloaded p50 | overloaded | throughput ÷ best fixed | follows C→2C in | follows 2C→C in |".to_string(),
        "|---:|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for (&c, runs) in t.caps.iter().zip(&runs) {
        if runs.is_empty() {
            continue;
        }
        let cf = c as f64;
        for (i, algo) in Algo::ALL.iter().enumerate() {
            let col = |f: &dyn Fn(&CapRun, &AdaptiveRun) -> f64| {
                spread(runs.iter().map(|r| f(r, &r.adaptive[i])).collect())
            };
            let mean = col(&|_, a| a.mean / cf);
            let min = col(&|_, a| a.min as f64 / cf);
            let max = col(&|_, a| a.max as f64 / cf);
            let settled = col(&|_, a| secs(a.settled));
            let p99 = col(&|r, a| a.window.p99.as_secs_f64() / r.unloaded().as_secs_f64());
            let over = col(&|_, a| a.window.overloaded);
            let thr = col(&|r, a| a.window.throughput / r.best().1);
            let up = col(&|_, a| secs(a.up));
            let down = col(&|_, a| secs(a.down));
            let x = |v: f64| format!("{v:.2}");
            let pct = |v: f64| format!("{:.1} %", v * 100.0);
            block.push(format!(
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                algo.name(),
                fmt_spread(mean, x),
                fmt_spread(min, x),
                fmt_spread(max, x),
                fmt_spread(settled, fmt_secs),
                fmt_spread(p99, x),
                fmt_spread(over, pct),
                fmt_spread(thr, x),
                fmt_spread(up, fmt_secs),
                fmt_spread(down, fmt_secs),
            ));
            let config = format!("C={c}, {}", algo.name());
            let med_run = |f: &dyn Fn(&CapRun, &AdaptiveRun) -> f64| col(f).1;
            let all = |ok: &dyn Fn(&CapRun, &AdaptiveRun) -> bool| {
                runs.iter().all(|r| ok(r, &r.adaptive[i]))
            };
            let unloaded = spread(runs.iter().map(|r| r.unloaded().as_secs_f64()).collect()).1;
            let best = spread(runs.iter().map(|r| r.best().1).collect()).1;
            let follow_target = t.follow_max.as_secs_f64();
            report.rows.extend([
                Row {
                    workload: "adaptive",
                    config: config.clone(),
                    metric: "settled limit (mean)",
                    unit: Unit::Plain,
                    ours: med_run(&|_, a| a.mean),
                    base: Some(cf),
                    target: "0.8–1.2 × C",
                    met: Some(all(&|_, a| in_band(a.mean, cf))),
                },
                Row {
                    workload: "adaptive",
                    config: config.clone(),
                    metric: "p99 latency (vs unloaded p50)",
                    unit: Unit::Ms,
                    ours: med_run(&|_, a| a.window.p99.as_secs_f64() * 1e3),
                    base: Some(unloaded * 1e3),
                    target: "≤ 2 × unloaded",
                    met: Some(all(&|r, a| a.window.p99 <= r.unloaded() * 2)),
                },
                Row {
                    workload: "adaptive",
                    config: config.clone(),
                    metric: "overloaded answers (%)",
                    unit: Unit::Plain,
                    ours: med_run(&|_, a| a.window.overloaded * 100.0),
                    base: None,
                    target: "< 5 %",
                    met: Some(all(&|_, a| a.window.overloaded < 0.05)),
                },
                Row {
                    workload: "adaptive",
                    config: config.clone(),
                    metric: "throughput (vs best fixed)",
                    unit: Unit::Rate,
                    ours: med_run(&|_, a| a.window.throughput),
                    base: Some(best),
                    target: "≥ 0.9 × best fixed",
                    met: Some(all(&|r, a| a.window.throughput >= 0.9 * r.best().1)),
                },
                Row {
                    workload: "adaptive",
                    config: config.clone(),
                    metric: "follows C→2C (s)",
                    unit: Unit::Plain,
                    ours: med_run(&|_, a| secs(a.up)),
                    base: None,
                    target: "≤ 30 s",
                    met: Some(all(&|_, a| secs(a.up) <= follow_target.min(30.0))),
                },
                Row {
                    workload: "adaptive",
                    config,
                    metric: "follows 2C→C (s)",
                    unit: Unit::Plain,
                    ours: med_run(&|_, a| secs(a.down)),
                    base: None,
                    target: "≤ 30 s",
                    met: Some(all(&|_, a| secs(a.down) <= follow_target.min(30.0))),
                },
            ]);
        }
        for (k, r) in runs.iter().enumerate() {
            let (bw, bt) = r.best();
            report.details.push(format!(
                "adaptive C={c} run {}: fixed workers {}; best {bw} ({bt:.0} /s); unloaded p50 {:.2} ms",
                k + 1,
                r.sweep
                    .iter()
                    .map(|(w, win)| format!(
                        "{w}: {:.0} /s p50 {:.2} p99 {:.2} ms (model p50 {:.2}; measured − model p50 {:.2} p99 {:.2} ms) over {:.1} %",
                        win.throughput,
                        win.p50.as_secs_f64() * 1e3,
                        win.p99.as_secs_f64() * 1e3,
                        win.model_p50.as_secs_f64() * 1e3,
                        win.excess_p50.as_secs_f64() * 1e3,
                        win.excess_p99.as_secs_f64() * 1e3,
                        win.overloaded * 100.0
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.unloaded().as_secs_f64() * 1e3,
            ));
            for (algo, a) in Algo::ALL.iter().zip(&r.adaptive) {
                report.details.push(format!(
                    "adaptive C={c} run {} {}: settled limit {:.1} ({}–{}), {:.0} /s, p50 {:.2} p99 {:.2} ms (model p50 {:.2}; measured − model p50 {:.2} p99 {:.2} ms)",
                    k + 1,
                    algo.name(),
                    a.mean,
                    a.min,
                    a.max,
                    a.window.throughput,
                    a.window.p50.as_secs_f64() * 1e3,
                    a.window.p99.as_secs_f64() * 1e3,
                    a.window.model_p50.as_secs_f64() * 1e3,
                    a.window.excess_p50.as_secs_f64() * 1e3,
                    a.window.excess_p99.as_secs_f64() * 1e3,
                ));
            }
        }
    }
    report.details.push(format!(
        "adaptive: downstream {} ms (+ 0–1 ms jitter) up to C in flight, {} ms × in_flight ÷ C past it, \
         overloaded past 2C; limiters in [{MIN}, {MAX}] from {MIN}; C changes after {:.1} s; \
         followed = the limit and its mean over {:.1} s within ±20 % of where it settled (÷ C) × the new C; load average after each run: {}",
        BASE.as_millis(),
        BASE.as_millis(),
        t.settle.as_secs_f64(),
        t.hold.as_secs_f64(),
        loads.join(" | ")
    ));
    report.blocks.push(block.join("\n"));
    Ok(report)
}
