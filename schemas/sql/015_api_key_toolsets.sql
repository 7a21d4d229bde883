-- IDENTITY api_key.issued may carry the key's toolset: the capabilities it may call (names or
-- families, "text.*"). Empty, as for every key folded from an older event: every capability.
ALTER TABLE api_keys ADD COLUMN capabilities text[] NOT NULL DEFAULT '{}';
