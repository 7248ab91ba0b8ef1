-- Who asked for a run: the user the daemon authorized (control-socket peer, or the owner of a
-- signal file), kept on the run itself so that it outlives the queue entry.
ALTER TABLE runs ADD COLUMN requested_by TEXT;
