-- hybridsync cloud schema, version 3: tenants bound to login roles.
--
-- A tenant is a setting the client chooses, so on its own it guards only against our
-- own bugs. From this version a role may act for a tenant only if the administrative
-- role made it (or a role it belongs to) a member of that tenant here. The app role
-- may read only its own membership rows and change none.
CREATE TABLE hs_tenant_members (
    member     regrole     NOT NULL,
    tenant     text        NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, member)
);
-- The owner (the administrative role) manages memberships; every other role sees only
-- the rows that name it or a role it belongs to.
ALTER TABLE hs_tenant_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY hs_tenant_members_own ON hs_tenant_members FOR SELECT
    USING (pg_has_role(current_user, member, 'MEMBER'));

-- The tenant this transaction selected, if its login role (or a role it belongs to) is
-- a member of it; NULL otherwise. Runs with the caller's rights, so it reads only the
-- caller's own membership rows. Policies call it as a scalar subquery, which
-- PostgreSQL evaluates once per statement (an InitPlan), not once per row.
CREATE FUNCTION hs_acting_tenant() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT s.tenant FROM (SELECT current_setting('hybridsync.tenant', true) AS tenant) s
    WHERE EXISTS (SELECT 1 FROM hs_tenant_members m
                  WHERE m.tenant = s.tenant AND pg_has_role(current_user, m.member, 'MEMBER'))
$$;

-- Every policy now requires the selected tenant AND membership in it.
DROP POLICY hs_records_tenant ON hs_records;
CREATE POLICY hs_records_tenant ON hs_records
    USING (tenant = (SELECT hs_acting_tenant())) WITH CHECK (tenant = (SELECT hs_acting_tenant()));
DROP POLICY hs_devices_tenant ON hs_devices;
CREATE POLICY hs_devices_tenant ON hs_devices
    USING (tenant = (SELECT hs_acting_tenant())) WITH CHECK (tenant = (SELECT hs_acting_tenant()));
DROP POLICY hs_collections_tenant ON hs_collections;
CREATE POLICY hs_collections_tenant ON hs_collections
    USING (tenant = (SELECT hs_acting_tenant())) WITH CHECK (tenant = (SELECT hs_acting_tenant()));
