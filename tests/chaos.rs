//! The chaos suite: seeded schedules of source faults, handler misbehaviour, cancels, a full
//! queue and a shutdown mid-run, each checked against the promises that must hold whatever
//! happens (docs/guarantees.md):
//!
//! - the bound: never more than `workers` handlers at once (a probe counts them);
//! - in-memory exactly once, per id: every accepted task ends in exactly one way — a final state
//!   its submitter sees (`Completed` only if its handler returned `Ok` exactly once, never two
//!   runs of one task at a time), handed back in the report, or (retries off, running at the
//!   deadline) interrupted and counted in `cancelled`; a refused submit hands the payload back;
//! - shutdown returns within its grace plus a slack covering the injected source delays;
//! - nothing is left alive: the source and every executor's state are dropped.
//!
//! Virtual time (`tokio::time::pause`), executors on the current arbiter, so a schedule is
//! reproducible from its seed: `CHAOS_SEED=<seed> cargo test --test chaos
//! chaos_schedules_keep_every_promise -- --nocapture`. A smaller sweep runs the executors on
//! their own arbiter threads in real time (`chaos_schedules_across_arbiter_threads`).
//! `CHAOS_SCHEDULES=10000 cargo test --release --test chaos -- --ignored` runs the long sweep.
//! `extreme_snoozes_survive_chaos` adds `RetryAfter(Duration::MAX)`;
//! `extreme_durations_survive_chaos` (ignored: they panic today) a `Duration::MAX` timeout and
//! shutdown grace too.

mod common;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_poller::source::{EnqueueResult, FetchLimits, Fetched, NewTask, Source};
use actix_poller::{
    Abort, Ack, BoxError, CancelOutcome, FinalState, MemorySource, OutcomeError, Poller,
    RetryAfter, RetryPolicy, RetrySupport, Submit, SubmitError, Task, TaskContext, TaskId,
    TaskOptions,
};
use common::{DropProbe, Probe};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio::time::Instant;

// ---- The fault-injecting source ---------------------------------------------------------------

/// How a [`FaultSource`] misbehaves; every decision is drawn from the schedule's seeded rng.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Chance (0..=100) that a fetch fails (nothing is leased).
    fetch_fail: u32,
    /// Chance that a fetch answers late, and how late at most (ms).
    fetch_late: u32,
    fetch_late_ms: u64,
    /// Chance that a fetch stalls for `stall_ms`.
    fetch_stall: u32,
    stall_ms: u64,
    /// Chance that an ack call fails (nothing recorded), and the most an ack call takes (ms).
    ack_fail: u32,
    ack_late_ms: u64,
    /// Fetch limits: one task per fetch or many; fetches in flight.
    max_batch: usize,
    max_in_flight: usize,
}

impl Faults {
    /// The longest a single source call can take: the slack shutdown may need beyond its grace
    /// (it waits for fetches in flight and the last acks).
    fn slack(&self) -> Duration {
        Duration::from_millis(self.fetch_late_ms.max(self.stall_ms) + 2 * self.ack_late_ms)
    }
}

/// A source behind faults: fetches that fail, answer late or stall, ack calls that fail before
/// reaching the store or land late. A failed call changes nothing in the store.
struct FaultSource<S> {
    inner: S,
    faults: Faults,
    /// Fetch limits to use instead of the inner source's.
    limits: Option<FetchLimits>,
    rng: Rc<RefCell<fastrand::Rng>>,
    fetch_errors: Rc<RefCell<usize>>,
    acks: Rc<RefCell<AckLog>>,
    _drop: DropProbe,
}

/// Per task, whether the last ack call that carried it landed (`true`) or failed.
#[derive(Debug, Default)]
struct AckLog {
    last: HashMap<TaskId, bool>,
}

impl AckLog {
    /// Acks that failed and never landed: given up at shutdown. The store never learned how
    /// those attempts ended, so their tasks are neither final there nor handed back; the
    /// submitter is told `ShutDown` (for a durable store: the lease expires, the task runs again).
    fn given_up(&self, id: TaskId) -> bool {
        self.last.get(&id) == Some(&false)
    }
}

/// An injected fault, or the inner source's error.
#[derive(Debug)]
enum Fault {
    Injected,
    Inner(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Injected => f.write_str("injected fault"),
            Fault::Inner(e) => write!(f, "inner source: {e}"),
        }
    }
}

impl std::error::Error for Fault {}

fn inner<E: std::fmt::Display>(e: E) -> Fault {
    Fault::Inner(e.to_string())
}

impl<S> FaultSource<S> {
    fn new(inner: S, faults: Faults, seed: u64) -> Self {
        FaultSource {
            inner,
            faults,
            limits: None,
            rng: Rc::new(RefCell::new(fastrand::Rng::with_seed(seed ^ 0x9e37_79b9))),
            fetch_errors: Rc::default(),
            acks: Rc::default(),
            _drop: DropProbe(Arc::default()),
        }
    }

    fn chance(&self, percent: u32) -> bool {
        percent > 0 && self.rng.borrow_mut().u32(0..100) < percent
    }
}

