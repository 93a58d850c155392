//! The durable source's small pieces: the SQL file parser, clocks, rows as stored, ack rows,
//! the leases this poller holds, the wake-up signal, retries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use super::dialect::{FetchedDueRow, FetchedRow};
use crate::pace::Key;
use crate::source::NewTask;
use crate::task::{Ack, DeadTask, Disposition, Task, TaskId};
use crate::trace::{Parent, TraceParent};

/// A migration: version, description, SQL.
/// A migration's SQL; its first line is `-- migration: <what it does>`, and its version is its
/// place in the dialect's list (from 1).
pub(crate) type Migration = &'static str;

/// Task ids as the tables store them.
pub(crate) fn raw_ids(ids: &[TaskId]) -> Vec<i64> {
    ids.iter().map(|id| id.0 as i64).collect()
}

/// Stored ids as task ids, in ascending order.
pub(crate) fn sorted_ids(mut ids: Vec<i64>) -> Vec<TaskId> {
    ids.sort_unstable();
    ids.into_iter().map(|id| TaskId(id as u64)).collect()
}

/// Logs the leases a heartbeat asked to extend (`asked`) and did not (acked meanwhile, or
/// expired).
pub(crate) fn report_extended(asked: usize, extended: u64) {
    let lost = asked as u64 - extended.min(asked as u64);
    if lost > 0 {
        tracing::debug!(lost, "leases not extended (acked meanwhile or expired)");
    }
}

/// Logs what a reclaim took back (`states`: each row's new state, `queued` or `dead`); `true`
/// when some tasks are queued again, so the pollers are to be woken.
pub(crate) fn report_reclaimed(states: &[String]) -> bool {
    if states.is_empty() {
        return false;
    }
    let requeued = states.iter().filter(|s| *s == "queued").count();
    tracing::warn!(
        requeued,
        dead = states.len() - requeued,
        "took back tasks whose lease expired"
    );
    requeued > 0
}

/// A dead row as [`Source::dead_tasks`](super::Source::dead_tasks) lists it.
pub(crate) fn dead_task(
    id: i64,
    attempts: impl Into<i64>,
    error: String,
    died_at: SystemTime,
) -> DeadTask {
    DeadTask {
        id: TaskId(id as u64),
        attempts: attempts.into().clamp(0, u32::MAX as i64) as u32,
        error,
        died_at,
        rerunnable: true,
    }
}

/// The statement named `name` in a file of `-- name:` sections, with its placeholders filled.
/// A `{part:NAME}` in it is the section `NAME` of the same file, in place (text two
/// statements share, e.g. common table expressions), filled with the same placeholders.
///
/// The files are part of the crate (`include_str!`), and a unit test of each source reads every
/// name it uses, so a missing section is a bug of the crate found by its tests.
pub(crate) fn statement(file: &str, name: &str, vars: &[(&str, &str)]) -> String {
    let mut out = section(file, name);
    while let Some(start) = out.find("{part:") {
        let end = start
            + out[start..]
                .find('}')
                .unwrap_or_else(|| panic!("-- name: {name}: an unclosed {{part:"));
        let part = section(file, &out[start + "{part:".len()..end]);
        out.replace_range(start..=end, part.trim_end());
    }
    fill(&out, vars)
}

/// The lines of section `name` that are not comments.
fn section(file: &str, name: &str) -> String {
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
        "-- name: {name} is missing from the crate's SQL"
    );
    out
}

/// The statement `name` of `file`, filled, or `None` when the file has no such section (a
/// statement only one store has).
pub(crate) fn optional_statement(file: &str, name: &str, vars: &[(&str, &str)]) -> Option<String> {
    let header = format!("-- name: {name}");
    file.lines()
        .any(|line| line.trim_end() == header)
        .then(|| statement(file, name, vars))
}

/// Replaces each `{key}` with its value.
pub(crate) fn fill(sql: &str, vars: &[(&str, &str)]) -> String {
    let mut sql = sql.to_owned();
    for (key, value) in vars {
        sql = sql.replace(&format!("{{{key}}}"), value);
    }
    sql
}

/// A plain SQL identifier: a letter or `_`, then letters, digits or `_`, at most 48 bytes (room
/// for the suffixes of index names within PostgreSQL's 63).
pub(crate) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 48
}

/// Microseconds since the Unix epoch (SQLite's clock).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64)
}

/// A duration in microseconds, saturating.
pub(crate) fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// A wall-clock time (µs since the epoch) as a `SystemTime`.
pub(crate) fn system_time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// The longest delay stored: 100 years. A longer one (`Duration::MAX`) is this far future, so
/// `now + delay` never overflows the store's time type.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A delay as stored: µs, at most [`FAR_FUTURE`].
pub(crate) fn delay(d: Duration) -> i64 {
    micros(d.min(FAR_FUTURE))
}

