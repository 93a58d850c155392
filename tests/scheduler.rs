//! The concurrency bound, batching, wake-ups and error backoff of the credit protocol.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_poller::{Backoff, FinalState, Poller, StartError, SubmitError, TaskId, DEFAULT_WORKERS};
use common::{cases, gate, Probe, ScriptedSource};
use proptest::prelude::*;

/// A handler that records concurrency in `probe`, counts its calls per task id in `calls` and
/// sleeps `payload` milliseconds.
fn sleeper(
    probe: Arc<Probe>,
    calls: Calls,
) -> impl Fn(
    u64,
    actix_poller::TaskContext,
) -> futures::future::BoxFuture<'static, Result<(), Infallible>>
       + Clone
       + Send
       + Sync {
    move |ms: u64, cx: actix_poller::TaskContext| {
        let probe = probe.clone();
        *calls
            .lock()
            .expect("calls lock")
            .entry(cx.id())
            .or_default() += 1;
        Box::pin(async move {
            probe.enter();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            probe.exit();
            Ok(())
        })
    }
}

/// Handler calls per task id.
type Calls = Arc<Mutex<HashMap<TaskId, usize>>>;

/// One generated bound scenario.
#[derive(Debug, Clone)]
struct BoundCase {
    /// `None`: the builder's default (`DEFAULT_WORKERS`).
    workers: Option<usize>,
    /// `None`: the builder's default.
    executors: Option<usize>,
    /// `None`: the builder's default (adaptive, capped at `DEFAULT_DISPATCH_AHEAD`).
    ahead: Option<usize>,
    prefetch: usize,
    /// `None`: no per-attempt timeout; `Some(Duration::MAX)` is a user's "never".
    timeout: Option<Duration>,
    /// (gap before the burst in ms, task durations in ms)
    bursts: Vec<(u64, Vec<u64>)>,
}

/// Worker counts 1..=300, weighted toward small ones (where off-by-one bugs live).
fn workers_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1usize..8,
        3 => 8usize..48,
        1 => 48usize..=300,
    ]
}

/// `dispatch_ahead`: unset (the default), small, or above the default's cap.
fn ahead_strategy() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        3 => Just(None),
        4 => (0usize..6).prop_map(Some),
        1 => (6usize..200).prop_map(Some),
    ]
}

fn bound_case_strategy(
    timeouts: BoxedStrategy<Option<Duration>>,
) -> impl Strategy<Value = BoundCase> {
    (
        prop_oneof![1 => Just(None), 12 => workers_strategy().prop_map(Some)],
        prop_oneof![1 => Just(None), 4 => (1usize..5).prop_map(Some)],
        ahead_strategy(),
        prop_oneof![3 => Just(0usize), 1 => 1usize..8],
        timeouts,
    )
        .prop_flat_map(|(workers, executors, ahead, prefetch, timeout)| {
            // Bursts large enough to fill every slot several times over, whatever `workers`.
            // A few tasks outlast the Fetcher's stall window (100 ms), so tasks queued behind
            // them are taken back and run at other executors.
            let max_burst = (workers.unwrap_or(DEFAULT_WORKERS) * 4).max(40);
            let duration = prop_oneof![24 => 0u64..20, 1 => 100u64..300];
            prop::collection::vec(
                (0u64..30, prop::collection::vec(duration, 0..max_burst)),
                1..6,
            )
            .prop_map(move |bursts| BoundCase {
                workers,
                executors,
                ahead,
                prefetch,
                timeout,
                bursts,
            })
        })
}

/// Timeouts a user may set; none that end a task early (tasks run at most 20 ms).
fn ordinary_timeouts() -> BoxedStrategy<Option<Duration>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Duration::from_secs(3600))),
    ]
    .boxed()
}

