//! Report periods: days, ISO weeks (Monday to Sunday) and calendar months of local dates.

use chrono::{Datelike, Days, Months, NaiveDate};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    Day,
    Week,
    Month,
}

/// One report period: its first and last local day, both inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    pub first: NaiveDate,
    pub last: NaiveDate,
}

impl Period {
    /// The period of `granularity` that contains `date`.
    pub fn containing(date: NaiveDate, granularity: Granularity) -> Self {
        let first = match granularity {
            Granularity::Day => date,
            Granularity::Week => date - Days::new(u64::from(date.weekday().num_days_from_monday())),
            Granularity::Month => month_start(date),
        };
        let last = match granularity {
            Granularity::Day => first,
            Granularity::Week => first + Days::new(6),
            Granularity::Month => first + Months::new(1) - Days::new(1),
        };
        Self { first, last }
    }

    pub fn contains(&self, date: NaiveDate) -> bool {
        self.first <= date && date <= self.last
    }
}

/// The first day of `date`'s month.
pub fn month_start(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap_or(date)
}

/// The whole periods that cover `from..=to` (`from` ≤ `to`), in order; `None` when there would
/// be more than `max`.
pub fn periods(
    from: NaiveDate,
    to: NaiveDate,
    granularity: Granularity,
    max: usize,
) -> Option<Vec<Period>> {
    let mut out = Vec::new();
    let mut period = Period::containing(from, granularity);
    while period.first <= to {
        if out.len() == max {
            return None;
        }
        out.push(period);
        let next = period.last.succ_opt()?;
        period = Period::containing(next, granularity);
    }
    Some(out)
}

/// A `YYYY-MM-DD` date, as the API writes them.
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    (text.len() == 10)
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
}

/// A `YYYY-MM` month: its first day.
pub fn parse_month(text: &str) -> Option<NaiveDate> {
    (text.len() == 7)
        .then(|| NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok())
        .flatten()
}
