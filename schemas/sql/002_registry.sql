-- The module registry read model, folded from the REGISTRY stream.
CREATE TABLE registry_modules (
    module_id     text PRIMARY KEY,
    name          text NOT NULL,
    version       text NOT NULL,
    description   text NOT NULL,
    digest        text NOT NULL,
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_sequence bigint NOT NULL
);

CREATE TABLE registry_capabilities (
    module_id     text NOT NULL REFERENCES registry_modules (module_id) ON DELETE CASCADE,
    action        text NOT NULL,
    description   text NOT NULL,
    input_schema  jsonb NOT NULL,
    output_schema jsonb NOT NULL,
    streaming     boolean NOT NULL,
    PRIMARY KEY (module_id, action)
);

CREATE INDEX registry_capabilities_action ON registry_capabilities (action);
