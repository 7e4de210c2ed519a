//! What the lifecycle analytics read from the store (issue 18): the [`AnalyticsStore`] contract
//! and its query types. The reports count these facts in `crate::analytics` (pure); the
//! definitions are docs/analytics.md. `sql.rs` implements it for both backends.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::StoreError;
use crate::analytics::{CohortValue, GraceEntry, LockRow, Recharge, RowGroup};
use crate::lifecycle::{Account, AccountState};

mod sql;

pub(super) use sql::{RECHARGE_CODE, whole_slots};

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

/// One activation day of a cohort report: its first instant, the next day's, and the end of
/// the day each of `AGES` is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CohortDay {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub ages: [DateTime<Utc>; 4],
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

    /// Per activation day of `days`, the account generations activated that day and never
    /// taken out of LOCKED again (`generation_values.unlocked` 0) that first went to LOCKED or
    /// RECYCLED before the end of each of its `ages` (`AGES` order): (index in `days`,
    /// counts), days without any left out.
    async fn cohort_outs(&self, days: &[CohortDay]) -> Result<Vec<(usize, [i64; 4])>, StoreError>;

    /// The rows that lock or recycle an account generation activated in `from ≤ at < until`
    /// that was taken out of LOCKED again at least once (the others: [`Self::cohort_outs`]),
    /// or take it out of LOCKED, in order: (activation instant, each row's instant and new
    /// state), one entry per such generation.
    async fn cohort_locks(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, Vec<LockRow>)>, StoreError>;

    /// One page of a churn warning list, the highest recharge value first, ties by MSISDN.
    async fn churn_candidates(&self, query: &ChurnQuery)
    -> Result<Vec<ChurnCandidate>, StoreError>;
}
