//! Actors that die under the poller, and shutdowns that must end anyway: executors whose arbiter
//! stops (alone, or with the whole actix `System`), handler factories that panic, handlers that
//! block their thread, sources that hang, durations too long to represent. Whatever happens,
//! every accepted task is accounted for, per id: completed, handed back, or reported lost.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use actix_poller::source::{FetchLimits, Fetched, Source};
use actix_poller::{
    Ack, FinalState, OutcomeError, Poller, Receipt, RetryPolicy, StartError, Submit, Task,
    TaskContext, TaskId, TaskOptions, Unfinished, SHUTDOWN_SLACK,
};
use common::{eventually, gate, within, within_for, DropProbe};
use futures::future::{pending, FutureExt, LocalBoxFuture};

/// Durations too long to add to an instant are "no limit", not a panic: a `Duration::MAX`
/// default timeout, per-task timeout, cancel grace and shutdown grace.
#[actix_rt::test]
async fn huge_durations_mean_no_limit() {
    tokio::time::pause();
    let poller = Poller::<u64>::builder()
        .on_current_arbiter()
        .timeout(Duration::MAX)
        .cancel_grace(Duration::MAX)
        .start(|ms: u64, _cx| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let a = poller.submit_tracked(10).await.unwrap();
    let opts = TaskOptions::new().timeout(Duration::MAX);
    let b = poller
        .submit_with(Submit::new(20).options(opts).tracked())
        .await
        .unwrap();
    assert_eq!(within(a.outcome()).await, Ok(FinalState::Completed));
    assert_eq!(within(b.outcome()).await, Ok(FinalState::Completed));
    assert_eq!(poller.stats().executors_lost, 0);
    let shutdown = poller.shutdown(Duration::MAX);
    assert_send(&shutdown); // `web::serve` and apps spawn it on any runtime
    let report = within(shutdown).await.unwrap();
    assert!(report.unfinished.is_empty() && report.lost.is_empty());
}

fn assert_send<F: Send>(_: &F) {}

thread_local! {
    /// Set on an executor's thread; dropped (counted) when that thread exits.
    static THREAD_EXIT: RefCell<Option<DropProbe>> = const { RefCell::new(None) };
}

/// A factory that panics for one executor fails `start` with the executor and the message, and
/// leaves nothing behind: the handlers already built are dropped and every arbiter thread has
/// exited when `start` returns.
#[actix_rt::test]
async fn a_panicking_factory_is_a_start_error_and_leaves_nothing_running() {
    let built = Arc::new(AtomicUsize::new(0));
    let handlers_dropped = Arc::new(AtomicUsize::new(0));
    let threads_exited = Arc::new(AtomicUsize::new(0));
    let (b, h, t) = (
        built.clone(),
        handlers_dropped.clone(),
        threads_exited.clone(),
    );
    let started = Poller::<u32>::builder()
        .executors(3)
        .start_with(move |executor| {
            THREAD_EXIT.with(|p| *p.borrow_mut() = Some(DropProbe(t.clone())));
            if executor == 1 {
                panic!("no connection for executor 1");
            }
            b.fetch_add(1, SeqCst);
            let state = std::rc::Rc::new(DropProbe(h.clone()));
            move |_n: u32, _cx| {
                let _state = state.clone();
                async { Ok::<_, Infallible>(()) }
            }
        });
    match started {
        Err(StartError::FactoryPanicked { executor, message }) => {
            assert_eq!(executor, 1);
            assert!(message.contains("no connection"), "{message}");
        }
        other => panic!("expected FactoryPanicked, got {other:?}"),
    }
    assert_eq!(built.load(SeqCst), 2);
    assert_eq!(handlers_dropped.load(SeqCst), 2, "built handlers dropped");
    assert_eq!(
        threads_exited.load(SeqCst),
        3,
        "every arbiter thread joined"
    );

    // On the current arbiter: nothing is started at all.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let started = Poller::<u32>::builder()
        .executors(2)
        .on_current_arbiter()
        .start_with(move |executor| {
            c.fetch_add(1, SeqCst);
            assert_ne!(executor, 1, "executor 1 has no handler");
            |_n: u32, _cx| async { Ok::<_, Infallible>(()) }
        });
    assert!(matches!(
        started,
        Err(StartError::FactoryPanicked { executor: 1, .. })
    ));
    assert_eq!(calls.load(SeqCst), 2);
}

/// What a test's handler does: `0` stops its own executor's arbiter (once) and never ends; any
/// other task waits for the gate.
fn killer_or_waiter(
    killed: Arc<AtomicBool>,
    gate: common::Gate,
) -> impl Fn(u32, TaskContext) -> LocalBoxFuture<'static, Result<(), Infallible>> + Clone + Send + Sync
{
    move |n: u32, _cx: TaskContext| {
        if n == 0 && !killed.swap(true, SeqCst) {
            actix_rt::Arbiter::current().stop();
            return pending().boxed_local();
        }
        let gate = gate.clone();
        async move {
            gate.wait().await;
            Ok(())
        }
        .boxed_local()
    }
}

/// An executor whose arbiter stops while the poller runs is noticed: it is counted, no more work
/// goes to it, the tasks it had queued run elsewhere, and (retries on, so the source keeps a
/// copy) the ones it was running run again. Every task completes; nothing is lost; its slots
/// came back (the other executor runs `workers` tasks at once afterwards).
#[actix_rt::test]
async fn a_lost_executor_gives_its_tasks_back() {
    let killed = Arc::new(AtomicBool::new(false));
    let (gate, opener) = gate();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .retry(RetryPolicy::attempts(1))
        .start(killer_or_waiter(killed, gate))
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..40).collect())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || {
        poller.stats().executors_lost == 1
    })
    .await;
    // The surviving executor gets every slot back: four tasks run on it at once.
    eventually(Duration::from_secs(10), || {
        poller
            .executor_stats()
            .iter()
            .any(|e| e.busy == 4 && e.started >= 4)
    })
    .await;
    opener.open();
    for r in receipts {
        let id = r.id();
        assert_eq!(
            within(r.outcome()).await,
            Ok(FinalState::Completed),
            "task {id}"
        );
    }
    let stats = poller.stats();
    assert_eq!((stats.executors_lost, stats.lost), (1, 0));
    let report = within(poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(report.executors_lost.len(), 1);
    assert!(report.lost.is_empty() && report.handed_back.is_empty());
    assert!(report.unfinished.is_empty(), "{:?}", report.unfinished);
}

