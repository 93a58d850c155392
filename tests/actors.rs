//! Submitting from another actor through `Recipient<Submit<T>>`, without naming the poller's
//! source or handler types, and receiving the outcome as a message.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use actix::prelude::*;
use actix_poller::{FinalState, Poller, Submit, SubmitError};
use tokio::sync::oneshot;

/// The outcome of one task, delivered to the client actor as a message.
#[derive(Message)]
#[rtype(result = "()")]
struct Outcome(u32, FinalState);

/// An actor that knows only `Recipient<Submit<u32>>`.
struct Client {
    poller: Recipient<Submit<u32>>,
    todo: Vec<u32>,
    results: Vec<(u32, FinalState)>,
    report: Option<oneshot::Sender<Vec<(u32, FinalState)>>>,
}

impl Actor for Client {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for n in self.todo.clone() {
            let send = self.poller.send(Submit::new(n).tracked());
            // Submit, then await the outcome, then tell ourselves: all without blocking.
            ctx.spawn(
                async move {
                    let receipt = send
                        .await
                        .expect("poller alive")
                        .expect("room in the queue");
                    receipt.outcome().await.expect("tracked")
                }
                .into_actor(self)
                .map(move |state, act, ctx| {
                    ctx.notify(Outcome(n, state));
                    let _ = act;
                }),
            );
        }
    }
}

impl Handler<Outcome> for Client {
    type Result = ();

    fn handle(&mut self, msg: Outcome, ctx: &mut Context<Self>) {
        self.results.push((msg.0, msg.1));
        if self.results.len() == self.todo.len() {
            if let Some(tx) = self.report.take() {
                let mut r = std::mem::take(&mut self.results);
                r.sort_by_key(|(n, _)| *n);
                let _ = tx.send(r);
            }
            ctx.stop();
        }
    }
}

#[actix_rt::test]
async fn another_actor_submits_and_receives_outcomes_as_messages() {
    let poller = Poller::<u32>::builder()
        .workers(2)
        .start(|n: u32, _cx| async move {
            if n == 3 {
                Err(format!("{n} is unlucky"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    let (tx, rx) = oneshot::channel();
    Client {
        poller: poller.submit_recipient(),
        todo: (0..6).collect(),
        results: Vec::new(),
        report: Some(tx),
    }
    .start();
    let results = common::within(rx).await.expect("client reported");
    let expected: Vec<(u32, FinalState)> = (0..6)
        .map(|n| {
            let state = if n == 3 {
                FinalState::Dead {
                    error: "3 is unlucky".into(),
                    attempts: 1,
                }
            } else {
                FinalState::Completed
            };
            (n, state)
        })
        .collect();
    assert_eq!(results, expected);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// After shutdown an actor that sends with `try_send` gets its message (and task) back.
#[actix_rt::test]
async fn try_send_after_shutdown_hands_the_task_back() {
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap();
    let recipient = poller.submit_recipient();
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
    match recipient.try_send(Submit::new(42)) {
        Err(SendError::Closed(msg)) => assert_eq!(msg.into_task(), 42),
        other => panic!("expected Closed, got {:?}", other.map(|_| ())),
    }
    match poller.submit(42).await {
        Err(SubmitError::Closed(42)) => {}
        other => panic!("expected Closed(42), got {other:?}"),
    }
}
