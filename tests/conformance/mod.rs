//! The source conformance suite: one generic function per property of the `Source` contract,
//! run by every source (`tests/source_memory.rs`, `tests/source_sqlite.rs`,
//! `tests/source_postgres.rs`) through [`conformance_tests!`] and, for sources that lease tasks
//! in a store shared by several pollers, [`durable_conformance_tests!`].
//!
//! Real time throughout (a database does not run on tokio's paused clock): delays are a few
//! hundred milliseconds, and every wait is bounded.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_poller::source::{NewTask, RetrySupport, Source};
use actix_poller::{
    Ack, Disposition, FinalState, Key, Poller, QueueCounts, RetryPolicy, SubmitBatch, Task,
    TaskContext, TaskId, TaskOptions, TaskState, TaskStatus,
};
use futures::future::LocalBoxFuture;

/// The payload every property uses.
pub type Job = u32;

/// Builds stores and sources for the suite.
pub trait Harness: 'static {
    /// The source under test.
    type Source: Source<Job> + RetrySupport<Job>;
    /// A handle on one store (a database, a schema); sources built on the same store share it.
    type Store: Clone + 'static;

    /// A fresh, empty store.
    fn store(&self) -> LocalBoxFuture<'static, Self::Store>;

    /// A new source (as one poller would own it) on `store`, leasing for `lease`.
    fn source(&self, store: &Self::Store, lease: Duration)
        -> LocalBoxFuture<'static, Self::Source>;

    /// `true` when tasks live in the store (shared by sources on it, leased, released at
    /// shutdown); `false` for the in-memory source (each source is its own store).
    fn durable(&self) -> bool;

    /// Inserts a row whose payload is `json`, bypassing the encoder (durable sources only).
    fn insert_raw(&self, store: &Self::Store, json: &str) -> LocalBoxFuture<'static, ()> {
        let _ = (store, json);
        Box::pin(async {})
    }

    /// The stored row of task `id`: state, attempt, last error (durable sources only).
    fn row(&self, store: &Self::Store, id: TaskId) -> LocalBoxFuture<'static, Row> {
        let _ = (store, id);
        Box::pin(async { panic!("only durable sources have rows") })
    }

    /// Makes the store refuse, as a data error, any update that completes task `id` (a trigger:
    /// SQLite `RAISE(ABORT)`, PostgreSQL SQLSTATE 22023), so an ack batch holding that task's
    /// completion is refused for its data (durable sources only).
    fn refuse_completing(&self, store: &Self::Store, id: TaskId) -> LocalBoxFuture<'static, ()> {
        let _ = (store, id);
        Box::pin(async { panic!("only durable sources have triggers") })
    }

    /// Drops the store (called at the end of a property that passed).
    fn cleanup(&self, store: &Self::Store) -> LocalBoxFuture<'static, ()> {
        let _ = store;
        Box::pin(async {})
    }
}

/// A stored task: state, attempt, last error.
pub type Row = (String, i64, Option<String>);

/// The default lease of the suite: long enough never to expire by accident.
pub const LONG_LEASE: Duration = Duration::from_secs(60);

/// The lease of the heartbeat tests: long beside their 120 ms heartbeat cadence (more than 8
/// beats per lease), so a loaded machine that delays a beat by most of a lease still passes,
/// while a source whose heartbeat did not extend leases fails after the first lease.
pub const BEAT_LEASE: Duration = Duration::from_secs(1);

/// A task as a poller without retries enqueues it: one attempt. (`NewTask::new` leaves the
/// attempts to the source's default, which differs between sources.)
fn task(payload: Job) -> NewTask<Job> {
    with(payload, TaskOptions::new(), 1)
}

fn with(payload: Job, options: TaskOptions, attempts: u32) -> NewTask<Job> {
    NewTask::with_options(payload, options, attempts)
}

/// Fails the test instead of hanging it.
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 30 s"))
}

pub async fn enqueue<S: Source<Job>>(s: &mut S, tasks: Vec<NewTask<Job>>) -> Vec<TaskId> {
    let n = tasks.len();
    let ids = bounded("enqueue", s.enqueue(tasks))
        .await
        .unwrap_or_else(|e| panic!("enqueue refused: {e}"));
    assert_eq!(ids.len(), n, "one id per task");
    ids
}

pub async fn fetch<S: Source<Job>>(s: &mut S, max: usize) -> Vec<Task<Job>> {
    let fetched = bounded("fetch", s.fetch(max))
        .await
        .unwrap_or_else(|e| panic!("fetch failed: {e}"));
    assert!(fetched.tasks.len() <= max, "at most max tasks");
    fetched.tasks
}

pub async fn ack<S: Source<Job>>(s: &mut S, acks: Vec<Ack>) {
    bounded("ack", s.ack(acks))
        .await
        .unwrap_or_else(|e| panic!("ack failed: {e}"));
}

fn ack_of(t: &Task<Job>, disposition: Disposition) -> Ack {
    Ack {
        id: t.id,
        attempt: t.attempt,
        disposition,
    }
}

fn payloads(tasks: &[Task<Job>]) -> Vec<Job> {
    tasks.iter().map(|t| t.payload).collect()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Fetches until `want` tasks came back or `limit` passed (a durable source's clock and a
/// delayed task's due time are not tokio's).
async fn fetch_until<S: Source<Job>>(s: &mut S, want: usize, limit: Duration) -> Vec<Task<Job>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want {
        got.extend(fetch(s, want - got.len()).await);
        if got.len() >= want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} tasks within {limit:?}",
            got.len()
        );
        sleep_ms(10).await;
    }
    got
}

// ------------------------------------------------------------------------------------------
// Properties every source has.
// ------------------------------------------------------------------------------------------

