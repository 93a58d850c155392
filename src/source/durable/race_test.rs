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
