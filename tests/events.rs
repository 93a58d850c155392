//! Subscribers hear of retries and final states once the source recorded them (issue 13):
//! a probe actor receives exactly one `Ended` per task and one `Retrying` per failed attempt
//! that runs again.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use actix_poller::{FinalState, Poller, RetryPolicy, TaskContext, TaskEvent, TaskId};
use tokio::sync::mpsc;

/// Forwards every event to the test.
struct Probe(mpsc::UnboundedSender<TaskEvent>);

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<TaskEvent> for Probe {
    type Result = ();
    fn handle(&mut self, event: TaskEvent, _: &mut Context<Self>) {
        let _ = self.0.send(event);
    }
}

#[actix_rt::test]
async fn subscribers_hear_each_retry_and_each_end_once() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let probe = Probe(tx).start();
    // Payload 0 succeeds, 1 fails once then succeeds, 2 always fails (3 attempts).
    let poller = Poller::<u32>::builder()
        .workers(2)
        .retry(RetryPolicy::attempts(3).fixed(Duration::from_millis(1)))
        .subscribe(probe.recipient())
        .start(|n: u32, cx: TaskContext| async move {
            match (n, cx.attempt()) {
                (0, _) | (1, 2..) => Ok(()),
                _ => Err(std::io::Error::other(format!("no {n}"))),
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ids = HashMap::new();
    for n in 0..3u32 {
        let receipt = poller
            .submit_tracked(n)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ids.insert(receipt.id(), n);
        receipt.outcome().await.unwrap_or_else(|e| panic!("{e}"));
    }
    // 3 ends, 1 + 2 retries; each outcome above resolved after its ack landed, and the event
    // is sent in the same handler before the receipt resolves.
    let mut events: Vec<TaskEvent> = Vec::new();
    while events.len() < 6 {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} events: {events:?}", events.len()))
            .expect("the probe is alive");
        events.push(event);
    }
    let of = |n: u32| -> Vec<&TaskEvent> {
        events
            .iter()
            .filter(|e| ids.get(&e.id()) == Some(&n))
            .collect()
    };
    let id = |n: u32| -> TaskId {
        *ids.iter()
            .find(|(_, &v)| v == n)
            .map(|(k, _)| k)
            .expect("submitted")
    };
    assert_eq!(
        of(0),
        vec![&TaskEvent::Ended {
            id: id(0),
            attempt: 1,
            state: FinalState::Completed
        }]
    );
    assert!(
        matches!(
            of(1).as_slice(),
            [TaskEvent::Retrying { attempt: 1, error, .. }, TaskEvent::Ended { attempt: 2, state: FinalState::Completed, .. }]
                if error.contains("no 1")
        ),
        "{:?}",
        of(1)
    );
    assert!(
        matches!(
            of(2).as_slice(),
            [
                TaskEvent::Retrying { attempt: 1, .. },
                TaskEvent::Retrying { attempt: 2, .. },
                TaskEvent::Ended {
                    attempt: 3,
                    state: FinalState::Dead { attempts: 3, .. },
                    ..
                }
            ]
        ),
        "{:?}",
        of(2)
    );
    poller
        .shutdown(Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::ZERO).await;
    assert!(
        rx.try_recv().is_err(),
        "no event beyond one per retry and one per end"
    );
}
