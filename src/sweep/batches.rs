//! A real sweep: batches of due accounts, each claimed, swept and written in one transaction of
//! the store, by one or two workers, with the run recorded in `sweep_runs` and its progress
//! logged.
//!
//! Where the store asks for it (SQLite), the batches take the due accounts in MSISDN order
//! (their MSISDNs read first, up to [`DUE_KEYS_PER_READ`] at a time), not in deadline order:
//! accounts of neighbouring MSISDNs share table and index pages, and one batch writes such a
//! page once for all its due accounts where deadline order comes back to it for each deadline,
//! each time writing the whole page to the log again (measured in BENCHMARKS.md). Elsewhere,
//! and for the accounts a batch could not claim (another transaction held them), batches claim
//! in deadline order until none is due.
//!
//! Concurrent sweeps (several instances on one PostgreSQL database) and requests never fail one
//! another: a claim never waits for a row lock (it leaves out the rows another transaction
//! holds, and the sweep comes back for those until no due account is left), so nothing can
//! deadlock; and a batch that still meets a transient conflict (`StoreError::Busy`: deadlock,
//! serialization failure, busy database) was rolled back whole and runs again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{SweepCounts, SweepReport, SweepRequest};
use crate::lifecycle::{Account, Effects, Rules};
use crate::store::{
    AccountStore, DueCursor, RunEnd, StoreError, SweepRunStatus, SweptBatch, new_event_id,
};

/// The due MSISDNs read at once (at least a batch): the batches are cut from them in MSISDN
/// order. Each read sorts every due MSISDN after the last one read; a read holds ~1 MiB.
const DUE_KEYS_PER_READ: u32 = 50_000;

/// A long sweep reports its progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Attempts at a batch that meets a transient conflict.
const BATCH_ATTEMPTS: u32 = 8;

/// How long a sweep waits, at most, for due accounts other transactions hold (a request holds
/// its row for milliseconds, another sweep's batch for well under a second) before it fails
/// and leaves them to the next run.
const HELD_ROWS_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn sweep(
    store: &dyn AccountStore,
    request: &SweepRequest,
) -> Result<SweepReport, StoreError> {
    let run_id = store.start_sweep_run(request.as_of, request.now).await?;
    let started = Instant::now();
    let run = Run {
        store,
        request,
        run_id,
        started,
        progress: Mutex::new((SweepCounts::default(), started)),
        failed: AtomicBool::new(false),
    };
    let outcome: Result<(), StoreError> = async {
        // First the rows nobody holds: in MSISDN order where the store asks for it, else by
        // two batches at once where it allows that (one batch's database work and commit
        // overlap the other's reading and deciding).
        if store.sweep_in_msisdn_order() {
            run.listed().await?;
        } else {
            run.by_workers(|| run.drain()).await?;
        }
        // Then the rows left out because a request or another sweep held them: usually done
        // by then (the holder advanced them, and they are no longer due), else claimed once
        // their holder lets go.
        let waited = Instant::now();
        let mut pause = Duration::from_millis(2);
        while any_due(store, request).await? {
            if waited.elapsed() >= HELD_ROWS_WAIT {
                return Err(StoreError::Unavailable(format!(
                    "due accounts stayed locked by other transactions for {} s",
                    HELD_ROWS_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            run.drain().await?;
        }
        Ok(())
    }
    .await;
    let counts = run
        .progress
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .0;
    let (status, error) = match &outcome {
        Ok(()) => (SweepRunStatus::Succeeded, None),
        Err(e) => (SweepRunStatus::Failed, Some(e.to_string())),
    };
    let end = RunEnd {
        status,
        finished_at: request.now,
        counts: counts.to_run_counts(),
        error,
    };
    let recorded = store.finish_sweep_run(run_id, &end).await;
    match (outcome, recorded) {
        (Err(e), recorded) => {
            if let Err(not_recorded) = recorded {
                tracing::error!(run_id, error = %not_recorded, "cannot mark the sweep run failed");
            }
            tracing::error!(run_id, error = %e, ?counts, "sweep failed; the next run finishes the work");
            Err(e)
        }
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => {
            let elapsed = started.elapsed();
            let rate = counts.examined as f64 / elapsed.as_secs_f64().max(1e-6);
            tracing::info!(
                run_id,
                as_of = %request.as_of,
                ?counts,
                elapsed_ms = elapsed.as_millis() as u64,
                accounts_per_s = rate as u64,
                "sweep done"
            );
            Ok(SweepReport {
                counts,
                recycled_msisdns: Vec::new(),
                run_id: Some(run_id),
            })
        }
    }
}

/// One real sweep's batches and what they have done so far.
struct Run<'a> {
    store: &'a dyn AccountStore,
    request: &'a SweepRequest,
    run_id: i64,
    started: Instant,
    /// The counts of the committed batches, and when progress was last reported.
    progress: Mutex<(SweepCounts, Instant)>,
    /// Set when a batch fails: the other workers finish the batch they hold (it commits and is
    /// counted) and start no new one.
    failed: AtomicBool,
}

impl Run<'_> {
    /// Runs `work` once, or twice at once where the store allows two batches at once (one
    /// batch's database work and commit overlap the other's reading and deciding).
    async fn by_workers<F>(&self, work: impl Fn() -> F) -> Result<(), StoreError>
    where
        F: Future<Output = Result<(), StoreError>>,
    {
        if self.store.sweep_workers() > 1 {
            let (first, second) = tokio::join!(work(), work());
            first.and(second)
        } else {
            work().await
        }
    }

    /// Batches in deadline order until one comes back short.
    async fn drain(&self) -> Result<(), StoreError> {
        while let Some(claimed) = self.batch(None).await? {
            if claimed < self.request.batch_size as usize {
                break;
            }
        }
        Ok(())
    }

    /// Batches cut in order from the due MSISDNs, read [`DUE_KEYS_PER_READ`] at a time.
    async fn listed(&self) -> Result<(), StoreError> {
        let per_read = DUE_KEYS_PER_READ.max(self.request.batch_size);
        let mut after = String::new();
        loop {
            let keys = self
                .store
                .due_msisdns(self.request.as_of, &after, per_read)
                .await?;
            let Some(last) = keys.last() else {
                return Ok(());
            };
            after = last.to_owned();
            let size = self.request.batch_size as usize;
            let next = AtomicUsize::new(0);
            self.by_workers(|| async {
                loop {
                    let start = next.fetch_add(size, Ordering::AcqRel);
                    if start >= keys.len() {
                        break;
                    }
                    let chunk = keys.slice(start..(start + size).min(keys.len()));
                    if self.batch(Some(&chunk)).await?.is_none() {
                        break;
                    }
                }
                Ok(())
            })
            .await?;
            if keys.len() < per_read as usize {
                return Ok(());
            }
        }
    }

    /// One batch ([`sweep_batch`]) of the due accounts among `listed`, else of the earliest
    /// deadlines, committed and counted; returns how many it claimed, or `None` without
    /// running it once another batch failed.
    async fn batch(&self, listed: Option<&[&str]>) -> Result<Option<usize>, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Ok(None);
        }
        let (claimed, batch) = sweep_batch(self.store, self.request, listed)
            .await
            .inspect_err(|_| self.failed.store(true, Ordering::Release))?;
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let (counts, last_report) = &mut *progress;
        counts.add(&batch);
        let run_id = self.run_id;
        tracing::debug!(
            run_id,
            claimed,
            examined = counts.examined,
            "sweep batch committed"
        );
        if last_report.elapsed() >= PROGRESS_EVERY {
            *last_report = Instant::now();
            let rate = counts.examined as f64 / self.started.elapsed().as_secs_f64();
            tracing::info!(
                run_id,
                examined = counts.examined,
                accounts_per_s = rate as u64,
                "sweep in progress"
            );
        }
        Ok(Some(claimed))
    }
}

