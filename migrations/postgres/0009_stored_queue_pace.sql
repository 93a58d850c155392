-- migration: the queue's pace, stored with it
-- PgConfig::queue_pace (issue 15): the pace is the queue's, kept on its row of {pace} (kind 0),
-- and every paced claim reads its limits there. A poller opened with another pace is refused; one
-- opened without a pace adopts it. `paced`: the queue has a pace (false: none was ever set). The
-- rate as configured: `rate_n` claims per `rate_per_us` µs, bursts of `rate_burst`, and the
-- emission interval the claims use, `rate_interval_us` (all NULL: no rate); `key_limit` (NULL:
-- none).
ALTER TABLE {pace}
    ADD COLUMN IF NOT EXISTS paced BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS rate_n BIGINT,
    ADD COLUMN IF NOT EXISTS rate_per_us BIGINT,
    ADD COLUMN IF NOT EXISTS rate_burst BIGINT,
    ADD COLUMN IF NOT EXISTS rate_interval_us BIGINT,
    ADD COLUMN IF NOT EXISTS key_limit BIGINT;