impl<T, S: RetrySupport<T>> RetrySupport<T> for FaultSource<S> {
    fn enable_retries(&mut self) {
        self.inner.enable_retries();
    }
}

impl<T: 'static, S: Source<T>> Source<T> for FaultSource<S> {
    type Error = Fault;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, Fault>> {
        let fail = self.chance(self.faults.fetch_fail);
        let delay = if self.chance(self.faults.fetch_stall) {
            Duration::from_millis(self.faults.stall_ms)
        } else if self.chance(self.faults.fetch_late) {
            Duration::from_millis(self.rng.borrow_mut().u64(0..=self.faults.fetch_late_ms))
        } else {
            Duration::ZERO
        };
        let fetch = if fail {
            *self.fetch_errors.borrow_mut() += 1;
            None
        } else {
            Some(self.inner.fetch(max))
        };
        async move {
            let result = match fetch {
                Some(f) => f.await.map_err(inner),
                None => Err(Fault::Injected),
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result
        }
        .boxed_local()
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Fault>> {
        let fail = self.chance(self.faults.ack_fail);
        let delay = Duration::from_millis(self.rng.borrow_mut().u64(0..=self.faults.ack_late_ms));
        let ids: Vec<TaskId> = acks.iter().map(|a| a.id).collect();
        {
            let mut log = self.acks.borrow_mut();
            for id in &ids {
                log.last.insert(*id, !fail);
            }
        }
        let call = if fail {
            None
        } else {
            Some(self.inner.ack(acks))
        };
        let log = self.acks.clone();
        async move {
            let result = match call {
                Some(f) => f.await.map_err(inner),
                None => Err(Fault::Injected),
            };
            if let Err(Fault::Inner(_)) = &result {
                // The store refused the call: not landed either.
                let mut log = log.borrow_mut();
                for id in ids {
                    log.last.insert(id, false);
                }
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result
        }
        .boxed_local()
    }

    fn limits(&self) -> FetchLimits {
        self.limits.unwrap_or_else(|| self.inner.limits())
    }

    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        self.inner.enqueue(tasks)
    }

    fn cancel(&mut self, id: TaskId) -> LocalBoxFuture<'static, Result<bool, Fault>> {
        let r = self.inner.cancel(id);
        async move { r.await.map_err(inner) }.boxed_local()
    }

    fn final_states(
        &mut self,
        ids: Vec<TaskId>,
    ) -> LocalBoxFuture<'static, Result<actix_poller::source::FinalStates, Fault>> {
        let r = self.inner.final_states(ids);
        async move { r.await.map_err(inner) }.boxed_local()
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        self.inner.heartbeat_interval()
    }

    fn heartbeat(&mut self) -> LocalBoxFuture<'static, Result<(), Fault>> {
        let r = self.inner.heartbeat();
        async move { r.await.map_err(inner) }.boxed_local()
    }

    fn can_requeue(&self) -> bool {
        self.inner.can_requeue()
    }

    fn queued(&self) -> Option<u64> {
        self.inner.queued()
    }

    fn close(
        &mut self,
        unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, Fault>> {
        let back = self.inner.close(unstarted);
        async move { back.await.map_err(inner) }.boxed_local()
    }
}

// ---- Handlers ---------------------------------------------------------------------------------

/// What a task does on one call of its handler; past its script it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ok,
    Fail,
    Panic,
    /// Runs past the poller's timeout.
    Hang,
    /// `RetryAfter(ms)`; `u64::MAX` means `Duration::MAX`.
    Snooze(u64),
    Abort,
    /// Blocks its thread for a moment, then succeeds.
    Block,
    /// Works for a while, stopping early (with an error) if cancelled.
    Cooperative(u64),
}

/// One task of a schedule: its steps, attempts, and whether (and when) it is cancelled.
#[derive(Debug, Clone)]
struct Plan {
    steps: Vec<Step>,
    max_attempts: u32,
    priority: i32,
    delay_ms: u64,
    cancel_after_burst: Option<usize>,
}

/// A whole schedule, drawn from one seed.
#[derive(Debug, Clone)]
struct Schedule {
    workers: usize,
    executors: usize,
    dispatch_ahead: Option<usize>,
    prefetch: usize,
    capacity: usize,
    /// Attempts of the retry policy; `None`: retries off (no copies kept in memory).
    retry: Option<u32>,
    timeout: Duration,
    cancel_grace: Duration,
    faults: Faults,
    /// Bursts of task indices, each after a gap (ms).
    bursts: Vec<(u64, Vec<usize>)>,
    plans: Vec<Plan>,
    /// When shutdown starts (ms after the last burst) and its grace.
    shutdown_after_ms: u64,
    grace: Duration,
}

/// Which `Duration::MAX` values a schedule may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extreme {
    /// None.
    Off,
    /// `RetryAfter(Duration::MAX)` snoozes.
    Snoozes,
    /// Those, a `Duration::MAX` timeout and a `Duration::MAX` shutdown grace.
    All,
}