/// Among due tasks: higher priority first, FIFO within a priority; a fetch returns at most
/// `max`, and a short fetch means the source is empty for now.
pub async fn fetch_order_is_priority_then_fifo<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let prio = |p: Job, prio: i32| with(p, TaskOptions::new().priority(prio), 1);
    enqueue(
        &mut s,
        vec![
            prio(1, 0),
            prio(2, 5),
            prio(3, 0),
            prio(4, 5),
            prio(5, 1),
            prio(6, 0),
        ],
    )
    .await;
    let first = fetch(&mut s, 2).await;
    assert_eq!(payloads(&first), vec![2, 4]);
    assert!(first.iter().all(|t| t.attempt == 1 && t.priority == 5));
    let rest = fetch(&mut s, 10).await;
    assert_eq!(payloads(&rest), vec![5, 1, 3, 6]);
    assert!(fetch(&mut s, 10).await.is_empty(), "all leased");
    h.cleanup(&store).await;
}

/// Due tasks of one priority go in the order they became due (then by id), whatever order
/// they were enqueued in; priority still comes first.
pub async fn due_tasks_go_in_due_time_order<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let at = |p: Job, ms: u64, prio: i32| {
        let options = TaskOptions::new().priority(prio);
        let options = if ms > 0 {
            options.delay(Duration::from_millis(ms))
        } else {
            options
        };
        with(p, options, 1)
    };
    enqueue(
        &mut s,
        vec![
            at(1, 300, 0),
            at(2, 150, 0),
            at(3, 0, 0),
            at(4, 150, 1),
            at(5, 0, 0),
        ],
    )
    .await;
    // Every delay has passed once this sleep returns (it never returns early).
    sleep_ms(400).await;
    // Small fetches: each must pick the first due tasks, not only return them in order.
    let mut got = Vec::new();
    for max in [2, 2, 1] {
        got.push(payloads(&fetch(&mut s, max).await));
    }
    assert_eq!(got, vec![vec![4, 3], vec![5, 2], vec![1]]);
    h.cleanup(&store).await;
}

/// A batch is enqueued with one id per task, in order; tasks keep their options.
pub async fn enqueue_keeps_batch_order_and_options<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let ids = enqueue(&mut s, (0..50).map(task).collect()).await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 50, "distinct ids");
    let options = TaskOptions::new()
        .max_attempts(4)
        .timeout(Duration::from_millis(1500));
    let special = enqueue(&mut s, vec![with(99, options, 1)]).await;
    let got = fetch(&mut s, 100).await;
    assert_eq!(
        got.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids.iter().chain(&special).copied().collect::<Vec<_>>(),
        "FIFO, ids as returned by enqueue"
    );
    let last = got.last().expect("51 tasks");
    assert_eq!(last.payload, 99);
    assert_eq!(last.max_attempts, 4);
    assert_eq!(last.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(got[0].max_attempts, 1);
    assert_eq!(got[0].timeout, None);
    let age = std::time::SystemTime::now()
        .duration_since(got[0].enqueued_at)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "enqueued_at is now-ish");
    h.cleanup(&store).await;
}

/// Final acks (completed, dead, cancelled) are final: the task is not fetched again; a dead
/// task is listed with its error and attempts.
pub async fn final_acks_are_final<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(&mut s, vec![task(1), task(2), task(3)]).await;
    let got = fetch(&mut s, 3).await;
    assert_eq!(got.len(), 3);
    ack(
        &mut s,
        vec![
            ack_of(&got[0], Disposition::Completed),
            ack_of(
                &got[1],
                Disposition::Dead {
                    error: "boom".into(),
                },
            ),
            ack_of(&got[2], Disposition::Cancelled),
        ],
    )
    .await;
    if h.durable() {
        // Recorded in the store, not merely gone from this source's view.
        for (task, state) in got.iter().zip(["completed", "dead", "cancelled"]) {
            assert_eq!(h.row(&store, task.id).await.0, state, "task {:?}", task.id);
        }
    }
    assert!(fetch(&mut s, 10).await.is_empty());
    let dead = bounded("dead_tasks", s.dead_tasks(10))
        .await
        .unwrap_or_else(|e| panic!("dead_tasks: {e}"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, got[1].id);
    assert_eq!(dead[0].error, "boom");
    assert_eq!(dead[0].attempts, 1);
    h.cleanup(&store).await;
}

/// A retry puts the task back with the next attempt number, not before its delay.
pub async fn retries_wait_and_count_attempts<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(&mut s, vec![with(7, TaskOptions::new(), 3)]).await;
    let got = fetch(&mut s, 1).await;
    assert_eq!((got[0].attempt, got[0].max_attempts), (1, 3));
    let sent = tokio::time::Instant::now();
    let delay = Duration::from_millis(300);
    ack(
        &mut s,
        vec![ack_of(
            &got[0],
            Disposition::Retry {
                after: delay,
                error: "flaky".into(),
            },
        )],
    )
    .await;
    not_before(fetch(&mut s, 1).await, sent, delay, "a retry");
    let again = fetch_until(&mut s, 1, Duration::from_secs(5)).await;
    assert!(sent.elapsed() >= Duration::from_millis(250), "waited");
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].payload, 7);
    h.cleanup(&store).await;
}

/// A snooze puts the task back after its delay with the same attempt number.
pub async fn snooze_keeps_the_attempt<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(&mut s, vec![with(7, TaskOptions::new(), 2)]).await;
    let got = fetch(&mut s, 1).await;
    let sent = tokio::time::Instant::now();
    let delay = Duration::from_millis(200);
    ack(
        &mut s,
        vec![ack_of(&got[0], Disposition::Snooze { after: delay })],
    )
    .await;
    not_before(fetch(&mut s, 1).await, sent, delay, "a snooze");
    let again = fetch_until(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!((again[0].id, again[0].attempt), (got[0].id, 1));
    h.cleanup(&store).await;
}

/// A delayed task is not fetched before it is due; due tasks pass it.
pub async fn delayed_tasks_wait<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let delay = Duration::from_millis(400);
    let later = TaskOptions::new().delay(delay).priority(9);
    let start = tokio::time::Instant::now();
    enqueue(&mut s, vec![with(1, later, 1), task(2)]).await;
    let first = fetch(&mut s, 10).await;
    // On a machine slow enough that 400 ms passed, the delayed task (priority 9) is due and
    // comes first; before that it must not come at all.
    let (delayed, due): (Vec<_>, Vec<_>) = first.into_iter().partition(|t| t.payload == 1);
    assert_eq!(payloads(&due), vec![2]);
    let came_early = !delayed.is_empty();
    not_before(delayed, start, delay, "a delayed task");
    if !came_early {
        let delayed = fetch_until(&mut s, 1, Duration::from_secs(5)).await;
        assert_eq!(delayed[0].payload, 1);
    }
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "not before it was due ({:?})",
        start.elapsed()
    );
    h.cleanup(&store).await;
}

