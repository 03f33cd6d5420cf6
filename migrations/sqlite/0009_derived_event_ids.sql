-- Event ids are no longer stored (issue 12). An event id is a hash of the row's tenant, source,
-- native id and version, and it travels inside the body; the column and its unique index were
-- 150 bytes a version and one random B-tree insert each, in an index as large as the store.
-- A version is queued once because ingest plans against the alert's dedup state under the
-- page's write lock, and pruning keeps the dedup state of an alert whose latest version is not
-- yet delivered. SQLite cannot drop a UNIQUE column in place: the table is rebuilt, keeping
-- every seq and the AUTOINCREMENT high-water mark (seqs are never reused).
CREATE TABLE outbox_rebuilt (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    native_id    TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    historical   INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    state        INTEGER NOT NULL DEFAULT 0,   -- 0 pending, 1 batched, 2 delivered, 3 dead
    batch_id     INTEGER,
    dead_reason  TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER,
    hold_until   INTEGER
);
INSERT INTO outbox_rebuilt (seq, tenant, source, native_id, version, historical, size, state,
                            batch_id, dead_reason, created_at, delivered_at, hold_until)
    SELECT seq, tenant, source, native_id, version, historical, size, state,
           batch_id, dead_reason, created_at, delivered_at, hold_until
    FROM outbox ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'outbox_rebuilt';
UPDATE sqlite_sequence SET name = 'outbox_rebuilt' WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_rebuilt RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (tenant, historical, seq) WHERE state = 0;
CREATE INDEX outbox_batch ON outbox (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 2;
CREATE INDEX outbox_undelivered ON outbox (tenant, created_at) WHERE state IN (0, 1);
CREATE INDEX outbox_held ON outbox (tenant, source, native_id) WHERE hold_until IS NOT NULL;
