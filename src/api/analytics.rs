//! The `LifecycleAnalytics` gRPC service (issue 18): validates a report request, reads the facts
//! through `crate::store::AnalyticsStore` and answers with what `crate::analytics` counts from
//! them. Every figure is defined in docs/analytics.md. Nothing here writes.

use chrono::{DateTime, Days, NaiveDate, Utc};
use tonic::{Request, Response, Status};

use super::Context;
use super::convert::{self, invalid};
use super::requests::required_enum;
use crate::analytics::{
    self, CohortValue, Granularity, LockHistory, Period, PeriodFlows, StageCounts,
};
use crate::lifecycle::{AccountState, ErrorReason};
use crate::proto;
use crate::proto::lifecycle_analytics_server::LifecycleAnalytics;
use crate::store::{ChurnQuery, CohortDay, reports};

/// Days of a per-day composition, periods of a flows report, at most.
pub const MAX_PERIODS: usize = 1000;
/// Months of a cohorts report, at most.
pub const MAX_MONTHS: usize = 120;
/// Churn: how far ahead a stage may end (a validity never reaches past today + 540).
pub const MAX_WITHIN_DAYS: u32 = 540;
pub const MAX_NO_RECHARGE_DAYS: u32 = 3650;
/// Churn warnings per page when the request says 0.
const DEFAULT_PAGE_SIZE: u32 = 100;

pub struct AnalyticsApi {
    ctx: Context,
}

impl AnalyticsApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    fn now(&self) -> (DateTime<Utc>, NaiveDate) {
        let now = self.ctx.clock.now();
        (now, self.ctx.rules.local_date(now))
    }

    fn timezone(&self) -> String {
        self.ctx.rules.timezone.name().to_owned()
    }
}

/// An instant after every history row: the bound of the last bucket of "every later row".
fn bad(message: impl Into<String>) -> Status {
    invalid(ErrorReason::InvalidArgument, message)
}

/// A required `YYYY-MM-DD` field.
fn date_field(field: &str, text: &str) -> Result<NaiveDate, Status> {
    analytics::parse_date(text)
        .ok_or_else(|| bad(format!("{field} {text:?} is not a date (YYYY-MM-DD)")))
}

/// `from ≤ to`, both required.
fn date_range(from: &str, to: &str) -> Result<(NaiveDate, NaiveDate), Status> {
    let (from, to) = (date_field("from_date", from)?, date_field("to_date", to)?);
    if from > to {
        return Err(bad(format!("from_date {from} is after to_date {to}")));
    }
    Ok((from, to))
}

fn stage_counts(counts: &StageCounts) -> proto::StageCounts {
    proto::StageCounts {
        unactivated: counts.get(AccountState::Unactivated),
        valid: counts.get(AccountState::Valid),
        grace: counts.get(AccountState::Grace),
        locked: counts.get(AccountState::Locked),
        recycled: counts.get(AccountState::Recycled),
    }
}

fn period_flows(period: &Period, flows: PeriodFlows) -> proto::PeriodFlows {
    proto::PeriodFlows {
        first_day: period.first.to_string(),
        last_day: period.last.to_string(),
        activations: flows.activations,
        valid_to_grace: flows.valid_to_grace,
        win_backs: flows.win_backs,
        grace_to_locked: flows.grace_to_locked,
        unlocks_to_valid: flows.unlocks_to_valid,
        unlocks_to_grace: flows.unlocks_to_grace,
        recycled_lock_expired: flows.recycled_lock_expired,
        recycled_unactivated_expired: flows.recycled_unactivated_expired,
        reprovisioned: flows.reprovisioned,
        win_back_rate: flows.win_back_rate(),
        entered_grace: flows.entered_grace,
        won_back: flows.won_back,
        still_in_grace: flows.still_in_grace,
        recharges: flows
            .recharges
            .into_iter()
            .map(|(channel, (count, amount))| proto::ChannelRecharges {
                channel,
                count,
                amount,
            })
            .collect(),
    }
}

/// A churn page token: the last entry's recharge value and MSISDN.
fn churn_token(value: i64, msisdn: &str) -> String {
    format!("{value}:{msisdn}")
}

fn parse_churn_token(token: &str) -> Result<Option<(i64, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .split_once(':')
        .and_then(|(value, msisdn)| {
            let value = value.parse::<i64>().ok()?;
            let msisdn = crate::lifecycle::Msisdn::parse(msisdn).ok()?;
            Some((value, msisdn.as_str().to_owned()))
        })
        .map(Some)
        .ok_or_else(|| bad("page_token is not valid"))
}

