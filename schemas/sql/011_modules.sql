-- Modules registered through the API (issue 11), folded from the module.* events of IDENTITY.
-- The credential itself is never stored anywhere; the prefix is its non-secret head. Like the
-- tenants table, the rows can also be read platform-wide, when a super admin's transaction sets
-- dai.scope = 'platform' (GET /v1/modules lists every tenant's modules for a super admin).
CREATE TABLE modules (
    tenant_id          text NOT NULL,
    module_id          text PRIMARY KEY,  -- unique across tenants
    owner_user_id      text NOT NULL,     -- empty when an owner-less (bootstrap) key registered it
    name               text NOT NULL,
    capabilities       text[] NOT NULL,
    credential_prefix  text NOT NULL,
    registered_at      timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    revoked_at         timestamptz
);
CREATE INDEX modules_tenant ON modules (tenant_id, module_id);

ALTER TABLE modules ENABLE ROW LEVEL SECURITY;
ALTER TABLE modules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON modules
    USING (tenant_id = current_setting('dai.tenant_id', true) OR current_setting('dai.scope', true) = 'platform');
