-- The statements of the PostgreSQL dialect, one per `-- name:` section. {table} is the
-- schema-qualified table, {channel} the LISTEN/NOTIFY channel. Times come from the server's clock
-- (now()), so workers on several machines agree; durations are bound as microseconds. Lists
-- are arrays; integers come back as bigint.
-- Kinds of ack: 0 completed, 1 retry, 2 snooze, 3 dead, 4 cancelled.

-- name: enqueue
-- One statement for the whole batch. The insert trigger notifies the listeners on commit.
INSERT INTO {table} (payload, priority, run_at, max_attempts, timeout_ms, traceparent, pace_key)
SELECT u.payload::jsonb, u.priority, now() + u.delay_us * interval '1 microsecond',
       u.max_attempts, u.timeout_ms, u.traceparent, u.pace_key
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[], $6::text[], $7::text[])
     WITH ORDINALITY AS u (payload, priority, delay_us, max_attempts, timeout_ms, traceparent,
                           pace_key, ord)
ORDER BY u.ord
RETURNING id;

-- name: queued_priorities
-- A part of `fetch` and `fetch_paced` (`{part:queued_priorities}`), two common table
-- expressions of a `WITH RECURSIVE`: `prio`, the queued priorities, lowest first, by a loose scan
-- of `_due` (one probe per priority, landing on its latest entry, not on the dead entries at its
-- head), at most 17; `levels.p`, those priorities as an array.
prio (priority, n) AS (
    SELECT (SELECT priority FROM {table} WHERE state = 'queued' ORDER BY priority LIMIT 1), 1
    UNION ALL
    SELECT (SELECT q.priority FROM {table} q WHERE q.state = 'queued' AND q.priority > p.priority
            ORDER BY q.priority LIMIT 1), p.n + 1
    FROM prio p WHERE p.priority IS NOT NULL AND p.n <= 16
),
levels AS (SELECT ARRAY(SELECT priority FROM prio WHERE priority IS NOT NULL) AS p)

-- name: fetch
-- Leases up to $1 due tasks: rows another worker is leasing right now are skipped, not waited
-- for. $2: owner; $3: lease in microseconds. `= ANY(ARRAY(…))` makes the update find its rows
-- by primary key, however many finished rows the table holds (a join may scan it all).
-- `LIMIT (SELECT $1)`: the planner does not see the batch size, so it reads the due index in
-- fetch order and stops, whatever the statistics say. Seeing `LIMIT 2000` on a table not yet
-- analyzed (a burst of fresh tasks), it sorted every queued row instead, spilling to disk:
-- three times slower.
-- The last column: on a short batch (fewer than $1 rows), microseconds from now to the earliest
-- queued task this fetch left (negative: overdue, e.g. a row another worker is leasing right
-- now; NULL: none), so the source needs no follow-up fetch and next-due query to know when to
-- look again (issue 14). In the statement's snapshot the claimed rows are still queued: they
-- are left out by id. Computed once (an InitPlan), and only when the batch is short.
-- The due rows are read per priority when the queued rows have at most 16 distinct priorities
-- (issue 14): `_due` leads with `priority`, so a scan in fetch order cannot stop at a
-- priority's first delayed row, and a fetch finding fewer due rows than it asks for (every
-- wake-up of an idle queue) read every delayed row's entry (200 000 delayed: 1 039 buffers,
-- 11 ms). `levels`: the queued priorities, at most 17 (`queued_priorities`).
-- `few`: with at most 16, each priority's due range (`priority = ANY(…) AND run_at <= now()`),
-- in fetch order. `many`: with more, the scan in fetch order (a probe per priority on every
-- fetch would cost more than it saves). Each runs only in its case (a one-time filter).
WITH RECURSIVE {part:queued_priorities},
few AS (
    SELECT id FROM {table}
    WHERE (SELECT cardinality(p) FROM levels) <= 16
      AND state = 'queued' AND run_at <= now()
      AND priority = ANY((SELECT p FROM levels)::int[])
    ORDER BY priority DESC, run_at, id
    LIMIT (SELECT $1::bigint)
    FOR UPDATE SKIP LOCKED
),
many AS (
    SELECT id FROM {table}
    WHERE (SELECT cardinality(p) FROM levels) > 16
      AND state = 'queued' AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT (SELECT $1::bigint)
    FOR UPDATE SKIP LOCKED
),
picked AS (SELECT id FROM few UNION ALL SELECT id FROM many),
claimed AS (
    UPDATE {table} AS t
    SET state = 'running', attempt = t.attempt + 1, lease_owner = $2,
        lease_seq = t.lease_seq + 1, lease_until = now() + $3 * interval '1 microsecond',
        leased_at = now()
    WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING t.id, t.attempt::bigint, t.max_attempts::bigint, t.priority::bigint, t.timeout_ms,
              t.payload::text,
              (extract(epoch FROM t.enqueued_at) * 1000000)::bigint,
              (extract(epoch FROM t.run_at) * 1000000)::bigint, t.lease_seq, t.traceparent,
              t.pace_key
)
SELECT c.*,
       CASE WHEN (SELECT count(*) FROM claimed) < $1::bigint THEN
           (SELECT (extract(epoch FROM min(q.run_at) - now()) * 1000000)::bigint
            FROM {table} q
            WHERE q.state = 'queued' AND q.lease_owner IS NULL
              AND q.id <> ALL(ARRAY(SELECT id FROM claimed)))
       END