/// How long from now until `run_at` (zero when due or absent), in microseconds, at most
/// [`FAR_FUTURE`].
pub(crate) fn delay_us(run_at: Option<Instant>) -> i64 {
    run_at.map_or(0, |at| delay(at.saturating_duration_since(Instant::now())))
}

/// The longest error text stored, in bytes.
pub(crate) const MAX_ERROR_BYTES: usize = 8 * 1024;

/// An error text as stored: without NUL characters (PostgreSQL's text refuses them) and at most
/// [`MAX_ERROR_BYTES`] (cut at a character boundary, marked with `…`).
pub(crate) fn stored_text(text: String) -> String {
    let mut text = if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text
    };
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A per-attempt timeout as stored (milliseconds; `None`: the poller's default).
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> Option<i64> {
    timeout.map(|t| t.as_millis().clamp(1, i64::MAX as u128) as i64)
}

/// A random lease owner: tells this poller's leases from every other's.
pub(crate) fn new_owner() -> i64 {
    // Never 0, so a row with owner 0 (never leased by anyone) matches no poller.
    (fastrand::i64(1..i64::MAX)).max(1)
}

/// The kind of ack of a completed task (see the `ack` statements).
pub(crate) const ACK_COMPLETED: i16 = 0;

/// One ack as the batch statement takes it: id, attempt, kind, delay (µs), error, and the lease
/// it answers.
pub(crate) type AckRow = (i64, i32, i16, i64, Option<String>, i64);

/// Flattens a batch of acks into rows (see the `ack` statements for the kinds), with error texts
/// and delays bounded as stored.
pub(crate) fn ack_rows(acks: Vec<Ack>, leases: Vec<i64>) -> Vec<AckRow> {
    acks.into_iter()
        .zip(leases)
        .map(|(ack, lease)| {
            let id = ack.id.0 as i64;
            let attempt = ack.attempt.min(i32::MAX as u32) as i32;
            let (kind, after, error) = match ack.disposition {
                Disposition::Completed => (ACK_COMPLETED, 0, None),
                Disposition::Retry { after, error } => (1, delay(after), Some(stored_text(error))),
                Disposition::Snooze { after } => (2, delay(after), None),
                Disposition::Dead { error } => (3, 0, Some(stored_text(error))),
                Disposition::Cancelled => (4, 0, None),
                // Interrupted by a shutdown: due again now, and the attempt does not count
                // (what a snooze of no time records).
                Disposition::Release => (2, 0, None),
                // A disposition added later is recorded as a retry after no delay: the task
                // runs again rather than being lost.
                #[allow(unreachable_patterns)]
                _ => (1, 0, None),
            };
            (id, attempt, kind, after, error, lease)
        })
        .collect()
}

/// The leases this poller holds and has not seen acknowledged or released: the heartbeat extends
/// exactly these. Each lease is known by its sequence number, which the store raises on every
/// fetch of a task (it never repeats for a task, unlike its attempt, which a snooze or a release
/// gives back), and which an ack, an extension and a release must match.
///
/// Each lease taken is also stamped locally, so an ack that lands after its task was fetched
/// again (a retry due at once, fetched while the ack's reply was on its way) forgets only the
/// lease it answered, not the new one.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// Task → (local stamp, the store's lease sequence).
    held: HashMap<i64, (u64, i64)>,
    stamped: u64,
    /// Acks whose call failed, by (task, attempt) → the lease they answered. The call may have
    /// been recorded (its reply lost) and the task leased again since; when the Fetcher sends
    /// the ack again, it is matched with the lease it answered, not the new one, so a replayed
    /// snooze cannot requeue the task's next run.
    unanswered: HashMap<(i64, u32), i64>,
}

impl Leases {
    /// A lease on `id`, numbered `seq` by the store, was taken (by a fetch).
    pub(crate) fn hold(&mut self, id: i64, seq: i64) {
        self.stamped += 1;
        self.held.insert(id, (self.stamped, seq));
    }

    /// The leases held now on `ids`, to forget once an ack for them has landed.
    pub(crate) fn stamps(&self, ids: impl IntoIterator<Item = i64>) -> Vec<(i64, u64)> {
        ids.into_iter()
            .filter_map(|id| self.held.get(&id).map(|&(stamp, _)| (id, stamp)))
            .collect()
    }

