//! Fault-test helpers: a child process running a poller, killed with SIGKILL at random moments.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The env var that turns the test binary's `fault_child` test into a worker process.
pub const CHILD: &str = "ACTIX_POLLER_FAULT_CHILD";

/// How many tasks each fault scenario runs, and what they cost.
pub const TASKS: u32 = 3_000;
pub const WORK: Duration = Duration::from_millis(10);
pub const WORKERS: usize = 8;
pub const LEASE: Duration = Duration::from_secs(1);

/// Starts this test binary as a worker process (its `fault_child` test), with `env`.
pub fn spawn_child(env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut cmd = Command::new(exe);
    cmd.args(["fault_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn the child: {e}"))
}

/// SIGKILL: no shutdown, no release, no last ack. `false` if the child had already exited with
/// success (the queue was done); a child that exited with failure (it panicked at start, say)
/// is a failure of the test, not a kill.
pub fn kill_9(child: &mut Child) -> bool {
    if let Ok(Some(status)) = child.try_wait() {
        assert!(
            status.success(),
            "the child failed before it was killed: {status}"
        );
        return false;
    }
    let _ = child.kill();
    let _ = child.wait();
    true
}

/// The tasks run more than once (`runs`: each execution's task id) must be among those `held`
/// (leased, never acknowledged) by a killed worker: returns them.
pub fn duplicated_within(runs: &[i64], held: &HashSet<i64>) -> Vec<i64> {
    let mut seen = HashSet::new();
    let mut twice: Vec<i64> = runs
        .iter()
        .filter(|id| !seen.insert(**id))
        .copied()
        .collect();
    twice.sort_unstable();
    twice.dedup();
    let outside: Vec<_> = twice.iter().filter(|id| !held.contains(id)).collect();
    assert!(
        outside.is_empty(),
        "tasks run twice that no killed worker held: {outside:?}"
    );
    twice
}

/// Tasks run more than once (`runs`: task id and the worker that ran it to its end) are legal
/// only as SIGKILL leaves them: every run but one was by a worker that was `killed` (it ran the
/// task, then died before its ack landed), and no worker ran one task twice. Returns the tasks
/// run more than once.
pub fn duplicates_explained_by_kills(
    runs: &[(i64, String)],
    killed: impl Fn(&str) -> bool,
) -> Vec<i64> {
    let mut by_task: std::collections::BTreeMap<i64, Vec<&str>> = Default::default();
    for (id, worker) in runs {
        by_task.entry(*id).or_default().push(worker);
    }
    let mut twice = Vec::new();
    for (id, workers) in by_task.into_iter().filter(|(_, w)| w.len() > 1) {
        let distinct: HashSet<&str> = workers.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            workers.len(),
            "task {id} ran twice in one worker: {workers:?}"
        );
        let alive = workers.iter().filter(|w| !killed(w)).count();
        assert!(
            alive <= 1,
            "task {id} ran to its end in {alive} workers that were not killed: {workers:?}"
        );
        twice.push(id);
    }
    twice
}

/// A random pause of `lo..hi` milliseconds.
pub fn random_ms(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(fastrand::u64(lo..hi))
}

/// Waits for a child to exit by itself: `true` if it did, with success, within `limit`
/// (it is killed after `limit`; a child that panicked exits with failure).
pub async fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "the child failed: {status}");
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
