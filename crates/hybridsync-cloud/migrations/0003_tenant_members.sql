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

-- Every policy now requires the selected tenant AND membership in it. The membership
-- test does not depend on the row, so PostgreSQL evaluates it once per statement
-- (an InitPlan), not once per row.
DROP POLICY hs_records_tenant ON hs_records;
CREATE POLICY hs_records_tenant ON hs_records
    USING (tenant = current_setting('hybridsync.tenant', true)
           AND (SELECT EXISTS (SELECT 1 FROM hs_tenant_members m
                               WHERE m.tenant = current_setting('hybridsync.tenant', true)
                                 AND pg_has_role(current_user, m.member, 'MEMBER'))))
    WITH CHECK (tenant = current_setting('hybridsync.tenant', true)
           AND (SELECT EXISTS (SELECT 1 FROM hs_tenant_members m
                               WHERE m.tenant = current_setting('hybridsync.tenant', true)
                                 AND pg_has_role(current_user, m.member, 'MEMBER'))));

DROP POLICY hs_devices_tenant ON hs_devices;
CREATE POLICY hs_devices_tenant ON hs_devices
    USING (tenant = current_setting('hybridsync.tenant', true)
           AND (SELECT EXISTS (SELECT 1 FROM hs_tenant_members m
                               WHERE m.tenant = current_setting('hybridsync.tenant', true)
                                 AND pg_has_role(current_user, m.member, 'MEMBER'))))
    WITH CHECK (tenant = current_setting('hybridsync.tenant', true)
           AND (SELECT EXISTS (SELECT 1 FROM hs_tenant_members m
                               WHERE m.tenant = current_setting('hybridsync.tenant', true)
                                 AND pg_has_role(current_user, m.member, 'MEMBER'))));

DROP POLICY hs_collections_tenant ON hs_collections;
CREATE POLICY hs_collections_tenant ON hs_collections
    USING (tenant = current_setting('hybridsync.tenant', true)
           AND (SELECT EXISTS (SELECT 1 FROM hs_tenant_members m
                               WHERE m.tenant = current_setting('hybridsync.tenant', true)
                                 AND pg_has_role(current_user, m.member, 'MEMBER'))))
    WITH CHECK (tenant = current_setting('hybridsync.tenant', true)
           AND (SELECT EXISTS (SELECT 1 FROM hs_tenant_members m
                               WHERE m.tenant = current_setting('hybridsync.tenant', true)
                                 AND pg_has_role(current_user, m.member, 'MEMBER'))));
