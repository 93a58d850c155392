-- migration: queue-wide pace state (pauses, the global rate)
-- The state of PgConfig::queue_pace (issue 15), shared by every poller on the queue. One row per
-- scope: kind 0 (pace_key '') is the whole queue, kind 1 one key. `paused_until`: NULL when not
-- paused, 'infinity' until resumed. `tat`: the global rate limit's theoretical arrival time
-- (GCRA), on the queue's row only. The queue's row is also the lock that serializes claims when
-- queue-wide limits are set (see the `pace_lock` statement).
CREATE TABLE IF NOT EXISTS {pace} (
    kind         SMALLINT    NOT NULL,
    pace_key     TEXT        NOT NULL,
    paused_until TIMESTAMPTZ,
    tat          TIMESTAMPTZ,
    PRIMARY KEY (kind, pace_key)
);
INSERT INTO {pace} (kind, pace_key) VALUES (0, '') ON CONFLICT DO NOTHING;
