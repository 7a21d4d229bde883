-- A module's calls across every tenant that called it, for its author (GET /v1/modules/{module}/stats):
-- counts and latency percentiles of the calls the module answered in a window, whoever made them.
--
-- Those rows are other tenants': the read runs in a platform transaction (dai.scope = 'platform',
-- schemas/tenancy.py), which the calls policy now admits as the tenants and modules policies do,
-- and keeps only the module's rows (module_id; module ids are unique across tenants). The app role
-- still reads nothing else; the gateway's handler is the one query that reads calls so.
ALTER POLICY tenant_isolation ON calls
    USING (tenant_id = current_setting('dai.tenant_id', true) OR current_setting('dai.scope', true) = 'platform');

-- The module's window: its calls that ended between two times.
CREATE INDEX calls_by_module ON calls (module_id, ended_at) WHERE ended_at IS NOT NULL;
