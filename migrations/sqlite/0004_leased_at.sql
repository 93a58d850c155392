-- migration: record when a task's current lease began
-- When the current attempt's fetch leased the task (µs since the Unix epoch), for a task's
-- status ("running since", issue 13). Set by every fetch; read only by the status statement.
ALTER TABLE {table} ADD COLUMN leased_at INTEGER;
