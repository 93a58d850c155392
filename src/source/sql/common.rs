//! The small helpers the SQLite and PostgreSQL sources share: the SQL file parser, clocks, row
//! decoding, ack rows, the wake-up signal. Compiled once when either feature is on; with only
//! one, the items only the other uses are allowed to be dead.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::task::{Ack, Disposition};

/// The statement named `name` in a file of `-- name:` sections, with its placeholders filled.
///
/// The files are part of the crate (`include_str!`), and a unit test of each source reads every
/// name it uses, so a missing section is a bug of the crate found by its tests.
pub(super) fn statement(file: &str, name: &str, vars: &[(&str, &str)]) -> String {
    let header = format!("-- name: {name}");
    let mut out = String::new();
    let mut inside = false;
    for line in file.lines() {
        if let Some(rest) = line.strip_prefix("-- name:") {
            inside = rest.trim() == name;
            continue;
        }
        if inside && !line.trim_start().starts_with("--") {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        !out.trim().is_empty(),
        "{header} is missing from the crate's SQL"
    );
    fill(&out, vars)
}

/// Replaces each `{key}` with its value.
pub(super) fn fill(sql: &str, vars: &[(&str, &str)]) -> String {
    let mut sql = sql.to_owned();
    for (key, value) in vars {
        sql = sql.replace(&format!("{{{key}}}"), value);
    }
    sql
}

/// A plain SQL identifier: a letter or `_`, then letters, digits or `_`, at most 48 bytes (room
/// for the suffixes of index names within PostgreSQL's 63).
pub(super) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 48
}

/// Microseconds since the Unix epoch.
pub(super) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64)
}

/// A duration in microseconds, saturating.
pub(super) fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// A wall-clock time (µs since the epoch) as a `SystemTime`.
pub(super) fn system_time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// How long from now until `run_at` (zero when due or absent), in microseconds.
pub(super) fn delay_us(run_at: Option<Instant>) -> i64 {
    run_at.map_or(0, |at| micros(at.saturating_duration_since(Instant::now())))
}

/// A per-attempt timeout as stored (milliseconds; `None`: the poller's default).
pub(super) fn timeout_ms(timeout: Option<Duration>) -> Option<i64> {
    timeout.map(|t| t.as_millis().clamp(1, i64::MAX as u128) as i64)
}

/// `d` spread by up to `± jitter × d`.
pub(super) fn jittered(d: Duration, jitter: f64) -> Duration {
    let factor = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
    Duration::from_secs_f64((d.as_secs_f64() * factor).max(0.001))
}

/// A random lease owner: tells this poller's leases from every other's.
pub(super) fn new_owner() -> i64 {
    // Never 0, so a row with owner 0 (never leased by anyone) matches no poller.
    (fastrand::i64(1..i64::MAX)).max(1)
}

/// One ack as the batch statement takes it: id, attempt, kind, delay (µs), error.
pub(super) type AckRow = (i64, i32, i16, i64, Option<String>);

/// Flattens a batch of acks into rows (see the `ack` statements for the kinds).
pub(super) fn ack_rows(acks: Vec<Ack>) -> Vec<AckRow> {
    acks.into_iter()
        .map(|ack| {
            let id = ack.id.0 as i64;
            let attempt = ack.attempt.min(i32::MAX as u32) as i32;
            match ack.disposition {
                Disposition::Completed => (id, attempt, 0, 0, None),
                Disposition::Retry { after, error } => (id, attempt, 1, micros(after), Some(error)),
                Disposition::Snooze { after } => (id, attempt, 2, micros(after), None),
                Disposition::Dead { error } => (id, attempt, 3, 0, Some(error)),
                Disposition::Cancelled => (id, attempt, 4, 0, None),
                // Interrupted by a shutdown: due again now, and the attempt does not count
                // (what a snooze of no time records).
                Disposition::Release => (id, attempt, 2, 0, None),
                // A disposition added later is recorded as a retry after no delay: the task
                // runs again rather than being lost.
                #[allow(unreachable_patterns)]
                _ => (id, attempt, 1, 0, None),
            }
        })
        .collect()
}

