-- The worker's state, shared by every worker of a deployment: idempotency with
-- a lease per event, the directory (last writer wins by event time), referral
-- states, digest counters, held items, the notification log (also the dispatch
-- outbox, with a claim per delivery) and Action Center entries.

CREATE TABLE events (
    event_id     TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    owner        TEXT,        -- the worker processing it, until lease_until
    lease_until  TIMESTAMPTZ
);

-- The latest directory event per key (partner, user, profile contact); a removal
-- stays as a tombstone so other workers see it. seq orders changes for readers.
CREATE TABLE directory (
    key        TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    event_id   TEXT NOT NULL,
    event_json TEXT NOT NULL
);
CREATE INDEX directory_seq ON directory (seq);

-- One row; its lock serialises directory writers, so seq order is commit order.
CREATE TABLE directory_version (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO directory_version (id, seq) VALUES (1, 0);

CREATE TABLE referral_states (
    referral   TEXT NOT NULL,
    receiver   TEXT NOT NULL, -- '' for the referral as a whole
    status     TEXT NOT NULL,
    rule       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (referral, receiver)
);

CREATE TABLE digest_counters (
    counter TEXT NOT NULL,
    partner TEXT NOT NULL,
    day     DATE NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (counter, partner, day)
);

-- Every decision of every event: the notification log, and the outbox of what is still to send.
CREATE TABLE notification_log (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    owner        TEXT,          -- the worker sending it, until claim_until
    claim_until  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (event_id, notification, channel, recipient)
);
CREATE INDEX notification_log_recipient ON notification_log (recipient, created_at);
CREATE INDEX notification_log_pending ON notification_log (event_id) WHERE status = 'pending';

-- Deliveries held for a digest; the digest flush sets digested_at.
CREATE TABLE held (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_id       BIGINT NOT NULL UNIQUE REFERENCES notification_log(id),
    counter      TEXT NOT NULL,
    partner      TEXT NOT NULL,
    day          DATE NOT NULL,
    recipient    TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    digested_at  TIMESTAMPTZ
);
CREATE INDEX held_open ON held (counter, partner, day, recipient) WHERE digested_at IS NULL;

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
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    read_at      TIMESTAMPTZ
);
CREATE INDEX action_center_user ON action_center (user_key, created_at);
