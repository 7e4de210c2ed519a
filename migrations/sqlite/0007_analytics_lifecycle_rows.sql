-- The lifecycle analytics (issue 18, `AnalyticsStore`) read the rows that create an account or
-- move it between states (PROVISIONED 1, ACTIVATED 3, UNLOCK 6, STATE_CHANGED 7) by time: flows
-- per period, GRACE entries, cohorts by activation. Only those kinds are indexed, so recharges
-- (their own index, 0005) and the many charges pay nothing for it.
CREATE INDEX account_history_lifecycle ON account_history (at) WHERE kind IN (1, 3, 6, 7);
