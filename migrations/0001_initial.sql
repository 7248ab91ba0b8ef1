-- acexport schema, version 1.
-- Times are RFC 3339 UTC text. Secrets are sealed blobs (see src/secrets.rs), never plain text.

-- Connections to ActiveCampaign accounts (Customer Insights: Admin > Connections).
CREATE TABLE connections (
    id                 INTEGER PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    -- Base URL without /api/3, e.g. https://acme.api-us1.com (http only for loopback).
    base_url           TEXT NOT NULL,
    api_key_sealed     BLOB NOT NULL,
    api_key_hint       TEXT NOT NULL,
    allow_contributors INTEGER NOT NULL DEFAULT 0,
    consent_at         TEXT NOT NULL,
    consent_by         TEXT NOT NULL,
    -- The ActiveCampaign user the key belongs to (shown as the export user).
    ac_user            TEXT,
    -- verified | rejected | unreachable
    status             TEXT NOT NULL,
    status_detail      TEXT,
    checked_at         TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);

-- Segments: where profiles come from.
CREATE TABLE segments (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    -- csv | jsonl | sql
    kind            TEXT NOT NULL,
    path            TEXT,
    delimiter       INTEGER,
    query           TEXT,
    -- Either a sealed database URL or the name of an environment variable holding it.
    database_sealed BLOB,
    database_env    TEXT,
    database_shown  TEXT,
    columns_json    TEXT NOT NULL,
    row_count       INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

-- Exports (Customer Insights: Data > Exports).
CREATE TABLE exports (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    connection_id     INTEGER NOT NULL REFERENCES connections(id),
    list_id           INTEGER NOT NULL,
    list_name         TEXT NOT NULL,
    email_column      TEXT NOT NULL,
    first_name_column TEXT,
    last_name_column  TEXT,
    phone_column      TEXT,
    -- keep | unsubscribe
    on_leave          TEXT NOT NULL DEFAULT 'keep',
    schedule          TEXT,
    enabled           INTEGER NOT NULL DEFAULT 1,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE export_segments (
    export_id  INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    segment_id INTEGER NOT NULL REFERENCES segments(id),
    PRIMARY KEY (export_id, position)
) WITHOUT ROWID;
CREATE INDEX export_segments_by_segment ON export_segments(segment_id);

-- Custom field mappings: ActiveCampaign field id <- segment column.
CREATE TABLE export_fields (
    export_id INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    field_id  INTEGER NOT NULL,
    column    TEXT NOT NULL,
    PRIMARY KEY (export_id, field_id)
) WITHOUT ROWID;

CREATE TABLE export_tags (
    export_id INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    tag       TEXT NOT NULL,
    PRIMARY KEY (export_id, tag)
) WITHOUT ROWID;

-- What each export has delivered: the normalised email, a keyed hash of the mapped values and
-- a status. Never the raw row. Changed only after ActiveCampaign confirmed a batch.
CREATE TABLE delivery_state (
    export_id INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    email     TEXT NOT NULL,
    hash      BLOB NOT NULL,
    -- delivered | failed
    status    TEXT NOT NULL,
    run_id    INTEGER NOT NULL,
    PRIMARY KEY (export_id, email)
) WITHOUT ROWID;

-- Run history.
CREATE TABLE runs (
    id               INTEGER PRIMARY KEY,
    export_id        INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    -- manual | schedule | signal-file | daemon-resume ...
    trigger          TEXT NOT NULL,
    full             INTEGER NOT NULL DEFAULT 0,
    -- running | succeeded | partial | failed | cancelled | interrupted
    status           TEXT NOT NULL,
    phase            TEXT NOT NULL DEFAULT 'starting',
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    rows_read        INTEGER NOT NULL DEFAULT 0,
    rejected         INTEGER NOT NULL DEFAULT 0,
    duplicates       INTEGER NOT NULL DEFAULT 0,
    unchanged        INTEGER NOT NULL DEFAULT 0,
    planned          INTEGER NOT NULL DEFAULT 0,
    sent             INTEGER NOT NULL DEFAULT 0,
    upserted         INTEGER NOT NULL DEFAULT 0,
    unsubscribed     INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    requests         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- The run this one resumes, when it continues an interrupted run.
    resumes_run_id   INTEGER,
    -- The process that runs it, so a crashed owner can be told from a live one.
    owner_pid        INTEGER,
    error            TEXT
);
-- One run per export at a time, enforced by the database itself.
CREATE UNIQUE INDEX runs_one_running_per_export ON runs(export_id) WHERE status = 'running';
CREATE INDEX runs_by_export ON runs(export_id, id);

-- Profiles of a run that did not arrive: rejected before sending, or failed at ActiveCampaign.
-- The email is masked (j***@example.com); the reason never holds profile values.
CREATE TABLE run_issues (
    run_id       INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    source       TEXT NOT NULL,
    row_number   INTEGER,
    masked_email TEXT,
    reason       TEXT NOT NULL
);
CREATE INDEX run_issues_by_run ON run_issues(run_id);

-- Runs waiting for the daemon: at most one per export, so triggers that arrive while it waits
-- or runs are coalesced into one follow-up run.
CREATE TABLE run_queue (
    id           INTEGER PRIMARY KEY,
    export_id    INTEGER NOT NULL UNIQUE REFERENCES exports(id) ON DELETE CASCADE,
    trigger      TEXT NOT NULL,
    full         INTEGER NOT NULL DEFAULT 0,
    requested_at TEXT NOT NULL,
    requested_by TEXT
);

-- Signal files already consumed (by their claim key), so a file is acted on exactly once even
-- when the daemon stops between queueing its run and deleting it.
CREATE TABLE consumed_triggers (
    key         TEXT PRIMARY KEY,
    consumed_at TEXT NOT NULL
) WITHOUT ROWID;

-- When each schedule last fired, so a restart neither repeats nor silently skips a slot.
CREATE TABLE schedule_marks (
    export_id  INTEGER PRIMARY KEY REFERENCES exports(id) ON DELETE CASCADE,
    schedule   TEXT NOT NULL,
    last_slot  TEXT NOT NULL
);

-- Heartbeat of the running daemon, for `acexport status` and CLI hand-over.
CREATE TABLE daemon_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    pid        INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat  TEXT NOT NULL,
    status     TEXT NOT NULL
);

-- PII-free record of administrative changes (who, what, when).
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT
);
