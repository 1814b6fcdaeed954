-- hybridsync local schema, version 1.

-- Single-row facts about this store: device identity and the HLC high-water mark.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT;

-- The collection catalogue: which collections exist and their vector specs.
CREATE TABLE collections (
    name       TEXT PRIMARY KEY,
    dim        INTEGER,
    metric     TEXT,
    precision  TEXT,
    created_ms INTEGER NOT NULL
) STRICT;

-- Current state of every record. Deletes are tombstones (kept, versioned).
-- `id` is stable across versions and doubles as the vector label.
CREATE TABLE records (
    id         INTEGER PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name),
    key        TEXT NOT NULL,
    payload    BLOB NOT NULL,
    embedding  BLOB,
    hlc        INTEGER NOT NULL,
    origin     BLOB NOT NULL,
    tombstone  INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    UNIQUE (collection, key)
) STRICT;

-- The transactional outbox: the write-ahead log of changes bound for the cloud.
-- state: 0 pending, 1 in flight, 2 done, 3 failed. priority: 0 critical .. 4 deferred.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    record_id       INTEGER NOT NULL REFERENCES records(id),
    hlc             INTEGER NOT NULL,
    origin          BLOB NOT NULL,
    priority        INTEGER NOT NULL,
    state           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
) STRICT;

-- At most one open (pending or failed) entry per record: later writes coalesce into it.
CREATE UNIQUE INDEX outbox_open_per_record ON outbox (record_id) WHERE state IN (0, 3);
CREATE INDEX outbox_drain_order ON outbox (state, priority, next_attempt_ms);
