//! The writes inside an open transaction, shared by both backends: one mutation
//! ([`Writes::apply_in`], whichever way the dialect got its transaction), and one sweep batch
//! ([`SqlSweepBatch`]: claim the due rows, write what the sweep decided).

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Transaction;

use super::ROWS_PER_STATEMENT;
use super::grouped::One;
use super::multi_row::ValuesRows;
use crate::analytics::ValueDeltas;
use crate::lifecycle::{Account, Msisdn, Rules};
use crate::store::dialect::{Args, Conn, Db, Dialect, Executes, Param, Reads};
use crate::store::rows::{ACCOUNT_COLUMNS, AccountRow};
use crate::store::sweeps::{SweepBatch, SweptBatch};
use crate::store::{
    Committed, Decide, HistoryRecord, MutateFailure, Mutation, OutboxEvent, RequestKey, StoreError,
};

/// The head of a multi-row INSERT of history rows ([`Writes::history_row`]).
pub(super) const HISTORY_INSERT: &str = "INSERT INTO account_history (msisdn, account_id, \
    generation, at, kind, from_state, to_state, amount, actor, request_id, channel) ";

/// The head of a multi-row INSERT of outbox events ([`Writes::event_row`]).
pub(super) const EVENTS_INSERT: &str = "INSERT INTO outbox (event_id, event_type, msisdn, \
    account_id, generation, from_state, to_state, reason, effective_at, emitted_at) ";

/// The generic writes of dialect `D` (a namespace: the bounds are stated once for all of them).
pub(crate) struct Writes<D>(PhantomData<D>);

impl<D: Dialect> Writes<D> {
    /// Carries out one mutation inside the caller's open transaction, without committing: a
    /// group of one ([`Self::apply_group`]), with the same statements. `Applied` means writes
    /// were made (its rows and what its history adds to the values and totals) and must be
    /// committed; `Replayed` and refusals wrote nothing; an SQL error may leave partial writes
    /// that the caller rolls back.
    pub(crate) async fn apply_in(
        conn: &mut Conn<D>,
        rules: &Rules,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        let one = One {
            msisdn,
            key,
            decide,
        };
        let mut results = Self::apply_group(conn, rules, std::slice::from_ref(&one)).await?;
        results.pop().expect("one result per mutation")
    }

