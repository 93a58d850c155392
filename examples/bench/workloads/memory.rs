//! memory: bytes per queued task, each side measured in a fresh child process. The same child
//! roles run noop's peak-RSS row when [`PEAK_CHILD`] is set (see `noop.rs`).

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_poller::{Poller, RetryPolicy, Task, TaskContext};
use tokio::sync::{mpsc, Semaphore};

use crate::cli::Side;
use crate::harness::{
    base_dispatch, base_runtime, finish, rss_bytes, within, Report, Row, Unit, STUCK,
};

/// Submits per message when filling our queue.
const CHUNK: usize = 10_000;

/// Set (to K) in a child's environment: the child runs one noop of `--n` tasks with K workers
/// instead, and its figure is the process's peak RSS (VmHWM), not an RSS growth.
pub(crate) const PEAK_CHILD: &str = "BENCH_NOOP_PEAK_K";

/// Set (to anything) in our memory child's environment: the poller retries failed tasks
/// (`PollerBuilder::retry`, 3 attempts), so every queued task has options besides the defaults
/// (more than one attempt), shared by each submit's batch. Run by hand:
/// `BENCH_MEMORY_RETRY=1 bench --child memory-ours --n 1000000` prints the RSS growth.
const RETRY_CHILD: &str = "BENCH_MEMORY_RETRY";

/// The noop peak child's K, if this process is one.
fn peak_child() -> Option<usize> {
    std::env::var(PEAK_CHILD).ok()?.parse().ok()
}

/// In a child process: queue `n` u64 tasks in our poller (1 worker, blocked by its first task)
/// and return the RSS growth. (With [`PEAK_CHILD`] set: noop's peak RSS instead.)
pub(crate) async fn memory_ours(n: usize) -> Result<u64, String> {
    if let Some(k) = peak_child() {
        return super::noop::peak_ours(n, k).await;
    }
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let (g, s) = (Arc::clone(&gate), Arc::clone(&started));
    let builder = Poller::<u64>::builder().workers(1).capacity(n + 1);
    let builder = match std::env::var_os(RETRY_CHILD) {
        Some(_) => builder.retry(RetryPolicy::attempts(3)),
        None => builder,
    };
    let poller = builder
        .start(move |x: u64, _cx: TaskContext| {
            let (g, s) = (Arc::clone(&g), Arc::clone(&s));
            async move {
                if x == 0 {
                    s.notify_one();
                    let _ = g.acquire().await;
                }
                Ok::<(), Infallible>(())
            }
        })
        .map_err(|e| format!("start: {e}"))?;
    poller.submit(0).await.map_err(|e| format!("submit: {e}"))?;
    within("the first task starting", started.notified()).await?;
    let before = rss_bytes().ok_or("cannot read /proc/self/status")?;
    let mut next = 1u64;
    while next <= n as u64 {
        let end = (next + CHUNK as u64).min(n as u64 + 1);
        poller
            .submit_batch((next..end).collect())
            .await
            .map_err(|e| format!("submit: {e}"))?;
        next = end;
    }
    let after = rss_bytes().ok_or("cannot read /proc/self/status")?;
    // Waiting: in the source's queue, or dispatched ahead to the executor (`buffered`).
    let stats = poller.stats();
    let queued = stats.queued.map(|q| q + stats.buffered);
    gate.add_permits(1);
    finish(&poller, None).await?;
    if queued != Some(n as u64) {
        return Err(format!("{queued:?} tasks waiting, expected {n}"));
    }
    Ok(after.saturating_sub(before))
}

/// In a child process: queue `n` u64 tasks in the baseline's mpsc (1 permit, held by a blocked
/// first task) and return the RSS growth. (With [`PEAK_CHILD`] set: noop's peak RSS instead.)
pub(crate) fn memory_base(n: usize) -> Result<u64, String> {
    if let Some(k) = peak_child() {
        return super::noop::peak_base(n, k);
    }
    let rt = base_runtime()?;
    rt.block_on(async {
        let gate = Arc::new(Semaphore::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let (g, s) = (Arc::clone(&gate), Arc::clone(&started));
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let dispatcher = tokio::spawn(base_dispatch(
            rx,
            Arc::new(Semaphore::new(1)),
            move |x| {
                let (g, s) = (Arc::clone(&g), Arc::clone(&s));
                async move {
                    if x == 0 {
                        s.notify_one();
                        let _ = g.acquire().await;
                    }
                }
            },
            Arc::new(AtomicU64::new(0)),
        ));
        tx.send(0).map_err(|_| "the baseline dispatcher stopped")?;
        within("the first task starting", started.notified()).await?;
        let before = rss_bytes().ok_or("cannot read /proc/self/status")?;
        for x in 1..=n as u64 {
            tx.send(x).map_err(|_| "the baseline dispatcher stopped")?;
        }
        let after = rss_bytes().ok_or("cannot read /proc/self/status")?;
        dispatcher.abort();
        gate.close();
        Ok(after.saturating_sub(before))
    })
}

/// Runs one side of the memory workload in a fresh process and reads its RSS growth.
fn memory_child(side: Side, n: usize) -> Result<u64, String> {
    let role = match side {
        Side::Ours => "memory-ours",
        Side::Baseline => "memory-baseline",
    };
    child_figure(role, role, n, &[])
}

/// Runs this program as `--child role --n n` in a fresh process, with `envs` (name, value) set,
/// and reads the figure it prints; `label` names the child in errors.
pub(crate) fn child_figure(
    label: &str,
    role: &str,
    n: usize,
    envs: &[(&str, usize)],
) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = Command::new(exe);
    command.env_remove(PEAK_CHILD);
    for (name, value) in envs {
        command.env(name, value.to_string());
    }
    let mut child = command
        .args(["--child", role, "--n", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the {label} child: {e}"))?;
    let started = Instant::now();
    // Poll for the exit so a stuck child is killed instead of hanging the suite. (Its output
    // is a line or two: it cannot fill the pipe and block.)
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < STUCK => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the {label} child was stuck for {} s",
                    STUCK.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for the {label} child: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading the {label} child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the {label} child failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("rss_delta_bytes="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("the {label} child printed no figure: {stdout}"))
}

/// memory: bytes per queued task (RSS growth ÷ N) with N u64 tasks queued behind a blocked worker.
pub(crate) fn memory(n: usize) -> Result<Report, String> {
    let ours = memory_child(Side::Ours, n)? as f64 / n as f64;
    let base = memory_child(Side::Baseline, n)? as f64 / n as f64;
    let payload = std::mem::size_of::<u64>() as f64;
    let mut report = Report::default();
    report.rows.push(Row {
        workload: "memory",
        config: format!("{n} queued u64 tasks"),
        metric: "bytes/task",
        unit: Unit::Bytes,
        ours,
        base: Some(base),
        target: "",
        met: None,
    });
    report.rows.push(Row {
        workload: "memory",
        config: format!("{n} queued u64 tasks"),
        metric: "bytes/task beyond payload",
        unit: Unit::Bytes,
        ours: ours - payload,
        base: Some(base - payload),
        target: "≤ 64 B",
        met: Some(ours - payload <= 64.0),
    });
    report.details.push(format!(
        "memory: RSS growth while queueing, each side in a fresh process; for scale, \
         size_of::<Task<u64>>() = {} B (the envelope a source hands out; the in-memory queue \
         keeps its own, smaller entries)",
        std::mem::size_of::<Task<u64>>()
    ));
    Ok(report)
}
