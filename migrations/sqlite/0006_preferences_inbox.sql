-- Recipients' choices, as the sequence of changes they made (read like the
-- directory: every worker applies the changes after the last it saw).
CREATE TABLE preference_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,    -- lower-cased email
    subject     TEXT NOT NULL,    -- notification:ID or category:ID
    channel     TEXT NOT NULL,    -- email | action_center
    enabled     INTEGER NOT NULL,
    changed_at  TEXT NOT NULL
);

-- The Action Center inbox: seen (the badge was opened) and archived, besides read.
-- Pages go newest first by rowid, the order entries were stored in.
ALTER TABLE action_center ADD COLUMN seen_at TEXT;
ALTER TABLE action_center ADD COLUMN archived_at TEXT;
CREATE INDEX action_center_inbox ON action_center (user_key);
