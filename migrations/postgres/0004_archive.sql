-- The event archive: the body of every event admitted, for `replay --from-store`.
-- Pruned by the worker after `archive.retention`: events carry customer contact data.
CREATE TABLE archive (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    event_time   TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    event_json   TEXT NOT NULL
);
CREATE INDEX archive_received ON archive (received_at);
