-- hybridsync cloud schema, version 1. Applied by an administrative role that owns the
-- objects; the sink connects as a separate role that is granted DML only, so row-level
-- security applies to it (owners and superusers bypass RLS).

-- Every change to a row takes a fresh position: the writing transaction's id and a
-- sequence number. The change feed orders by (txid, seq) and only reads below the
-- oldest running transaction, so a transaction that commits late cannot be skipped.
CREATE SEQUENCE hs_change_seq;

CREATE TABLE hs_records (
    tenant     text    NOT NULL,
    collection text    NOT NULL,
    key        text    NOT NULL,
    payload    bytea   NOT NULL,
    embedding  bytea,
    hlc        bigint  NOT NULL,
    origin     bytea   NOT NULL,
    tombstone  boolean NOT NULL,
    hash       bytea   NOT NULL,
    txid       xid8    NOT NULL DEFAULT pg_current_xact_id(),
    seq        bigint  NOT NULL DEFAULT nextval('hs_change_seq'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, collection, key)
);
CREATE INDEX hs_records_feed ON hs_records (tenant, collection, txid, seq);

CREATE TABLE hs_devices (
    tenant     text NOT NULL,
    device_id  text NOT NULL,
    name       text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, device_id)
);

ALTER TABLE hs_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE hs_records FORCE ROW LEVEL SECURITY;
CREATE POLICY hs_records_tenant ON hs_records
    USING (tenant = current_setting('hybridsync.tenant', true))
    WITH CHECK (tenant = current_setting('hybridsync.tenant', true));

ALTER TABLE hs_devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE hs_devices FORCE ROW LEVEL SECURITY;
CREATE POLICY hs_devices_tenant ON hs_devices
    USING (tenant = current_setting('hybridsync.tenant', true))
    WITH CHECK (tenant = current_setting('hybridsync.tenant', true));
