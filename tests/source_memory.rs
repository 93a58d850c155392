//! The in-memory source runs the conformance suite (`tests/conformance/mod.rs`).

#[macro_use]
mod conformance;

use std::time::Duration;

use actix_poller::MemorySource;
use conformance::{Harness, Job};
use futures::future::LocalBoxFuture;

/// Each source is its own store: nothing is shared, nothing outlives the process.
struct Memory;

impl Harness for Memory {
    type Source = MemorySource<Job>;
    type Store = ();

    fn store(&self) -> LocalBoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn source(&self, _store: &(), _lease: Duration) -> LocalBoxFuture<'static, MemorySource<Job>> {
        Box::pin(async { MemorySource::default().with_retries() })
    }

    fn durable(&self) -> bool {
        false
    }
}

conformance_tests!(Memory);
