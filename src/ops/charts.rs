//! The dashboard's lifecycle charts (issue 18): the accounts per state at the end of each of
//! the last [`COMPOSITION_DAYS`] local days, and the flows of the last [`FLOW_WEEKS`] ISO weeks
//! with their win-back rates. The figures are the LifecycleAnalytics reports' own for those
//! ranges (StageComposition per day, Flows per week; docs/analytics.md defines them): read by
//! the same `crate::store::AnalyticsStore` queries and counted by the same `crate::analytics`
//! functions, never by a copy of their rules. "Today" is the service clock's local date.
//!
//! The reads (the history's moves before the window summed in one GROUP BY, then the rows of
//! the twelve weeks, which also cover the thirty days) run on the read pool and are cached for
//! [`CHART_CACHE_TTL`] and local day, shared by every viewer: the history is heavier than the
//! rest of the dashboard and a chart of days and weeks does not need it fresher. A failed read
//! is kept for [`DB_CACHE_TTL`] only and leaves the rest of the dashboard standing.
//! [`super::chart_svg`] draws them.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::metrics::DB_CACHE_TTL;
use crate::analytics::{self, Granularity, Period, PeriodFlows, StageCounts};
use crate::lifecycle::{AccountState, Rules};
use crate::store::{AccountStore, StoreError, reports};

/// Days of the stage composition chart, today included.
pub const COMPOSITION_DAYS: u64 = 30;
/// ISO weeks of the flows chart, the current one included.
pub const FLOW_WEEKS: usize = 12;
/// How long one read of the history serves the charts.
pub const CHART_CACHE_TTL: Duration = Duration::from_secs(60);

/// The charts' figures (the JSON's `charts`).
#[derive(Clone, Debug, Serialize)]
pub struct Charts {
    /// When the history was read (service clock, operator zone; up to [`CHART_CACHE_TTL`]
    /// before the page).
    pub read_at: String,
    /// The accounts per state at the end of each day, the oldest first; the last is today so
    /// far.
    pub composition: Vec<DayComposition>,
    /// The flows of each ISO week, the oldest first; the last is the current week so far.
    pub weekly_flows: Vec<WeekFlows>,
}

/// The accounts per state at the end of one local day (StageComposition's `days`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DayComposition {
    pub date: String,
    pub unactivated: i64,
    pub valid: i64,
    pub grace: i64,
    pub locked: i64,
    pub recycled: i64,
}

impl DayComposition {
    fn new(date: NaiveDate, counts: &StageCounts) -> Self {
        Self {
            date: date.to_string(),
            unactivated: counts.get(AccountState::Unactivated),
            valid: counts.get(AccountState::Valid),
            grace: counts.get(AccountState::Grace),
            locked: counts.get(AccountState::Locked),
            recycled: counts.get(AccountState::Recycled),
        }
    }

    /// Every state's count, in lifecycle order.
    pub fn counts(&self) -> [(AccountState, i64); 5] {
        [
            (AccountState::Unactivated, self.unactivated),
            (AccountState::Valid, self.valid),
            (AccountState::Grace, self.grace),
            (AccountState::Locked, self.locked),
            (AccountState::Recycled, self.recycled),
        ]
    }

    pub fn total(&self) -> i64 {
        self.counts().iter().map(|(_, n)| n).sum()
    }
}

/// The flows of one ISO week (Flows' `periods`, the figures the chart shows).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeekFlows {
    /// Its Monday and Sunday.
    pub first_day: String,
    pub last_day: String,
    pub activations: i64,
    pub valid_to_grace: i64,
    /// GRACE → VALID by a recharge.
    pub win_backs: i64,
    pub grace_to_locked: i64,
    /// Both reasons: `recycled_lock_expired + recycled_unactivated_expired`.
    pub recycles: i64,
    pub recycled_lock_expired: i64,
    pub recycled_unactivated_expired: i64,
    /// The week's win-back cohort: the stays in GRACE that began in it, those won back, those
    /// not ended yet, and `won_back ÷ entered_grace` (0 when none began).
    pub entered_grace: i64,
    pub won_back: i64,
    pub still_in_grace: i64,
    pub win_back_rate: f64,
}

