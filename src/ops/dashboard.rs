//! The read-only operations dashboard: `GET /` (a self-contained HTML page, no external
//! resources) and `GET /api/dashboard` (the JSON it renders).
//!
//! Everything it shows is read from the store (cached for [`DB_CACHE_TTL`], like the metrics,
//! so an open dashboard cannot load the database) or computed from the configuration and the
//! service clock. Dates are local dates of the operator's time zone and instants are written
//! in that zone (RFC 3339 with its offset), whatever the browser's zone. It never writes.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::metrics::DB_CACHE_TTL;
use crate::lifecycle::{AccountState, Rules};
use crate::store::{AccountStore, DeadLetterOverview, RechargeTotals, StoreError, SweepRun};
use crate::sweep::SweepCounts;

/// The page; it fetches `api/dashboard` and renders it.
pub const PAGE: &str = include_str!("dashboard.html");

/// Days of the upcoming-recycles chart, today included.
pub const RECYCLE_WINDOW_DAYS: u32 = 30;
/// Rows of `sweep_runs` shown.
pub const RECENT_SWEEPS: u32 = 10;
/// Dead letters listed.
pub const LATEST_DEAD_LETTERS: u32 = 10;
/// A dead letter's last error is cut to this many characters.
const ERROR_CHARS: usize = 200;

