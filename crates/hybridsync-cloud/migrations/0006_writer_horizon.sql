-- hybridsync cloud schema, version 6: a change-feed horizon that waits only for the
-- writers of hs_records, not for every transaction of the database.
--
-- Until now the feed read only below pg_snapshot_xmin, the oldest transaction still
-- running anywhere in the database: one open transaction (an unrelated batch job, or a
-- device whose network vanished between its upsert and its COMMIT) held back every
-- device of every tenant. From this version every transaction that writes hs_records
-- first announces itself with a transaction-scoped shared advisory lock, keyed by the
-- tenant it selected (0 when it selected none: such a writer holds back every tenant).
-- The feed's horizon is the oldest transaction id among the holders of its tenant's key
-- and of key 0 (see the sink's feed.rs); transactions that hold neither are ignored.
--
-- The announcement must come before the transaction takes an id: a transaction that
-- had an id before it announced itself could commit rows below a horizon a reader has
-- already passed. The trigger below announces every statement that writes hs_records,
-- and refuses one whose transaction already has an id without having announced itself
-- (write hs_records first in a transaction, or call hs_enter_writer() first).

-- The lock's first key: "HSYC". The second is the tenant's key.
CREATE FUNCTION hs_writer_key(tenant text) RETURNS int4 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN tenant IS NULL OR tenant = '' THEN 0 ELSE hashtext(tenant) & 2147483647 END
$$;

CREATE FUNCTION hs_enter_writer() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    writer_key int4 := hs_writer_key(current_setting('hybridsync.tenant', true));
BEGIN
    IF current_setting('hybridsync.writer', true) IS NOT DISTINCT FROM writer_key::text THEN
        RETURN;
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'hs_records must be written before anything else in a transaction'
            USING ERRCODE = '55000',
                  HINT = 'the change feed waits only for writers that announce themselves before taking a transaction id: call SELECT hs_enter_writer() first';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1213421891, writer_key);
    PERFORM set_config('hybridsync.writer', writer_key::text, true);
END
$$;

CREATE FUNCTION hs_records_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hs_enter_writer();
    RETURN NULL;
END
$$;

CREATE TRIGGER hs_records_writer BEFORE INSERT OR UPDATE OR DELETE ON hs_records
    FOR EACH STATEMENT EXECUTE FUNCTION hs_records_writer();
