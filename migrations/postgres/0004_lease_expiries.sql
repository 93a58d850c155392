-- migration: count lease expiries apart from attempts
-- Lease expiries are counted apart from attempts (issue 12.2): an expired lease gives back the
-- attempt its fetch counted (the task may never have started: queued ahead at an executor, or
-- prefetched, when its worker died), and a task goes dead by expiry only after `expiries` in a
-- row reach the configured limit. A recorded ack sets it back to 0.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS expiries INTEGER NOT NULL DEFAULT 0;
