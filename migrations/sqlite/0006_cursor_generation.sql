-- Bumped by `cursor set`: a poll that read the coverage point under an older generation may
-- store its pages but no longer moves the point, so the operator's move is never undone.
ALTER TABLE cursors ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
