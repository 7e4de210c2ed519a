//! The operator's rules: periods, tariff, special numbers and the calendar of the operator's
//! time zone. Every period is configuration; the defaults are those of the spec.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// One tariff tier: a recharge of at least `min_amount` grants `days`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TariffTier {
    pub min_amount: i64,
    pub days: u32,
}

/// Recharge amount → validity days. The highest tier whose minimum ≤ amount applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tariff {
    /// Sorted by `min_amount`, strictly increasing.
    tiers: Vec<TariffTier>,
}

impl Tariff {
    /// Builds a tariff; tiers must have strictly increasing minimums ≥ 1.
    pub fn new(mut tiers: Vec<TariffTier>) -> Result<Self, String> {
        tiers.sort_by_key(|t| t.min_amount);
        if tiers.is_empty() {
            return Err("the tariff needs at least one tier".into());
        }
        if tiers[0].min_amount < 1 {
            return Err("tariff tier minimums must be at least 1".into());
        }
        if tiers.windows(2).any(|w| w[0].min_amount == w[1].min_amount) {
            return Err("two tariff tiers have the same minimum amount".into());
        }
        Ok(Self { tiers })
    }

    /// Days granted by a recharge of `amount`; 0 when the amount is below every tier.
    pub fn days_for(&self, amount: i64) -> u32 {
        self.tiers
            .iter()
            .rev()
            .find(|t| t.min_amount <= amount)
            .map_or(0, |t| t.days)
    }

    pub fn tiers(&self) -> &[TariffTier] {
        &self.tiers
    }
}

impl Default for Tariff {
    fn default() -> Self {
        let tiers = [
            (30000, 540),
            (10000, 365),
            (5000, 180),
            (3000, 90),
            (1000, 30),
            (1, 7),
        ]
        .into_iter()
        .map(|(min_amount, days)| TariffTier { min_amount, days })
        .collect();
        Self::new(tiers).expect("the default tariff is well formed")
    }
}

/// Everything the lifecycle rules depend on besides the account and the clock.
#[derive(Clone, Debug)]
pub struct Rules {
    pub timezone: Tz,
    /// Validity granted by activation when the card does not carry its own (spec: 180).
    pub initial_validity_days: u32,
    /// Length of GRACE, the recharge period (90).
    pub grace_days: u32,
    /// Length of LOCKED (30).
    pub lock_days: u32,
    /// The validity after a recharge never reaches past today + this (540).
    pub max_validity_days: u32,
    /// An UNACTIVATED card is recycled after provisioned date + this (540).
    pub card_life_days: u32,
    /// GRACE granted by an unlock without a recharge (90).
    pub unlock_grace_days: u32,
    /// VALIDITY_EXPIRING is due from 00:00 local of `valid_until − expiring_days` (7).
    pub expiring_days: u32,
    /// Emergency numbers and customer service (110, 112, 119, 120, 122, 10010).
    pub special_numbers: Vec<String>,
    /// The recharge hotline (10011).
    pub recharge_hotline: String,
    pub tariff: Tariff,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            timezone: chrono_tz::Asia::Shanghai,
            initial_validity_days: 180,
            grace_days: 90,
            lock_days: 30,
            max_validity_days: 540,
            card_life_days: 540,
            unlock_grace_days: 90,
            expiring_days: 7,
            special_numbers: ["110", "112", "119", "120", "122", "10010"]
                .map(String::from)
                .to_vec(),
            recharge_hotline: "10011".into(),
            tariff: Tariff::default(),
        }
    }
}

impl Rules {
    /// Checks the invariants the rules rely on; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("initial_validity_days", self.initial_validity_days),
            ("grace_days", self.grace_days),
            ("lock_days", self.lock_days),
            ("max_validity_days", self.max_validity_days),
            ("card_life_days", self.card_life_days),
            ("unlock_grace_days", self.unlock_grace_days),
        ];
        for (key, value) in positive {
            if value == 0 || value > 36_500 {
                return Err(format!(
                    "{key} must be between 1 and 36500 days, got {value}"
                ));
            }
        }
        if self.expiring_days > 36_500 {
            return Err(format!(
                "expiring_days must be between 0 and 36500 days, got {}",
                self.expiring_days
            ));
        }
        if self.initial_validity_days > self.max_validity_days {
            return Err(format!(
                "initial_validity_days ({}) must not exceed max_validity_days ({})",
                self.initial_validity_days, self.max_validity_days
            ));
        }
        Ok(())
    }

    /// The operator's local calendar date at `now`.
    pub fn local_date(&self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.timezone).date_naive()
    }

    /// The first instant of local day `date` (00:00 local, or the first instant after a DST gap).
    pub fn start_of_day(&self, date: NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_time(NaiveTime::MIN);
        // Some zones skip local midnight on DST days; the day then starts when the gap ends.
        for minutes in (0..=180).step_by(15) {
            let local = midnight + chrono::Duration::minutes(minutes);
            if let Some(first) = self.timezone.from_local_datetime(&local).earliest() {
                return first.with_timezone(&Utc);
            }
        }
        // No zone has a gap longer than three hours; fall back to UTC midnight.
        Utc.from_utc_datetime(&midnight)
    }

    /// The first instant of the day after `date`: where "through the end of `date`" stops.
    pub fn end_of_day(&self, date: NaiveDate) -> DateTime<Utc> {
        self.start_of_day(add_days(date, 1))
    }
}

