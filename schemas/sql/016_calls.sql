-- Calls read model (issue 16), folded from the MCP stream by projections/calls.py: one row per
-- call that entered through the gateway, from its request record (mcp.req.<tenant>.<capability>)
-- and its answer records (mcp.res.<tenant>.<capability>: chunks, and the answer that ended it).
--
-- Payloads are not copied here: request_seq and answer_seq are the MCP stream sequences of the
-- request and of the answer that ended the call, from which GET /v1/calls/{call_id} reads them.
CREATE TABLE calls (
    tenant_id        text NOT NULL,
    call_id          text NOT NULL,              -- the correlation id of the request and its answers
    capability       text NOT NULL,
    module_id        text,                       -- the module that answered; NULL when none did
    transport        text,                       -- http, sse, websocket, mcp; NULL when not recorded
    user_id          text NOT NULL DEFAULT '',
    api_key_id       text NOT NULL DEFAULT '',
    at               timestamptz NOT NULL,       -- when it began: started_at, or ended_at without a request record
    started_at       timestamptz,                -- the request's time; NULL when no request was recorded
    ended_at         timestamptz,                -- the time of the answer that ended it; NULL while in flight
    duration_ms      double precision,           -- ended_at - started_at; NULL unless both are known
    outcome          text,                       -- success, failed, timeout, cancelled, rate_limited (contracts/call_usage.py)
    error_code       text,
    error_message    text,
    chunks           integer NOT NULL DEFAULT 0, -- stream chunks with a payload or progress
    request_seq      bigint,
    answer_seq       bigint,
    ended_by_gateway boolean NOT NULL DEFAULT false,  -- the gateway's own end (it outranks a module's later answer)
    PRIMARY KEY (tenant_id, call_id)
);
-- The list (newest first), the live feed (ends in stream order) and the stats (ends in a window).
CREATE INDEX calls_recent ON calls (tenant_id, at DESC, call_id);
CREATE INDEX calls_ended ON calls (tenant_id, answer_seq) WHERE answer_seq IS NOT NULL;
CREATE INDEX calls_window ON calls (tenant_id, ended_at) WHERE ended_at IS NOT NULL;

ALTER TABLE calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE calls FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON calls USING (tenant_id = current_setting('dai.tenant_id', true));
