//! The scheduler inside `serve`: runs the sweep at the occurrences of `sweep.cron` (6 fields,
//! `sec min hour dom month dow`, in the operator's time zone), driven by the injected clock.
//!
//! - System clock: sleeps until the next occurrence, then sweeps as of the clock's time.
//! - Manual clock: the `TestClock` service reports every move ([`ClockMoves`]); a move that
//!   passes one or more occurrences triggers ONE catch-up sweep as of the new time, and the
//!   move is acknowledged only after that sweep has committed (so SetTime/AdvanceTime return
//!   after it).
//! - At start-up, a sweep missed while the server was down (the last succeeded run is older
//!   than the previous occurrence) runs at once.
//!
//! The scheduler owns when a sweep runs; what a sweep does is `crate::sweep`'s.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::AccountStore;
use crate::sweep::SweepCounts;
use crate::sweep::SweepObserver;

/// A move of the manual clock, acknowledged once any sweep it triggered has finished.
pub struct ClockMove {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub done: oneshot::Sender<()>,
}

/// Where the `TestClock` service reports the moves of the manual clock.
pub type ClockMoves = mpsc::Sender<ClockMove>;

/// Runs the sweep on the cron schedule.
pub struct Scheduler {
    store: Arc<dyn AccountStore>,
    clock: Arc<dyn Clock>,
    schedule: cron::Schedule,
    timezone: Tz,
    batch_size: u32,
    /// Where its sweeps are recorded (`serve`'s metrics), if anywhere.
    metrics: Option<Arc<dyn SweepObserver>>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn AccountStore>,
        clock: Arc<dyn Clock>,
        schedule: cron::Schedule,
        timezone: Tz,
        batch_size: u32,
    ) -> Self {
        Self {
            store,
            clock,
            schedule,
            timezone,
            batch_size,
            metrics: None,
        }
    }

    /// Reports the sweeps it runs to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn SweepObserver>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether a move of the clock from `from` to `to` passes an occurrence.
    pub fn passes_occurrence(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        passes_occurrence(&self.schedule, self.timezone, from, to)
    }

    /// One sweep as of the clock's time; failures are logged (the next run finishes the work).
    async fn sweep_now(&self, why: &str) {
        let now = self.clock.now();
        let store = self.store.as_ref();
        let ran = match crate::sweep::asked(self.batch_size, None, now, false) {
            Ok(request) => {
                crate::sweep::run_recorded(self.metrics.as_deref(), store, request).await
            }
            Err(refused) => Err(refused),
        };
        match ran {
            Ok((as_of, report)) => log_sweep_done(as_of, &report.counts, why),
            Err(e) => tracing::error!(error = %e, why, "scheduled sweep failed"),
        }
    }

    /// Runs the sweep missed while the server was down, if any.
    pub async fn catch_up_missed(&self) {
        let now = self.clock.now();
        let Some(previous) = previous_at_or_before(&self.schedule, self.timezone, now) else {
            return;
        };
        match self.store.last_sweep_as_of().await {
            Ok(Some(last)) if last >= previous => {}
            Ok(Some(last)) => {
                tracing::info!(%last, %previous, "a scheduled sweep was missed; running it now");
                self.sweep_now("missed while the server was down").await;
            }
            // A new database (or one only ever swept by hand before the runs were recorded):
            // nothing was missed, but nothing says the states are current either.
            Ok(None) => {
                tracing::debug!(%previous, "no sweep has run on this database yet");
                self.sweep_now("first sweep on this database").await;
            }
            Err(e) => tracing::error!(error = %e, "cannot read the last sweep run"),
        }
    }

    /// With the system clock: sleeps until each occurrence and sweeps, until `shutdown`.
    pub async fn run_on_system_clock(self, shutdown: CancellationToken) {
        loop {
            let now = self.clock.now();
            let Some(next) = next_after(&self.schedule, self.timezone, now) else {
                tracing::warn!("the sweep schedule has no further occurrence; scheduler stops");
                return;
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            // A sleep may end a little early: wait for the clock to reach the occurrence.
            if self.clock.now() < next {
                continue;
            }
            // A sweep in progress finishes its batches before shutdown is honoured.
            self.sweep_now("scheduled").await;
        }
    }

    /// With the manual clock: one catch-up sweep per move that passes occurrences, each move
    /// acknowledged after its sweep, until `shutdown` or the clock service goes away.
    pub async fn run_on_manual_clock(
        self,
        mut moves: mpsc::Receiver<ClockMove>,
        shutdown: CancellationToken,
    ) {
        loop {
            let moved = tokio::select! {
                _ = shutdown.cancelled() => return,
                moved = moves.recv() => moved,
            };
            let Some(moved) = moved else { return };
            if self.passes_occurrence(moved.from, moved.to) {
                self.sweep_now("the manual clock passed a scheduled time")
                    .await;
            }
            // The mover may have gone away (cancelled call); nothing to tell then.
            let _ = moved.done.send(());
        }
    }
}

