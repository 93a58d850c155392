//! One test per promise of docs/guarantees.md that had none (issue 16, "Promises without a
//! test"). Virtual time (`tokio::time::pause`) and event-driven waits throughout, except where
//! the promise is about executors on their own arbiter threads.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_poller::{
    BoxError, CancelOutcome, Disposition, FinalState, MemorySource, Poller, RetryAfter,
    RetryPolicy, Submit, SubmitError, TaskContext, TaskId, TaskOptions,
};
use common::{gate, within, DropProbe, Probe, ScriptedSource};
use tokio::time::Instant;

/// Handler calls per payload, in call order.
type Calls = Arc<Mutex<Vec<u32>>>;

fn count(calls: &Calls, n: u32) -> usize {
    calls.lock().unwrap().iter().filter(|&&m| m == n).count()
}

/// "Tasks coming back for a retry, snooze or release are never refused": with the queue full,
/// a failed attempt's retry and a snooze still go back to the source and run.
#[actix_rt::test]
async fn retries_and_snoozes_are_not_refused_by_a_full_queue() {
    tokio::time::pause();
    let (g, opener) = gate();
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let poller = Poller::<u32>::builder()
        .workers(2)
        .capacity(2)
        .dispatch_ahead(0)
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(3).fixed(Duration::from_secs(1)))
        .start(move |n: u32, _cx: TaskContext| {
            let first = {
                let mut calls = c.lock().unwrap();
                calls.push(n);
                calls.iter().filter(|&&m| m == n).count() == 1
            };
            let g = g.clone();
            async move {
                g.wait().await;
                let r: Result<(), BoxError> = match (n, first) {
                    (0, true) => Err("fails once".into()),
                    (1, true) => Err(RetryAfter(Duration::from_secs(1)).into()),
                    _ => Ok(()),
                };
                r
            }
        })
        .unwrap();
    let failing = poller.submit_tracked(0).await.unwrap();
    let snoozing = poller.submit_tracked(1).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 2).await;
    // Fill the queue to its capacity: the next submit is refused.
    let fillers = poller.submit_batch_tracked(vec![2, 3]).await.unwrap();
    match poller.submit(4).await {
        Err(SubmitError::Full(4)) => {}
        other => panic!("expected Full(4), got {other:?}"),
    }
    // Now 0 fails and 1 snoozes while the queue is full: both must go back and run again.
    opener.open();
    assert_eq!(within(failing.outcome()).await, Ok(FinalState::Completed));
    assert_eq!(within(snoozing.outcome()).await, Ok(FinalState::Completed));
    for r in fillers {
        assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
    }
    assert_eq!((count(&calls, 0), count(&calls, 1)), (2, 2));
    let s = poller.stats();
    assert_eq!((s.retried, s.snoozed, s.dead), (1, 1, 0));
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// "... or release": a task interrupted at the shutdown deadline goes back to a full in-memory
/// queue (retries on) and comes back in the report, with the queued tasks.
#[actix_rt::test]
async fn released_tasks_are_not_refused_by_a_full_queue() {
    tokio::time::pause();
    let (g, _closed) = gate();
    let builder = Poller::<u32>::builder()
        .workers(1)
        .capacity(2)
        .dispatch_ahead(0)
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(2).fixed(Duration::from_secs(1)));
    let poller = common::start_gated(builder, g);
    poller.submit(0).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 1).await;
    poller.submit_batch(vec![1, 2]).await.unwrap();
    assert!(matches!(poller.submit(3).await, Err(SubmitError::Full(3))));
    let report = poller.shutdown(Duration::from_millis(10)).await.unwrap();
    let mut back: Vec<u32> = report.handed_back.iter().map(|t| t.payload).collect();
    back.sort_unstable();
    assert_eq!(back, vec![0, 1, 2], "the interrupted task came back too");
    assert_eq!(report.cancelled, 1);
}

