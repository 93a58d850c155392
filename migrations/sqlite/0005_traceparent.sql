-- migration: store the submitter's trace context with a task
-- The W3C `traceparent` of the span that enqueued the task (issue 13), so each attempt's span
-- joins the submitter's trace, even in another process. NULL when none was known (no span, or
-- the `opentelemetry` feature off). Written at enqueue; read by every fetch.
ALTER TABLE {table} ADD COLUMN traceparent TEXT;
