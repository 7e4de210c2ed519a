-- The lifecycle core: one row per MSISDN (its current generation), the archive of earlier
-- generations, the history of every change, the idempotency keys and the event outbox.

CREATE TABLE accounts (
    msisdn                TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL UNIQUE,
    generation            BIGINT NOT NULL,
    state                 INTEGER NOT NULL,
    balance               BIGINT NOT NULL,
    preset_balance        BIGINT NOT NULL,
    sold                  INTEGER NOT NULL,
    initial_validity_days INTEGER NOT NULL,
    provisioned_at        TEXT NOT NULL,
    activated_at          TEXT,
    valid_until           TEXT,
    grace_until           TEXT,
    lock_until            TEXT,
    card_expiry           TEXT,
    recycled_at           TEXT,
    updated_at            TEXT NOT NULL,
    -- Epoch seconds of the instant the stored state ends; NULL once recycled.
    next_deadline         BIGINT
);

-- The nightly sweep selects only due accounts through this index, in (next_deadline, msisdn)
-- order: many accounts share a deadline (local midnight), so the tie-break must be indexed too.
CREATE INDEX accounts_next_deadline ON accounts (next_deadline, msisdn) WHERE next_deadline IS NOT NULL;

CREATE TABLE account_archive (
    msisdn                TEXT NOT NULL,
    account_id            TEXT NOT NULL UNIQUE,
    generation            BIGINT NOT NULL,
    state                 INTEGER NOT NULL,
    balance               BIGINT NOT NULL,
    preset_balance        BIGINT NOT NULL,
    sold                  INTEGER NOT NULL,
    initial_validity_days INTEGER NOT NULL,
    provisioned_at        TEXT NOT NULL,
    activated_at          TEXT,
    valid_until           TEXT,
    grace_until           TEXT,
    lock_until            TEXT,
    card_expiry           TEXT,
    recycled_at           TEXT,
    updated_at            TEXT NOT NULL,
    next_deadline         BIGINT,
    PRIMARY KEY (msisdn, generation)
);

CREATE TABLE account_history (
    id          INTEGER PRIMARY KEY,
    msisdn      TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    at          TEXT NOT NULL,
    kind        INTEGER NOT NULL,
    from_state  INTEGER,
    to_state    INTEGER,
    amount      BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT
);

CREATE INDEX account_history_by_msisdn ON account_history (msisdn, id);

CREATE TABLE idempotency_keys (
    request_id  TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    response    BLOB NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE outbox (
    sequence     INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    event_type   INTEGER NOT NULL,
    msisdn       TEXT NOT NULL,
    account_id   TEXT NOT NULL,
    generation   BIGINT NOT NULL,
    from_state   INTEGER NOT NULL,
    to_state     INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    effective_at TEXT NOT NULL,
    emitted_at   TEXT NOT NULL
);
