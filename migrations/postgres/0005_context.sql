-- Campaign context (issue 13). A row queued for an email alert may wait for its context until
-- `hold_until` (ms); the forwarder's claim skips it, and the later rows of its alert, until
-- then. `context_wanted` lists the alerts that still want context, so a restart or another
-- replica picks up where this one stopped; `context_count` numbers the `#c{k}` revisions.
ALTER TABLE outbox ADD COLUMN hold_until BIGINT;
CREATE INDEX outbox_held ON outbox (tenant, source, native_id) WHERE hold_until IS NOT NULL;
ALTER TABLE alerts ADD COLUMN context_count BIGINT NOT NULL DEFAULT 0;
CREATE TABLE context_wanted (
    tenant     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    native_id  TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (tenant, source, native_id)
);
CREATE INDEX context_wanted_age ON context_wanted (tenant, created_at);
