//! Queue-wide pace on PostgreSQL (`PgConfig::queue_pace`, issue 15): limits and pauses kept in
//! the database hold across every poller sharing the queue.
//!
//! "Processes" here are pollers in one test process, each with its own source: its own pools
//! (connections), lease owner and `LISTEN` connection; what they share is only the database, as
//! separate processes would (the crate keeps no state between sources). Rates are checked from
//! the start times the claims stored (`leased_at`, the server's clock), per-key caps from the
//! handlers' start/end intervals.
//!
//! Needs a server: set `ACTIX_POLLER_PG_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`).
#![cfg(feature = "postgres")]

mod pg;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_poller::source::postgres::{PgConfig, PgSource, QueuePace};
use actix_poller::source::{NewTask, Source};
use actix_poller::{
    Ack, Disposition, FinalState, Poller, RateLimit, Receipt, SubmitBatch, TaskContext, TaskOptions,
};

type Job = u32;

/// Fails the test instead of hanging it.
async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 60 s"))
}

/// What the handlers saw, per key: (start, end) of each run.
type Runs = Arc<Mutex<HashMap<String, Vec<(Instant, Instant)>>>>;

/// The key of a payload: `n / 1000` names it (0: no key).
fn key_of(n: Job) -> Option<String> {
    (n >= 1000).then(|| format!("k{}", n / 1000))
}

fn config(schema: &str, pace: QueuePace) -> PgConfig {
    pg::config(schema)
        .queue_pace(pace)
        .lease(Duration::from_secs(30))
}