/// Tasks fetched at `since + delay` or later may be there; before it, none may. One-sided, so a
/// loaded machine that is late cannot fail it, while a source that hands a task out early does
/// (`since` is taken before the call that set the delay, so it is never later than its clock).
#[track_caller]
fn not_before(fetched: Vec<Task<Job>>, since: tokio::time::Instant, delay: Duration, what: &str) {
    let elapsed = since.elapsed();
    assert!(
        fetched.is_empty() || elapsed >= delay,
        "{what} was fetched {elapsed:?} after it was set, before its {delay:?}: {:?}",
        payloads(&fetched)
    );
}

/// A waiting task (due or delayed) can be cancelled; a fetched one or an unknown id cannot.
pub async fn cancel_removes_waiting_tasks<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let later = TaskOptions::new().delay(Duration::from_millis(200));
    let ids = enqueue(&mut s, vec![task(1), with(2, later, 1), task(3)]).await;
    let cancel = |s: &mut H::Source, id| {
        let f = s.cancel(id);
        async move {
            bounded("cancel", f)
                .await
                .unwrap_or_else(|e| panic!("cancel: {e}"))
        }
    };
    assert!(cancel(&mut s, ids[0]).await, "due task cancelled");
    assert!(cancel(&mut s, ids[1]).await, "delayed task cancelled");
    assert!(!cancel(&mut s, ids[0]).await, "already cancelled");
    assert!(!cancel(&mut s, TaskId(987_654)).await, "unknown");
    if h.durable() {
        assert_eq!(h.row(&store, ids[0]).await.0, "cancelled");
        assert_eq!(h.row(&store, ids[1]).await.0, "cancelled");
    }
    let got = fetch(&mut s, 10).await;
    assert_eq!(payloads(&got), vec![3]);
    assert!(!cancel(&mut s, ids[2]).await, "leased: not waiting");
    sleep_ms(300).await;
    assert!(
        fetch(&mut s, 10).await.is_empty(),
        "the delayed one stays cancelled"
    );
    h.cleanup(&store).await;
}

/// Dead tasks are listed newest first, can run again from attempt 1, and can be purged.
pub async fn dead_tasks_rerun_and_purge<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let ids = enqueue(&mut s, vec![task(1), task(2), task(3)]).await;
    for _ in 0..3 {
        let got = fetch(&mut s, 1).await;
        ack(
            &mut s,
            vec![ack_of(
                &got[0],
                Disposition::Dead {
                    error: format!("dead {}", got[0].payload),
                },
            )],
        )
        .await;
        sleep_ms(5).await;
    }
    let dead = bounded("dead_tasks", s.dead_tasks(10))
        .await
        .unwrap_or_else(|e| panic!("dead_tasks: {e}"));
    assert_eq!(
        dead.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]],
        "newest first"
    );
    assert!(dead.iter().all(|d| d.rerunnable));
    let limited = bounded("dead_tasks", s.dead_tasks(1))
        .await
        .unwrap_or_else(|e| panic!("dead_tasks: {e}"));
    assert_eq!(limited.len(), 1);
    let rerun = bounded("rerun", s.rerun_dead(vec![ids[0], TaskId(987_654)]))
        .await
        .unwrap_or_else(|e| panic!("rerun: {e}"));
    assert_eq!(rerun, vec![ids[0]]);
    let again = fetch(&mut s, 10).await;
    assert_eq!((again.len(), again[0].id, again[0].attempt), (1, ids[0], 1));
    let purged = bounded("purge", s.purge_dead(Some(vec![ids[1]]))).await;
    assert_eq!(purged.unwrap_or_else(|e| panic!("purge: {e}")), 1);
    let purged = bounded("purge", s.purge_dead(None)).await;
    assert_eq!(purged.unwrap_or_else(|e| panic!("purge: {e}")), 1);
    let dead = bounded("dead_tasks", s.dead_tasks(10))
        .await
        .unwrap_or_else(|e| panic!("dead_tasks: {e}"));
    assert!(dead.is_empty());
    h.cleanup(&store).await;
}

