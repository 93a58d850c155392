-- The statements of the SQLite dialect, one per `-- name:` section. {table} is the quoted table
-- name, {migrations} the quoted name of its migrations table. Times are microseconds since the
-- Unix epoch, computed by the caller (one machine, one clock): the argument "now" is always the
-- last one. Lists (ids, acks, new tasks) are JSON texts, read with json_each.
-- Kinds of ack: 0 completed, 1 retry, 2 snooze, 3 dead, 4 cancelled.

-- name: enqueue
-- ?1: a JSON array of [payload_json, priority, delay_us, max_attempts, timeout_ms, traceparent,
-- pace_key]; ?2: now.
INSERT INTO {table} (payload, priority, run_at, max_attempts, timeout_ms, enqueued_at, traceparent,
                     pace_key)
SELECT value ->> 0, value ->> 1, ?2 + (value ->> 2), value ->> 3, value ->> 4, ?2, value ->> 5,
       value ->> 6
FROM json_each(?1)
ORDER BY key
RETURNING id;

-- name: fetch
-- One statement: SQLite runs one writer at a time, so no two pollers lease the same row.
-- ?1: how many; ?2: owner; ?3: lease (µs); ?4: now. The last column is NULL: the source asks
-- next_due after a short batch (the dialect's FETCH_NEXT_DUE is false).
-- The due rows are read per priority when the queued rows have at most 16 distinct priorities
-- (issue 14), as in the PostgreSQL dialect: `_due` leads with `priority`, so a scan in fetch
-- order cannot stop at a priority's first delayed row, and a fetch finding fewer due rows than
-- it asks for (every wake-up of an idle queue) read every delayed row's entry (200 000
-- delayed: 23 ms). `prio`: the queued priorities, highest first, one index probe each, at most
-- 17. With at most 16, each priority's due range (`priority IN (…) AND run_at <= now`): SQLite
-- walks the list in index order, so the batch comes out in fetch order with no sort. With more,
-- the scan in fetch order (a probe per priority on every fetch would cost more than it saves).
-- Each arm runs only in its case: its LIMIT is 0 in the other, and SQLite tests the limit
-- before the loop (a condition in WHERE would be tested on every row the scan visits). Both
-- read `_due` (INDEXED BY): with statistics taken while many rows were due, SQLite's planner
-- chose `_next` for the fallback, reading every due row and sorting them for one batch.
WITH RECURSIVE prio (priority, n) AS (
    SELECT (SELECT priority FROM {table} WHERE state = 'queued' ORDER BY priority DESC LIMIT 1), 1
    UNION ALL
    SELECT (SELECT q.priority FROM {table} q WHERE q.state = 'queued' AND q.priority < p.priority
            ORDER BY q.priority DESC LIMIT 1), p.n + 1
    FROM prio p WHERE p.priority IS NOT NULL AND p.n <= 16
),
levels AS MATERIALIZED (SELECT priority FROM prio WHERE priority IS NOT NULL)
UPDATE {table}
SET state = 'running', attempt = attempt + 1, lease_owner = ?2, lease_until = ?4 + ?3,
    lease_seq = lease_seq + 1, leased_at = ?4
WHERE id IN (
    SELECT id FROM (
        SELECT id FROM {table} INDEXED BY "{name}_due"
        WHERE state = 'queued' AND run_at <= ?4 AND priority IN (SELECT priority FROM levels)
        ORDER BY priority DESC, run_at, id
        LIMIT CASE WHEN (SELECT count(*) FROM levels) <= 16 THEN ?1 ELSE 0 END
    )
    UNION ALL
    SELECT id FROM (
        SELECT id FROM {table} INDEXED BY "{name}_due"
        WHERE state = 'queued' AND run_at <= ?4
        ORDER BY priority DESC, run_at, id
        LIMIT CASE WHEN (SELECT count(*) FROM levels) > 16 THEN ?1 ELSE 0 END
    )
)
RETURNING id, attempt, max_attempts, priority, timeout_ms, payload, enqueued_at, run_at,
          lease_seq, traceparent, pace_key, NULL;

