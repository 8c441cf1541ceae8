-- Digests: held deliveries are claimed per recipient into one digest, sent,
-- then marked digested. A claim carries a lease: a worker that dies mid-flush
-- leaves a claim that another flush takes over (the same digest, the same
-- items, the same Message-ID) once the lease has run out.
CREATE TABLE digests (
    id           TEXT PRIMARY KEY, -- derived from the group and its held item ids
    counter      TEXT NOT NULL,
    partner      TEXT NOT NULL,
    day          TEXT NOT NULL,
    recipient    TEXT NOT NULL,    -- lower-cased email
    status       TEXT NOT NULL,    -- claimed | sent
    claimed_by   TEXT NOT NULL,
    lease_until  TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 1,
    items        INTEGER NOT NULL,
    message_id   TEXT,
    created_at   TEXT NOT NULL,
    sent_at      TEXT
);
-- At most one open (claimed, unsent) digest per recipient group.
CREATE UNIQUE INDEX digests_open ON digests (counter, partner, day, recipient) WHERE status = 'claimed';
CREATE INDEX digests_recipient ON digests (recipient, created_at);

ALTER TABLE held ADD COLUMN digest_id TEXT REFERENCES digests(id);
-- The held lead as a CloudEvent, for the digest to list.
ALTER TABLE held ADD COLUMN event_json TEXT NOT NULL DEFAULT '{}';
CREATE INDEX held_digest ON held (digest_id);

ALTER TABLE notification_log ADD COLUMN digest_id TEXT;
CREATE INDEX notification_log_event ON notification_log (event_id);
