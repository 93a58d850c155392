//! No actor, arbiter or task future outlives `shutdown`, or the last handle. The tests of this
//! binary run one at a time (`SERIAL`), so the thread count each reads belongs to it alone.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_poller::{FinalState, Poller, PollerBuilder, ShutdownError, SubmitError};
use common::{eventually, gate, within, DropProbe, ScriptedSource};

/// Held by each test for its whole run: arbiter threads are counted process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// After shutdown every actor is gone (its state dropped), every arbiter joined, and the handle
/// refuses work with `Closed`, handing the task back. A second shutdown is an error.
#[test]
fn nothing_is_left_alive_after_shutdown() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    actix_rt::System::new().block_on(after_shutdown());
}

async fn after_shutdown() {
    for on_current in [false, true] {
        let handler_states = Arc::new(AtomicUsize::new(0));
        let source_drops = Arc::new(AtomicUsize::new(0));
        let threads_before = arbiter_threads();
        let states = handler_states.clone();
        let poller = probed_builder(on_current, &source_drops)
            .start_with(move |_executor| {
                // Per-executor state, dropped with its executor.
                let state = std::rc::Rc::new(DropProbe(states.clone()));
                move |_n: u32, _cx| {
                    let _state = state.clone();
                    async { Ok::<_, Infallible>(()) }
                }
            })
            .unwrap();
        let receipts = poller
            .submit_batch_tracked((0..50).collect())
            .await
            .unwrap();
        for r in receipts {
            assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
        }
        if !on_current {
            assert_eq!(arbiter_threads(), threads_before + 2, "two arbiter threads");
        }
        let report = within(poller.shutdown(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(report.cancelled, 0);
        assert_eq!(
            handler_states.load(SeqCst),
            2,
            "both executors dropped ({on_current})"
        );
        assert_eq!(
            source_drops.load(SeqCst),
            1,
            "the fetcher dropped its source"
        );
        // `shutdown` joined the arbiter threads (pthread_join returned); the kernel may list an
        // exited thread in /proc for a moment longer, so allow it a bounded moment to go.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while arbiter_threads() != threads_before && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(arbiter_threads(), threads_before, "arbiter threads joined");
        match poller.submit(7).await {
            Err(SubmitError::Closed(task)) => assert_eq!(task, 7),
            other => panic!("expected Closed, got {other:?}"),
        }
        match poller
            .submit_recipient()
            .send(actix_poller::Submit::new(8))
            .await
        {
            Err(_) | Ok(Err(SubmitError::Closed(_))) => {}
            Ok(other) => panic!("expected the fetcher gone, got {other:?}"),
        }
        assert!(matches!(
            poller.shutdown(Duration::from_secs(1)).await,
            Err(ShutdownError::AlreadyShutDown)
        ));
        assert!(poller.is_closed());
    }
}

/// Dropping every handle without `shutdown` shuts the poller down (like dropping a runtime):
/// running tasks are interrupted (their futures dropped), every executor and the source are
/// dropped, and the arbiter threads exit. Before this, the actors held each other's addresses
/// and lived, with their threads, until the System stopped.
#[test]
fn nothing_is_left_alive_after_the_last_handle_drops() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    actix_rt::System::new().block_on(after_the_last_handle_drops());
}

async fn after_the_last_handle_drops() {
    for on_current in [false, true] {
        let handler_states = Arc::new(AtomicUsize::new(0));
        let task_futures = Arc::new(AtomicUsize::new(0));
        let source_drops = Arc::new(AtomicUsize::new(0));
        let threads_before = arbiter_threads();
        let (gate, _never_opened) = gate();
        let (states, futures) = (handler_states.clone(), task_futures.clone());
        let poller = probed_builder(on_current, &source_drops)
            .start_with(move |_executor| {
                let state = std::rc::Rc::new(DropProbe(states.clone()));
                let (gate, futures) = (gate.clone(), futures.clone());
                move |n: u32, _cx| {
                    let _state = state.clone();
                    let (gate, probe) = (gate.clone(), DropProbe(futures.clone()));
                    async move {
                        let _probe = probe;
                        if n >= 5 {
                            gate.wait().await; // never opened: still running at the drop
                        }
                        Ok::<_, Infallible>(())
                    }
                }
            })
            .unwrap();
        let receipts = poller
            .submit_batch_tracked((0..20).collect())
            .await
            .unwrap();
        for r in receipts.into_iter().take(5) {
            assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
        }
        eventually(Duration::from_secs(10), || poller.stats().busy == 4).await;
        let other = poller.clone();
        drop(poller);
        assert!(!other.is_closed(), "a handle is left: the poller runs");
        drop(other);
        eventually(Duration::from_secs(10), || {
            handler_states.load(SeqCst) == 2
                && source_drops.load(SeqCst) == 1
                && task_futures.load(SeqCst) == 5 + 4
                && arbiter_threads() == threads_before
        })
        .await;
    }
}

/// Four workers on two executors (on their own arbiters unless `on_current`), over a source
/// that counts its drop in `source_drops`.
fn probed_builder(
    on_current: bool,
    source_drops: &Arc<AtomicUsize>,
) -> PollerBuilder<u32, ScriptedSource<u32>> {
    let (mut source, _log) = ScriptedSource::new(100);
    source._drop = Some(DropProbe(source_drops.clone()));
    let builder = Poller::<u32>::builder()
        .workers(4)
        .executors(2)
        .source(source);
    if on_current {
        builder.on_current_arbiter()
    } else {
        builder
    }
}

/// Threads of this process that are actix arbiters (their names start `actix-rt|`).
fn arbiter_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        panic!("this test reads /proc/self/task (Linux)");
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-rt|"))
        .count()
}
