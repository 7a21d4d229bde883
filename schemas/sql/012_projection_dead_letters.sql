-- Events a projection could not decode or apply: quarantined, so that the projection goes on
-- with the next event instead of stopping on one it will never fold. A row is written in the
-- same transaction as the checkpoint that moves past its event (projections/quarantine.py);
-- `dai projections status` counts them, `dai projections retry NAME` applies them again after a
-- fix and removes those that now apply. The payload is the event's bytes as the log holds them.
-- Platform-wide and for operators only: the app role gets no grant on it (see schemas/roles.py).
CREATE TABLE projection_dead_letters (
    projection      text NOT NULL,
    stream          text NOT NULL,
    sequence        bigint NOT NULL,
    subject         text NOT NULL,
    error           text NOT NULL,
    payload         bytea NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 1,   -- 1 + the retries that failed again
    PRIMARY KEY (projection, sequence)
);
