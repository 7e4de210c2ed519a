//! The read queries behind the lifecycle analytics ([`AnalyticsStore`], issue 18): the facts the
//! reports count, read from the history, the accounts and the generation values. What they
//! count for is `crate::analytics`' (pure); the definitions are docs/analytics.md.
//!
//! Every query runs on the read pool (on SQLite the reader connections, never the one writer;
//! on PostgreSQL a plain read): a report never holds a lock a mutation waits for. Each one
//! counts in the database (issue 18 item 5: 1M accounts, 10M history rows, under 2 s): rows are
//! summed per period by joining the periods' bounds (a `VALUES` list) to the partial indexes of
//! migration 0008, which hold every column the sums read; the kinds and states are literals in
//! the SQL so that those indexes apply. `CROSS JOIN` keeps SQLite's join order (the periods,
//! or the few lock rows, outside; one index range or key inside); PostgreSQL plans it freely. Cohorts and churn warnings read `generation_values`,
//! written in the same transaction as the history rows it sums (`Writes::add_values`).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::dialect::{Dialect, Executes, Param, Reads};
use super::rows::{self, EFFECTIVE_STATE_SQL};
use super::sql::SqlStore;
use super::{AccountStore, StoreError};
use crate::analytics::{CohortValue, GraceEnd, GraceEntry, LockRow, Recharge, RowGroup};
use crate::lifecycle::{Account, AccountState, HistoryKind, RechargeChannel};

/// What a churn warning list asks for (docs/analytics.md, "Churn warnings").
#[derive(Clone, Debug)]
pub struct ChurnQuery {
    /// VALID or GRACE.
    pub stage: AccountState,
    pub today: NaiveDate,
    /// The last day the stage may end on (`valid_until`, or `grace_until` for GRACE).
    pub ends_by: NaiveDate,
    /// No recharge at or after this instant; `None`: no condition.
    pub no_recharge_since: Option<DateTime<Utc>>,
    /// Keyset of the previous page's last entry: (recharge value, MSISDN).
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

/// One account of a churn warning list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnCandidate {
    pub account: Account,
    /// The current generation's recharges: their sum (fen) and count.
    pub recharge_total: i64,
    pub recharge_count: i64,
}

/// Instants that cut time into buckets (periods): bucket `i` holds the rows with
/// `bounds[i] ≤ at < bounds[i + 1]`.
pub type Bounds = [DateTime<Utc>];

#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    /// The accounts (the current generation of every MSISDN) per stored state and effective
    /// state on local date `today`: (stored, effective, count); pairs without accounts are left
    /// out.
    async fn composition_on(
        &self,
        today: NaiveDate,
    ) -> Result<Vec<(AccountState, AccountState, i64)>, StoreError>;

    /// The rows that move an MSISDN (PROVISIONED rows, and rows whose states differ) per
    /// bucket of `bounds`: (bucket, the rows of one kind, generation, states and pricing with
    /// `at` the bucket's start).
    async fn moves(&self, bounds: &Bounds) -> Result<Vec<(usize, RowGroup)>, StoreError>;

    /// The RECHARGE rows per bucket of `bounds`, channel and states.
    async fn recharges(&self, bounds: &Bounds) -> Result<Vec<(usize, Recharge)>, StoreError>;

    /// The VALID → GRACE rows per bucket of `bounds`, by how that stay in GRACE ended (the
    /// next row of the account generation that leaves GRACE, up to now).
    async fn grace_entries(&self, bounds: &Bounds) -> Result<Vec<(usize, GraceEntry)>, StoreError>;

    /// The account generations activated per bucket of `bounds`.
    async fn activations(&self, bounds: &Bounds) -> Result<Vec<(usize, i64)>, StoreError>;

    /// The account generations activated per bucket of `bounds`, grouped by their lifetime
    /// recharge total: (bucket, value), `month` the bucket's start in UTC (the caller knows the
    /// month it stands for).
    async fn cohort_values(&self, bounds: &Bounds)
    -> Result<Vec<(usize, CohortValue)>, StoreError>;

    /// The rows that lock or recycle an account generation activated in `from ≤ at < until`,
    /// or take it out of LOCKED, in order: (activation instant, each row's instant and new
    /// state), one entry per generation that has such rows.
    async fn cohort_locks(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, Vec<LockRow>)>, StoreError>;

    /// One page of a churn warning list, the highest recharge value first, ties by MSISDN.
    async fn churn_candidates(&self, query: &ChurnQuery)
    -> Result<Vec<ChurnCandidate>, StoreError>;
}

/// `WITH buckets (i, s, e) AS (VALUES …)` for `n` buckets, its parameters numbered from 1.
fn buckets_cte(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    format!("WITH buckets (i, s, e) AS (VALUES {}) ", rows.join(", "))
}

/// Decodes a stored state (0: none).
fn state_of(code: i64) -> Result<Option<AccountState>, StoreError> {
    (code != 0).then(|| rows::state(code as i32)).transpose()
}

fn corrupt(what: &str, code: i64) -> StoreError {
    StoreError::Internal(format!("{what} {code} is not valid"))
}

/// `INDEXED BY index` where the dialect names indexes, nothing elsewhere.
fn indexed_by<D: Dialect>(index: &str) -> String {
    if D::NAMES_INDEXES {
        format!(" INDEXED BY {index}")
    } else {
        String::new()
    }
}

