//! Fault-test helpers: a child process running a poller, killed with SIGKILL at random moments.
#![allow(dead_code, unreachable_pub)]

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

/// SIGKILL: no shutdown, no release, no last ack.
pub fn kill_9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A random pause of `lo..hi` milliseconds.
pub fn random_ms(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(fastrand::u64(lo..hi))
}

/// Waits (polling `done`) for a child to exit by itself, killing it after `limit`.
pub async fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            kill_9(child);
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
