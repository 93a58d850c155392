-- migration: index leases by lease_until, not by state
-- The index of leases, keyed on `lease_until IS NOT NULL` rather than `state = 'running'` (the
-- same rows: a lease is set exactly while a task runs). {prefix} is the table's schema and a
-- dot, or nothing.
--
-- Why: statements that find running rows by id (ack, extend, release) must look them up by
-- primary key. With the old index, once ANALYZE had seen few running rows (the usual picture of
-- a queue table), the planner estimated one running row and chose to scan every running row
-- and, for each, every acked id: O(running × acked), minutes for a batch of thousands. Only the
-- reclaim statement, which asks for `lease_until < now()`, can use this index.
CREATE INDEX IF NOT EXISTS "{name}_lease_until" ON {table} (lease_until) WHERE lease_until IS NOT NULL;
DROP INDEX IF EXISTS {prefix}"{name}_leases";
