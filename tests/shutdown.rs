//! Two-phase shutdown: drain, cancel at the deadline, hand back what never started, and leave no
//! actor, arbiter or task future alive.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use actix_poller::{FinalState, OutcomeError, Poller, SubmitError};
use common::{within, DropProbe, ScriptedSource};

/// Running tasks that end before the deadline are drained, not cancelled.
#[actix_rt::test]
async fn running_tasks_drain_before_the_deadline() {
    tokio::time::pause();
    let poller = Poller::<u64>::builder()
        .workers(4)
        .on_current_arbiter()
        .start(|ms: u64, _cx| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked(vec![100, 200, 300, 400])
        .await
        .unwrap();
    common::eventually(Duration::from_secs(1), || poller.stats().busy == 4).await;
    let report = within(poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(report.finished_during_drain, 4);
    assert_eq!(report.cancelled, 0);
    assert!(report.handed_back.is_empty());
    for r in receipts {
        assert_eq!(within(r.outcome()).await, Ok(FinalState::Completed));
    }
}

/// Tasks still running at the deadline are dropped and reported; those nobody asked to cancel
/// were only interrupted (not a final state: their trackers learn the poller shut down), one
/// whose cancellation was asked for ends `Cancelled`; tasks that end in time are drained.
#[actix_rt::test]
async fn tasks_past_the_deadline_are_interrupted() {
    tokio::time::pause();
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let poller = Poller::<u64>::builder()
        .workers(4)
        .on_current_arbiter()
        .cancel_grace(Duration::from_secs(3600))
        .start(move |ms: u64, _cx| {
            let probe = DropProbe(d.clone());
            async move {
                let _probe = probe; // dropped when the future is dropped or ends
                tokio::time::sleep(Duration::from_millis(ms)).await; // ignores cancellation
                Ok::<_, Infallible>(())
            }
        })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked(vec![50, 3_600_000, 3_600_000, 3_600_000])
        .await
        .unwrap();
    common::eventually(Duration::from_secs(1), || poller.stats().busy == 4).await;
    poller.cancel(receipts[3].id()).await.unwrap();
    let report = within(poller.shutdown(Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(report.finished_during_drain, 1);
    assert_eq!(report.cancelled, 3);
    let outcomes: Vec<_> =
        futures::future::join_all(receipts.into_iter().map(|r| r.outcome())).await;
    assert_eq!(
        outcomes,
        vec![
            Ok(FinalState::Completed),
            Err(OutcomeError::ShutDown),
            Err(OutcomeError::ShutDown),
            Ok(FinalState::Cancelled),
        ]
    );
    assert_eq!(dropped.load(SeqCst), 4, "every task future was dropped");
}

/// Queued and prefetched-but-unstarted tasks are handed back in FIFO order, with their ids; their
/// trackers learn the poller shut down; the source saw the unstarted ones at close.
#[actix_rt::test]
async fn unstarted_tasks_are_handed_back() {
    tokio::time::pause();
    let (source, log) = ScriptedSource::new(100);
    // Nothing dispatched ahead to the executor, so exactly the prefetched tasks are unstarted at
    // the Fetcher (tests/scheduler.rs covers tasks queued at executors).
    let poller = Poller::<u32>::builder()
        .workers(1)
        .prefetch(3)
        .dispatch_ahead(0)
        .on_current_arbiter()
        .source(source)
        .start(|_n: u32, _cx| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked((0..10).collect())
        .await
        .unwrap();
    common::eventually(Duration::from_millis(50), || poller.stats().busy == 1).await;
    // Virtual time stands still while the shutdown messages flow, so the running task is
    // still running when the drain starts, and ends during it.
    let report = within(poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(report.finished_during_drain, 1);
    assert_eq!(report.cancelled, 0);
    let back: Vec<u32> = report.handed_back.iter().map(|t| t.payload).collect();
    assert_eq!(back, (1..10).collect::<Vec<_>>(), "FIFO, nothing lost");
    let ids: Vec<_> = report.handed_back.iter().map(|t| t.id).collect();
    let expected: Vec<_> = receipts[1..].iter().map(|r| r.id()).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        log.borrow().closed_with,
        Some(3),
        "the 3 prefetched went back to the source"
    );
    let mut receipts = receipts.into_iter();
    assert_eq!(
        within(receipts.next().unwrap().outcome()).await,
        Ok(FinalState::Completed)
    );
    for r in receipts {
        assert_eq!(within(r.outcome()).await, Err(OutcomeError::ShutDown));
    }
}

/// A submit raced against shutdown is either accepted (and then run, or handed back) or refused
/// with the task handed back: never lost. Checked per task, not by totals (a duplicate and a
/// loss would cancel out): every payload is in exactly one of ran / handed back / refused, and
/// ran exactly once if it ran.
#[actix_rt::test]
async fn submits_racing_shutdown_lose_nothing() {
    let runs: Arc<std::sync::Mutex<Vec<u32>>> = Arc::new(std::sync::Mutex::new(vec![0; 2_000]));
    let r = runs.clone();
    let poller = Poller::<u32>::builder()
        .workers(2)
        .start(move |n: u32, _cx| {
            if let Some(k) = r.lock().unwrap().get_mut(n as usize) {
                *k += 1;
            }
            async { Ok::<_, Infallible>(()) }
        })
        .unwrap();
    let submitter = {
        let poller = poller.clone();
        actix_rt::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            for i in 0..2_000u32 {
                match poller.submit(i).await {
                    Ok(_) => accepted.push(i),
                    Err(SubmitError::Closed(t)) => refused.push(t),
                    Err(e) => panic!("unexpected {e:?}"),
                }
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (accepted, refused)
        })
    };
    tokio::task::yield_now().await;
    let report = within(poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    let (accepted, refused) = submitter.await.unwrap();
    let stats = poller.stats();
    assert_eq!(accepted.len() as u64, stats.submitted);
    let runs = runs.lock().unwrap().clone();
    let back: Vec<u32> = report.handed_back.iter().map(|t| t.payload).collect();
    let mut seen = vec![0u32; 2_000];
    for &i in back.iter().chain(&refused) {
        seen[i as usize] += 1;
    }
    for i in 0..2_000usize {
        seen[i] += runs[i];
    }
    common::assert_each_once(&seen, "times ran + handed back + refused");
    assert!(
        refused.iter().all(|t| !accepted.contains(t)),
        "a refused task was also accepted"
    );
    assert!(
        back.iter().all(|t| accepted.contains(t)),
        "handed back a task never accepted"
    );
}
