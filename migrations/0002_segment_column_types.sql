-- acexport schema, version 2.
-- Each segment column's type and text rule as read when the segment was saved: a JSON array in
-- the order of columns_json, written by the service (src/source/column.rs). NULL for segments
-- saved before version 2: their types are read from the source when they are shown or run.
ALTER TABLE segments ADD COLUMN column_types_json TEXT;