impl<D: Dialect> SqlStore<D> {
    /// The rows of `sql`, which starts after the buckets of `bounds` (see [`buckets_cte`]) and
    /// reads four BIGINT columns.
    async fn per_bucket(
        &self,
        bounds: &Bounds,
        sql: &str,
    ) -> Result<Vec<(i64, i64, i64, i64)>, StoreError> {
        let n = bounds.len().saturating_sub(1);
        if n == 0 {
            return Ok(Vec::new());
        }
        let sql = format!("{}{sql}", buckets_cte(n));
        let mut query = sqlx::query(&sql);
        for (i, pair) in bounds.windows(2).enumerate() {
            query = query.param(i as i64).param(pair[0]).param(pair[1]);
        }
        Ok(D::Db::read_all(
            query.fetch_all(D::Db::on_pool(self.reader())).await?,
        )?)
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
        // One number per (kind, re-provisioning or not, priced or not, from, to), decoded below.
        let sql = format!(
            "SELECT CAST(b.i AS BIGINT), CAST(h.kind * 10000 \
                   + (CASE WHEN h.generation > 1 THEN 1000 ELSE 0 END) \
                   + (CASE WHEN h.amount > 0 THEN 100 ELSE 0 END) \
                   + COALESCE(h.from_state, 0) * 10 + COALESCE(h.to_state, 0) AS BIGINT), \
                   COUNT(*), CAST(COALESCE(SUM(h.amount), 0) AS BIGINT) \
                   FROM buckets b CROSS JOIN account_history h{} \
                   WHERE h.at >= b.s AND h.at < b.e AND (h.kind = 1 OR h.from_state <> h.to_state) \
                   GROUP BY 1, 2",
            indexed_by::<D>("account_history_moves")
        );
        let mut groups = Vec::new();
        for (i, code, rows, amount) in self.per_bucket(bounds, &sql).await? {
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
        let sql = format!(
            "SELECT CAST(b.i AS BIGINT), CAST(COALESCE(h.channel, 0) * 100 \
                   + COALESCE(h.from_state, 0) * 10 + COALESCE(h.to_state, 0) AS BIGINT), \
                   COUNT(*), CAST(COALESCE(SUM(h.amount), 0) AS BIGINT) \
                   FROM buckets b CROSS JOIN account_history h{} \
                   WHERE h.at >= b.s AND h.at < b.e AND h.kind = 4 GROUP BY 1, 2",
            indexed_by::<D>("account_history_recharges")
        );
        let mut recharges = Vec::new();
        for (i, code, count, amount) in self.per_bucket(bounds, &sql).await? {
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
        // The kind of the next row of the same generation that leaves GRACE (RECHARGE: won
        // back; another: locked; none: still in GRACE).
        let sql = format!(
            "SELECT e.i, e.ended, COUNT(*), CAST(0 AS BIGINT) FROM (\
                     SELECT CAST(b.i AS BIGINT) AS i, CAST(COALESCE((SELECT r.kind \
                       FROM account_history r{} WHERE r.msisdn = h.msisdn \
                       AND r.generation = h.generation AND r.id > h.id AND r.from_state = 3 \
                       ORDER BY r.id LIMIT 1), 0) AS BIGINT) AS ended \
                     FROM buckets b CROSS JOIN account_history h{} \
                     WHERE h.at >= b.s AND h.at < b.e AND h.kind = 7 AND h.from_state = 2 \
                     AND h.to_state = 3\
                   ) e GROUP BY e.i, e.ended",
            indexed_by::<D>("account_history_grace_exits"),
            indexed_by::<D>("account_history_grace_entries")
        );
        let mut entries = Vec::new();
        for (i, ended, count, _) in self.per_bucket(bounds, &sql).await? {
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

    async fn activations(&self, bounds: &Bounds) -> Result<Vec<(usize, i64)>, StoreError> {
        let sql = format!(
            "SELECT CAST(b.i AS BIGINT), COUNT(*), CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             FROM buckets b CROSS JOIN generation_values v{} \
             WHERE v.activated_at >= b.s AND v.activated_at < b.e GROUP BY 1",
            indexed_by::<D>("generation_values_activated")
        );
        let mut counts = Vec::new();
        for (i, count, _, _) in self.per_bucket(bounds, &sql).await? {
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
             CAST(SUM(v.recharge_count) AS BIGINT) \
             FROM buckets b CROSS JOIN generation_values v{} \
             WHERE v.activated_at >= b.s AND v.activated_at < b.e GROUP BY 1, 2",
            indexed_by::<D>("generation_values_activated")
        );
        let mut values = Vec::new();
        for (i, total, generations, recharges) in self.per_bucket(bounds, &sql).await? {
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

    async fn cohort_locks(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, Vec<LockRow>)>, StoreError> {
        let sql = format!(
            "SELECT h.msisdn, h.generation, v.activated_at, h.at, CAST(h.to_state AS BIGINT) \
                   FROM account_history h{} CROSS JOIN generation_values v \
                   WHERE v.msisdn = h.msisdn AND v.generation = h.generation \
                   AND (h.to_state IN (4, 5) OR h.from_state = 4) \
                   AND v.activated_at >= $1 AND v.activated_at < $2 \
                   ORDER BY h.msisdn, h.generation, h.id",
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
