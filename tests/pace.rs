//! Pace control toward the downstream: per-key concurrency, rate limits, pauses, backpressure.
//! Everything runs in virtual time; a probe counts what runs per key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_poller::{
    Backpressure, BoxError, FinalState, Key, Poller, Receipt, RetryPolicy, StartError, Submit,
    TaskContext, TaskOptions,
};
use tokio::time::Instant;

const KEYS: [&str; 3] = ["a", "b", "c"];

/// What the handlers saw: each start (key, when, attempt), and per key what ran at once.
#[derive(Debug, Default)]
struct Log {
    starts: Vec<(usize, Instant, u32)>,
    running: HashMap<usize, usize>,
    max_running: HashMap<usize, usize>,
    finished: HashMap<usize, usize>,
    /// A task answered backpressure already.
    pushed: bool,
}

type Shared = Arc<Mutex<Log>>;

impl Log {
    fn enter(log: &Shared, key: usize, attempt: u32) {
        let mut l = log.lock().unwrap();
        l.starts.push((key, Instant::now(), attempt));
        let n = l.running.entry(key).or_insert(0);
        *n += 1;
        let n = *n;
        let m = l.max_running.entry(key).or_insert(0);
        *m = (*m).max(n);
    }

    fn exit(log: &Shared, key: usize) {
        let mut l = log.lock().unwrap();
        *l.running.entry(key).or_insert(1) -= 1;
        *l.finished.entry(key).or_insert(0) += 1;
    }

    fn started(log: &Shared, key: usize) -> usize {
        log.lock()
            .unwrap()
            .starts
            .iter()
            .filter(|s| s.0 == key)
            .count()
    }

    fn starts_of(log: &Shared, key: Option<usize>) -> Vec<Instant> {
        log.lock()
            .unwrap()
            .starts
            .iter()
            .filter(|s| key.map_or(true, |k| s.0 == k))
            .map(|s| s.1)
            .collect()
    }
}

/// A payload: (key index, milliseconds to run, what to answer on the first attempt).
type Job = (usize, u64, Answer);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    /// Backpressure on the first call, then `Ok`.
    PauseKeyOnce(Duration),
}

fn handler(
    log: Shared,
) -> impl Fn(Job, TaskContext) -> futures::future::BoxFuture<'static, Result<(), BoxError>>
       + Clone
       + Send
       + Sync {
    move |(key, ms, answer): Job, cx: TaskContext| {
        let log = log.clone();
        let attempt = cx.attempt();
        Box::pin(async move {
            Log::enter(&log, key, attempt);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Log::exit(&log, key);
            let Answer::PauseKeyOnce(d) = answer else {
                return Ok(());
            };
            let pushed = std::mem::replace(&mut log.lock().unwrap().pushed, true);
            if pushed {
                Ok(())
            } else {
                Err(Backpressure::pause_key_for(d).into())
            }
        })
    }
}

async fn submit(poller: &Poller<Job>, job: Job) -> Receipt {
    poller
        .submit_with(
            Submit::new(job)
                .options(TaskOptions::new().key(KEYS[job.0]))
                .tracked(),
        )
        .await
        .expect("room in the queue")
}

async fn all_complete(receipts: Vec<Receipt>) {
    for r in receipts {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(24 * 3600), r.outcome())
                .await
                .expect("outcome within a virtual day"),
            Ok(FinalState::Completed)
        );
    }
}

