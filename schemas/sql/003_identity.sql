-- Identity read models, folded from the IDENTITY stream. Tenant-scoped tables use Row Level
-- Security, forced even for the table owner: a request sees only the tenant its transaction
-- names with SET LOCAL dai.tenant_id. Only the tenants table can also be read platform-wide,
-- when a super admin's transaction sets dai.scope = 'platform'.
CREATE TABLE tenants (
    tenant_id    text PRIMARY KEY,
    name         text NOT NULL,
    suspended    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE TABLE users (
    tenant_id    text NOT NULL,
    user_id      text PRIMARY KEY,
    email        text NOT NULL,
    role         text NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    tenant_id    text NOT NULL,
    key_id       text PRIMARY KEY,
    user_id      text NOT NULL,
    name         text NOT NULL,
    prefix       text NOT NULL,
    role         text NOT NULL,
    scopes       text[] NOT NULL,
    expires_at   timestamptz,
    rate_limit   integer,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);

CREATE TABLE revoked_tokens (
    tenant_id    text NOT NULL,
    jti          text PRIMARY KEY,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz NOT NULL
);

CREATE TABLE identity_audit (
    sequence     bigint PRIMARY KEY,  -- the event's IDENTITY stream sequence
    tenant_id    text NOT NULL,
    event_type   text NOT NULL,
    subject      text NOT NULL,
    actor        text NOT NULL,
    ip           text NOT NULL,
    user_agent   text NOT NULL,
    success      boolean NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX identity_audit_tenant_at ON identity_audit (tenant_id, at);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = current_setting('dai.tenant_id', true) OR current_setting('dai.scope', true) = 'platform');

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE revoked_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE revoked_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON revoked_tokens USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE identity_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON identity_audit USING (tenant_id = current_setting('dai.tenant_id', true));
