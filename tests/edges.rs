//! The edges of the Fetcher, the Scheduler and the submit path (issue 12): extreme values,
//! sources that answer one task per call, messages sent without waiting for the answer, bounded
//! maps, and the figures in `Stats`. Virtual time where time matters; no sleeps-and-hope.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use actix_poller::{
    BoxError, FinalState, Poller, RetryAfter, RetryPolicy, Submit, SubmitError, TaskContext,
    TaskOptions,
};
use common::within;

// ---- 12.8: no user value panics an actor --------------------------------------------------

/// Task 0 fails with `error` (under `policy`), tasks 1 and 2 complete: the Fetcher must survive
/// task 0's ack. Returns what shutdown handed back, as (payload, attempt).
async fn fail_task_zero_with(policy: RetryPolicy, error: fn() -> BoxError) -> Vec<(u32, u32)> {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .retry(policy)
        .start(move |n: u32, _cx: TaskContext| async move {
            if n == 0 {
                Err(error())
            } else {
                Ok(())
            }
        })
        .unwrap();
    poller.submit(0).await.unwrap();
    let later = poller.submit_tracked(1).await.unwrap();
    assert_eq!(within(later.outcome()).await, Ok(FinalState::Completed));
    // Still alive after task 0's ack was recorded.
    let again = poller.submit_tracked(2).await.unwrap();
    assert_eq!(within(again.outcome()).await, Ok(FinalState::Completed));
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    report
        .handed_back
        .into_iter()
        .map(|t| (t.payload, t.attempt))
        .collect()
}

/// `RetryAfter(Duration::MAX)` snoozes the task to the far future; the Fetcher survives (it used
/// to panic on `Instant + Duration::MAX` and take the in-memory queue with it): later tasks run,
/// and shutdown hands the snoozed task back, its attempt not counted.
#[actix_rt::test]
async fn retry_after_duration_max_snoozes_to_far_future() {
    let back = fail_task_zero_with(RetryPolicy::attempts(3), || {
        RetryAfter(Duration::MAX).into()
    })
    .await;
    assert_eq!(back, vec![(0, 1)]);
}

/// A retry policy whose backoff is `Duration::MAX` (the Scheduler used to panic computing it):
/// the retry waits in the far future.
#[actix_rt::test]
async fn retry_backoff_of_duration_max_waits_in_far_future() {
    let back = fail_task_zero_with(RetryPolicy::attempts(3).fixed(Duration::MAX), || {
        "fails".into()
    })
    .await;
    assert_eq!(back, vec![(0, 2)]);
}

/// `TaskOptions::delay(Duration::MAX)` is "far future", not a panic in the caller.
#[actix_rt::test]
async fn delay_of_duration_max_is_far_future() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
        .unwrap();
    let options = TaskOptions::new().delay(Duration::MAX);
    poller
        .submit_with(Submit::new(0).options(options))
        .await
        .unwrap();
    poller.submit_after(1, Duration::MAX).await.unwrap();
    let now = poller.submit_tracked(2).await.unwrap();
    assert_eq!(within(now.outcome()).await, Ok(FinalState::Completed));
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(report.handed_back.len(), 2);
}

/// `workers(usize::MAX)` and `prefetch(usize::MAX)` mean "unbounded", not an overflow.
#[actix_rt::test]
async fn unbounded_workers_and_prefetch_do_not_overflow() {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let poller = Poller::<u32>::builder()
        .workers(usize::MAX)
        .prefetch(usize::MAX)
        .executors(2)
        .start(move |_n: u32, _cx: TaskContext| {
            r.fetch_add(1, SeqCst);
            async { Ok::<_, Infallible>(()) }
        })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..100).collect())
        .await
        .unwrap();
    for r in receipts {
        assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
    }
    assert_eq!(ran.load(SeqCst), 100);
    within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
}