/// Without retries the in-memory source keeps no copy of a running task: what ran on the lost
/// executor is reported lost, by id; everything else completes.
#[actix_rt::test]
async fn without_a_copy_what_ran_on_a_lost_executor_is_reported_lost() {
    let killed = Arc::new(AtomicBool::new(false));
    let (gate, opener) = gate();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .start(killer_or_waiter(killed, gate))
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..40).collect())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || {
        let s = poller.stats();
        s.executors_lost == 1 && s.lost >= 1
    })
    .await;
    opener.open();
    eventually(Duration::from_secs(10), || {
        let s = poller.stats();
        s.completed + s.lost == 40
    })
    .await;
    let report = within(poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    let lost: HashSet<TaskId> = report.lost.iter().copied().collect();
    assert_eq!(lost.len() as u64, poller.stats().lost);
    assert!(
        lost.contains(&receipts[0].id()),
        "the killer was running there"
    );
    assert!(report.handed_back.is_empty());
    for r in receipts {
        let id = r.id();
        match within(r.outcome()).await {
            Ok(FinalState::Completed) => assert!(!lost.contains(&id)),
            Err(OutcomeError::ShutDown) => assert!(lost.contains(&id), "task {id} vanished"),
            other => panic!("task {id}: {other:?}"),
        }
    }
}

/// Tasks below 10 complete at once; the others wait for the gate.
fn ten_then_gated(
    gate: common::Gate,
) -> impl Fn(u32, TaskContext) -> LocalBoxFuture<'static, Result<(), Infallible>> + Clone + Send + Sync
{
    move |n: u32, _cx: TaskContext| {
        let gate = gate.clone();
        async move {
            if n >= 10 {
                gate.wait().await;
            }
            Ok(())
        }
        .boxed_local()
    }
}

