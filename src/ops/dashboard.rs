//! The read-only operations dashboard: `GET /` (a self-contained HTML page, no external
//! resources, rendered on the server with its data: [`super::page`]), `GET /api/dashboard/html`
//! (the same data part alone, which the page's script fetches to refresh it and to send a
//! bearer token), and `GET /api/dashboard` (the data as JSON, for programs).
//!
//! Everything it shows is read from the store (cached for [`DB_CACHE_TTL`], like the metrics,
//! so an open dashboard cannot load the database), computed from the configuration and the
//! service clock, or told by the server (readiness, the last sweep's duration). Dates are local
//! dates of the operator's time zone and instants are written in that zone (RFC 3339 with its
//! offset), whatever the browser's zone. It never writes.
//!
//! Accounts by effective state (now) are the stored counts moved along by what a sweep as of
//! now would do (a forecast: it reads only the accounts due since the last sweep), and the
//! next sweep's work (VALIDITY_EXPIRING notices included) is a forecast as of its time.
//!
//! The lifecycle charts (the accounts per state over the last 30 days, the flows of the last 12
//! weeks) are [`super::charts`]', with a cache of their own.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::charts::{ChartCache, Charts};
use super::metrics::DB_CACHE_TTL;
use crate::lifecycle::{AccountState, EventType, Rules};
use crate::store::{AccountStore, DeadLetterOverview, RechargeTotals, StoreError, SweepRun};
use crate::sweep::SweepCounts;

/// The page without its data (what `GET /` answers when the data needs a token it was not
/// sent); its script fetches `api/dashboard/html` and puts it in.
pub const PAGE: &str = include_str!("dashboard.html");

/// Accounts per query of the forecasts.
const FORECAST_BATCH: u32 = 1000;

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
    /// The event types the webhook delivers; `None`: no webhook.
    webhook: Option<Vec<EventType>>,
    /// The service runs on the manual clock (`--clock manual`).
    manual_clock: bool,
    /// The last database read and the local day it was made for.
    cache: Mutex<Option<(Instant, NaiveDate, DbView)>>,
    /// The lifecycle charts' last read.
    charts: ChartCache,
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
    /// What a sweep as of `read_at` would do: the stored states' way to the effective ones.
    due_now: SweepCounts,
    /// What the next scheduled sweep would do, as of its time.
    next_sweep: Option<SweepCounts>,
    /// The oldest undelivered event's `emitted_at` and how many there are (webhook on).
    webhook: Option<(Option<DateTime<Utc>>, i64)>,
}

/// What the server tells the dashboard about itself.
#[derive(Clone, Debug, Default)]
pub struct ServiceStatus {
    /// `None`: ready; else why not (as `/readyz` says).
    pub not_ready: Option<String>,
    /// How long the last sweep run of this process took (real time); `None`: none yet.
    pub last_sweep: Option<std::time::Duration>,
}

