-- hybridsync cloud schema, version 5: the consistency checker's tree, kept on every row.
-- `bucket` and `leaf` are hybridsync-core's verify.rs digests: the bucket of (collection,
-- key) and the row's leaf (over collection, key, version, origin, tombstone and, unless
-- the row is a sealed live row, its content hash). The sink computes both on the way in,
-- so a tree node is an index-only aggregate rather than two SHA-256 per row at check
-- time; a deep check recomputes them from the row to catch a writer that lied. Existing
-- rows are backfilled here with the same definitions in SQL. A row written around the
-- sink (without them) makes the roots differ, and a deep check names it.
ALTER TABLE hs_records ADD COLUMN bucket bigint, ADD COLUMN leaf bigint;
UPDATE hs_records SET
    bucket = ('x' || lpad(encode(substring(sha256(
                int4send(octet_length(convert_to(collection, 'UTF8'))) || convert_to(collection, 'UTF8')
                || int4send(octet_length(convert_to(key, 'UTF8'))) || convert_to(key, 'UTF8')
             ) FROM 1 FOR 4), 'hex'), 16, '0'))::bit(64)::int8,
    leaf = ('x' || encode(substring(sha256(
                'hybridsync/leaf/v1'::bytea
                || int4send(octet_length(convert_to(collection, 'UTF8'))) || convert_to(collection, 'UTF8')
                || int4send(octet_length(convert_to(key, 'UTF8'))) || convert_to(key, 'UTF8')
                || int8send(hlc) || origin
                || CASE WHEN tombstone THEN '\x01'::bytea ELSE '\x00'::bytea END
                || CASE WHEN tombstone OR key_id IS NULL THEN hash ELSE decode(repeat('00', 32), 'hex') END
             ) FROM 1 FOR 8), 'hex'))::bit(64)::int8;
CREATE INDEX hs_records_tree ON hs_records (tenant, collection, bucket) INCLUDE (leaf);