/// Once the first ten tasks completed and four run (more wait, queued at the two executors),
/// stops the actix `System` and waits until both executors are lost.
async fn stop_the_system_mid_run(poller: &Poller<u32>) {
    eventually(Duration::from_secs(20), || {
        let s = poller.stats();
        s.completed == 10 && s.busy == 4
    })
    .await;
    actix_rt::System::current().stop();
    eventually(Duration::from_secs(10), || {
        poller.stats().executors_lost == 2
    })
    .await;
}

/// The actix `System` stops under a running poller (what actix-web's default Ctrl-C handling
/// does before the app's own `shutdown` runs): the executors' arbiters die with tasks running and
/// queued. The shutdown that follows accounts for every accepted task, per id: completed before
/// the stop, handed back, or listed lost, and names the lost executors.
#[actix_rt::test]
async fn the_system_stopping_under_the_poller_loses_nothing_silently() {
    for retries in [false, true] {
        let (gate, opener) = gate();
        let builder = Poller::<u32>::builder()
            .workers(4)
            .executors(2)
            .dispatch_ahead(8);
        let handler = ten_then_gated(gate);
        let poller = if retries {
            builder
                .retry(RetryPolicy::attempts(2))
                .start(handler)
                .unwrap()
        } else {
            builder.start(handler).unwrap()
        };
        let receipts: Vec<Receipt> = poller
            .submit_batch_tracked((0..60).collect())
            .await
            .unwrap();
        stop_the_system_mid_run(&poller).await;
        let report = within(poller.shutdown(Duration::from_secs(1)))
            .await
            .unwrap();
        drop(opener);
        let mut executors_lost = report.executors_lost.clone();
        executors_lost.sort_unstable();
        assert_eq!(executors_lost, vec![0, 1]);
        let back: HashSet<TaskId> = report.handed_back.iter().map(|t| t.id).collect();
        let lost: HashSet<TaskId> = report.lost.iter().copied().collect();
        assert!(back.is_disjoint(&lost));
        if retries {
            assert!(
                lost.is_empty(),
                "the source kept a copy of every running task"
            );
        } else {
            assert_eq!(lost.len(), 4, "the four running tasks");
        }
        for (n, r) in receipts.into_iter().enumerate() {
            let id = r.id();
            let outcome = within(r.outcome()).await;
            if n < 10 {
                assert_eq!(outcome, Ok(FinalState::Completed), "task {n}");
            } else {
                assert_eq!(outcome, Err(OutcomeError::ShutDown), "task {n}");
                assert!(
                    back.contains(&id) || lost.contains(&id),
                    "task {n} ({id}) was neither handed back nor reported lost ({retries})"
                );
            }
        }
        assert_eq!(back.len() + lost.len(), 50);
    }
}

/// A handler that blocks its thread cannot stop a shutdown: it returns within grace + the
/// documented slack, naming the executor that did not answer and the arbiter it could not join.
/// (Real time: the blocked thread cannot be paused. Only an upper bound is checked, generous for
/// CI.)
#[actix_rt::test]
async fn shutdown_is_bounded_when_a_handler_blocks_its_thread() {
    let entered = Arc::new(AtomicBool::new(false));
    let e = entered.clone();
    let poller = Poller::<u32>::builder()
        .workers(2)
        .executors(1)
        .start(move |_n: u32, _cx| {
            e.store(true, SeqCst);
            // Blocks the executor's thread for far longer than the test runs.
            std::thread::sleep(Duration::from_secs(3_600));
            async { Ok::<_, Infallible>(()) }
        })
        .unwrap();
    poller.submit(1).await.unwrap();
    eventually(Duration::from_secs(10), || entered.load(SeqCst)).await;
    let grace = Duration::from_millis(200);
    let began = std::time::Instant::now();
    let report = within_for(Duration::from_secs(60), poller.shutdown(grace))
        .await
        .unwrap();
    assert!(
        began.elapsed() < grace + SHUTDOWN_SLACK + Duration::from_secs(10),
        "took {:?}",
        began.elapsed()
    );
    assert!(report.unfinished.contains(&Unfinished::Executor(0)));
    assert!(report.unfinished.contains(&Unfinished::Arbiter(0)));
}

