-- The embedded store: dedup state, the outbox, batches, coverage points and quarantine.
-- Versions are 100-ns ticks (Graph) or state numbers, always INTEGER, never text or REAL.

CREATE TABLE alerts (
    tenant       TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    native_id    TEXT    NOT NULL,
    latest       INTEGER NOT NULL,
    state_hash   BLOB,
    revision     INTEGER NOT NULL DEFAULT 0,
    link_count   INTEGER NOT NULL DEFAULT 0,
    forwarded    INTEGER NOT NULL DEFAULT 0,
    field_hashes BLOB    NOT NULL,
    first_seen   INTEGER NOT NULL,
    last_change  INTEGER NOT NULL,
    PRIMARY KEY (tenant, source, native_id)
) WITHOUT ROWID;
CREATE INDEX alerts_last_change ON alerts (last_change);

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
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
    delivered_at INTEGER
);
-- Bodies live apart from the row's state: SQLite rewrites a whole record (overflow pages
-- included) on every UPDATE, and a row's state changes twice after it is written.
CREATE TABLE outbox_body (
    seq  INTEGER PRIMARY KEY,
    body BLOB    NOT NULL
);
-- Claiming reads pending rows of one tenant, live before historical, in seq order.
CREATE INDEX outbox_pending ON outbox (tenant, historical, seq) WHERE state = 0;
CREATE INDEX outbox_batch ON outbox (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 2;
CREATE INDEX outbox_undelivered ON outbox (tenant, created_at) WHERE state IN (0, 1);

CREATE TABLE batches (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant          TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    state           TEXT    NOT NULL,           -- open, delivered, split, dead
    root_id         INTEGER NOT NULL,
    parent_id       INTEGER,
    min_seq         INTEGER NOT NULL,
    deferred        INTEGER NOT NULL DEFAULT 0,
    rows            INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    accepted        INTEGER NOT NULL DEFAULT 0, -- on roots: some alert of this root was accepted
    probes          INTEGER NOT NULL DEFAULT 0, -- on roots: single-alert rejections seen
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX batches_open ON batches (destination, tenant, root_id, deferred, min_seq) WHERE state = 'open';

CREATE TABLE cursors (
    tenant     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    list       TEXT    NOT NULL,
    coverage   INTEGER NOT NULL,
    t0         INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, source, list)
);

CREATE TABLE quarantine (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    native_id  TEXT,
    reason     TEXT    NOT NULL,
    raw        TEXT    NOT NULL,
    raw_hash   TEXT    NOT NULL,               -- the same bad item re-read by the overlap is kept once
    created_at INTEGER NOT NULL,
    UNIQUE (tenant, source, raw_hash)
);