/// "Every `SubmitError` hands the payload back: ... `Source`": a failing insert gives back the
/// task to `submit`, `submit_tracked` and `submit_batch`, and nothing is stored.
#[actix_rt::test]
async fn a_source_error_hands_the_payload_back() {
    tokio::time::pause();
    let (mut source, _log) = ScriptedSource::<String>::new(10);
    source.fail_enqueues = 3;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let r = ran.clone();
    let poller = Poller::<String>::builder()
        .on_current_arbiter()
        .source(source)
        .start(move |s: String, _cx| {
            r.lock().unwrap().push(s);
            async { Ok::<_, Infallible>(()) }
        })
        .unwrap();
    match poller.submit("one".to_owned()).await {
        Err(SubmitError::Source { task, error }) => {
            assert_eq!(task, "one");
            assert!(error.message().contains("unavailable"), "{error}");
        }
        other => panic!("expected Source, got {other:?}"),
    }
    match poller.submit_tracked("two".to_owned()).await {
        Err(e @ SubmitError::Source { .. }) => assert_eq!(e.into_inner().as_deref(), Some("two")),
        other => panic!("expected Source, got {other:?}"),
    }
    match poller
        .submit_batch(vec!["three".to_owned(), "four".to_owned()])
        .await
    {
        Err(e @ SubmitError::Source { .. }) => {
            assert_eq!(
                e.into_inner(),
                Some(vec!["three".to_owned(), "four".to_owned()])
            );
        }
        other => panic!("expected Source, got {other:?}"),
    }
    // The source works again: the next submit is stored and runs; nothing refused ever ran.
    let ok = poller.submit_tracked("five".to_owned()).await.unwrap();
    assert_eq!(within(ok.outcome()).await, Ok(FinalState::Completed));
    assert_eq!(*ran.lock().unwrap(), vec!["five".to_owned()]);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// "A waiting task (... fetched ahead ...) is removed and ends `Cancelled`": a task prefetched
/// at the Fetcher is dequeued there, never runs, and the source hears `Cancelled` for it.
#[actix_rt::test]
async fn cancelling_a_task_prefetched_at_the_fetcher() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(100);
    source.preload((0..6).collect());
    let (g, opener) = gate();
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .dispatch_ahead(0)
        .prefetch(2)
        .on_current_arbiter()
        .source(source)
        .start(move |n: u32, _cx| {
            c.lock().unwrap().push(n);
            let g = g.clone();
            async move {
                g.wait().await;
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    // Task 0 runs; with nothing queued at the executor, the two buffered are at the Fetcher.
    common::eventually(Duration::from_secs(5), || {
        let s = poller.stats();
        s.busy == 1 && s.buffered == 2
    })
    .await;
    // Preloaded ids start at 1: payload n has id n + 1; 1 and 2 are prefetched.
    let prefetched = TaskId(2);
    assert_eq!(poller.cancel(prefetched).await, Ok(CancelOutcome::Dequeued));
    assert_eq!(poller.cancel(prefetched).await, Ok(CancelOutcome::NotFound));
    opener.open();
    common::eventually(Duration::from_secs(5), || poller.stats().completed == 5).await;
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(count(&calls, 1), 0, "the cancelled task never ran");
    for n in [0, 2, 3, 4, 5] {
        assert_eq!(count(&calls, n), 1, "task {n} ran once");
    }
    let log = log.borrow();
    let acks: Vec<_> = log.acks.iter().filter(|a| a.id == prefetched).collect();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].disposition, Disposition::Cancelled);
}

/// "A task that ignores a cancel request still counts until the grace runs out": a third task
/// submitted during the grace does not start before it ends.
#[actix_rt::test]
async fn a_cancelled_task_keeps_its_slot_until_the_grace_ends() {
    tokio::time::pause();
    let (g, opener) = gate();
    let probe = Arc::new(Probe::default());
    let started: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let (p, st) = (probe.clone(), started.clone());
    let grace = Duration::from_secs(5);
    let poller = Poller::<u32>::builder()
        .workers(2)
        .on_current_arbiter()
        .cancel_grace(grace)
        .start(move |n: u32, _cx| {
            st.lock().unwrap().push((n, Instant::now()));
            let (g, p) = (g.clone(), p.clone());
            async move {
                p.enter();
                let _exit = ExitOnDrop(p);
                match n {
                    // Ignores the cancel signal.
                    0 => tokio::time::sleep(Duration::from_secs(3600)).await,
                    // Holds the other slot.
                    1 => g.wait().await,
                    _ => {}
                }
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let stubborn = poller.submit_tracked(0).await.unwrap();
    let _holder = poller.submit_tracked(1).await.unwrap();
    common::eventually(Duration::from_secs(1), || poller.stats().busy == 2).await;
    let t0 = Instant::now();
    assert_eq!(
        poller.cancel(stubborn.id()).await,
        Ok(CancelOutcome::Signalled)
    );
    tokio::time::sleep(grace / 2).await;
    let third = poller.submit_tracked(2).await.unwrap();
    assert_eq!(within(third.outcome()).await, Ok(FinalState::Completed));
    assert_eq!(within(stubborn.outcome()).await, Ok(FinalState::Cancelled));
    let at = started
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _)| *n == 2)
        .map(|(_, t)| *t)
        .expect("the third task ran");
    assert!(
        at >= t0 + grace,
        "the third task started {:?} after the cancel, inside the {grace:?} grace",
        at - t0
    );
    assert!(probe.max() <= 2, "{} ran at once", probe.max());
    opener.open();
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

struct ExitOnDrop(Arc<Probe>);

impl Drop for ExitOnDrop {
    fn drop(&mut self) {
        self.0.exit();
    }
}

/// "The in-memory source keeps the newest 1,000. Without retries it keeps no payload, so those
/// dead tasks cannot run again."
#[actix_rt::test]
async fn the_in_memory_dead_list_keeps_the_newest_thousand_not_rerunnable() {
    tokio::time::pause();
    let poller = Poller::<u32>::builder()
        .workers(8)
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Err::<(), _>("always fails") })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..1_005).collect())
        .await
        .unwrap();
    let ids: Vec<TaskId> = receipts.iter().map(|r| r.id()).collect();
    for r in receipts {
        assert!(matches!(
            within(r.outcome()).await,
            Ok(FinalState::Dead { attempts: 1, .. })
        ));
    }
    let dead = poller.dead_tasks(5_000).await.unwrap();
    assert_eq!(dead.len(), 1_000, "capped at 1,000");
    let mut listed: Vec<TaskId> = dead.iter().map(|d| d.id).collect();
    listed.sort_unstable();
    let mut newest: Vec<TaskId> = ids.clone();
    newest.sort_unstable();
    assert_eq!(listed, newest[5..].to_vec(), "the newest 1,000 are kept");
    assert!(dead.iter().all(|d| !d.rerunnable), "no payload kept");
    assert_eq!(
        poller.rerun_dead(ids.clone()).await.unwrap(),
        Vec::<TaskId>::new(),
        "nothing can run again"
    );
    assert_eq!(poller.dead_tasks(5_000).await.unwrap().len(), 1_000);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A custom retention on the in-memory source is honoured the same way.
