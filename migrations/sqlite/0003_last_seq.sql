-- Each alert points at the outbox row of its latest queued version, so a `linked` revision
-- reads that body by key instead of searching the outbox.
ALTER TABLE alerts ADD COLUMN last_seq INTEGER;
CREATE INDEX outbox_latest_tmp ON outbox (tenant, source, native_id, seq);
UPDATE alerts SET last_seq = (
    SELECT MAX(o.seq) FROM outbox o
    WHERE o.tenant = alerts.tenant AND o.source = alerts.source AND o.native_id = alerts.native_id
);
DROP INDEX outbox_latest_tmp;