FROM claimed c;

-- name: pace_lock
-- Queue-wide pace (PgConfig::queue_pace): opens the claim's transaction (one round trip) and
-- locks the queue's pace row until the claim commits, so claims run one at a time and each
-- one's statement (a fresh snapshot in READ COMMITTED) sees every claim committed before it. In
-- the same statement as the claim, the snapshot would be taken before the wait and miss them.
BEGIN; SELECT 1 FROM {pace} WHERE kind = 0 AND pace_key = '' FOR UPDATE;

-- name: fetch_paced
-- The claim under queue-wide pace, after `pace_lock`. $1: most tasks; $2: owner; $3: lease
-- (µs). The limits are the queue's, read from its row of {pace} under the lock (migration 9):
-- `key_limit`, most running tasks per key (NULL: no limit); `rate_interval_us` and `rate_burst`,
-- the global rate's emission interval and burst (NULL: no rate). So every poller claims under
-- the stored pace, whatever it was configured with, and a replaced pace holds at the next claim.
-- The clock is clock_timestamp() (now() is the transaction's start, before the lock was
-- granted): claims are serialized, so their clocks are in order.
-- A task of a paused key, or of a key with `key_limit` tasks running (leased: in any process,
-- claimed and not yet acked; an expired lease's task is reclaimed, so a killed process's count
-- comes back), is skipped, not waited for: the tasks behind it are claimed (no head-of-line
-- blocking). The global rate takes at most as many as its GCRA allows now, and moves its tat.
-- The keys to skip are read once (`NOT IN` a small set: a hashed lookup per row); no key is
-- NULL in either set. The candidates are read per priority (`few`) or in fetch order (`many`),
-- as in `fetch` (issue 14): a short claim does not read every delayed row's entry.
WITH RECURSIVE clock AS (SELECT clock_timestamp() AS now),
q AS (
    SELECT p.paused_until, greatest(coalesce(p.tat, c.now), c.now) AS tat, c.now,
           coalesce(p.key_limit, 0) AS key_limit, coalesce(p.rate_interval_us, 0) AS step,
           greatest(coalesce(p.rate_burst, 1), 1) AS burst
    FROM {pace} p, clock c WHERE p.kind = 0 AND p.pace_key = ''
),
allowance AS (
    SELECT CASE
        WHEN q.paused_until > q.now THEN 0
        WHEN q.step <= 0 THEN $1::bigint
        ELSE least($1::bigint, greatest(0, floor(
            q.burst - (extract(epoch FROM q.tat - q.now) * 1000000) / q.step)))::bigint
    END AS n
    FROM q
),
running AS (
    SELECT pace_key, count(*) AS n FROM {table}
    WHERE state = 'running' AND pace_key IS NOT NULL
      AND coalesce((SELECT key_limit FROM q), 0) > 0
    GROUP BY pace_key
),
held AS (
    SELECT r.pace_key FROM running r, q WHERE r.n >= q.key_limit
    UNION ALL
    SELECT p.pace_key FROM {pace} p, clock c WHERE p.kind = 1 AND p.paused_until > c.now
),
{part:queued_priorities},
few AS (
    SELECT t.id, t.pace_key, t.priority, t.run_at
    FROM {table} t
    WHERE (SELECT cardinality(p) FROM levels) <= 16
      AND t.state = 'queued' AND t.run_at <= now()
      AND t.priority = ANY((SELECT p FROM levels)::int[])
      AND (t.pace_key IS NULL OR t.pace_key NOT IN (SELECT pace_key FROM held))
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT (SELECT 2 * $1::bigint)
    FOR UPDATE SKIP LOCKED
),
many AS (
    SELECT t.id, t.pace_key, t.priority, t.run_at
    FROM {table} t
    WHERE (SELECT cardinality(p) FROM levels) > 16
      AND t.state = 'queued' AND t.run_at <= now()
      AND (t.pace_key IS NULL OR t.pace_key NOT IN (SELECT pace_key FROM held))
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT (SELECT 2 * $1::bigint)
    FOR UPDATE SKIP LOCKED
),
candidates AS (SELECT * FROM few UNION ALL SELECT * FROM many),
ranked AS (
    SELECT c.id, c.pace_key, c.priority, c.run_at, coalesce(r.n, 0) AS running,
           row_number() OVER (PARTITION BY c.pace_key ORDER BY c.priority DESC, c.run_at, c.id)
               AS rn
    FROM candidates c LEFT JOIN running r ON r.pace_key = c.pace_key
),
picked AS (
    SELECT id FROM ranked, q
    WHERE pace_key IS NULL OR q.key_limit <= 0 OR rn + running <= q.key_limit
    ORDER BY priority DESC, run_at, id
    LIMIT coalesce((SELECT n FROM allowance), 0)
),
claimed AS (
    UPDATE {table} AS t
    SET state = 'running', attempt = t.attempt + 1, lease_owner = $2, lease_seq = t.lease_seq + 1,
        lease_until = (SELECT now FROM clock) + $3 * interval '1 microsecond',
        leased_at = (SELECT now FROM clock)
    WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING t.id, t.attempt::bigint, t.max_attempts::bigint, t.priority::bigint, t.timeout_ms,
              t.payload::text,
              (extract(epoch FROM t.enqueued_at) * 1000000)::bigint,
              (extract(epoch FROM t.run_at) * 1000000)::bigint, t.lease_seq, t.traceparent,
              t.pace_key
),
rate AS (
    UPDATE {pace} SET tat = (SELECT tat FROM q)
        + (SELECT count(*) FROM claimed) * (SELECT step FROM q) * interval '1 microsecond'
    WHERE kind = 0 AND pace_key = '' AND (SELECT step FROM q) > 0
)
SELECT * FROM claimed;

