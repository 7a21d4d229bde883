-- IDENTITY api_key.issued may carry the key's toolset: the capabilities it may call (names or
-- families, "text.*"), or the name of a toolset of its tenant (toolset.defined) that it follows.
-- Empty, as for every key folded from an older event: every capability.
ALTER TABLE api_keys ADD COLUMN capabilities text[] NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN toolset text NOT NULL DEFAULT '';