/// `date + days`, saturating at the end of chrono's calendar.
pub(crate) fn add_days(date: NaiveDate, days: u32) -> NaiveDate {
    date.checked_add_days(Days::new(u64::from(days)))
        .unwrap_or(NaiveDate::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::tests::TARIFF_EDGES;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// The default rules in another zone.
    fn in_zone(timezone: Tz) -> Rules {
        Rules {
            timezone,
            ..Rules::default()
        }
    }

    #[test]
    fn default_tariff_matches_spec_section_4() {
        let t = Tariff::default();
        for (amount, days) in TARIFF_EDGES.into_iter().chain([(i64::MAX, 540)]) {
            assert_eq!(t.days_for(amount), days, "amount {amount}");
        }
        assert_eq!(t.days_for(0), 0);
    }

    #[test]
    fn tariff_rejects_duplicate_or_non_positive_minimums() {
        let tier = |min_amount, days| TariffTier { min_amount, days };
        assert!(Tariff::new(vec![]).is_err());
        assert!(Tariff::new(vec![tier(0, 7)]).is_err());
        assert!(Tariff::new(vec![tier(10, 7), tier(10, 30)]).is_err());
        let unsorted = Tariff::new(vec![tier(100, 30), tier(1, 7)]).unwrap();
        assert_eq!(unsorted.days_for(50), 7);
        assert_eq!(unsorted.days_for(100), 30);
    }

    #[test]
    fn local_midnight_in_shanghai_is_16_utc_the_day_before() {
        let rules = Rules::default();
        let start = rules.start_of_day(date("2026-03-01"));
        assert_eq!(start.to_rfc3339(), "2026-02-28T16:00:00+00:00");
        assert_eq!(rules.local_date(start), date("2026-03-01"));
        assert_eq!(
            rules.local_date(start - chrono::Duration::seconds(1)),
            date("2026-02-28")
        );
        assert_eq!(
            rules.end_of_day(date("2026-12-31")).to_rfc3339(),
            "2026-12-31T16:00:00+00:00"
        );
    }

    #[test]
    fn new_york_days_are_exact_across_dst() {
        let rules = in_zone(chrono_tz::America::New_York);
        // 2026-03-08: clocks jump 02:00 → 03:00; the day is 23 hours long.
        let start = rules.start_of_day(date("2026-03-08"));
        let next = rules.start_of_day(date("2026-03-09"));
        assert_eq!(start.to_rfc3339(), "2026-03-08T05:00:00+00:00");
        assert_eq!((next - start).num_hours(), 23);
        // 2026-11-01: clocks fall back; the day is 25 hours long.
        let start = rules.start_of_day(date("2026-11-01"));
        let next = rules.start_of_day(date("2026-11-02"));
        assert_eq!((next - start).num_hours(), 25);
    }

    #[test]
    fn a_zone_that_skips_midnight_starts_the_day_after_the_gap() {
        // America/Santiago skips 00:00 → 01:00 when DST starts (2026-09-06).
        let rules = in_zone(chrono_tz::America::Santiago);
        let start = rules.start_of_day(date("2026-09-06"));
        assert_eq!(rules.local_date(start), date("2026-09-06"));
        assert_eq!(
            rules.local_date(start - chrono::Duration::seconds(1)),
            date("2026-09-05")
        );
    }

    #[test]
    fn default_rules_are_valid_and_zero_periods_are_not() {
        assert!(Rules::default().validate().is_ok());
        let bad = Rules {
            grace_days: 0,
            ..Rules::default()
        };
        assert!(bad.validate().unwrap_err().contains("grace_days"));
    }
}
