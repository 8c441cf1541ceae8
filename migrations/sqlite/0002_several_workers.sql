-- Several workers: leases on events and deliveries, directory changes in a
-- global sequence (tombstones instead of deletes) with last-writer-wins by event time.

ALTER TABLE events ADD COLUMN owner TEXT;
ALTER TABLE events ADD COLUMN lease_until TEXT;

ALTER TABLE notification_log ADD COLUMN owner TEXT;
ALTER TABLE notification_log ADD COLUMN claim_until TEXT;

-- The time and id of the event a directory row holds: a change applies only if
-- (event_time, event_id) is greater. '' sorts before every real time.
ALTER TABLE directory ADD COLUMN event_time TEXT NOT NULL DEFAULT '';
ALTER TABLE directory ADD COLUMN event_id TEXT NOT NULL DEFAULT '';
CREATE INDEX directory_seq ON directory (seq);

-- The last directory sequence number handed out.
CREATE TABLE directory_version (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO directory_version (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM directory;