-- name: pace_declare
-- At open, a poller configured with a queue pace (PgConfig::queue_pace) stores it as the
-- queue's when the queue has none, or ($6 = 1, PgConfig::replace_queue_pace) always. $1: the
-- rate's n; $2: its period (µs); $3: its burst; $4: its emission interval (µs); $5: the key
-- limit; 0 for none. Alone in its transaction: a declare racing another waits for the row,
-- then sees it set and leaves it (the `pace_read` after it shows the winner's).
INSERT INTO {pace} (kind, pace_key, paced, rate_n, rate_per_us, rate_burst, rate_interval_us,
                    key_limit)
VALUES (0, '', true, nullif($1::bigint, 0), nullif($2::bigint, 0), nullif($3::bigint, 0),
        nullif($4::bigint, 0), nullif($5::bigint, 0))
ON CONFLICT (kind, pace_key) DO UPDATE
SET paced = true, rate_n = EXCLUDED.rate_n, rate_per_us = EXCLUDED.rate_per_us,
    rate_burst = EXCLUDED.rate_burst, rate_interval_us = EXCLUDED.rate_interval_us,
    key_limit = EXCLUDED.key_limit
WHERE NOT {pace}.paced OR $6::bigint = 1;

-- name: pace_read
-- The queue's stored pace: whether it has one, the rate's n, period (µs) and burst, the key
-- limit (NULL: none).
SELECT paced, rate_n, rate_per_us, rate_burst, key_limit
FROM {pace} WHERE kind = 0 AND pace_key = '';

-- name: next_due_paced
-- As next_due, under queue-wide pace: not before the queue's pause ends.
SELECT (extract(epoch FROM greatest(
            (SELECT min(run_at) FROM {table} WHERE state = 'queued' AND lease_owner IS NULL),
            (SELECT paused_until FROM {pace}
             WHERE kind = 0 AND pace_key = '' AND paused_until > now()))
        - now()) * 1000000)::bigint;

-- name: pace_pause
-- Pauses a scope ($1 kind: 0 the queue, 1 a key; $2 the key, '' for the queue) for $3 µs
-- (-1: until resumed). Pauses add up to the longest.
INSERT INTO {pace} (kind, pace_key, paused_until)
VALUES ($1::smallint, $2,
        CASE WHEN $3::bigint < 0 THEN 'infinity'::timestamptz
             ELSE clock_timestamp() + $3::bigint * interval '1 microsecond' END)
ON CONFLICT (kind, pace_key) DO UPDATE
SET paused_until = greatest(
    CASE WHEN {pace}.paused_until > clock_timestamp() THEN {pace}.paused_until END,
    EXCLUDED.paused_until);

-- name: pace_resume
-- Ends a scope's pause ($1 kind, $2 key).
UPDATE {pace} SET paused_until = NULL WHERE kind = $1::smallint AND pace_key = $2;

-- name: next_due
-- Microseconds from now to the earliest queued task (negative: overdue). `lease_owner IS NULL`
-- (true of every queued row) lets it read `_next` (migration 11).
SELECT (extract(epoch FROM min(run_at) - now()) * 1000000)::bigint
FROM {table} WHERE state = 'queued' AND lease_owner IS NULL;

-- name: ack
-- One statement per batch. An ack counts only for the lease it answers (same owner, same
-- lease, still running). $6: lease sequences; $7: owner. The arrays are read through `(SELECT $n)`: not knowing
-- their length, the planner looks each ack's row up by primary key (a nested loop from the
-- acks), which is right for any batch and any table. Knowing it, it may scan the whole table
-- for a large batch; and (with the old lease index, see migration 2) trusting statistics that
-- saw few running rows, it scanned every running row for every ack.
UPDATE {table} AS t
SET state = CASE a.kind
        WHEN 0 THEN 'completed' WHEN 1 THEN 'queued' WHEN 2 THEN 'queued'
        WHEN 3 THEN 'dead' ELSE 'cancelled' END,
    run_at = CASE WHEN a.kind IN (1, 2) THEN now() + a.after_us * interval '1 microsecond'
             ELSE t.run_at END,
    attempt = CASE WHEN a.kind = 2 THEN t.attempt - 1 ELSE t.attempt END,
    finished_at = CASE WHEN a.kind IN (0, 3, 4) THEN now() END,
    last_error = coalesce(a.error, t.last_error),
    expiries = 0,
    lease_owner = NULL,
    lease_until = NULL
