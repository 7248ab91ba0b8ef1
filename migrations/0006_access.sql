-- Access (issue 11): who asked for each run, and whom each segment file is read for.

-- Who asked for a run: the user the daemon authorized (control-socket peer, or the owner of a
-- signal file), kept on the run itself so that it outlives the queue entry.
ALTER TABLE runs ADD COLUMN requested_by TEXT;

-- Whom a segment file is read for: the user who named it, when that was not root or the
-- daemon's own user. Every read checks that this user can still read the file.
ALTER TABLE segments ADD COLUMN reader_uid INTEGER;
