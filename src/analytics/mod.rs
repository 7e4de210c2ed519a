//! Lifecycle analytics, the pure part: periods and cohort ages in the operator's time zone, how
//! history rows count (stage composition, flows, win-backs, cohorts), percentiles and MSISDN
//! masking. `docs/analytics.md` defines every figure; this module is that text in code.
//!
//! Pure like `crate::lifecycle`, whose rows and rules it reads: no tokio, no sqlx, no tonic. The
//! store reads the rows (`crate::store::AnalyticsStore`), the API validates requests and answers
//! with what these functions compute.

mod cohorts;
mod flows;
mod periods;
mod values;

#[cfg(test)]
mod tests;

pub use cohorts::{
    AGES, AgeRetention, CohortFigures, CohortValue, LockHistory, LockRow, cohort_figures,
    percentile,
};
pub use flows::{
    GraceEnd, GraceEntry, PeriodFlows, Recharge, RowGroup, StageCounts, StateMove,
    daily_composition, is_recharge, state_move, tally_flows,
};
pub use periods::{Granularity, Period, month_start, parse_date, parse_month, periods};
pub use values::{
    TOTAL_SLOT_SECS, ValueDelta, ValueDeltas, grace_end_code, starts_slot, total_code, total_slot,
};

/// `msisdn` for a campaign list that must not show whole numbers: the first 3 and the last 4
/// digits kept, every other one `*` (an MSISDN has at least 8 digits, so one is always hidden).
pub fn mask_msisdn(msisdn: &str) -> String {
    let digits: Vec<char> = msisdn.chars().collect();
    let shown_tail = digits.len().saturating_sub(4).max(3);
    digits
        .iter()
        .enumerate()
        .map(|(i, c)| if i < 3 || i >= shown_tail { *c } else { '*' })
        .collect()
}