/// One line per sweep, each count its own field (plain numbers, in text and JSON logs), read
/// through [`SweepCounts::named`] like every other output of the counts.
fn log_sweep_done(as_of: DateTime<Utc>, counts: &SweepCounts, why: &str) {
    let count = |name: &str| {
        counts
            .named()
            .find(|(named, _)| *named == name)
            .map_or(0, |(_, count)| count)
    };
    tracing::info!(
        %as_of,
        examined = counts.examined,
        to_grace = count("to_grace"),
        to_locked = count("to_locked"),
        to_recycled_from_locked = count("to_recycled_from_locked"),
        to_recycled_unactivated = count("to_recycled_unactivated"),
        expiring_notified = count("expiring_notified"),
        why,
        "scheduled sweep done"
    );
}

/// The first occurrence strictly after `at`.
pub fn next_after(
    schedule: &cron::Schedule,
    timezone: Tz,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .after(&at.with_timezone(&timezone))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

/// The last occurrence at or before `at`.
pub fn previous_at_or_before(
    schedule: &cron::Schedule,
    timezone: Tz,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let just_after = at + chrono::Duration::seconds(1);
    schedule
        .after(&just_after.with_timezone(&timezone))
        .next_back()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t <= at)
}

/// Whether a move of the clock from `from` to `to` passes an occurrence (one in `(from, to]`).
pub fn passes_occurrence(
    schedule: &cron::Schedule,
    timezone: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> bool {
    next_after(schedule, timezone, from).is_some_and(|next| next <= to)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn daily() -> cron::Schedule {
        cron::Schedule::from_str("0 5 0 * * *").unwrap()
    }

    const SHANGHAI: Tz = chrono_tz::Asia::Shanghai;

    /// The occurrence of the daily 00:05 Shanghai schedule strictly after `at`.
    fn next(at: &str) -> Option<DateTime<Utc>> {
        next_after(&daily(), SHANGHAI, utc(at))
    }

    /// The occurrence of the daily 00:05 Shanghai schedule at or before `at`.
    fn previous(at: &str) -> Option<DateTime<Utc>> {
        previous_at_or_before(&daily(), SHANGHAI, utc(at))
    }

    /// Whether a move of the clock from `from` to `to` passes a daily 00:05 Shanghai occurrence.
    fn passes(from: &str, to: &str) -> bool {
        passes_occurrence(&daily(), SHANGHAI, utc(from), utc(to))
    }

    #[test]
    fn the_default_schedule_is_00_05_local_time() {
        // 00:05 Shanghai is 16:05 UTC the day before.
        assert_eq!(
            next("2030-03-01T02:00:00Z"),
            Some(utc("2030-03-01T16:05:00Z"))
        );
        assert_eq!(
            next("2030-03-01T16:05:00Z"),
            Some(utc("2030-03-02T16:05:00Z")),
            "strictly after"
        );
    }

    #[test]
    fn the_previous_occurrence_includes_the_instant_itself() {
        assert_eq!(
            previous("2030-03-01T16:05:00Z"),
            Some(utc("2030-03-01T16:05:00Z"))
        );
        assert_eq!(
            previous("2030-03-01T16:04:59Z"),
            Some(utc("2030-02-28T16:05:00Z"))
        );
    }

    #[test]
    fn a_move_passes_an_occurrence_only_when_one_lies_in_between() {
        assert!(!passes("2030-03-01T02:00:00Z", "2030-03-01T16:04:59Z"));
        assert!(passes("2030-03-01T02:00:00Z", "2030-03-01T16:05:00Z"));
        assert!(passes("2030-03-01T02:00:00Z", "2031-03-01T02:00:00Z"));
        assert!(!passes("2030-03-01T16:05:00Z", "2030-03-01T20:00:00Z"));
    }
}
