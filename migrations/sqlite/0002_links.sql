-- Cross-source links: items that share a key (the same detection seen through Cloud Apps and
-- Graph, `mda:{id}`; the same email message, `msg:{id}`) name each other in `related`.
CREATE TABLE links (
    tenant    TEXT NOT NULL,
    key       TEXT NOT NULL,
    source    TEXT NOT NULL,
    native_id TEXT NOT NULL,
    PRIMARY KEY (tenant, key, source, native_id)
) WITHOUT ROWID;