#[actix_rt::test]
async fn dead_retention_is_a_cap() {
    tokio::time::pause();
    let source = MemorySource::<u32>::bounded(100).unwrap().dead_retention(3);
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .source(source)
        .start(|_n: u32, _cx| async { Err::<(), _>("always fails") })
        .unwrap();
    let receipts = poller.submit_batch_tracked((0..7).collect()).await.unwrap();
    let ids: Vec<TaskId> = receipts.iter().map(|r| r.id()).collect();
    for r in receipts {
        within(r.outcome()).await.unwrap();
    }
    let dead: Vec<TaskId> = poller
        .dead_tasks(100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(
        dead,
        vec![ids[6], ids[5], ids[4]],
        "newest first, three kept"
    );
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Hand-back order, compared as it comes (no sorting): the due tasks by priority (FIFO
/// within), then the delayed tasks by due time.
#[actix_rt::test]
async fn hand_back_order_is_priority_then_due_time() {
    tokio::time::pause();
    let (g, _closed) = gate();
    let builder = Poller::<u32>::builder()
        .workers(1)
        .dispatch_ahead(0)
        .on_current_arbiter();
    let poller = common::start_gated(builder, g);
    poller.submit(100).await.unwrap();
    common::eventually(Duration::from_secs(5), || poller.stats().busy == 1).await;
    for (n, prio, delay_s) in [
        (1, 0, 0),
        (2, 5, 0),
        (3, 0, 0),
        (4, 9, 0),
        (5, 9, 30),
        (6, -3, 10),
        (7, 0, 20),
        (8, -3, 0),
    ] {
        let mut opts = TaskOptions::new().priority(prio);
        if delay_s > 0 {
            opts = opts.delay(Duration::from_secs(delay_s));
        }
        poller
            .submit_with(Submit::new(n).options(opts))
            .await
            .unwrap();
    }
    let report = poller.shutdown(Duration::from_millis(10)).await.unwrap();
    let back: Vec<u32> = report.handed_back.iter().map(|t| t.payload).collect();
    // Task 100 was running at the deadline: without retries it is not kept (counted cancelled).
    assert_eq!(back, vec![4, 2, 1, 3, 8, 6, 7, 5]);
    assert_eq!(report.cancelled, 1);
}

/// "At the deadline, drop what still runs" on executors on their own arbiter threads: every
/// future is dropped by the time `shutdown` returns.
#[actix_rt::test]
async fn futures_are_dropped_at_the_deadline_on_their_own_arbiters() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let poller = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .start(move |_n: u32, _cx| {
            let probe = DropProbe(d.clone());
            async move {
                let _probe = probe;
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    assert!(!poller.executors_on_current_arbiter());
    poller.submit_batch((0..6).collect()).await.unwrap();
    common::eventually(Duration::from_secs(10), || poller.stats().busy == 4).await;
    let report = within(poller.shutdown(Duration::from_millis(20)))
        .await
        .unwrap();
    assert_eq!(report.cancelled, 4);
    assert_eq!(
        dropped.load(SeqCst),
        4,
        "the four running futures were dropped before shutdown returned"
    );
    assert_eq!(report.handed_back.len(), 2, "the two that never started");
}

/// "`Receipt::outcome` resolves only after the source has recorded the final state": with an
/// ack call that takes a while to land, no receipt resolves before its ack has landed.
#[actix_rt::test]
async fn a_receipt_resolves_only_after_its_ack_lands() {
    tokio::time::pause();
    let (mut source, log) = ScriptedSource::<u32>::new(100);
    source.ack_delay = Some(Duration::from_secs(3));
    let poller = Poller::<u32>::builder()
        .workers(2)
        .on_current_arbiter()
        .source(source)
        .start(|n: u32, _cx| async move {
            if n % 2 == 0 {
                Ok(())
            } else {
                Err("odd")
            }
        })
        .unwrap();
    let receipts = poller.submit_batch_tracked((0..8).collect()).await.unwrap();
    for r in receipts {
        let id = r.id();
        let state = within(r.outcome()).await.unwrap();
        assert!(
            log.borrow().acks_landed.contains(&id),
            "task {id} resolved ({state:?}) before its ack landed"
        );
    }
    poller.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// "The SQL sources order by earlier due time, then insertion order" (SQLite; the same SQL
/// shape serves PostgreSQL): of tasks of one priority that are all due, the one due earlier
/// comes first even when inserted later.
#[cfg(feature = "sqlite")]
#[actix_rt::test]
async fn sqlite_orders_by_earlier_due_time() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    use actix_poller::source::{NewTask, Source};
    let path = std::env::temp_dir().join(format!(
        "actix-poller-promises-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut source = SqliteSource::<String>::connect(SqliteConfig::new(&path))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    // A `run_at` in the past counts as "now" (durable sources store a delay from now), so the
    // due times differ in the future: inserted b (due in 600 ms), a (300 ms), c (900 ms), then
    // d (due at once).
    let start = Instant::now();
    let task = |name: &str, ms: u64| {
        let mut t = NewTask::new(name.to_owned());
        t.run_at = Some(start + Duration::from_millis(ms));
        t
    };
    source
        .enqueue(vec![task("b", 600), task("a", 300), task("c", 900)])
        .await
        .unwrap();
    source
        .enqueue(vec![NewTask::new("d".to_owned())])
        .await
        .unwrap();
    // Once all are due (however late this runs), one fetch sees them in due-time order.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let fetched = source.fetch(10).await.unwrap();
    let order: Vec<&str> = fetched.tasks.iter().map(|t| t.payload.as_str()).collect();
    assert_eq!(order, vec!["d", "a", "b", "c"]);
    drop(source);
    let _ = std::fs::remove_file(&path);
}
