//! The failed attempts of the endpoint, summarised for the log ([`FailureLog`]): the first
//! failure after a quiet spell is logged at once, later ones as one line per interval with their
//! counts, and the recovery as one line. It only logs; delivery state is `notify`'s.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What became of a failed attempt's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    WillRetry,
    DeadLettered,
}

/// The failed attempts of one endpoint, logged as one line per interval with their counts.
pub(super) struct FailureLog {
    /// The endpoint's URL without credentials.
    pub(super) endpoint: String,
    every: Duration,
    /// Whether failures were logged and no delivery has succeeded since (checked on every
    /// delivery without the lock).
    failing: std::sync::atomic::AtomicBool,
    window: std::sync::Mutex<FailureWindow>,
}

/// The failures not logged yet.
#[derive(Debug, Default)]
struct FailureWindow {
    /// When the last failure line was written; `None`: none since the last quiet spell.
    logged_at: Option<Instant>,
    /// Since when the counts below run.
    since: Option<Instant>,
    will_retry: u64,
    dead_lettered: u64,
    /// Distinct events (by sequence) among them.
    events: HashSet<i64>,
    last_error: String,
}

/// What one failure line said.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct FailureSummary {
    will_retry: u64,
    dead_lettered: u64,
    /// Distinct events among the failed attempts.
    events: usize,
    last_error: String,
    /// From the first failure counted to the line.
    over: Duration,
}

impl FailureLog {
    pub(super) fn new(endpoint: String, every: Duration) -> Self {
        Self {
            endpoint,
            every,
            failing: std::sync::atomic::AtomicBool::new(false),
            window: std::sync::Mutex::new(FailureWindow::default()),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, FailureWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One failed attempt: logged at once after a quiet spell, else counted for the summary.
    /// Returns what was logged.
    pub(super) fn failed(
        &self,
        sequence: i64,
        outcome: Outcome,
        error: &str,
        now: Instant,
    ) -> Option<FailureSummary> {
        let mut window = self.window();
        window.since.get_or_insert(now);
        match outcome {
            Outcome::WillRetry => window.will_retry += 1,
            Outcome::DeadLettered => window.dead_lettered += 1,
        }
        window.events.insert(sequence);
        error.clone_into(&mut window.last_error);
        self.failing.store(true, Ordering::Relaxed);
        let due = window.logged_at.is_none_or(|at| now >= at + self.every);
        due.then(|| self.log(&mut window, now))
    }

    /// A delivery succeeded: the failures not logged yet are, and that the BSS accepts
    /// deliveries again. Returns the failures logged.
    pub(super) fn delivered(&self, now: Instant) -> Option<FailureSummary> {
        if !self.failing.swap(false, Ordering::Relaxed) {
            return None;
        }
        let mut window = self.window();
        let pending =
            (window.will_retry + window.dead_lettered > 0).then(|| self.log(&mut window, now));
        window.logged_at = None;
        tracing::info!(endpoint = %self.endpoint, "webhook: the BSS accepts deliveries again");
        pending
    }

    /// Logs the failures counted since the last line once the interval has passed (`force`:
    /// now, e.g. at shutdown). Returns what was logged.
    pub(super) fn flush(&self, now: Instant, force: bool) -> Option<FailureSummary> {
        let mut window = self.window();
        let due = force || window.logged_at.is_none_or(|at| now >= at + self.every);
        (due && window.will_retry + window.dead_lettered > 0).then(|| self.log(&mut window, now))
    }

    /// One line for the failures in `window`, which starts afresh.
    fn log(&self, window: &mut FailureWindow, now: Instant) -> FailureSummary {
        let summary = FailureSummary {
            will_retry: window.will_retry,
            dead_lettered: window.dead_lettered,
            events: window.events.len(),
            last_error: std::mem::take(&mut window.last_error),
            over: window.since.map_or(Duration::ZERO, |since| now - since),
        };
        *window = FailureWindow {
            logged_at: Some(now),
            ..FailureWindow::default()
        };
        let FailureSummary {
            will_retry,
            dead_lettered,
            events,
            last_error,
            over,
        } = &summary;
        let (endpoint, failed, over_secs) = (
            &self.endpoint,
            will_retry + dead_lettered,
            over.as_secs_f64(),
        );
        if *dead_lettered > 0 {
            tracing::error!(
                %endpoint, failed, will_retry, dead_lettered, events, over_secs, %last_error,
                "webhook: attempts failed; events dead-lettered (ocs-lifecycle dead-letters list)"
            );
        } else {
            tracing::warn!(
                %endpoint, failed, will_retry, dead_lettered, events, over_secs, %last_error,
                "webhook: attempts failed; will retry"
            );
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_one_line_at_once_then_one_per_interval_with_their_counts() {
        let log = FailureLog::new("https://bss.example/hook".into(), Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // The first failure after a quiet spell: at once.
        let first = log
            .failed(1, Outcome::WillRetry, "HTTP 503", at(0))
            .expect("logged at once");
        assert_eq!((first.will_retry, first.events), (1, 1));
        // Thirty more within the interval: counted, not logged.
        for n in 0..30 {
            let outcome = if n == 29 {
                Outcome::DeadLettered
            } else {
                Outcome::WillRetry
            };
            let error = format!("HTTP 503 #{n}");
            assert_eq!(
                log.failed(1 + n % 3, outcome, &error, at(1 + n as u64)),
                None
            );
            assert_eq!(log.flush(at(1 + n as u64), false), None);
        }
        // The interval is over: one line with the counts.
        let summary = log.flush(at(60), false).expect("the summary");
        assert_eq!(
            summary,
            FailureSummary {
                will_retry: 29,
                dead_lettered: 1,
                events: 3,
                last_error: "HTTP 503 #29".into(),
                over: Duration::from_secs(59),
            }
        );
        assert_eq!(log.flush(at(200), false), None, "nothing new");
        // A failure right after the summary waits for the next interval; a delivery logs it.
        assert_eq!(log.failed(4, Outcome::WillRetry, "reset", at(61)), None);
        let pending = log
            .delivered(at(62))
            .expect("the failures before the recovery");
        assert_eq!((pending.will_retry, pending.events), (1, 1));
        assert_eq!(log.delivered(at(63)), None, "already recovered");
        // Quiet again: the next failure is logged at once.
        assert!(log.failed(5, Outcome::WillRetry, "down", at(64)).is_some());
        assert!(log.failed(5, Outcome::WillRetry, "down", at(65)).is_none());
        assert!(
            log.flush(at(66), true).is_some(),
            "shutdown logs what is left"
        );
    }
}