    /// The lease each ack `(task, attempt)` answers: the one a failed call of the same ack
    /// answered, else the one held now (0, which no lease has, if none).
    pub(crate) fn answered(&mut self, acks: &[(i64, u32)]) -> Vec<i64> {
        acks.iter()
            .map(|key| match self.unanswered.remove(key) {
                Some(seq) => seq,
                None => self.held.get(&key.0).map_or(0, |&(_, seq)| seq),
            })
            .collect()
    }

    /// The call carrying these acks (`(task, attempt)`, the lease each answered) failed: it
    /// may be sent again.
    pub(crate) fn unanswered(&mut self, acks: Vec<((i64, u32), i64)>) {
        self.unanswered.extend(acks);
    }

    /// Forgets the leases `stamps` names, unless a newer lease on the same task replaced one.
    pub(crate) fn forget_stamped(&mut self, stamps: Vec<(i64, u64)>) {
        for (id, stamp) in stamps {
            if self.held.get(&id).map(|held| held.0) == Some(stamp) {
                self.held.remove(&id);
            }
        }
    }

    /// Forgets the leases on `ids` (released, or left to expire): the heartbeat stops
    /// extending them. Returns them: task and lease sequence.
    pub(crate) fn forget(&mut self, ids: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
        ids.into_iter()
            .filter_map(|id| self.held.remove(&id).map(|(_, seq)| (id, seq)))
            .collect()
    }

    /// The leases held, for the heartbeat to extend: task and lease sequence.
    pub(crate) fn held(&self) -> Vec<(i64, i64)> {
        self.held.iter().map(|(&id, &(_, seq))| (id, seq)).collect()
    }

