//! The lost wake-up race, one test for every dialect.

use std::time::Duration;

use super::{DurableQueue, DurableSource, Store};
use crate::source::{NewTask, Source};

/// The lost wake-up race: a fetch finds nothing; a task is enqueued (and its wake-up
/// delivered, `settle` after) after the fetch's query but before the Fetcher waits on the
/// fetch's signal. The signal was subscribed before the query, so it has already fired.
pub(crate) async fn a_wake_up_racing_an_empty_fetch_is_not_lost<D: Store>(
    mut source: DurableSource<u32, D>,
    other: DurableQueue<u32, D>,
    settle: Duration,
) {
    // No wake-up: the signal stays quiet (the test can tell a wake from none).
    let quiet = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(quiet.tasks.is_empty());
    let signal = quiet.wake_on.signal.expect("a wake-up signal");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), signal)
            .await
            .is_err(),
        "no spurious wake-up"
    );

    // The race: the fetch ran (empty) before the insert; the wake-up lands before anyone
    // waits on the signal.
    let empty = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.tasks.is_empty());
    other
        .enqueue(vec![NewTask::new(1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(settle).await;
    let signal = empty.wake_on.signal.expect("a wake-up signal");
    tokio::time::timeout(Duration::from_millis(50), signal)
        .await
        .expect("the wake-up that raced the empty fetch wakes the poller");

    // An enqueue while the fetch future exists but before it ran: the query sees it.
    let pending = source.fetch(10);
    other
        .enqueue(vec![NewTask::new(2)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = pending.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.tasks.len(), 2, "the query sees both");
}

/// A short batch (fewer tasks than asked for) is all the source has for now: it comes back
/// drained, with no follow-up fetch (issue 14), waking at the next due time it left, and a
/// task enqueued after it still wakes the poller (its signal was subscribed before the query).
pub(crate) async fn a_short_batch_is_drained_and_wakes_for_what_follows<D: Store>(
    mut source: DurableSource<u32, D>,
    other: DurableQueue<u32, D>,
) {
    let later = Duration::from_secs(60);
    let mut delayed = NewTask::new(2);
    delayed.run_at = Some(tokio::time::Instant::now() + later);
    other
        .enqueue(vec![NewTask::new(1), delayed])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let asked = tokio::time::Instant::now();
    let short = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(short.tasks.len(), 1);
    assert!(short.drained, "a short batch needs no follow-up fetch");
    // The delayed task's due time, not the fallback poll (600 s in these tests).
    let at = short.wake_on.at.expect("a time to look again");
    assert!(
        at > asked + later / 2 && at < asked + later * 2,
        "wakes at the delayed task's due time: {:?} after the fetch",
        at - asked
    );

    // An enqueue after the short batch's query wakes the poller waiting on it (however late
    // the store's notification comes: the timeout only ends a failing test).
    other
        .enqueue(vec![NewTask::new(3)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let signal = short.wake_on.signal.expect("a wake-up signal");
    tokio::time::timeout(Duration::from_secs(30), signal)
        .await
        .expect("the enqueue that followed a short batch wakes the poller");
    let next = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.tasks.len(), 1);
    assert!(next.drained);

    // A full batch may be followed by more: the Fetcher asks again at once.
    other
        .enqueue(vec![NewTask::new(4), NewTask::new(5)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let full = source.fetch(2).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(full.tasks.len(), 2);
    assert!(!full.drained, "a full batch is not drained");
}

/// An ack of a completed task counts only for the lease it answers: one whose lease moved on
/// (its reply was lost and the task was leased again, here by a bump of its lease sequence)
/// changes nothing, while the rest of the batch is recorded (issue 14's lean statement for
/// completed acks matches the lease sequence as the general one does).
pub(crate) async fn a_completed_ack_answers_only_its_own_lease<D: Store>(
    mut source: DurableSource<u32, D>,
) {
    source
        .queue()
        .enqueue(vec![NewTask::new(1), NewTask::new(2)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = source.fetch(10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.tasks.len(), 2);
    let (moved, kept) = (got.tasks[0].id, got.tasks[1].id);
    let bump = format!(
        "UPDATE {} SET lease_seq = lease_seq + 1 WHERE id = {}",
        source.table(),
        moved.0
    );
    let mut conn = source
        .pool()
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    D::raw(&mut *conn, &bump)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(conn);
    let acks = got.tasks.iter().map(crate::task::Ack::completed).collect();
    source.ack(acks).await.unwrap_or_else(|e| panic!("{e}"));
    let state = |s: Option<crate::task::TaskStatus>| s.map(|s| s.state);
    let moved = state(source.status(moved).await.unwrap_or_else(|e| panic!("{e}")));
    assert!(
        matches!(moved, Some(crate::task::TaskState::Running { .. })),
        "the ack of a lease that moved on changed nothing: {moved:?}"
    );
    let kept = state(source.status(kept).await.unwrap_or_else(|e| panic!("{e}")));
    assert!(
        matches!(kept, Some(crate::task::TaskState::Completed { .. })),
        "the ack of the lease it answers is recorded: {kept:?}"
    );
}
