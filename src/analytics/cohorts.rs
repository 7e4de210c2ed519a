//! Cohorts by activation month: retention at fixed ages, recharge value, LTV percentiles.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};

use super::periods::month_start;
use crate::lifecycle::{AccountState, Rules};

/// The ages (days after the activation date) retention is reported at.
pub const AGES: [u32; 4] = [30, 90, 180, 365];

/// Retention of a cohort at one age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgeRetention {
    pub age_days: u32,
    /// Accounts whose day `activation date + age` has ended.
    pub reached: i64,
    /// Of those, the ones VALID or GRACE at the end of that day.
    pub active: i64,
}

impl AgeRetention {
    /// `active ÷ reached`, 0 when no account has reached the age.
    pub fn share(&self) -> f64 {
        ratio(self.active, self.reached)
    }
}

/// The figures of the accounts activated in one month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CohortFigures {
    /// The month's first day.
    pub month: NaiveDate,
    pub accounts: i64,
    pub retention: Vec<AgeRetention>,
    /// Fen.
    pub recharge_total: i64,
    pub recharge_count: i64,
    /// Lifetime recharge per account (fen) at the 50th, 90th and 99th percentile.
    pub ltv_p50: i64,
    pub ltv_p90: i64,
    pub ltv_p99: i64,
}

impl CohortFigures {
    /// Average recharge value per account (fen).
    pub fn arpu(&self) -> f64 {
        ratio(self.recharge_total, self.accounts)
    }

    pub fn recharges_per_account(&self) -> f64 {
        ratio(self.recharge_count, self.accounts)
    }
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The nearest-rank `p`th percentile of `sorted` (ascending): the smallest value with at least
/// p % of the values at or below it; 0 for no values.
pub fn percentile(sorted: &[i64], p: u32) -> i64 {
    let each_once: Vec<(i64, i64)> = sorted.iter().map(|value| (*value, 1)).collect();
    percentile_of(&each_once, p)
}

/// The recharge value of some account generations of one cohort that share their lifetime
/// recharge total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CohortValue {
    /// The cohort's month (its first day).
    pub month: NaiveDate,
    /// Their lifetime recharge total each (fen).
    pub total: i64,
    /// How many generations.
    pub generations: i64,
    /// Their recharges together.
    pub recharges: i64,
}

/// A history row's instant and the state it went to.
pub type LockRow = (DateTime<Utc>, AccountState);

/// The rows of one activated account generation that lock or recycle it or take it out of
/// LOCKED, in order: its state at an instant is LOCKED or RECYCLED exactly when the last of
/// them before it went to one of those (it is VALID or GRACE otherwise, being activated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHistory {
    pub activated_on: NaiveDate,
    pub rows: Vec<LockRow>,
}

impl LockHistory {
    fn inactive_at(&self, at: DateTime<Utc>) -> bool {
        matches!(
            self.rows.iter().take_while(|(when, _)| *when < at).last(),
            Some((_, AccountState::Locked | AccountState::Recycled))
        )
    }
}

/// The nearest-rank `p`th percentile of values given as (value, how many) in ascending order of
/// value: the smallest value with at least p % of them at or below it; 0 for none.
fn percentile_of(histogram: &[(i64, i64)], p: u32) -> i64 {
    let n: i64 = histogram.iter().map(|(_, count)| count).sum();
    if n == 0 {
        return 0;
    }
    let rank = (u64::from(p) * n.unsigned_abs()).div_ceil(100).max(1) as i64;
    let mut seen = 0;
    for (value, count) in histogram {
        seen += count;
        if seen >= rank {
            return *value;
        }
    }
    histogram.last().map_or(0, |(value, _)| *value)
}

/// The figures of each of `months` (first days) at `now`, from the account generations
/// activated per local day (`activations`), their lifetime recharge totals per cohort
/// (`values`), and which of them were LOCKED or RECYCLED at the end of each age's day: counted
/// per activation day and age (`inactive`, `AGES` order; generations never taken out of LOCKED
/// again, which stay out from their first lock on) or decided from their lock histories
/// (`locks`; the others). A generation must be in one of the two, not both.
pub fn cohort_figures(
    months: &[NaiveDate],
    activations: &[(NaiveDate, i64)],
    values: &[CohortValue],
    (inactive, locks): (&[(NaiveDate, [i64; 4])], &[LockHistory]),
    now: DateTime<Utc>,
    rules: &Rules,
) -> Vec<CohortFigures> {
    // The end of the day an activation on `day` reaches `age_days`, if it has ended.
    let age_end = |day: NaiveDate, age_days: u32| {
        let end = rules.end_of_day(day + Days::new(u64::from(age_days)));
        (end <= now).then_some(end)
    };
    let mut locks_of: BTreeMap<NaiveDate, Vec<&LockHistory>> = BTreeMap::new();
    for lock in locks {
        locks_of
            .entry(month_start(lock.activated_on))
            .or_default()
            .push(lock);
    }
    months
        .iter()
        .map(|month| {
            let days: Vec<(NaiveDate, i64)> = activations
                .iter()
                .filter(|(day, _)| month_start(*day) == *month)
                .copied()
                .collect();
            let locked = locks_of.get(month).map(Vec::as_slice).unwrap_or_default();
            let retention = AGES
                .iter()
                .enumerate()
                .map(|(age, &age_days)| {
                    let reached = days
                        .iter()
                        .filter(|(day, _)| age_end(*day, age_days).is_some())
                        .map(|(_, n)| n)
                        .sum();
                    let inactive = locked
                        .iter()
                        .filter(|l| {
                            age_end(l.activated_on, age_days).is_some_and(|end| l.inactive_at(end))
                        })
                        .count() as i64
                        + inactive
                            .iter()
                            .filter(|(day, _)| {
                                month_start(*day) == *month && age_end(*day, age_days).is_some()
                            })
                            .map(|(_, counts)| counts[age])
                            .sum::<i64>();
                    AgeRetention {
                        age_days,
                        reached,
                        active: reached - inactive,
                    }
                })
                .collect();
            let mut histogram: Vec<(i64, i64)> = values
                .iter()
                .filter(|v| v.month == *month)
                .map(|v| (v.total, v.generations))
                .collect();
            histogram.sort_unstable();
            let cohort = values.iter().filter(|v| v.month == *month);
            CohortFigures {
                month: *month,
                accounts: days.iter().map(|(_, n)| n).sum(),
                retention,
                recharge_total: cohort.clone().map(|v| v.total * v.generations).sum(),
                recharge_count: cohort.map(|v| v.recharges).sum(),
                ltv_p50: percentile_of(&histogram, 50),
                ltv_p90: percentile_of(&histogram, 90),
                ltv_p99: percentile_of(&histogram, 99),
            }
        })
        .collect()
}
