//! What a change's history adds to the analytics tables, written in the change's transaction:
//! `generation_values` (per account generation), `history_totals` (per quarter hour) and
//! `grace_ends` (stays in GRACE ended, per quarter hour of their entry), from a
//! [`ValueDeltas`]. A mutation's group writes them in its one call with its rows
//! (`grouped.rs`); a sweep batch with [`Writes::add_values`].

use chrono::{DateTime, Utc};

use super::multi_row::Calls;
use super::writes::Writes;
use crate::analytics::{ValueDelta, ValueDeltas};
use crate::store::dialect::{Conn, Dialect};

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

impl<D: Dialect> Writes<D> {
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
        let (statements, args) = calls.finish()?;
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
