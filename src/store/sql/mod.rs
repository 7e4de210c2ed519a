//! The one implementation of [`AccountStore`] and [`WebhookDeliveries`] both backends run:
//! [`SqlStore`] over a [`Dialect`], which supplies only what differs (how a mutation and a sweep
//! batch get their transaction, the locking clauses, the sweep's workers, the error codes).
//!
//! What the SQL needs from a backend's sqlx database (the parameter types it binds, the rows it
//! reads, its executors) is declared once by `dialect::SqlDatabase`; queries bind with
//! `.param(…)` and read rows with `D::Db::read…` through it rather than with sqlx's own `bind`
//! and `query_as`, whose bounds every generic `impl` would have to repeat.
//!
//! [`WebhookDeliveries`]: super::WebhookDeliveries

mod grouped;
mod multi_row;
mod value_writes;
mod writes;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Executor, Pool};
use tokio_stream::StreamExt;

use super::deliveries::{DeadRow, JOINED_OUTBOX_COLUMNS, type_list};
use super::dialect::{Dialect, Executes, Param, Reads, indexed_by};
use super::rows::{self, ACCOUNT_COLUMNS, AccountRow, HistoryRow, OutboxRow, SweepRunRow};
use super::sweeps::{
    DueCursor, DuePage, MsisdnList, RunEnd, SWEPT_REASONS, SweepBatch, SweepRun, SweepRunStatus,
    transition_column,
};
use super::{
    AccountStore, Committed, DeadLetterOverview, Decide, EventType, HistoryRecord, MutateFailure,
    OutboxEvent, RechargeTotals, RequestKey, SqlFailure, StoreError, classify,
};
use crate::lifecycle::{Account, AccountState, HistoryKind, Msisdn, Rules};

use writes::SqlSweepBatch;
pub(crate) use writes::Writes;

/// Attempts at a mutation whose transaction hit a transient conflict (a concurrent first insert
/// of the same MSISDN or request_id, a serialization failure, a busy database).
const MAX_ATTEMPTS: u32 = 8;

/// Rows per multi-row statement: 10 binds a row stays far below SQLite's 32 766 and
/// PostgreSQL's 65 535 bind parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// The store of one backend: its dialect (and the dialect's own state), a pool for reads and
/// one for writes (the same pool on PostgreSQL), and the rules `next_deadline` is computed with.
pub(crate) struct SqlStore<D: Dialect> {
    pub(crate) dialect: D,
    pub(crate) reader: Pool<D::Db>,
    pub(crate) writer: Pool<D::Db>,
    pub(crate) rules: Arc<Rules>,
}

impl<D: Dialect> SqlStore<D> {
    /// The pool for reads now (the dialect may have moved it, see [`Dialect::pool`]).
    pub(crate) fn reader(&self) -> &Pool<D::Db> {
        self.dialect.pool(&self.reader)
    }

    /// The pool for writes now.
    pub(crate) fn writer(&self) -> &Pool<D::Db> {
        self.dialect.pool(&self.writer)
    }

    /// Where reads run.
    fn read(&self) -> impl Executor<'_, Database = D::Db> {
        D::Db::on_pool(self.reader())
    }

    /// Where single-statement writes run.
    fn write(&self) -> impl Executor<'_, Database = D::Db> {
        D::Db::on_pool(self.writer())
    }

    pub(crate) fn new(
        dialect: D,
        reader: Pool<D::Db>,
        writer: Pool<D::Db>,
        rules: Arc<Rules>,
    ) -> Self {
        Self {
            dialect,
            reader,
            writer,
            rules,
        }
    }
}

#[async_trait]
impl<D: Dialect> AccountStore for SqlStore<D> {
    async fn migrate(&self) -> Result<(), StoreError> {
        D::migrator()
            .run(self.writer())
            .await
            .map_err(|e| StoreError::Internal(format!("{} migration failed: {e}", D::NAME)))
    }

