-- Delivery of outbox events to the BSS webhook (src/notify): one row per selected event, created
-- by the delivery worker when it first sees the event, so the state survives restarts. Keyed by
-- the outbox sequence (not a cursor): an event that commits late with a lower sequence simply
-- has no row yet and is picked up when it appears.

CREATE TABLE webhook_deliveries (
    sequence        BIGINT PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    msisdn          TEXT NOT NULL,
    -- Attempts started (counted when an attempt claims the row).
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Epoch milliseconds of real time (never the manual clock) when the next attempt is due;
    -- while an attempt runs, the end of its lease.
    next_attempt_at BIGINT NOT NULL,
    delivered_at    TIMESTAMPTZ,
    dead_at         TIMESTAMPTZ,
    last_error      TEXT
);

-- The undelivered, not dead-lettered rows: the worker's work list, per MSISDN in sequence order.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (msisdn, sequence)
    WHERE delivered_at IS NULL AND dead_at IS NULL;

-- The dead letters, for ListDeadLetters.
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (sequence)
    WHERE dead_at IS NOT NULL;