/// A poller on its own source: its own pools, lease owner and `LISTEN` connection.
async fn poller(schema: &str, pace: QueuePace, runs: &Runs) -> Poller<Job> {
    let source = PgSource::<Job>::connect(config(schema, pace))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let runs = runs.clone();
    Poller::<Job>::builder()
        .source(source)
        .workers(8)
        .on_current_arbiter()
        .start(move |n: Job, _cx: TaskContext| {
            let runs = runs.clone();
            async move {
                let start = Instant::now();
                // Long enough that a key's tasks would overlap without its limit.
                tokio::time::sleep(Duration::from_millis(15)).await;
                let key = key_of(n).unwrap_or_default();
                let mut runs = runs.lock().unwrap_or_else(|e| e.into_inner());
                runs.entry(key).or_default().push((start, Instant::now()));
                Ok::<(), String>(())
            }
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn submit(poller: &Poller<Job>, jobs: Vec<Job>) -> Vec<Receipt> {
    let mut receipts = Vec::new();
    for job in jobs {
        let options = key_of(job).map_or_else(TaskOptions::new, |k| TaskOptions::new().key(k));
        let batch = SubmitBatch::new(vec![job]).options(options).tracked();
        receipts.extend(
            bounded("submit", poller.submit_batch_with(batch))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    receipts
}

async fn all_complete(receipts: Vec<Receipt>) {
    for r in receipts {
        assert_eq!(
            bounded("outcome", r.outcome()).await,
            Ok(FinalState::Completed)
        );
    }
}

async fn shutdown(pollers: Vec<Poller<Job>>) {
    for p in pollers {
        bounded("shutdown", p.shutdown(Duration::from_secs(10)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The most runs of one key that overlapped at any instant.
fn most_at_once(runs: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> =
        runs.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant: a run that ended lets the next one start.
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// The start times the claims stored (µs, the server's clock), in order.
async fn stored_starts(db: &sqlx::PgPool, schema: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT (extract(epoch FROM leased_at) * 1000000)::bigint FROM \"{schema}\".actix_poller_tasks \
         ORDER BY leased_at"
    ))
    .fetch_all(db)
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Three pollers, one queue, a queue-wide rate of 40 starts a second (bursts of 4) and at most
/// 2 running per key: in every window of the stored start times, at most `burst + w / t`
/// started; no key ever ran more than 2 at once, over the three pollers.
#[actix_rt::test]
async fn rate_and_key_limits_hold_across_three_pollers() {
    let schema = pg::fresh_schema();
    let (n, per, burst) = (40u32, Duration::from_secs(1), 4u32);
    let pace = QueuePace::new()
        .rate_limit(RateLimit::new(n, per, burst))
        .key_limit(2);
    let runs: Runs = Arc::default();
    let mut pollers = Vec::new();
    for _ in 0..3 {
        pollers.push(poller(&schema, pace, &runs).await);
    }
    // Three keys of 12 tasks and 24 without a key, interleaved, through every poller.
    let jobs: Vec<Job> = (0..60)
        .map(|i| if i % 5 < 3 { (i % 5 + 1) * 1000 + i } else { i })
        .collect();
    let mut receipts = Vec::new();
    for (i, chunk) in jobs.chunks(20).enumerate() {
        receipts.extend(submit(&pollers[i], chunk.to_vec()).await);
    }
    all_complete(receipts).await;
    shutdown(pollers).await;

    let db = pg::pool().await;
    let starts = stored_starts(&db, &schema).await;
    assert_eq!(starts.len(), 60);
    let t = (per / n).as_micros() as i64;
    for i in 0..starts.len() {
        for j in i + 1..starts.len() {
            let count = (j - i + 1) as i64;
            assert!(
                (count - i64::from(burst)) * t <= starts[j] - starts[i],
                "{count} starts within {} µs: more than {burst} + w / {t} µs",
                starts[j] - starts[i]
            );
        }
    }
    let runs = runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for k in 1..=3 {
        let key = format!("k{k}");
        assert_eq!(runs[&key].len(), 12);
        assert!(
            most_at_once(&runs[&key]) <= 2,
            "{key}: more than 2 at once across the pollers"
        );
    }
    db.close().await;
    pg::drop_schema(&schema).await;
}

/// Waits until the pace table shows `key` (None: the queue) paused.
async fn until_stored(db: &sqlx::PgPool, schema: &str, key: Option<&str>) {
    let (kind, name) = key.map_or((0i16, ""), |k| (1, k));
    bounded("the pause is stored", async {
        loop {
            let paused: Option<bool> = sqlx::query_scalar(&format!(
                "SELECT paused_until > now() FROM \"{schema}\".actix_poller_tasks_pace \
                 WHERE kind = $1 AND pace_key = $2"
            ))
            .bind(kind)
            .bind(name)
            .fetch_optional(db)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten();
            if paused == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A key paused from one poller's handle starts nothing in any of three pollers, while the
/// tasks of another key behind it run; the pause survives a restart of every poller; a resume
/// from a new poller ends it.
#[actix_rt::test]
async fn a_stored_key_pause_holds_every_poller_and_survives_a_restart() {
    let schema = pg::fresh_schema();
    let db = pg::pool().await;
    let pace = QueuePace::new();
    let runs: Runs = Arc::default();
    let mut pollers = Vec::new();
    for _ in 0..3 {
        pollers.push(poller(&schema, pace, &runs).await);
    }
    pollers[1].pause_key("k1");
    until_stored(&db, &schema, Some("k1")).await;
    // The paused key's tasks first in fetch order, then another key's, through each poller.
    let paused = submit(&pollers[0], (1000..1005).collect()).await;
    let mut others = Vec::new();
    for p in &pollers {
        others.extend(submit(p, (2000..2005).collect()).await);
    }
    all_complete(others).await;
    let ran = |k: &str| {
        runs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .map_or(0, Vec::len)
    };
    assert_eq!(
        ran("k2"),
        15,
        "the other key is not blocked behind the paused one"
    );
    assert_eq!(ran("k1"), 0, "the paused key started nothing in any poller");
    shutdown(pollers).await;
    drop(paused);

    // A restart: three new pollers, the pause still stored.
    let mut pollers = Vec::new();
    for _ in 0..3 {
        pollers.push(poller(&schema, pace, &runs).await);
    }
    let more = submit(&pollers[2], (2005..2010).collect()).await;
    all_complete(more).await;
    assert_eq!(ran("k1"), 0, "still paused after the restart");
    let queued: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".actix_poller_tasks \
         WHERE pace_key = 'k1' AND state = 'queued'"
    ))
    .fetch_one(&db)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(queued, 5);

    pollers[0].resume_key("k1");
    bounded("the paused tasks run after the resume", async {
        while ran("k1") < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    shutdown(pollers).await;
    db.close().await;
    pg::drop_schema(&schema).await;
}

async fn fetch(source: &mut PgSource<Job>, max: usize) -> Vec<actix_poller::Task<Job>> {
    bounded("fetch", source.fetch(max))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .tasks
}

/// A paused queue claims nothing in any source, a new one too (a restart); a resume ends it.
/// Driven through the sources themselves: each fetch is one claim.
#[actix_rt::test]
async fn a_stored_queue_pause_holds_every_source_and_survives_a_restart() {
    let schema = pg::fresh_schema();
    let db = pg::pool().await;
    let runs: Runs = Arc::default();
    let first = poller(&schema, QueuePace::new(), &runs).await;
    first.pause();
    until_stored(&db, &schema, None).await;
    shutdown(vec![first]).await;
    let mut a = PgSource::<Job>::connect(config(&schema, QueuePace::new()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = bounded("enqueue", a.enqueue((0..3).map(NewTask::new).collect()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids.len(), 3);
    assert!(
        fetch(&mut a, 10).await.is_empty(),
        "paused: nothing claimed"
    );
    // Another process, started after the pause.
    let mut b = PgSource::<Job>::connect(config(&schema, QueuePace::new()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fetch(&mut b, 10).await.is_empty(),
        "paused for every source"
    );
    let resumed = b.store_resume(None).expect("stored pauses");
    bounded("resume", resumed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetch(&mut a, 10).await.len(), 3, "resumed");
    db.close().await;
    pg::drop_schema(&schema).await;
}

/// A process that dies holding a key's only slot (key limit 1) holds it until its lease
/// expires: the key's count comes back with the lease, and another process then claims.
#[actix_rt::test]
async fn a_dead_process_gives_its_key_slots_back_with_its_leases() {
    let schema = pg::fresh_schema();
    let pace = QueuePace::new().key_limit(1);
    let lease = Duration::from_millis(300);
    let mut dead = PgSource::<Job>::connect(config(&schema, pace).lease(lease))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut live = PgSource::<Job>::connect(config(&schema, pace).lease(lease))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tasks: Vec<NewTask<Job>> = (0..2)
        .map(|n| {
            let mut t = NewTask::new(n);
            t.key = Some("k".into());
            t
        })
        .collect();
    bounded("enqueue", dead.enqueue(tasks))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fetch(&mut dead, 10).await.len(),
        1,
        "one of the key at a time"
    );
    // "Killed": it never acks, never beats, never releases.
    std::mem::forget(dead);
    assert!(
        fetch(&mut live, 10).await.is_empty(),
        "the key's slot is held while the lease lives"
    );
    let got = bounded("the slot comes back with the lease", async {
        loop {
            live.heartbeat().await.unwrap_or_else(|e| panic!("{e}"));
            let got = fetch(&mut live, 10).await;
            if !got.is_empty() {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(got.len(), 1, "still one at a time");
    let acks = got
        .iter()
        .map(|t| Ack {
            id: t.id,
            attempt: t.attempt,
            disposition: Disposition::Completed,
        })
        .collect();
    bounded("ack", live.ack(acks))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fetch(&mut live, 10).await.len(),
        1,
        "the next one once acked"
    );
    pg::drop_schema(&schema).await;
}

/// A handler's `Backpressure::pause_key_for` pauses its key for every poller on the queue: the
/// pause is stored, and a second poller starts none of that key's tasks while another key's run.
#[actix_rt::test]
async fn backpressure_pauses_the_key_for_every_poller() {
    let schema = pg::fresh_schema();
    let db = pg::pool().await;
    let pace = QueuePace::new();
    let source = PgSource::<Job>::connect(config(&schema, pace))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = Poller::<Job>::builder()
        .source(source)
        .workers(2)
        .on_current_arbiter()
        .start(|_n: Job, _cx: TaskContext| async move {
            Err::<(), _>(actix_poller::Backpressure::pause_key_for(
                Duration::from_secs(600),
            ))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let first = submit(&refused, vec![1000]).await;
    until_stored(&db, &schema, Some("k1")).await;
    drop(first);
    shutdown(vec![refused]).await;
    let runs: Runs = Arc::default();
    let other = poller(&schema, pace, &runs).await;
    let _held = submit(&other, vec![1001]).await;
    all_complete(submit(&other, (2000..2005).collect()).await).await;
    let ran = |k: &str| {
        runs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .map_or(0, Vec::len)
    };
    assert_eq!(ran("k2"), 5);
    assert_eq!(
        ran("k1"),
        0,
        "the key paused by backpressure starts nothing elsewhere"
    );
    shutdown(vec![other]).await;
    db.close().await;
    pg::drop_schema(&schema).await;
}