fn schedule(seed: u64, extreme: Extreme) -> Schedule {
    let mut rng = fastrand::Rng::with_seed(seed);
    let workers = *[1usize, 1, 2, 2, 3, 4, 5, 8, 16, 64]
        .get(rng.usize(0..10))
        .unwrap_or(&1);
    let retry = if rng.u32(0..4) == 0 {
        None
    } else {
        Some(rng.u32(1..=4))
    };
    let n = rng.usize(0..48);
    let mut plans = Vec::with_capacity(n);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let bursts_n = rng.usize(1..=5);
    let mut bursts: Vec<(u64, Vec<usize>)> = (0..bursts_n)
        .map(|_| (rng.u64(0..40), Vec::new()))
        .collect();
    for &i in &order {
        let b = rng.usize(0..bursts_n);
        if let Some(burst) = bursts.get_mut(b) {
            burst.1.push(i);
        }
    }
    for _ in 0..n {
        let steps = (0..rng.usize(0..4))
            .map(|_| match rng.u32(0..100) {
                0..=29 => Step::Ok,
                30..=49 => Step::Fail,
                50..=56 => Step::Panic,
                57..=63 => Step::Hang,
                64..=73 => {
                    if extreme != Extreme::Off && rng.bool() {
                        Step::Snooze(u64::MAX)
                    } else {
                        Step::Snooze(rng.u64(0..50))
                    }
                }
                74..=78 => Step::Abort,
                79..=86 => Step::Block,
                _ => Step::Cooperative(rng.u64(1..80)),
            })
            .collect();
        plans.push(Plan {
            steps,
            max_attempts: rng.u32(1..=4),
            priority: rng.i32(-2..=2),
            delay_ms: if rng.u32(0..5) == 0 {
                rng.u64(1..100)
            } else {
                0
            },
            cancel_after_burst: if rng.u32(0..6) == 0 {
                Some(rng.usize(0..bursts_n))
            } else {
                None
            },
        });
    }
    let faults = Faults {
        fetch_fail: *[0, 0, 10, 40].get(rng.usize(0..4)).unwrap_or(&0),
        fetch_late: rng.u32(0..50),
        fetch_late_ms: rng.u64(1..30),
        fetch_stall: *[0, 0, 5].get(rng.usize(0..3)).unwrap_or(&0),
        stall_ms: rng.u64(50..500),
        ack_fail: *[0, 0, 10, 40].get(rng.usize(0..4)).unwrap_or(&0),
        ack_late_ms: *[0, 2, 20].get(rng.usize(0..3)).unwrap_or(&0),
        max_batch: if rng.bool() { 1 } else { rng.usize(1..32) },
        max_in_flight: rng.usize(1..=3),
    };
    Schedule {
        workers,
        executors: rng.usize(1..=3),
        dispatch_ahead: match rng.u32(0..3) {
            0 => None,
            _ => Some(rng.usize(0..5)),
        },
        prefetch: if rng.bool() { 0 } else { rng.usize(1..6) },
        capacity: rng.usize(1..64),
        retry,
        timeout: if extreme == Extreme::All && rng.u32(0..4) == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(rng.u64(20..200))
        },
        cancel_grace: Duration::from_millis(rng.u64(0..40)),
        faults,
        bursts,
        plans,
        shutdown_after_ms: rng.u64(0..400),
        grace: if extreme == Extreme::All && rng.u32(0..4) == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(rng.u64(0..100))
        },
    }
}

/// What the handlers saw, per task index.
#[derive(Debug, Default, Clone)]
struct Seen {
    calls: HashMap<u32, usize>,
    oks: HashMap<u32, usize>,
    running: HashMap<u32, usize>,
    /// Tasks seen running twice at the same time.
    overlaps: Vec<u32>,
}

type Shared = Arc<Mutex<Seen>>;

/// Leaves the "running" set when the attempt's future ends or is dropped.
struct Leave(Shared, u32, Arc<Probe>);

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut seen) = self.0.lock() {
            if let Some(k) = seen.running.get_mut(&self.1) {
                *k = k.saturating_sub(1);
            }
        }
        self.2.exit();
    }
}

/// The schedule's handler: plays each task's steps, recording calls, `Ok` returns and overlaps.
struct ChaosHandler {
    probe: Arc<Probe>,
    seen: Shared,
    plans: Arc<Vec<Plan>>,
    /// Executors on their own threads: every third `Block` step blocks its thread past the
    /// Fetcher's stall window, so the tasks queued there are taken back and run elsewhere.
    long_blocks: bool,
    _state: Rc<DropProbe>,
}

impl actix_poller::TaskHandler<u32> for ChaosHandler {
    type Error = BoxError;
    type Future = LocalBoxFuture<'static, Result<(), BoxError>>;

