-- migration: create the task table
-- The task table of a SqliteSource. Placeholders ({table}, {name}) are filled in by the crate's
-- migration runner with the configured table name.
--
-- Times are microseconds since the Unix epoch (INTEGER). `state` is one of queued, running,
-- completed, dead, cancelled. `attempt` counts attempts started; a fetch adds one.
CREATE TABLE IF NOT EXISTS {table} (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    state        TEXT    NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'completed', 'dead', 'cancelled')),
    priority     INTEGER NOT NULL DEFAULT 0,
    run_at       INTEGER NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    timeout_ms   INTEGER,
    payload      TEXT    NOT NULL,
    enqueued_at  INTEGER NOT NULL,
    lease_owner  INTEGER,
    lease_until  INTEGER,
    finished_at  INTEGER,
    last_error   TEXT
);

-- Due tasks in fetch order. Partial: completed rows piling up do not slow a fetch down.
CREATE INDEX IF NOT EXISTS "{name}_due" ON {table} (priority DESC, run_at, id) WHERE state = 'queued';
-- The next due time (delayed tasks, retries).
CREATE INDEX IF NOT EXISTS "{name}_next" ON {table} (run_at) WHERE state = 'queued';
-- Expired leases.
CREATE INDEX IF NOT EXISTS "{name}_leases" ON {table} (lease_until) WHERE state = 'running';
-- Pruning of finished tasks, and the list of dead ones.
CREATE INDEX IF NOT EXISTS "{name}_finished" ON {table} (finished_at) WHERE state IN ('completed', 'cancelled');
CREATE INDEX IF NOT EXISTS "{name}_dead" ON {table} (finished_at DESC, id DESC) WHERE state = 'dead';
