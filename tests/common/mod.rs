//! Test probes: they cost nothing in production because they live only here.
#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use actix_poller::source::{EnqueueResult, FetchLimits, Fetched, NewTask, Source};
use actix_poller::{Ack, MemorySource, Task};
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

/// Counts tasks running right now and the most ever seen running at once.
#[derive(Debug, Default)]
pub struct Probe {
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
}

impl Probe {
    pub fn enter(&self) {
        self.started.fetch_add(1, SeqCst);
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.max_running.fetch_max(now, SeqCst);
    }

    pub fn exit(&self) {
        self.running.fetch_sub(1, SeqCst);
        self.finished.fetch_add(1, SeqCst);
    }

    pub fn max(&self) -> usize {
        self.max_running.load(SeqCst)
    }
}

/// A gate handlers wait on until the test opens it.
#[derive(Debug, Clone)]
pub struct Gate(watch::Receiver<bool>);

#[derive(Debug)]
pub struct GateOpener(watch::Sender<bool>);

pub fn gate() -> (Gate, GateOpener) {
    let (tx, rx) = watch::channel(false);
    (Gate(rx), GateOpener(tx))
}

impl Gate {
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl GateOpener {
    pub fn open(&self) {
        let _ = self.0.send(true);
    }
}

/// Starts `builder` with a handler that waits on `gate` and succeeds: every task it starts
/// holds its slot until the gate opens (or the shutdown deadline drops it).
pub fn start_gated(
    builder: actix_poller::PollerBuilder<u32>,
    gate: Gate,
) -> actix_poller::Poller<u32> {
    builder
        .start(move |_n: u32, _cx| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok::<_, Infallible>(())
            }
        })
        .expect("a valid configuration inside a System")
}

/// Counts drops: put one in per-executor state or a source to prove it was dropped.
#[derive(Debug)]
pub struct DropProbe(pub Arc<AtomicUsize>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// What a [`ScriptedSource`] saw.
#[derive(Debug, Default)]
pub struct SourceLog {
    /// The `max` of every fetch call, in order.
    pub fetches: Vec<usize>,
    /// How many tasks each fetch returned.
    pub returned: Vec<usize>,
    /// Every recorded ack batch's size.
    pub ack_batches: Vec<usize>,
    /// Ack calls that failed (their acks are not recorded).
    pub failed_acks: usize,
    pub acks: Vec<Ack>,
    /// Ids of the acks whose call has landed (returned `Ok`), in order: what a source holds.
    pub acks_landed: Vec<actix_poller::TaskId>,
    pub closed_with: Option<usize>,
    pub heartbeats: usize,
    /// When each fetch call was made.
    pub fetch_times: Vec<tokio::time::Instant>,
    /// When each `counts` call began and ended.
    pub counts: Vec<(tokio::time::Instant, tokio::time::Instant)>,
}

/// A memory source that records every call and can fail its first `fail_first` fetches
/// (`usize::MAX`: always).
pub struct ScriptedSource<T> {
    pub inner: MemorySource<T>,
    pub log: Rc<RefCell<SourceLog>>,
    pub fail_first: usize,
    pub limits: FetchLimits,
    pub heartbeat_every: Option<std::time::Duration>,
    /// Each fetch answers after this long (so several can be in flight).
    pub fetch_delay: Option<std::time::Duration>,
    /// Each ack call lands after this long.
    pub ack_delay: Option<std::time::Duration>,
    /// The first `fail_acks` ack calls fail (`usize::MAX`: always).
    pub fail_acks: usize,
    /// The first `fail_enqueues` enqueue calls fail with `SubmitError::Source`.
    pub fail_enqueues: usize,
    /// Counts like a durable source: `queued` is unknown, and each `counts` call answers
    /// after this long.
    pub counts_take: Option<std::time::Duration>,
    pub _drop: Option<DropProbe>,
}

impl<T> ScriptedSource<T> {
    pub fn new(capacity: usize) -> (Self, Rc<RefCell<SourceLog>>) {
        let log = Rc::new(RefCell::new(SourceLog::default()));
        (
            ScriptedSource {
                inner: MemorySource::bounded(capacity).expect("capacity > 0"),
                log: log.clone(),
                fail_first: 0,
                limits: FetchLimits::default(),
                heartbeat_every: None,
                fetch_delay: None,
                ack_delay: None,
                fail_acks: 0,
                fail_enqueues: 0,
                counts_take: None,
                _drop: None,
            },
            log,
        )
    }

    /// Enqueue before the poller starts.
    pub fn preload(&mut self, payloads: Vec<T>)
    where
        T: 'static,
    {
        let tasks = payloads.into_iter().map(NewTask::new).collect();
        self.inner
            .enqueue(tasks)
            .now_or_never()
            .expect("memory enqueue is immediate")
            .unwrap_or_else(|_| panic!("preload must fit"));
    }
}

#[derive(Debug)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("source unavailable")
    }
}

