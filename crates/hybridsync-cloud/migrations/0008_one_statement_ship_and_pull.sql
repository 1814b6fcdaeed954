-- hybridsync cloud schema, version 8: a page of the change feed in one statement, and
-- the upsert with its checks in one.
--
-- Until now a page of the feed took five round trips (BEGIN, the tenant's scope, the
-- writer horizon, the page, COMMIT), and the horizon read pg_locks, which copies every
-- lock of the server. hs_feed_page does the same work inside one statement, which a
-- direct session sends as one round trip and the server commits on its own; it reads
-- the holders of the writer keys only when a try of those keys finds one there.
-- hs_ship is the upsert, with the clock check the sink made before (it read the
-- server's clock at BEGIN), in the round trip of the upsert itself.
--
-- Every function runs as the caller (SECURITY INVOKER), so row-level security applies
-- to them as to any statement of the login role, and selects the tenant
-- transaction-locally, as the sink always has. A login role that may not act for the
-- tenant (not a member of it, and neither a superuser nor BYPASSRLS) is refused with
-- SQLSTATE HS403 and the tenant as the error's detail (hs_select_tenant), as the sink
-- refused it before.

-- The tenant's scope, checked: selects `tenant` for the rest of the transaction and
-- raises HS403 unless the login role may act for it.
CREATE FUNCTION hs_select_tenant(tenant text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('hybridsync.tenant', tenant, true);
    IF NOT (EXISTS (SELECT 1 FROM hs_tenant_members m
                    WHERE m.tenant = hs_select_tenant.tenant
                      AND pg_has_role(current_user, m.member, 'MEMBER'))
            OR (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)) THEN
        RAISE EXCEPTION 'role % may not act for tenant %', current_user, tenant
            USING ERRCODE = 'HS403', DETAIL = tenant;
    END IF;
END
$$;

-- A shipment: the batch's columns as arrays, upserted monotone in (hlc, origin).
-- Nothing is written when `latest_ms` (the batch's newest physical clock reading) lies
-- more than `drift_ms` ahead of the server's clock: `changed` is then NULL and
-- `server_ms` says by how much. When rows changed and `signal` is not NULL, `signal`
-- is notified on `channel` (delivered to the listeners at commit). `idle_ms` (NULL
-- keeps it) tightens the transaction's idle timeout once the rows are written, for a
-- caller that ships inside a transaction of its own: from then on the transaction
-- holds an id, and with it the other devices' feed horizon.
CREATE FUNCTION hs_ship(
    tenant text, latest_ms int8, drift_ms int8, idle_ms text, channel text, signal text,
    collections text[], keys text[], payloads bytea[], embeddings bytea[], hlcs int8[],
    origins bytea[], tombstones bool[], hashes bytea[], key_ids text[], buckets int8[],
    leaves int8[],
    OUT changed int8, OUT server_ms int8) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- The tenant's scope. The sink's transaction has checked it already
    -- (hs_select_tenant); row-level security refuses the rows of a role that may not
    -- act for the tenant in any case.
    PERFORM set_config('hybridsync.tenant', tenant, true);
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

-- Whether no transaction holds this tenant's writer key or key 0 now: tries both
-- exclusively, without waiting, inside a subtransaction that is then rolled back, which
-- releases whatever it took. Far cheaper than reading pg_locks, which copies every lock
-- of the server: a page of the feed asks this first and reads the holders only when
-- some writer is there (or another reader is trying at the same instant).
CREATE FUNCTION hs_no_writer(tenant text) RETURNS bool LANGUAGE plpgsql AS $$
DECLARE
    free bool;
BEGIN
    BEGIN
        free := pg_try_advisory_xact_lock(1213421891, hs_writer_key(tenant))
                AND pg_try_advisory_xact_lock(1213421891, 0);
        RAISE EXCEPTION USING ERRCODE = 'HS000';
    EXCEPTION WHEN SQLSTATE 'HS000' THEN
        RETURN free;
    END;
END
$$;

-- A page of the change feed: rows of `collection` after (after_txid, after_seq), in
-- (txid, seq) order, below the writer horizon (schema version 6; the sink's feed.rs
-- says why nothing is skipped). The horizon and the page are two statements of this
-- VOLATILE function, and under READ COMMITTED each takes its own snapshot, so the page
-- sees every commit that ended before the horizon was read: the two statements of the
-- transaction the sink used to send. Under another isolation level both would share
-- one snapshot, so the function refuses to run there (SQLSTATE HS001); the sink then
-- calls it inside a READ COMMITTED transaction.
CREATE FUNCTION hs_feed_page(tenant text, collection text, after_txid int8, after_seq int8,
                             page_rows int8)
RETURNS TABLE (row_key text, row_payload bytea, row_embedding bytea, row_hlc int8,
               row_origin bytea, row_tombstone bool, row_hash bytea, row_txid int8,
               row_seq int8)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    horizon int8;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'the change feed is read under READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'HS001';
    END IF;
    -- The tenant's scope. Row-level security hides every row from a role that may
    -- not act for the tenant; only an empty page asks why (and refuses such a role).
    PERFORM set_config('hybridsync.tenant', tenant, true);
    -- The first id not yet completed, as of this statement's snapshot. If no writer
    -- holds the keys after it, that is the horizon: a transaction with a smaller id
    -- had announced itself before this snapshot, so it held its key until it ended,
    -- which is before the keys were found free, which is before the page's snapshot
    -- (and a transaction's locks are released only once its commit is visible).
    horizon := pg_snapshot_xmax(pg_current_snapshot())::text::int8;
    IF NOT hs_no_writer(tenant) THEN
        -- Otherwise the oldest transaction id among the holders of this tenant's writer key
        -- or key 0, or the first id not yet completed. backend_xid is a 32-bit id; a
        -- running one lies within 2^31 below the snapshot's xmax, which places it in the
        -- 64-bit sequence.
        WITH next AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS id),
             writers AS (
                 SELECT a.backend_xid::text::int8 AS xid
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND l.classid = 1213421891
                   AND l.objid IN (0, hs_writer_key(tenant))
                   AND a.backend_xid IS NOT NULL)
        SELECT least(next.id, min(next.id - (next.id - w.xid) % 4294967296)) INTO horizon
        FROM next LEFT JOIN writers w ON true GROUP BY next.id;
    END IF;
    -- The order names the table's columns: the feed index hands out one page.
    RETURN QUERY
        SELECT r.key, r.payload, r.embedding, r.hlc, r.origin, r.tombstone, r.hash,
               r.txid::text::int8, r.seq
        FROM hs_records r
        WHERE r.tenant = hs_feed_page.tenant AND r.collection = hs_feed_page.collection
          AND (r.txid, r.seq) > (after_txid::text::xid8, after_seq)
          AND r.txid < horizon::text::xid8
        ORDER BY r.txid, r.seq
        LIMIT page_rows;
    IF NOT FOUND THEN
        PERFORM hs_select_tenant(tenant);
    END IF;
END
$$;
