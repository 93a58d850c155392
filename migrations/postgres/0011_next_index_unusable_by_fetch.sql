-- migration: keep the fetch off the run_at index
-- `_next` (`run_at` of queued rows) serves the next due time, the oldest due age and the
-- counts. The fetch could use it too, and the planner chose it by statistics, which on a queue
-- table are stale by nature: taken before a scheduled batch came due, they made every fetch
-- read each due row by `run_at` and sort them all (200 000 due rows: 6 508 buffers, 145 ms per
-- fetch of 10; issue 14). Rebuilt partial on `lease_owner IS NULL` as well, true of every
-- queued row (each statement that makes a row queued clears its lease): the statements that
-- want it state that predicate, the fetch does not, so the planner cannot choose it for a
-- fetch. Built inside the migration transaction: writes to the table wait for one scan of it.
-- {prefix} is the table's schema and a dot, or nothing.
DROP INDEX IF EXISTS {prefix}"{name}_next";
CREATE INDEX IF NOT EXISTS "{name}_next" ON {table} (run_at)
    WHERE state = 'queued' AND lease_owner IS NULL;
