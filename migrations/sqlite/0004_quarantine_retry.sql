-- `quarantine retry`: the operator marks rows; the poller holding the tenant re-reads them with
-- the current parser. `list` is the submission list an item came from (it picks the parser).
ALTER TABLE quarantine ADD COLUMN list TEXT NOT NULL DEFAULT '';
ALTER TABLE quarantine ADD COLUMN retry_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quarantine ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
CREATE INDEX quarantine_retry ON quarantine (tenant, source) WHERE retry_requested = 1;
