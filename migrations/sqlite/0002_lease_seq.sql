-- migration: number leases: a sequence that only grows
-- Leases are numbered: `lease_seq` grows by one on every fetch of a task and never repeats for
-- it (unlike `attempt`, which a snooze or a release gives back). Acks, lease extensions and
-- releases match it, so an ack replayed after its reply was lost cannot touch the task's next
-- lease (issue 12.5).
ALTER TABLE {table} ADD COLUMN lease_seq INTEGER NOT NULL DEFAULT 0;
