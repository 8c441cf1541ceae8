-- Recipients' choices, as the sequence of changes they made (read like the
-- directory: every worker applies the changes after the last it saw).
CREATE TABLE preference_changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient   TEXT NOT NULL,    -- lower-cased email
    subject     TEXT NOT NULL,    -- notification:ID or category:ID
    channel     TEXT NOT NULL,    -- email | action_center
    enabled     BOOLEAN NOT NULL,
    changed_at  TIMESTAMPTZ NOT NULL
);

-- The Action Center inbox: seen (the badge was opened) and archived, besides read.
-- Pages go newest first by seq, the order entries were stored in.
ALTER TABLE action_center ADD COLUMN seen_at TIMESTAMPTZ;
ALTER TABLE action_center ADD COLUMN archived_at TIMESTAMPTZ;
ALTER TABLE action_center ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE INDEX action_center_inbox ON action_center (user_key, seq);
