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

/// The manual test clock: starts at the real time and moves only when told, never backwards.
/// (The TestClock service tells the scheduler of each move it makes.)
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

    /// Moves the clock to `to`; refuses to move it backwards.
    pub fn set(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, Backwards> {
        self.move_to(to).map(|_| to)
    }

    /// Moves the clock to `to` and returns where it was, in one step (the scheduler needs the
    /// exact interval a move covered); refuses to move it backwards.
    pub fn move_to(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, Backwards> {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if to < *now {
            return Err(Backwards {
                now: *now,
                requested: to,
            });
        }
        Ok(std::mem::replace(&mut *now, to))
    }

    pub fn advance(&self, seconds: i64) -> Result<DateTime<Utc>, Backwards> {
        self.move_by(seconds).map(|(_, to)| to)
    }

    /// Moves the clock `seconds` forward; returns (from, to).
    pub fn move_by(&self, seconds: i64) -> Result<(DateTime<Utc>, DateTime<Utc>), Backwards> {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        let from = *now;
        let to = from
            .checked_add_signed(chrono::Duration::seconds(seconds))
            .filter(|to| *to >= from)
            .ok_or(Backwards {
                now: from,
                requested: from
                    .checked_add_signed(chrono::Duration::seconds(seconds))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            })?;
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
    fn system_clock_never_goes_backwards() {
        let clock = SystemClock::default();
        let future = Utc::now().timestamp_micros() + 3_600_000_000;
        clock.latest_micros.store(future, Ordering::Release);
        assert_eq!(clock.now().timestamp_micros(), future);
    }
}
