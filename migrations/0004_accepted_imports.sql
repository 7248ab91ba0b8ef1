-- acexport schema, version 4.
-- Bulk imports ActiveCampaign accepted whose outcome is not recorded yet, with their members:
-- written in the group commit that follows the acceptance, removed in the one that records the
-- outcome. A run that resumes after a crash confirms these with import/info instead of sending
-- their members again. Like delivery_state: the normalised email, the keyed hash of the values
-- sent and why the member was sent; never the values.
CREATE TABLE accepted_imports (
    export_id   INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    batch_id    TEXT NOT NULL,
    run_id      INTEGER NOT NULL,
    -- Where it went: a record for another account or list than the export's now is dropped.
    host        TEXT NOT NULL,
    list_id     INTEGER NOT NULL,
    accepted_at TEXT NOT NULL,
    PRIMARY KEY (export_id, batch_id)
) WITHOUT ROWID;

CREATE TABLE accepted_members (
    export_id INTEGER NOT NULL,
    batch_id  TEXT NOT NULL,
    email     TEXT NOT NULL,
    hash      BLOB NOT NULL,
    -- new | changed | leave
    kind      TEXT NOT NULL,
    -- The mapped fields sent non-empty (delivery_state.sent_fields), recorded on confirmation.
    sent_fields INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (export_id, batch_id, email),
    FOREIGN KEY (export_id, batch_id) REFERENCES accepted_imports(export_id, batch_id)
        ON DELETE CASCADE
) WITHOUT ROWID;
-- Planning skips members whose values are in an accepted import.
CREATE INDEX accepted_members_by_email ON accepted_members(export_id, email);