FROM unnest((SELECT $1::bigint[]), (SELECT $2::int[]), (SELECT $3::smallint[]),
            (SELECT $4::bigint[]), (SELECT $5::text[]), (SELECT $6::bigint[]))
     AS a (id, attempt, kind, after_us, error, seq)
WHERE t.id = a.id AND t.lease_seq = a.seq AND t.attempt = a.attempt AND t.state = 'running'
  AND t.lease_owner = $7;

-- name: ack_completed
-- The acks of completed tasks, the usual case, apart (issue 14): two arrays to bind and read
-- instead of six, no per-row CASE. The lease sequence identifies the lease (its attempt cannot
-- change while it runs). $1: ids; $2: their lease sequences; $3: owner. Arrays read through
-- `(SELECT $n)`, as in ack.
UPDATE {table} AS t
SET state = 'completed', finished_at = now(), expiries = 0, lease_owner = NULL,
    lease_until = NULL
FROM unnest((SELECT $1::bigint[]), (SELECT $2::bigint[])) AS a (id, seq)
WHERE t.id = a.id AND t.lease_seq = a.seq AND t.state = 'running' AND t.lease_owner = $3;

-- name: extend
-- $1: ids; $2: their lease sequences; $3: owner; $4: lease in microseconds.
UPDATE {table} AS t SET lease_until = now() + $4 * interval '1 microsecond'
FROM unnest((SELECT $1::bigint[]), (SELECT $2::bigint[])) AS l (id, seq)
WHERE t.id = l.id AND t.lease_seq = l.seq AND t.lease_owner = $3 AND t.state = 'running';

