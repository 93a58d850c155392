//! A task's status by id through the poller (issue 13): the source's answer, with the progress
//! of a tracked task this poller runs; the in-memory history is bounded.

use std::time::Duration;

use actix_poller::{MemorySource, Poller, Progress, Submit, TaskContext, TaskOptions, TaskState};
use tokio::sync::{mpsc, oneshot};

/// Bounds every wait, so a broken promise fails the test instead of hanging it.
async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
}

#[actix_rt::test]
async fn status_shows_running_with_progress_then_the_end() {
    // The handler reports progress, tells the test, then waits for the test's go.
    let (started_tx, mut started) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    let poller = Poller::<u32>::builder()
        .workers(1)
        .start(move |_n: u32, cx: TaskContext| {
            let started_tx = started_tx.clone();
            async move {
                cx.progress(3, 10);
                let (go_tx, go) = oneshot::channel();
                let _ = started_tx.send(go_tx);
                let _ = go.await;
                Ok::<_, std::io::Error>(())
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let receipt = bounded("submit", poller.submit_tracked(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = receipt.id();
    let later = Submit::new(2).options(TaskOptions::new().delay(Duration::from_secs(3600)));
    let later = bounded("submit", poller.submit_with(later))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id();
    let go = bounded("start", started.recv())
        .await
        .expect("the task started");

    let st = bounded("status", poller.status(id))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = st.expect("a running task is known");
    assert!(
        matches!(st.state, TaskState::Running { since: Some(_) }),
        "{st:?}"
    );
    assert_eq!(st.attempt, 1);
    assert_eq!(st.progress, Some(Progress::new(3, 10, None)));
    let st = bounded("status", poller.status(later))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        st.map(|s| s.state),
        Some(TaskState::Scheduled { .. })
    ));

    let _ = go.send(());
    bounded("outcome", receipt.outcome())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = bounded("status", poller.status(id))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let st = st.expect("a finished task is kept in the history");
    assert!(
        matches!(st.state, TaskState::Completed { at: Some(_) }),
        "{st:?}"
    );
    assert_eq!(st.progress, None, "progress belongs to a running attempt");
    let counts = bounded("counts", poller.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let counts = counts.expect("the in-memory source counts");
    assert_eq!((counts.waiting(), counts.running), (1, 0));
    let report = bounded("shutdown", poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.handed_back.len(), 1, "the delayed task comes back");
}

#[actix_rt::test]
async fn the_in_memory_history_is_bounded() {
    let source = MemorySource::default().history(2, Duration::from_secs(3600));
    let poller = Poller::<u32>::builder()
        .workers(1)
        .source(source)
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, std::io::Error>(()) })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ids = Vec::new();
    for n in 0..3 {
        let receipt = bounded("submit", poller.submit_tracked(n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ids.push(receipt.id());
        bounded("outcome", receipt.outcome())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let first = bounded("status", poller.status(ids[0]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first, None,
        "the oldest final state is forgotten past the bound"
    );
    for &id in &ids[1..] {
        let st = bounded("status", poller.status(id))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            st.map(|s| s.state),
            Some(TaskState::Completed { .. })
        ));
    }
    bounded("shutdown", poller.shutdown(Duration::from_secs(1)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
