//! Queue-wide pace on PostgreSQL (`PgConfig::queue_pace`, issue 15): limits and pauses kept in
//! the database hold across every poller sharing the queue.
//!
//! `limits_hold_across_three_os_processes` runs three child processes (this test binary run
//! again, as `tests/faults` does), each its own poller, sharing only the database. The other
//! tests run several pollers in this process, each with its own source: its own pools
//! (connections), lease owner and `LISTEN` connection; what they share is only the database, as
//! separate processes would (the crate keeps no state between sources). Rates are checked from
//! the start times the claims stored (`leased_at`, the server's clock), per-key caps from the
//! handlers' start/end intervals.
//!
//! Needs a server: set `ACTIX_POLLER_PG_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`).
#![cfg(feature = "postgres")]

mod pg;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_poller::source::postgres::{PgConfig, PgSource, QueuePace};
use actix_poller::source::{NewTask, Source};
use actix_poller::{
    Ack, Disposition, FinalState, Key, Poller, RateLimit, Receipt, SubmitBatch, TaskContext,
    TaskOptions,
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
fn most_at_once<I: Ord + Copy>(runs: &[(I, I)]) -> usize {
    let mut edges: Vec<(I, i32)> = runs.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant: a run that ended lets the next one start.
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Panics unless, in every window of the start times `starts` (µs, in order), at most
/// `burst + w / t` started (`t`: the emission interval, µs): the GCRA's bound.
fn assert_rate(starts: &[i64], t: i64, burst: u32) {
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
    assert_rate(&starts, (per / n).as_micros() as i64, burst);
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

// ---- Three OS processes ----------------------------------------------------------------------

/// Turns this test binary's `pace_child` test into a worker process: the schema of its queue.
const CHILD_SCHEMA: &str = "ACTIX_POLLER_PACE_CHILD_SCHEMA";
/// The worker process's name, as it records its runs.
const CHILD_NAME: &str = "ACTIX_POLLER_PACE_CHILD_NAME";
/// The queue pace every process of `limits_hold_across_three_os_processes` sets: 50 claims a
/// second across the three (bursts of 5), at most 2 of a key claimed and not acked.
const RATE: (u32, Duration, u32) = (50, Duration::from_secs(1), 5);
const KEY_LIMIT: u32 = 2;
/// What each run of a task costs in a child: long enough that a key's tasks would overlap
/// without the key limit (each child has 8 workers).
const CHILD_WORK: Duration = Duration::from_millis(20);
/// The key that stays paused (a stored pause) all along: payloads 9000 and up.
const PAUSED: &str = "k9";

fn shared_pace() -> QueuePace {
    QueuePace::new()
        .rate_limit(RateLimit::new(RATE.0, RATE.1, RATE.2))
        .key_limit(KEY_LIMIT)
}

/// Microseconds since the Unix epoch, `CLOCK_REALTIME`: the one clock every process on this
/// machine reads (no skew between them), so stamps of different processes compare.
fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Starts this test binary again as a worker process (its `pace_child` test). Its stderr is
/// this test's (a child's panic shows in the report).
fn spawn_child(schema: &str, name: &str) -> Child {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    Command::new(exe)
        .args(["pace_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_SCHEMA, schema)
        .env(CHILD_NAME, name)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the child: {e}"))
}

/// Waits for a child to exit (it must, with success, within 60 s; it is killed past that).
async fn exited(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "a child failed: {status}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a child did not finish within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tasks not finished, but for the paused key's.
async fn unfinished(db: &sqlx::PgPool, schema: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".actix_poller_tasks \
         WHERE state IN ('queued', 'running') AND pace_key IS DISTINCT FROM '{PAUSED}'"
    ))
    .fetch_one(db)
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The worker process: a poller with the shared pace on the queue, recording each run (task,
/// attempt, key, process, start and end on `CLOCK_REALTIME`) in the test's `runs` table, until
/// nothing but the paused key's tasks is left. Does nothing in an ordinary test run.
#[test]
fn pace_child() {
    let Ok(schema) = std::env::var(CHILD_SCHEMA) else {
        return;
    };
    let name = std::env::var(CHILD_NAME).unwrap_or_else(|_| "child".into());
    actix_rt::System::new().block_on(async move {
        let source = PgSource::<Job>::connect(config(&schema, shared_pace()))
            .await
            .unwrap_or_else(|e| panic!("child {name}: connect: {e}"));
        let db = pg::pool().await;
        let insert = format!(
            "INSERT INTO \"{schema}\".runs (task_id, attempt, pace_key, worker, started, ended) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        );
        let (handler_db, worker) = (db.clone(), name.clone());
        let poller = Poller::<Job>::builder()
            .source(source)
            .workers(8)
            .start(move |n: Job, cx: TaskContext| {
                let (db, insert, worker) = (handler_db.clone(), insert.clone(), worker.clone());
                async move {
                    let started = wall_us();
                    tokio::time::sleep(CHILD_WORK).await;
                    let ended = wall_us();
                    sqlx::query(&insert)
                        .bind(cx.id().0 as i64)
                        .bind(cx.attempt() as i32)
                        .bind(key_of(n))
                        .bind(worker)
                        .bind(started)
                        .bind(ended)
                        .execute(&db)
                        .await?;
                    Ok::<(), sqlx::Error>(())
                }
            })
            .unwrap_or_else(|e| panic!("child {name}: start: {e}"));
        sqlx::query(&format!("INSERT INTO \"{schema}\".ready VALUES ($1)"))
            .bind(&name)
            .execute(&db)
            .await
            .unwrap_or_else(|e| panic!("child {name}: ready: {e}"));
        while unfinished(&db, &schema).await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = poller.shutdown(Duration::from_secs(5)).await;
        db.close().await;
    });
}

/// The "Done when": three OS processes (this binary run three times), each its own
/// poller with the same queue pace, sharing only the database. Every task's run is recorded by
/// the process that ran it. Then:
///
/// * (a) the queue-wide rate: in every window of the claims' stored start times (`leased_at`,
///   stamped under the queue's lock by the server's clock, so one clock and in claim order), at
///   most `burst + w / t` claims. Claims, not handler starts, are what the pace spaces (a
///   handler starts a dispatch later, with its own jitter; docs/pace.md "What counts as a
///   start");
/// * (b) the key limit: at no instant did more than 2 runs of one key overlap, over the three
///   processes (start/end on `CLOCK_REALTIME`, which every process on one machine reads alike;
///   a run lies inside its claim-to-ack span, so this bounds the runs, not only the claims);
/// * (c) every task ran exactly once (one recorded run, first attempt, completed), none lost;
/// * (d) the key paused (a stored pause) started nothing in any process, while the others ran.
///
/// The work is released only once the three are up (a stored queue pause, resumed when all
/// three say they are ready), so each takes part; each must have run some.
#[actix_rt::test]
async fn limits_hold_across_three_os_processes() {
    let schema = pg::fresh_schema();
    let mut source = PgSource::<Job>::connect(config(&schema, shared_pace()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db = pg::pool().await;
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{schema}\".runs (task_id BIGINT NOT NULL, attempt INT NOT NULL, \
             pace_key TEXT, worker TEXT NOT NULL, started BIGINT NOT NULL, ended BIGINT NOT NULL);
         CREATE TABLE \"{schema}\".ready (worker TEXT NOT NULL);"
    ))
    .execute(&db)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Held until the three are up; the paused key for good.
    for key in [None, Some(Key::new(PAUSED))] {
        let pause = source.store_pause(key, None).expect("stored pauses");
        bounded("pause", pause)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Three keys of 20 tasks, 30 without a key, interleaved; 10 of the paused key among them.
    let mut tasks: Vec<NewTask<Job>> = (0..90)
        .map(|i| {
            let n = if i % 3 == 0 {
                i
            } else {
                (1 + (i / 3) % 3) * 1000 + i
            };
            let mut task = NewTask::new(n);
            task.key = key_of(n).map(Key::new);
            task
        })
        .collect();
    for i in 0..10 {
        let mut task = NewTask::new(9000 + i);
        task.key = Some(Key::new(PAUSED));
        tasks.insert(i as usize * 9, task);
    }
    let ids = bounded("enqueue", source.enqueue(tasks))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids.len(), 100);

    let names = ["a", "b", "c"];
    let mut children: Vec<Child> = names.iter().map(|n| spawn_child(&schema, n)).collect();
    pg::until_count(
        &db,
        "the three processes are up",
        &format!("SELECT count(*) FROM \"{schema}\".ready"),
        3,
    )
    .await;
    let resume = source.store_resume(None).expect("stored pauses");
    bounded("resume", resume)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for child in &mut children {
        exited(child).await;
    }

    // (c) Every task but the paused key's ran exactly once, at its first attempt, and completed.
    let runs: Vec<(i64, i32, Option<String>, String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT task_id, attempt, pace_key, worker, started, ended FROM \"{schema}\".runs"
    ))
    .fetch_all(&db)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let distinct: HashSet<i64> = runs.iter().map(|r| r.0).collect();
    assert_eq!(runs.len(), 90, "90 runs recorded");
    assert_eq!(distinct.len(), 90, "no task ran twice");
    assert!(runs.iter().all(|r| r.1 == 1), "each at its first attempt");
    let states: Vec<(Option<String>, String, i64)> = sqlx::query_as(&format!(
        "SELECT pace_key, state, count(*) FROM \"{schema}\".actix_poller_tasks \
         GROUP BY pace_key, state"
    ))
    .fetch_all(&db)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for (key, state, count) in &states {
        if key.as_deref() == Some(PAUSED) {
            // (d) The paused key: never claimed by any process.
            assert_eq!((state.as_str(), *count), ("queued", 10), "{states:?}");
        } else {
            assert_eq!(state, "completed", "{states:?}");
        }
    }
    assert!(
        runs.iter().all(|r| r.2.as_deref() != Some(PAUSED)),
        "the paused key started nothing in any process"
    );
    for name in names {
        assert!(
            runs.iter().any(|r| r.3 == name),
            "process {name} ran none: {runs:?}"
        );
    }

    // (b) At most KEY_LIMIT runs of a key at any instant, over the three processes.
    let mut by_key: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for r in &runs {
        if let Some(key) = &r.2 {
            by_key.entry(key).or_default().push((r.4, r.5));
        }
    }
    assert_eq!(by_key.len(), 3);
    for (key, spans) in &by_key {
        let most = most_at_once(spans);
        assert!(
            most <= KEY_LIMIT as usize,
            "{key}: {most} runs at once across the processes (limit {KEY_LIMIT})"
        );
    }

    // (a) The queue-wide rate, on the claims' stored times.
    let starts: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT (extract(epoch FROM leased_at) * 1000000)::bigint \
         FROM \"{schema}\".actix_poller_tasks WHERE leased_at IS NOT NULL ORDER BY leased_at"
    ))
    .fetch_all(&db)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(starts.len(), 90);
    assert_rate(&starts, (RATE.1 / RATE.0).as_micros() as i64, RATE.2);

    db.close().await;
    pg::drop_schema(&schema).await;
}

// ---- The pace is the queue's -----------------------------------------------------------------

/// Two tasks of key `k`.
fn two_of_key_k() -> Vec<NewTask<Job>> {
    (0..2)
        .map(|n| {
            let mut t = NewTask::new(n);
            t.key = Some(Key::new("k"));
            t
        })
        .collect()
}

/// The queue's pace is stored when the first poller with one opens it: a poller configured with
/// another pace is refused at open, with an error naming both paces and how to change the
/// stored one; a poller with the same limits (written another way) opens.
#[actix_rt::test]
async fn a_poller_with_another_pace_is_refused_at_open() {
    let schema = pg::fresh_schema();
    let first = QueuePace::new()
        .rate_limit(RateLimit::new(50, Duration::from_secs(1), 5))
        .key_limit(2);
    let _a = PgSource::<Job>::connect(config(&schema, first))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for other in [
        QueuePace::new()
            .rate_limit(RateLimit::new(100, Duration::from_secs(1), 5))
            .key_limit(2),
        QueuePace::new()
            .rate_limit(RateLimit::new(50, Duration::from_secs(1), 5))
            .key_limit(3),
        QueuePace::new(),
    ] {
        let refused = PgSource::<Job>::connect(config(&schema, other)).await;
        let Err(error) = refused else {
            panic!("a poller with another pace ({other:?}) opened the queue");
        };
        let message = error.to_string();
        for part in ["50 per 1s (burst 5), key limit 2", "replace_queue_pace"] {
            assert!(message.contains(part), "{part:?} not in: {message}");
        }
    }
    // The same limits: 50 a second is 5 per 100 ms.
    let same = QueuePace::new()
        .rate_limit(RateLimit::new(5, Duration::from_millis(100), 5))
        .key_limit(2);
    PgSource::<Job>::connect(config(&schema, same))
        .await
        .unwrap_or_else(|e| panic!("the same limits are refused: {e}"));
    pg::drop_schema(&schema).await;
}

/// A poller opened without a pace on a queue that has one claims under it (and stores its
/// pauses): it does not claim past the key limit the queue's pollers keep.
#[actix_rt::test]
async fn a_poller_without_a_pace_adopts_the_queues() {
    let schema = pg::fresh_schema();
    let mut paced = PgSource::<Job>::connect(config(&schema, QueuePace::new().key_limit(1)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    bounded("enqueue", paced.enqueue(two_of_key_k()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut plain = PgSource::<Job>::connect(pg::config(&schema))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fetch(&mut plain, 10).await.len(),
        1,
        "one of the key at a time, as the queue's pace says"
    );
    assert!(
        fetch(&mut paced, 10).await.is_empty(),
        "the key's one slot is taken"
    );
    assert!(
        plain.store_pause(Some(Key::new("k")), None).is_some(),
        "its pauses are the queue's"
    );
    pg::drop_schema(&schema).await;
}

/// A poller opened without a pace before the queue had one adopts it at its next heartbeat.
#[actix_rt::test]
async fn a_poller_without_a_pace_adopts_one_set_later_at_its_heartbeat() {
    let schema = pg::fresh_schema();
    let mut plain = PgSource::<Job>::connect(pg::config(&schema))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut paced = PgSource::<Job>::connect(config(&schema, QueuePace::new().key_limit(1)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    bounded("enqueue", paced.enqueue(two_of_key_k()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    bounded("heartbeat", plain.heartbeat())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fetch(&mut plain, 10).await.len(),
        1,
        "adopted at the heartbeat"
    );
    pg::drop_schema(&schema).await;
}

/// `replace_queue_pace` changes the queue's pace: it opens where `queue_pace` with the new pace
/// is refused, a poller still running with the old pace claims under the new one from its next
/// claim (and shows it after its heartbeat), and one opened later with the old pace is refused.
#[actix_rt::test]
async fn replace_queue_pace_changes_it_for_every_poller() {
    let schema = pg::fresh_schema();
    let (old, new) = (QueuePace::new().key_limit(1), QueuePace::new().key_limit(2));
    let mut running = PgSource::<Job>::connect(config(&schema, old))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tasks = two_of_key_k();
    tasks.extend(two_of_key_k());
    bounded("enqueue", running.enqueue(tasks))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        PgSource::<Job>::connect(config(&schema, new))
            .await
            .is_err(),
        "queue_pace does not replace the stored pace"
    );
    let _changer = PgSource::<Job>::connect(pg::config(&schema).replace_queue_pace(new))
        .await
        .unwrap_or_else(|e| panic!("replace_queue_pace: {e}"));
    assert_eq!(
        fetch(&mut running, 10).await.len(),
        2,
        "a running poller claims under the new pace"
    );
    bounded("heartbeat", running.heartbeat())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(running.queue_pace(), Some(new));
    let refused = PgSource::<Job>::connect(config(&schema, old)).await;
    assert!(
        matches!(
            refused,
            Err(actix_poller::PgError::PaceMismatch { stored, configured })
                if stored == new && configured == old
        ),
        "the old pace is refused now: {refused:?}"
    );
    PgSource::<Job>::connect(config(&schema, new))
        .await
        .unwrap_or_else(|e| panic!("the new pace is the queue's: {e}"));
    pg::drop_schema(&schema).await;
}
