-- hybridsync cloud schema, version 9: hs_ship checks the tenant itself, and
-- hs_catalogue reads the collection definitions in one statement.
--
-- Until now a shipment was a transaction of four round trips (BEGIN, the tenant's scope
-- with its membership check, the upsert, COMMIT). A direct session now sends hs_ship as
-- one statement that the server commits on its own, as it sends hs_feed_page; so
-- hs_ship selects the tenant through hs_select_tenant, and a login role that may not act
-- for the tenant is refused with SQLSTATE HS403 before anything is written, as it was at
-- BEGIN. A session behind PgBouncer still ships inside a transaction of its own (its
-- statement timeout is set per transaction), where the check now runs twice, at a few
-- microseconds each. The signature, and everything else, is version 8's.
CREATE OR REPLACE FUNCTION hs_ship(
    tenant text, latest_ms int8, drift_ms int8, idle_ms text, channel text, signal text,
    collections text[], keys text[], payloads bytea[], embeddings bytea[], hlcs int8[],
    origins bytea[], tombstones bool[], hashes bytea[], key_ids text[], buckets int8[],
    leaves int8[],
    OUT changed int8, OUT server_ms int8) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM hs_select_tenant(tenant);
    server_ms := (extract(epoch FROM clock_timestamp()) * 1000)::int8;
    IF latest_ms > server_ms + drift_ms THEN
        RETURN;
    END IF;
    INSERT INTO hs_records AS r (tenant, collection, key, payload, embedding, hlc, origin,
                                 tombstone, hash, key_id, bucket, leaf)
    SELECT hs_ship.tenant, unnest(collections), unnest(keys), unnest(payloads),
           unnest(embeddings), unnest(hlcs), unnest(origins), unnest(tombstones),
           unnest(hashes), unnest(key_ids), unnest(buckets), unnest(leaves)
    ON CONFLICT (tenant, collection, key) DO UPDATE SET
        payload = excluded.payload, embedding = excluded.embedding, hlc = excluded.hlc,
        origin = excluded.origin, tombstone = excluded.tombstone, hash = excluded.hash,
        key_id = excluded.key_id, bucket = excluded.bucket, leaf = excluded.leaf,
        txid = pg_current_xact_id(), seq = nextval('hs_change_seq'), updated_at = now()
    WHERE (excluded.hlc, excluded.origin) > (r.hlc, r.origin);
    GET DIAGNOSTICS changed = ROW_COUNT;
    PERFORM set_config('idle_in_transaction_session_timeout',
                       coalesce(idle_ms, current_setting('idle_in_transaction_session_timeout')),
                       true);
    IF changed > 0 AND signal IS NOT NULL THEN
        PERFORM pg_notify(channel, signal);
    END IF;
END
$$;

-- The tenant's collection definitions, in one statement that checks the tenant as
-- hs_ship does: what a device reads each sync round once the cloud has confirmed its
-- own definitions (a round trip, where a transaction took four).
CREATE FUNCTION hs_catalogue(tenant text)
    RETURNS TABLE (name text, dim int4, metric text, "precision" text, encrypted bool)
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hs_select_tenant(tenant);
    RETURN QUERY SELECT c.name, c.dim, c.metric, c.precision, c.encrypted
        FROM hs_collections c WHERE c.tenant = hs_catalogue.tenant ORDER BY c.name;
END
$$;