/// Refused submits hand the task back (no `expect` on the path): after shutdown, `Closed(task)`.
#[actix_rt::test]
async fn submit_after_shutdown_hands_the_task_back() {
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
        .unwrap();
    within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(matches!(
        poller.submit(7).await,
        Err(SubmitError::Closed(7))
    ));
    // Straight to the (stopped) Fetcher, past the handle's fast path.
    let recipient = poller.submit_recipient();
    let err = recipient.send(Submit::new(8)).await;
    assert!(err.is_err(), "the Fetcher is gone");
}

// ---- 12.13: a refused submit is never lost silently ----------------------------------------

/// A full queue answers `send` with the task in `SubmitError::Full`; a `do_send` cannot receive
/// that answer, so the refusal is counted (and logged) rather than silent.
#[actix_rt::test]
async fn refused_do_send_is_counted_and_send_hands_back() {
    let (gate, opener) = common::gate();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .capacity(1)
        .dispatch_ahead(0)
        .start(move |_n: u32, _cx: TaskContext| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let first = poller.submit_tracked(0).await.unwrap();
    while poller.stats().busy == 0 {
        tokio::task::yield_now().await;
    }
    poller.submit(1).await.unwrap(); // fills the queue
    let recipient = poller.submit_recipient();
    recipient.do_send(Submit::new(2));
    // Mailbox order: once this answer is in, the `do_send` before it was handled.
    let refused = recipient.send(Submit::new(3)).await.unwrap();
    assert!(matches!(refused, Err(SubmitError::Full(3))));
    assert_eq!(poller.stats().dropped_submits, 1);
    let batch = poller.submit_batch_recipient();
    batch.do_send(actix_poller::SubmitBatch::new(vec![4, 5]));
    let refused = batch
        .send(actix_poller::SubmitBatch::new(vec![6]))
        .await
        .unwrap();
    assert!(matches!(refused, Err(SubmitError::Full(v)) if v == vec![6]));
    assert_eq!(poller.stats().dropped_submits, 2);
    opener.open();
    assert_eq!(within(first.outcome()).await, Ok(FinalState::Completed));
    within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
}

// ---- 12.14: a one-task-per-call source with the default limits does not stall -------------

/// The memory source, changed as a test needs: `one_per_call` hands out one task per call, as
/// a remote task service does, with `FetchLimits::default()`, answering each with
/// `Fetched::new` (the natural way to write it; a short answer used to mean "empty": the
/// Fetcher slept after the first task and the rest never ran). `shared` says the store is
/// shared with other pollers (`final_states_interval`), though it never learns a final state.
#[derive(Default)]
struct Wrapped {
    inner: actix_poller::MemorySource<u32>,
    one_per_call: bool,
    shared: bool,
}

impl actix_poller::Source<u32> for Wrapped {
    type Error = Infallible;

    fn fetch(
        &mut self,
        max: usize,
    ) -> futures::future::LocalBoxFuture<'static, Result<actix_poller::Fetched<u32>, Infallible>>
    {
        if !self.one_per_call {
            return self.inner.fetch(max);
        }
        let fetched = self.inner.fetch(1);
        Box::pin(async move {
            let actix_poller::Fetched { tasks, wake_on, .. } = fetched.await?;
            Ok(actix_poller::Fetched::new(tasks, wake_on))
        })
    }

    fn ack(
        &mut self,
        acks: Vec<actix_poller::Ack>,
    ) -> futures::future::LocalBoxFuture<'static, Result<(), Infallible>> {
        self.inner.ack(acks)
    }

    fn enqueue(
        &mut self,
        tasks: Vec<actix_poller::source::NewTask<u32>>,
    ) -> futures::future::LocalBoxFuture<'static, actix_poller::source::EnqueueResult<u32>> {
        self.inner.enqueue(tasks)
    }

    fn final_states_interval(&self) -> Option<Duration> {
        self.shared.then_some(Duration::from_secs(60))
    }
}

#[actix_rt::test]
async fn one_task_per_call_source_with_default_limits_does_not_stall() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .source(Wrapped {
            one_per_call: true,
            ..Wrapped::default()
        })
        .workers(4)
        .on_current_arbiter()
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..50).collect())
        .await
        .unwrap();
    for r in receipts {
        assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
    }
    within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
}

// ---- 12.9: a receipt resolves when another process ran the task ----------------------------

