-- REGISTRY events v2 name the digest's algorithm ("sha256:<hex>") and v1 events are upcast on
-- read. Rows folded from v1 events get the same prefix, so the read model equals a rebuild.
UPDATE registry_modules SET digest = 'sha256:' || digest WHERE digest NOT LIKE '%:%';
