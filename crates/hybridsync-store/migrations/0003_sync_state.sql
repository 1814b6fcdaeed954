-- hybridsync local schema, version 3: two-way sync state.

-- Where each collection's pull stands in the cloud's change feed (an opaque cursor).
CREATE TABLE sync_cursors (
    collection TEXT PRIMARY KEY REFERENCES collections(name),
    cursor     BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
) STRICT;

-- Past seed, hydrate and sync operations, newest kept.
CREATE TABLE sync_history (
    id          INTEGER PRIMARY KEY,
    started_ms  INTEGER NOT NULL,
    operation   TEXT NOT NULL,
    pushed      INTEGER NOT NULL,
    pulled      INTEGER NOT NULL,
    conflicts   INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    error       TEXT
) STRICT;

-- Clearing shipped history by age.
CREATE INDEX outbox_done_age ON outbox (updated_ms) WHERE state = 2;