#[cfg(feature = "sqlite")]
mod shared_sqlite {
    use super::*;
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};

    fn config(path: &std::path::Path) -> SqliteConfig {
        SqliteConfig::new(path).poll_interval(Duration::from_millis(50))
    }

    /// Two pollers on one SQLite file. A task submitted (tracked) through poller A, which has no
    /// free slot, is run by poller B: A never sees its ack, yet A's receipt resolves, from the
    /// store (`Source::final_states`).
    #[actix_rt::test]
    async fn receipt_resolves_when_another_poller_ran_the_task() {
        let path = std::env::temp_dir().join(format!("ap-edges-{:x}.db", fastrand::u64(..)));
        let started = Arc::new(tokio::sync::Notify::new());
        let (gate, opener) = common::gate();
        let a_source = SqliteSource::<u32>::connect(config(&path)).await.unwrap();
        let s = started.clone();
        let a = Poller::builder()
            .source(a_source)
            .workers(1)
            .dispatch_ahead(0)
            .on_current_arbiter()
            .start(move |n: u32, _cx: TaskContext| {
                let (s, gate) = (s.clone(), gate.clone());
                async move {
                    if n == 0 {
                        s.notify_one();
                        gate.wait().await;
                    }
                    Ok::<_, Infallible>(())
                }
            })
            .unwrap();
        let blocker = a.submit_tracked(0).await.unwrap();
        within(started.notified()).await;
        // A's only slot is taken: it fetches nothing more from here on.
        let b_source = SqliteSource::<u32>::connect(config(&path)).await.unwrap();
        let ran_on_b = Arc::new(AtomicUsize::new(0));
        let r = ran_on_b.clone();
        let b = Poller::builder()
            .source(b_source)
            .workers(2)
            .on_current_arbiter()
            .start(move |_n: u32, _cx: TaskContext| {
                r.fetch_add(1, SeqCst);
                async { Ok::<_, Infallible>(()) }
            })
            .unwrap();
        let receipt = a.submit_tracked(1).await.unwrap();
        assert_eq!(within(receipt.outcome()).await, Ok(FinalState::Completed));
        assert_eq!(ran_on_b.load(SeqCst), 1, "B ran it");
        opener.open();
        assert_eq!(within(blocker.outcome()).await, Ok(FinalState::Completed));
        within(b.shutdown(Duration::from_secs(1))).await.unwrap();
        within(a.shutdown(Duration::from_secs(1))).await.unwrap();
        let _ = std::fs::remove_file(&path);
    }
}

// ---- 12.3: the figures in Stats mean what their docs say ------------------------------------

