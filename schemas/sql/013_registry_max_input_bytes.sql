-- REGISTRY events v3: a capability may declare the largest input it takes (NULL: it declares
-- none, and the gateway's default limit applies). Rows folded from v2 events declare none, as a
-- rebuild from the log would fold them.
ALTER TABLE registry_capabilities ADD COLUMN max_input_bytes integer CHECK (max_input_bytes > 0);