    async fn mutate(
        &self,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: Decide,
    ) -> Result<Committed, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.dialect.mutate_once(self, msisdn, key, &decide).await {
                Ok(committed) => return Ok(committed),
                Err(MutateFailure::Store(e)) => return Err(e),
                Err(MutateFailure::Retry) => SqlFailure::Retry,
                // After a failover every attempt would fail the same way: answer now.
                Err(MutateFailure::Sql(err)) => match self.dialect.failover(&err) {
                    Some(failover) => return Err(failover),
                    None => classify(err),
                },
            };
            match failure {
                SqlFailure::Retry if attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 2))
                        .await;
                }
                SqlFailure::Retry => {
                    return Err(StoreError::Unavailable(
                        "the database stayed busy; retry with the same request_id".into(),
                    ));
                }
                SqlFailure::Fatal(e) => return Err(e),
            }
        }
    }

    async fn get(&self, msisdn: &Msisdn) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE msisdn = $1");
        let row: Option<AccountRow> = D::Db::read_optional(
            sqlx::query(&sql)
                .param(msisdn.as_str())
                .fetch_optional(self.read())
                .await?,
        )?;
        row.map(AccountRow::into_account).transpose()
    }

    async fn changes_announced(&self) {
        self.dialect.changes_announced().await
    }

    fn follow_changes(
        &self,
        on: super::OnChange,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.dialect.follow_changes(self, on, shutdown)
    }

    async fn list(
        &self,
        state: Option<AccountState>,
        today: NaiveDate,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE msisdn > $2 AND ($3 = 0 OR ({}) = $3) \
             ORDER BY msisdn LIMIT $4",
            rows::EFFECTIVE_STATE_SQL
        );
        let rows: Vec<AccountRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(today)
                .param(after.unwrap_or(""))
                .param(state.map_or(0, |s| s as i32))
                .param(i64::from(limit))
                .fetch_all(self.read())
                .await?,
        )?;
        rows.into_iter().map(AccountRow::into_account).collect()
    }

    async fn history(
        &self,
        msisdn: &Msisdn,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM account_history WHERE msisdn = $1 AND id > $2 ORDER BY id LIMIT $3",
            rows::HISTORY_COLUMNS
        );
        let rows: Vec<HistoryRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(msisdn.as_str())
                .param(after_id)
                .param(i64::from(limit))
                .fetch_all(self.read())
                .await?,
        )?;
        rows.into_iter().map(HistoryRow::into_record).collect()
    }

    async fn events_after(
        &self,
        after_sequence: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let sql = format!(
            "SELECT {} FROM outbox WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            rows::OUTBOX_COLUMNS
        );
        let rows: Vec<OutboxRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(after_sequence)
                .param(i64::from(limit))
                .fetch_all(self.read())
                .await?,
        )?;
        rows.into_iter().map(OutboxRow::into_event).collect()
    }

    fn rules(&self) -> &Rules {
        &self.rules
    }

    fn sweep_workers(&self) -> usize {
        D::SWEEP_WORKERS
    }

    fn sweep_in_msisdn_order(&self) -> bool {
        D::SWEEP_IN_MSISDN_ORDER
    }

    async fn begin_sweep_batch(&self) -> Result<Box<dyn SweepBatch>, StoreError> {
        let tx = self.dialect.begin_batch(self.writer()).await?;
        Ok(Box::new(SqlSweepBatch::<D> {
            tx,
            rules: self.rules.clone(),
        }))
    }

    async fn due_msisdns(
        &self,
        as_of: DateTime<Utc>,
        after: &str,
        limit: u32,
    ) -> Result<MsisdnList, StoreError> {
        // The due rows are found in the deadline index, then sorted: a sweep with nothing due
        // stays instant. SQLite is held to the index by its name; PostgreSQL by a subquery it
        // may not flatten (else it may walk the whole table in MSISDN order for a few rows).
        let fence = if D::NAMES_INDEXES { "" } else { " OFFSET 0" };
        let sql = format!(
            "SELECT msisdn FROM (SELECT msisdn FROM accounts{} \
             WHERE next_deadline IS NOT NULL AND next_deadline <= $1 AND msisdn > $2{fence}) \
             AS due ORDER BY msisdn LIMIT $3",
            indexed_by::<D>("accounts_next_deadline")
        );
        // Streamed: only the MSISDNs are held, not tens of thousands of rows at once. Read on
        // the write path (on PostgreSQL the same pool as reads): on SQLite the one write
        // connection's page cache is full already, where a read connection would fill its own
        // (2 MiB; the pool hands out a different connection each time) with the index pages
        // read, which raised the server's peak RSS of a 100k sweep by ~5 MiB (BENCHMARKS.md).
        let mut rows = sqlx::query(&sql)
            .param(as_of.timestamp())
            .param(after)
            .param(i64::from(limit))
            .fetch(self.write());
        let mut msisdns = MsisdnList::default();
        while let Some(row) = rows.next().await {
            let (msisdn,): (String,) = D::Db::read(&row?)?;
            msisdns.push(&msisdn);
        }
        Ok(msisdns)
    }

    async fn due_accounts(
        &self,
        as_of: DateTime<Utc>,
        after: &DueCursor,
        limit: u32,
    ) -> Result<DuePage, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts \
             WHERE next_deadline IS NOT NULL AND next_deadline <= $1 \
             AND (next_deadline > $2 OR (next_deadline = $2 AND msisdn > $3)) \
             ORDER BY next_deadline, msisdn LIMIT $4"
        );
        let rows: Vec<AccountRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(as_of.timestamp())
                .param(after.next_deadline)
                .param(after.msisdn.as_str())
                .param(i64::from(limit))
                .fetch_all(self.read())
                .await?,
        )?;
        let mut page = DuePage {
            accounts: Vec::with_capacity(rows.len()),
            next: after.clone(),
        };
        for row in rows {
            page.next = DueCursor {
                next_deadline: row.next_deadline.unwrap_or(i64::MAX),
                msisdn: row.msisdn.clone(),
            };
            page.accounts.push(row.into_account()?);
        }
        Ok(page)
    }

    async fn start_sweep_run(
        &self,
        as_of: DateTime<Utc>,
        started_at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let (id,): (i64,) = D::Db::read(
            &sqlx::query(
                "INSERT INTO sweep_runs (as_of, started_at, status, dry_run) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .param(as_of)
            .param(started_at)
            .param(SweepRunStatus::Running.as_str())
            .param(false)
            .fetch_one(self.write())
            .await?,
        )?;
        Ok(id)
    }

    async fn finish_sweep_run(&self, id: i64, end: &RunEnd) -> Result<(), StoreError> {
        // One column per reason a sweep counts (`$6`, `$7`, … in `SWEPT_REASONS` order).
        let transitions: String = SWEPT_REASONS
            .iter()
            .enumerate()
            .filter_map(|(i, r)| transition_column(*r).map(|c| format!(", {c} = ${}", i + 7)))
            .collect();
        let sql = format!(
            "UPDATE sweep_runs SET status = $2, finished_at = $3, examined = $4, \
             expiring_notified = $5, error = $6{transitions} WHERE id = $1"
        );
        let mut query = sqlx::query(&sql)
            .param(id)
            .param(end.status.as_str())
            .param(end.finished_at)
            .param(count(end.counts.examined))
            .param(count(end.counts.expiring_notified))
            .param(end.error.as_deref());
        for reason in SWEPT_REASONS {
            query = query.param(count(end.counts.transitions_of(reason)));
        }
        query.execute(self.write()).await?;
        Ok(())
    }

    async fn last_sweep_as_of(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let as_of: Option<DateTime<Utc>> = D::Db::read_optional(
            sqlx::query(
                "SELECT as_of FROM sweep_runs WHERE status = $1 AND dry_run = $2 \
             ORDER BY as_of DESC LIMIT 1",
            )
            .param(SweepRunStatus::Succeeded.as_str())
            .param(false)
            .fetch_optional(self.read())
            .await?,
        )?
        .map(|(value,): (DateTime<Utc>,)| value);
        Ok(as_of)
    }

    async fn recent_sweep_runs(&self, limit: u32) -> Result<Vec<SweepRun>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sweep_runs ORDER BY id DESC LIMIT $1",
            rows::SWEEP_RUN_COLUMNS
        );
        let rows: Vec<SweepRunRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(i64::from(limit))
                .fetch_all(self.read())
                .await?,
        )?;
        rows.into_iter().map(SweepRunRow::into_run).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.read()).await?;
        Ok(())
    }

    async fn probe_write(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO storage_probe (id, probed_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
        )
        .param(now)
        .execute(self.write())
        .await?;
        Ok(())
    }

    async fn accounts_by_state(&self) -> Result<Vec<(AccountState, i64)>, StoreError> {
        let rows: Vec<(i32, i64)> = D::Db::read_all(
            sqlx::query("SELECT state, COUNT(*) FROM accounts GROUP BY state ORDER BY state")
                .fetch_all(self.read())
                .await?,
        )?;
        rows.into_iter()
            .map(|(state, count)| Ok((rows::state(state)?, count)))
            .collect()
    }

    async fn recharge_totals(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RechargeTotals, StoreError> {
        // A day's bounds take whole quarter hours of `history_totals` (migration 0009); other
        // bounds (not asked by the dashboard) count the RECHARGE rows themselves. SUM of BIGINT
        // is NUMERIC in PostgreSQL, hence the casts.
        let whole = super::analytics::whole_slots(&[from, until]);
        let sql = if whole {
            format!(
                "SELECT CAST(COALESCE(SUM(t.row_count), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(t.amount_total), 0) AS BIGINT) \
                 FROM history_totals t WHERE t.slot >= $1 AND t.slot < $2 AND {}",
                super::analytics::RECHARGE_CODE
            )
        } else {
            format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS BIGINT) \
                 FROM account_history WHERE kind = {} AND at >= $1 AND at < $2",
                HistoryKind::Recharge as i32
            )
        };
        let query = sqlx::query(&sql);
        let query = if whole {
            query.param(from.timestamp()).param(until.timestamp())
        } else {
            query.param(from).param(until)
        };
        let (count, amount): (i64, i64) = D::Db::read(&query.fetch_one(self.read()).await?)?;
        Ok(RechargeTotals { count, amount })
    }

    async fn recycles_by_day(
        &self,
        through: NaiveDate,
    ) -> Result<Vec<(NaiveDate, i64)>, StoreError> {
        let Some(last_day) = through.pred_opt() else {
            return Ok(Vec::new());
        };
        // Recycled on day R means the last day before it (`lock_until`, or `card_expiry`
        // unactivated) is R - 1 (`Account::state_on`; the conformance suite checks that both
        // agree). Every state of a live account ends on or before that last day, and its
        // notice is due earlier still, so its `next_deadline` is at most the end of that day:
        // the indexed bound keeps the scan to the accounts due within the window.
        let deadline_bound = self.rules.end_of_day(last_day).timestamp();
        let sql = format!(
            "SELECT last_day, COUNT(*) FROM ( \
               SELECT {} AS last_day FROM accounts \
               WHERE next_deadline IS NOT NULL AND next_deadline <= $1 AND state <> {} \
             ) due WHERE last_day IS NOT NULL AND last_day <= $2 \
             GROUP BY last_day ORDER BY last_day",
            rows::LAST_DAY_BEFORE_RECYCLING_SQL,
            AccountState::Recycled as i32
        );
        let rows: Vec<(NaiveDate, i64)> = D::Db::read_all(
            sqlx::query(&sql)
                .param(deadline_bound)
                .param(last_day)
                .fetch_all(self.read())
                .await?,
        )?;
        Ok(rows
            .into_iter()
            .map(|(last_day, count)| (last_day.succ_opt().unwrap_or(last_day), count))
            .collect())
    }

    async fn dead_letter_overview(&self, limit: u32) -> Result<DeadLetterOverview, StoreError> {
        let (count,): (i64,) = D::Db::read(
            &sqlx::query("SELECT COUNT(*) FROM webhook_deliveries WHERE dead_at IS NOT NULL")
                .fetch_one(self.read())
                .await?,
        )?;
        let sql = format!(
            "SELECT {JOINED_OUTBOX_COLUMNS}, d.attempts, d.last_error, d.dead_at \
             FROM webhook_deliveries d JOIN outbox o ON o.sequence = d.sequence \
             WHERE d.dead_at IS NOT NULL \
             ORDER BY d.dead_at DESC, d.sequence DESC LIMIT $1"
        );
        let rows: Vec<DeadRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(i64::from(limit))
                .fetch_all(self.read())
                .await?,
        )?;
        let latest = rows
            .into_iter()
            .map(DeadRow::into_dead_letter)
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(DeadLetterOverview { count, latest })
    }

    async fn last_outbox_sequence(&self) -> Result<i64, StoreError> {
        let (last,): (Option<i64>,) = D::Db::read(
            &sqlx::query("SELECT MAX(sequence) FROM outbox")
                .fetch_one(self.read())
                .await?,
        )?;
        Ok(last.unwrap_or(0))
    }

    async fn oldest_undelivered_event(
        &self,
        types: &[EventType],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if types.is_empty() {
            return Ok(None);
        }
        // The oldest pending delivery row (the partial index holds only those), or the oldest
        // event above every registered one (not registered yet): no scan of the delivered past.
        // An event committed late below the registered ones is counted once the worker
        // registers it (within seconds).
        let sql = format!(
            "SELECT o.emitted_at FROM outbox o WHERE o.sequence = (SELECT min(s) FROM ( \
               SELECT min(d.sequence) AS s FROM webhook_deliveries d \
                 WHERE d.delivered_at IS NULL AND d.dead_at IS NULL \
               UNION ALL \
               SELECT min(n.sequence) AS s FROM outbox n WHERE n.event_type IN ({}) \
                 AND n.sequence > (SELECT COALESCE(max(w.sequence), 0) \
                   FROM webhook_deliveries w) \
             ) AS m)",
            type_list(types)
        );
        let oldest: Option<DateTime<Utc>> =
            D::Db::read_optional(sqlx::query(&sql).fetch_optional(self.read()).await?)?
                .map(|(value,): (DateTime<Utc>,)| value);
        Ok(oldest)
    }

    async fn undelivered_event_count(&self, types: &[EventType]) -> Result<i64, StoreError> {
        if types.is_empty() {
            return Ok(0);
        }
        // The same two parts as `oldest_undelivered_event`, counted.
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM webhook_deliveries d \
               WHERE d.delivered_at IS NULL AND d.dead_at IS NULL) \
             + (SELECT COUNT(*) FROM outbox n WHERE n.event_type IN ({}) \
               AND n.sequence > (SELECT COALESCE(max(w.sequence), 0) \
                 FROM webhook_deliveries w))",
            type_list(types)
        );
        let (count,): (i64,) = D::Db::read(&sqlx::query(&sql).fetch_one(self.read()).await?)?;
        Ok(count)
    }

    fn group_commits(&self) -> super::GroupCommitCounts {
        self.dialect.group_commits()
    }

    fn pool_connections(&self) -> super::PoolConnections {
        let (writer, reader) = (
            super::PoolConnections::of(self.writer()),
            super::PoolConnections::of(self.reader()),
        );
        if std::ptr::eq(self.writer(), self.reader()) {
            return writer;
        }
        super::PoolConnections {
            open: writer.open + reader.open,
            idle: writer.idle + reader.idle,
        }
    }
}

/// A count as the `BIGINT` columns of `sweep_runs` hold it.
fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
