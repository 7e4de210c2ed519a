//! The store's side of the records a lifecycle change writes: the core builds the history rows
//! and outbox events (`crate::lifecycle::Effects`), the store gives them time-ordered event
//! ids; and the sweep's counts.

use chrono::{DateTime, Utc};

use crate::lifecycle::{
    self, Account, Effects, ExpiringNotice, HistoryRecord, OutboxEvent, Swept, Transition,
    TransitionReason,
};

pub use crate::lifecycle::{SWEEP_ACTOR, VALIDITY_EXPIRING_REASON};

/// History rows and outbox events for `transitions` of `account`, emitted at `now`, with
/// time-ordered event ids: the core's [`Effects::transitions`].
pub fn record_transitions(
    account: &Account,
    transitions: &[Transition],
    now: DateTime<Utc>,
    history: &mut Vec<HistoryRecord>,
    events: &mut Vec<OutboxEvent>,
) {
    let mut effects = Effects::default();
    effects.transitions(account, transitions, now, &mut new_event_id);
    history.append(&mut effects.history);
    events.append(&mut effects.events);
}

/// The VALIDITY_EXPIRING event of `notice`, with a time-ordered event id.
pub fn expiring_event(
    account: &Account,
    notice: &ExpiringNotice,
    now: DateTime<Utc>,
) -> OutboxEvent {
    lifecycle::expiring_event(account, notice, now, &mut new_event_id)
}

/// What a sweep did (or, dry, would do). Transitions are counted per boundary: an account
/// crossing three boundaries adds one to each of three counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepCounts {
    /// Due accounts looked at.
    pub examined: u64,
    pub to_grace: u64,
    pub to_locked: u64,
    pub to_recycled_from_locked: u64,
    pub to_recycled_unactivated: u64,
    pub expiring_notified: u64,
}

impl SweepCounts {
    /// Counts one examined account and what its sweep did.
    pub fn tally(&mut self, swept: &Swept) {
        self.examined += 1;
        for t in &swept.transitions {
            match t.reason {
                TransitionReason::ValidityExpired => self.to_grace += 1,
                TransitionReason::GraceExpired => self.to_locked += 1,
                TransitionReason::LockExpired => self.to_recycled_from_locked += 1,
                TransitionReason::UnactivatedExpired => self.to_recycled_unactivated += 1,
                TransitionReason::Activated
                | TransitionReason::Recharged
                | TransitionReason::Unlocked => {}
            }
        }
        if swept.notice.is_some() {
            self.expiring_notified += 1;
        }
    }

    /// Every count but `examined`, by name, in output order (the JSON field, the CLI line,
    /// the log field, the metrics' `transition` label): the transitions, then the notices.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            ("to_grace", self.to_grace),
            ("to_locked", self.to_locked),
            ("to_recycled_from_locked", self.to_recycled_from_locked),
            ("to_recycled_unactivated", self.to_recycled_unactivated),
            ("expiring_notified", self.expiring_notified),
        ]
        .into_iter()
    }

    pub fn add(&mut self, other: &SweepCounts) {
        self.examined += other.examined;
        self.to_grace += other.to_grace;
        self.to_locked += other.to_locked;
        self.to_recycled_from_locked += other.to_recycled_from_locked;
        self.to_recycled_unactivated += other.to_recycled_unactivated;
        self.expiring_notified += other.expiring_notified;
    }
}

/// What a sweep is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct SweepRequest {
    /// Every account due by this instant is advanced (dry: would be).
    pub as_of: DateTime<Utc>,
    /// The clock's time: `emitted_at` of events, the run's start and end.
    pub now: DateTime<Utc>,
    /// Accounts per transaction.
    pub batch_size: u32,
    /// Compute the counts (and the forecast) without writing anything.
    pub dry_run: bool,
    /// At most this many recycled MSISDNs are listed by a dry run.
    pub forecast_limit: usize,
}

/// What a sweep reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub counts: SweepCounts,
    /// Dry run only: MSISDNs that would be recycled, up to the request's `forecast_limit`.
    pub recycled_msisdns: Vec<String>,
    /// The `sweep_runs` row of a real run; `None` for a dry run (which writes nothing).
    pub run_id: Option<i64>,
}

/// A new event id: a UUID (spec: `event_id` is a UUID string), version 7 — time-ordered, so the
/// unique index on `outbox.event_id` grows at its right edge like the sequence does instead of
/// taking every insert at a random page (measured on the sweep: see BENCHMARKS.md).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
