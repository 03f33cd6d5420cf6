-- A source's own coverage state (see the SQLite migration 0005).
ALTER TABLE cursors ADD COLUMN state TEXT;