/// The ids this poller leased and has not seen acknowledged or released: the heartbeat extends
/// exactly these. Only the Fetcher's thread touches it (the source's futures are not `Send`).
pub(super) type Leased = Rc<RefCell<HashSet<i64>>>;

/// A fetched row, before its payload is decoded.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) id: i64,
    pub(super) attempt: i64,
    pub(super) max_attempts: i64,
    pub(super) priority: i64,
    pub(super) timeout_ms: Option<i64>,
    pub(super) payload: String,
    pub(super) enqueued_at_us: i64,
    pub(super) run_at_us: i64,
}

/// Fetch order: higher priority, then earlier due time, then lower id (the insert order).
pub(super) fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (std::cmp::Reverse(a.priority), a.run_at_us, a.id).cmp(&(
            std::cmp::Reverse(b.priority),
            b.run_at_us,
            b.id,
        ))
    });
}

/// Decodes fetched rows into tasks; rows whose payload does not decode come back apart, with
/// the decoder's error, to be buried.
pub(super) fn decode_rows<T: serde::de::DeserializeOwned>(
    rows: Vec<Row>,
    leased: &Leased,
) -> (Vec<crate::task::Task<T>>, Vec<(i64, String)>) {
    let mut tasks = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    let mut leased = leased.borrow_mut();
    for row in rows {
        match serde_json::from_str::<T>(&row.payload) {
            Ok(payload) => {
                leased.insert(row.id);
                let task = crate::task::Task::new(crate::task::TaskId(row.id as u64), payload)
                    .with_attempt(row.attempt.clamp(1, u32::MAX as i64) as u32)
                    .with_max_attempts(row.max_attempts.clamp(1, u32::MAX as i64) as u32)
                    .with_priority(row.priority.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                    .with_enqueued_at(system_time(row.enqueued_at_us))
                    .with_timeout(
                        row.timeout_ms
                            .filter(|ms| *ms > 0)
                            .map(|ms| Duration::from_millis(ms as u64)),
                    );
                tasks.push(task);
            }
            Err(e) => bad.push((row.id, format!("the payload does not decode: {e}"))),
        }
    }
    (tasks, bad)
}

/// A wake-up signal: bumped by local enqueues, reclaimed leases and (PostgreSQL) notifications.
pub(super) type Signal = watch::Sender<u64>;

/// A future that completes on the first bump of `signal` after this call (the receiver is
/// created now, before the read it guards, so a bump during the read is not lost).
pub(super) fn wait_for_bump(signal: &Signal) -> impl std::future::Future<Output = ()> + 'static {
    let mut rx = signal.subscribe();
    rx.mark_unchanged();
    async move {
        if rx.changed().await.is_err() {
            // The sender is gone (the source closed): never wake for this reason.
            std::future::pending::<()>().await;
        }
    }
}

pub(super) fn bump(signal: &Signal) {
    signal.send_modify(|n| *n = n.wrapping_add(1));
}

/// Retries a database operation a few times with a short backoff (a dropped connection is
/// replaced by the pool); the last error is returned.
pub(super) async fn with_retries<R, E, F, Fut>(tries: u32, mut op: F) -> Result<R, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(50);
    let mut n = 1;
    loop {
        match op().await {
            Ok(r) => return Ok(r),
            Err(e) if n < tries => {
                tracing::debug!(error = %e, attempt = n, "database write failed; retrying");
                tokio::time::sleep(jittered(delay, 0.2)).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(valid_identifier("tasks_2"));
        assert!(valid_identifier("_t"));
        assert!(!valid_identifier("2tasks"));
        assert!(!valid_identifier("a\"; drop table x; --"));
        assert!(!valid_identifier(""));
        assert!(!valid_identifier(&"a".repeat(49)));
    }

    #[test]
    fn statements_are_cut_and_filled() {
        let file = "-- name: a\nSELECT 1 FROM {t};\n-- a comment\n-- name: b\nSELECT 2;\n";
        assert_eq!(
            statement(file, "a", &[("t", "x")]).trim(),
            "SELECT 1 FROM x;"
        );
        assert_eq!(statement(file, "b", &[]).trim(), "SELECT 2;");
    }
}
