-- acexport schema, version 7.
-- What was last alerted, per export and per connection, so that a state repeating at every
-- scheduled slot is alerted once, also across restarts (the rules: src/alerts/decide.rs).
-- Holds states, kinds and ids, never an error text or a profile value.

CREATE TABLE export_alert_state (
    export_id  INTEGER PRIMARY KEY REFERENCES exports(id) ON DELETE CASCADE,
    -- ok | partial | failed: how the export's last finished run ended
    state      TEXT NOT NULL,
    -- For failed: the kind of failure (source, activecampaign, key-rejected, ...); else NULL.
    failure    TEXT,
    -- The alert this state called for (failed | partial | recovered), NULL when it called for
    -- none (a first success, or a state its connection's alert already told).
    alert      TEXT,
    -- Random id of that alert, sent with it.
    alert_id   TEXT,
    -- 1 once a channel took the alert; until then a run ending in the same state sends it again.
    delivered  INTEGER NOT NULL DEFAULT 0,
    -- The run that brought the state (no foreign key: history may be pruned).
    run_id     INTEGER,
    changed_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE connection_alert_state (
    connection_id INTEGER PRIMARY KEY REFERENCES connections(id) ON DELETE CASCADE,
    -- accepted | rejected: whether ActiveCampaign took the key at the last run that tells
    state         TEXT NOT NULL,
    -- key-rejected | key-accepted, NULL when none was called for.
    alert         TEXT,
    alert_id      TEXT,
    delivered     INTEGER NOT NULL DEFAULT 0,
    run_id        INTEGER,
    changed_at    TEXT NOT NULL
) WITHOUT ROWID;
