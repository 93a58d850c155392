-- migration: create the task table and its notify trigger
-- The task table of a PgSource. Placeholders are filled in by the crate's migration runner:
-- {table} is the schema-qualified table, {name} the bare table name, {function} the
-- schema-qualified name of the notify function, {channel} the LISTEN/NOTIFY channel.
--
-- `state` is one of queued, running, completed, dead, cancelled. `attempt` counts attempts
-- started; a fetch adds one.
CREATE TABLE IF NOT EXISTS {table} (
    id           BIGSERIAL   PRIMARY KEY,
    state        TEXT        NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'completed', 'dead', 'cancelled')),
    priority     INTEGER     NOT NULL DEFAULT 0,
    run_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempt      INTEGER     NOT NULL DEFAULT 0,
    max_attempts INTEGER     NOT NULL DEFAULT 1,
    timeout_ms   BIGINT,
    payload      JSONB       NOT NULL,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner  BIGINT,
    lease_until  TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
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

-- Every insert statement (the crate's or anyone's) wakes the listening pollers, on commit.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS "{name}_notify" ON {table};
CREATE TRIGGER "{name}_notify" AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();