-- name: next_due
-- Microseconds from now (?1) to the earliest queued task (negative: overdue).
SELECT min(run_at) - ?1 FROM {table} WHERE state = 'queued';

-- name: ack
-- ?1: a JSON array of [id, attempt, kind, after_us, error, lease_seq]; ?2: owner; ?3: now.
-- An ack counts only for the lease it answers (same owner, same attempt, still running): an
-- ack that comes after the lease expired and another worker took the task changes nothing.
WITH a (id, attempt, kind, after_us, error, seq) AS (
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5
    FROM json_each(?1)
)
UPDATE {table} AS t
SET state = CASE a.kind
        WHEN 0 THEN 'completed' WHEN 1 THEN 'queued' WHEN 2 THEN 'queued'
        WHEN 3 THEN 'dead' ELSE 'cancelled' END,
    run_at = CASE WHEN a.kind IN (1, 2) THEN ?3 + a.after_us ELSE t.run_at END,
    attempt = CASE WHEN a.kind = 2 THEN t.attempt - 1 ELSE t.attempt END,
    finished_at = CASE WHEN a.kind IN (0, 3, 4) THEN ?3 END,
    last_error = coalesce(a.error, t.last_error),
    expiries = 0,
    lease_owner = NULL,
    lease_until = NULL
FROM a
WHERE t.id = a.id AND t.lease_seq = a.seq AND t.attempt = a.attempt AND t.state = 'running'
  AND t.lease_owner = ?2;

