//! The read queries behind the lifecycle analytics ([`AnalyticsStore`], issue 18), on both
//! backends: the facts the reports count, read from the history, the accounts and the
//! generation values.
//!
//! Every query runs on the read pool (on SQLite the reader connections, never the one writer;
//! on PostgreSQL a plain read): a report never holds a lock a mutation waits for. Each one
//! counts in the database (issue 18 item 5: 1M accounts, 10M history rows, under 2 s): rows are
//! summed per period by joining the periods' bounds (a `VALUES` list) to what holds them: the
//! moves, recharges and GRACE entries to the quarter-hour totals of migration 0009
//! (`history_totals`, `grace_ends`: kept in the same transaction as the history rows they
//! count, `Writes::add_values`), the lock rows to a partial history index of migration 0008
//! that holds every column the query reads (the states are literals in the SQL so that it
//! applies). `CROSS JOIN` keeps SQLite's join order (the periods, or the few lock rows, outside;
//! one index range or key inside); PostgreSQL plans it freely. Cohorts and churn warnings read
//! `generation_values`, written in the same transaction as the history rows it sums.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{AnalyticsStore, Bounds, ChurnCandidate, ChurnQuery, CohortDay};
use crate::analytics::{self, CohortValue, GraceEnd, GraceEntry, LockRow, Recharge, RowGroup};
use crate::lifecycle::{AccountState, HistoryKind, RechargeChannel};
use crate::store::dialect::{Dialect, Executes, Param, Reads, indexed_by};
use crate::store::rows::{self, EFFECTIVE_STATE_SQL};
use crate::store::sql::SqlStore;
use crate::store::{AccountStore, StoreError};

/// `WITH buckets (i, s, e) AS (VALUES …)` for `n` buckets, its parameters numbered from 1.
fn buckets_cte(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    format!("WITH buckets (i, s, e) AS (VALUES {}) ", rows.join(", "))
}

/// The `history_totals` codes (`t.code`, see `analytics::total_code`) of rows that move an
/// MSISDN: PROVISIONED rows, and rows with both states, different.
const MOVE_CODE: &str = "t.code % 100000 / 10000 = 1 OR (t.code % 100 / 10 <> 0 \
    AND t.code % 10 <> 0 AND t.code % 100 / 10 <> t.code % 10)";

/// The `history_totals` codes (`t.code`) of VALID -> GRACE rows (STATE_CHANGED, unpriced, of a
/// first or a later generation): the entries of the win-back cohort.
const GRACE_ENTRY_CODE: &str = "t.code % 100000 IN (70023, 71023)";

/// The `history_totals` codes (`t.code`) of RECHARGE rows.
pub(in crate::store) const RECHARGE_CODE: &str = "t.code % 100000 / 10000 = 4";

/// Whether a read bounded by `bounds` can sum the quarter-hour totals: every bound starts a
/// slot (local midnights do in every zone in use; a zone's old local mean time may not, and
/// then the history rows themselves are read, without an index).
pub(in crate::store) fn whole_slots(bounds: &Bounds) -> bool {
    bounds.iter().all(|at| analytics::starts_slot(*at))
}

/// `generation_values` rows' index by activation instant.
const ACTIVATED: Option<&str> = Some("generation_values_activated");

/// `FROM … WHERE …` for the `history_totals` rows (`t`: code, row count, amount total) of
/// each bucket `b`; the caller adds `AND …`.
fn totals_in_buckets<D: Dialect>() -> String {
    in_buckets::<D>(
        "buckets b",
        ("history_totals t", "t.code, t.row_count, t.amount_total"),
        None,
        "t.slot >= b.s AND t.slot < b.e",
    )
}

/// `FROM … WHERE …` for the `generation_values` rows (`v`, reading `columns`) activated in
/// each bucket `b`; the caller adds `AND …`.
fn activated_in_buckets<D: Dialect>(columns: &str) -> String {
    in_buckets::<D>(
        "buckets b",
        ("generation_values v", columns),
        ACTIVATED,
        "v.activated_at >= b.s AND v.activated_at < b.e",
    )
}

