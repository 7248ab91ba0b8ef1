-- acexport schema, version 5.
-- Which mapped values ActiveCampaign holds from acexport, so that a value emptied in the source
-- is sent empty (clearing it there) while a value never sent is left out (never blanking what
-- ActiveCampaign holds from elsewhere). One bit per mapped field, never the values.

-- Bit N is set when the member's value for the field in slot N was last sent non-empty and
-- confirmed. NULL: delivered before version 5, not known yet (learned when the values are
-- planned unchanged, since the fingerprint then says the same fields are non-empty).
ALTER TABLE delivery_state ADD COLUMN sent_fields INTEGER;

-- Each mapped field's bit (slot 0 to 63) per export. A field that is no longer mapped gives its
-- slot up, and its bit is cleared in every member first, so a slot never carries an old meaning.
CREATE TABLE delivery_field_slots (
    export_id INTEGER NOT NULL REFERENCES exports(id) ON DELETE CASCADE,
    -- first_name | last_name | phone | field:<ActiveCampaign custom field id>
    target    TEXT NOT NULL,
    slot      INTEGER NOT NULL CHECK (slot BETWEEN 0 AND 63),
    PRIMARY KEY (export_id, target),
    UNIQUE (export_id, slot)
) WITHOUT ROWID;
