-- One row written by the storage probe (`AccountStore::probe_write`): after a write failed
-- because the storage could not be written (disk full, read-only file), health stays
-- NOT_SERVING until this small committed write succeeds again.

CREATE TABLE storage_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TIMESTAMPTZ NOT NULL
);