    /// Locks and reads up to `limit` due accounts with the dialect's claim.
    async fn claim_due(
        conn: &mut Conn<D>,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError> {
        let claim = D::CLAIM_DUE;
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts \
             WHERE next_deadline IS NOT NULL AND next_deadline <= $1 \
             ORDER BY next_deadline, msisdn LIMIT $2{claim}"
        );
        let rows: Vec<AccountRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(as_of.timestamp())
                .param(i64::from(limit))
                .fetch_all(D::Db::on(&mut *conn))
                .await?,
        )?;
        rows.into_iter().map(AccountRow::into_account).collect()
    }

    /// Locks and reads those of `msisdns` that are due by `as_of`, with the dialect's claim.
    async fn claim_listed(
        conn: &mut Conn<D>,
        as_of: DateTime<Utc>,
        msisdns: &[&str],
    ) -> Result<Vec<Account>, StoreError> {
        let head = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE msisdn IN (");
        // The instant is a number written into the text: the list's rows take the parameters.
        let tail = format!(
            ") AND next_deadline IS NOT NULL AND next_deadline <= {} ORDER BY msisdn{}",
            as_of.timestamp(),
            D::CLAIM_DUE
        );
        let rows: Vec<AccountRow> =
            Self::read_in_chunks(conn, &head, &tail, msisdns, |row, msisdn| {
                row.param(*msisdn);
            })
            .await?;
        rows.into_iter().map(AccountRow::into_account).collect()
    }

    /// Writes back what a sweep changes (state, recycled_at, updated_at, next_deadline, the
    /// expiry notice) for a whole batch in one statement per chunk, then its history and events.
    async fn write_swept(
        conn: &mut Conn<D>,
        rules: &Rules,
        swept: &SweptBatch,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<AccountRow> = swept
            .accounts
            .iter()
            .map(|account| AccountRow::from_account(account, rules))
            .collect();
        let head = "WITH v (msisdn, state, recycled_at, updated_at, next_deadline, \
                    expiring_notified_for) AS (";
        let tail = ") UPDATE accounts SET state = v.state, recycled_at = v.recycled_at, \
                    updated_at = v.updated_at, next_deadline = v.next_deadline, \
                    expiring_notified_for = v.expiring_notified_for \
                    FROM v WHERE accounts.msisdn = v.msisdn";
        Self::in_chunks(conn, head, tail, &rows, |values, row| {
            values
                .param(row.msisdn.as_str())
                .param(row.state)
                .param(row.recycled_at)
                .param(row.updated_at)
                .param(row.next_deadline)
                .param(row.expiring_notified_for);
        })
        .await?;
        Self::in_chunks(conn, HISTORY_INSERT, "", &swept.history, Self::history_row).await?;
        let mut values = ValueDeltas::default();
        values.add(&swept.history);
        Self::add_values(&mut *conn, values).await?;
        Self::in_chunks(conn, EVENTS_INSERT, "", &swept.events, Self::event_row).await
    }

    /// A history row of [`HISTORY_INSERT`].
    pub(super) fn history_row<'q>(values: &mut ValuesRows<'q, D>, entry: &'q HistoryRecord) {
        values
            .param(entry.msisdn.as_str())
            .param(entry.account_id.as_str())
            .param(i64::from(entry.generation))
            .param(entry.at)
            .param(entry.kind as i32)
            .param(entry.from_state.map(|s| s as i32))
            .param(entry.to_state.map(|s| s as i32))
            .param(entry.amount)
            .param(entry.actor.as_str())
            .param(entry.request_id.as_deref())
            .param(entry.channel.map(|c| c as i32));
    }

    /// Runs the calls of a finished [`Calls`] in order: `statements` and `args` unzipped from
    /// [`Calls::finish`] (the statements must outlive the arguments' borrow).
    pub(super) async fn run_calls<'q>(
        conn: &mut Conn<D>,
        statements: &'q [String],
        args: Vec<Args<'q, D>>,
    ) -> Result<(), sqlx::Error> {
        for (sql, args) in statements.iter().zip(args) {
            Self::run(conn, sql, args).await?;
        }
        Ok(())
    }

    /// Runs `head VALUES (…), (…)…tail` over `rows`, at most [`ROWS_PER_STATEMENT`] rows a
    /// statement (none for no rows), each row's values written by `write`.
    pub(super) async fn in_chunks<T: Sync>(
        conn: &mut Conn<D>,
        head: &str,
        tail: &str,
        rows: &[T],
        write: impl for<'q> Fn(&mut ValuesRows<'q, D>, &'q T) + Send,
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut statement = ValuesRows::<D>::new(head);
            for value in chunk {
                write(statement.row(), value);
            }
            let (sql, args) = statement.finish(tail)?;
            Self::run(conn, &sql, args).await?;
        }
        Ok(())
    }

    /// Runs `head VALUES (…), (…)…tail` over `rows` as [`Self::in_chunks`] does, and reads the
    /// rows the statements return.
    pub(super) async fn read_in_chunks<T: Send, R: Sync>(
        conn: &mut Conn<D>,
        head: &str,
        tail: &str,
        rows: &[R],
        write: impl for<'q> Fn(&mut ValuesRows<'q, D>, &'q R) + Send,
    ) -> Result<Vec<T>, sqlx::Error>
    where
        Db<D>: Reads<T>,
    {
        let mut found = Vec::new();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut statement = ValuesRows::<D>::new(head);
            for value in chunk {
                write(statement.row(), value);
            }
            let (sql, args) = statement.finish(tail)?;
            found.extend(D::Db::read_all(
                sqlx::query_with(&sql, args)
                    .fetch_all(D::Db::on(&mut *conn))
                    .await?,
            )?);
        }
        Ok(found)
    }

    /// Runs one statement built by [`ValuesRows`].
    pub(super) async fn run<'q>(
        conn: &mut Conn<D>,
        sql: &'q str,
        args: Args<'q, D>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query_with(sql, args)
            .execute(D::Db::on(&mut *conn))
            .await?;
        Ok(())
    }

    /// An event row of [`EVENTS_INSERT`]; in the given order, their sequence order.
    pub(super) fn event_row<'q>(values: &mut ValuesRows<'q, D>, event: &'q OutboxEvent) {
        values
            .param(event.event_id.as_str())
            .param(event.event_type as i32)
            .param(event.msisdn.as_str())
            .param(event.account_id.as_str())
            .param(i64::from(event.generation))
            .param(event.from_state as i32)
            .param(event.to_state as i32)
            .param(event.reason.as_str())
            .param(event.effective_at)
            .param(event.emitted_at);
    }

    /// Binds the account columns in [`ACCOUNT_COLUMNS`] order, to a query or to a row of a
    /// multi-row statement.
    pub(super) fn bind_account<'q, P: Param<'q, Db<D>>>(query: P, row: &'q AccountRow) -> P {
        query
            .param(row.msisdn.as_str())
            .param(row.account_id.as_str())
            .param(row.generation)
            .param(row.state)
            .param(row.balance)
            .param(row.preset_balance)
            .param(row.sold)
            .param(row.initial_validity_days)
            .param(row.provisioned_at)
            .param(row.activated_at)
            .param(row.valid_until)
            .param(row.grace_until)
            .param(row.lock_until)
            .param(row.card_expiry)
            .param(row.recycled_at)
            .param(row.updated_at)
            .param(row.next_deadline)
            .param(row.expiring_notified_for)
    }
}

/// Runs the pure decision on `current`. A refusal is the mutation's own answer; a panic in the
/// decision must not take the (shared) writer down with it, so it becomes an internal error of
/// this mutation alone.
pub(super) fn decide_guarded(
    msisdn: &Msisdn,
    decide: &Decide,
    current: Option<&Account>,
) -> Result<Mutation, MutateFailure> {
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(current)));
    match decided {
        Ok(Ok(mutation)) => Ok(mutation),
        Ok(Err(refused)) => Err(MutateFailure::Store(refused.into())),
        Err(_) => {
            tracing::error!(%msisdn, "the lifecycle decision panicked; nothing written");
            Err(MutateFailure::Store(StoreError::Internal(
                "the lifecycle decision failed".into(),
            )))
        }
    }
}

/// One sweep batch: its transaction (the dialect opened it) and the rules `next_deadline` is
/// written with.
pub(crate) struct SqlSweepBatch<D: Dialect> {
    pub(crate) tx: Transaction<'static, Db<D>>,
    pub(crate) rules: Arc<Rules>,
}

#[async_trait]
impl<D: Dialect> SweepBatch for SqlSweepBatch<D> {
    async fn claim_due(
        &mut self,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError> {
        Writes::<D>::claim_due(&mut self.tx, as_of, limit).await
    }

    async fn claim_listed(
        &mut self,
        as_of: DateTime<Utc>,
        msisdns: &[&str],
    ) -> Result<Vec<Account>, StoreError> {
        Writes::<D>::claim_listed(&mut self.tx, as_of, msisdns).await
    }

    async fn write_batch(&mut self, swept: &SweptBatch) -> Result<(), StoreError> {
        Ok(Writes::<D>::write_swept(&mut self.tx, &self.rules, swept).await?)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }
}