/// Through a poller: submits, retries, priorities and dead tasks end to end; every tracked task
/// reaches its final state and the handler runs once per attempt.
pub async fn poller_runs_everything_end_to_end<H: Harness>(h: &H) {
    let store = h.store().await;
    let s = h.source(&store, LONG_LEASE).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let poller = Poller::<Job>::builder()
        .source(s)
        .workers(8)
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(3).fixed(Duration::from_millis(50)))
        .start(move |n: Job, cx: TaskContext| {
            c.fetch_add(1, SeqCst);
            async move {
                if n == 999 {
                    Err(format!("{n} always fails"))
                } else if n % 3 == 0 && cx.attempt() == 1 {
                    Err(format!("{n} fails once"))
                } else {
                    Ok(())
                }
            }
        })
        .expect("starts");
    let receipts = bounded("submit", poller.submit_batch_tracked((0..30).collect()))
        .await
        .unwrap_or_else(|e| panic!("submit refused: {e}"));
    let hopeless = bounded("submit", poller.submit_tracked(999))
        .await
        .unwrap_or_else(|e| panic!("submit refused: {e}"));
    for r in receipts {
        assert_eq!(
            bounded("outcome", r.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
    assert_eq!(
        bounded("outcome", hopeless.outcome()).await,
        Ok(FinalState::Dead {
            error: "999 always fails".into(),
            attempts: 3
        })
    );
    assert_eq!(calls.load(SeqCst), 30 + 10 + 3);
    // A tracked outcome resolves once the source has recorded the final state.
    assert_eq!(
        bounded("dead tasks", poller.dead_tasks(10))
            .await
            .map(|d| d.len()),
        Ok(1),
        "the dead task is recorded before its submitter learns it"
    );
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    h.cleanup(&store).await;
}

/// Through a poller with one worker: higher priority runs first; delayed tasks run when due.
pub async fn poller_honours_priority_and_delay<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    // Enqueued before the poller starts, so the first fetch sees them all.
    let prio = |p: Job, prio: i32| with(p, TaskOptions::new().priority(prio), 1);
    enqueue(&mut s, vec![prio(1, 0), prio(2, 3), prio(3, 7), prio(4, 3)]).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let poller = Poller::<Job>::builder()
        .source(s)
        .workers(1)
        .on_current_arbiter()
        .start(move |n: Job, _cx| {
            o.lock()
                .map(|mut v| v.push((n, tokio::time::Instant::now())))
                .ok();
            async { Ok::<_, std::convert::Infallible>(()) }
        })
        .expect("starts");
    let start = tokio::time::Instant::now();
    let later = bounded(
        "submit",
        poller.submit_batch_with(
            SubmitBatch::new(vec![5])
                .options(
                    TaskOptions::new()
                        .delay(Duration::from_millis(300))
                        .priority(100),
                )
                .tracked(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("submit refused: {e}"));
    for r in later {
        assert_eq!(
            bounded("outcome", r.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
    let order = order.lock().map(|v| v.clone()).unwrap_or_default();
    // The due tasks by priority; the delayed one (priority 100) not before it is due — after
    // them on a quick machine, anywhere once due on a slow one (no race with its delay).
    let due: Vec<Job> = order.iter().map(|(n, _)| *n).filter(|&n| n != 5).collect();
    assert_eq!(due, vec![3, 2, 4, 1]);
    let ran = order
        .iter()
        .find(|(n, _)| *n == 5)
        .map(|(_, at)| *at)
        .expect("the delayed task ran");
    assert!(
        ran - start >= Duration::from_millis(250),
        "ran when due, not before ({:?})",
        ran - start
    );
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    h.cleanup(&store).await;
}

/// Shutdown: tasks fetched but not started are not lost. The in-memory source hands them back
/// (with everything still queued); a durable source releases them at once, unstarted (attempt
/// not counted), for any poller to fetch without waiting for a lease to expire.
pub async fn shutdown_releases_unstarted_tasks<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(
        &mut s,
        (0..6).collect::<Vec<Job>>().into_iter().map(task).collect(),
    )
    .await;
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let started = Arc::new(AtomicUsize::new(0));
    let st = started.clone();
    let poller = Poller::<Job>::builder()
        .source(s)
        .workers(1)
        .prefetch(3)
        .on_current_arbiter()
        .start(move |_n: Job, _cx| {
            st.fetch_add(1, SeqCst);
            let mut open = open_rx.clone();
            async move {
                let _ = open.wait_for(|o| *o).await;
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .expect("starts");
    bounded("first task starts", async {
        while started.load(SeqCst) == 0 {
            sleep_ms(5).await;
        }
    })
    .await;
    // The prefetch has landed once the Fetcher holds its three (a state, not a guess of time).
    bounded("the prefetch lands", async {
        while poller.stats().buffered < 3 {
            sleep_ms(5).await;
        }
    })
    .await;
    let opener = async {
        sleep_ms(100).await;
        let _ = open_tx.send(true);
    };
    let (report, ()) = bounded(
        "shutdown",
        futures::future::join(poller.shutdown(Duration::from_secs(5)), opener),
    )
    .await;
    let report = report.unwrap_or_else(|e| panic!("shutdown: {e}"));
    assert_eq!(started.load(SeqCst), 1, "one worker, one task started");
    assert_eq!(report.cancelled, 0);
    if h.durable() {
        assert!(report.handed_back.is_empty(), "a durable source keeps them");
        let mut next = h.source(&store, LONG_LEASE).await;
        let rest = fetch(&mut next, 10).await;
        assert_eq!(rest.len(), 5, "released at once: no lease to wait for");
        assert!(
            rest.iter().all(|t| t.attempt == 1),
            "never started: not counted"
        );
    } else {
        assert_eq!(report.handed_back.len(), 5, "handed back");
    }
    h.cleanup(&store).await;
}

/// An ack of `Release` (a shutdown interrupted the attempt) makes the task due again at once,
/// with the same attempt number: an interruption is not a failure.
pub async fn release_keeps_the_attempt<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(&mut s, vec![with(7, TaskOptions::new(), 2)]).await;
    let got = fetch(&mut s, 1).await;
    ack(&mut s, vec![ack_of(&got[0], Disposition::Release)]).await;
    let again = fetch_until(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!((again[0].id, again[0].attempt), (got[0].id, 1));
    h.cleanup(&store).await;
}

/// Shutdown: a task still running at the deadline is dropped, counted in `cancelled`, and not
/// lost: its source takes it back as due, attempt not counted (the in-memory source, which keeps
/// a copy while retries are on, hands it back in the report).
pub async fn shutdown_deadline_gives_running_tasks_back<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(&mut s, vec![task(1), task(2)]).await;
    let started = Arc::new(AtomicUsize::new(0));
    let st = started.clone();
    let poller = Poller::<Job>::builder()
        .source(s)
        .workers(2)
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(3))
        .start(move |_n: Job, _cx| {
            st.fetch_add(1, SeqCst);
            futures::future::pending::<Result<(), std::convert::Infallible>>()
        })
        .expect("starts");
    bounded("both tasks start", async {
        while started.load(SeqCst) < 2 {
            sleep_ms(5).await;
        }
    })
    .await;
    let report = bounded("shutdown", poller.shutdown(Duration::from_millis(100)))
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    assert_eq!(report.cancelled, 2, "both dropped at the deadline");
    if h.durable() {
        assert!(report.handed_back.is_empty(), "a durable source keeps them");
        let mut next = h.source(&store, LONG_LEASE).await;
        let rest = fetch(&mut next, 10).await;
        assert_eq!(
            payloads(&rest),
            vec![1, 2],
            "due at once: no lease to wait for"
        );
        assert!(
            rest.iter().all(|t| t.attempt == 1),
            "interrupted: not counted"
        );
    } else {
        let mut back: Vec<Job> = report.handed_back.iter().map(|t| t.payload).collect();
        back.sort_unstable();
        assert_eq!(back, vec![1, 2], "handed back");
    }
    h.cleanup(&store).await;
}

// ------------------------------------------------------------------------------------------
// Properties of durable sources: several pollers share a store; tasks are leased.
// ------------------------------------------------------------------------------------------

/// Two pollers fetching at once never lease the same task.
pub async fn concurrent_fetches_lease_disjoint_tasks<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut a = h.source(&store, LONG_LEASE).await;
    let mut b = h.source(&store, LONG_LEASE).await;
    enqueue(&mut a, (0..200).map(task).collect()).await;
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let (x, y) = futures::future::join(a.fetch(30), b.fetch(30)).await;
        let (x, y) = (
            x.unwrap_or_else(|e| panic!("fetch: {e}")).tasks,
            y.unwrap_or_else(|e| panic!("fetch: {e}")).tasks,
        );
        for t in x.iter().chain(&y) {
            assert!(seen.insert(t.id), "{} leased twice", t.id);
        }
    }
    assert_eq!(seen.len(), 200, "240 asked for: all 200 leased, once each");
    h.cleanup(&store).await;
}

/// A lease that expires (its poller died or stalled) is taken back by another poller's
/// heartbeat, and costs no attempt: the poller may have died before the task started (queued
/// ahead at an executor, prefetched), so even a task of one attempt runs again (issue 12.2).
/// A late ack from the dead poller's lease changes nothing.
pub async fn expired_leases_are_taken_back<H: Harness>(h: &H) {
    let store = h.store().await;
    let lease = BEAT_LEASE;
    let mut a = h.source(&store, lease).await;
    let ids = enqueue(
        &mut a,
        vec![
            with(1, TaskOptions::new(), 3),
            with(2, TaskOptions::new(), 1),
        ],
    )
    .await;
    let mut first = fetch(&mut a, 2).await;
    first.sort_by_key(|t| t.id);
    assert_eq!(first.len(), 2);
    // `a` stops heartbeating: it died.
    let mut b = h.source(&store, lease).await;
    assert!(fetch(&mut b, 2).await.is_empty(), "still leased");
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
    bounded("heartbeat", b.heartbeat())
        .await
        .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    let mut again = fetch_until(&mut b, 2, Duration::from_secs(5)).await;
    again.sort_by_key(|t| t.id);
    let seen: Vec<_> = again.iter().map(|t| (t.id, t.attempt)).collect();
    assert_eq!(seen, vec![(ids[0], 1), (ids[1], 1)], "no attempt counted");
    let dead = bounded("dead", b.dead_tasks(10))
        .await
        .unwrap_or_else(|e| panic!("dead tasks: {e}"));
    assert!(dead.is_empty(), "an expiry alone kills nothing: {dead:?}");
    // The dead poller's late ack is for a lease it lost.
    ack(&mut a, vec![ack_of(&first[0], Disposition::Completed)]).await;
    assert_eq!(
        h.row(&store, ids[0]).await.0,
        "running",
        "a's ack changed nothing"
    );
    let retry = Disposition::Retry {
        after: Duration::ZERO,
        error: "x".into(),
    };
    ack(&mut b, vec![ack_of(&again[0], retry)]).await;
    let third = fetch_until(&mut b, 1, Duration::from_secs(5)).await;
    assert_eq!(third[0].attempt, 2, "b's ack counted, a's did not");
    h.cleanup(&store).await;
}

/// The guard against a task that kills its worker each time: after five lease expiries in a
/// row (the default), with no ack between, it is dead, and says why.
pub async fn repeated_lease_expiries_make_a_task_dead<H: Harness>(h: &H) {
    let store = h.store().await;
    let lease = Duration::from_millis(200);
    let mut b = h.source(&store, lease).await;
    let id = enqueue(&mut b, vec![with(1, TaskOptions::new(), 1)]).await[0];
    for expiry in 1..=5 {
        let mut a = h.source(&store, lease).await;
        let got = fetch_until(&mut a, 1, Duration::from_secs(5)).await;
        assert_eq!(
            (got[0].id, got[0].attempt),
            (id, 1),
            "expiry {expiry}: not counted"
        );
        drop(a); // dies holding it
        sleep_ms(300).await;
        bounded("heartbeat", b.heartbeat())
            .await
            .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    }
    let (state, attempt, error) = h.row(&store, id).await;
    assert_eq!((state.as_str(), attempt), ("dead", 0));
    assert!(error.unwrap_or_default().contains("5 times"));
    h.cleanup(&store).await;
}

/// The heartbeat keeps a running task's lease alive past its first expiry, and then the
/// poller's ack still counts.
pub async fn heartbeats_extend_leases<H: Harness>(h: &H) {
    let store = h.store().await;
    let lease = BEAT_LEASE;
    let mut a = h.source(&store, lease).await;
    let mut b = h.source(&store, lease).await;
    enqueue(&mut a, vec![task(1)]).await;
    let got = fetch(&mut a, 1).await;
    stays_leased_to_a(&mut a, &mut b, lease, "still leased to a").await;
    completed_once(&mut a, &mut b, lease, &got[0]).await;
    h.cleanup(&store).await;
}

/// Two leases' worth of heartbeats (every 120 ms) from both sources: `b` never gets the task
/// `a` holds.
async fn stays_leased_to_a<S: Source<Job>>(a: &mut S, b: &mut S, lease: Duration, why: &str) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < lease * 2 {
        sleep_ms(120).await;
        bounded("heartbeat", a.heartbeat())
            .await
            .unwrap_or_else(|e| panic!("heartbeat: {e}"));
        bounded("heartbeat", b.heartbeat())
            .await
            .unwrap_or_else(|e| panic!("heartbeat: {e}"));
        assert!(fetch(b, 1).await.is_empty(), "{why}");
    }
}

/// `a` completes `task`; a lease later `b` neither gets it back nor sees it dead.
async fn completed_once<S: Source<Job>>(a: &mut S, b: &mut S, lease: Duration, task: &Task<Job>) {
    ack(a, vec![ack_of(task, Disposition::Completed)]).await;
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    bounded("heartbeat", b.heartbeat())
        .await
        .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    assert!(fetch(b, 1).await.is_empty(), "completed, not taken back");
    assert!(bounded("dead", b.dead_tasks(10))
        .await
        .unwrap_or_else(|e| panic!("dead: {e}"))
        .is_empty());
}

/// A lease stays extended until the ack for it lands: an ack that has not run yet (in flight,
/// or failed and waiting for its retry) does not let another poller take the task back.
pub async fn leases_are_kept_until_the_ack_lands<H: Harness>(h: &H) {
    let store = h.store().await;
    let lease = BEAT_LEASE;
    let mut a = h.source(&store, lease).await;
    let mut b = h.source(&store, lease).await;
    // Attempts to spare, so a lease taken back would queue it again (not bury it).
    enqueue(&mut a, vec![with(1, TaskOptions::new(), 3)]).await;
    let got = fetch(&mut a, 1).await;
    // Asked for, never run: as if its call failed and waits for a retry.
    drop(a.ack(vec![ack_of(&got[0], Disposition::Completed)]));
    stays_leased_to_a(
        &mut a,
        &mut b,
        lease,
        "still leased to a while its ack waits",
    )
    .await;
    completed_once(&mut a, &mut b, lease, &got[0]).await;
    h.cleanup(&store).await;
}

/// A row whose payload does not decode goes dead with the decoder's error; the others run.
pub async fn undecodable_payloads_go_dead<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    enqueue(&mut s, vec![task(1)]).await;
    h.insert_raw(&store, "\"not a number\"").await;
    enqueue(&mut s, vec![task(3)]).await;
    let got = fetch_until(&mut s, 2, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got), vec![1, 3]);
    let dead = bounded("dead", s.dead_tasks(10))
        .await
        .unwrap_or_else(|e| panic!("dead: {e}"));
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("decode"), "{}", dead[0].error);
    assert!(fetch(&mut s, 10).await.is_empty());
    h.cleanup(&store).await;
}