#[tonic::async_trait]
impl LifecycleAnalytics for AnalyticsApi {
    async fn stage_composition(
        &self,
        request: Request<proto::StageCompositionRequest>,
    ) -> Result<Response<proto::StageCompositionResponse>, Status> {
        let r = request.get_ref();
        let (now, today) = self.now();
        let range = match (r.from_date.as_str(), r.to_date.as_str()) {
            ("", "") => None,
            (from, to) => {
                let (from, to) = date_range(from, to)?;
                if to > today {
                    return Err(bad(format!("to_date {to} is after today ({today})")));
                }
                if (to - from).num_days() >= MAX_PERIODS as i64 {
                    return Err(bad(format!(
                        "from_date..to_date spans more than {MAX_PERIODS} days"
                    )));
                }
                Some((from, to))
            }
        };
        self.ctx.check_ready()?;
        let dates: Vec<NaiveDate> = match range {
            Some((from, to)) => from.iter_days().take_while(|d| *d <= to).collect(),
            None => Vec::new(),
        };
        let composition =
            reports::composition(&*self.ctx.store, &self.ctx.rules, today, &dates).await?;
        let days = dates
            .iter()
            .zip(&composition.days)
            .map(|(date, counts)| proto::DayComposition {
                date: date.to_string(),
                counts: Some(stage_counts(counts)),
            })
            .collect();
        Ok(Response::new(proto::StageCompositionResponse {
            as_of: Some(convert::timestamp(now)),
            today: today.to_string(),
            timezone: self.timezone(),
            now: Some(stage_counts(&composition.now)),
            days,
        }))
    }

    async fn flows(
        &self,
        request: Request<proto::FlowsRequest>,
    ) -> Result<Response<proto::FlowsResponse>, Status> {
        let r = request.get_ref();
        let granularity = required_enum(r.granularity, "granularity", |g| match g {
            1 => Some(Granularity::Day),
            2 => Some(Granularity::Week),
            3 => Some(Granularity::Month),
            _ => None,
        })?;
        let (from, to) = date_range(&r.from_date, &r.to_date)?;
        let periods = analytics::periods(from, to, granularity, MAX_PERIODS).ok_or_else(|| {
            bad(format!(
                "from_date..to_date covers more than {MAX_PERIODS} periods"
            ))
        })?;
        self.ctx.check_ready()?;
        if periods.is_empty() {
            return Err(bad("from_date..to_date covers no period"));
        }
        let flows = reports::flows(&*self.ctx.store, &self.ctx.rules, &periods).await?;
        Ok(Response::new(proto::FlowsResponse {
            timezone: self.timezone(),
            periods: periods
                .iter()
                .zip(flows)
                .map(|(period, flows)| period_flows(period, flows))
                .collect(),
        }))
    }

    async fn churn_warnings(
        &self,
        request: Request<proto::ChurnWarningsRequest>,
    ) -> Result<Response<proto::ChurnWarningsResponse>, Status> {
        let r = request.get_ref();
        let stage = required_enum(r.stage, "stage", AccountState::from_i32)?;
        if !matches!(stage, AccountState::Valid | AccountState::Grace) {
            return Err(bad(format!(
                "stage must be ACCOUNT_STATE_VALID or ACCOUNT_STATE_GRACE, got {stage}"
            )));
        }
        if r.within_days > MAX_WITHIN_DAYS {
            return Err(bad(format!(
                "within_days must be between 0 and {MAX_WITHIN_DAYS}, got {}",
                r.within_days
            )));
        }
        if r.no_recharge_days > MAX_NO_RECHARGE_DAYS {
            return Err(bad(format!(
                "no_recharge_days must be between 0 and {MAX_NO_RECHARGE_DAYS}, got {}",
                r.no_recharge_days
            )));
        }
        let page_size = convert::page_size(r.page_size, DEFAULT_PAGE_SIZE)?;
        let after = parse_churn_token(&r.page_token)?;
        self.ctx.check_ready()?;
        let (_, today) = self.now();
        let rules = &self.ctx.rules;
        let query = ChurnQuery {
            stage,
            today,
            ends_by: today + Days::new(u64::from(r.within_days)),
            no_recharge_since: (r.no_recharge_days > 0)
                .then(|| rules.start_of_day(today - Days::new(u64::from(r.no_recharge_days)))),
            after,
            limit: page_size + 1,
        };
        let mut found = self.ctx.store.churn_candidates(&query).await?;
        let next_page_token = convert::next_page_token(&mut found, page_size, |c| {
            churn_token(c.recharge_total, c.account.msisdn.as_str())
        });
        let warnings = found
            .into_iter()
            .map(|c| {
                let account = c.account;
                let ends = match stage {
                    AccountState::Grace => account.grace_until,
                    _ => account.valid_until,
                };
                let msisdn = account.msisdn.as_str();
                proto::ChurnWarning {
                    msisdn: if r.mask_msisdn {
                        analytics::mask_msisdn(msisdn)
                    } else {
                        msisdn.to_owned()
                    },
                    account_id: account.account_id.clone(),
                    state: stage as i32,
                    stage_ends: convert::date(ends),
                    days_left: ends.map_or(0, |d| (d - today).num_days()),
                    recharge_total: c.recharge_total,
                    recharge_count: c.recharge_count,
                    balance: account.balance,
                }
            })
            .collect();
        Ok(Response::new(proto::ChurnWarningsResponse {
            today: today.to_string(),
            warnings,
            next_page_token,
        }))
    }