/// Runs `n` short tasks on `workers` slots over `executors` threads, sampling `Stats` and
/// `executor_stats` between every step of the submitting task: `busy` must never read above
/// `workers`; after shutdown, `busy` and `buffered` are 0.
async fn busy_stays_within(workers: usize, executors: usize, ahead: usize, n: u32) {
    let poller = Poller::<u32>::builder()
        .workers(workers)
        .executors(executors)
        .dispatch_ahead(ahead)
        .prefetch(8)
        .start(|n: u32, _cx: TaskContext| async move {
            for _ in 0..(n % 3) {
                tokio::task::yield_now().await;
            }
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let limit = workers as u64;
    let check = |poller: &Poller<u32>| {
        let s = poller.stats();
        assert!(s.busy <= limit, "busy {} > {limit}", s.busy);
        for e in poller.executor_stats() {
            assert!(e.busy <= limit, "executor busy {} > {limit}", e.busy);
        }
        s
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        poller.submit_batch(chunk.to_vec()).await.unwrap();
        for _ in 0..50 {
            check(&poller);
            tokio::task::yield_now().await;
        }
    }
    within(async {
        while check(&poller).completed < u64::from(n) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(report.handed_back.is_empty());
    let s = poller.stats();
    assert_eq!((s.busy, s.buffered), (0, 0));
}

/// Under load, with slots changing hands inside executors (dispatch ahead) on two threads,
/// `busy` never reads above `workers` at any observation; after shutdown, `buffered` is 0.
/// It used to count a start as soon as an executor flushed it and the end that freed its slot
/// only once the Scheduler handled the report (reads of 25 with `workers(16)`; 5 with 3 here).
#[actix_rt::test]
async fn busy_never_exceeds_workers_and_buffered_is_zero_after_shutdown() {
    busy_stays_within(3, 2, actix_poller::DEFAULT_DISPATCH_AHEAD, 3_000).await;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// The same at every observation, whatever the workers, executors and queue depths.
    #[test]
    fn busy_never_exceeds_workers_under_any_shape(
        workers in 1usize..8,
        executors in 1usize..4,
        ahead in 0usize..6,
        n in 100u32..1_500,
    ) {
        actix_rt::System::new().block_on(busy_stays_within(workers, executors, ahead, n));
    }
}

/// `buffered` is 0 after a shutdown that handed unstarted tasks back.
#[actix_rt::test]
async fn buffered_is_zero_after_shutdown_with_tasks_held() {
    let (gate, _opener) = common::gate();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .prefetch(4)
        .on_current_arbiter()
        .start(move |_n: u32, _cx: TaskContext| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    poller.submit_batch((0..10).collect()).await.unwrap();
    while poller.stats().buffered == 0 {
        tokio::task::yield_now().await;
    }
    let report = within(poller.shutdown(Duration::ZERO)).await.unwrap();
    assert_eq!(report.handed_back.len(), 9);
    let s = poller.stats();
    assert_eq!((s.busy, s.buffered), (0, 0));
}

/// A source whose enqueue says it began (on `began`) and never lands.
struct EndlessEnqueue {
    inner: actix_poller::MemorySource<u32>,
    began: std::sync::mpsc::Sender<()>,
}

impl actix_poller::Source<u32> for EndlessEnqueue {
    type Error = Infallible;

    fn fetch(
        &mut self,
        max: usize,
    ) -> futures::future::LocalBoxFuture<'static, Result<actix_poller::Fetched<u32>, Infallible>>
    {
        self.inner.fetch(max)
    }

    fn ack(
        &mut self,
        acks: Vec<actix_poller::Ack>,
    ) -> futures::future::LocalBoxFuture<'static, Result<(), Infallible>> {
        self.inner.ack(acks)
    }

    fn enqueue(
        &mut self,
        _tasks: Vec<actix_poller::source::NewTask<u32>>,
    ) -> futures::future::LocalBoxFuture<'static, actix_poller::source::EnqueueResult<u32>> {
        let _ = self.began.send(());
        Box::pin(futures::future::pending())
    }
}

/// The System running the poller is torn down while its source stores a submit (a durable
/// enqueue in flight): the submitter, on another System, gets `SubmitError::Unknown` (the task
/// cannot come back and whether it was stored cannot be known), not a panic.
#[test]
fn a_poller_dying_mid_store_answers_unknown() {
    let (began_tx, began) = std::sync::mpsc::channel();
    let (handle_tx, handle) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let sys = actix_rt::System::new();
        sys.block_on(async move {
            let source = EndlessEnqueue {
                inner: actix_poller::MemorySource::default(),
                began: began_tx,
            };
            let poller = Poller::<u32>::builder()
                .source(source)
                .on_current_arbiter()
                .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
                .unwrap();
            let _ = handle_tx.send((poller, actix_rt::System::current()));
        });
        // Returns once the System is stopped; dropping it drops every actor it ran.
        let _ = sys.run();
    });
    let (poller, system) = handle.recv().unwrap();
    actix_rt::System::new().block_on(async move {
        let submit = actix_rt::spawn(async move { poller.submit_tracked(7).await });
        let waited = tokio::task::spawn_blocking(move || {
            let began = began.recv_timeout(Duration::from_secs(30));
            system.stop();
            let _ = thread.join();
            began
        });
        assert!(waited.await.unwrap().is_ok(), "the enqueue never began");
        let answer = within(submit).await.unwrap();
        assert!(
            matches!(answer, Err(SubmitError::Unknown)),
            "expected Unknown, got {answer:?}"
        );
    });
}

// ---- 12.16: a blocked executor does not collect the work others could run -------------------

/// One handler blocks its executor's thread (a blocking call in async code). Once that
/// executor has been quiet past the stall window, everything submitted runs on the other
/// executor; the blocked one is sent nothing more (it used to get tasks queued ahead, which
/// waited for the blocked thread while the other executor idled). Real threads, so no paused
/// clock: the only wait is for the stall window to pass, a precondition, not a timing assert.
#[actix_rt::test]
async fn a_blocked_executor_is_sent_nothing_more() {
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .start(move |n: u32, _cx: TaskContext| {
            if n == 0 {
                s.notify_one();
                // Blocks this executor's thread until the test releases it.
                let _ = blocked.lock().map(|rx| rx.recv());
            }
            async { Ok::<_, Infallible>(()) }
        })
        .unwrap();
    let stuck = poller.submit_tracked(0).await.unwrap();
    within(started.notified()).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past the stall window (100 ms)
    let receipts = poller
        .submit_batch_tracked((1..=200).collect())
        .await
        .unwrap();
    for r in receipts {
        assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
    }
    let _ = release.send(());
    assert_eq!(within(stuck.outcome()).await, Ok(FinalState::Completed));
    within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
}

/// Tasks dispatched ahead into the queue of an executor whose thread then blocks are taken back
/// and run at the other executor while the thread is still blocked (they used to wait for it).
/// Two workers, two executors, one batch: task 0 starts at executor 0 and blocks its thread;
/// the first task queued ahead goes to executor 0's queue, behind it (the dispatch rules place
/// it there whatever the order the first credits and the batch arrive in); every other task
/// runs at executor 1. Each task runs once and ends once; the bound holds throughout.
#[actix_rt::test]
async fn tasks_queued_at_a_blocked_executor_run_elsewhere() {
    const N: u32 = 40;
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let probe = Arc::new(common::Probe::default());
    let calls: Arc<Vec<AtomicUsize>> = Arc::new((0..=N).map(|_| AtomicUsize::new(0)).collect());
    let (p, c) = (probe.clone(), calls.clone());
    let poller = Poller::<u32>::builder()
        .workers(2)
        .executors(2)
        .start(move |n: u32, _cx: TaskContext| {
            c[n as usize].fetch_add(1, SeqCst);
            p.enter();
            if n == 0 {
                // Blocks this executor's thread until the test releases it.
                let _ = blocked.lock().map(|rx| rx.recv());
            }
            let p = p.clone();
            async move {
                p.exit();
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let mut receipts = poller
        .submit_batch_tracked((0..=N).collect())
        .await
        .unwrap();
    let stuck = receipts.remove(0);
    // Event-driven: each outcome resolves once its task completed, with task 0 still blocked.
    for r in receipts {
        assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
    }
    let stats = poller.stats();
    assert!(
        stats.stolen >= 1,
        "no task was queued behind the blocked one: the test proved nothing ({stats:?})"
    );
    assert_eq!(probe.running.load(SeqCst), 1, "only the blocked task runs");
    let _ = release.send(());
    assert_eq!(within(stuck.outcome()).await, Ok(FinalState::Completed));
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(report.handed_back.is_empty(), "{report:?}");
    let counts: Vec<u32> = calls.iter().map(|c| c.load(SeqCst) as u32).collect();
    common::assert_each_once(&counts, "handler calls");
    assert!(
        probe.max() <= 2,
        "the bound broke: {} ran at once",
        probe.max()
    );
}

// ---- 12.10: every buffer has a bound --------------------------------------------------------

/// A source that refuses every ack: the Fetcher stops fetching once 10,000 acks wait to be
/// recorded, rather than run the whole queue into a backlog that grows without bound.
#[actix_rt::test]
async fn refused_acks_stop_fetching_at_the_backlog_bound() {
    tokio::time::pause();
    let (mut source, _log) = common::ScriptedSource::<u32>::new(100_000);
    source.preload((0..20_000).collect());
    source.fail_acks = usize::MAX;
    let poller = Poller::<u32>::builder()
        .source(source)
        .workers(8)
        .on_current_arbiter()
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
        .unwrap();
    within(async {
        while poller.stats().completed < 10_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // An hour of failed ack retries later (virtual time), nothing more was fetched. What
    // started past the bound was fetched before it: at most the one executor's queue (tiny
    // tasks queue up to `DEFAULT_DISPATCH_AHEAD`), its slots, and a fetch in flight.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = poller.stats();
    let past_the_bound = actix_poller::DEFAULT_DISPATCH_AHEAD as u64 + 200;
    assert!(
        s.started < 10_000 + past_the_bound,
        "started {} with 10,000 acks unrecorded",
        s.started
    );
    assert!(s.ack_errors > 0);
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(report.handed_back.len() as u64 + s.started, 20_000);
}

/// A store "shared with other pollers" that never learns a final state: a tracked receipt there
/// resolves with `TrackingExpired` after `TRACKING_LIMIT`, so the tracker map cannot grow
/// without bound (it used to wait forever).
#[actix_rt::test]
async fn tracking_expires_in_a_shared_store_that_never_answers() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .source(Wrapped {
            shared: true,
            ..Wrapped::default()
        })
        .workers(1)
        .on_current_arbiter()
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
        .unwrap();
    // Due in two days: not run, not final, within the tracking limit of one day.
    let options = TaskOptions::new().delay(Duration::from_secs(2 * 24 * 3600));
    let receipt = poller
        .submit_with(Submit::new(0).options(options).tracked())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = common::within_for(Duration::from_secs(3 * 24 * 3600), receipt.outcome()).await;
    assert_eq!(
        outcome,
        Err(actix_poller::OutcomeError::TrackingExpired(
            actix_poller::TRACKING_LIMIT
        ))
    );
    assert!(started.elapsed() >= actix_poller::TRACKING_LIMIT);
    within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
}

// ---- issue 14: counting a big queue -------------------------------------------------------

/// The periodic count of a source that cannot say `queued` (a durable one) takes at most about
/// 5 % of the time, however long a count takes: a PostgreSQL count of a million queued rows
/// took 0.4–1.2 s of the server's time, every 5 s. A count that takes 1 s waits 19 s before
/// the next; one that takes 10 ms keeps the 5-s cadence. The first is at the first tick, not
/// at start (when a poller has the most to catch up). Virtual time: the counts' durations and
/// spacing are exact.
#[actix_rt::test]
async fn a_slow_count_is_spaced_by_its_duration() {
    const SAMPLE: Duration = Duration::from_secs(5);
    tokio::time::pause();
    for (take, at_most, at_least) in [
        (Duration::from_secs(1), 7, 5),
        (Duration::from_millis(10), 24, 22),
    ] {
        let (mut source, log) = common::ScriptedSource::<u32>::new(100);
        source.counts_take = Some(take);
        let poller = Poller::<u32>::builder()
            .source(source)
            .workers(1)
            .on_current_arbiter()
            .start(|_n: u32, _cx: TaskContext| async { Ok::<_, Infallible>(()) })
            .unwrap();
        let began = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let counts = log.borrow().counts.clone();
        let busy: Duration = counts.iter().map(|(from, to)| *to - *from).sum();
        assert!(
            (at_least..=at_most).contains(&counts.len()),
            "counts taking {take:?}: {} in 120 s",
            counts.len()
        );
        assert!(
            busy <= Duration::from_secs(120) / 19,
            "counts taking {take:?}: {busy:?} of counting in 120 s"
        );
        for pair in counts.windows(2) {
            let (_, ended) = pair[0];
            let (next, _) = pair[1];
            assert!(
                next - ended >= take * 19,
                "counts taking {take:?}: the next began {:?} after one ended",
                next - ended
            );
        }
        let first = counts.first().map(|(at, _)| *at - began);
        assert!(
            first.is_some_and(|after| (SAMPLE..SAMPLE * 2).contains(&after)),
            "the first count {first:?} after the start: at the first tick, not at once"
        );
        assert_eq!(poller.stats().queued, Some(0), "the counts answered");
        within(poller.shutdown(Duration::from_secs(5)))
            .await
            .unwrap();
    }
}
