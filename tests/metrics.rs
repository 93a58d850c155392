//! The `metrics` feature (issue 13): exact values read through `metrics-util`'s
//! `DebuggingRecorder`. Each test sets its own recorder around `start` only
//! (`metrics::with_local_recorder`): the poller registers its handles there, so what its actors
//! record on their own arbiter threads lands in that recorder, and no two tests share one.
#![cfg(feature = "metrics")]

use std::time::Duration;

use actix_poller::{FinalState, Poller, TaskContext};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Bounds every wait, so a broken promise fails the test instead of hanging it.
async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

/// One series of a snapshot: its name, its labels (sorted) and its value.
type Series = (String, Vec<(String, String)>, DebugValue);

/// Every series of one snapshot.
struct Metrics(Vec<Series>);

impl Metrics {
    fn take(snapshotter: &Snapshotter) -> Metrics {
        Metrics(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _unit, _desc, value)| {
                    let (_kind, key) = key.into_parts();
                    let mut labels: Vec<(String, String)> = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    (key.name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    /// The one series called `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> &DebugValue {
        let found: Vec<&DebugValue> = self
            .0
            .iter()
            .filter(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .collect();
        match found.as_slice() {
            [one] => one,
            other => panic!("{name} {labels:?}: {} series", other.len()),
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            DebugValue::Counter(n) => *n,
            other => panic!("{name}: not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            DebugValue::Gauge(g) => g.into_inner(),
            other => panic!("{name}: not a gauge: {other:?}"),
        }
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.get(name, labels) {
            DebugValue::Histogram(h) => h.len(),
            other => panic!("{name}: not a histogram: {other:?}"),
        }
    }

    /// Every series of `name`, summed over its labels, for the poller `poller`.
    fn samples_all(&self, name: &str, poller: &str) -> usize {
        self.0
            .iter()
            .filter(|(n, ls, _)| n == name && ls.iter().any(|(k, v)| k == "poller" && v == poller))
            .map(|(_, _, v)| match v {
                DebugValue::Histogram(h) => h.len(),
                other => panic!("{name}: not a histogram: {other:?}"),
            })
            .sum()
    }
}

/// Tasks queued behind a handler that blocks its executor's thread are taken back and run at
/// the other executor: `actix_poller.tasks.stolen` counts each, as `Stats::stolen` does.
#[actix_rt::test]
async fn tasks_taken_back_from_a_blocked_executor_are_counted() {
    const N: u32 = 20;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = std::sync::Arc::new(std::sync::Mutex::new(blocked));
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .name("stealing")
            .workers(2)
            .executors(2)
            .start(move |n: u32, _cx: TaskContext| {
                if n == 0 {
                    // Blocks this executor's thread until the test releases it.
                    let _ = blocked.lock().map(|rx| rx.recv());
                }
                async { Ok::<_, std::io::Error>(()) }
            })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut receipts = bounded("submit", poller.submit_batch_tracked((0..=N).collect()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stuck = receipts.remove(0);
    for r in receipts {
        assert_eq!(
            bounded("outcome", r.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
    let _ = release.send(());
    assert_eq!(
        bounded("outcome", stuck.outcome()).await,
        Ok(FinalState::Completed)
    );
    let stats = poller.stats();
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stats.stolen >= 1,
        "nothing was queued behind the blocked task: {stats:?}"
    );
    let m = Metrics::take(&snapshotter);
    let p = ("poller", "stealing");
    assert_eq!(m.counter("actix_poller.tasks.stolen", &[p]), stats.stolen);
}

#[actix_rt::test]
async fn ninety_ok_and_ten_failing_give_exact_counts_and_a_hundred_run_times() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Executors on their own arbiter threads (the default): the handles were registered here.
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .name("hundred")
            .workers(4)
            .executors(2)
            .start(|n: u32, _cx: TaskContext| async move {
                if n % 10 == 0 {
                    Err(std::io::Error::other("every tenth fails"))
                } else {
                    Ok(())
                }
            })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let receipts = bounded("submit", poller.submit_batch_tracked((0..100).collect()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ends = (0, 0);
    for r in receipts {
        match bounded("outcome", r.outcome()).await {
            Ok(FinalState::Completed) => ends.0 += 1,
            Ok(FinalState::Dead { .. }) => ends.1 += 1,
            other => panic!("unexpected end: {other:?}"),
        }
    }
    assert_eq!(ends, (90, 10));
    let stats = poller.stats();
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let m = Metrics::take(&snapshotter);
    let p = ("poller", "hundred");
    assert_eq!(m.counter("messaging.client.sent.messages", &[p]), 100);
    assert_eq!(m.counter("messaging.client.consumed.messages", &[p]), 100);
    let attempts = "actix_poller.attempts";
    assert_eq!(m.counter(attempts, &[p, ("outcome", "completed")]), 90);
    assert_eq!(m.counter(attempts, &[p, ("outcome", "failed")]), 10);
    for other in [
        "panicked",
        "timed_out",
        "aborted",
        "cancelled",
        "snoozed",
        "backpressured",
    ] {
        assert_eq!(m.counter(attempts, &[p, ("outcome", other)]), 0, "{other}");
    }
    assert_eq!(m.counter("actix_poller.tasks.dead", &[p]), 10);
    assert_eq!(m.counter("actix_poller.tasks.retried", &[p]), 0);
    assert_eq!(m.counter("actix_poller.tasks.cancelled", &[p]), 0);
    // The same numbers as `Stats`.
    assert_eq!((stats.completed, stats.failed, stats.dead), (90, 10, 10));
    // One run time per attempt, split by outcome; one queue wait per first attempt.
    assert_eq!(m.samples_all("messaging.process.duration", "hundred"), 100);
    assert_eq!(
        m.samples("messaging.process.duration", &[p, ("outcome", "completed")]),
        90
    );
    assert_eq!(m.samples("actix_poller.queue.wait.duration", &[p]), 100);
    // Every fetch that succeeded recorded its batch size and latency; the sizes add to 100.
    let batch: f64 = match m.get("messaging.batch.message_count", &[p]) {
        DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).sum(),
        other => panic!("{other:?}"),
    };
    assert_eq!(batch, 100.0);
    assert_eq!(
        m.samples(
            "messaging.client.operation.duration",
            &[p, ("messaging.operation.name", "receive")]
        ) as u64,
        stats.fetch_calls - stats.fetch_errors
    );
    assert!(
        m.samples(
            "messaging.client.operation.duration",
            &[p, ("messaging.operation.name", "settle")]
        ) > 0
    );
    assert_eq!(m.gauge("actix_poller.workers.limit", &[p]), 4.0);
    // Set on every report: the last one left nothing running.
    assert_eq!(m.gauge("actix_poller.workers.busy", &[p]), 0.0);
}

#[actix_rt::test]
async fn pollers_are_told_apart_by_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let start = |name: &'static str| {
        metrics::with_local_recorder(&recorder, || {
            Poller::<u32>::builder()
                .name(name)
                .workers(1)
                .on_current_arbiter()
                .start(|_n: u32, _cx: TaskContext| async { Ok::<_, std::io::Error>(()) })
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b) = (start("a"), start("b"));
    for (poller, n) in [(&a, 3u32), (&b, 5)] {
        let receipts = bounded("submit", poller.submit_batch_tracked((0..n).collect()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for r in receipts {
            assert_eq!(
                bounded("outcome", r.outcome()).await.ok(),
                Some(FinalState::Completed)
            );
        }
    }
    for p in [&a, &b] {
        bounded("shutdown", p.shutdown(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let m = Metrics::take(&snapshotter);
    let completed = |name| {
        m.counter(
            "actix_poller.attempts",
            &[("poller", name), ("outcome", "completed")],
        )
    };
    assert_eq!((completed("a"), completed("b")), (3, 5));
}

/// The queued gauges are the source's counts: what `Poller::counts` answers and what a
/// `COUNT(*)` on the table finds; `Stats::queued` follows them (it was `None` for durable
/// sources before).
#[cfg(feature = "sqlite")]
#[actix_rt::test]
async fn sqlite_queued_gauges_equal_counts_and_the_table() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    use actix_poller::{Submit, TaskOptions};
    use sqlx::Connection;

    let path = std::env::temp_dir().join(format!(
        "actix-poller-metrics-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    let table = "metrics_gauges";
    let source =
        SqliteSource::<u32>::connect(SqliteConfig::new(&path).table(table).default_attempts(1))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .source(source)
            .name("sqlite")
            .workers(2)
            .on_current_arbiter()
            .start(|n: u32, _cx: TaskContext| async move {
                if n >= 100 {
                    Err(std::io::Error::other("fails"))
                } else {
                    Ok(())
                }
            })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // 7 scheduled for later, 3 that go dead, 2 that complete.
    for n in 0..7 {
        let later = Submit::new(n).options(TaskOptions::new().delay(Duration::from_secs(3600)));
        bounded("submit", poller.submit_with(later))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let receipts = bounded(
        "submit",
        poller.submit_batch_tracked(vec![100, 101, 102, 1, 2]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for r in receipts {
        bounded("outcome", r.outcome())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let counts = bounded("counts", poller.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a durable source counts");
    assert_eq!(
        (
            counts.queued,
            counts.scheduled,
            counts.retrying,
            counts.running,
            counts.dead
        ),
        (0, 7, 0, 0, 3)
    );
    assert_eq!(poller.stats().queued, Some(counts.waiting()));

    let m = Metrics::take(&snapshotter);
    let gauge = |state| {
        m.gauge(
            "actix_poller.tasks.queued",
            &[("poller", "sqlite"), ("state", state)],
        )
    };
    let states = [
        ("queued", counts.queued),
        ("scheduled", counts.scheduled),
        ("retrying", counts.retrying),
        ("running", counts.running),
        ("dead", counts.dead),
    ];
    for (state, n) in states {
        assert_eq!(gauge(state), n as f64, "{state}");
    }
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let waiting = count(
        &mut conn,
        format!("SELECT COUNT(*) FROM {table} WHERE state = 'queued'"),
    )
    .await;
    assert_eq!(
        gauge("queued") + gauge("scheduled") + gauge("retrying"),
        waiting
    );
    let dead = count(
        &mut conn,
        format!("SELECT COUNT(*) FROM {table} WHERE state = 'dead'"),
    )
    .await;
    assert_eq!(gauge("dead"), dead);
    drop(conn);
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "sqlite")]
async fn count(conn: &mut sqlx::SqliteConnection, sql: String) -> f64 {
    let (n,): (i64,) = sqlx::query_as(&sql)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    n as f64
}

/// A handler for the queue-age tests: reports each task it starts on `started`, then waits
/// for a permit of `gate` (none until the test adds them).
fn gated(
    started: tokio::sync::mpsc::UnboundedSender<u32>,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
) -> impl Fn(u32, TaskContext) -> futures::future::BoxFuture<'static, Result<(), std::io::Error>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |n, _cx| {
        let (started, gate) = (started.clone(), gate.clone());
        Box::pin(async move {
            let _ = started.send(n);
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| std::io::Error::other("gate closed"))?;
            Ok(())
        })
    }
}

/// The in-memory source: on paused time, the oldest queued task's age is exact. One worker,
/// held by a task that waits on a gate; no prefetch and nothing queued ahead at the executor,
/// so the next two stay in the source.
#[actix_rt::test]
async fn memory_oldest_queued_age_is_exact_on_paused_time() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .name("memory_age")
            .workers(1)
            .prefetch(0)
            .dispatch_ahead(0)
            .on_current_arbiter()
            .start(gated(tx, gate.clone()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let first = bounded("submit", poller.submit_tracked(0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bounded("start", started.recv()).await, Some(0));
    let rest = bounded("submit", poller.submit_batch_tracked(vec![1, 2]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::advance(Duration::from_secs(7)).await;
    let counts = bounded("counts", poller.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the in-memory source counts");
    assert_eq!((counts.queued, counts.running), (2, 1));
    assert_eq!(counts.oldest_queued_age, Some(Duration::from_secs(7)));
    let name = "actix_poller.queue.oldest_age";
    let p = ("poller", "memory_age");
    assert_eq!(Metrics::take(&snapshotter).gauge(name, &[p]), 7.0);

    gate.add_permits(3);
    for r in std::iter::once(first).chain(rest) {
        assert_eq!(
            bounded("outcome", r.outcome()).await.ok(),
            Some(FinalState::Completed)
        );
    }
    let counts = bounded("counts", poller.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the in-memory source counts");
    assert_eq!((counts.queued, counts.oldest_queued_age), (0, None));
    assert_eq!(Metrics::take(&snapshotter).gauge(name, &[p]), 0.0);
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A durable store with known rows, inserted by hand before the poller starts (`run_at`
/// relative to the store's clock): 10 (priority 5, due 10 s ago), 20 (due an hour ago), 30 (due
/// a minute ago), 40 (due in an hour). One worker, no prefetch, nothing queued ahead: it takes 10 (first in fetch
/// order) and holds it, so 20 is the oldest due row: its age is an hour plus the time between
/// the insert (`inserted`, taken just before it) and the count, never less, never more.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn durable_oldest_age_of_known_rows<S>(
    source: S,
    name: &'static str,
    inserted: std::time::Instant,
) where
    S: actix_poller::source::Source<u32>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .source(source)
            .name(name)
            .workers(1)
            .prefetch(0)
            .dispatch_ahead(0)
            .on_current_arbiter()
            .start(gated(tx, gate.clone()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bounded("start", started.recv()).await, Some(10));
    let counts = bounded("counts", poller.counts())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a durable source counts");
    let counted = inserted.elapsed();
    assert_eq!((counts.queued, counts.scheduled, counts.running), (2, 1, 1));
    let hour = Duration::from_secs(3600);
    // One µs of rounding either side (times are stored in whole microseconds).
    let slack = Duration::from_micros(2);
    let age = counts.oldest_queued_age.expect("two rows are due");
    assert!(
        age >= hour && age <= hour + counted + slack,
        "{age:?} is not an hour plus at most {counted:?}"
    );
    let gauge =
        Metrics::take(&snapshotter).gauge("actix_poller.queue.oldest_age", &[("poller", name)]);
    let sampled = inserted.elapsed();
    // Set by that count, or by a periodic sample since (never earlier than the count).
    assert!(
        gauge >= age.as_secs_f64() - 1e-6 && gauge <= (hour + sampled + slack).as_secs_f64(),
        "gauge {gauge} vs age {age:?}"
    );
    gate.add_permits(10);
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[cfg(feature = "sqlite")]
#[actix_rt::test]
async fn sqlite_oldest_queued_age_is_the_oldest_due_row() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    use sqlx::Connection;

    let path = std::env::temp_dir().join(format!(
        "actix-poller-metrics-age-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    let source = SqliteSource::<u32>::connect(
        SqliteConfig::new(&path)
            .table("metrics_age")
            .default_attempts(1),
    )
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let inserted = std::time::Instant::now();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let rows = [(10, 5, -10), (20, 0, -3600), (30, 0, -60), (40, 0, 3600)];
    for (payload, priority, secs) in rows {
        let run_at = now_us + secs * 1_000_000;
        sqlx::query(&format!(
            "INSERT INTO {} (payload, priority, run_at, enqueued_at) VALUES (?, ?, ?, ?)",
            source.table()
        ))
        .bind(payload.to_string())
        .bind(priority)
        .bind(run_at)
        .bind(run_at)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("insert: {e}"));
    }
    drop(conn);
    durable_oldest_age_of_known_rows(source, "sqlite_age", inserted).await;
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "postgres")]
#[path = "pg/mod.rs"]
mod pg;

#[cfg(feature = "postgres")]
#[actix_rt::test]
async fn postgres_oldest_queued_age_is_the_oldest_due_row() {
    use actix_poller::source::postgres::PgSource;

    let schema = pg::fresh_schema();
    let source = PgSource::<u32>::connect(pg::config(&schema).default_attempts(1))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let pool = pg::pool().await;
    let inserted = std::time::Instant::now();
    // One statement, so one `now()` for every row.
    sqlx::query(&format!(
        "INSERT INTO {} (payload, priority, run_at, enqueued_at)
         SELECT r.payload::jsonb, r.priority, now() + r.secs * interval '1 second', now()
         FROM (VALUES ('10', 5, -10), ('20', 0, -3600), ('30', 0, -60), ('40', 0, 3600))
              AS r (payload, priority, secs)",
        source.table()
    ))
    .execute(&pool)
    .await
    .unwrap_or_else(|e| panic!("insert: {e}"));
    pool.close().await;
    durable_oldest_age_of_known_rows(source, "postgres_age", inserted).await;
    pg::drop_schema(&schema).await;
}

/// The queue wait starts when a task becomes due, not when it was submitted: a task delayed by
/// a second waits at most what passed between its due time and its end, not the delay.
#[actix_rt::test]
async fn queue_wait_of_a_delayed_task_counts_from_its_due_time() {
    use actix_poller::{Submit, TaskOptions};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .name("delayed_wait")
            .workers(1)
            .on_current_arbiter()
            .start(|_n: u32, _cx: TaskContext| async { Ok::<_, std::io::Error>(()) })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let delay = Duration::from_secs(1);
    let before = std::time::Instant::now();
    let receipt = bounded(
        "submit",
        poller.submit_with(
            Submit::new(1)
                .options(TaskOptions::new().delay(delay))
                .tracked(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bounded("outcome", receipt.outcome()).await.ok(),
        Some(FinalState::Completed)
    );
    let after_due = before.elapsed().saturating_sub(delay);
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Metrics::take(&snapshotter);
    let waits: Vec<f64> = match m.get(
        "actix_poller.queue.wait.duration",
        &[("poller", "delayed_wait")],
    ) {
        DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(waits.len(), 1);
    // The task was due at `before + delay` at the earliest and started before its end was seen.
    assert!(
        waits[0] <= (after_due + Duration::from_millis(1)).as_secs_f64(),
        "waited {} s; {after_due:?} passed after it was due",
        waits[0]
    );
}

/// Retries and cancellations, counted per executor report: 10 tasks that fail once then
/// succeed give 10 retries, 10 failed and 10 completed attempts, 20 starts, and 10 queue waits
/// (first attempts only); a waiting task cancelled counts once as cancelled.
#[actix_rt::test]
async fn retries_and_cancellations_are_counted_exactly() {
    use actix_poller::RetryPolicy;
    use std::sync::{Arc, Mutex};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let poller = metrics::with_local_recorder(&recorder, || {
        Poller::<u32>::builder()
            .name("retries")
            .workers(2)
            .on_current_arbiter()
            .retry(RetryPolicy::attempts(2).fixed(Duration::from_millis(1)))
            .start(move |n: u32, _cx: TaskContext| {
                let first = seen.lock().map(|mut s| s.insert(n)).unwrap_or(false);
                async move {
                    if first {
                        Err(std::io::Error::other("first attempt fails"))
                    } else {
                        Ok(())
                    }
                }
            })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let receipts = bounded("submit", poller.submit_batch_tracked((0..10).collect()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for r in receipts {
        assert_eq!(
            bounded("outcome", r.outcome()).await.ok(),
            Some(FinalState::Completed)
        );
    }
    let later = actix_poller::Submit::new(99)
        .options(actix_poller::TaskOptions::new().delay(Duration::from_secs(3600)))
        .tracked();
    let receipt = bounded("submit", poller.submit_with(later))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cancelled = bounded("cancel", poller.cancel(receipt.id()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cancelled, actix_poller::CancelOutcome::Dequeued);
    bounded("shutdown", poller.shutdown(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Metrics::take(&snapshotter);
    let p = ("poller", "retries");
    assert_eq!(m.counter("messaging.client.sent.messages", &[p]), 11);
    assert_eq!(m.counter("messaging.client.consumed.messages", &[p]), 20);
    let attempts = "actix_poller.attempts";
    assert_eq!(m.counter(attempts, &[p, ("outcome", "failed")]), 10);
    assert_eq!(m.counter(attempts, &[p, ("outcome", "completed")]), 10);
    assert_eq!(m.counter("actix_poller.tasks.retried", &[p]), 10);
    assert_eq!(m.counter("actix_poller.tasks.dead", &[p]), 0);
    assert_eq!(m.counter("actix_poller.tasks.cancelled", &[p]), 1);
    assert_eq!(m.samples("actix_poller.queue.wait.duration", &[p]), 10);
    assert_eq!(m.samples_all("messaging.process.duration", "retries"), 20);
}
