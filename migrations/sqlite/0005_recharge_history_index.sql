-- The operations dashboard counts today's recharges (`AccountStore::recharge_totals`): only the
-- RECHARGE rows (kind 4) by time are indexed, so the count reads today's recharges and not the
-- whole history, and other history writes pay nothing for it.
CREATE INDEX account_history_recharges ON account_history (at) WHERE kind = 4;