-- name: reclaim
-- Leases that expired: their worker died or stalled, maybe before the task started (queued
-- ahead at an executor, prefetched). The attempt the fetch counted is given back; the expiry is
-- counted instead, and a task whose leases expired $1 times in a row (no ack recorded between)
-- is dead: its worker dies each time it holds it. $1: most expiries.
UPDATE {table}
SET state = CASE WHEN expiries + 1 >= $1 THEN 'dead' ELSE 'queued' END,
    finished_at = CASE WHEN expiries + 1 >= $1 THEN now() END,
    attempt = greatest(attempt - 1, 0),
    expiries = expiries + 1,
    last_error = CASE WHEN expiries + 1 >= $1
        THEN 'lease expired ' || (expiries + 1) || ' times in a row: the worker died or stalled each time it held the task'
        ELSE 'lease expired: the worker died or stalled' END,
    lease_owner = NULL,
    lease_until = NULL
WHERE id = ANY(ARRAY(
    SELECT id FROM {table} WHERE state = 'running' AND lease_until < now()
    LIMIT 1000 FOR UPDATE SKIP LOCKED
))
RETURNING state;

-- name: prune
-- $1: retention in microseconds; $2: at most this many.
DELETE FROM {table} WHERE id = ANY(ARRAY(
    SELECT id FROM {table}
    WHERE state IN ('completed', 'cancelled')
      AND finished_at < now() - $1 * interval '1 microsecond'
    LIMIT $2
));

-- name: prune_dead
-- $1: retention in microseconds; $2: at most this many.
DELETE FROM {table} WHERE id = ANY(ARRAY(
    SELECT id FROM {table}
    WHERE state = 'dead' AND finished_at < now() - $1 * interval '1 microsecond'
    LIMIT $2
));

-- name: release
-- Fetched, never started: back to the queue, the attempt not counted. $1: ids; $2: their
-- lease sequences; $3: owner.
UPDATE {table} AS t
SET state = 'queued', attempt = t.attempt - 1, lease_owner = NULL, lease_until = NULL
FROM unnest((SELECT $1::bigint[]), (SELECT $2::bigint[])) AS l (id, seq)
WHERE t.id = l.id AND t.lease_seq = l.seq AND t.lease_owner = $3 AND t.state = 'running';

-- name: bury
-- A row whose payload does not decode. $1: id; $2: error; $3: owner.
UPDATE {table}
SET state = 'dead', finished_at = now(), last_error = $2, lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $3 AND state = 'running';

-- name: notify
SELECT pg_notify('{channel}', '');

-- name: cancel
UPDATE {table} SET state = 'cancelled', finished_at = now() WHERE id = $1 AND state = 'queued';

-- name: dead_list
SELECT id, attempt::bigint, coalesce(last_error, ''),
       (extract(epoch FROM coalesce(finished_at, now())) * 1000000)::bigint
FROM {table} WHERE state = 'dead'
ORDER BY finished_at DESC, id DESC
LIMIT $1;

-- name: final_states
-- $1: ids.
SELECT id, state, attempt::bigint, last_error FROM {table}
WHERE id = ANY($1) AND state IN ('completed', 'dead', 'cancelled');

