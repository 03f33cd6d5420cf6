-- A source's own coverage state beside its coverage point: the reporting mailbox keeps its
-- Graph delta (or next) link here, moved in the transaction that stores the page it ends.
ALTER TABLE cursors ADD COLUMN state TEXT;
