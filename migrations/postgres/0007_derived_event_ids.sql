-- Event ids are no longer stored (issue 12). An event id is a hash of the row's tenant, source,
-- native id and version, and it travels inside the body; the column and its unique index were
-- ~250 bytes a version and one random B-tree insert each, in an index as large as the store.
-- A version is queued once because ingest plans against the alert's dedup state under the
-- tenant's page lock, and pruning keeps the dedup state of an alert whose latest version is not
-- yet delivered. Dropping the column drops its index; no table rewrite.
ALTER TABLE outbox DROP COLUMN event_id;