/// A source that answers its first fetch and then hangs on every call.
struct Hanging {
    fetched: bool,
    _dropped: DropProbe,
}

impl Source<u32> for Hanging {
    type Error = std::io::Error;

    fn fetch(&mut self, _max: usize) -> LocalBoxFuture<'static, Result<Fetched<u32>, Self::Error>> {
        if std::mem::replace(&mut self.fetched, true) {
            return pending().boxed_local();
        }
        let task = Task::new(TaskId(1), 1);
        async move {
            Ok(Fetched::new(
                vec![task],
                actix_poller::source::WakeOn::submit(),
            ))
        }
        .boxed_local()
    }

    fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Self::Error>> {
        pending().boxed_local()
    }

    fn limits(&self) -> FetchLimits {
        FetchLimits::default().max_batch(1).max_in_flight(1)
    }

    fn close(
        &mut self,
        _unstarted: Vec<Task<u32>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<u32>>, Self::Error>> {
        pending().boxed_local()
    }
}

/// A source whose fetch, ack and close all hang cannot stop a shutdown either: it returns within
/// grace + the slack (virtual time), says the source did not close, and the Fetcher is stopped
/// with its source dropped.
#[actix_rt::test]
async fn shutdown_is_bounded_when_the_source_hangs() {
    tokio::time::pause();
    let dropped = Arc::new(AtomicUsize::new(0));
    let source = Hanging {
        fetched: false,
        _dropped: DropProbe(dropped.clone()),
    };
    let poller = Poller::<u32>::builder()
        .workers(2)
        .on_current_arbiter()
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    // The one task runs and completes; its ack hangs, and so does the next fetch.
    eventually(Duration::from_secs(1), || poller.stats().completed == 1).await;
    let grace = Duration::from_secs(3);
    let began = tokio::time::Instant::now();
    let report = within_for(Duration::from_secs(600), poller.shutdown(grace))
        .await
        .unwrap();
    assert!(
        began.elapsed() <= grace + SHUTDOWN_SLACK,
        "took {:?}",
        began.elapsed()
    );
    assert!(
        report.unfinished.contains(&Unfinished::Close),
        "{:?}",
        report.unfinished
    );
    eventually(Duration::from_secs(1), || dropped.load(SeqCst) == 1).await;
}

/// The same with SQLite: when the `System` stops under the poller, the shutdown that follows
/// releases every lease at once (nothing waits for a lease to expire) and counts no attempt for
/// the tasks that never started or were interrupted; nothing is lost.
#[cfg(feature = "sqlite")]
#[actix_rt::test]
async fn the_system_stopping_under_a_durable_poller_releases_every_lease() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};

    let path = std::env::temp_dir().join(format!(
        "actix-poller-death-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    let source = SqliteSource::<u32>::connect(
        SqliteConfig::new(&path)
            .lease(Duration::from_secs(600))
            .poll_interval(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let pool = source.pool().clone();
    let (gate, opener) = gate();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .dispatch_ahead(8)
        .prefetch(4)
        .source(source)
        .start(ten_then_gated(gate))
        .unwrap();
    poller.submit_batch((0..60).collect()).await.unwrap();
    stop_the_system_mid_run(&poller).await;
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    drop(opener);
    assert!(report.lost.is_empty() && report.handed_back.is_empty());
    assert!(report.unfinished.is_empty(), "{:?}", report.unfinished);
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM actix_poller_tasks WHERE state = 'completed'").await,
        10
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM actix_poller_tasks \
             WHERE state = 'queued' AND attempt = 0 AND lease_owner IS NULL"
        )
        .await,
        50,
        "every other task is due again at once, no attempt counted"
    );
    let _ = std::fs::remove_file(&path);
}