/// At most `k` tasks of a key run at once; another key's tasks pass the ones waiting for it.
#[actix_rt::test]
async fn per_key_cap_holds_and_other_keys_pass() {
    tokio::time::pause();
    let log = Shared::default();
    let poller = Poller::<Job>::builder()
        .workers(8)
        .on_current_arbiter()
        .key_limit(2)
        .key_limit_for("c", 1)
        .start(handler(log.clone()))
        .unwrap();
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(submit(&poller, (0, 1_000, Answer::Ok)).await);
    }
    let mut fast = Vec::new();
    for _ in 0..5 {
        fast.push(submit(&poller, (1, 1, Answer::Ok)).await);
    }
    for _ in 0..4 {
        fast.push(submit(&poller, (2, 1, Answer::Ok)).await);
    }
    all_complete(fast).await;
    {
        let l = log.lock().unwrap();
        assert_eq!(
            l.finished.get(&0).copied().unwrap_or(0),
            0,
            "b and c ran while a's first tasks were still running: not blocked behind a"
        );
    }
    all_complete(slow).await;
    let max = log.lock().unwrap().max_running.clone();
    assert_eq!(max[&0], 2, "a's cap");
    assert_eq!(max[&1], 2, "b's cap");
    assert_eq!(max[&2], 1, "c's own cap");
    assert_eq!(poller.stats().completed, 29);
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Counts the starts in every window of `w` beginning at a start.
fn max_in_window(starts: &[Instant], w: Duration) -> usize {
    let mut s = starts.to_vec();
    s.sort();
    (0..s.len())
        .map(|i| s[i..].iter().take_while(|t| **t < s[i] + w).count())
        .max()
        .unwrap_or(0)
}