/// The extreme ones: "never" spelled `Duration::MAX`, and its neighbours.
fn extreme_timeouts() -> BoxedStrategy<Option<Duration>> {
    prop_oneof![
        Just(Some(Duration::MAX)),
        Just(Some(Duration::MAX - Duration::from_nanos(1))),
        Just(Some(Duration::from_secs(u64::MAX / 2))),
    ]
    .boxed()
}

/// Runs one bound scenario in virtual time, shuts down with `grace`, and returns (max running,
/// handler calls per task id, the ids accepted).
fn bound_case(case: BoundCase, grace: Duration) -> (usize, HashMap<TaskId, usize>, Vec<TaskId>) {
    actix_rt::System::new().block_on(async move {
        tokio::time::pause();
        let probe = Arc::new(Probe::default());
        let calls: Calls = Arc::default();
        let mut builder = Poller::<u64>::builder()
            .prefetch(case.prefetch)
            .on_current_arbiter();
        if let Some(workers) = case.workers {
            builder = builder.workers(workers);
        }
        if let Some(executors) = case.executors {
            builder = builder.executors(executors);
        }
        if let Some(ahead) = case.ahead {
            builder = builder.dispatch_ahead(ahead);
        }
        if let Some(timeout) = case.timeout {
            builder = builder.timeout(timeout);
        }
        let poller = builder
            .start(sleeper(probe.clone(), calls.clone()))
            .expect("valid configuration");
        let mut receipts = Vec::new();
        for (gap_ms, durations) in case.bursts {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            receipts.extend(
                poller
                    .submit_batch_tracked(durations)
                    .await
                    .expect("queue has room"),
            );
        }
        let ids: Vec<TaskId> = receipts.iter().map(|r| r.id()).collect();
        for r in receipts {
            assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
        }
        let report = common::within(poller.shutdown(grace))
            .await
            .expect("first shutdown");
        assert!(
            report.handed_back.is_empty(),
            "all ran: nothing to hand back"
        );
        let calls = calls.lock().expect("calls lock").clone();
        (probe.max(), calls, ids)
    })
}

/// The checks of one bound scenario: the bound, exactly one handler call per accepted task (by
/// id: a duplicate and a loss cannot cancel out), and the bound reached when there is work.
fn check_bound_case(case: BoundCase, grace: Duration) -> Result<(), TestCaseError> {
    let workers = case.workers.unwrap_or(DEFAULT_WORKERS);
    let fills = case
        .bursts
        .iter()
        .any(|(_, d)| d.iter().filter(|&&ms| ms > 0).count() >= workers * 3);
    let (max, calls, ids) = bound_case(case, grace);
    prop_assert!(
        max <= workers,
        "{max} tasks ran at once with workers = {workers}"
    );
    prop_assert_eq!(calls.len(), ids.len(), "tasks run vs accepted");
    for id in &ids {
        prop_assert_eq!(calls.get(id).copied(), Some(1), "handler calls of {}", id);
    }
    // The bound is also reached when a burst is large enough to fill every slot with tasks that
    // take time: the scheduler does not under-use its slots.
    if fills {
        prop_assert_eq!(max, workers);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1_024), ..ProptestConfig::default() })]

    /// At no instant do more than `workers` tasks run, whatever the worker count (1..=300 or the
    /// default), the executors (or the default), the tasks dispatched ahead (the default
    /// included) or prefetched, task durations and submission timing; and every task runs
    /// exactly once.
    #[test]
    fn never_more_than_workers_run(case in bound_case_strategy(ordinary_timeouts())) {
        check_bound_case(case, Duration::from_secs(1))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(5_000), ..ProptestConfig::default() })]

    /// The long sweep of the same property:
    /// `PROPTEST_CASES=5000 cargo test --release --test scheduler -- --ignored`.
    #[test]
    #[ignore = "long sweep: run with --ignored (PROPTEST_CASES sets the cases)"]
    fn never_more_than_workers_run_long_sweep(case in bound_case_strategy(ordinary_timeouts())) {
        check_bound_case(case, Duration::from_secs(1))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(32), ..ProptestConfig::default() })]

    /// `Duration::MAX` ("never") as the timeout and as the shutdown grace is accepted and
    /// changes nothing for tasks that end on their own.
    #[test]
    fn extreme_durations_are_accepted(case in bound_case_strategy(extreme_timeouts())) {
        check_bound_case(case, Duration::MAX)?;
    }
}