/// The JSON of `GET /api/dashboard`.
#[derive(Debug, Serialize)]
pub struct DashboardView {
    /// The running build.
    pub version: &'static str,
    /// The service clock's time of this answer.
    pub generated_at: String,
    /// `system`, or `manual` (`--clock manual`: the time moves only when told).
    pub clock: &'static str,
    /// What `/readyz` says.
    pub readiness: Readiness,
    /// When the database was read (up to the cache's few seconds earlier).
    pub read_at: String,
    pub timezone: String,
    /// The operator's local date at `generated_at`.
    pub today: String,
    /// Accounts per stored state, every state, in lifecycle order.
    pub accounts: Vec<StateCount>,
    /// Accounts per effective state at `generated_at` (the stored ones, advanced past the
    /// boundaries no sweep has materialised yet), in lifecycle order.
    pub accounts_now: Vec<StateCount>,
    pub recharges_today: RechargesToday,
    pub next_sweep: NextSweep,
    /// How long the last sweep run of this process took, in seconds (real time); `None`: none
    /// since start.
    pub last_sweep_seconds: Option<f64>,
    /// The latest first.
    pub recent_sweeps: Vec<SweepRunView>,
    pub upcoming_recycles: UpcomingRecycles,
    /// `None`: no webhook configured.
    pub webhook: Option<WebhookView>,
    pub dead_letters: DeadLettersView,
    /// The lifecycle charts; `None` when the history could not be read (`charts_error`).
    pub charts: Option<Charts>,
    pub charts_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// A count by name (`SweepCounts::named`).
#[derive(Debug, Serialize)]
pub struct NamedCount {
    pub name: &'static str,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct WebhookView {
    /// Age (service clock) of the oldest event neither delivered nor dead-lettered; 0: none.
    pub lag_seconds: f64,
    /// Events neither delivered nor dead-lettered.
    pub backlog: i64,
    /// `emitted_at` of the oldest of them.
    pub oldest_undelivered: Option<String>,
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
    /// What it would do as of `at` (forecast): the transitions by name, then
    /// `expiring_notified`, the VALIDITY_EXPIRING notices it would send.
    pub forecast: Option<Vec<NamedCount>>,
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
            webhook: None,
            manual_clock: false,
            cache: Mutex::new(None),
            charts: ChartCache::default(),
        }
    }

    /// Shows the webhook's lag and backlog over `types` (the webhook is on).
    pub fn with_webhook(mut self, types: Vec<EventType>) -> Self {
        self.webhook = Some(types);
        self
    }

    /// Says the service runs on the manual clock, and its time.
    pub fn with_manual_clock(mut self, manual: bool) -> Self {
        self.manual_clock = manual;
        self
    }

    /// The next scheduled sweep after `now`, when the scheduler runs.
    fn next_sweep_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (schedule, _) = self.schedule.as_ref()?;
        crate::scheduler::next_after(schedule, self.rules.timezone, now)
    }

    /// The dashboard at `now` (the service clock).
    pub async fn view(
        &self,
        store: &dyn AccountStore,
        now: DateTime<Utc>,
        status: ServiceStatus,
    ) -> Result<DashboardView, StoreError> {
        let rules = self.rules.as_ref();
        let today = rules.local_date(now);
        let db = self.db_view(store, today, now).await?;
        let (charts, charts_error) = match self.charts.get(store, rules, today, now).await {
            Ok(charts) => (Some(charts), None),
            Err(error) => (None, Some(error)),
        };
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

        let accounts_now = effective_counts(&db.accounts, &db.due_now)
            .into_iter()
            .map(|(state, count)| StateCount {
                state: state.name(),
                count,
            })
            .collect();

        let next_sweep = match &self.schedule {
            Some((_, cron)) => NextSweep {
                scheduler: true,
                cron: Some(cron.clone()),
                at: self.next_sweep_at(now).map(local),
                forecast: db.next_sweep.as_ref().map(|counts| {
                    counts
                        .named()
                        .map(|(name, count)| NamedCount { name, count })
                        .collect()
                }),
            },
            None => NextSweep {
                scheduler: false,
                cron: None,
                at: None,
                forecast: None,
            },
        };

        let webhook = db.webhook.map(|(oldest, backlog)| WebhookView {
            lag_seconds: oldest.map_or(0.0, |at| {
                (now - at).num_milliseconds().max(0) as f64 / 1000.0
            }),
            backlog,
            oldest_undelivered: oldest.map(local),
        });

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
            version: env!("CARGO_PKG_VERSION"),
            generated_at: local(now),
            clock: if self.manual_clock {
                "manual"
            } else {
                "system"
            },
            readiness: Readiness {
                ready: status.not_ready.is_none(),
                reason: status.not_ready,
            },
            read_at: local(db.read_at),
            timezone: rules.timezone.name().to_owned(),
            today: today.to_string(),
            accounts,
            accounts_now,
            recharges_today: RechargesToday {
                since: local(rules.start_of_day(today)),
                count: db.recharges_today.count,
                amount: db.recharges_today.amount,
            },
            next_sweep,
            last_sweep_seconds: status.last_sweep.map(|d| d.as_secs_f64()),
            recent_sweeps,
            upcoming_recycles,
            webhook,
            dead_letters,
            charts,
            charts_error,
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
            due_now: forecast(store, now, now).await?,
            next_sweep: match self.next_sweep_at(now) {
                Some(at) => Some(forecast(store, at, now).await?),
                None => None,
            },
            webhook: match &self.webhook {
                Some(types) => Some((
                    store.oldest_undelivered_event(types).await?,
                    store.undelivered_event_count(types).await?,
                )),
                None => None,
            },
        };
        *cache = Some((Instant::now(), today, view.clone()));
        Ok(view)
    }
}