/// The global rate and a per-key rate are never exceeded in any window, and a rate-limited key
/// does not hold another key back.
#[actix_rt::test]
async fn rates_are_never_exceeded_in_any_window() {
    tokio::time::pause();
    let log = Shared::default();
    let poller = Poller::<Job>::builder()
        .workers(16)
        .on_current_arbiter()
        .rate_limit(20, Duration::from_secs(1), 4)
        .key_rate_limit(5, Duration::from_secs(1), 1)
        .key_rate_limit_for(
            "c",
            actix_poller::RateLimit::new(100, Duration::from_secs(1), 2),
        )
        .start(handler(log.clone()))
        .unwrap();
    let t0 = Instant::now();
    let mut receipts = Vec::new();
    for i in 0..90 {
        receipts.push(submit(&poller, (i % 3, 5, Answer::Ok)).await);
    }
    all_complete(receipts).await;
    let all = Log::starts_of(&log, None);
    assert_eq!(all.len(), 90);
    // GCRA: in a window of k emission intervals at most burst + k starts.
    for k in [1u32, 2, 5, 20] {
        let w = Duration::from_millis(50) * k;
        let seen = max_in_window(&all, w);
        assert!(seen <= 4 + k as usize, "global: {seen} starts in {w:?}");
    }
    for key in [0, 1] {
        let starts = Log::starts_of(&log, Some(key));
        for k in [1u32, 3, 10] {
            let w = Duration::from_millis(200) * k;
            let seen = max_in_window(&starts, w);
            assert!(seen <= 1 + k as usize, "key {key}: {seen} starts in {w:?}");
        }
    }
    // c's own, faster rate: it started its first tasks at once, not behind a and b's.
    let c = Log::starts_of(&log, Some(2));
    assert_eq!(c.len(), 30);
    assert!(
        c[0] - t0 < Duration::from_millis(200),
        "c was not held back"
    );
    let last_c = *c.iter().max().unwrap();
    let last_a = *Log::starts_of(&log, Some(0)).iter().max().unwrap();
    assert!(
        last_c < last_a,
        "c (100/s) finished starting before a (5/s)"
    );
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A paused key starts nothing, for as long as it is paused, while other keys run; resumed, it
/// runs. A paused poller starts nothing; running tasks finish.
#[actix_rt::test]
async fn paused_key_starts_nothing_and_blocks_no_one() {
    tokio::time::pause();
    let log = Shared::default();
    let poller = Poller::<Job>::builder()
        .workers(4)
        .on_current_arbiter()
        .start(handler(log.clone()))
        .unwrap();
    poller.pause_key("a");
    let mut paused = Vec::new();
    for _ in 0..6 {
        paused.push(submit(&poller, (0, 1, Answer::Ok)).await);
    }
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(submit(&poller, (1, 1, Answer::Ok)).await);
    }
    all_complete(others).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(Log::started(&log, 0), 0, "a paused key started a task");
    poller.resume_key(Key::new("a"));
    all_complete(paused).await;

    // The whole poller: a running task finishes, nothing new starts until resumed.
    let running = submit(&poller, (2, 10_000, Answer::Ok)).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(Log::started(&log, 2), 1);
    poller.pause();
    let waiting = submit(&poller, (1, 1, Answer::Ok)).await;
    all_complete(vec![running]).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(Log::started(&log, 1), 6, "the paused poller started a task");
    poller.resume();
    all_complete(vec![waiting]).await;
    // A pause far in the future does not panic, and a resume ends it.
    poller.pause_key_for("c", Duration::MAX);
    poller.pause_for(Duration::MAX);
    poller.resume();
    poller.resume_key("c");
    all_complete(vec![submit(&poller, (2, 1, Answer::Ok)).await]).await;
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A handler's `Backpressure::pause_key_for(d)` pauses that key for `d` while other keys run,
/// and the task runs again after it on the same attempt (one attempt allowed, still completed).
#[actix_rt::test]
async fn backpressure_pauses_the_key_and_keeps_the_attempt() {
    tokio::time::pause();
    let log = Shared::default();
    let poller = Poller::<Job>::builder()
        .workers(4)
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(1))
        .start(handler(log.clone()))
        .unwrap();
    let t0 = Instant::now();
    let pushed = submit(
        &poller,
        (0, 1, Answer::PauseKeyOnce(Duration::from_secs(30))),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut same_key = Vec::new();
    for _ in 0..3 {
        same_key.push(submit(&poller, (0, 1, Answer::Ok)).await);
    }
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(submit(&poller, (1, 1, Answer::Ok)).await);
    }
    all_complete(others).await;
    assert!(
        Instant::now() - t0 < Duration::from_secs(1),
        "b ran at once"
    );
    all_complete(vec![pushed]).await;
    all_complete(same_key).await;
    let a = log.lock().unwrap().starts.clone();
    let a: Vec<_> = a.into_iter().filter(|s| s.0 == 0).collect();
    assert_eq!(a.len(), 5, "{a:?}");
    assert!(
        a[1..].iter().all(|s| s.1 - t0 >= Duration::from_secs(30)),
        "a started during its pause: {a:?}"
    );
    assert!(
        a.iter().all(|s| s.2 == 1),
        "the backpressured attempt was not counted: {a:?}"
    );
    let s = poller.stats();
    assert_eq!((s.snoozed, s.dead, s.failed), (1, 0, 0));
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Bad limits are refused at start with a clear error.
#[actix_rt::test]
async fn zero_limits_are_refused() {
    let refused = |b: actix_poller::PollerBuilder<Job>| {
        b.on_current_arbiter()
            .start(|_j: Job, _cx| async { Ok::<(), BoxError>(()) })
            .err()
    };
    assert_eq!(
        refused(Poller::<Job>::builder().key_limit(0)),
        Some(StartError::ZeroKeyLimit)
    );
    assert_eq!(
        refused(Poller::<Job>::builder().key_limit_for("a", 0)),
        Some(StartError::ZeroKeyLimit)
    );
    assert_eq!(
        refused(Poller::<Job>::builder().rate_limit(0, Duration::from_secs(1), 1)),
        Some(StartError::ZeroRate)
    );
    assert!(refused(Poller::<Job>::builder().key_rate_limit(1, Duration::MAX, u32::MAX)).is_none());
}

/// A simulated downstream of capacity `c`: 10 ms per call up to `c` in flight, slower past it,
/// "overloaded" (backpressure, no pause) past `2c`.
fn downstream(
    c: usize,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_seen: Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(u32, TaskContext) -> futures::future::BoxFuture<'static, Result<(), BoxError>>
       + Clone
       + Send
       + Sync {
    use std::sync::atomic::Ordering::SeqCst;
    move |_x: u32, _cx| {
        let (in_flight, max_seen) = (in_flight.clone(), max_seen.clone());
        Box::pin(async move {
            let n = in_flight.fetch_add(1, SeqCst) + 1;
            max_seen.fetch_max(n, SeqCst);
            let us = if n <= c {
                10_000
            } else {
                10_000 * n as u64 / c as u64
            };
            tokio::time::sleep(Duration::from_micros(us)).await;
            in_flight.fetch_sub(1, SeqCst);
            if n > 2 * c {
                Err(Backpressure::pause_for(Duration::ZERO).into())
            } else {
                Ok(())
            }
        })
    }
}

/// An adaptive limit moves from `min` toward the downstream's capacity, never past `max`, and
/// what runs never exceeds it; `Stats::limit` shows it.
#[actix_rt::test]
async fn adaptive_limit_finds_the_capacity_within_its_bounds() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    tokio::time::pause();
    for (name, c) in [("gradient", 16usize), ("aimd", 16)] {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let builder = Poller::<u32>::builder()
            .workers(64)
            .on_current_arbiter()
            .retry(RetryPolicy::attempts(1));
        let builder = if name == "gradient" {
            builder.adaptive(actix_poller::Gradient::new(2, 48))
        } else {
            // AIMD learns from overload (and a latency threshold) only: without a threshold it
            // would settle near the overload point, 2c.
            builder.adaptive(
                actix_poller::Aimd::new(2, 48).latency_threshold(Duration::from_millis(15)),
            )
        };
        let poller = builder
            .start(downstream(c, in_flight.clone(), max_seen.clone()))
            .unwrap();
        assert_eq!(poller.stats().limit, 2, "{name} starts at min");
        let receipts = poller
            .submit_batch_tracked((0..3000).collect())
            .await
            .unwrap();
        // The limit, every 10 ms of virtual time, until every task ended.
        let mut limits = Vec::new();
        while poller.stats().completed < 3000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            limits.push(poller.stats().limit as usize);
        }
        for r in receipts {
            assert_eq!(r.outcome().await, Ok(FinalState::Completed));
        }
        assert!(
            limits.iter().all(|l| (2..=48).contains(l)),
            "{name}: {limits:?}"
        );
        assert!(max_seen.load(SeqCst) <= 48, "{name} ran past its max");
        let tail = &limits[limits.len() / 2..];
        let mean = tail.iter().sum::<usize>() / tail.len();
        // Gradient: near where latency reaches 1.1 × the unloaded one; AIMD with a 1.5 ×
        // threshold: near 1.5 c. Both well under the overload point, 2 c.
        let (lo, hi) = if name == "gradient" {
            (c, c * 3 / 2)
        } else {
            (c, c * 7 / 4)
        };
        assert!(
            (lo..=hi).contains(&mean),
            "{name} settled at {mean} for a capacity of {c}"
        );
        poller.shutdown(Duration::from_secs(1)).await.unwrap();
    }
}

/// `Backpressure::pause_key_for(Duration::MAX)` pauses that key to the far future without a
/// panic anywhere (pause deadline, snooze, timer); other keys run; `resume_key` ends the pause.
#[actix_rt::test]
async fn backpressure_for_duration_max_is_far_future() {
    tokio::time::pause();
    let log = Shared::default();
    let poller = Poller::<Job>::builder()
        .workers(2)
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(1))
        .start(handler(log.clone()))
        .unwrap();
    // Its snooze is far in the future too: its receipt is not awaited.
    let _pushed = submit(&poller, (2, 1, Answer::PauseKeyOnce(Duration::MAX))).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let held = submit(&poller, (2, 1, Answer::Ok)).await;
    let other = submit(&poller, (0, 1, Answer::Ok)).await;
    all_complete(vec![other]).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(Log::started(&log, 2), 1, "c started during its pause");
    poller.resume_key("c");
    all_complete(vec![held]).await;
    poller.shutdown(Duration::from_secs(1)).await.unwrap();
}
