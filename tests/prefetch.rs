//! The self-tuning prefetch (issue 14): with the builder's defaults, a slow source is fetched
//! ahead of the free slots; `.prefetch(n)` overrides it. Paused time: the measured fetch latency
//! and throughput are virtual, so the figures are exact whatever the machine's load.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use actix_poller::source::{FetchLimits, Fetched, Source, WakeOn};
use actix_poller::{Ack, Poller, Task, TaskId};
use futures::future::LocalBoxFuture;
use futures::FutureExt;

mod common;
use common::{eventually, within};

/// A source whose every fetch takes `FETCH` (virtual time) and returns up to `max` of its
/// `remaining` tasks; it records the largest `max` it was asked for.
struct Slow {
    remaining: u64,
    next: u64,
    largest_ask: Rc<Cell<usize>>,
}

const FETCH: Duration = Duration::from_millis(10);
const TASK: Duration = Duration::from_millis(5);
const WORKERS: usize = 4;

impl Source<u64> for Slow {
    type Error = Infallible;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<u64>, Infallible>> {
        self.largest_ask.set(self.largest_ask.get().max(max));
        let n = self.remaining.min(max as u64);
        self.remaining -= n;
        let tasks: Vec<_> = (self.next..self.next + n)
            .map(|i| Task::new(TaskId(i), i))
            .collect();
        self.next += n;
        let drained = self.remaining == 0;
        async move {
            tokio::time::sleep(FETCH).await;
            Ok(if drained {
                Fetched::drained(tasks, WakeOn::submit())
            } else {
                Fetched::new(tasks, WakeOn::submit())
            })
        }
        .boxed_local()
    }

    fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Infallible>> {
        async { Ok(()) }.boxed_local()
    }

    fn limits(&self) -> FetchLimits {
        FetchLimits::default()
    }
}

/// Runs 400 tasks of 5 ms through `WORKERS` slots, 10 ms per fetch; returns the largest fetch.
async fn largest_ask(prefetch: Option<usize>) -> usize {
    let largest = Rc::new(Cell::new(0));
    let source = Slow {
        remaining: 400,
        next: 1,
        largest_ask: Rc::clone(&largest),
    };
    // No executor queues: whatever is fetched beyond the free slots is the prefetch.
    let mut b = Poller::<u64>::builder()
        .workers(WORKERS)
        .on_current_arbiter()
        .dispatch_ahead(0);
    if let Some(p) = prefetch {
        b = b.prefetch(p);
    }
    let poller = b
        .source(source)
        .start(|_n: u64, _cx| async {
            tokio::time::sleep(TASK).await;
            Ok::<_, Infallible>(())
        })
        .unwrap();
    eventually(Duration::from_secs(3_600), || {
        poller.stats().completed == 400
    })
    .await;
    within(poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    largest.get()
}

/// With the defaults, the Fetcher learns the fetch takes two tasks' time and asks for more than
/// its free slots (the old default, prefetch 0, never asked for more than `WORKERS`): twice
/// throughput × latency = 2 × 800/s × 10 ms = 16 beyond the free slots once tuned.
#[actix_rt::test]
async fn defaults_fetch_ahead_of_a_slow_source() {
    tokio::time::pause();
    let asked = largest_ask(None).await;
    assert!(asked > WORKERS, "largest fetch {asked}");
    assert!(asked <= WORKERS + 64, "bounded by memory: {asked}");
}

/// `.prefetch(0)` stays an explicit override: never more than the free slots.
#[actix_rt::test]
async fn explicit_prefetch_overrides_the_tuning() {
    tokio::time::pause();
    assert!(largest_ask(Some(0)).await <= WORKERS);
    let asked = largest_ask(Some(2)).await;
    assert!(asked <= WORKERS + 2, "largest fetch {asked}");
}