/// Panics when dropped.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("bomb went off");
        }
    }
}

/// A task future whose destructor panics when its timeout drops it is a panicked attempt, not
/// a dead executor: the executor keeps running tasks.
#[actix_rt::test]
async fn a_future_that_panics_when_dropped_does_not_kill_its_executor() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .on_current_arbiter()
        .timeout(Duration::from_millis(10))
        .start(|n: u32, _cx| async move {
            if n == 0 {
                let _bomb = Bomb;
                pending::<()>().await;
            }
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let bomb = poller.submit_tracked(0).await.unwrap();
    let after = poller.submit_tracked(1).await.unwrap();
    match within(bomb.outcome()).await {
        Ok(FinalState::Dead { error, .. }) => assert!(error.contains("bomb went off"), "{error}"),
        other => panic!("expected dead, got {other:?}"),
    }
    assert_eq!(within(after.outcome()).await, Ok(FinalState::Completed));
    let s = poller.stats();
    assert_eq!((s.executors_lost, s.panicked), (0, 1));
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A test may pause tokio's clock and still run executors on their own threads: the shutdown's
/// waits for other threads (drain replies, arbiter joins) run on the wall clock, so they do not
/// run out the moment the test's thread idles (tokio then jumps its paused clock ahead).
#[actix_rt::test]
async fn waits_on_other_threads_survive_a_paused_clock() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .start(|_n: u32, _cx| async {
            std::thread::sleep(Duration::from_millis(20));
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let receipts = poller.submit_batch_tracked((0..8).collect()).await.unwrap();
    // Any tokio timeout here would run out at once (the clock is paused): a wall-clock watchdog
    // fails the test instead of letting it hang.
    let (done, watched) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watched.recv_timeout(Duration::from_secs(120))
        {
            eprintln!("shutdown under a paused clock did not return within 120 s");
            std::process::exit(1);
        }
    });
    let report = poller.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(done);
    assert!(report.unfinished.is_empty(), "{:?}", report.unfinished);
    assert!(report.lost.is_empty() && report.executors_lost.is_empty());
    let back: HashSet<TaskId> = report.handed_back.iter().map(|t| t.id).collect();
    for r in receipts {
        let id = r.id();
        match within(r.outcome()).await {
            Ok(FinalState::Completed) => {}
            Err(OutcomeError::ShutDown) => assert!(back.contains(&id), "task {id} vanished"),
            other => panic!("task {id}: {other:?}"),
        }
    }
}

/// A fetch backoff of `Duration::MAX` after a failed fetch is a very long wait, not a panic
/// that takes the Fetcher (and the in-memory queue) down: the poller still shuts down and
/// hands every task back.
#[actix_rt::test]
async fn a_huge_fetch_backoff_is_a_long_wait() {
    tokio::time::pause();
    let (mut source, log) = common::ScriptedSource::new(100);
    source.fail_first = 1;
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .fetch_backoff(actix_poller::Backoff::new(Duration::MAX, Duration::MAX).with_jitter(0.0))
        .source(source)
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    poller.submit_batch(vec![1, 2, 3]).await.unwrap();
    eventually(Duration::from_secs(1), || poller.stats().fetch_errors == 1).await;
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    let back: Vec<u32> = report.handed_back.iter().map(|t| t.payload).collect();
    assert_eq!(back, vec![1, 2, 3]);
    assert_eq!(log.borrow().fetches.len(), 1, "no fetch during the backoff");
}

/// `detach` keeps a poller running after its last handle is dropped: an actor that kept the
/// Fetcher's address still gets its submits run.
#[actix_rt::test]
async fn a_detached_poller_outlives_its_handles() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    let submit = poller.submit_recipient();
    poller.detach();
    drop(poller);
    tokio::task::yield_now().await;
    let receipt = within(submit.send(Submit::new(7).tracked()))
        .await
        .expect("the fetcher still runs")
        .unwrap();
    assert_eq!(within(receipt.outcome()).await, Ok(FinalState::Completed));
}
