//! The stage composition and the flows, read from an [`AnalyticsStore`] and counted by the pure
//! `crate::analytics`: one reading for the LifecycleAnalytics service (`api::analytics`) and the
//! dashboard's charts (`ops::charts`), so both show the same figures for the same range.

use chrono::{DateTime, NaiveDate, Utc};

use super::{AnalyticsStore, StoreError};
use crate::analytics::{self, Period, PeriodFlows, StageCounts};
use crate::lifecycle::Rules;

/// The accounts per effective state now, and per day at the end of each of the asked days.
#[derive(Clone, Debug, Default)]
pub struct Composition {
    /// Every MSISDN's current generation by its effective state on the day the query ran.
    pub now: StageCounts,
    /// One entry per asked day, in order.
    pub days: Vec<StageCounts>,
}

/// An instant after every row the service writes: the end of the last bucket of a read.
fn far_future() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::MAX_UTC, |t| t.and_utc())
}

/// The composition on local date `today` and at the end of each of `days` (ascending, none
/// after `today`): the stored states less every move since each day (docs/analytics.md).
pub async fn composition<S: AnalyticsStore + ?Sized>(
    store: &S,
    rules: &Rules,
    today: NaiveDate,
    days: &[NaiveDate],
) -> Result<Composition, StoreError> {
    // A bucket per day, then one for every later row (none without days).
    let mut bounds: Vec<DateTime<Utc>> = days.iter().map(|d| rules.start_of_day(*d)).collect();
    if let Some(last) = days.last() {
        bounds.extend([rules.end_of_day(*last), far_future()]);
    }
    // Two independent reads, each on its own read connection, at once.
    let (composition, moved) = tokio::try_join!(store.composition_on(today), store.moves(&bounds))?;
    // Effective states now, and the stored states: where every history row written so far has
    // taken the MSISDNs.
    let (mut now, mut stored) = (StageCounts::default(), StageCounts::default());
    for (stored_state, effective, count) in composition {
        now.add(effective, count);
        stored.add(stored_state, count);
    }
    if days.is_empty() {
        return Ok(Composition {
            now,
            days: Vec::new(),
        });
    }
    // The composition before the first day: the stored states less every move since.
    let mut before = stored;
    let mut moves = Vec::new();
    for (_, rows) in moved {
        if let Some(moved) = analytics::state_move(rows.kind, rows.generation, rows.from, rows.to) {
            before.apply(moved, -rows.rows);
            moves.push((rows.at, moved, rows.rows));
        }
    }
    let days = analytics::daily_composition(before, &moves, days, rules);
    Ok(Composition { now, days })
}

/// The flows of each of `periods` (ascending and contiguous); none for no periods.
pub async fn flows<S: AnalyticsStore + ?Sized>(
    store: &S,
    rules: &Rules,
    periods: &[Period],
) -> Result<Vec<PeriodFlows>, StoreError> {
    let Some(last) = periods.last() else {
        return Ok(Vec::new());
    };
    let mut bounds: Vec<DateTime<Utc>> = periods
        .iter()
        .map(|p| rules.start_of_day(p.first))
        .collect();
    bounds.push(rules.end_of_day(last.last));
    // Three independent reads, each on its own read connection, at once.
    let (groups, recharges, entries) = tokio::try_join!(
        store.moves(&bounds),
        store.recharges(&bounds),
        store.grace_entries(&bounds)
    )?;
    Ok(analytics::tally_flows(
        periods,
        &groups.into_iter().map(|(_, g)| g).collect::<Vec<_>>(),
        &recharges.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
        &entries.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        rules,
    ))
}