/// `FROM buckets CROSS JOIN table WHERE in_range`: the rows of `table` (with its alias; the
/// query reads `columns` of it) in each of the buckets, read as one index range per bucket;
/// the caller adds `AND …`. SQLite keeps the join order of `CROSS JOIN` and is told the index. PostgreSQL gets each bucket's rows as
/// a LATERAL subquery it may not flatten (`OFFSET 0`): joined plainly, it may compare every row
/// of the table with every bucket (a year of days took seconds that way).
fn in_buckets<D: Dialect>(
    buckets: &str,
    (table, columns): (&str, &str),
    index: Option<&str>,
    in_range: &str,
) -> String {
    if D::RANGES_PER_BUCKET {
        // Only the columns read: an index that holds them is read alone.
        let alias = table.rsplit(' ').next().unwrap_or(table);
        format!(
            "FROM {buckets} CROSS JOIN LATERAL \
             (SELECT {columns} FROM {table} WHERE {in_range} OFFSET 0) {alias} WHERE TRUE"
        )
    } else {
        let indexed = index.map(indexed_by::<D>).unwrap_or_default();
        format!("FROM {buckets} CROSS JOIN {table}{indexed} WHERE {in_range}")
    }
}

/// Decodes a stored state (0: none).
fn state_of(code: i64) -> Result<Option<AccountState>, StoreError> {
    (code != 0).then(|| rows::state(code as i32)).transpose()
}

fn corrupt(what: &str, code: i64) -> StoreError {
    StoreError::Internal(format!("{what} {code} is not valid"))
}

impl<D: Dialect> SqlStore<D> {
    /// The rows of `sql`, which starts after the buckets of `bounds` (see [`buckets_cte`]) and
    /// reads four BIGINT columns. The bounds are given as instants, or as Unix seconds when
    /// `sql` reads the slots of the quarter-hour totals.
    async fn per_bucket(
        &self,
        bounds: &Bounds,
        sql: &str,
        as_seconds: bool,
    ) -> Result<Vec<(i64, i64, i64, i64)>, StoreError> {
        let n = bounds.len().saturating_sub(1);
        if n == 0 {
            return Ok(Vec::new());
        }
        let sql = format!("{}{sql}", buckets_cte(n));
        let mut query = sqlx::query(&sql);
        for (i, pair) in bounds.windows(2).enumerate() {
            query = query.param(i as i64);
            query = if as_seconds {
                query.param(pair[0].timestamp()).param(pair[1].timestamp())
            } else {
                query.param(pair[0]).param(pair[1])
            };
        }
        Ok(D::Db::read_all(
            query.fetch_all(D::Db::on_pool(self.reader())).await?,
        )?)
    }

    /// [`AnalyticsStore::grace_entries`] counted from the history rows themselves (bounds that
    /// are not quarter hours; no index serves it): each VALID -> GRACE row's stay ended with
    /// the kind of the next row of the same generation that leaves GRACE (RECHARGE: won back;
    /// another: locked; none: still in GRACE).
    async fn grace_entries_from_rows(
        &self,
        bounds: &Bounds,
    ) -> Result<Vec<(usize, GraceEntry)>, StoreError> {
        let sql = "SELECT e.i, e.ended, COUNT(*), CAST(0 AS BIGINT) FROM (\
                     SELECT CAST(b.i AS BIGINT) AS i, CAST(COALESCE((SELECT r.kind \
                       FROM account_history r WHERE r.msisdn = h.msisdn \
                       AND r.generation = h.generation AND r.id > h.id AND r.from_state = 3 \
                       ORDER BY r.id LIMIT 1), 0) AS BIGINT) AS ended \
                     FROM buckets b CROSS JOIN account_history h \
                     WHERE h.at >= b.s AND h.at < b.e AND h.kind = 7 AND h.from_state = 2 \
                     AND h.to_state = 3\
                   ) e GROUP BY e.i, e.ended";
        let mut entries = Vec::new();
        for (i, ended, count, _) in self.per_bucket(bounds, sql, false).await? {
            let (i, at) = bucket(bounds, i)?;
            let end = match HistoryKind::from_i32(ended as i32) {
                Some(HistoryKind::Recharge) => GraceEnd::WonBack,
                Some(_) => GraceEnd::Locked,
                None => GraceEnd::Open,
            };
            entries.push((i, GraceEntry { at, end, count }));
        }
        Ok(entries)
    }
}

/// The bucket of a row as read: its index and start.
fn bucket(bounds: &Bounds, i: i64) -> Result<(usize, DateTime<Utc>), StoreError> {
    usize::try_from(i)
        .ok()
        .filter(|i| i + 1 < bounds.len())
        .map(|i| (i, bounds[i]))
        .ok_or_else(|| corrupt("bucket", i))
}

