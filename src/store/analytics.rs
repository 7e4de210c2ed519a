//! The read queries behind the lifecycle analytics ([`AnalyticsStore`], issue 18): the facts the
//! reports count, read from the history, the accounts and the idempotency keys. What they count
//! for is `crate::analytics`' (pure); the definitions are docs/analytics.md.
//!
//! Every query runs on the read pool (on SQLite the reader connections, never the one writer;
//! on PostgreSQL a plain read): a report never holds a lock a mutation waits for. The rows are
//! selected by the partial indexes of migration 0007 (lifecycle rows by time) and 0005
//! (recharges by time); the kinds are literals in the SQL so that the indexes apply.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::dialect::{Dialect, Executes, Param, Reads};
use super::rows::{self, EFFECTIVE_STATE_SQL, HistoryRow};
use super::sql::SqlStore;
use super::{AccountStore, StoreError};
use crate::analytics::{GraceEnd, GraceEntry, Recharge, StateMove, state_move};
use crate::lifecycle::{Account, AccountState, HistoryKind, HistoryRecord, recharge_channel_of};

/// The kinds of the rows that create an account or move it between states on their own
/// (PROVISIONED, ACTIVATED, UNLOCK, STATE_CHANGED), as the partial index of migration 0007
/// names them.
const LIFECYCLE_KINDS: &str = "kind IN (1, 3, 6, 7)";

/// A recharge in SQL: a RECHARGE row, or an UNLOCK row that carried one.
const RECHARGE_ROW: &str = "(h.kind = 4 OR (h.kind = 6 AND h.amount > 0))";

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

