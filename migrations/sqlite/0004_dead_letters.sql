-- Messages the worker dead-lettered, by event id when the message had one,
-- so `log --event ID` can say an event was seen and why it was set aside.
CREATE TABLE dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX dead_letters_event ON dead_letters (event_id);
