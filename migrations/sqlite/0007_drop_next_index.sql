-- migration: read queued rows by the due index alone
-- The statements read queued rows through `_due` only, per priority (a loose scan over the
-- distinct queued priorities, then one bounded range per priority; see `queued_priorities` in
-- the crate's statements, issue 14), and find the next due time as the earliest of each
-- priority's first row. `_next` (`run_at` of queued rows) has no reader left; dropping it saves
-- every insert an index entry and leaves the planner one way to read queued rows.
DROP INDEX IF EXISTS "{name}_next";
