-- Bumped by `cursor set` (see the SQLite migration 0006).
ALTER TABLE cursors ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