#[async_trait]
impl<D: Dialect> AnalyticsStore for SqlStore<D> {
    async fn composition_on(
        &self,
        today: NaiveDate,
    ) -> Result<Vec<(AccountState, AccountState, i64)>, StoreError> {
        let sql = format!(
            "SELECT CAST(state AS BIGINT), CAST({EFFECTIVE_STATE_SQL} AS BIGINT), COUNT(*) \
             FROM accounts GROUP BY 1, 2"
        );
        let counts: Vec<(i64, i64, i64)> = D::Db::read_all(
            sqlx::query(&sql)
                .param(today)
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        counts
            .into_iter()
            .map(|(stored, effective, count)| {
                Ok((
                    rows::state(stored as i32)?,
                    rows::state(effective as i32)?,
                    count,
                ))
            })
            .collect()
    }

    async fn moves(&self, bounds: &Bounds) -> Result<Vec<(usize, RowGroup)>, StoreError> {
        // One number per (kind, re-provisioning or not, priced or not, from, to), decoded below:
        // `analytics::total_code` without the channel.
        let totals = whole_slots(bounds);
        let sql = if totals {
            format!(
                "SELECT CAST(b.i AS BIGINT), t.code % 100000, \
                   CAST(SUM(t.row_count) AS BIGINT), CAST(SUM(t.amount_total) AS BIGINT) \
                   {} AND ({MOVE_CODE}) GROUP BY 1, 2",
                totals_in_buckets::<D>()
            )
        } else {
            "SELECT CAST(b.i AS BIGINT), CAST(h.kind * 10000 \
                   + (CASE WHEN h.generation > 1 THEN 1000 ELSE 0 END) \
                   + (CASE WHEN h.amount > 0 THEN 100 ELSE 0 END) \
                   + COALESCE(h.from_state, 0) * 10 + COALESCE(h.to_state, 0) AS BIGINT), \
                   COUNT(*), CAST(COALESCE(SUM(h.amount), 0) AS BIGINT) \
                   FROM buckets b CROSS JOIN account_history h \
                   WHERE h.at >= b.s AND h.at < b.e AND (h.kind = 1 OR h.from_state <> h.to_state) \
                   GROUP BY 1, 2"
                .to_owned()
        };
        let mut groups = Vec::new();
        for (i, code, rows, amount) in self.per_bucket(bounds, &sql, totals).await? {
            let (i, at) = bucket(bounds, i)?;
            let kind = HistoryKind::from_i32((code / 10000) as i32)
                .ok_or_else(|| corrupt("history move code", code))?;
            groups.push((
                i,
                RowGroup {
                    at,
                    kind,
                    generation: if code % 10000 >= 1000 { 2 } else { 1 },
                    from: state_of(code % 100 / 10)?,
                    to: state_of(code % 10)?,
                    rows,
                    amount,
                },
            ));
        }
        Ok(groups)
    }

    async fn recharges(&self, bounds: &Bounds) -> Result<Vec<(usize, Recharge)>, StoreError> {
        // The channel (0: unknown) and the states, as one number.
        let totals = whole_slots(bounds);
        let sql = if totals {
            format!(
                "SELECT CAST(b.i AS BIGINT), t.code / 100000 * 100 + t.code % 100, \
                   CAST(SUM(t.row_count) AS BIGINT), CAST(SUM(t.amount_total) AS BIGINT) \
                   {} AND {RECHARGE_CODE} GROUP BY 1, 2",
                totals_in_buckets::<D>()
            )
        } else {
            "SELECT CAST(b.i AS BIGINT), CAST(COALESCE(h.channel, 0) * 100 \
                   + COALESCE(h.from_state, 0) * 10 + COALESCE(h.to_state, 0) AS BIGINT), \
                   COUNT(*), CAST(COALESCE(SUM(h.amount), 0) AS BIGINT) \
                   FROM buckets b CROSS JOIN account_history h \
                   WHERE h.at >= b.s AND h.at < b.e AND h.kind = 4 GROUP BY 1, 2"
                .to_owned()
        };
        let mut recharges = Vec::new();
        for (i, code, count, amount) in self.per_bucket(bounds, &sql, totals).await? {
            let (i, at) = bucket(bounds, i)?;
            recharges.push((
                i,
                Recharge {
                    at,
                    count,
                    amount,
                    channel: RechargeChannel::from_i32((code / 100) as i32),
                    from: state_of(code % 100 / 10)?,
                    to: state_of(code % 10)?,
                },
            ));
        }
        Ok(recharges)
    }

    async fn grace_entries(&self, bounds: &Bounds) -> Result<Vec<(usize, GraceEntry)>, StoreError> {
        if !whole_slots(bounds) {
            return self.grace_entries_from_rows(bounds).await;
        }
        // Per bucket: the VALID -> GRACE rows (`ended` 0), then the stays that began in it and
        // ended, by how (`grace_ends.ended`); the rest are still open.
        let sql = format!(
            "SELECT CAST(b.i AS BIGINT), CAST(0 AS BIGINT), CAST(SUM(t.row_count) AS BIGINT), \
               CAST(0 AS BIGINT) {} AND {GRACE_ENTRY_CODE} GROUP BY 1 \
             UNION ALL \
             SELECT CAST(b.i AS BIGINT), CAST(g.ended AS BIGINT), CAST(SUM(g.stays) AS BIGINT), \
               CAST(0 AS BIGINT) {} GROUP BY 1, 2",
            totals_in_buckets::<D>(),
            in_buckets::<D>(
                "buckets b",
                ("grace_ends g", "g.ended, g.stays"),
                None,
                "g.slot >= b.s AND g.slot < b.e"
            )
        );
        let mut per_bucket: BTreeMap<usize, (i64, Vec<(GraceEnd, i64)>)> = BTreeMap::new();
        for (i, ended, count, _) in self.per_bucket(bounds, &sql, true).await? {
            let (i, _) = bucket(bounds, i)?;
            let (entered, ends) = per_bucket.entry(i).or_default();
            match [GraceEnd::WonBack, GraceEnd::Locked]
                .into_iter()
                .find(|end| analytics::grace_end_code(*end) == ended)
            {
                Some(end) => ends.push((end, count)),
                None if ended == 0 => *entered += count,
                None => return Err(corrupt("grace_ends.ended", ended)),
            }
        }
        let mut entries = Vec::new();
        for (i, (entered, ends)) in per_bucket {
            let at = bounds[i];
            let open = entered - ends.iter().map(|(_, count)| count).sum::<i64>();
            for (end, count) in ends.into_iter().chain([(GraceEnd::Open, open)]) {
                if count != 0 {
                    entries.push((i, GraceEntry { at, end, count }));
                }
            }
        }
        Ok(entries)
    }

    async fn activations(&self, bounds: &Bounds) -> Result<Vec<(usize, i64)>, StoreError> {
        let sql = format!(
            "SELECT CAST(b.i AS BIGINT), COUNT(*), CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             {} GROUP BY 1",
            activated_in_buckets::<D>("v.activated_at")
        );
        let mut counts = Vec::new();
        for (i, count, _, _) in self.per_bucket(bounds, &sql, false).await? {
            counts.push((bucket(bounds, i)?.0, count));
        }
        Ok(counts)
    }

    async fn cohort_values(
        &self,
        bounds: &Bounds,
    ) -> Result<Vec<(usize, CohortValue)>, StoreError> {
        let sql = format!(
            "SELECT CAST(b.i AS BIGINT), v.recharge_total, COUNT(*), \
             CAST(SUM(v.recharge_count) AS BIGINT) {} GROUP BY 1, 2",
            activated_in_buckets::<D>("v.recharge_total, v.recharge_count")
        );
        let mut values = Vec::new();
        for (i, total, generations, recharges) in self.per_bucket(bounds, &sql, false).await? {
            let (i, at) = bucket(bounds, i)?;
            values.push((
                i,
                CohortValue {
                    month: at.date_naive(),
                    total,
                    generations,
                    recharges,
                },
            ));
        }
        Ok(values)
    }

    async fn cohort_outs(&self, days: &[CohortDay]) -> Result<Vec<(usize, [i64; 4])>, StoreError> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<String> = (0..days.len())
            .map(|i| {
                let p: Vec<String> = (1..=7).map(|k| format!("${}", 7 * i + k)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let out_before = |a: &str| {
            format!("CAST(SUM(CASE WHEN v.first_out_at < d.{a} THEN 1 ELSE 0 END) AS BIGINT)")
        };
        let sql = format!(
            "WITH days (i, s, e, a1, a2, a3, a4) AS (VALUES {}) \
             SELECT CAST(d.i AS BIGINT), {}, {}, {}, {} \
             {} AND v.unlocked = 0 AND v.first_out_at IS NOT NULL GROUP BY 1",
            rows.join(", "),
            out_before("a1"),
            out_before("a2"),
            out_before("a3"),
            out_before("a4"),
            in_buckets::<D>(
                "days d",
                ("generation_values v", "v.first_out_at, v.unlocked"),
                ACTIVATED,
                "v.activated_at >= d.s AND v.activated_at < d.e"
            )
        );
        let mut query = sqlx::query(&sql);
        for (i, day) in days.iter().enumerate() {
            query = query.param(i as i64).param(day.start).param(day.end);
            for age in day.ages {
                query = query.param(age);
            }
        }
        let found: Vec<(i64, i64, i64, i64, i64)> =
            D::Db::read_all(query.fetch_all(D::Db::on_pool(self.reader())).await?)?;
        found
            .into_iter()
            .map(|(i, a1, a2, a3, a4)| {
                usize::try_from(i)
                    .ok()
                    .filter(|i| *i < days.len())
                    .map(|i| (i, [a1, a2, a3, a4]))
                    .ok_or_else(|| corrupt("cohort day", i))
            })
            .collect()
    }

    async fn cohort_locks(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, Vec<LockRow>)>, StoreError> {
        // The cohorts' unlocked generations first (the activation index holds the mark on
        // SQLite), then each one's lock rows.
        let sql = format!(
            "SELECT h.msisdn, h.generation, v.activated_at, h.at, CAST(h.to_state AS BIGINT) \
                   FROM generation_values v{} CROSS JOIN account_history h{} \
                   WHERE v.activated_at >= $1 AND v.activated_at < $2 AND v.unlocked = 1 \
                   AND h.msisdn = v.msisdn AND h.generation = v.generation \
                   AND (h.to_state IN (4, 5) OR h.from_state = 4) \
                   ORDER BY h.msisdn, h.generation, h.id",
            indexed_by::<D>("generation_values_activated"),
            indexed_by::<D>("account_history_locks")
        );
        let rows: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>, i64)> = D::Db::read_all(
            sqlx::query(&sql)
                .param(from)
                .param(until)
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        let mut lives: Vec<(DateTime<Utc>, Vec<LockRow>)> = Vec::new();
        let mut last: Option<(&str, i64)> = None;
        for (msisdn, generation, activated_at, at, to) in &rows {
            let to = state_of(*to)?.ok_or_else(|| corrupt("state", 0))?;
            if last != Some((msisdn.as_str(), *generation)) {
                lives.push((*activated_at, Vec::new()));
                last = Some((msisdn.as_str(), *generation));
            }
            if let Some((_, life)) = lives.last_mut() {
                life.push((*at, to));
            }
        }
        Ok(lives)
    }

    async fn churn_candidates(
        &self,
        query: &ChurnQuery,
    ) -> Result<Vec<ChurnCandidate>, StoreError> {
        // The stage's window on the stored dates (the effective state is checked as well); the
        // value, count and last recharge are the generation's (`generation_values`).
        let window = match query.stage {
            AccountState::Grace => "valid_until < $1 AND grace_until >= $1 AND grace_until <= $2",
            _ => "valid_until >= $1 AND valid_until <= $2",
        };
        let no_recent_recharge = if query.no_recharge_since.is_some() {
            "AND (v.last_recharge_at IS NULL OR v.last_recharge_at < $7)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT w.value, w.msisdn, w.recharges, w.effective FROM (\
               SELECT a.msisdn, a.effective, COALESCE(v.recharge_total, 0) AS value, \
               COALESCE(v.recharge_count, 0) AS recharges FROM (\
                 SELECT msisdn, generation, {EFFECTIVE_STATE_SQL} AS effective FROM accounts \
                 WHERE state <> 5 AND {window}\
               ) a LEFT JOIN generation_values v \
               ON v.msisdn = a.msisdn AND v.generation = a.generation \
               WHERE a.effective = $3 {no_recent_recharge}\
             ) w \
             WHERE w.value < $4 OR (w.value = $4 AND w.msisdn > $5) \
             ORDER BY w.value DESC, w.msisdn LIMIT $6"
        );
        let (after_value, after_msisdn) = match &query.after {
            Some((value, msisdn)) => (*value, msisdn.as_str()),
            None => (i64::MAX, ""),
        };
        let mut select = sqlx::query(&sql)
            .param(query.today)
            .param(query.ends_by)
            .param(query.stage as i32)
            .param(after_value)
            .param(after_msisdn)
            .param(i64::from(query.limit));
        if let Some(since) = query.no_recharge_since {
            select = select.param(since);
        }
        let found: Vec<(i64, String, i64, i32)> =
            D::Db::read_all(select.fetch_all(D::Db::on_pool(self.reader())).await?)?;
        let mut candidates = Vec::with_capacity(found.len());
        for (recharge_total, msisdn, recharge_count, _) in found {
            let msisdn = crate::lifecycle::Msisdn::parse(&msisdn).map_err(|_| {
                StoreError::Internal(format!("stored msisdn {msisdn:?} is not valid"))
            })?;
            // Gone since the list was read (a re-provisioning cannot happen to a live number).
            if let Some(account) = self.get(&msisdn).await? {
                candidates.push(ChurnCandidate {
                    account,
                    recharge_total,
                    recharge_count,
                });
            }
        }
        Ok(candidates)
    }
}