/// Whether an account is still due by `request.as_of` (read without locks).
async fn any_due(store: &dyn AccountStore, request: &SweepRequest) -> Result<bool, StoreError> {
    let page = store
        .due_accounts(request.as_of, &DueCursor::default(), 1)
        .await?;
    Ok(!page.accounts.is_empty())
}

/// One batch ([`try_sweep_batch`]), run again after a transient conflict, which rolled it back.
async fn sweep_batch(
    store: &dyn AccountStore,
    request: &SweepRequest,
    listed: Option<&[&str]>,
) -> Result<(usize, SweepCounts), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_sweep_batch(store, request, listed).await {
            Err(StoreError::Busy(conflict)) if attempt < BATCH_ATTEMPTS => {
                tracing::debug!(attempt, %conflict, "sweep batch rolled back; running it again");
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
            }
            done => return done,
        }
    }
}

/// One batch, one transaction: claims the due accounts among `listed` (`None`: up to
/// `batch_size` due accounts, the earliest deadlines first), sweeps them, writes the result and
/// commits. Returns how many were claimed and what their sweep did.
async fn try_sweep_batch(
    store: &dyn AccountStore,
    request: &SweepRequest,
    listed: Option<&[&str]>,
) -> Result<(usize, SweepCounts), StoreError> {
    let mut batch = store.begin_sweep_batch().await?;
    let accounts = match listed {
        Some(msisdns) => batch.claim_listed(request.as_of, msisdns).await?,
        None => batch.claim_due(request.as_of, request.batch_size).await?,
    };
    let claimed = accounts.len();
    let (swept, counts) = sweep_accounts(accounts, request, store.rules());
    batch.write_batch(&swept).await?;
    batch.commit().await?;
    Ok((claimed, counts))
}

/// The sweep of claimed accounts as of `request.as_of`: each account with every boundary it
/// crossed materialised, and the history rows and outbox events of those transitions and of
/// the notices due. Pure.
fn sweep_accounts(
    accounts: Vec<Account>,
    request: &SweepRequest,
    rules: &Rules,
) -> (SweptBatch, SweepCounts) {
    let mut counts = SweepCounts::default();
    let mut batch = SweptBatch {
        accounts: Vec::with_capacity(accounts.len()),
        ..SweptBatch::default()
    };
    for mut account in accounts {
        let swept = account.sweep(request.as_of, rules);
        counts.tally(&swept);
        if !swept.transitions.is_empty() || swept.notice.is_some() {
            account.updated_at = request.now;
        }
        let mut effects = Effects::of_sweep(&account, &swept, request.now, &mut new_event_id);
        batch.history.append(&mut effects.history);
        batch.events.append(&mut effects.events);
        batch.accounts.push(account);
    }
    (batch, counts)
}