    fn call(&self, n: u32, cx: TaskContext) -> Self::Future {
        let call = {
            let mut seen = self.seen.lock().expect("seen lock");
            let k = seen.calls.entry(n).or_default();
            *k += 1;
            *k - 1
        };
        let step = self
            .plans
            .get(n as usize)
            .and_then(|plan| plan.steps.get(call).copied())
            .unwrap_or(Step::Ok);
        let (p, sn) = (self.probe.clone(), self.seen.clone());
        let long_block = self.long_blocks && n % 3 == 0;
        async move {
            {
                let mut seen = sn.lock().expect("seen lock");
                let k = seen.running.entry(n).or_default();
                *k += 1;
                if *k > 1 {
                    seen.overlaps.push(n);
                }
            }
            p.enter();
            let _leave = Leave(sn.clone(), n, p);
            tokio::time::sleep(Duration::from_millis(u64::from(n % 5))).await;
            let r: Result<(), BoxError> = match step {
                Step::Ok => Ok(()),
                Step::Fail => Err("failed".into()),
                Step::Panic => panic!("chaos panic"),
                Step::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
                Step::Snooze(u64::MAX) => Err(RetryAfter(Duration::MAX).into()),
                Step::Snooze(ms) => Err(RetryAfter(Duration::from_millis(ms)).into()),
                Step::Abort => Err(Abort::new("chaos abort").into()),
                Step::Block => {
                    std::thread::sleep(if long_block {
                        Duration::from_millis(150)
                    } else {
                        Duration::from_micros(200)
                    });
                    Ok(())
                }
                Step::Cooperative(ms) => {
                    tokio::select! {
                        biased;
                        () = cx.cancelled() => Err("stopped on request".into()),
                        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
                    }
                }
            };
            if r.is_ok() {
                *sn.lock().expect("seen lock").oks.entry(n).or_default() += 1;
            }
            r
        }
        .boxed_local()
    }
}

/// What the probes of one run hold.
#[derive(Clone)]
struct Probes {
    probe: Arc<Probe>,
    seen: Shared,
    state_drops: Arc<AtomicUsize>,
}

/// Configures `builder` as the schedule says and starts it with the chaos handler.
fn start<S: Source<u32> + RetrySupport<u32>>(
    s: &Schedule,
    builder: actix_poller::PollerBuilder<u32, S>,
    on_current: bool,
) -> Result<(Poller<u32>, Probes), String> {
    let probes = Probes {
        probe: Arc::default(),
        seen: Arc::default(),
        state_drops: Arc::default(),
    };
    let mut builder = builder
        .workers(s.workers)
        .executors(s.executors)
        .prefetch(s.prefetch)
        .timeout(s.timeout)
        .cancel_grace(s.cancel_grace)
        // No jitter: a schedule replays from its seed.
        .fetch_backoff(
            actix_poller::Backoff::new(Duration::from_millis(5), Duration::from_millis(200))
                .with_jitter(0.0),
        );
    if let Some(ahead) = s.dispatch_ahead {
        builder = builder.dispatch_ahead(ahead);
    }
    if on_current {
        builder = builder.on_current_arbiter();
    }
    if let Some(attempts) = s.retry {
        builder = builder.retry(RetryPolicy::attempts(attempts).fixed(Duration::from_millis(7)));
    }
    let plans: Arc<Vec<Plan>> = Arc::new(s.plans.clone());
    let p = probes.clone();
    let poller = builder
        .start_with(move |_executor| ChaosHandler {
            probe: p.probe.clone(),
            seen: p.seen.clone(),
            plans: plans.clone(),
            long_blocks: !on_current,
            _state: Rc::new(DropProbe(p.state_drops.clone())),
        })
        .map_err(|e| format!("start: {e}"))?;
    Ok((poller, probes))
}

/// What submitting, cancelling and shutting down produced.
struct Driven {
    receipts: HashMap<u32, actix_poller::Receipt>,
    refused: Vec<u32>,
    cancelled: HashMap<u32, CancelOutcome>,
    report: actix_poller::ShutdownReport<u32>,
}

