-- hybridsync cloud schema, version 2: collection definitions travel between devices.
CREATE TABLE hs_collections (
    tenant     text    NOT NULL,
    name       text    NOT NULL,
    dim        integer,
    metric     text,
    precision  text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

ALTER TABLE hs_collections ENABLE ROW LEVEL SECURITY;
ALTER TABLE hs_collections FORCE ROW LEVEL SECURITY;
CREATE POLICY hs_collections_tenant ON hs_collections
    USING (tenant = current_setting('hybridsync.tenant', true))
    WITH CHECK (tenant = current_setting('hybridsync.tenant', true));