/// The case the old regression seed recorded (`workers = 1, executors = 1, bursts = [(0, [0,
/// 0])]`, saved before `dispatch_ahead` was generated), under every `dispatch_ahead`.
#[test]
fn regression_one_worker_two_instant_tasks() {
    for ahead in [None, Some(0), Some(1), Some(5)] {
        let case = BoundCase {
            workers: Some(1),
            executors: Some(1),
            ahead,
            prefetch: 0,
            timeout: None,
            bursts: vec![(0, vec![0, 0])],
        };
        check_bound_case(case, Duration::from_secs(1)).expect("holds");
    }
}

/// The case a seed recorded while the blocked-executor change was made (`workers = 1,
/// executors = 2, ahead = 1`, one burst of ten tasks), kept explicit now that the strategy
/// changed.
#[test]
fn regression_one_worker_two_executors_one_ahead() {
    let case = BoundCase {
        workers: Some(1),
        executors: Some(2),
        ahead: Some(1),
        prefetch: 0,
        timeout: None,
        bursts: vec![(0, vec![14, 8, 0, 6, 4, 5, 19, 14, 5, 16])],
    };
    check_bound_case(case, Duration::from_secs(1)).expect("holds");
}

/// The same bound with executors on their own arbiter threads (real time, short tasks).
#[actix_rt::test]
async fn bound_holds_across_arbiter_threads() {
    let probe = Arc::new(Probe::default());
    let calls: Calls = Arc::default();
    let poller = Poller::<u64>::builder()
        .workers(5)
        .executors(2)
        .start(sleeper(probe.clone(), calls.clone()))
        .unwrap();
    let durations: Vec<u64> = (0..300).map(|i| i % 3).collect();
    let receipts = poller.submit_batch_tracked(durations).await.unwrap();
    let ids: Vec<TaskId> = receipts.iter().map(|r| r.id()).collect();
    for r in receipts {
        assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
    }
    assert!(probe.max() <= 5, "max running {}", probe.max());
    assert_eq!(probe.finished.load(SeqCst), 300);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 300);
    assert!(
        ids.iter().all(|id| calls.get(id) == Some(&1)),
        "once per id"
    );
    let per_exec = poller.executor_stats();
    assert_eq!(per_exec.iter().map(|e| e.finished).sum::<u64>(), 300);
    assert!(
        per_exec.iter().all(|e| e.finished > 0),
        "both executors got work: {per_exec:?}"
    );
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// The same with handlers that block their executor's thread past the stall window (a blocking
/// call in async code): tasks queued behind them are taken back and run at the other executors
/// (`Stats::stolen`), each exactly once, and the bound holds.
#[actix_rt::test]
async fn bound_holds_when_handlers_block_their_threads() {
    let probe = Arc::new(Probe::default());
    let calls: Calls = Arc::default();
    let (p, c) = (probe.clone(), calls.clone());
    let poller = Poller::<u64>::builder()
        .workers(4)
        .executors(3)
        .start(move |ms: u64, cx: actix_poller::TaskContext| {
            *c.lock().expect("calls lock").entry(cx.id()).or_default() += 1;
            p.enter();
            if ms >= 100 {
                // Blocks the executor's thread, as a blocking call in async code does.
                std::thread::sleep(Duration::from_millis(ms));
            }
            let p = p.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(ms % 3)).await;
                p.exit();
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let durations: Vec<u64> = (0..200)
        .map(|i| if i % 25 == 0 { 150 } else { i % 3 })
        .collect();
    let receipts = poller.submit_batch_tracked(durations).await.unwrap();
    let ids: Vec<TaskId> = receipts.iter().map(|r| r.id()).collect();
    for r in receipts {
        assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
    }
    assert!(probe.max() <= 4, "max running {}", probe.max());
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 200);
    assert!(
        ids.iter().all(|id| calls.get(id) == Some(&1)),
        "once per id"
    );
    eprintln!("stolen: {}", poller.stats().stolen);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// One worker, 10,000 tasks submitted in bursts with yields between: each runs exactly once
/// (counted per payload, so a duplicate and a loss cannot cancel out). A lost wake-up would
/// leave the poller idle with work queued; paused time then jumps to the timeout.
#[actix_rt::test]
async fn no_lost_wakeup_one_worker_ten_thousand_tasks() {
    tokio::time::pause();
    let runs: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(vec![0; 10_000]));
    let r = runs.clone();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .start(move |n: u32, _cx| {
            if let Some(k) = r.lock().unwrap().get_mut(n as usize) {
                *k += 1;
            }
            async move {
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let mut last = None;
    for burst in 0..100u32 {
        for i in 0..100u32 {
            let n = burst * 100 + i;
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
            last = Some(poller.submit_tracked(n).await.unwrap());
        }
        if burst % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), last.unwrap().outcome()).await;
    assert_eq!(outcome.expect("no lost wake-up"), Ok(FinalState::Completed));
    // The last receipt resolving says nothing of the others: check every task ran once.
    common::eventually(Duration::from_secs(60), || {
        poller.stats().completed >= 10_000
    })
    .await;
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
    common::assert_each_once(&runs.lock().unwrap(), "runs");
}

/// With n free slots the source sees one fetch for n, not n fetches of one.
#[actix_rt::test]
async fn fetches_are_batched_up_to_the_free_slots() {
    let (mut source, log) = ScriptedSource::new(1000);
    source.preload((0..100u32).collect());
    let (g, opener) = gate();
    // No task dispatched ahead: this is the credit protocol alone.
    let poller = Poller::<u32>::builder()
        .workers(8)
        .dispatch_ahead(0)
        .on_current_arbiter()
        .source(source)
        .start(move |_n: u32, _cx| {
            let g = g.clone();
            async move {
                g.wait().await;
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    // Wait until the first batch is running (event: 8 tasks started).
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 8).await;
    assert_eq!(
        log.borrow().fetches,
        vec![8],
        "one fetch for all 8 free slots"
    );
    assert_eq!(log.borrow().returned, vec![8]);
    opener.open();
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 100).await;
    {
        let log = log.borrow();
        assert!(
            log.fetches.iter().all(|&n| n <= 8),
            "never asks for more than the free slots: {:?}",
            log.fetches
        );
        assert!(
            log.fetches.len() < 100 / 2,
            "fetches are batched: {} calls for 100 tasks",
            log.fetches.len()
        );
        assert_eq!(log.ack_batches.iter().sum::<usize>(), 100);
    }
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A source that keeps failing is called a bounded number of times, even while submits keep
/// waking the fetcher; when it recovers, the queued tasks run.
#[actix_rt::test]
async fn failing_source_backs_off_and_recovers() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::new(1000);
    source.fail_first = 12;
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter(0.5);
    let poller = Poller::<u32>::builder()
        .workers(4)
        .on_current_arbiter()
        .fetch_backoff(backoff)
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();

    // 30 s of virtual time with a submit every 100 ms: each submit wakes the fetcher, yet no
    // fetch may start before the backoff timer fires.
    let mut receipts = Vec::new();
    for i in 0..300u32 {
        receipts.push(poller.submit_tracked(i).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Upper bound: the most calls the backoff schedule allows by now, each delay being at
        // least half its nominal value (jitter 0.5).
        let elapsed = (i as f64 + 1.0) * 0.1;
        let (mut t, mut allowed) = (0.0, 1usize);
        while allowed < 12 {
            t += 0.5 * (0.1 * 2f64.powi(allowed as i32 - 1)).min(5.0);
            if t > elapsed {
                break;
            }
            allowed += 1;
        }
        // Calls after the 12th failure succeed and are woken by submits, legitimately.
        let failing_calls = log.borrow().fetches.len().min(12);
        assert!(
            failing_calls <= allowed,
            "at {elapsed:.1}s: {failing_calls} failing fetch calls, the backoff allows {allowed}"
        );
    }
    // The 13th call succeeds; everything queued runs.
    for r in receipts {
        assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
    }
    let stats = poller.stats();
    assert_eq!(stats.fetch_errors, 12);
    assert_eq!(stats.completed, 300);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// An idle in-memory source causes no fetch calls: one at start, then none for an hour.
#[actix_rt::test]
async fn idle_memory_source_is_not_polled() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after_start = poller.stats().fetch_calls;
    assert!(
        after_start <= 1,
        "start fetches at most once: {after_start}"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        poller.stats().fetch_calls,
        after_start,
        "no polling while idle"
    );
    // A submit wakes it at once.
    let r = poller.submit_tracked(1).await.unwrap();
    assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A full queue hands the task (or the whole batch) back; nothing is dropped or grows unbounded.
#[actix_rt::test]
async fn full_queue_hands_the_task_back() {
    let (g, opener) = gate();
    // No task dispatched ahead, so the queue's capacity is all that waits (with it, one more
    // task would wait at the executor, still bounded).
    let poller = Poller::<String>::builder()
        .workers(1)
        .capacity(2)
        .dispatch_ahead(0)
        .on_current_arbiter()
        .start(move |_s: String, _cx| {
            let g = g.clone();
            async move {
                g.wait().await;
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let first = poller.submit_tracked("running".into()).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 1).await;
    poller.submit("q1".into()).await.unwrap();
    poller.submit("q2".into()).await.unwrap();
    match poller.submit("q3".to_string()).await {
        Err(SubmitError::Full(task)) => assert_eq!(task, "q3"),
        other => panic!("expected Full, got {other:?}"),
    }
    match poller.submit_batch(vec!["b1".into(), "b2".into()]).await {
        Err(SubmitError::Full(batch)) => assert_eq!(batch, vec!["b1", "b2"]),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(poller.stats().queued, Some(2));
    opener.open();
    assert_eq!(
        common::within(first.outcome()).await,
        Ok(FinalState::Completed)
    );
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 3).await;
    assert_eq!(poller.stats().submitted, 3);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A panicking handler (before or after its first await) is counted as a failure with its
/// message; the executor lives on and the slot is freed, so later tasks still run on one worker.
#[actix_rt::test]
async fn panics_are_counted_and_free_their_slot() {
    let poller = Poller::<u32>::builder()
        .workers(1)
        .executors(1)
        .start(|n: u32, _cx| {
            if n == 1 {
                panic!("boom before the future");
            }
            async move {
                tokio::task::yield_now().await;
                if n == 2 {
                    panic!("boom inside the future: {n}");
                }
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let r1 = poller.submit_tracked(1).await.unwrap();
    let r2 = poller.submit_tracked(2).await.unwrap();
    let rest = poller
        .submit_batch_tracked((3..20).collect())
        .await
        .unwrap();
    match common::within(r1.outcome()).await {
        Ok(FinalState::Dead { error, attempts: 1 }) => assert_eq!(error, "boom before the future"),
        other => panic!("{other:?}"),
    }
    match common::within(r2.outcome()).await {
        Ok(FinalState::Dead { error, .. }) => assert_eq!(error, "boom inside the future: 2"),
        other => panic!("{other:?}"),
    }
    for r in rest {
        assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
    }
    let s = poller.stats();
    assert_eq!(
        (s.panicked, s.failed, s.dead, s.completed, s.busy),
        (2, 2, 2, 17, 0)
    );
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A handler error is a failure with its message; with one attempt the task is dead.
#[actix_rt::test]
async fn handler_errors_are_reported_with_their_message() {
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .start(|n: u32, _cx| async move {
            if n == 0 {
                Err(std::io::Error::other("disk on fire"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    let r = poller.submit_tracked(0).await.unwrap();
    assert_eq!(
        common::within(r.outcome()).await,
        Ok(FinalState::Dead {
            error: "disk on fire".into(),
            attempts: 1
        })
    );
    assert_eq!(poller.stats().failed, 1);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[actix_rt::test]
async fn bad_configuration_is_a_clear_error() {
    let h = |_n: u32, _cx| async { Ok::<_, Infallible>(()) };
    let err = Poller::<u32>::builder().workers(0).start(h).unwrap_err();
    assert_eq!(err, StartError::ZeroWorkers);
    assert!(err.to_string().contains("workers must be at least 1"));
    let err = Poller::<u32>::builder().executors(0).start(h).unwrap_err();
    assert_eq!(err, StartError::ZeroExecutors);
    let err = Poller::<u32>::builder().capacity(0).start(h).unwrap_err();
    assert_eq!(err, StartError::ZeroCapacity);
    let (mut source, _log) = ScriptedSource::<u32>::new(1);
    source.limits.max_batch = 0;
    let err = Poller::<u32>::builder()
        .source(source)
        .start(h)
        .unwrap_err();
    assert_eq!(err, StartError::ZeroFetchLimit);
}

/// Under a plain tokio runtime (no actix System) starting is an error that says how to fix it,
/// not a panic.
#[test]
fn starting_without_an_actix_system_is_an_error() {
    let h = |_n: u32, _cx| async { Ok::<_, Infallible>(()) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async { Poller::<u32>::builder().start(h).unwrap_err() });
    assert_eq!(err, StartError::NoSystem);
    assert!(err.to_string().contains("actix_rt::main"), "{err}");
    // And outside any runtime at all.
    assert_eq!(
        Poller::<u32>::builder().start(h).unwrap_err(),
        StartError::NoSystem
    );
}

/// A source with leases gets a heartbeat every interval while the poller runs, and on through a
/// shutdown's drain (a task that runs longer than its lease then keeps it), and none once the
/// source is closed.
#[actix_rt::test]
async fn heartbeats_run_on_their_interval_and_through_the_drain() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(10);
    source.heartbeat_every = Some(Duration::from_secs(10));
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .source(source)
        .start(|secs: u32, _cx| async move {
            tokio::time::sleep(Duration::from_secs(secs.into())).await;
            Ok::<_, Infallible>(())
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(105)).await;
    let idle = log.borrow().heartbeats;
    assert!(
        (10..=11).contains(&idle),
        "{idle} heartbeats in 105 s at one per 10 s"
    );
    poller.submit(100).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 1).await;
    let before = log.borrow().heartbeats;
    let report = poller.shutdown(Duration::from_secs(300)).await.unwrap();
    assert_eq!(report.finished_during_drain, 1, "the task ran to its end");
    let during = log.borrow().heartbeats - before;
    assert!(
        (9..=11).contains(&during),
        "{during} heartbeats during a 100 s drain at one per 10 s"
    );
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        log.borrow().heartbeats,
        before + during,
        "none after the source closed"
    );
}

/// Fetches in flight together that fail together count as one backoff round: the next try comes
/// after the first delay, not after the delay of as many failures as there were fetches.
#[actix_rt::test]
async fn concurrent_failed_fetches_are_one_backoff_round() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(100);
    source.preload((0..4).collect());
    source.fail_first = 4;
    source.fetch_delay = Some(Duration::from_millis(1));
    source.limits = actix_poller::FetchLimits::default()
        .max_batch(1)
        .max_in_flight(4);
    let backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).with_jitter(0.0);
    let t0 = tokio::time::Instant::now();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .on_current_arbiter()
        .fetch_backoff(backoff)
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 4).await;
    let times = log.borrow().fetch_times.clone();
    assert_eq!(
        &log.borrow().fetches[..4],
        &[1, 1, 1, 1],
        "four single fetches in flight"
    );
    assert!(
        times[..4].iter().all(|t| *t == t0),
        "all four started at once"
    );
    let retry_at = times[4] - t0;
    assert!(
        retry_at >= Duration::from_millis(100) && retry_at < Duration::from_millis(150),
        "retried after one round's delay (100 ms), not four rounds' (800 ms): {retry_at:?}"
    );
    assert_eq!(poller.stats().fetch_errors, 4);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// While an ack call is in flight, later acks wait and go together in the next call.
#[actix_rt::test]
async fn acks_coalesce_while_an_ack_call_is_in_flight() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(1000);
    source.preload((0..200).collect());
    source.ack_delay = Some(Duration::from_millis(10));
    let poller = Poller::<u32>::builder()
        .workers(4)
        .on_current_arbiter()
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 200).await;
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
    let log = log.borrow();
    assert_eq!(
        log.ack_batches.iter().sum::<usize>(),
        200,
        "every ack recorded once"
    );
    assert!(
        log.ack_batches.len() <= 4,
        "200 acks in {} calls: {:?}",
        log.ack_batches.len(),
        log.ack_batches
    );
}

/// A failed ack call is retried after a backoff, not dropped (a durable source would otherwise
/// run completed tasks again once their leases expire), and a tracked submitter learns the
/// final state only once the source has recorded it.
#[actix_rt::test]
async fn failed_acks_are_retried_and_trackers_wait_for_them() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(100);
    source.ack_delay = Some(Duration::from_millis(1));
    source.fail_acks = 3;
    let poller = Poller::<u32>::builder()
        .workers(2)
        .on_current_arbiter()
        .fetch_backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..10).collect())
        .await
        .unwrap();
    for r in receipts {
        let id = r.id();
        assert_eq!(common::within(r.outcome()).await, Ok(FinalState::Completed));
        assert!(
            log.borrow().acks.iter().any(|a| a.id == id),
            "task {id} resolved before its ack was recorded"
        );
    }
    let stats = poller.stats();
    assert_eq!(stats.ack_errors, 3);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
    let log = log.borrow();
    assert_eq!(log.failed_acks, 3);
    let mut ids: Vec<u64> = log.acks.iter().map(|a| a.id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every ack recorded");
    assert_eq!(log.acks.len(), 10, "and recorded once");
}

/// A source that never records acks cannot hold shutdown hostage: the last batch gets one more
/// try, then shutdown finishes and trackers learn the poller shut down.
#[actix_rt::test]
async fn shutdown_finishes_when_acks_keep_failing() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(100);
    source.ack_delay = Some(Duration::from_millis(1));
    source.fail_acks = usize::MAX;
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .fetch_backoff(Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
        ))
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    let receipt = poller.submit_tracked(1).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().ack_errors >= 1).await;
    let started = tokio::time::Instant::now();
    common::within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the ack backoff: {:?}",
        started.elapsed()
    );
    assert_eq!(
        receipt.outcome().await,
        Err(actix_poller::OutcomeError::ShutDown)
    );
    assert!(log.borrow().acks.is_empty());
    assert!(log.borrow().failed_acks >= 2, "one last try at shutdown");
}

/// With tasks dispatched ahead, an executor refills a slot from its own queue: the Fetcher asks
/// for up to the credits plus the room in the executors' queues, never more; the queued tasks show in `buffered`; one cancelled there
/// ends at once without taking a slot; shutdown hands the queued ones back in FIFO order.
#[actix_rt::test]
async fn executors_refill_from_their_queue_and_give_it_back() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::new(1000);
    source.preload((0..20u32).collect());
    let (g, opener) = gate();
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let poller = Poller::<u32>::builder()
        .workers(2)
        .executors(2)
        .dispatch_ahead(3)
        .on_current_arbiter()
        .source(source)
        .start(move |n: u32, _cx| {
            let (g, p) = (g.clone(), p.clone());
            async move {
                p.enter();
                if n < 2 {
                    g.wait().await;
                }
                p.exit();
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    common::eventually(Duration::from_secs(5), || {
        let s = poller.stats();
        // Nothing has finished yet, so each executor's queue is at its starting depth, one.
        s.busy == 2 && s.buffered == 2
    })
    .await;
    assert!(
        log.borrow().fetches.iter().all(|&n| n <= 2 + 2 * 3),
        "asks for the credits plus the executors' room: {:?}",
        log.borrow().fetches
    );
    // Task 2 went ahead to an executor: cancelled there, it ends at once and takes no slot.
    assert_eq!(
        poller.cancel(actix_poller::TaskId(3)).await,
        Ok(actix_poller::CancelOutcome::Dequeued)
    );
    common::eventually(Duration::from_secs(5), || poller.stats().cancelled == 1).await;
    assert_eq!(poller.stats().busy, 2, "a queued task holds no slot");
    opener.open();
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 19).await;
    assert!(probe.max() <= 2, "{} ran at once", probe.max());
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A task that takes over a slot is polled as it starts, before the other tasks that woke with
/// the one that left: when a cohort of timers fires, no slot sits idle while the rest of the
/// cohort ends. Tasks 0 and 1 wake together; whichever ends first, its slot's next task (2,
/// queued at the executor) has run before the other one resumes.
#[actix_rt::test]
async fn a_refilled_slot_starts_before_the_rest_of_its_cohort_resumes() {
    let (g, opener) = gate();
    let events = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let e = events.clone();
    let poller = Poller::<u32>::builder()
        .workers(2)
        .executors(1)
        .dispatch_ahead(2)
        .on_current_arbiter()
        .start(move |n: u32, _cx| {
            let (g, e) = (g.clone(), e.clone());
            async move {
                e.lock().unwrap().push(format!("start {n}"));
                if n < 2 {
                    g.wait().await;
                }
                e.lock().unwrap().push(format!("end {n}"));
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    poller.submit_batch(vec![0, 1, 2]).await.unwrap();
    common::eventually(Duration::from_secs(5), || {
        let s = poller.stats();
        s.busy == 2 && s.buffered == 1
    })
    .await;
    opener.open();
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 3).await;
    let events = events.lock().unwrap().clone();
    let pos = |ev: &str| events.iter().position(|x| x == ev).unwrap();
    let second_end = pos("end 0").max(pos("end 1"));
    assert!(
        pos("start 2") < second_end,
        "the refilled slot waited for the whole cohort: {events:?}"
    );
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Shutdown hands back the tasks queued at executors, first (they were fetched first), then the
/// Fetcher's prefetched ones, then the source's queue: FIFO overall.
#[actix_rt::test]
async fn queued_at_executors_are_handed_back_in_order() {
    tokio::time::pause();
    let (g, _opener) = gate();
    let builder = Poller::<u32>::builder()
        .workers(1)
        .dispatch_ahead(4)
        .prefetch(2)
        .on_current_arbiter();
    let poller = common::start_gated(builder, g);
    poller.submit_batch((0..20).collect()).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 1).await;
    // One queued at the executor (its starting depth), two prefetched at the Fetcher.
    common::eventually(Duration::from_secs(5), || poller.stats().buffered == 3).await;
    let report = poller.shutdown(Duration::from_millis(10)).await.unwrap();
    let back: Vec<u32> = report.handed_back.iter().map(|t| t.payload).collect();
    assert_eq!(back, (1..20).collect::<Vec<_>>());
}
