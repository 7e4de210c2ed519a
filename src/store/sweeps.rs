//! What the store offers the sweep (`crate::sweep`), which owns the loop, the batches' content,
//! the workers and the run bookkeeping: a batch transaction that claims due accounts and writes
//! what the sweep decided, a read-only page of due accounts for a forecast, and the rows of
//! `sweep_runs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{HistoryRecord, OutboxEvent, StoreError};
use crate::lifecycle::{Account, TransitionReason};

/// What one sweep batch writes, together.
#[derive(Clone, Debug, Default)]
pub struct SweptBatch {
    /// Every claimed account as swept (rewritten even when nothing changed: its
    /// `next_deadline` moves past `as_of`, so the row is done).
    pub accounts: Vec<Account>,
    pub history: Vec<HistoryRecord>,
    pub events: Vec<OutboxEvent>,
}

/// One sweep batch: a transaction on the write path. Dropping it without [`commit`] rolls
/// everything back.
///
/// [`commit`]: SweepBatch::commit
#[async_trait]
pub trait SweepBatch: Send {
    /// Locks and reads up to `limit` accounts whose `next_deadline` is ≤ `as_of`, the earliest
    /// deadline first, leaving out those another transaction holds (PostgreSQL: `SKIP
    /// LOCKED`; SQLite has one writer, so nobody else holds any): a claim never waits for a
    /// row lock, so two sweeps, or a sweep and the requests, cannot deadlock.
    async fn claim_due(
        &mut self,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError>;

    /// Locks and reads those of the accounts of `msisdns` (in MSISDN order, from
    /// [`super::AccountStore::due_msisdns`]) that are still due by `as_of`, in MSISDN order,
    /// leaving out those another transaction holds as [`Self::claim_due`] does.
    async fn claim_listed(
        &mut self,
        as_of: DateTime<Utc>,
        msisdns: &[&str],
    ) -> Result<Vec<Account>, StoreError>;

    /// Writes the swept accounts (state, `recycled_at`, `updated_at`, `next_deadline`, the
    /// expiry notice), their history rows and their outbox events.
    async fn write_batch(&mut self, swept: &SweptBatch) -> Result<(), StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Undoes the batch now and releases its row locks (dropping it also rolls back, but only
    /// when the connection is next used).
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// MSISDNs in order, as [`super::AccountStore::due_msisdns`] reads them, held in one buffer:
/// a read of tens of thousands costs two allocations, not one per MSISDN (about a third of the
/// memory of a `Vec<String>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsisdnList {
    text: String,
    /// Where each MSISDN ends in `text`.
    ends: Vec<usize>,
}

impl MsisdnList {
    pub fn push(&mut self, msisdn: &str) {
        self.text.push_str(msisdn);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The MSISDNs `range` (by position) holds, in order.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Vec<&str> {
        range.map(|i| self.get(i)).collect()
    }

    pub fn last(&self) -> Option<&str> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// Where a page of due accounts ends; the next page starts after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueCursor {
    pub(crate) next_deadline: i64,
    pub(crate) msisdn: String,
}

impl Default for DueCursor {
    /// Before the first due account.
    fn default() -> Self {
        Self {
            next_deadline: i64::MIN,
            msisdn: String::new(),
        }
    }
}

/// One page of due accounts, read without locks.
#[derive(Clone, Debug, Default)]
pub struct DuePage {
    pub accounts: Vec<Account>,
    /// After the last account of the page (the start again when the page is empty).
    pub next: DueCursor,
}

/// Where a sweep run is, as `sweep_runs.status` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepRunStatus {
    Running,
    Succeeded,
    Failed,
}

impl SweepRunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepRunStatus::Running => "running",
            SweepRunStatus::Succeeded => "succeeded",
            SweepRunStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Running, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// What a run's committed batches did, as `sweep_runs` records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Due accounts looked at.
    pub examined: u64,
    /// Boundary transitions per reason (each reason a sweep makes, once).
    pub transitions: Vec<(TransitionReason, u64)>,
    /// VALIDITY_EXPIRING notices sent.
    pub expiring_notified: u64,
}

impl RunCounts {
    /// The transitions of `reason` (0 when none are recorded).
    pub fn transitions_of(&self, reason: TransitionReason) -> u64 {
        self.transitions
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, count)| count)
            .sum()
    }
}

/// The `sweep_runs` column that counts the transitions of `reason`, or `None` for a reason
/// only requests make.
pub(crate) fn transition_column(reason: TransitionReason) -> Option<&'static str> {
    match reason {
        TransitionReason::ValidityExpired => Some("to_grace"),
        TransitionReason::GraceExpired => Some("to_locked"),
        TransitionReason::LockExpired => Some("to_recycled_from_locked"),
        TransitionReason::UnactivatedExpired => Some("to_recycled_unactivated"),
        TransitionReason::Activated | TransitionReason::Recharged | TransitionReason::Unlocked => {
            None
        }
    }
}

/// The reasons `sweep_runs` has a column for, in column order.
pub(crate) const SWEPT_REASONS: [TransitionReason; 4] = [
    TransitionReason::ValidityExpired,
    TransitionReason::GraceExpired,
    TransitionReason::LockExpired,
    TransitionReason::UnactivatedExpired,
];

/// One run of the sweep, as `sweep_runs` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepRun {
    pub id: i64,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    pub status: SweepRunStatus,
    /// What its committed batches did (a failed run: up to the failure).
    pub counts: RunCounts,
    pub error: Option<String>,
}

/// How a run ended, for [`super::AccountStore::finish_sweep_run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEnd {
    pub status: SweepRunStatus,
    pub finished_at: DateTime<Utc>,
    pub counts: RunCounts,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::MsisdnList;

    #[test]
    fn an_msisdn_list_gives_back_what_was_pushed_in_order_and_by_range() {
        let mut list = MsisdnList::default();
        assert!(list.is_empty());
        assert_eq!(list.last(), None);
        assert_eq!(list.slice(0..0), Vec::<&str>::new());
        for msisdn in ["8613800000001", "861380000002", "86138000000003"] {
            list.push(msisdn);
        }
        assert_eq!(list.len(), 3);
        assert_eq!(
            list.slice(0..3),
            ["8613800000001", "861380000002", "86138000000003"]
        );
        assert_eq!(list.slice(1..2), ["861380000002"]);
        assert_eq!(list.slice(2..3), ["86138000000003"]);
        assert_eq!(list.last(), Some("86138000000003"));
    }
}
