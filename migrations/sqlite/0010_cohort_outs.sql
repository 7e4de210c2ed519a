-- Cohort retention at scale (issue 18 item 5): when each activated account generation first
-- went to LOCKED or RECYCLED (`first_out_at`), and whether a row ever took it out of LOCKED
-- again (`unlocked`, an unlock), kept by every write of history rows in the same transaction
-- (`Writes::add_values`). A generation never unlocked is out of VALID and GRACE exactly from
-- its `first_out_at` on, so the report counts those per activation day in the database; only
-- the few unlocked ones have their lock rows read (`account_history_locks`). Rows of a
-- generation leaving UNACTIVATED (an unsold card's expiry) are not counted: it was never
-- activated.
ALTER TABLE generation_values ADD COLUMN first_out_at TEXT;
ALTER TABLE generation_values ADD COLUMN unlocked INTEGER NOT NULL DEFAULT 0;

UPDATE generation_values SET first_out_at = o.first_out_at, unlocked = o.unlocked
FROM (
    SELECT msisdn, generation,
        MIN(CASE WHEN to_state IN (4, 5) THEN at END) AS first_out_at,
        MAX(CASE WHEN from_state = 4 AND to_state NOT IN (4, 5) THEN 1 ELSE 0 END) AS unlocked
    FROM account_history
    WHERE (to_state IN (4, 5) OR from_state = 4) AND from_state <> 1
    GROUP BY msisdn, generation
) o
WHERE generation_values.msisdn = o.msisdn AND generation_values.generation = o.generation;

-- SQLite: the activation index covers the new columns too, so that cohorts read it alone.
DROP INDEX generation_values_activated;
CREATE INDEX generation_values_activated
    ON generation_values (activated_at, recharge_total, recharge_count, unlocked, first_out_at)
    WHERE activated_at IS NOT NULL;