impl std::error::Error for Unavailable {}

impl<T: 'static> Source<T> for ScriptedSource<T> {
    type Error = Unavailable;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, Unavailable>> {
        let mut log = self.log.borrow_mut();
        log.fetches.push(max);
        log.fetch_times.push(tokio::time::Instant::now());
        let delay = self.fetch_delay;
        let pause = async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
        };
        if log.fetches.len() <= self.fail_first {
            log.returned.push(0);
            return async move {
                pause.await;
                Err(Unavailable)
            }
            .boxed_local();
        }
        let fetched = self
            .inner
            .fetch(max)
            .now_or_never()
            .expect("memory fetch is immediate");
        let fetched: Fetched<T> = match fetched {
            Ok(f) => f,
            Err(e) => match e {},
        };
        log.returned.push(fetched.tasks.len());
        async move {
            pause.await;
            Ok(fetched)
        }
        .boxed_local()
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Unavailable>> {
        let mut log = self.log.borrow_mut();
        let fail = log.failed_acks < self.fail_acks;
        let ids: Vec<actix_poller::TaskId> = acks.iter().map(|a| a.id).collect();
        if fail {
            log.failed_acks += 1;
        } else {
            log.ack_batches.push(acks.len());
            log.acks.extend(acks);
        }
        let delay = self.ack_delay;
        let landed = self.log.clone();
        async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if fail {
                Err(Unavailable)
            } else {
                landed.borrow_mut().acks_landed.extend(ids);
                Ok(())
            }
        }
        .boxed_local()
    }

    fn limits(&self) -> FetchLimits {
        self.limits
    }

    fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        self.heartbeat_every
    }

    fn heartbeat(&mut self) -> LocalBoxFuture<'static, Result<(), Unavailable>> {
        self.log.borrow_mut().heartbeats += 1;
        async { Ok(()) }.boxed_local()
    }

    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        if self.fail_enqueues > 0 {
            self.fail_enqueues -= 1;
            let payloads = tasks.into_iter().map(|t| t.payload).collect();
            return Box::pin(futures::future::ready(Err(
                actix_poller::SubmitError::Source {
                    task: payloads,
                    error: actix_poller::SourceError::new(Unavailable),
                },
            )));
        }
        self.inner.enqueue(tasks)
    }

    fn queued(&self) -> Option<u64> {
        match self.counts_take {
            Some(_) => None,
            None => Some(self.inner.len() as u64),
        }
    }

    fn counts(
        &mut self,
    ) -> LocalBoxFuture<'static, Result<Option<actix_poller::QueueCounts>, Unavailable>> {
        let Some(take) = self.counts_take else {
            return async { Ok(None) }.boxed_local();
        };
        let counts = self.inner.counts().now_or_never();
        let log = self.log.clone();
        async move {
            let began = tokio::time::Instant::now();
            tokio::time::sleep(take).await;
            log.borrow_mut()
                .counts
                .push((began, tokio::time::Instant::now()));
            match counts {
                Some(Ok(counts)) => Ok(counts),
                Some(Err(e)) => match e {},
                None => Ok(None),
            }
        }
        .boxed_local()
    }

    fn close(
        &mut self,
        unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, Unavailable>> {
        self.log.borrow_mut().closed_with = Some(unstarted.len());
        let back = self.inner.close(unstarted);
        async move { back.await.map_err(|e: Infallible| match e {}) }.boxed_local()
    }
}

/// Asserts every count is exactly 1 (a task per index): names the first ten that are not,
/// with their counts, so a duplicate and a loss cannot cancel out as they would in a total.
#[track_caller]
pub fn assert_each_once(counts: &[u32], what: &str) {
    let wrong: Vec<(usize, u32)> = counts
        .iter()
        .enumerate()
        .filter(|(_, &k)| k != 1)
        .map(|(i, &k)| (i, k))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "(task, {what}) not exactly once: {wrong:?}"
    );
}

/// Proptest cases: `ci` unless the `PROPTEST_CASES` environment variable says otherwise (the
/// long sweeps: `PROPTEST_CASES=5000 cargo test --release --test scheduler -- --ignored`).
pub fn cases(ci: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ci)
}

/// Waits (in virtual or real time) until `cond` holds, polling every millisecond; panics after
/// `limit` so a lost wake-up fails the test instead of hanging it.
pub async fn eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Awaits `fut`, failing the test after 30 s (virtual time under `pause`, where it fires as soon
/// as everything is idle): a lost wake-up fails instead of hanging the suite.
pub async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .expect("timed out waiting: a lost wake-up or a stuck actor")
}

/// [`within`] with a limit of the caller's choosing (for long virtual-time scenarios).
pub async fn within_for<F: std::future::Future>(limit: std::time::Duration, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .expect("timed out waiting: a lost wake-up or a stuck actor")
}