#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    /// The accounts (the current generation of every MSISDN) per effective state on local
    /// date `today`; states without accounts are left out.
    async fn composition_on(
        &self,
        today: NaiveDate,
    ) -> Result<Vec<(AccountState, i64)>, StoreError>;

    /// The composition moves of every history row with `at < until`, summed per move.
    async fn moves_before(&self, until: DateTime<Utc>)
    -> Result<Vec<(StateMove, i64)>, StoreError>;

    /// The PROVISIONED, ACTIVATED, UNLOCK and STATE_CHANGED rows with `from ≤ at < until`, in
    /// the order they were written.
    async fn lifecycle_rows(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

    /// The RECHARGE rows with `from ≤ at < until`, with the channel their request named.
    async fn recharges(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Recharge>, StoreError>;

    /// The VALID → GRACE rows with `from ≤ at < until`, each with how that stay in GRACE ended
    /// (the next row of the account generation that leaves GRACE, up to now).
    async fn grace_entries(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<GraceEntry>, StoreError>;

    /// Every row but sales and charges of the account generations activated with
    /// `from ≤ at < until`, grouped by MSISDN and generation, each group in row order.
    async fn cohort_rows(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

    /// One page of a churn warning list, the highest recharge value first, ties by MSISDN.
    async fn churn_candidates(&self, query: &ChurnQuery)
    -> Result<Vec<ChurnCandidate>, StoreError>;
}

impl<D: Dialect> SqlStore<D> {
    /// History rows selected by `sql` (its columns in `rows::HISTORY_COLUMNS` order) between
    /// `$1` and `$2`.
    async fn history_rows_between(
        &self,
        sql: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        Ok(D::Db::read_all(
            sqlx::query(sql)
                .param(from)
                .param(until)
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?)
    }
}

/// `rows::HISTORY_COLUMNS` of the history row aliased `h`.
fn history_columns_of_h() -> String {
    rows::HISTORY_COLUMNS
        .split(", ")
        .map(|column| format!("h.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl<D: Dialect> AnalyticsStore for SqlStore<D> {
    async fn composition_on(
        &self,
        today: NaiveDate,
    ) -> Result<Vec<(AccountState, i64)>, StoreError> {
        let sql = format!(
            "SELECT {EFFECTIVE_STATE_SQL} AS effective, COUNT(*) FROM accounts \
             GROUP BY 1 ORDER BY 1"
        );
        let counts: Vec<(i32, i64)> = D::Db::read_all(
            sqlx::query(&sql)
                .param(today)
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        counts
            .into_iter()
            .map(|(state, count)| Ok((rows::state(state)?, count)))
            .collect()
    }

    async fn moves_before(
        &self,
        until: DateTime<Utc>,
    ) -> Result<Vec<(StateMove, i64)>, StoreError> {
        // One number per (kind, re-provisioning or not, from, to), decoded below: the rows
        // that move an MSISDN are summed in the database, not sent one by one.
        let sql = "SELECT kind * 1000 + (CASE WHEN generation > 1 THEN 100 ELSE 0 END) \
                   + COALESCE(from_state, 0) * 10 + COALESCE(to_state, 0) AS code, COUNT(*) \
                   FROM account_history \
                   WHERE at < $1 AND (kind = 1 OR from_state <> to_state) GROUP BY 1";
        let codes: Vec<(i32, i64)> = D::Db::read_all(
            sqlx::query(sql)
                .param(until)
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        let corrupt = |code| StoreError::Internal(format!("history move code {code} is not valid"));
        let mut moves = Vec::new();
        for (code, count) in codes {
            let kind = HistoryKind::from_i32(code / 1000).ok_or_else(|| corrupt(code))?;
            let generation = if code % 1000 >= 100 { 2 } else { 1 };
            let state = |n: i32| (n != 0).then(|| rows::state(n)).transpose();
            let from = state(code % 100 / 10)?;
            let to = state(code % 10)?;
            if let Some(moved) = state_move(kind, generation, from, to) {
                moves.push((moved, count));
            }
        }
        Ok(moves)
    }

    async fn lifecycle_rows(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM account_history WHERE {LIFECYCLE_KINDS} AND at >= $1 AND at < $2 \
             ORDER BY id",
            rows::HISTORY_COLUMNS
        );
        let rows = self.history_rows_between(&sql, from, until).await?;
        rows.into_iter().map(HistoryRow::into_record).collect()
    }

    async fn recharges(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Recharge>, StoreError> {
        // The history row does not hold the channel; the request's fingerprint does. It comes
        // back in the row's `actor` place, read only here.
        let columns =
            history_columns_of_h().replace("h.actor", "COALESCE(k.fingerprint, '') AS actor");
        let sql = format!(
            "SELECT {columns} FROM account_history h \
             LEFT JOIN idempotency_keys k ON k.request_id = h.request_id \
             WHERE h.kind = 4 AND h.at >= $1 AND h.at < $2"
        );
        let rows = self.history_rows_between(&sql, from, until).await?;
        rows.into_iter()
            .map(|row| {
                let channel = recharge_channel_of(&row.actor);
                let row = row.into_record()?;
                Ok(Recharge {
                    at: row.at,
                    amount: row.amount,
                    channel,
                    from: row.from_state,
                    to: row.to_state,
                })
            })
            .collect()
    }

    async fn grace_entries(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<GraceEntry>, StoreError> {
        // The kind of the next row of the same generation that leaves GRACE (RECHARGE: won
        // back; STATE_CHANGED: locked; none: still in GRACE) comes back in the row's `amount`
        // place (a STATE_CHANGED row's amount is always 0), read only here.
        let columns = history_columns_of_h().replace(
            "h.amount",
            "CAST(COALESCE((SELECT r.kind FROM account_history r \
             WHERE r.msisdn = h.msisdn AND r.generation = h.generation AND r.id > h.id \
             AND r.from_state = 3 ORDER BY r.id LIMIT 1), 0) AS BIGINT) AS amount",
        );
        let sql = format!(
            "SELECT {columns} FROM account_history h WHERE h.{LIFECYCLE_KINDS} \
             AND h.at >= $1 AND h.at < $2 AND h.kind = 7 AND h.from_state = 2 AND h.to_state = 3"
        );
        let rows = self.history_rows_between(&sql, from, until).await?;
        Ok(rows
            .into_iter()
            .map(|row| GraceEntry {
                at: row.at,
                end: match HistoryKind::from_i32(row.amount as i32) {
                    Some(HistoryKind::Recharge) => GraceEnd::WonBack,
                    Some(_) => GraceEnd::Locked,
                    None => GraceEnd::Open,
                },
            })
            .collect())
    }

    async fn cohort_rows(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM account_history a JOIN account_history h \
             ON h.msisdn = a.msisdn AND h.generation = a.generation \
             WHERE a.{LIFECYCLE_KINDS} AND a.kind = 3 AND a.at >= $1 AND a.at < $2 \
             AND h.kind <> 2 AND h.kind <> 5 ORDER BY h.msisdn, h.generation, h.id",
            history_columns_of_h()
        );
        let rows = self.history_rows_between(&sql, from, until).await?;
        rows.into_iter().map(HistoryRow::into_record).collect()
    }

    async fn churn_candidates(
        &self,
        query: &ChurnQuery,
    ) -> Result<Vec<ChurnCandidate>, StoreError> {
        // The stage's window on the stored dates (the effective state is checked as well):
        // only these accounts pay for the subqueries.
        let window = match query.stage {
            AccountState::Grace => {
                "a.valid_until < $1 AND a.grace_until >= $1 AND a.grace_until <= $2"
            }
            _ => "a.valid_until >= $1 AND a.valid_until <= $2",
        };
        let of_account = "h.msisdn = a.msisdn AND h.generation = a.generation";
        let no_recent_recharge = if query.no_recharge_since.is_some() {
            format!(
                "AND NOT EXISTS (SELECT 1 FROM account_history h \
                 WHERE {of_account} AND {RECHARGE_ROW} AND h.at >= $7)"
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT w.value, w.msisdn, w.recharges, w.effective FROM (\
               SELECT a.msisdn, {EFFECTIVE_STATE_SQL} AS effective, \
               CAST(COALESCE((SELECT SUM(h.amount) FROM account_history h \
                 WHERE {of_account} AND {RECHARGE_ROW}), 0) AS BIGINT) AS value, \
               CAST((SELECT COUNT(*) FROM account_history h \
                 WHERE {of_account} AND {RECHARGE_ROW}) AS BIGINT) AS recharges \
               FROM accounts a WHERE a.state <> 5 AND {window} {no_recent_recharge}\
             ) w \
             WHERE w.effective = $3 AND (w.value < $4 OR (w.value = $4 AND w.msisdn > $5)) \
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
