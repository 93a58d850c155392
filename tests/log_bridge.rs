//! Attempt spans and the `log` crate. With no `tracing` subscriber ever set, tracing's `log`
//! feature (which actix-web's own crates turn on) hands every span's fields to a `log` logger.
//! The poller skips building an attempt's span when nothing could see it (no subscriber, no
//! logger at `INFO`; issue 14: it was a quarter of a no-op task's executor time); these checks
//! show that a logger that listens still gets the spans, and one that does not gets nothing.
//!
//! One test: the logger and its level are process-wide, and nothing in this file may set a
//! `tracing` subscriber (that switches tracing's `log` forwarding off for good).

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use actix_poller::{FinalState, Poller};

/// Every record a `log` logger got: (target, message).
struct Capture(Mutex<Vec<(String, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut records) = self.0.lock() {
            records.push((record.target().to_owned(), record.args().to_string()));
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

/// The records so far whose message mentions `what`; clears the list.
fn take(what: &str) -> Vec<(String, String)> {
    let mut records = CAPTURE.0.lock().expect("capture lock");
    std::mem::take(&mut *records)
        .into_iter()
        .filter(|(_, m)| m.contains(what))
        .collect()
}

/// Runs task `n` to its end.
async fn run(poller: &Poller<u32>, n: u32) {
    let receipt = poller.submit_tracked(n).await.expect("submit");
    let end = tokio::time::timeout(Duration::from_secs(10), receipt.outcome())
        .await
        .expect("the task ends within 10 s");
    assert_eq!(end, Ok(FinalState::Completed));
}

#[actix_rt::test]
async fn attempt_spans_reach_a_log_logger_only_when_it_listens() {
    log::set_logger(&CAPTURE).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Info);
    // Whether this build's `tracing` forwards to `log` at all: an event of ours tells.
    tracing::info!(probe = 1, "log bridge probe");
    let forwards = !take("log bridge probe").is_empty();

    let poller = Poller::<u32>::builder()
        .workers(2)
        .executors(1)
        .start(|_n: u32, _cx| async { Ok::<(), Infallible>(()) })
        .expect("start");

    // A logger at INFO: each attempt's span reaches it, with the task's id (when forwarded).
    run(&poller, 7).await;
    let spans = take("actix_poller.attempt");
    if forwards {
        assert!(
            spans.iter().any(|(_, m)| m.contains("task.id=")),
            "a logger at INFO gets the attempt span's fields; got {spans:?}"
        );
    } else {
        assert!(
            spans.is_empty(),
            "tracing without its `log` feature: {spans:?}"
        );
    }

    // Below INFO: nothing about the attempt reaches the logger.
    log::set_max_level(log::LevelFilter::Warn);
    run(&poller, 8).await;
    assert_eq!(take("actix_poller.attempt"), vec![]);

    assert!(
        !tracing::dispatcher::has_been_set(),
        "nothing here may set a tracing subscriber"
    );
    poller
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
}