/// What a sweep as of `as_of` would do (reads only).
async fn forecast(
    store: &dyn AccountStore,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<SweepCounts, StoreError> {
    match crate::sweep::run(store, FORECAST_BATCH, Some(as_of), now, true).await {
        Ok((_, report)) => Ok(report.counts),
        Err(crate::sweep::SweepError::Store(e)) => Err(e),
        // A dry run may look ahead: not refused.
        Err(e) => Err(StoreError::Internal(e.to_string())),
    }
}

/// The count of `name` in `counts` (0 when it names none).
fn count_of(counts: &SweepCounts, name: &str) -> i64 {
    counts
        .named()
        .find(|(named, _)| *named == name)
        .map_or(0, |(_, count)| i64::try_from(count).unwrap_or(i64::MAX))
}

/// Accounts per effective state: the stored counts, each account moved along the boundaries a
/// sweep now would take it across (`due`: an account crossing two boundaries counts in both,
/// so it leaves the first state and passes through the second).
fn effective_counts(stored: &[(AccountState, i64)], due: &SweepCounts) -> Vec<(AccountState, i64)> {
    let stored_in = |state| {
        stored
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    let to_grace = count_of(due, "to_grace");
    let to_locked = count_of(due, "to_locked");
    let from_locked = count_of(due, "to_recycled_from_locked");
    let unactivated = count_of(due, "to_recycled_unactivated");
    AccountState::ALL
        .into_iter()
        .map(|state| {
            let moved = match state {
                AccountState::Unactivated => -unactivated,
                AccountState::Valid => -to_grace,
                AccountState::Grace => to_grace - to_locked,
                AccountState::Locked => to_locked - from_locked,
                AccountState::Recycled => from_locked + unactivated,
            };
            (state, stored_in(state) + moved)
        })
        .collect()
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
    use crate::lifecycle::TransitionReason;

    #[test]
    fn an_msisdn_keeps_only_its_last_four_digits() {
        assert_eq!(mask_msisdn("8613800138000"), "*********8000");
        assert_eq!(mask_msisdn("1234"), "1234");
    }

    #[test]
    fn effective_counts_move_accounts_along_the_boundaries_due() {
        let stored = [
            (AccountState::Unactivated, 4),
            (AccountState::Valid, 10),
            (AccountState::Grace, 3),
            (AccountState::Locked, 2),
        ];
        // Two VALID accounts to GRACE, one of them on to LOCKED; one LOCKED recycled; one
        // card recycled unactivated.
        let due = SweepCounts::from(&crate::store::RunCounts {
            examined: 4,
            transitions: vec![
                (TransitionReason::ValidityExpired, 2),
                (TransitionReason::GraceExpired, 1),
                (TransitionReason::LockExpired, 1),
                (TransitionReason::UnactivatedExpired, 1),
            ],
            expiring_notified: 0,
        });
        let now: Vec<i64> = effective_counts(&stored, &due)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(now, [3, 8, 4, 2, 2]);
        assert_eq!(now.iter().sum::<i64>(), 19, "no account is lost or made");
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
