//! Throughput and latency of the durable sources. Ignored by default (they measure, on an
//! otherwise idle machine); run them with
//!
//! ```text
//! ACTIX_POLLER_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --release --all-features --test perf_durable -- --ignored --nocapture --test-threads=1
//! ```
#![cfg(any(feature = "sqlite", feature = "postgres"))]

#[cfg(feature = "postgres")]
mod pg;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use actix_poller::source::{NewTask, RetrySupport, Source};
use actix_poller::Poller;

/// Runs `n` preloaded noop tasks through a poller on `source`; returns tasks per second.
async fn drain<S: Source<u64> + RetrySupport<u64>>(source: S, n: u64, workers: usize) -> f64 {
    let poller = Poller::<u64>::builder()
        .source(source)
        .workers(workers)
        .prefetch(workers)
        .start(|_n: u64, _cx| async { Ok::<_, Infallible>(()) })
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    while poller.stats().completed < n {
        assert!(start.elapsed() < Duration::from_secs(300), "stuck");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    poller
        .shutdown(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rate
}

/// The `p` quantile of sorted latencies (only the PostgreSQL latency test has any).
#[cfg(feature = "postgres")]
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[cfg(feature = "sqlite")]
#[ignore = "a measurement: run with --ignored --release"]
#[actix_rt::test]
async fn sqlite_throughput() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    let path = std::env::temp_dir().join(format!("ap-perf-{:x}.db", fastrand::u64(..)));
    let config = || {
        SqliteConfig::new(&path)
            .completed_retention(None)
            .batch(1_000)
    };
    const N: u64 = 100_000;
    for round in 1..=3 {
        let source = SqliteSource::<u64>::connect(config())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let queue = source.queue();
        let t = Instant::now();
        for chunk in (0..N).collect::<Vec<_>>().chunks(5_000) {
            queue
                .enqueue(chunk.iter().copied().map(NewTask::new).collect())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let enqueue_rate = N as f64 / t.elapsed().as_secs_f64();
        let rate = drain(source, N, 1_000).await;
        println!(
            "sqlite round {round} (table holds {} rows before): enqueue {enqueue_rate:.0}/s, \
             fetch+run+ack {rate:.0} tasks/s",
            (round - 1) * N
        );
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(feature = "postgres")]
#[ignore = "a measurement: run with --ignored --release"]
#[actix_rt::test]
async fn postgres_throughput() {
    use actix_poller::source::postgres::PgSource;
    let schema = pg::fresh_schema();
    const N: u64 = 100_000;
    for round in 1..=3 {
        let source = PgSource::<u64>::connect(
            pg::config(&schema)
                .completed_retention(None)
                .batch(2_000)
                .max_connections(8),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let queue = source.queue();
        let t = Instant::now();
        for chunk in (0..N).collect::<Vec<_>>().chunks(5_000) {
            queue
                .enqueue(chunk.iter().copied().map(NewTask::new).collect())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let enqueue_rate = N as f64 / t.elapsed().as_secs_f64();
        let rate = drain(source, N, 2_000).await;
        println!(
            "postgres round {round} (table holds {} rows before): enqueue {enqueue_rate:.0}/s, \
             fetch+run+ack {rate:.0} tasks/s",
            (round - 1) * N
        );
    }
    pg::drop_schema(&schema).await;
}

/// Submit→start latency at 200 submits/s, each submit a separate insert by another connection
/// (as another process would), the poller woken by LISTEN/NOTIFY.
#[cfg(feature = "postgres")]
#[ignore = "a measurement: run with --ignored --release"]
#[actix_rt::test]
async fn postgres_latency() {
    use actix_poller::source::postgres::PgSource;
    use std::sync::{Arc, Mutex};
    let schema = pg::fresh_schema();
    let source =
        PgSource::<u64>::connect(pg::config(&schema).poll_interval(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let other = PgSource::<u64>::connect(pg::config(&schema))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .queue();
    let epoch = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let poller = Poller::<u64>::builder()
        .source(source)
        .workers(16)
        .start(move |sent_us: u64, _cx| {
            let started = epoch.elapsed();
            s.lock().map(|mut v| v.push((sent_us, started))).ok();
            async { Ok::<_, Infallible>(()) }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    const N: usize = 2_000;
    let mut tick = tokio::time::interval(Duration::from_millis(5)); // 200/s
    let mut inserts = Vec::with_capacity(N);
    let mut committed = std::collections::HashMap::new();
    for _ in 0..N {
        tick.tick().await;
        let sent = epoch.elapsed().as_micros() as u64;
        other
            .enqueue(vec![NewTask::new(sent)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        committed.insert(sent, epoch.elapsed());
        inserts.push(epoch.elapsed() - Duration::from_micros(sent));
    }
    inserts.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().map(|v| v.len()).unwrap_or(0) < N {
        assert!(Instant::now() < deadline, "every task started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let starts = seen.lock().map(|v| v.clone()).unwrap_or_default();
    let mut lat: Vec<Duration> = starts
        .iter()
        .map(|(sent, at)| *at - Duration::from_micros(*sent))
        .collect();
    lat.sort();
    let mut after_commit: Vec<Duration> = starts
        .iter()
        .map(|(sent, at)| at.saturating_sub(committed[sent]))
        .collect();
    after_commit.sort();
    println!(
        "postgres submit→start at 200/s over {N} submits: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    println!(
        "  of which the submitter's own insert + commit: p50 {:?}, p99 {:?}",
        percentile(&inserts, 0.5),
        percentile(&inserts, 0.99)
    );
    println!(
        "  commit→start (the poller's part: NOTIFY, LISTEN, fetch, dispatch): p50 {:?}, p99 {:?}",
        percentile(&after_commit, 0.5),
        percentile(&after_commit, 0.99)
    );
    poller
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pg::drop_schema(&schema).await;
}

/// The source alone (no poller): fetch a batch, ack it completed, again; the cost of the two
/// statements per batch.
#[cfg(feature = "postgres")]
#[ignore = "a measurement: run with --ignored --release"]
#[actix_rt::test]
async fn postgres_source_only() {
    use actix_poller::source::postgres::PgSource;
    use actix_poller::{Ack, Disposition};
    let schema = pg::fresh_schema();
    let mut source = PgSource::<u64>::connect(pg::config(&schema).completed_retention(None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    const N: u64 = 100_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(5_000) {
        source
            .queue()
            .enqueue(chunk.iter().copied().map(NewTask::new).collect())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for batch in [500, 1_000, 2_000] {
        let (mut fetch_t, mut ack_t, mut done) = (Duration::ZERO, Duration::ZERO, 0);
        while done < 30_000 {
            let t = Instant::now();
            let got = source
                .fetch(batch)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .tasks;
            fetch_t += t.elapsed();
            if got.is_empty() {
                break;
            }
            done += got.len();
            let acks = got
                .iter()
                .map(|t| Ack {
                    id: t.id,
                    attempt: t.attempt,
                    disposition: Disposition::Completed,
                })
                .collect();
            let t = Instant::now();
            source.ack(acks).await.unwrap_or_else(|e| panic!("{e}"));
            ack_t += t.elapsed();
        }
        println!(
            "postgres source only, batch {batch}: {:.0} tasks/s (fetch {:.1} µs/task, ack {:.1} µs/task)",
            done as f64 / (fetch_t + ack_t).as_secs_f64(),
            fetch_t.as_micros() as f64 / done as f64,
            ack_t.as_micros() as f64 / done as f64
        );
    }
    pg::drop_schema(&schema).await;
}