-- name: status
-- One task, any state; times in µs since the Unix epoch, with the server's now. $1: id.
SELECT id, state, attempt::bigint, max_attempts::bigint, last_error,
       (extract(epoch FROM run_at) * 1000000)::bigint,
       (extract(epoch FROM enqueued_at) * 1000000)::bigint,
       (extract(epoch FROM finished_at) * 1000000)::bigint,
       (extract(epoch FROM leased_at) * 1000000)::bigint,
       (extract(epoch FROM now()) * 1000000)::bigint, pace_key
FROM {table} WHERE id = $1;

-- name: counts
-- Tasks by state, in one statement, each count from a partial index: a count reads one entry
-- per task it counts, never the whole table. Each reads its index in order (`ORDER BY` the
-- index's keys, `LIMIT (SELECT …)`: with no limit to see, the planner reads the index in order
-- whatever the statistics say; with the counts' predicates alone it chose parallel scans of
-- the whole table on a fresh 1 000 000-row queue, 0.9–1.2 s per count with JIT, issue 14):
-- queued rows by `_next` (the scheduled and retrying ones in one pass), running ones by the
-- leases index (`lease_until IS NOT NULL`), dead ones by `_dead`. The oldest due task's age is
-- the first entry of `_next`. (`lease_owner IS NULL`, true of every queued row, is `_next`'s
-- predicate.)
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM {table}
            WHERE state = 'queued' AND lease_owner IS NULL AND run_at <= now()
            ORDER BY run_at LIMIT (SELECT 9223372036854775807::bigint)) due),
       later.scheduled, later.retrying,
       (SELECT count(*) FROM (
            SELECT 1 FROM {table} WHERE lease_until IS NOT NULL AND state = 'running'
            ORDER BY lease_until LIMIT (SELECT 9223372036854775807::bigint)) running),
       (SELECT count(*) FROM (
            SELECT 1 FROM {table} WHERE state = 'dead'
            ORDER BY finished_at DESC, id DESC LIMIT (SELECT 9223372036854775807::bigint)) dead),
       (SELECT (extract(epoch FROM now() - run_at) * 1000000)::bigint FROM {table}
        WHERE state = 'queued' AND lease_owner IS NULL AND run_at <= now()
        ORDER BY run_at LIMIT 1)
FROM (SELECT count(*) FILTER (WHERE attempt = 0) AS scheduled,
             count(*) FILTER (WHERE attempt > 0) AS retrying
      FROM (SELECT attempt FROM {table}
            WHERE state = 'queued' AND lease_owner IS NULL AND run_at > now()
            ORDER BY run_at LIMIT (SELECT 9223372036854775807::bigint)) delayed) later;

-- name: dead_rerun
UPDATE {table}
SET state = 'queued', attempt = 0, run_at = now(), finished_at = NULL, last_error = NULL
WHERE id = ANY($1) AND state = 'dead'
RETURNING id;

-- name: dead_purge
DELETE FROM {table} WHERE state = 'dead' AND id = ANY($1);

-- name: dead_purge_all
DELETE FROM {table} WHERE state = 'dead';

-- name: migrate_begin
BEGIN

-- name: migrate_lock
-- Pollers starting together apply the migrations once: the first holds this lock until it
-- commits. {create_schema} creates the configured schema, if any. The connections' statement and
-- lock timeouts (PgConfig::statement_timeout, lock_timeout) are lifted for this transaction
-- only: a migration may rebuild an index on a big table, and a poller starting beside another
-- one that migrates waits for it rather than failing.
SET LOCAL statement_timeout = 0;
SET LOCAL lock_timeout = 0;
SELECT pg_advisory_xact_lock(hashtext('actix-poller:{table}'));
{create_schema}

-- name: migrations_table
CREATE TABLE IF NOT EXISTS {migrations} (
    version BIGINT PRIMARY KEY, description TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM {migrations};

-- name: migration_record
-- $1: version; $2: description.
INSERT INTO {migrations} (version, description) VALUES ($1, $2);
