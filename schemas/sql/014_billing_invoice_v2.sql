-- invoice.issued v2 (contracts/billing_events.py) records the seller and, on usage lines, what
-- was used against the allowance. Rows folded from v1 events have NULL there: a v1 invoice did
-- not record them, so a rebuild from the log gives the same NULLs.
ALTER TABLE billing_invoices ADD COLUMN seller jsonb;  -- {"name", "address", "registration_number"}
ALTER TABLE billing_invoice_lines ADD COLUMN used numeric;  -- billing units used in the month
ALTER TABLE billing_invoice_lines ADD COLUMN included bigint;  -- the plan's allowance, in billing units
