-- hybridsync cloud schema, version 7: the acting tenant in PL/pgSQL.
--
-- Every policy calls hs_acting_tenant(), once per statement for each check it makes (an
-- upsert that updates a row makes three). As a SQL function it could not be inlined
-- (its body is a query with a sub-select), so each call planned its body afresh:
-- about 0.1 ms, a third of a one-row upsert's time on the server. PL/pgSQL keeps the
-- plan for the session. What it returns is unchanged: the selected tenant when the
-- current role is a member of it, else NULL.
CREATE OR REPLACE FUNCTION hs_acting_tenant() RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    selected text := current_setting('hybridsync.tenant', true);
BEGIN
    IF EXISTS (SELECT 1 FROM hs_tenant_members m
               WHERE m.tenant = selected AND pg_has_role(current_user, m.member, 'MEMBER')) THEN
        RETURN selected;
    END IF;
    RETURN NULL;
END
$$;
