-- The sweep: the VALIDITY_EXPIRING notice sent per validity period, and one row per sweep run.

-- The valid_until the last VALIDITY_EXPIRING notice was sent for (once per validity period).
ALTER TABLE accounts ADD COLUMN expiring_notified_for DATE;
ALTER TABLE account_archive ADD COLUMN expiring_notified_for DATE;

CREATE TABLE sweep_runs (
    id                       BIGSERIAL PRIMARY KEY,
    as_of                    TIMESTAMPTZ NOT NULL,
    started_at               TIMESTAMPTZ NOT NULL,
    finished_at              TIMESTAMPTZ,
    -- running, succeeded or failed
    status                   TEXT NOT NULL,
    dry_run                  BOOLEAN NOT NULL,
    examined                 BIGINT NOT NULL DEFAULT 0,
    to_grace                 BIGINT NOT NULL DEFAULT 0,
    to_locked                BIGINT NOT NULL DEFAULT 0,
    to_recycled_from_locked  BIGINT NOT NULL DEFAULT 0,
    to_recycled_unactivated  BIGINT NOT NULL DEFAULT 0,
    expiring_notified        BIGINT NOT NULL DEFAULT 0,
    error                    TEXT
);

-- Start-up asks for the last succeeded run (missed-sweep catch-up).
CREATE INDEX sweep_runs_by_status ON sweep_runs (status, as_of);
