-- hybridsync cloud schema, version 5: the consistency checker's deep mode. A row's
-- content hash, recomputed in SQL exactly as hybridsync-core's hash.rs computes it
-- (SHA-256 over "hybridsync/v1", then collection, key and payload each prefixed with
-- its length as 8 little-endian bytes, the tombstone flag, and the embedding with a
-- presence byte and its length in floats), so `verify --deep` finds rows whose bytes
-- changed without a new version. Caller's rights; it reads nothing but its arguments.
CREATE FUNCTION hs_le64(n bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN substring(int8send(n) FROM 8 FOR 1) || substring(int8send(n) FROM 7 FOR 1)
        || substring(int8send(n) FROM 6 FOR 1) || substring(int8send(n) FROM 5 FOR 1)
        || substring(int8send(n) FROM 4 FOR 1) || substring(int8send(n) FROM 3 FOR 1)
        || substring(int8send(n) FROM 2 FOR 1) || substring(int8send(n) FROM 1 FOR 1);

CREATE FUNCTION hs_content_hash(collection text, key text, tombstone boolean, payload bytea, embedding bytea)
    RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN sha256(
        'hybridsync/v1'::bytea
        || hs_le64(octet_length(convert_to(collection, 'UTF8'))) || convert_to(collection, 'UTF8')
        || hs_le64(octet_length(convert_to(key, 'UTF8'))) || convert_to(key, 'UTF8')
        || hs_le64(octet_length(payload)) || payload
        || CASE WHEN tombstone THEN '\x01'::bytea ELSE '\x00'::bytea END
        || CASE WHEN embedding IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || hs_le64(octet_length(embedding) / 4) || embedding END);