    async fn cohorts(
        &self,
        request: Request<proto::CohortsRequest>,
    ) -> Result<Response<proto::CohortsResponse>, Status> {
        let r = request.get_ref();
        let month = |field: &str, text: &str| {
            analytics::parse_month(text)
                .ok_or_else(|| bad(format!("{field} {text:?} is not a month (YYYY-MM)")))
        };
        let (from, to) = (
            month("from_month", &r.from_month)?,
            month("to_month", &r.to_month)?,
        );
        if from > to {
            return Err(bad(format!(
                "from_month {} is after to_month {}",
                r.from_month, r.to_month
            )));
        }
        let months =
            analytics::periods(from, to, Granularity::Month, MAX_MONTHS).ok_or_else(|| {
                bad(format!(
                    "from_month..to_month spans more than {MAX_MONTHS} months"
                ))
            })?;
        self.ctx.check_ready()?;
        let (now, _) = self.now();
        let rules = &self.ctx.rules;
        let (Some(first), Some(last)) = (months.first(), months.last()) else {
            return Err(bad("from_month..to_month covers no month"));
        };
        let (start, until) = (rules.start_of_day(first.first), rules.end_of_day(last.last));
        let store = &self.ctx.store;
        // Activations per local day, values per month, lock histories per generation.
        let days: Vec<NaiveDate> = first
            .first
            .iter_days()
            .take_while(|d| *d <= last.last)
            .collect();
        let mut bounds: Vec<DateTime<Utc>> = days.iter().map(|d| rules.start_of_day(*d)).collect();
        bounds.push(until);
        let mut month_bounds: Vec<DateTime<Utc>> =
            months.iter().map(|m| rules.start_of_day(m.first)).collect();
        month_bounds.push(until);
        // Per activation day, the end of the day each age is reached.
        let cohort_days: Vec<CohortDay> = days
            .iter()
            .map(|day| CohortDay {
                start: rules.start_of_day(*day),
                end: rules.end_of_day(*day),
                ages: analytics::AGES.map(|age| rules.end_of_day(*day + Days::new(u64::from(age)))),
            })
            .collect();
        // Four independent reads, each on its own read connection, at once.
        let (activations, values, outs, locks) = tokio::try_join!(
            store.activations(&bounds),
            store.cohort_values(&month_bounds),
            store.cohort_outs(&cohort_days),
            store.cohort_locks(start, until)
        )?;
        let outs: Vec<(NaiveDate, [i64; 4])> =
            outs.into_iter().map(|(i, n)| (days[i], n)).collect();
        let activations: Vec<(NaiveDate, i64)> =
            activations.into_iter().map(|(i, n)| (days[i], n)).collect();
        let values: Vec<CohortValue> = values
            .into_iter()
            .map(|(i, value)| CohortValue {
                month: months[i].first,
                ..value
            })
            .collect();
        let locks: Vec<LockHistory> = locks
            .into_iter()
            .map(|(activated_at, rows)| LockHistory {
                activated_on: rules.local_date(activated_at),
                rows,
            })
            .collect();
        let firsts: Vec<NaiveDate> = months.iter().map(|m| m.first).collect();
        let cohorts =
            analytics::cohort_figures(&firsts, &activations, &values, (&outs, &locks), now, rules)
                .into_iter()
                .map(|c| proto::Cohort {
                    month: c.month.format("%Y-%m").to_string(),
                    accounts: c.accounts,
                    retention: c
                        .retention
                        .iter()
                        .map(|a| proto::AgeRetention {
                            age_days: a.age_days,
                            reached: a.reached,
                            active: a.active,
                            share: a.share(),
                        })
                        .collect(),
                    recharge_total: c.recharge_total,
                    recharge_count: c.recharge_count,
                    arpu: c.arpu(),
                    recharges_per_account: c.recharges_per_account(),
                    ltv_p50: c.ltv_p50,
                    ltv_p90: c.ltv_p90,
                    ltv_p99: c.ltv_p99,
                })
                .collect();
        Ok(Response::new(proto::CohortsResponse {
            timezone: self.timezone(),
            cohorts,
        }))
    }
}
