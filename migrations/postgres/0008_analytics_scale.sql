-- The lifecycle analytics at scale (issue 18 item 5): every report counts in the database, from
-- narrow partial indexes and one aggregate kept in the same transaction as the history rows.
-- Each index holds every column its query reads, the ones of its own condition included (SQLite
-- reads the table for a column the index lacks, even one its condition fixes).

-- The channel of a recharge (`RechargeChannel`), written with its RECHARGE row (NULL for every
-- other row; NULL also when the request named none, e.g. rows older than this column whose
-- idempotency key was missing). Existing RECHARGE rows take it from their request's
-- fingerprint, `Recharge|msisdn|amount|channel|validity_days`.
ALTER TABLE account_history ADD COLUMN channel INTEGER;

UPDATE account_history h
SET channel = CAST(NULLIF(split_part(k.fingerprint, '|', 4), '') AS INTEGER)
FROM idempotency_keys k
WHERE h.kind = 4 AND k.request_id = h.request_id AND k.fingerprint LIKE 'Recharge|%';

-- Recharges by time with their channel, amount and states: flows per period and the dashboard's
-- recharges of today read this index alone (it replaces 0005's).
DROP INDEX account_history_recharges;
CREATE INDEX account_history_recharges
    ON account_history (at, kind, channel, amount, from_state, to_state) WHERE kind = 4;

-- The rows that move an MSISDN between states (a provisioning, or from one state to another):
-- stage composition per day and the lifecycle flows, counted per period from this index alone
-- (it replaces 0007's index of the lifecycle kinds).
DROP INDEX account_history_lifecycle;
CREATE INDEX account_history_moves ON account_history (at, kind, generation, from_state, to_state, amount)
    WHERE kind = 1 OR from_state <> to_state;

-- The win-back cohort: the VALID -> GRACE rows by time, and the rows that leave GRACE by
-- account generation (how each stay ended).
CREATE INDEX account_history_grace_entries
    ON account_history (at, kind, from_state, to_state, msisdn, generation, id)
    WHERE kind = 7 AND from_state = 2 AND to_state = 3;
CREATE INDEX account_history_grace_exits
    ON account_history (msisdn, generation, id, kind, from_state) WHERE from_state = 3;

-- Cohort retention: the rows that lock or recycle an account generation or take it out of
-- LOCKED.
CREATE INDEX account_history_locks
    ON account_history (msisdn, generation, id, at, to_state, from_state)
    WHERE to_state IN (4, 5) OR from_state = 4;

-- One row per account generation that was activated or recharged: when it was activated (its
-- ACTIVATED row's instant) and its recharges (RECHARGE rows, and UNLOCK rows with an amount):
-- their sum in fen, their number and the last one's instant. Kept by every write of history
-- rows in the same transaction (`Writes::insert_history`); read by cohorts and churn warnings.
CREATE TABLE generation_values (
    msisdn           TEXT NOT NULL,
    generation       BIGINT NOT NULL,
    activated_at     TIMESTAMPTZ,
    recharge_total   BIGINT NOT NULL,
    recharge_count   BIGINT NOT NULL,
    last_recharge_at TIMESTAMPTZ,
    PRIMARY KEY (msisdn, generation)
);

CREATE INDEX generation_values_activated ON generation_values (activated_at)
    WHERE activated_at IS NOT NULL;

INSERT INTO generation_values (msisdn, generation, activated_at, recharge_total, recharge_count,
    last_recharge_at)
SELECT msisdn, generation,
    MIN(CASE WHEN kind = 3 THEN at END),
    SUM(CASE WHEN kind = 3 THEN 0 ELSE amount END),
    SUM(CASE WHEN kind = 3 THEN 0 ELSE 1 END),
    MAX(CASE WHEN kind = 3 THEN NULL ELSE at END)
FROM account_history
WHERE kind = 3 OR kind = 4 OR (kind = 6 AND amount > 0)
GROUP BY msisdn, generation;
