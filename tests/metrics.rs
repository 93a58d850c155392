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
