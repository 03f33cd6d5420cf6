-- The dedup state in two levels (issue 12). `alerts` and `links` become the recent level: small,
-- kept in the page cache, where every page reads and writes. Every 15,000 new alerts they are
-- merged into the archive level below as one run, and emptied. The archive keeps rows in arrival
-- order, under indexes of (run, 8-byte hash): each merge appends its run's entries after the
-- last run's, in hash order, so no write lands at a random place however large the archive
-- grows. It is read only to bring an alert (and what links to it) back to the recent level when
-- a page touches it, which in-memory filters of each run's hashes say is rarely needed.
--
-- Why: a text-keyed B-tree far larger than the page cache took each new alert at a random leaf,
-- and SQLite writes each dirtied 16 KiB leaf whole to the WAL and again at checkpoint: the cost
-- per alert grew with the store (110 µs at 20k alerts, 180 at 1M; docs/benchmarks.md).
--
-- The hashes are xxh3 of (tenant, source, native id) and (tenant, key); they are stored, so the
-- function never changes. Rows written before this migration have none: opening the store
-- computes them and moves those rows to the archive, a chunk per transaction.
ALTER TABLE alerts ADD COLUMN hash INTEGER;
ALTER TABLE links ADD COLUMN key_hash INTEGER;
ALTER TABLE links ADD COLUMN owner_hash INTEGER;

CREATE TABLE alert_archive (
    tenant        TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    native_id     TEXT    NOT NULL,
    latest        INTEGER NOT NULL,
    state_hash    BLOB,
    revision      INTEGER NOT NULL,
    link_count    INTEGER NOT NULL,
    forwarded     INTEGER NOT NULL,
    field_hashes  BLOB    NOT NULL,
    first_seen_ago INTEGER NOT NULL,  -- last_change - first_seen: 0, stored in no bytes, if never changed
    last_change   INTEGER NOT NULL,
    last_seq      INTEGER,
    context_count INTEGER NOT NULL,
    context       BLOB,
    hash          INTEGER NOT NULL,
    run           INTEGER NOT NULL
);
CREATE INDEX alert_archive_hash ON alert_archive (run, hash);
-- When each run was merged. A row changed at t is merged at t or later, so the runs merged since
-- t hold every archived row changed since t (reconciliation's stored versions), and a run merged
-- before the retention cutoff holds only rows to prune: no index on `last_change` is needed (15
-- bytes an alert). A row a page brought back unchanged and merged again is kept until its new
-- run ages out: a page that read it counts as seeing it.
CREATE TABLE archive_runs (
    run       INTEGER PRIMARY KEY,
    merged_at INTEGER NOT NULL
);

CREATE TABLE link_archive (
    tenant     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    native_id  TEXT    NOT NULL,
    key_hash   INTEGER NOT NULL,
    owner_hash INTEGER NOT NULL,
    run        INTEGER NOT NULL
);
CREATE INDEX link_archive_key ON link_archive (run, key_hash);
CREATE INDEX link_archive_owner ON link_archive (run, owner_hash);
