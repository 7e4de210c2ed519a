//! The sweep (spec section 6): advances every account whose next deadline is ≤ `as_of` through
//! every boundary it crossed and sends the VALIDITY_EXPIRING notices due.
//!
//! This module owns the work: the batch loop and its workers, what each batch writes (the
//! lifecycle core decides the transitions and builds their history rows and events,
//! `crate::lifecycle::Effects::of_sweep`), the run bookkeeping in `sweep_runs`, the progress logs and the report to the
//! metrics. The store only offers narrow operations: a batch transaction that claims due
//! accounts and writes a swept batch ([`crate::store::SweepBatch`]), a page of due accounts for
//! a forecast, and the run records. It must not reach past those into SQL.
//!
//! - [`asked`], [`run`] / [`run_recorded`]: one sweep as the operator asks for it (the
//!   `AdvanceStates` RPC, the `sweep` command and the scheduler).
//! - `batches`: a real sweep, batch by batch, each batch one transaction.
//! - `forecast`: a dry run, which only reads.
//! - [`SweepCounts`]: what a sweep counts, keyed by the transition reason.

mod batches;
mod counts;
mod forecast;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::{AccountStore, StoreError};

pub use counts::{COUNTED, EXPIRING_NOTIFIED, SweepCounts};

/// A dry run lists at most this many MSISDNs that would be recycled.
pub const FORECAST_LIMIT: usize = 1000;

/// What a sweep is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct SweepRequest {
    /// Every account due by this instant is advanced (dry: would be).
    pub as_of: DateTime<Utc>,
    /// The clock's time: `emitted_at` of events, the run's start and end.
    pub now: DateTime<Utc>,
    /// Accounts per transaction.
    pub batch_size: u32,
    /// Compute the counts (and the forecast) without writing anything.
    pub dry_run: bool,
}

/// What a sweep reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub counts: SweepCounts,
    /// Dry run only: MSISDNs that would be recycled, up to [`FORECAST_LIMIT`].
    pub recycled_msisdns: Vec<String>,
    /// The `sweep_runs` row of a real run; `None` for a dry run (which writes nothing).
    pub run_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Only a forecast may look into the future: a real sweep would emit events early.
    #[error(
        "as_of {as_of} is after the current time {now}: only a dry run (forecast) may look ahead"
    )]
    AsOfInFuture {
        as_of: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `request`: a forecast when it is dry, otherwise a real sweep recorded in `sweep_runs`.
/// A real sweep's failure rolls back the current batch only, marks the run failed, and the next
/// run finishes the work.
pub async fn sweep(
    store: &dyn AccountStore,
    request: SweepRequest,
) -> Result<SweepReport, StoreError> {
    if request.dry_run {
        forecast::forecast(store, &request).await
    } else {
        batches::sweep(store, &request).await
    }
}

/// The sweep the operator asks for: as of `as_of` (`None` = `now`), `batch_size` accounts per
/// transaction (at least 1); a real sweep may not look past `now`.
pub fn asked(
    batch_size: u32,
    as_of: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<SweepRequest, SweepError> {
    let as_of = as_of.unwrap_or(now);
    if as_of > now && !dry_run {
        return Err(SweepError::AsOfInFuture { as_of, now });
    }
    Ok(SweepRequest {
        as_of,
        now,
        batch_size: batch_size.max(1),
        dry_run,
    })
}

/// Runs one sweep as of `as_of` (`None` = `now`); returns the instant used and the report.
pub async fn run(
    store: &dyn AccountStore,
    batch_size: u32,
    as_of: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<(DateTime<Utc>, SweepReport), SweepError> {
    run_recorded(None, store, asked(batch_size, as_of, now, dry_run)?).await
}

/// Where real sweep runs are reported: the service's metrics (`crate::ops`) implement it.
pub trait SweepObserver: Send + Sync {
    /// A sweep run ended, with its report or the error that stopped it, after `elapsed`.
    fn sweep_finished(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration);
}

/// Runs `request` ([`asked`]), reported to `observer` when it is a real sweep (a forecast is
/// not a sweep run); returns the instant used and the report.
pub async fn run_recorded(
    observer: Option<&dyn SweepObserver>,
    store: &dyn AccountStore,
    request: SweepRequest,
) -> Result<(DateTime<Utc>, SweepReport), SweepError> {
    let started = std::time::Instant::now();
    let swept = sweep(store, request).await;
    if let Some(observer) = observer.filter(|_| !request.dry_run) {
        observer.sweep_finished(swept.as_ref(), started.elapsed());
    }
    Ok((request.as_of, swept?))
}
