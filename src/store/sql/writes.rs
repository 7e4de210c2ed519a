//! The writes inside an open transaction, shared by both backends: one mutation
//! ([`Writes::apply_in`], whichever way the dialect got its transaction), and one sweep batch
//! ([`SqlSweepBatch`]: claim the due rows, write what the sweep decided).

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Transaction};

use super::ROWS_PER_STATEMENT;
use super::grouped::One;
use crate::analytics::{ValueDelta, ValueDeltas};
use crate::lifecycle::{Account, Msisdn, Rules};
use crate::store::dialect::{Args, Binds, Conn, Db, Dialect, Executes, Param, Reads};
use crate::store::rows::{ACCOUNT_COLUMNS, AccountRow};
use crate::store::sweeps::{SweepBatch, SweptBatch};
use crate::store::{
    Committed, Decide, HistoryRecord, MutateFailure, Mutation, OutboxEvent, RequestKey, StoreError,
};

/// Adds what history rows add to their generations' rows of `generation_values`: the first
/// activation instant, the recharges' sum and number, the latest recharge. Multi-row: the
/// `VALUES` rows come before this tail, at most one per (msisdn, generation). Amounts are never
/// negative; their sums stop at the largest BIGINT rather than fail the write (a recharge must
/// not be refused for the sake of a report).
const ADD_GENERATION_VALUES: &str = " ON CONFLICT (msisdn, generation) DO UPDATE SET \
    activated_at = COALESCE(generation_values.activated_at, excluded.activated_at), \
    recharge_total = CASE WHEN generation_values.recharge_total > 9223372036854775807 - \
        excluded.recharge_total THEN 9223372036854775807 \
        ELSE generation_values.recharge_total + excluded.recharge_total END, \
    recharge_count = generation_values.recharge_count + excluded.recharge_count, \
    last_recharge_at = CASE WHEN generation_values.last_recharge_at IS NULL \
      OR excluded.last_recharge_at > generation_values.last_recharge_at \
      THEN excluded.last_recharge_at ELSE generation_values.last_recharge_at END, \
    first_out_at = CASE WHEN generation_values.first_out_at IS NULL \
      OR excluded.first_out_at < generation_values.first_out_at \
      THEN excluded.first_out_at ELSE generation_values.first_out_at END, \
    unlocked = CASE WHEN excluded.unlocked = 1 THEN 1 ELSE generation_values.unlocked END";

/// Adds history rows' counts and amounts to their slots' rows of `history_totals` (multi-row,
/// the `VALUES` rows before this tail, at most one per key; the amounts saturate, as above).
const ADD_HISTORY_TOTALS: &str = " ON CONFLICT (slot, code, shard) DO UPDATE SET \
    row_count = history_totals.row_count + excluded.row_count, \
    amount_total = CASE WHEN history_totals.amount_total > 9223372036854775807 - \
        excluded.amount_total THEN 9223372036854775807 \
        ELSE history_totals.amount_total + excluded.amount_total END";