impl WeekFlows {
    fn new(week: &Period, flows: &PeriodFlows) -> Self {
        Self {
            first_day: week.first.to_string(),
            last_day: week.last.to_string(),
            activations: flows.activations,
            valid_to_grace: flows.valid_to_grace,
            win_backs: flows.win_backs,
            grace_to_locked: flows.grace_to_locked,
            recycles: flows.recycled_lock_expired + flows.recycled_unactivated_expired,
            recycled_lock_expired: flows.recycled_lock_expired,
            recycled_unactivated_expired: flows.recycled_unactivated_expired,
            entered_grace: flows.entered_grace,
            won_back: flows.won_back,
            still_in_grace: flows.still_in_grace,
            win_back_rate: flows.win_back_rate(),
        }
    }

    /// The five flows the chart draws, with their names, in the chart's order.
    pub fn series(&self) -> [(&'static str, i64); 5] {
        [
            ("activations", self.activations),
            ("VALID → GRACE", self.valid_to_grace),
            ("win-backs", self.win_backs),
            ("GRACE → LOCKED", self.grace_to_locked),
            ("recycles", self.recycles),
        ]
    }
}

/// One read of the charts: when, for which local day, and what it gave.
type ChartRead = (Instant, NaiveDate, Result<Charts, String>);

/// The last read of the charts.
#[derive(Debug, Default)]
pub struct ChartCache(Mutex<Option<ChartRead>>);

impl ChartCache {
    /// The charts for local date `today` at `now`, read at most once per [`CHART_CACHE_TTL`]
    /// and local day (a failure: per [`DB_CACHE_TTL`]); concurrent requests wait for one read.
    pub async fn get(
        &self,
        store: &dyn AccountStore,
        rules: &Rules,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Charts, String> {
        let mut cache = self.0.lock().await;
        if let Some((at, day, charts)) = cache.as_ref() {
            let ttl = if charts.is_ok() {
                CHART_CACHE_TTL
            } else {
                DB_CACHE_TTL
            };
            if *day == today && at.elapsed() < ttl {
                return charts.clone();
            }
        }
        let charts = read(store, rules, today, now).await.map_err(|e| {
            tracing::warn!(error = %e, "dashboard: cannot read the history for the charts");
            format!("cannot read the history: {e}")
        });
        *cache = Some((Instant::now(), today, charts.clone()));
        charts
    }
}

/// The last [`COMPOSITION_DAYS`] days through `today`, and the [`FLOW_WEEKS`] ISO weeks
/// through `today`'s.
fn windows(today: NaiveDate) -> (Vec<NaiveDate>, Vec<Period>) {
    let back = |days: u64| today.checked_sub_days(Days::new(days)).unwrap_or(today);
    let days = back(COMPOSITION_DAYS - 1)
        .iter_days()
        .take_while(|day| *day <= today)
        .collect();
    let weeks = analytics::periods(
        back(7 * (FLOW_WEEKS as u64 - 1)),
        today,
        Granularity::Week,
        FLOW_WEEKS,
    )
    .unwrap_or_default();
    (days, weeks)
}

/// The charts from the store, as the StageComposition and Flows reports count them.
async fn read(
    store: &dyn AccountStore,
    rules: &Rules,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Charts, StoreError> {
    let (days, weeks) = windows(today);
    let (composition, flows) = tokio::try_join!(
        reports::composition(store, rules, today, &days),
        reports::flows(store, rules, &weeks)
    )?;
    let composition = composition.days;

    Ok(Charts {
        read_at: now
            .with_timezone(&rules.timezone)
            .to_rfc3339_opts(SecondsFormat::Secs, false),
        composition: days
            .iter()
            .zip(&composition)
            .map(|(day, counts)| DayComposition::new(*day, counts))
            .collect(),
        weekly_flows: weeks
            .iter()
            .zip(&flows)
            .map(|(week, flows)| WeekFlows::new(week, flows))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_windows_are_thirty_days_and_twelve_iso_weeks_through_today() {
        // A Saturday: its week runs Monday 06-10 to Sunday 06-16.
        let today: NaiveDate = "2030-06-15".parse().unwrap();
        let (days, weeks) = windows(today);
        assert_eq!(days.len(), 30);
        assert_eq!(days[0].to_string(), "2030-05-17");
        assert_eq!(days[29], today);
        assert_eq!(weeks.len(), 12);
        assert_eq!(weeks[0].first.to_string(), "2030-03-25");
        assert_eq!(weeks[11].first.to_string(), "2030-06-10");
        assert_eq!(weeks[11].last.to_string(), "2030-06-16");
        // A Monday starts its own week.
        let (_, weeks) = windows("2030-06-10".parse().unwrap());
        assert_eq!(weeks.len(), 12);
        assert_eq!(weeks[0].first.to_string(), "2030-03-25");
        assert_eq!(weeks[11].first.to_string(), "2030-06-10");
    }
}
