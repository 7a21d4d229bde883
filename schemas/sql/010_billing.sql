-- Billing read models, folded from the BILLING stream by projections/billing.py. Every row
-- comes from an event, so dropping the tables and replaying the stream brings the same rows
-- back. Money is bigint minor units of the row's currency (yen for JPY) or numeric, never
-- float. Row level security as for identity: a request sees only its own tenant's rows.
CREATE TABLE billing_subscriptions (
    tenant_id      text PRIMARY KEY,
    plan_id        text NOT NULL,
    plan_name      text NOT NULL,
    interval       text NOT NULL CHECK (interval IN ('month', 'year')),
    time_zone      text NOT NULL,
    currency       text NOT NULL,
    status         text NOT NULL CHECK (status IN ('active', 'cancelled')),
    terms          jsonb NOT NULL,        -- the price list locked in by the last subscription event
    started_at     timestamptz NOT NULL,  -- the first subscription
    current_since  timestamptz NOT NULL,  -- the current plan and interval since
    cancelled_at   timestamptz,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE billing_customers (
    tenant_id                  text PRIMARY KEY,
    stripe_customer_id         text NOT NULL,
    default_payment_method_id  text,   -- a Stripe id; the card itself never leaves Stripe
    linked_at                  timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL
);

CREATE TABLE billing_invoices (
    invoice_id         text PRIMARY KEY,  -- "<tenant>-<YYYY-MM>": deterministic
    tenant_id          text NOT NULL,
    period             text NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    time_zone          text NOT NULL,
    currency           text NOT NULL,
    subtotal           bigint NOT NULL,
    tax_rate           numeric NOT NULL,
    tax                bigint NOT NULL,
    total              bigint NOT NULL,
    usage              jsonb NOT NULL,   -- the metered totals the overage lines were computed from
    status             text NOT NULL CHECK (status IN ('open', 'paid', 'payment_failed')),
    issued_at          timestamptz NOT NULL,
    stripe_invoice_id  text,
    paid_at            timestamptz,
    UNIQUE (tenant_id, period)
);

CREATE TABLE billing_invoice_lines (
    invoice_id     text NOT NULL REFERENCES billing_invoices (invoice_id) ON DELETE CASCADE,
    line_no        integer NOT NULL,
    tenant_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('base_fee', 'overage')),
    description    text NOT NULL,
    metric         text NOT NULL,
    plan_id        text NOT NULL,
    quantity       numeric NOT NULL,
    unit           text NOT NULL,
    unit_price     numeric NOT NULL,
    amount         bigint NOT NULL,
    service_start  timestamptz,
    service_end    timestamptz,
    PRIMARY KEY (invoice_id, line_no)
);

CREATE TABLE billing_payments (
    stripe_event_id    text PRIMARY KEY,  -- one row per Stripe event, however often it was delivered
    tenant_id          text NOT NULL,
    invoice_id         text NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    amount             bigint NOT NULL,
    currency           text NOT NULL,
    stripe_invoice_id  text NOT NULL,
    reason             text NOT NULL,
    at                 timestamptz NOT NULL
);
CREATE INDEX billing_payments_invoice ON billing_payments (invoice_id);

ALTER TABLE billing_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_subscriptions USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE billing_customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_customers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_customers USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE billing_invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_invoices USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE billing_invoice_lines ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_invoice_lines FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_invoice_lines USING (tenant_id = current_setting('dai.tenant_id', true));

ALTER TABLE billing_payments ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_payments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_payments USING (tenant_id = current_setting('dai.tenant_id', true));
