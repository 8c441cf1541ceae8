-- The unique key (event_id, notification, channel, recipient) already serves
-- look-ups by event: a second index on event_id only cost a write per row.
DROP INDEX IF EXISTS notification_log_event;