/// What the dashboard needs besides the store and the clock.
pub struct Dashboard {
    rules: Arc<Rules>,
    /// `sweep.cron` and its text when the scheduler runs; `None`: scheduler off.
    schedule: Option<(cron::Schedule, String)>,
    /// The last database read and the local day it was made for.
    cache: Mutex<Option<(Instant, NaiveDate, DbView)>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

/// What one read of the database gives.
#[derive(Clone, Debug)]
struct DbView {
    read_at: DateTime<Utc>,
    accounts: Vec<(AccountState, i64)>,
    recharges_today: RechargeTotals,
    sweeps: Vec<SweepRun>,
    recycles: Vec<(NaiveDate, i64)>,
    dead_letters: DeadLetterOverview,
}

/// The JSON of `GET /api/dashboard`.
#[derive(Debug, Serialize)]
pub struct DashboardView {
    /// The service clock's time of this answer.
    pub generated_at: String,
    /// When the database was read (up to the cache's few seconds earlier).
    pub read_at: String,
    pub timezone: String,
    /// The operator's local date at `generated_at`.
    pub today: String,
    /// Accounts per stored state, every state, in lifecycle order.
    pub accounts: Vec<StateCount>,
    pub recharges_today: RechargesToday,
    pub next_sweep: NextSweep,
    /// The latest first.
    pub recent_sweeps: Vec<SweepRunView>,
    pub upcoming_recycles: UpcomingRecycles,
    pub dead_letters: DeadLettersView,
}

#[derive(Debug, Serialize)]
pub struct StateCount {
    pub state: &'static str,
    pub count: i64,
}

#[derive(Debug, Serialize)]
pub struct RechargesToday {
    /// Local midnight that started today.
    pub since: String,
    pub count: i64,
    /// In fen.
    pub amount: i64,
}

#[derive(Debug, Serialize)]
pub struct NextSweep {
    /// False: `sweep.scheduler` is off and `serve` sweeps only when asked.
    pub scheduler: bool,
    pub cron: Option<String>,
    /// The next occurrence of `sweep.cron` after the service clock's now.
    pub at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SweepRunView {
    pub id: i64,
    pub as_of: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: &'static str,
    /// `examined`, then each count by name (`crate::sweep::SweepCounts`).
    #[serde(flatten)]
    pub counts: SweepCounts,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UpcomingRecycles {
    /// Today.
    pub from: String,
    /// The last day of the window (today + 29).
    pub through: String,
    /// Accounts whose recycle day is already past but that the sweep has not recycled yet.
    pub overdue: i64,
    /// Every day of the window, also those without recycles.
    pub days: Vec<DayCount>,
}

#[derive(Debug, Serialize)]
pub struct DayCount {
    pub date: String,
    pub count: i64,
}

#[derive(Debug, Serialize)]
pub struct DeadLettersView {
    pub count: i64,
    /// The latest dead-lettered first.
    pub latest: Vec<DeadLetterView>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    pub sequence: i64,
    pub event_id: String,
    pub event_type: &'static str,
    /// Masked: the endpoint has no authentication (the full letter: `ListDeadLetters`).
    pub msisdn: String,
    pub attempts: u32,
    pub dead_at: String,
    pub last_error: String,
}

impl Dashboard {
    /// `schedule`: `sweep.cron` parsed and as written, when the scheduler runs.
    pub fn new(rules: Arc<Rules>, schedule: Option<(cron::Schedule, String)>) -> Self {
        Self {
            rules,
            schedule,
            cache: Mutex::new(None),
        }
    }

    /// The dashboard at `now` (the service clock).
    pub async fn view(
        &self,
        store: &dyn AccountStore,
        now: DateTime<Utc>,
    ) -> Result<DashboardView, StoreError> {
        let rules = self.rules.as_ref();
        let today = rules.local_date(now);
        let db = self.db_view(store, today, now).await?;
        let local = |at: DateTime<Utc>| {
            at.with_timezone(&rules.timezone)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        };

        let accounts = AccountState::ALL
            .into_iter()
            .map(|state| StateCount {
                state: state.name(),
                count: db
                    .accounts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n),
            })
            .collect();

        let next_sweep = match &self.schedule {
            Some((schedule, cron)) => NextSweep {
                scheduler: true,
                cron: Some(cron.clone()),
                at: crate::scheduler::next_after(schedule, rules.timezone, now).map(local),
            },
            None => NextSweep {
                scheduler: false,
                cron: None,
                at: None,
            },
        };

        let recent_sweeps = db
            .sweeps
            .iter()
            .map(|run| SweepRunView {
                id: run.id,
                as_of: local(run.as_of),
                started_at: local(run.started_at),
                finished_at: run.finished_at.map(local),
                status: run.status.as_str(),
                counts: SweepCounts::from(&run.counts),
                error: run.error.clone(),
            })
            .collect();

        let window = recycle_window(today);
        let overdue = db
            .recycles
            .iter()
            .filter(|(day, _)| *day < today)
            .map(|(_, n)| n)
            .sum();
        let days = window
            .iter()
            .map(|day| DayCount {
                date: day.to_string(),
                count: db
                    .recycles
                    .iter()
                    .find(|(d, _)| d == day)
                    .map_or(0, |(_, n)| *n),
            })
            .collect();
        let upcoming_recycles = UpcomingRecycles {
            from: today.to_string(),
            through: window.last().copied().unwrap_or(today).to_string(),
            overdue,
            days,
        };

        let dead_letters = DeadLettersView {
            count: db.dead_letters.count,
            latest: db
                .dead_letters
                .latest
                .iter()
                .map(|letter| DeadLetterView {
                    sequence: letter.event.sequence,
                    event_id: letter.event.event_id.clone(),
                    event_type: letter.event.event_type.name(),
                    msisdn: mask_msisdn(letter.event.msisdn.as_str()),
                    attempts: letter.attempts,
                    dead_at: local(letter.dead_at),
                    last_error: letter.last_error.chars().take(ERROR_CHARS).collect(),
                })
                .collect(),
        };

        Ok(DashboardView {
            generated_at: local(now),
            read_at: local(db.read_at),
            timezone: rules.timezone.name().to_owned(),
            today: today.to_string(),
            accounts,
            recharges_today: RechargesToday {
                since: local(rules.start_of_day(today)),
                count: db.recharges_today.count,
                amount: db.recharges_today.amount,
            },
            next_sweep,
            recent_sweeps,
            upcoming_recycles,
            dead_letters,
        })
    }

    /// The database's part, read at most once per [`DB_CACHE_TTL`] and local day; concurrent
    /// requests wait for one read.
    async fn db_view(
        &self,
        store: &dyn AccountStore,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<DbView, StoreError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, day, view)) = cache.as_ref()
            && *day == today
            && at.elapsed() < DB_CACHE_TTL
        {
            return Ok(view.clone());
        }
        let rules = self.rules.as_ref();
        let through = recycle_window(today).last().copied().unwrap_or(today);
        let view = DbView {
            read_at: now,
            accounts: store.accounts_by_state().await?,
            recharges_today: store
                .recharge_totals(rules.start_of_day(today), rules.end_of_day(today))
                .await?,
            sweeps: store.recent_sweep_runs(RECENT_SWEEPS).await?,
            recycles: store.recycles_by_day(through).await?,
            dead_letters: store.dead_letter_overview(LATEST_DEAD_LETTERS).await?,
        };
        *cache = Some((Instant::now(), today, view.clone()));
        Ok(view)
    }
}

/// The days of the upcoming-recycles chart: today and the following days.
fn recycle_window(today: NaiveDate) -> Vec<NaiveDate> {
    today
        .iter_days()
        .take(RECYCLE_WINDOW_DAYS as usize)
        .collect()
}

/// All but the last four digits replaced by `*`.
fn mask_msisdn(msisdn: &str) -> String {
    let digits = msisdn.chars().count();
    msisdn
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < digits { '*' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_msisdn_keeps_only_its_last_four_digits() {
        assert_eq!(mask_msisdn("8613800138000"), "*********8000");
        assert_eq!(mask_msisdn("1234"), "1234");
    }

    #[test]
    fn the_recycle_window_is_thirty_days_from_today() {
        let today: NaiveDate = "2030-12-20".parse().unwrap();
        let window = recycle_window(today);
        assert_eq!(window.len(), 30);
        assert_eq!(window[0], today);
        assert_eq!(window[29].to_string(), "2031-01-18");
    }
}