/// Submits the bursts, cancels the planned tasks after their burst, and shuts down mid-run,
/// checking that shutdown returns within grace + the source's slack + `room`.
async fn drive(poller: &Poller<u32>, s: &Schedule, room: Duration) -> Result<Driven, String> {
    let mut receipts: HashMap<u32, actix_poller::Receipt> = HashMap::new();
    let mut refused: Vec<u32> = Vec::new();
    let mut cancelled: HashMap<u32, CancelOutcome> = HashMap::new();
    for (b, (gap, burst)) in s.bursts.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        for &i in burst {
            let plan = &s.plans[i];
            let mut opts = TaskOptions::new()
                .priority(plan.priority)
                .delay(Duration::from_millis(plan.delay_ms));
            if s.retry.is_some() {
                opts = opts.max_attempts(plan.max_attempts);
            }
            match poller
                .submit_with(Submit::new(i as u32).options(opts).tracked())
                .await
            {
                Ok(r) => {
                    receipts.insert(i as u32, r);
                }
                Err(SubmitError::Full(n)) if n == i as u32 => refused.push(n),
                Err(e) => return Err(format!("submit {i}: unexpected {e:?}")),
            }
        }
        for (i, plan) in s.plans.iter().enumerate() {
            if plan.cancel_after_burst == Some(b) {
                if let Some(r) = receipts.get(&(i as u32)) {
                    let outcome = poller
                        .cancel(r.id())
                        .await
                        .map_err(|e| format!("cancel {i}: {e}"))?;
                    cancelled.insert(i as u32, outcome);
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(s.shutdown_after_ms)).await;

    // Shut down mid-run, bounded by grace + slack.
    let started = Instant::now();
    let bound = s
        .grace
        .checked_add(s.faults.slack())
        .and_then(|d| d.checked_add(room))
        .unwrap_or(Duration::MAX);
    let limit = bound
        .checked_add(Duration::from_secs(5))
        .unwrap_or(Duration::MAX);
    let report = match tokio::time::timeout(limit, poller.shutdown(s.grace)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return Err(format!("shutdown: {e}")),
        Err(_) => return Err(format!("shutdown took longer than {limit:?}")),
    };
    let took = started.elapsed();
    if took > bound {
        return Err(format!("shutdown took {took:?} > grace + slack {bound:?}"));
    }
    Ok(Driven {
        receipts,
        refused,
        cancelled,
        report,
    })
}

// ---- One schedule -----------------------------------------------------------------------------

/// How the tasks of the schedules ended, to show the sweep exercised every path.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    accepted: usize,
    refused: usize,
    completed: usize,
    dead: usize,
    cancelled: usize,
    handed_back: usize,
    interrupted: usize,
    acks_given_up: usize,
    fetch_errors: usize,
    /// Tasks taken back from an executor's queue to run at another (`Stats::stolen`).
    stolen: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.completed += o.completed;
        self.dead += o.dead;
        self.cancelled += o.cancelled;
        self.handed_back += o.handed_back;
        self.interrupted += o.interrupted;
        self.acks_given_up += o.acks_given_up;
        self.fetch_errors += o.fetch_errors;
        self.stolen += o.stolen;
    }
}

/// Where a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Executors on the current arbiter, virtual time: reproducible from the seed.
    Virtual,
    /// Executors on their own arbiter threads, real time (delays shortened four-fold): the
    /// bound and the per-id ends across threads. Not exactly reproducible. Without ack faults
    /// unless `ack_faults`: a shutdown racing an ack retry's timer underflows the Fetcher's
    /// count of ack calls in flight today (see `ack_retries_racing_shutdown_across_threads`).
    Threads { ack_faults: bool },
}

/// The schedule of `seed` as `mode` runs it.
fn schedule_for(seed: u64, extreme: Extreme, mode: Mode) -> Schedule {
    let mut s = schedule(seed, extreme);
    if let Mode::Threads { ack_faults } = mode {
        if !ack_faults {
            s.faults.ack_fail = 0;
        }
        let quarter = |ms: &mut u64| *ms /= 4;
        for (gap, _) in &mut s.bursts {
            quarter(gap);
        }
        for plan in &mut s.plans {
            quarter(&mut plan.delay_ms);
        }
        quarter(&mut s.shutdown_after_ms);
        quarter(&mut s.faults.fetch_late_ms);
        quarter(&mut s.faults.stall_ms);
        quarter(&mut s.faults.ack_late_ms);
    }
    s
}

