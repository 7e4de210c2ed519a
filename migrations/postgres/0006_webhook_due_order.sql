-- The delivery worker reads due events oldest first (`due_webhook_deliveries`: ORDER BY sequence
-- LIMIT n over the pending rows). With only the (msisdn, sequence) index every read sorted the
-- whole backlog; this one walks it in order and stops after n.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (sequence)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
