-- migration: store a task's pace key
-- The task's pace key (TaskOptions::key, NewTask::key; issue 15), so every per-key control
-- (key limits, key rates, key pauses, Backpressure::pause_key_for) applies to durable tasks.
-- NULL: no key. Written at enqueue; read by every fetch.
ALTER TABLE {table} ADD COLUMN pace_key TEXT;