/// Runs one schedule and checks every invariant; `Err` says which broke.
fn run(seed: u64, extreme: Extreme, mode: Mode) -> Result<Tally, String> {
    let s = schedule_for(seed, extreme, mode);
    let sched = s.clone();
    actix_rt::System::new().block_on(async move {
        if mode == Mode::Virtual {
            tokio::time::pause();
        }
        let s = sched;
        let inner = MemorySource::bounded(s.capacity).map_err(|e| e.to_string())?;
        let mut source = FaultSource::new(inner, s.faults, seed);
        source.limits = Some(
            FetchLimits::default()
                .max_batch(s.faults.max_batch)
                .max_in_flight(s.faults.max_in_flight),
        );
        let (source_drops, fetch_errors, acks) = (
            source._drop.0.clone(),
            source.fetch_errors.clone(),
            source.acks.clone(),
        );
        let (poller, probes) = start(
            &s,
            Poller::<u32>::builder().source(source),
            mode == Mode::Virtual,
        )?;
        // Real time on a shared machine gets more room; virtual time is exact.
        let room = match mode {
            Mode::Virtual => Duration::from_secs(1),
            Mode::Threads { .. } => Duration::from_secs(4),
        };
        let Driven {
            mut receipts,
            refused,
            cancelled,
            report,
        } = drive(&poller, &s, room).await?;
        let stolen = poller.stats().stolen;
        let Probes {
            probe,
            seen,
            state_drops,
        } = probes;

        // Nothing left alive.
        if source_drops.load(SeqCst) != 1 {
            return Err("the source outlived shutdown".into());
        }
        if state_drops.load(SeqCst) != s.executors {
            return Err(format!(
                "{} of {} executor states dropped",
                state_drops.load(SeqCst),
                s.executors
            ));
        }

        // Per task: exactly one end.
        let mut back: HashSet<u32> = HashSet::new();
        for t in &report.handed_back {
            if !back.insert(t.payload) {
                return Err(format!("task {} handed back twice", t.payload));
            }
            match receipts.get(&t.payload) {
                Some(r) if r.id() == t.id => {}
                _ => return Err(format!("handed back task {} was never accepted", t.payload)),
            }
        }
        let seen = seen.lock().map_err(|e| e.to_string())?.clone();
        if !seen.overlaps.is_empty() {
            return Err(format!("tasks ran twice at once: {:?}", seen.overlaps));
        }
        for &n in &refused {
            if receipts.contains_key(&n) || seen.calls.contains_key(&n) {
                return Err(format!("refused task {n} was accepted or ran"));
            }
        }
        let mut interrupted = 0usize;
        let mut tally = Tally {
            accepted: receipts.len(),
            refused: refused.len(),
            handed_back: back.len(),
            fetch_errors: *fetch_errors.borrow(),
            stolen: stolen as usize,
            ..Tally::default()
        };
        let mut ids: Vec<u32> = receipts.keys().copied().collect();
        ids.sort_unstable();
        for n in ids {
            let Some(r) = receipts.remove(&n) else {
                continue;
            };
            let given_up = acks.borrow().given_up(r.id());
            let oks = seen.oks.get(&n).copied().unwrap_or(0);
            let calls = seen.calls.get(&n).copied().unwrap_or(0);
            let outcome = match tokio::time::timeout(Duration::from_secs(1), r.outcome()).await {
                Ok(o) => o,
                Err(_) => return Err(format!("task {n}: its receipt never resolved")),
            };
            let plan = &s.plans[n as usize];

            let ctx = || {
                format!(
                    "task {n} {plan:?}, calls {calls}, oks {oks}, cancel {:?}",
                    cancelled.get(&n)
                )
            };
            match &outcome {
                Ok(FinalState::Completed) => tally.completed += 1,
                Ok(FinalState::Dead { .. }) => tally.dead += 1,
                Ok(FinalState::Cancelled) => tally.cancelled += 1,
                Err(_) if given_up => tally.acks_given_up += 1,
                _ => {}
            }
            match outcome {
                Ok(FinalState::Completed) if oks == 1 => {}
                Ok(FinalState::Completed) => return Err(format!("{}: completed", ctx())),
                Ok(_) if oks > 0 => {
                    return Err(format!("{}: returned Ok but did not complete", ctx()))
                }
                Ok(FinalState::Dead { attempts, .. }) => {
                    let max = if s.retry.is_some() {
                        plan.max_attempts
                    } else {
                        1
                    };
                    if attempts > max || attempts == 0 {
                        return Err(format!(
                            "{}: dead after {attempts} attempts of {max}",
                            ctx()
                        ));
                    }
                }
                Ok(FinalState::Cancelled) => {
                    if !cancelled.contains_key(&n) {
                        return Err(format!("{}: cancelled, but nobody cancelled it", ctx()));
                    }
                }
                Ok(other) => return Err(format!("{}: unknown final state {other:?}", ctx())),
                Err(OutcomeError::ShutDown) if given_up => {
                    // Its last ack was given up at shutdown: the store still holds it leased.
                    if back.contains(&n) {
                        return Err(format!("{}: handed back, yet its ack was given up", ctx()));
                    }
                }
                Err(OutcomeError::ShutDown) => {
                    if oks > 0 {
                        return Err(format!("{}: ran to Ok, yet told ShutDown", ctx()));
                    }
                    if !back.remove(&n) {
                        // Not handed back: only a task running at the deadline on a source
                        // without copies (retries off) may end so.
                        if s.retry.is_some() || calls == 0 {
                            return Err(format!("{}: ShutDown, but not handed back", ctx()));
                        }
                        interrupted += 1;
                    }
                }
                Err(e) => return Err(format!("{}: {e}", ctx())),
            }
            if matches!(cancelled.get(&n), Some(CancelOutcome::Dequeued)) {
                // A dequeued task never runs after the cancel; it cannot have completed.
                if oks > 0 {
                    return Err(format!("{}: ran after it was dequeued", ctx()));
                }
            }
        }
        if !back.is_empty() {
            return Err(format!(
                "handed back, but the receipt said otherwise: {back:?}"
            ));
        }
        if interrupted > report.cancelled {
            return Err(format!(
                "{interrupted} tasks lost at the deadline, report.cancelled = {}",
                report.cancelled
            ));
        }
        if probe.max() > s.workers {
            return Err(format!(
                "{} ran at once, workers = {}",
                probe.max(),
                s.workers
            ));
        }
        if probe.running.load(SeqCst) != 0 {
            return Err("a handler future outlived shutdown".into());
        }
        tally.interrupted = interrupted;
        Ok(tally)
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `count` schedules from seed `first` (or only `CHAOS_SEED`, printing its schedule),
/// stopping after five failures, and fails naming each failing seed.
fn sweep(first: u64, count: u64, extreme: Extreme, mode: Mode) {
    sweep_with(first, count, &format!("{mode:?}"), |seed, one| {
        if one {
            eprintln!("schedule {seed}: {:#?}", schedule_for(seed, extreme, mode));
        }
        run(seed, extreme, mode)
    });
}

/// The loop of [`sweep`] for any runner (`one`: only this seed runs).
fn sweep_with(
    first: u64,
    count: u64,
    what: &str,
    run: impl Fn(u64, bool) -> Result<Tally, String> + std::panic::RefUnwindSafe,
) {
    let seeds: Vec<u64> = match env_u64("CHAOS_SEED") {
        Some(seed) => vec![seed],
        None => (first..first.saturating_add(count)).collect(),
    };
    let one = seeds.len() == 1;
    let mut failures = Vec::new();
    let mut total = Tally::default();
    for &seed in &seeds {
        // A panic inside the System (an actor) is a failure of that seed, not of the sweep.
        let result = std::panic::catch_unwind(|| run(seed, one))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))));
        match result {
            Ok(t) => total += t,
            Err(e) => {
                failures.push((seed, e));
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "{} {what} schedules from seed {}: {total:?}",
        seeds.len(),
        seeds[0]
    );
    assert!(
        failures.is_empty(),
        "{} failing {what} schedules (rerun one with CHAOS_SEED=<seed>):\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(s, e)| format!("seed {s}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "?".into())
}

/// 1,000 schedules in CI (`CHAOS_SCHEDULES` changes the count).
#[test]
fn chaos_schedules_keep_every_promise() {
    sweep(
        0,
        env_u64("CHAOS_SCHEDULES").unwrap_or(1_000),
        Extreme::Off,
        Mode::Virtual,
    );
}

/// The long sweep: `CHAOS_SCHEDULES=10000 cargo test --release --test chaos -- --ignored`.
#[test]
#[ignore = "long sweep: run with --ignored (CHAOS_SCHEDULES sets the count)"]
fn chaos_long_sweep() {
    sweep(
        1_000_000,
        env_u64("CHAOS_SCHEDULES").unwrap_or(10_000),
        Extreme::Off,
        Mode::Virtual,
    );
}

/// Executors on their own arbiter threads, in real time: 40 schedules in CI
/// (`CHAOS_THREAD_SCHEDULES` changes the count).
#[test]
fn chaos_schedules_across_arbiter_threads() {
    sweep(
        2_000_000,
        env_u64("CHAOS_THREAD_SCHEDULES").unwrap_or(40),
        Extreme::Off,
        Mode::Threads { ack_faults: true },
    );
}

/// The same with failing ack calls. Intermittent, load-dependent: seen twice (seeds 2000003
/// and 2000081, on a loaded machine, among runs of 100 schedules), not on demand. The Fetcher
/// panicked with "attempt to subtract with overflow" at `act.acks_in_flight -= 1` in the ack
/// retry's `run_later` closure (src/fetcher/acks.rs), and shutdown failed with "the fetcher
/// stopped early". `CloseSource` cancels the retry's handle and decrements `acks_in_flight`
/// itself, but actix applies `cancel_future` lazily: a timer due in the same poll of the context
/// still runs its closure, which decrements again (in release: wraps, and no ack is sent again).
#[test]
#[ignore = "long sweep of the fixed race (the retry's closure now counts itself out only if it still holds its handle): run with --ignored"]
fn ack_retries_racing_shutdown_across_threads() {
    sweep(
        2_000_000,
        env_u64("CHAOS_THREAD_SCHEDULES").unwrap_or(500),
        Extreme::Off,
        Mode::Threads { ack_faults: true },
    );
}

/// Schedules with `RetryAfter(Duration::MAX)` snoozes: the task waits past any shutdown and is
/// handed back (retries on) or dead (retries off).
#[test]
fn extreme_snoozes_survive_chaos() {
    sweep(
        7_000_000,
        env_u64("CHAOS_SCHEDULES").unwrap_or(300),
        Extreme::Snoozes,
        Mode::Virtual,
    );
}

/// Schedules with `Duration::MAX` snoozes, timeouts and shutdown grace.
#[test]
fn extreme_durations_survive_chaos() {
    sweep(
        0,
        env_u64("CHAOS_SCHEDULES").unwrap_or(200),
        Extreme::All,
        Mode::Virtual,
    );
}

// ---- SQLite: at least once, nothing lost --------------------------------------------------------

/// The same schedules against SQLite behind the fault wrapper, in real time (delays shortened
/// four-fold). Durable promises, checked per task against the rows: a tracked final state is the
/// row's; a task told `ShutDown` is still in the store, queued for the next poller (or leased,
/// only when its last ack was given up); no task runs twice at once or returns `Ok` twice in one
/// run; nothing is handed back; the bound holds; shutdown is bounded; nothing is left alive.
#[cfg(feature = "sqlite")]
fn run_sqlite(seed: u64, ack_faults: bool) -> Result<Tally, String> {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    let s = schedule_for(seed, Extreme::Off, Mode::Threads { ack_faults });
    let path = std::env::temp_dir().join(format!(
        "actix-poller-chaos-{}-{seed}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = actix_rt::System::new().block_on(async {
        let config = SqliteConfig::new(&path).poll_interval(Duration::from_millis(20));
        let inner = SqliteSource::<u32>::connect(config)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let pool = inner.pool().clone();
        let source = FaultSource::new(inner, s.faults, seed);
        let (source_drops, fetch_errors, acks) = (
            source._drop.0.clone(),
            source.fetch_errors.clone(),
            source.acks.clone(),
        );
        let (poller, probes) = start(&s, Poller::<u32>::builder().source(source), false)?;
        let Driven {
            receipts,
            refused,
            cancelled,
            report,
        } = drive(&poller, &s, Duration::from_secs(4)).await?;
        if !refused.is_empty() {
            return Err(format!("SQLite refused {refused:?}"));
        }
        if !report.handed_back.is_empty() {
            return Err("a durable source hands nothing back".into());
        }
        if source_drops.load(SeqCst) != 1 {
            return Err("the source outlived shutdown".into());
        }
        if probes.state_drops.load(SeqCst) != s.executors {
            return Err("an executor's state outlived shutdown".into());
        }
        let rows: Vec<(i64, String, i64)> =
            sqlx::query_as("SELECT id, state, attempt FROM actix_poller_tasks")
                .fetch_all(&pool)
                .await
                .map_err(|e| format!("read rows: {e}"))?;
        let rows: HashMap<u64, (String, i64)> = rows
            .into_iter()
            .map(|(id, state, attempt)| (id as u64, (state, attempt)))
            .collect();
        let seen = probes.seen.lock().map_err(|e| e.to_string())?.clone();
        if !seen.overlaps.is_empty() {
            return Err(format!("tasks ran twice at once: {:?}", seen.overlaps));
        }
        let mut tally = Tally {
            accepted: receipts.len(),
            fetch_errors: *fetch_errors.borrow(),
            stolen: poller.stats().stolen as usize,
            ..Tally::default()
        };
        let mut ids: Vec<u32> = receipts.keys().copied().collect();
        ids.sort_unstable();
        let mut receipts = receipts;
        for n in ids {
            let Some(r) = receipts.remove(&n) else {
                continue;
            };
            let id = r.id();
            let given_up = acks.borrow().given_up(id);
            let oks = seen.oks.get(&n).copied().unwrap_or(0);
            let outcome = match tokio::time::timeout(Duration::from_secs(5), r.outcome()).await {
                Ok(o) => o,
                Err(_) => return Err(format!("task {n}: its receipt never resolved")),
            };
            let (state, attempt) = rows
                .get(&id.0)
                .cloned()
                .ok_or_else(|| format!("task {n} ({id}): no row"))?;
            let ctx = || {
                format!(
                    "task {n} {:?}, row ({state}, {attempt}), oks {oks}, given up {given_up}, \
                     cancel {:?}: {outcome:?}",
                    s.plans[n as usize],
                    cancelled.get(&n)
                )
            };
            if oks > 1 {
                return Err(format!("{}: returned Ok twice in one run", ctx()));
            }
            let fine = match &outcome {
                Ok(FinalState::Completed) => {
                    tally.completed += 1;
                    state == "completed" && oks == 1
                }
                Ok(FinalState::Dead { attempts, .. }) => {
                    tally.dead += 1;
                    state == "dead" && oks == 0 && i64::from(*attempts) == attempt
                }
                Ok(FinalState::Cancelled) => {
                    tally.cancelled += 1;
                    state == "cancelled" && oks == 0 && cancelled.contains_key(&n)
                }
                Err(OutcomeError::ShutDown) if given_up => {
                    tally.acks_given_up += 1;
                    state == "running" || state == "queued"
                }
                Err(OutcomeError::ShutDown) => {
                    tally.handed_back += 1;
                    state == "queued" && oks == 0
                }
                _ => false,
            };
            if !fine {
                return Err(ctx());
            }
        }
        if probes.probe.max() > s.workers {
            return Err(format!(
                "{} ran at once, workers = {}",
                probes.probe.max(),
                s.workers
            ));
        }
        Ok(tally)
    });
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    result
}

/// 20 SQLite schedules in CI (`CHAOS_SQLITE_SCHEDULES` changes the count; `CHAOS_SEED` runs
/// one).
#[cfg(feature = "sqlite")]
#[test]
fn sqlite_chaos_schedules_lose_nothing() {
    sweep_with(
        3_000_000,
        env_u64("CHAOS_SQLITE_SCHEDULES").unwrap_or(20),
        "SQLite",
        // Every other schedule with failing ack calls too.
        |seed, _| run_sqlite(seed, seed % 2 == 1),
    );
}

/// SQLite schedules with failing ack calls too (the same underflow as
/// `ack_retries_racing_shutdown_across_threads` can stop the Fetcher).
#[cfg(feature = "sqlite")]
#[test]
#[ignore = "long sweep with ack faults: run with --ignored"]
fn sqlite_chaos_with_ack_faults() {
    sweep_with(
        5_000_000,
        env_u64("CHAOS_SQLITE_SCHEDULES").unwrap_or(100),
        "SQLite",
        |seed, _| run_sqlite(seed, true),
    );
}