    /// How many leases are held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

/// The source's leases. Only the Fetcher's thread touches them (the source's futures are not
/// `Send`).
pub(crate) type Leased = Rc<RefCell<Leases>>;

/// A row of the `fetch` statement without its last column (the next due time).
pub(crate) fn without_next_due(row: FetchedDueRow) -> FetchedRow {
    let (id, attempt, max, priority, timeout, payload, enqueued, run_at, seq, trace, key, _) = row;
    (
        id, attempt, max, priority, timeout, payload, enqueued, run_at, seq, trace, key,
    )
}

/// Fetch order: higher priority, then earlier due time, then lower id (the insert order).
pub(crate) fn sort_rows(rows: &mut [FetchedRow]) {
    rows.sort_by_key(|r| (std::cmp::Reverse(r.3), r.7, r.0));
}

/// Decodes fetched rows into tasks, holding a lease on each; rows whose payload does not
/// decode come back apart, with the decoder's error, to be buried.
pub(crate) fn decode_rows<T: serde::de::DeserializeOwned>(
    rows: Vec<FetchedRow>,
    leased: &Leased,
) -> (Vec<Task<T>>, Vec<(i64, String)>) {
    let mut tasks = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    let mut leased = leased.borrow_mut();
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    for (
        id,
        attempt,
        max_attempts,
        priority,
        timeout,
        payload,
        enqueued_at,
        run_at,
        seq,
        trace,
        key,
    ) in rows
    {
        match serde_json::from_str::<T>(&payload) {
            Ok(payload) => {
                leased.hold(id, seq);
                let mut task = Task::new(TaskId(id as u64), payload)
                    .with_attempt(attempt.clamp(1, u32::MAX as i64) as u32)
                    .with_max_attempts(max_attempts.clamp(1, u32::MAX as i64) as u32)
                    .with_priority(priority.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                    .with_enqueued_at(system_time(enqueued_at))
                    .with_timeout(
                        timeout
                            .filter(|ms| *ms > 0)
                            .map(|ms| Duration::from_millis(ms as u64)),
                    )
                    .with_key(key.map(Key::new));
                // A text that is no valid traceparent (written by hand?) only loses the link.
                task.trace = trace
                    .as_deref()
                    .and_then(TraceParent::parse)
                    .map(|tp| std::sync::Arc::new(Parent::Remote(tp)));
                #[cfg(feature = "metrics")]
                {
                    task.due_us = u64::try_from(run_at).unwrap_or(0);
                }
                tasks.push(task);
            }
            Err(e) => bad.push((id, format!("the payload does not decode: {e}"))),
        }
    }
    (tasks, bad)
}

/// A new task as the `enqueue` statement takes it: payload (JSON), priority, delay (µs), most
/// attempts, timeout (ms), W3C `traceparent` of the submitter's span, pace key.
pub(crate) type NewRow = (
    String,
    i32,
    i64,
    i32,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Encodes a batch for the `enqueue` statement.
/// The rows of `tasks`; a task without attempts gets `default_attempts`. The trace context is
/// the submitter's (a poller's submit), else the span current here (a direct enqueue); only
/// the `opentelemetry` feature has one to store.
pub(crate) fn new_rows<T: serde::Serialize>(
    tasks: &[NewTask<T>],
    default_attempts: u32,
) -> Result<Vec<NewRow>, serde_json::Error> {
    tasks
        .iter()
        .map(|t| {
            Ok((
                serde_json::to_string(&t.payload)?,
                t.priority,
                delay_us(t.run_at),
                t.max_attempts
                    .unwrap_or(default_attempts)
                    .clamp(1, i32::MAX as u32) as i32,
                timeout_ms(t.timeout),
                t.parent
                    .as_deref()
                    .map_or_else(TraceParent::current, Parent::traceparent)
                    .map(|tp| tp.to_string()),
                t.key.as_ref().map(|k| k.as_str().to_owned()),
            ))
        })
        .collect()
}

/// A wake-up signal: bumped by local enqueues, reclaimed leases and (PostgreSQL) notifications.
pub(crate) type Signal = watch::Sender<u64>;

/// A future that completes on the first bump of `signal` after this call (the receiver is
/// created now, before the read it guards, so a bump during the read is not lost).
pub(crate) fn wait_for_bump(signal: &Signal) -> impl std::future::Future<Output = ()> + 'static {
    let mut rx = signal.subscribe();
    rx.mark_unchanged();
    async move {
        if rx.changed().await.is_err() {
            // The sender is gone (the source closed): never wake for this reason.
            std::future::pending::<()>().await;
        }
    }
}

/// Wakes whoever waits on `signal`.
pub(crate) fn bump(signal: &Signal) {
    signal.send_modify(|n| *n = n.wrapping_add(1));
}

/// Retries a database operation a few times with a short backoff (a dropped connection is
/// replaced by the pool), unless the error is `permanent` (retrying cannot help); the last error
/// is returned.
pub(crate) async fn with_retries<R, E, F, Fut>(
    tries: u32,
    permanent: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<R, E>
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
            Err(e) if n < tries && !permanent(&e) => {
                tracing::debug!(error = %e, attempt = n, "database write failed; retrying");
                tokio::time::sleep(crate::retry::spread(delay, 0.2)).await;
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

    /// An ack that lands after its task was leased again forgets only the old lease.
    #[test]
    fn an_ack_forgets_only_the_lease_it_answered() {
        let mut leases = Leases::default();
        leases.hold(1, 10);
        leases.hold(2, 20);
        let acked = leases.stamps([1, 2, 3]);
        assert_eq!(acked.len(), 2, "no lease on 3");
        leases.hold(1, 11); // fetched again before the ack's reply was seen
        leases.forget_stamped(acked);
        assert_eq!(leases.held(), vec![(1, 11)], "the new lease on 1 is kept");
        assert_eq!(leases.forget([1]), vec![(1, 11)]);
        assert_eq!(leases.len(), 0);
    }

    /// An ack whose call failed (it may have been recorded, its reply lost) and that is sent
    /// again after its task was leased again answers the old lease, not the new one.
    #[test]
    fn a_replayed_ack_answers_the_lease_it_was_for() {
        let mut leases = Leases::default();
        leases.hold(1, 10);
        let first = leases.answered(&[(1, 1)]);
        assert_eq!(first, vec![10]);
        leases.unanswered(vec![((1, 1), 10)]); // the call failed
        leases.hold(1, 11); // the snooze was recorded: fetched again, same attempt
        assert_eq!(
            leases.answered(&[(1, 1)]),
            vec![10],
            "the replay: the old lease"
        );
        assert_eq!(
            leases.answered(&[(1, 1)]),
            vec![11],
            "the new run's own ack"
        );
        assert_eq!(
            leases.answered(&[(2, 1)]),
            vec![0],
            "no lease: matches nothing"
        );
    }

    #[test]
    fn stored_texts_are_bounded_and_without_nul() {
        assert_eq!(stored_text("a\0b".into()), "ab");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = stored_text(long);
        assert!(cut.len() <= MAX_ERROR_BYTES && cut.ends_with('…'));
        assert_eq!(delay(Duration::MAX), micros(FAR_FUTURE));
    }

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
        let shared = "-- name: p\nx AS (SELECT {v})\n-- name: c\nWITH {part:p}, y AS (SELECT 2)\n\
                      SELECT * FROM {part:p2};\n-- name: p2\nx\n";
        assert_eq!(
            statement(shared, "c", &[("v", "1")]).trim(),
            "WITH x AS (SELECT 1), y AS (SELECT 2)\nSELECT * FROM x;"
        );
    }
}
