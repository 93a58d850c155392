-- migration: store a task's pace key
-- The task's pace key (TaskOptions::key, NewTask::key; issue 15), so every per-key control
-- (key limits, key rates, key pauses, Backpressure::pause_key_for) applies to durable tasks.
-- NULL: no key. Written at enqueue; read by every fetch.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS pace_key TEXT;
-- Tasks running per key: what a queue-wide key limit (PgConfig::queue_pace) counts in the
-- claim. Partial: only running rows with a key, a few per poller.
CREATE INDEX IF NOT EXISTS "{name}_running_keys" ON {table} (pace_key)
    WHERE state = 'running' AND pace_key IS NOT NULL;