/// Tasks enqueued through one poller's source are fetched by another's (a shared queue), and
/// a poller shut down and started again finds what is left (durability across restarts).
pub async fn tasks_outlive_their_poller<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut a = h.source(&store, LONG_LEASE).await;
    enqueue(&mut a, (0..10).map(task).collect()).await;
    let got = fetch(&mut a, 4).await;
    ack(
        &mut a,
        got.iter()
            .map(|t| ack_of(t, Disposition::Completed))
            .collect(),
    )
    .await;
    bounded("close", a.close(Vec::new()))
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
    drop(a);
    let mut b = h.source(&store, LONG_LEASE).await;
    let rest = fetch(&mut b, 100).await;
    assert_eq!(payloads(&rest), (4..10).collect::<Vec<_>>());
    h.cleanup(&store).await;
}

/// An ack the store would refuse (an error text with NUL or too long, a retry `Duration::MAX`
/// away) is stored bounded, and does not hold up the acks batched with it (issue 12.4).
pub async fn bad_acks_are_stored_bounded<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let three = (1..=3).map(|n| with(n, TaskOptions::new(), 3)).collect();
    let ids = enqueue(&mut s, three).await;
    let mut got = fetch(&mut s, 3).await;
    got.sort_by_key(|t| t.id);
    let long = format!("bad\0{}", "é".repeat(100_000));
    let acks = vec![
        ack_of(&got[0], Disposition::Completed),
        ack_of(
            &got[1],
            Disposition::Retry {
                after: Duration::MAX,
                error: "later".into(),
            },
        ),
        ack_of(&got[2], Disposition::Dead { error: long }),
    ];
    ack(&mut s, acks).await;
    assert_eq!(h.row(&store, ids[0]).await.0, "completed");
    assert_eq!(h.row(&store, ids[1]).await.0, "queued");
    assert!(
        fetch(&mut s, 3).await.is_empty(),
        "the retry is far in the future"
    );
    let (state, _, error) = h.row(&store, ids[2]).await;
    assert_eq!(state, "dead");
    let error = error.unwrap_or_default();
    assert!(
        error.starts_with("badé"),
        "NUL stripped: {:?}",
        &error[..10]
    );
    assert!(error.len() <= 8 * 1024, "bounded: {} bytes", error.len());
    h.cleanup(&store).await;
}

