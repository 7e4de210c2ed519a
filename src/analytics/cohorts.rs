//! Cohorts by activation month: retention at fixed ages, recharge value, LTV percentiles.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};

use super::flows::Recharge;
use super::periods::month_start;
use crate::lifecycle::{AccountState, HistoryKind, HistoryRecord, Rules};

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
    if sorted.is_empty() {
        return 0;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One account generation's life as its history tells it.
struct Life<'a> {
    activated_on: NaiveDate,
    rows: &'a [HistoryRecord],
}

impl Life<'_> {
    /// The state at instant `at`: that of the last row before it.
    fn state_before(&self, at: DateTime<Utc>) -> Option<AccountState> {
        self.rows
            .iter()
            .take_while(|row| row.at < at)
            .filter_map(|row| row.to_state)
            .last()
    }

    fn recharges(&self) -> impl Iterator<Item = i64> + '_ {
        self.rows.iter().filter_map(|row| match row.kind {
            HistoryKind::Recharge => Some(row.amount),
            _ => Recharge::of_unlock(row).map(|r| r.amount),
        })
    }
}

/// The figures of each of `months` (first days) at `now`, from the history rows (all kinds but
/// sales and charges) of the account generations activated in them, grouped by MSISDN and
/// generation, each group in row order. A group without an ACTIVATED row is ignored.
pub fn cohort_figures(
    rows: &[HistoryRecord],
    months: &[NaiveDate],
    now: DateTime<Utc>,
    rules: &Rules,
) -> Vec<CohortFigures> {
    let mut lives: BTreeMap<NaiveDate, Vec<Life<'_>>> = BTreeMap::new();
    for group in rows.chunk_by(|a, b| a.msisdn == b.msisdn && a.generation == b.generation) {
        let Some(activation) = group.iter().find(|r| r.kind == HistoryKind::Activated) else {
            continue;
        };
        let activated_on = rules.local_date(activation.at);
        lives
            .entry(month_start(activated_on))
            .or_default()
            .push(Life {
                activated_on,
                rows: group,
            });
    }
    months
        .iter()
        .map(|month| {
            let cohort = lives.get(month).map(Vec::as_slice).unwrap_or_default();
            let retention = AGES
                .iter()
                .map(|&age_days| {
                    let mut at_age = AgeRetention {
                        age_days,
                        reached: 0,
                        active: 0,
                    };
                    for life in cohort {
                        let day = life.activated_on + Days::new(u64::from(age_days));
                        let end = rules.end_of_day(day);
                        if end > now {
                            continue;
                        }
                        at_age.reached += 1;
                        if matches!(
                            life.state_before(end),
                            Some(AccountState::Valid | AccountState::Grace)
                        ) {
                            at_age.active += 1;
                        }
                    }
                    at_age
                })
                .collect();
            let mut ltv: Vec<i64> = cohort.iter().map(|l| l.recharges().sum()).collect();
            ltv.sort_unstable();
            CohortFigures {
                month: *month,
                accounts: cohort.len() as i64,
                retention,
                recharge_total: ltv.iter().sum(),
                recharge_count: cohort.iter().map(|l| l.recharges().count() as i64).sum(),
                ltv_p50: percentile(&ltv, 50),
                ltv_p90: percentile(&ltv, 90),
                ltv_p99: percentile(&ltv, 99),
            }
        })
        .collect()
}
