-- Where each projection stands in its stream. A projection updates its row in the same
-- transaction as the read-model rows it changes, so rows and position never disagree.
CREATE TABLE projection_checkpoints (
    name          text PRIMARY KEY,
    last_sequence bigint NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