-- name: ack_completed
-- The acks of completed tasks, the usual case, apart (issue 14): only what they need, as
-- [id, lease_seq] pairs, two values to read from each instead of six, and no per-row CASE.
-- The lease sequence identifies the lease (its attempt cannot change while it runs). ?1: a
-- JSON array of [id, lease_seq]; ?2: owner; ?3: now.
WITH a (id, seq) AS (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
UPDATE {table} AS t
SET state = 'completed', finished_at = ?3, expiries = 0, lease_owner = NULL, lease_until = NULL
FROM a
WHERE t.id = a.id AND t.lease_seq = a.seq AND t.state = 'running' AND t.lease_owner = ?2;

-- name: extend
-- ?1: a JSON array of [id, lease_seq]; ?2: owner; ?3: lease (µs); ?4: now.
UPDATE {table} SET lease_until = ?4 + ?3
WHERE (id, lease_seq) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
  AND lease_owner = ?2 AND state = 'running';

-- name: reclaim
-- Leases that expired: their worker died or stalled, maybe before the task started (queued
-- ahead at an executor, prefetched). The attempt the fetch counted is given back; the expiry is
-- counted instead, and a task whose leases expired ?1 times in a row (no ack recorded between)
-- is dead: its worker dies each time it holds it. ?1: most expiries; ?2: now.
UPDATE {table}
SET state = CASE WHEN expiries + 1 >= ?1 THEN 'dead' ELSE 'queued' END,
    finished_at = CASE WHEN expiries + 1 >= ?1 THEN ?2 END,
    attempt = max(attempt - 1, 0),
    expiries = expiries + 1,
    last_error = CASE WHEN expiries + 1 >= ?1
        THEN 'lease expired ' || (expiries + 1) || ' times in a row: the worker died or stalled each time it held the task'
        ELSE 'lease expired: the worker died or stalled' END,
    lease_owner = NULL,
    lease_until = NULL
WHERE id IN (
    SELECT id FROM {table} WHERE state = 'running' AND lease_until < ?2 LIMIT 1000
)
RETURNING state;

-- name: prune
-- ?1: retention (µs); ?2: at most this many; ?3: now.
DELETE FROM {table} WHERE id IN (
    SELECT id FROM {table}
    WHERE state IN ('completed', 'cancelled') AND finished_at < ?3 - ?1
    LIMIT ?2
);

-- name: prune_dead
-- ?1: retention (µs); ?2: at most this many; ?3: now.
DELETE FROM {table} WHERE id IN (
    SELECT id FROM {table} WHERE state = 'dead' AND finished_at < ?3 - ?1 LIMIT ?2
);

-- name: release
-- Fetched, never started: back to the queue, the attempt not counted.
-- ?1: a JSON array of [id, lease_seq]; ?2: owner.
UPDATE {table}
SET state = 'queued', attempt = attempt - 1, lease_owner = NULL, lease_until = NULL
WHERE (id, lease_seq) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
  AND lease_owner = ?2 AND state = 'running';

-- name: bury
-- A row whose payload does not decode. ?1: id; ?2: error; ?3: owner; ?4: now.
UPDATE {table}
SET state = 'dead', finished_at = ?4, last_error = ?2, lease_owner = NULL, lease_until = NULL
WHERE id = ?1 AND lease_owner = ?3 AND state = 'running';

-- name: notify
-- SQLite has no notifications (the dialect wakes its own poller); never run.
SELECT 1;

-- name: cancel
-- ?1: id; ?2: now.
UPDATE {table} SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 AND state = 'queued';

-- name: dead_list
SELECT id, attempt, coalesce(last_error, ''), coalesce(finished_at, 0)
FROM {table} WHERE state = 'dead'
ORDER BY finished_at DESC, id DESC
LIMIT ?1;

-- name: final_states
-- ?1: a JSON array of ids.
SELECT id, state, attempt, last_error FROM {table}
WHERE id IN (SELECT value FROM json_each(?1)) AND state IN ('completed', 'dead', 'cancelled');

-- name: status
-- One task, any state; times in µs since the Unix epoch, with now. ?1: id; ?2: now.
SELECT id, state, attempt, max_attempts, last_error, run_at, enqueued_at, finished_at, leased_at,
       ?2, pace_key
FROM {table} WHERE id = ?1;

-- name: counts
-- Tasks by state, in one statement: each count reads one partial index (queued, running, dead);
-- the oldest due task's age (µs; NULL when none is due) is one lookup at the start of the
-- queued run_at index. ?1: now.
SELECT (SELECT count(*) FROM {table} WHERE state = 'queued' AND run_at <= ?1),
       (SELECT count(*) FROM {table} WHERE state = 'queued' AND run_at > ?1 AND attempt = 0),
       (SELECT count(*) FROM {table} WHERE state = 'queued' AND run_at > ?1 AND attempt > 0),
       (SELECT count(*) FROM {table} WHERE state = 'running'),
       (SELECT count(*) FROM {table} WHERE state = 'dead'),
       (SELECT ?1 - min(run_at) FROM {table} WHERE state = 'queued' AND run_at <= ?1);

-- name: dead_rerun
UPDATE {table}
SET state = 'queued', attempt = 0, run_at = ?2, finished_at = NULL, last_error = NULL
WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'dead'
RETURNING id;

-- name: dead_purge
DELETE FROM {table} WHERE state = 'dead' AND id IN (SELECT value FROM json_each(?1));

-- name: dead_purge_all
DELETE FROM {table} WHERE state = 'dead';

-- name: migrate_begin
-- One writer from here on: two processes starting together do not both migrate.
BEGIN IMMEDIATE

-- name: migrate_lock
-- BEGIN IMMEDIATE took the lock.
SELECT 1;

-- name: migrations_table
CREATE TABLE IF NOT EXISTS {migrations} (
    version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at INTEGER NOT NULL
);

-- name: migrations_applied
SELECT version FROM {migrations};

-- name: migration_record
-- ?1: version; ?2: description; ?3: now.
INSERT INTO {migrations} (version, description, applied_at) VALUES (?1, ?2, ?3);
