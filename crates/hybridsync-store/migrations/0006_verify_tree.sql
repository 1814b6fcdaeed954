-- The consistency checker's tree, kept in the write transaction: every row carries
-- its bucket and leaf digest (hybridsync_core::verify), and `tree_nodes` holds each
-- collection's level-1 nodes (16 per collection: row count and the 64-bit sum of
-- leaves as two 32-bit halves, so SQLite's integer arithmetic never overflows), so
-- the root costs 16 rows to read. No index orders rows by bucket: it cost a third of
-- the batched write rate, and a check that finds a difference reads the rows under
-- the differing level-1 nodes in one scan instead.
ALTER TABLE records ADD COLUMN bucket INTEGER;
ALTER TABLE records ADD COLUMN leaf INTEGER;
CREATE TABLE tree_nodes (
    collection TEXT NOT NULL,
    prefix     INTEGER NOT NULL,
    rows       INTEGER NOT NULL,
    sum_high   INTEGER NOT NULL,
    sum_low    INTEGER NOT NULL,
    PRIMARY KEY (collection, prefix)
) STRICT, WITHOUT ROWID;
-- Rows written before this migration get their digests when the store next opens
-- (SQLite has no SHA-256); the flag goes in the same transaction as the last of them.
INSERT INTO meta (key, value) SELECT 'tree_backfill', 1 WHERE EXISTS (SELECT 1 FROM records);