/// Adds stays in GRACE ended to their entries' slots of `grace_ends` (multi-row, as above).
const ADD_GRACE_ENDS: &str = " ON CONFLICT (slot, ended, shard) DO UPDATE SET \
    stays = grace_ends.stays + excluded.stays";

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

    /// Adds `values` to `generation_values`, `history_totals` and `grace_ends` (the sweep's
    /// batches; a mutation's group writes them with its other rows): the stays it ends read
    /// first ([`Self::resolve_stays`]), the three upserts as one call, then the GRACE marks.
    pub(crate) async fn add_values(
        conn: &mut Conn<D>,
        mut values: ValueDeltas,
    ) -> Result<(), sqlx::Error> {
        Self::resolve_stays(conn, &mut values).await?;
        let rows = ValueRows::of(&values);
        let mut calls = Calls::<D>::default();
        Self::value_statements(&mut calls, &rows)?;
        let (statements, args): (Vec<String>, Vec<_>) = calls.finish()?.into_iter().unzip();
        Self::run_calls(conn, &statements, args).await?;
        Self::mark_grace(conn, &values).await
    }

    /// Reads the marks in `generation_values` of the stays in GRACE that `values` ends but
    /// that began before it.
    pub(super) async fn resolve_stays(
        conn: &mut Conn<D>,
        values: &mut ValueDeltas,
    ) -> Result<(), sqlx::Error> {
        let open: Vec<(&str, u32)> = values.stays_to_resolve().collect();
        let found: Vec<(String, i64, Option<DateTime<Utc>>)> = Self::read_in_chunks(
            conn,
            "WITH v (msisdn, generation) AS (",
            ") SELECT g.msisdn, g.generation, g.grace_entered_at FROM generation_values g \
             JOIN v ON g.msisdn = v.msisdn AND g.generation = v.generation",
            &open,
            |row, (msisdn, generation)| {
                row.param(*msisdn).param(i64::from(*generation));
            },
        )
        .await?;
        let marks: Vec<_> = found
            .into_iter()
            .map(|(msisdn, generation, at)| (msisdn, generation as u32, at))
            .collect();
        values.resolve_stays(&marks);
        Ok(())
    }

    /// The upserts of `rows` into `generation_values`, `history_totals` and `grace_ends` (none
    /// for no rows), in that order in every transaction (and each in key order), so that two
    /// writers never wait for each other's rows crosswise.
    pub(super) fn value_statements<'q>(
        calls: &mut Calls<'q, D>,
        rows: &'q ValueRows<'_>,
    ) -> Result<(), sqlx::Error> {
        let head = "INSERT INTO generation_values (msisdn, generation, activated_at, \
                    recharge_total, recharge_count, last_recharge_at, first_out_at, unlocked) ";
        calls.statement(
            head,
            ADD_GENERATION_VALUES,
            &rows.generations,
            |row, value| {
                let (msisdn, generation, delta) = *value;
                row.param(msisdn)
                    .param(i64::from(generation))
                    .param(delta.activated_at)
                    .param(delta.recharge_total)
                    .param(delta.recharge_count)
                    .param(delta.last_recharge_at)
                    .param(delta.first_out_at)
                    .param(i32::from(delta.unlocked));
            },
        )?;
        let head = "INSERT INTO history_totals (slot, code, shard, row_count, amount_total) ";
        calls.statement(head, ADD_HISTORY_TOTALS, &rows.totals, |row, total| {
            let (slot, code, rows, amount) = *total;
            row.param(slot)
                .param(code)
                .expression(D::TOTALS_SHARD)
                .param(rows)
                .param(amount);
        })?;
        let head = "INSERT INTO grace_ends (slot, ended, shard, stays) ";
        calls.statement(
            head,
            ADD_GRACE_ENDS,
            &rows.ends,
            |row, (slot, end, stays)| {
                row.param(*slot)
                    .param(*end)
                    .expression(D::TOTALS_SHARD)
                    .param(*stays);
            },
        )
    }

    /// Sets the marks of the stays in GRACE `values` leaves open, once its `generation_values`
    /// rows exist (a statement of its own: on PostgreSQL one statement may not change a row
    /// twice).
    pub(super) async fn mark_grace(
        conn: &mut Conn<D>,
        values: &ValueDeltas,
    ) -> Result<(), sqlx::Error> {
        let marks: Vec<_> = values.grace_marks().collect();
        let head = "WITH v (msisdn, generation, grace_entered_at) AS (";
        let tail = ") UPDATE generation_values SET grace_entered_at = v.grace_entered_at FROM v \
                    WHERE generation_values.msisdn = v.msisdn \
                    AND generation_values.generation = v.generation";
        Self::in_chunks(
            conn,
            head,
            tail,
            &marks,
            |row, (msisdn, generation, mark)| {
                row.param(*msisdn)
                    .param(i64::from(*generation))
                    .param(*mark);
            },
        )
        .await
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

/// The rows a [`ValueDeltas`] adds to `generation_values`, `history_totals` and `grace_ends`
/// ([`Writes::value_statements`]), gathered once its stays are resolved.
pub(super) struct ValueRows<'v> {
    generations: Vec<(&'v str, u32, &'v ValueDelta)>,
    totals: Vec<(i64, i64, i64, i64)>,
    ends: Vec<(i64, i64, i64)>,
}

impl<'v> ValueRows<'v> {
    pub(super) fn of(values: &'v ValueDeltas) -> Self {
        Self {
            generations: values.iter().collect(),
            totals: values.totals().collect(),
            ends: values.grace_ends().collect(),
        }
    }
}

/// The `VALUES` rows of a multi-row statement and their arguments, written as
/// `sqlx::QueryBuilder::push_values` writes them (the backend's own placeholders). The builder
/// itself does not serve generic code: it owns the arguments, and dropping it after the query
/// borrowed it does not type-check for an unknown backend.
pub(super) struct ValuesRows<'q, D: Dialect> {
    /// The statements ended by [`Self::then`], before the one being written.
    done: Vec<String>,
    sql: String,
    args: Args<'q, D>,
    /// The first value that failed to encode, if any: the statement is not run.
    encoded: Result<(), BoxDynError>,
    /// A row is open; its first value is not written yet.
    open: bool,
    first: bool,
}

