//! What the SQLite and PostgreSQL sources do alike, compiled once for both (when either feature
//! is on). The helpers here take the database's statements as closures or futures, so they need
//! no generics over `sqlx`'s database types. The small helpers are in `sql/common.rs` (module
//! `sql_common`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{EnqueueResult, Fetched, NewTask, WakeOn};
use crate::error::{SourceError, SubmitError};
use crate::task::{DeadTask, Task, TaskId};

/// The setters both configs have: the same fields (`table`, `lease`, `poll_interval`,
/// `poll_jitter`, `retention`, `migrate`, `batch`, `max_connections`), clamping and docs. The
/// docs of `poll_interval` and `max_connections` tell each source's defaults, so the caller
/// writes them.
macro_rules! config_setters {
    (
        $(#[$poll_interval_doc:meta])*
        fn poll_interval;
        $(#[$max_connections_doc:meta])*
        fn max_connections;
    ) => {
        /// The table's name: a plain identifier (letters, digits, `_`; at most 48 bytes).
        pub fn table(mut self, table: impl Into<String>) -> Self {
            self.table = table.into();
            self
        }

        /// How long a fetched task stays leased to this poller without a heartbeat (default 30 s).
        /// The heartbeat runs every third of it. A task whose worker died runs again about this
        /// long after.
        pub fn lease(mut self, lease: ::std::time::Duration) -> Self {
            self.lease = lease.max(::std::time::Duration::from_millis(30));
            self
        }

        $(#[$poll_interval_doc])*
        pub fn poll_interval(mut self, every: ::std::time::Duration) -> Self {
            self.poll_interval = every.max(::std::time::Duration::from_millis(1));
            self
        }

        /// The poll's jitter, a fraction of the interval (default 0.2; clamped to `0.0..=1.0`).
        pub fn poll_jitter(mut self, jitter: f64) -> Self {
            self.poll_jitter = if jitter.is_finite() {
                jitter.clamp(0.0, 1.0)
            } else {
                0.0
            };
            self
        }

        /// How long completed and cancelled tasks are kept before the heartbeat prunes them
        /// (default 24 h; `None`: kept forever). Dead tasks are always kept.
        pub fn completed_retention(mut self, retention: Option<::std::time::Duration>) -> Self {
            self.retention = retention;
            self
        }

        /// Whether to apply the crate's migrations at start (default `true`).
        pub fn migrate(mut self, migrate: bool) -> Self {
            self.migrate = migrate;
            self
        }

        /// The most tasks one fetch leases (default 1 000, at least 1).
        pub fn batch(mut self, batch: usize) -> Self {
            self.batch = batch.max(1);
            self
        }

        $(#[$max_connections_doc])*
        pub fn max_connections(mut self, n: u32) -> Self {
            self.max_connections = n.max(1);
            self
        }
    };
}
pub(crate) use config_setters;

/// Declares `Sql`, a source's statements rendered once for the configured table: a `String`
/// field for each `-- name:` section of its SQL file, named as the section, and
/// `Sql::render(section)`, which renders each field from its section's name.
macro_rules! statements {
    ($($name:ident),+ $(,)?) => {
        /// The statements, rendered once for the configured table.
        #[derive(Debug)]
        struct Sql {
            $($name: String,)+
        }

        impl Sql {
            /// Each statement, from `section(its name)`.
            fn render(section: impl Fn(&str) -> String) -> Self {
                Sql {
                    $($name: section(stringify!($name)),)+
                }
            }
        }
    };
}
pub(crate) use statements;

/// A migration: version, description, SQL.
pub(crate) type Migration = (i64, &'static str, &'static str);

/// The migrations of `all` not yet `applied`, in order; `Err((found, known))` when the database
/// holds a version newer than any in `all` (migrated by a newer version of the crate).
pub(crate) fn pending_migrations<'m>(
    all: &'m [Migration],
    applied: &HashSet<i64>,
) -> Result<Vec<&'m Migration>, (i64, i64)> {
    let known = all.iter().map(|m| m.0).max().unwrap_or(0);
    if let Some(found) = applied.iter().copied().filter(|v| *v > known).max() {
        return Err((found, known));
    }
    Ok(all.iter().filter(|m| !applied.contains(&m.0)).collect())
}

/// Task ids as the tables store them.
pub(crate) fn raw_ids(ids: &[TaskId]) -> Vec<i64> {
    ids.iter().map(|id| id.0 as i64).collect()
}

/// Stored ids as task ids, in ascending order.
pub(crate) fn sorted_ids(mut ids: Vec<i64>) -> Vec<TaskId> {
    ids.sort_unstable();
    ids.into_iter().map(|id| TaskId(id as u64)).collect()
}

/// Forgets leases this source no longer holds (acked or released): the heartbeat stops
/// extending them.
pub(crate) fn forget(leased: &RefCell<HashSet<i64>>, ids: impl IntoIterator<Item = i64>) {
    let mut leased = leased.borrow_mut();
    for id in ids {
        leased.remove(&id);
    }
}

/// [`Source::enqueue`](super::Source::enqueue): `encode`s the batch and `insert`s it; if either
/// fails, hands the whole batch back with the reason.
pub(crate) async fn enqueue_or_hand_back<T, B, F>(
    tasks: Vec<NewTask<T>>,
    encode: impl FnOnce(&[NewTask<T>]) -> Result<B, serde_json::Error>,
    insert: impl FnOnce(B) -> F,
) -> EnqueueResult<T>
where
    F: Future<Output = Result<Vec<TaskId>, sqlx::Error>>,
{
    let batch = match encode(&tasks) {
        Ok(b) => b,
        Err(error) => {
            tracing::error!(%error, "a payload does not encode as JSON; batch refused");
            return Err(SubmitError::Source {
                task: tasks.into_iter().map(|t| t.payload).collect(),
                error: SourceError(format!("a payload does not encode as JSON: {error}")),
            });
        }
    };
    match insert(batch).await {
        Ok(ids) => Ok(ids),
        Err(error) => {
            tracing::error!(%error, "enqueue failed; batch handed back");
            Err(SubmitError::Source {
                task: tasks.into_iter().map(|t| t.payload).collect(),
                error: SourceError(format!("enqueue failed: {error}")),
            })
        }
    }
}

/// The end of a fetch: `bury` marks each row whose payload did not decode dead with the
/// decoder's error, then the answer says when to fetch again: at once after a full or non-empty
/// fetch, else at the next due time (`next_wait_us`, µs from now, run only then) or after the
/// jittered `poll`, whichever comes first, or on `signal`.
pub(crate) async fn after_fetch<T, R, B>(
    tasks: Vec<Task<T>>,
    bad: Vec<(i64, String)>,
    full: bool,
    poll: Duration,
    signal: impl Future<Output = ()> + 'static,
    mut bury: impl FnMut(i64, String) -> B,
    next_wait_us: impl Future<Output = Result<Option<i64>, sqlx::Error>>,
) -> Fetched<T>
where
    B: Future<Output = Result<R, sqlx::Error>>,
{
    let buried = !bad.is_empty();
    for (id, error) in bad {
        tracing::error!(task = id, %error, "a task's payload does not decode; it is dead");
        if let Err(e) = bury(id, error).await {
            // Its lease expires and it is tried again later.
            tracing::error!(task = id, error = %e, "could not mark the task dead");
        }
    }
    // Some tasks: hand them over now and ask again at once, rather than delay them by
    // a query for the next due time (the next fetch, if empty, makes it).
    if full || !tasks.is_empty() || buried {
        return Fetched::new(tasks, WakeOn::after(Duration::ZERO));
    }
    let next = next_wait_us.await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "next due time unknown; polling");
        None
    });
    let mut at = Instant::now() + poll;
    if let Some(wait_us) = next {
        // A due row another poller is leasing right now: look again shortly.
        let wait = Duration::from_micros(wait_us.max(0) as u64).max(Duration::from_millis(5));
        at = at.min(Instant::now() + wait);
    }
    Fetched::new(tasks, WakeOn::at(at).or_signal(signal))
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

/// Prunes finished rows: `round` deletes at most `batch` rows and says how many it deleted;
/// rounds run until one deletes fewer, at most `rounds` of them, so one heartbeat stays short.
pub(crate) async fn prune<F>(
    batch: i64,
    rounds: usize,
    mut round: impl FnMut() -> F,
) -> Result<(), sqlx::Error>
where
    F: Future<Output = Result<u64, sqlx::Error>>,
{
    for _ in 0..rounds {
        if round().await? < batch as u64 {
            break;
        }
    }
    Ok(())
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
