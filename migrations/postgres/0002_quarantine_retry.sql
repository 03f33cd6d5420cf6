-- `quarantine retry` (see the SQLite migration 0004).
ALTER TABLE quarantine ADD COLUMN list TEXT NOT NULL DEFAULT '';
ALTER TABLE quarantine ADD COLUMN retry_requested BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE quarantine ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX quarantine_retry ON quarantine (tenant, source) WHERE retry_requested;