impl<'q, D: Dialect> ValuesRows<'q, D> {
    pub(super) fn new(head: &str) -> Self {
        Self {
            done: Vec::new(),
            sql: format!("{head}VALUES "),
            args: Args::<D>::default(),
            encoded: Ok(()),
            open: false,
            first: true,
        }
    }

    /// Starts the next row.
    pub(super) fn row(&mut self) -> &mut Self {
        self.sql.push_str(if self.open { "), (" } else { "(" });
        self.open = true;
        self.first = true;
        self
    }

    pub(super) fn param<V>(&mut self, value: V) -> &mut Self
    where
        D::Db: Binds<'q, V>,
    {
        if !self.first {
            self.sql.push_str(", ");
        }
        self.first = false;
        if self.encoded.is_ok() {
            self.encoded = D::Db::add(&mut self.args, value);
        }
        // Writing to a `String` cannot fail.
        let _ = self.args.format_placeholder(&mut self.sql);
        self
    }

    /// A value written as SQL (a constant expression of the dialect's), not bound.
    fn expression(&mut self, sql: &str) -> &mut Self {
        if !self.first {
            self.sql.push_str(", ");
        }
        self.first = false;
        self.sql.push_str(sql);
        self
    }

    /// Ends the statement being written (its rows, then `tail`) and starts another, `head
    /// VALUES …`, whose parameters follow its; [`Self::finish`] gives all of them as one query
    /// ([`Dialect::join_statements`]).
    pub(super) fn then(&mut self, tail: &str, head: &str) {
        self.close(tail);
        let next = format!("{head}VALUES ");
        self.done.push(std::mem::replace(&mut self.sql, next));
        self.open = false;
        self.first = true;
    }

    /// Parameters bound so far.
    pub(super) fn params(&self) -> usize {
        self.args.len()
    }

    fn close(&mut self, tail: &str) {
        if self.open {
            self.sql.push(')');
        }
        self.sql.push_str(tail);
    }

    /// The statement (the rows, then `tail`), after those ended by [`Self::then`], and the
    /// arguments.
    pub(super) fn finish(mut self, tail: &str) -> Result<(String, Args<'q, D>), sqlx::Error> {
        self.close(tail);
        self.encoded.map_err(sqlx::Error::Encode)?;
        let sql = if self.done.is_empty() {
            self.sql
        } else {
            self.done.push(self.sql);
            D::join_statements(self.done)
        };
        Ok((sql, self.args))
    }
}

/// A row of a multi-row statement takes parameters as a query does (see
/// [`Writes::bind_account`]).
impl<'q, D: Dialect> Param<'q, Db<D>> for &mut ValuesRows<'q, D> {
    fn param<T>(self, value: T) -> Self
    where
        Db<D>: Binds<'q, T>,
    {
        ValuesRows::param(self, value)
    }
}

/// Parameters of one call at most: PostgreSQL takes 65 535 in one statement.
const PARAMS_PER_CALL: usize = 30_000;

/// Multi-row statements gathered into calls of up to [`PARAMS_PER_CALL`] parameters.
pub(super) struct Calls<'q, D: Dialect> {
    /// The call being written and the tail of its last statement.
    open: Option<(ValuesRows<'q, D>, &'q str)>,
    ready: Vec<(String, Args<'q, D>)>,
}

impl<D: Dialect> Default for Calls<'_, D> {
    fn default() -> Self {
        Self {
            open: None,
            ready: Vec::new(),
        }
    }
}

impl<'q, D: Dialect> Calls<'q, D> {
    /// `head VALUES (…), (…)…tail` over `rows` (none for no rows), at most
    /// [`ROWS_PER_STATEMENT`] rows a statement, each row's values written by `write`.
    pub(super) fn statement<T>(
        &mut self,
        head: &str,
        tail: &'q str,
        rows: &'q [T],
        write: impl Fn(&mut ValuesRows<'q, D>, &'q T),
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut statement = match self.open.take() {
                Some((mut call, previous_tail)) => {
                    call.then(previous_tail, head);
                    call
                }
                None => ValuesRows::new(head),
            };
            for value in chunk {
                write(statement.row(), value);
            }
            if statement.params() >= PARAMS_PER_CALL {
                self.ready.push(statement.finish(tail)?);
            } else {
                self.open = Some((statement, tail));
            }
        }
        Ok(())
    }

    /// The calls, in order.
    pub(super) fn finish(mut self) -> Result<Vec<(String, Args<'q, D>)>, sqlx::Error> {
        if let Some((call, tail)) = self.open.take() {
            self.ready.push(call.finish(tail)?);
        }
        Ok(self.ready)
    }
}
