//! One sweep run as the operator asks for it (the `AdvanceStates` RPC, the `sweep` command and
//! the scheduler): checks the instant it runs as of and hands the work to the store, which
//! owns the batches and transactions (`AccountStore::sweep`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::{AccountStore, StoreError, SweepReport, SweepRequest};

/// A dry run lists at most this many MSISDNs that would be recycled.
pub const FORECAST_LIMIT: usize = 1000;

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

/// Runs one sweep as of `as_of` (`None` = `now`); returns the instant used and the report.
pub async fn run(
    store: &dyn AccountStore,
    batch_size: u32,
    as_of: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<(DateTime<Utc>, SweepReport), SweepError> {
    let as_of = as_of.unwrap_or(now);
    if as_of > now && !dry_run {
        return Err(SweepError::AsOfInFuture { as_of, now });
    }
    let request = SweepRequest {
        as_of,
        now,
        batch_size: batch_size.max(1),
        dry_run,
        forecast_limit: FORECAST_LIMIT,
    };
    let report = store.sweep(request).await?;
    Ok((as_of, report))
}

/// Where real sweep runs are reported: the service's metrics (`crate::ops`) implement it.
pub trait SweepObserver: Send + Sync {
    /// A sweep run ended, with its report or the error that stopped it, after `elapsed`.
    fn sweep_finished(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration);
}

/// [`run`], reported to `observer` when it is a real sweep that ran (a forecast, or an `as_of`
/// refused before anything ran, is not a sweep run).
pub async fn run_recorded(
    observer: &dyn SweepObserver,
    store: &dyn AccountStore,
    batch_size: u32,
    as_of: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<(DateTime<Utc>, SweepReport), SweepError> {
    let started = std::time::Instant::now();
    let ran = run(store, batch_size, as_of, now, dry_run).await;
    if !dry_run {
        match &ran {
            Ok((_, report)) => observer.sweep_finished(Ok(report), started.elapsed()),
            Err(SweepError::Store(e)) => observer.sweep_finished(Err(e), started.elapsed()),
            Err(SweepError::AsOfInFuture { .. }) => {}
        }
    }
    ran
}
