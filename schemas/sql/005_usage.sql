-- Usage read models, folded from the USAGE stream by projections/usage.py.
--
-- usage_events holds every event once: its key is the event's identity (call or write id,
-- metric) plus its time, which the partitioning needs; the time is part of the event, so a
-- duplicate has the same key. It has no other index: it is read by key (recovery) and per
-- tenant only for audits, while every figure the API serves comes from the aggregates. The aggregates grow only by rows the raw insert actually added,
-- in the same statement, so a duplicate event changes nothing anywhere.
--
-- usage_events is partitioned by month (UTC); the projection creates a month's partition the
-- first time it sees an event of that month, in the schema usage_partitions. The app role has
-- no access to that schema: it can read only through the parent table, where the grant and the
-- row level security policy are (a partition read directly would not apply the parent's policy).
CREATE SCHEMA usage_partitions;

CREATE TABLE usage_events (
    call_id      text NOT NULL,         -- the call id, or a storage write's operation id
    metric       text NOT NULL,
    at           timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    value        bigint NOT NULL,
    outcome      text NOT NULL,         -- success, cancelled, timeout, failed, rate_limited (contracts/usage_events.py)
    capability   text NOT NULL,
    module_id    text NOT NULL,         -- the module that answered, or the store that wrote
    user_id      text NOT NULL,
    api_key_id   text NOT NULL,
    PRIMARY KEY (call_id, metric, at)
) PARTITION BY RANGE (at);

-- Per tenant, day and metric: what billing reads.
CREATE TABLE usage_daily (
    tenant_id    text NOT NULL,
    day          date NOT NULL,         -- UTC
    metric       text NOT NULL,
    outcome      text NOT NULL,
    value        bigint NOT NULL,
    events       bigint NOT NULL,
    PRIMARY KEY (tenant_id, day, metric, outcome)
);

-- Per tenant, hour, capability, module and metric: hourly series, and every per-capability or
-- per-module figure (one table for both: a capability is served by few modules, so keying by
-- both costs hardly more rows than keying by either, and saves a second upsert per batch).
CREATE TABLE usage_hourly (
    tenant_id    text NOT NULL,
    hour         timestamptz NOT NULL,  -- the start of the UTC hour
    capability   text NOT NULL,
    module_id    text NOT NULL,
    metric       text NOT NULL,
    outcome      text NOT NULL,
    value        bigint NOT NULL,
    events       bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour, capability, module_id, metric, outcome)
);

ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_events USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_daily USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE usage_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_hourly FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_hourly USING (tenant_id = current_setting('dai.tenant_id', true));