/// One ack the store refuses for its data (a trigger) in a batch of eight costs that one task,
/// not the batch: the source splits the batch until the refused ack is alone, records every
/// other ack, and leaves that task running under its lease (which expires, and it runs again).
pub async fn a_poison_ack_costs_one_task<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let ids = enqueue(&mut s, (1..=8).map(task).collect()).await;
    let mut got = fetch(&mut s, 8).await;
    got.sort_by_key(|t| t.id);
    assert_eq!(got.len(), 8);
    let poison = ids[5];
    h.refuse_completing(&store, poison).await;
    let acks = got
        .iter()
        .map(|t| ack_of(t, Disposition::Completed))
        .collect();
    ack(&mut s, acks).await;
    for &id in &ids {
        let state = h.row(&store, id).await.0;
        if id == poison {
            assert_eq!(
                state, "running",
                "the refused ack is left out, its lease kept"
            );
        } else {
            assert_eq!(state, "completed", "task {id:?}'s ack is recorded");
        }
    }
    h.cleanup(&store).await;
}

/// End to end, a task that runs three times its lease is kept by the poller's heartbeat: a
/// second poller reclaiming expired leases all the while neither takes it back nor runs it
/// again; it completes once, at attempt 1.
pub async fn a_long_task_outlives_its_lease<H: Harness>(h: &H) {
    let store = h.store().await;
    // A 1 s lease (heartbeat every third): at 300 ms the other source's writes to the same
    // SQLite file could hold the poller's heartbeat past the lease on a loaded CI machine.
    let lease = Duration::from_millis(1000);
    let mut s = h.source(&store, lease).await;
    let id = enqueue(&mut s, vec![with(1, TaskOptions::new(), 3)]).await[0];
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let poller = Poller::<Job>::builder()
        .source(s)
        .workers(1)
        .on_current_arbiter()
        .start(move |_n: Job, _cx| {
            r.fetch_add(1, SeqCst);
            async move {
                sleep_ms(3000).await; // three leases
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .expect("starts");
    let mut other = h.source(&store, lease).await;
    bounded("the long task completes", async {
        while h.row(&store, id).await.0 != "completed" {
            bounded("heartbeat", other.heartbeat())
                .await
                .unwrap_or_else(|e| panic!("heartbeat: {e}"));
            assert!(fetch(&mut other, 1).await.is_empty(), "never taken back");
            sleep_ms(50).await;
        }
    })
    .await;
    assert_eq!(runs.load(SeqCst), 1, "run once");
    assert_eq!(h.row(&store, id).await.1, 1, "at attempt 1");
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    h.cleanup(&store).await;
}

/// A store shared by pollers knows the final state of a task whichever poller ran it: one
/// poller finishes tasks, another reads their final states (issue 12.9).
pub async fn final_states_are_read_from_the_store<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut a = h.source(&store, LONG_LEASE).await;
    let mut b = h.source(&store, LONG_LEASE).await;
    let ids = enqueue(&mut a, vec![task(1), task(2), task(3), task(4)]).await;
    let mut got = fetch(&mut a, 3).await;
    got.sort_by_key(|t| t.id);
    let dead = Disposition::Dead { error: "no".into() };
    let acks = vec![
        ack_of(&got[0], Disposition::Completed),
        ack_of(&got[1], dead),
    ];
    ack(&mut a, acks).await;
    let cancelled = bounded("cancel", b.cancel(ids[3])).await;
    assert!(cancelled.unwrap_or_else(|e| panic!("cancel: {e}")));
    let mut states = bounded("final states", b.final_states(ids.clone()))
        .await
        .unwrap_or_else(|e| panic!("final states: {e}"));
    states.sort_by_key(|s| s.0);
    let dead = FinalState::Dead {
        error: "no".into(),
        attempts: 1,
    };
    assert_eq!(
        states,
        vec![
            (ids[0], FinalState::Completed),
            (ids[1], dead),
            (ids[3], FinalState::Cancelled)
        ],
        "the running task is not final"
    );
    h.cleanup(&store).await;
}

/// The status of one task, which the source must know.
async fn status_of<S: Source<Job>>(s: &mut S, id: TaskId) -> TaskStatus {
    bounded("status", s.status(id))
        .await
        .unwrap_or_else(|e| panic!("status: {e}"))
        .unwrap_or_else(|| panic!("the source knows task {id:?}"))
}

/// Whether `t` is within a minute of `now + after` (the store's clock may be another machine's).
fn about(t: std::time::SystemTime, after: Duration) -> bool {
    let want = std::time::SystemTime::now() + after;
    let gap = match t.duration_since(want) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    gap < Duration::from_secs(60)
}

/// Every task's status follows it through the states (queued, scheduled, running, retrying
/// with its error, completed, dead, cancelled), and the counts by state agree (issue 13).
pub async fn status_and_counts_follow_each_task<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut s = h.source(&store, LONG_LEASE).await;
    let hour = Duration::from_secs(3600);
    let began = std::time::Instant::now();
    let ids = enqueue(
        &mut s,
        (1..=4).map(|n| with(n, TaskOptions::new(), 3)).collect(),
    )
    .await;
    let later = enqueue(&mut s, vec![with(9, TaskOptions::new().delay(hour), 3)]).await[0];
    for &id in &ids {
        let st = status_of(&mut s, id).await;
        assert_eq!(
            (st.id, &st.state, st.attempt, st.max_attempts),
            (id, &TaskState::Queued, 0, 3)
        );
        assert!(
            st.enqueued_at.is_some_and(|t| about(t, Duration::ZERO)),
            "{st:?}"
        );
    }
    match status_of(&mut s, later).await.state {
        TaskState::Scheduled { run_at } => assert!(about(run_at, hour), "{run_at:?}"),
        other => panic!("a delayed task is scheduled, not {other:?}"),
    }
    let got = fetch(&mut s, 3).await;
    assert_eq!(
        got.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids[..3].to_vec()
    );
    let st = status_of(&mut s, ids[0]).await;
    assert_eq!(st.attempt, 1);
    match st.state {
        TaskState::Running { since } => {
            assert!(since.is_some_and(|t| about(t, Duration::ZERO)), "{since:?}")
        }
        other => panic!("a fetched task is running, not {other:?}"),
    }
    let counts = bounded("counts", s.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let waited = began.elapsed();
    let mut want = QueueCounts::default();
    (want.queued, want.scheduled, want.running) = (1, 1, 3);
    // The one due task was enqueued after `began` (a store's clock rounds to 1 µs).
    let age = counts.and_then(|c| c.oldest_queued_age);
    assert!(
        age.is_some_and(|a| a <= waited + Duration::from_micros(2)),
        "{age:?}, {waited:?} since the enqueue"
    );
    want.oldest_queued_age = age;
    assert_eq!(counts, Some(want));

    let retry = Disposition::Retry {
        after: hour,
        error: "flaky".into(),
    };
    let dead = Disposition::Dead {
        error: "broken".into(),
    };
    ack(
        &mut s,
        vec![
            ack_of(&got[0], retry),
            ack_of(&got[1], Disposition::Completed),
            ack_of(&got[2], dead),
        ],
    )
    .await;
    assert!(bounded("cancel", s.cancel(ids[3]))
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    let st = status_of(&mut s, ids[0]).await;
    assert_eq!((st.attempt, st.last_error.as_deref()), (1, Some("flaky")));
    match st.state {
        TaskState::Retrying { run_at } => assert!(about(run_at, hour), "{run_at:?}"),
        other => panic!("a failed task waiting for its retry is retrying, not {other:?}"),
    }
    let st = status_of(&mut s, ids[1]).await;
    assert!(matches!(st.state, TaskState::Completed { .. }), "{st:?}");
    assert!(st.state.is_final());
    let st = status_of(&mut s, ids[2]).await;
    assert!(matches!(st.state, TaskState::Dead { .. }), "{st:?}");
    assert_eq!(st.last_error.as_deref(), Some("broken"));
    let st = status_of(&mut s, ids[3]).await;
    assert!(matches!(st.state, TaskState::Cancelled { .. }), "{st:?}");
    let counts = bounded("counts", s.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut want = QueueCounts::default();
    (want.scheduled, want.retrying, want.dead) = (1, 1, 1);
    assert_eq!(counts, Some(want));
    let unknown = TaskId(u64::from(u32::MAX) * 1000);
    let none = bounded("status", s.status(unknown))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(none, None, "a task the source never held is unknown");
    h.cleanup(&store).await;
}

/// A durable store answers the status of a task another poller ran, from its table (issue 13).
pub async fn status_is_read_from_the_store<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut a = h.source(&store, LONG_LEASE).await;
    let mut b = h.source(&store, LONG_LEASE).await;
    let id = enqueue(&mut a, vec![task(1)]).await[0];
    let got = fetch(&mut a, 1).await;
    assert!(matches!(
        status_of(&mut b, id).await.state,
        TaskState::Running { .. }
    ));
    ack(&mut a, vec![ack_of(&got[0], Disposition::Completed)]).await;
    let st = status_of(&mut b, id).await;
    assert!(
        matches!(st.state, TaskState::Completed { at: Some(_) }),
        "{st:?}"
    );
    assert_eq!(st.attempt, 1);
    h.cleanup(&store).await;
}

/// A task's pace key is stored at enqueue and read back by every fetch and status, in another
/// source (another process) too; a task without one has none.
pub async fn keys_are_stored_and_read_back<H: Harness>(h: &H) {
    let store = h.store().await;
    let mut a = h.source(&store, LONG_LEASE).await;
    let mut b = h.source(&store, LONG_LEASE).await;
    let ids = enqueue(
        &mut a,
        vec![with(1, TaskOptions::new().key("customer-1"), 1), task(2)],
    )
    .await;
    let got = fetch(&mut b, 2).await;
    let keys: Vec<_> = got.iter().map(|t| (t.payload, t.key.clone())).collect();
    assert_eq!(
        keys,
        vec![(1, Some(Key::new("customer-1"))), (2, None)],
        "keys read back by a fetch"
    );
    assert_eq!(
        status_of(&mut a, ids[0]).await.key,
        Some(Key::new("customer-1"))
    );
    assert_eq!(status_of(&mut a, ids[1]).await.key, None);
    h.cleanup(&store).await;
}

/// The poller's per-key controls apply to durable tasks: a paused key starts nothing while
/// another key's tasks behind it run, and a key limit of 1 holds.
pub async fn per_key_controls_apply_to_stored_keys<H: Harness>(h: &H) {
    let store = h.store().await;
    let s = h.source(&store, LONG_LEASE).await;
    // Per key (payload / 100): running now, most at once, started.
    let log = Arc::new(Mutex::new((
        vec![0usize; 3],
        vec![0usize; 3],
        vec![0usize; 3],
    )));
    let l = log.clone();
    let poller = Poller::<Job>::builder()
        .source(s)
        .workers(4)
        .key_limit(1)
        .on_current_arbiter()
        .start(move |n: Job, _cx: TaskContext| {
            let l = l.clone();
            async move {
                let k = (n / 100) as usize;
                {
                    let mut g = l.lock().unwrap_or_else(|e| e.into_inner());
                    g.0[k] += 1;
                    g.1[k] = g.1[k].max(g.0[k]);
                    g.2[k] += 1;
                }
                // Long enough that tasks of one key would overlap without the limit.
                sleep_ms(20).await;
                l.lock().unwrap_or_else(|e| e.into_inner()).0[k] -= 1;
                Ok::<(), String>(())
            }
        })
        .expect("starts");
    poller.pause_key("k0");
    let submit = |k: u32, n: u32| {
        SubmitBatch::new((0..n).map(|i| k * 100 + i).collect())
            .options(TaskOptions::new().key(format!("k{k}")))
            .tracked()
    };
    // The paused key first, in fetch order ahead of the others.
    let paused = bounded("submit", poller.submit_batch_with(submit(0, 3)))
        .await
        .unwrap_or_else(|e| panic!("submit refused: {e}"));
    let limited = bounded("submit", poller.submit_batch_with(submit(1, 4)))
        .await
        .unwrap_or_else(|e| panic!("submit refused: {e}"));
    for r in limited {
        assert_eq!(
            bounded("outcome", r.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
    {
        let g = log.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(g.2[0], 0, "the paused key started nothing");
        assert_eq!(g.2[1], 4);
        assert_eq!(g.1[1], 1, "key limit 1: one of k1 at a time");
    }
    poller.resume_key("k0");
    for r in paused {
        assert_eq!(
            bounded("outcome", r.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
    assert_eq!(log.lock().unwrap_or_else(|e| e.into_inner()).1[0], 1);
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    h.cleanup(&store).await;
}

/// Generates one `#[actix_rt::test]` per property every source has.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            fetch_order_is_priority_then_fifo,
            due_tasks_go_in_due_time_order,
            enqueue_keeps_batch_order_and_options,
            final_acks_are_final,
            retries_wait_and_count_attempts,
            snooze_keeps_the_attempt,
            delayed_tasks_wait,
            cancel_removes_waiting_tasks,
            dead_tasks_rerun_and_purge,
            poller_runs_everything_end_to_end,
            poller_honours_priority_and_delay,
            shutdown_releases_unstarted_tasks,
            release_keeps_the_attempt,
            shutdown_deadline_gives_running_tasks_back,
            status_and_counts_follow_each_task,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[actix_rt::test]
            async fn $name() {
                conformance::$name(&$harness).await;
            }
        )*
    };
}

/// Generates one `#[actix_rt::test]` per property of durable sources.
#[macro_export]
macro_rules! durable_conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            concurrent_fetches_lease_disjoint_tasks,
            expired_leases_are_taken_back,
            repeated_lease_expiries_make_a_task_dead,
            a_long_task_outlives_its_lease,
            final_states_are_read_from_the_store,
            heartbeats_extend_leases,
            leases_are_kept_until_the_ack_lands,
            undecodable_payloads_go_dead,
            tasks_outlive_their_poller,
            bad_acks_are_stored_bounded,
            a_poison_ack_costs_one_task,
            status_is_read_from_the_store,
            keys_are_stored_and_read_back,
            per_key_controls_apply_to_stored_keys,
        );
    };
}
