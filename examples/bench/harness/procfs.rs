//! Readings from `/proc`: per-thread CPU time and wake-ups, process CPU ticks, resident memory
//! (now and at its peak).

use std::time::Duration;

/// One thread's scheduler counters, from `/proc/self/task/<tid>/{comm,schedstat}`: CPU time in
/// nanoseconds (`/proc/self/stat` counts 10 ms ticks, too coarse for the idle target) and how
/// many times it was scheduled in (each wake-up of a parked thread is one), and how long it
/// waited on a run queue for a core while runnable (another thread had the core).
#[derive(Debug, Clone)]
pub(crate) struct ThreadStat {
    pub(crate) tid: u64,
    pub(crate) name: String,
    pub(crate) cpu: Duration,
    pub(crate) wait: Duration,
    pub(crate) slices: u64,
}

/// Every live thread's counters (empty if `/proc` cannot be read).
pub(crate) fn threads() -> Vec<ThreadStat> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        let tid = path.file_name()?.to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let mut fields = stat.split_whitespace();
        let cpu = Duration::from_nanos(fields.next()?.parse().ok()?);
        let wait = Duration::from_nanos(fields.next()?.parse().ok()?);
        let slices = fields.next()?.parse().ok()?;
        Some(ThreadStat {
            tid,
            name: name.trim().to_string(),
            cpu,
            wait,
            slices,
        })
    })
    .collect()
}

/// What each thread did between two snapshots. A thread born in between counts in full; one
/// that exited in between is missed (the runs keep their threads to the end).
pub(crate) fn thread_delta(before: &[ThreadStat], after: &[ThreadStat]) -> Vec<ThreadStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.tid == a.tid);
            ThreadStat {
                tid: a.tid,
                name: a.name.clone(),
                cpu: a.cpu.saturating_sub(b.map_or(Duration::ZERO, |b| b.cpu)),
                wait: a.wait.saturating_sub(b.map_or(Duration::ZERO, |b| b.wait)),
                slices: a.slices.saturating_sub(b.map_or(0, |b| b.slices)),
            }
        })
        .collect()
}

/// Process CPU time from `/proc/self/stat` (utime + stime, in 10 ms ticks), as a cross-check.
pub(crate) fn cpu_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in bytes, from `/proc/self/status` (VmRSS, in kB).
pub(crate) fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:")
}

/// The process's peak resident set size in bytes, from `/proc/self/status` (VmHWM, in kB).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:")
}

/// A `/proc/self/status` figure in kB (`field` with its colon), in bytes.
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
