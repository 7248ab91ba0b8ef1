-- acexport schema, version 3: suppressed contacts, and members acexport itself unsubscribed.
-- delivery_state.status gains two words:
--   suppressed: ActiveCampaign will not subscribe the contact (`reason`: unsubscribed | bounced |
--               excluded); not sent again until its values change or `since` is older than
--               export.suppressed_recheck_days.
--   left:       acexport unsubscribed the member on leave (on-leave `unsubscribe`); should it
--               return, acexport re-subscribes it, since the person never asked to leave.
ALTER TABLE delivery_state ADD COLUMN reason TEXT;
ALTER TABLE delivery_state ADD COLUMN since TEXT;
-- Contacts of a run that were suppressed: found so now, or held from an earlier run.
ALTER TABLE runs ADD COLUMN suppressed INTEGER NOT NULL DEFAULT 0;
