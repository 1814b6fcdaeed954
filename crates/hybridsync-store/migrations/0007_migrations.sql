-- Migrations (bulk imports, R24): one row each, with the checkpoint every batch
-- commits in its own transaction (position in the source, counts, the length of the
-- rejects file), so a killed import resumes exactly after its last committed batch.
CREATE TABLE migrations (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    collection    TEXT NOT NULL,
    source        TEXT NOT NULL,
    plan          TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    position      TEXT NOT NULL DEFAULT '',
    rejects_bytes INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,
    pid           INTEGER NOT NULL DEFAULT 0,
    read          INTEGER NOT NULL DEFAULT 0,
    imported      INTEGER NOT NULL DEFAULT 0,
    rejected      INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    started_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
) STRICT;
-- What each migration wrote (the version, to see whether someone changed the key
-- since) and what it replaced (NULL prev_hlc: the key was new), for its rollback.
CREATE TABLE migration_writes (
    migration      INTEGER NOT NULL,
    record_id      INTEGER NOT NULL,
    written_hlc    INTEGER NOT NULL,
    written_origin BLOB NOT NULL,
    prev_hlc       INTEGER,
    prev_payload   BLOB,
    prev_embedding BLOB,
    prev_tombstone INTEGER,
    undone         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (migration, record_id)
) STRICT, WITHOUT ROWID;
