-- The worker's state: idempotency, directory, referral states, digest counters,
-- held items, the notification log (also the dispatch outbox) and Action Center entries.

CREATE TABLE events (
    event_id     TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    completed_at TEXT
);

-- The latest directory event per key (partner, user, profile contact); replayed at start.
CREATE TABLE directory (
    key        TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    event_json TEXT NOT NULL
);

CREATE TABLE referral_states (
    referral   TEXT NOT NULL,
    receiver   TEXT NOT NULL, -- '' for the referral as a whole
    status     TEXT NOT NULL,
    rule       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (referral, receiver)
);

CREATE TABLE digest_counters (
    counter TEXT NOT NULL,
    partner TEXT NOT NULL,
    day     TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (counter, partner, day)
);

-- Deliveries held for a digest; the digest flush (issue 5) sets digested_at.
CREATE TABLE held (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    log_id       INTEGER NOT NULL UNIQUE REFERENCES notification_log(id),
    counter      TEXT NOT NULL,
    partner      TEXT NOT NULL,
    day          TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    digested_at  TEXT
);
CREATE INDEX held_open ON held (counter, partner, day, recipient) WHERE digested_at IS NULL;

-- Every decision of every event: the notification log, and the outbox of what is still to send.
CREATE TABLE notification_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    notification TEXT NOT NULL,
    channel      TEXT NOT NULL,
    recipient    TEXT NOT NULL, -- lower-cased email
    status       TEXT NOT NULL, -- pending | sent | held | suppressed | failed
    rules        TEXT NOT NULL, -- JSON array of rule ids
    delivery     TEXT NOT NULL, -- JSON of the planned delivery
    message_id   TEXT,
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (event_id, notification, channel, recipient)
);
CREATE INDEX notification_log_recipient ON notification_log (recipient, created_at);

CREATE TABLE action_center (
    id           TEXT PRIMARY KEY, -- derived from (event, notification, recipient)
    user_key     TEXT NOT NULL,    -- the user id, or the lower-cased email of a contact with none
    partner_id   TEXT,
    event_id     TEXT NOT NULL,
    notification TEXT NOT NULL,
    category     TEXT NOT NULL,
    priority     TEXT NOT NULL,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    link         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    read_at      TEXT
);
CREATE INDEX action_center_user ON action_center (user_key, created_at);
