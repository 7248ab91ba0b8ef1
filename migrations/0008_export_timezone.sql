-- acexport schema, version 8.
-- An export's own time zone: the IANA name its schedule (its own cron, or the refresh schedule)
-- is read in. NULL: the settings' schedule.timezone.
ALTER TABLE exports ADD COLUMN timezone TEXT;
