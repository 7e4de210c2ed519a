-- Per quarter hour totals of the history rows the flows and the per-day stage composition count
-- (issue 18 item 5), kept by every write of history rows in the same transaction
-- (`Writes::add_values`): the reports sum at most a few rows per quarter hour instead of every
-- history row of their range, and the four partial history indexes they read go.
--
-- `slot`: the quarter hour's start, Unix seconds; every local midnight of every time zone in use
-- is a quarter hour of UTC, so a report's periods take whole slots. `code`: the row's kind,
-- states, pricing, re-provisioning and channel as one number (`analytics::total_code`):
-- channel * 100000 + kind * 10000 + (generation > 1) * 1000 + (amount > 0) * 100 + from * 10 + to.
-- Only rows that move an MSISDN (PROVISIONED, or states that differ) or RECHARGE rows count.
-- `shard`: writers that commit at the same time add to different rows (on PostgreSQL each
-- connection's own, `pg_backend_pid() % 64`; 0 on SQLite, one writer); the reads sum them.
CREATE TABLE history_totals (
    slot         BIGINT NOT NULL,
    code         BIGINT NOT NULL,
    shard        INTEGER NOT NULL,
    row_count    BIGINT NOT NULL,
    amount_total BIGINT NOT NULL,
    PRIMARY KEY (slot, code, shard)
) WITHOUT ROWID;

INSERT INTO history_totals (slot, code, shard, row_count, amount_total)
SELECT CAST(strftime('%s', at) AS INTEGER) / 900 * 900,
    COALESCE(channel, 0) * 100000 + kind * 10000
        + CASE WHEN generation > 1 THEN 1000 ELSE 0 END
        + CASE WHEN amount > 0 THEN 100 ELSE 0 END
        + COALESCE(from_state, 0) * 10 + COALESCE(to_state, 0),
    0, COUNT(*), SUM(amount)
FROM account_history
WHERE kind = 1 OR kind = 4 OR from_state <> to_state
GROUP BY 1, 2;

-- The win-back cohort (flows: GRACE entrants per period and how their stays ended). A stay
-- begins with a VALID -> GRACE row (counted in history_totals, code 70023 or 71023) and ends
-- with the next row of its account generation that leaves GRACE (from_state 3): won back if
-- that row is a RECHARGE (ended 1), another way otherwise (ended 2). `grace_ends` counts the
-- ended stays by the quarter hour their entry is in; a stay not counted there is still open.
-- `generation_values.grace_entered_at` marks the generation's open stay (the instant of its
-- VALID -> GRACE row; NULL: none), so the write that ends it knows where it began.
CREATE TABLE grace_ends (
    slot  BIGINT NOT NULL,
    ended INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    stays BIGINT NOT NULL,
    PRIMARY KEY (slot, ended, shard)
) WITHOUT ROWID;

INSERT INTO grace_ends (slot, ended, shard, stays)
SELECT e.slot, CASE WHEN e.exit_kind = 4 THEN 1 ELSE 2 END, 0, COUNT(*) FROM (
    SELECT CAST(strftime('%s', h.at) AS INTEGER) / 900 * 900 AS slot,
        (SELECT r.kind FROM account_history r
         WHERE r.msisdn = h.msisdn AND r.generation = h.generation AND r.id > h.id
           AND r.from_state = 3
         ORDER BY r.id LIMIT 1) AS exit_kind
    FROM account_history h
    WHERE h.kind = 7 AND h.from_state = 2 AND h.to_state = 3
) e
WHERE e.exit_kind IS NOT NULL
GROUP BY 1, 2;

ALTER TABLE generation_values ADD COLUMN grace_entered_at TEXT;

UPDATE generation_values SET grace_entered_at = o.entered_at
FROM (
    SELECT h.msisdn, h.generation, MAX(h.at) AS entered_at
    FROM account_history h
    WHERE h.kind = 7 AND h.from_state = 2 AND h.to_state = 3
      AND NOT EXISTS (
          SELECT 1 FROM account_history r
          WHERE r.msisdn = h.msisdn AND r.generation = h.generation AND r.id > h.id
            AND r.from_state = 3)
    GROUP BY h.msisdn, h.generation
) o
WHERE generation_values.msisdn = o.msisdn AND generation_values.generation = o.generation;

-- Read from the totals now (flows, composition per day, the dashboard's recharges of today):
-- every swept account and every recharge writes fewer index entries.
DROP INDEX account_history_moves;
DROP INDEX account_history_recharges;
DROP INDEX account_history_grace_entries;
DROP INDEX account_history_grace_exits;
