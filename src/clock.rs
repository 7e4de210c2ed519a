//! The injected clock. Logic never reads the OS time: it asks a [`Clock`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real time, made monotonic: if the system clock steps back, time stands still until it
/// catches up, so no account ever moves backwards.
#[derive(Debug, Default)]
pub struct SystemClock {
    latest_micros: AtomicI64,
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        let system = Utc::now().timestamp_micros();
        let previous = self.latest_micros.fetch_max(system, Ordering::AcqRel);
        DateTime::from_timestamp_micros(system.max(previous)).unwrap_or_else(Utc::now)
    }
}

/// The earliest instant the manual clock may show: 0001-01-01T00:00:00Z, the start of
/// protobuf's `Timestamp` range (and of four-digit years).
pub const EARLIEST: DateTime<Utc> = match DateTime::from_timestamp(-62_135_596_800, 0) {
    Some(t) => t,
    None => panic!("0001-01-01 is a valid instant"),
};

/// The latest instant the manual clock may show: 9999-12-31T23:59:59.999999Z, the end of
/// protobuf's `Timestamp` range (and of four-digit years) in the clock's microseconds.
pub const LATEST: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 999_999_000) {
    Some(t) => t,
    None => panic!("9999-12-31 is a valid instant"),
};

/// Why the manual clock did not move.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoveError {
    #[error(transparent)]
    Backwards(#[from] Backwards),
    /// The move would leave years 1–9999 (or overflow): refused, the clock stays.
    #[error(
        "the clock only shows instants from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z: \
         {asked} (the clock is at {now})"
    )]
    OutOfRange { now: DateTime<Utc>, asked: String },
}

/// The manual test clock: starts at the real time and moves only when told, never backwards
/// and never outside [`EARLIEST`]..=[`LATEST`]. (The TestClock service tells the scheduler of
/// each move it makes.)
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("time never goes backwards: the clock is at {now}, {requested} was asked")]
pub struct Backwards {
    pub now: DateTime<Utc>,
    pub requested: DateTime<Utc>,
}

impl ManualClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock to `to`; refuses to move it backwards or out of range.
    pub fn set(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, MoveError> {
        self.move_to(to).map(|_| to)
    }

    /// Moves the clock to `to` and returns where it was, in one step (the scheduler needs the
    /// exact interval a move covered); refuses to move it backwards or out of range.
    pub fn move_to(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, MoveError> {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if !(EARLIEST..=LATEST).contains(&to) {
            return Err(MoveError::OutOfRange {
                now: *now,
                asked: to.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            });
        }
        if to < *now {
            return Err(Backwards {
                now: *now,
                requested: to,
            }
            .into());
        }
        Ok(std::mem::replace(&mut *now, to))
    }

    pub fn advance(&self, seconds: i64) -> Result<DateTime<Utc>, MoveError> {
        self.move_by(seconds).map(|(_, to)| to)
    }

    /// Moves the clock `seconds` forward; returns (from, to). Checked in one step with the
    /// move, so two moves at once cannot together leave the range.
    pub fn move_by(&self, seconds: i64) -> Result<(DateTime<Utc>, DateTime<Utc>), MoveError> {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        let from = *now;
        let to = chrono::TimeDelta::try_seconds(seconds)
            .and_then(|delta| from.checked_add_signed(delta))
            .filter(|to| (EARLIEST..=LATEST).contains(to))
            .ok_or_else(|| MoveError::OutOfRange {
                now: from,
                asked: format!("{seconds} seconds from {from}"),
            })?;
        if to < from {
            return Err(Backwards {
                now: from,
                requested: to,
            }
            .into());
        }
        *now = to;
        Ok((from, to))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = ManualClock::starting_at(start);
        assert_eq!(clock.now(), start);
        let later = clock.advance(86_400).unwrap();
        assert_eq!((later - start).num_seconds(), 86_400);
        assert!(clock.set(start).is_err());
        assert!(clock.advance(-1).is_err());
        assert_eq!(clock.now(), later);
    }

    #[test]
    fn manual_clock_stays_within_years_1_to_9999() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(EARLIEST.to_rfc3339(), "0001-01-01T00:00:00+00:00");
        assert_eq!(
            LATEST.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "9999-12-31T23:59:59.999999Z"
        );
        let clock = ManualClock::starting_at(start);
        for seconds in [
            i64::MAX,
            i64::MIN,
            1_000_000_000_000_000,
            -1_000_000_000_000_000,
        ] {
            assert!(
                matches!(clock.advance(seconds), Err(MoveError::OutOfRange { .. })),
                "{seconds}"
            );
        }
        assert!(matches!(clock.advance(-1), Err(MoveError::Backwards(_))));
        let past_9999 = LATEST + chrono::TimeDelta::microseconds(1);
        assert!(matches!(
            clock.set(past_9999),
            Err(MoveError::OutOfRange { .. })
        ));
        assert_eq!(clock.now(), start, "a refused move leaves the clock");
        assert_eq!(clock.set(LATEST).unwrap(), LATEST);
        assert!(matches!(
            clock.advance(1),
            Err(MoveError::OutOfRange { .. })
        ));
        assert_eq!(clock.advance(0).unwrap(), LATEST);
    }

    #[test]
    fn system_clock_never_goes_backwards() {
        let clock = SystemClock::default();
        let future = Utc::now().timestamp_micros() + 3_600_000_000;
        clock.latest_micros.store(future, Ordering::Release);
        assert_eq!(clock.now().timestamp_micros(), future);
    }
}
