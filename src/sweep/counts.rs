//! What a sweep counts: accounts examined, boundary transitions by reason, notices sent. A new
//! boundary transition is a new `TransitionReason` and one line of [`COUNTED`]; every output
//! (AdvanceStates, the CLI, the metrics, the dashboard) takes its count from here by name.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::lifecycle::{Swept, TransitionReason};
use crate::store::RunCounts;

/// The boundary transitions a sweep makes, in the order every output lists them, with the name
/// of their count (the JSON field, the CLI line, the metrics' `transition` label).
pub const COUNTED: [(TransitionReason, &str); 4] = [
    (TransitionReason::ValidityExpired, "to_grace"),
    (TransitionReason::GraceExpired, "to_locked"),
    (TransitionReason::LockExpired, "to_recycled_from_locked"),
    (
        TransitionReason::UnactivatedExpired,
        "to_recycled_unactivated",
    ),
];

/// The name of the notices' count, listed after the transitions.
pub const EXPIRING_NOTIFIED: &str = "expiring_notified";

/// What a sweep did (or, dry, would do). Transitions are counted per boundary: an account
/// crossing three boundaries adds one to each of three counts.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    /// Due accounts looked at.
    pub examined: u64,
    /// In [`COUNTED`] order.
    transitions: [u64; COUNTED.len()],
    pub expiring_notified: u64,
}

fn slot(reason: TransitionReason) -> Option<usize> {
    COUNTED.iter().position(|(counted, _)| *counted == reason)
}

impl SweepCounts {
    /// Counts one examined account and what its sweep did.
    pub fn tally(&mut self, swept: &Swept) {
        self.examined += 1;
        for t in &swept.transitions {
            // Requests make the other transitions, never a sweep.
            if let Some(slot) = slot(t.reason) {
                self.transitions[slot] += 1;
            }
        }
        if swept.notice.is_some() {
            self.expiring_notified += 1;
        }
    }

    pub fn add(&mut self, other: &SweepCounts) {
        self.examined += other.examined;
        for (sum, count) in self.transitions.iter_mut().zip(other.transitions) {
            *sum += count;
        }
        self.expiring_notified += other.expiring_notified;
    }

    /// The transitions of `reason` (0 for a reason only requests make).
    pub fn transitions(&self, reason: TransitionReason) -> u64 {
        slot(reason).map_or(0, |slot| self.transitions[slot])
    }

    /// Every count but `examined`, by name, in output order: the transitions, then the notices.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTED
            .iter()
            .zip(self.transitions)
            .map(|((_, name), count)| (*name, count))
            .chain([(EXPIRING_NOTIFIED, self.expiring_notified)])
    }

    /// The counts as `sweep_runs` records them.
    pub fn to_run_counts(&self) -> RunCounts {
        RunCounts {
            examined: self.examined,
            transitions: COUNTED
                .iter()
                .zip(self.transitions)
                .map(|((reason, _), count)| (*reason, count))
                .collect(),
            expiring_notified: self.expiring_notified,
        }
    }
}

impl From<&RunCounts> for SweepCounts {
    fn from(run: &RunCounts) -> Self {
        let mut counts = SweepCounts {
            examined: run.examined,
            expiring_notified: run.expiring_notified,
            ..SweepCounts::default()
        };
        for (slot, (reason, _)) in COUNTED.iter().enumerate() {
            counts.transitions[slot] = run.transitions_of(*reason);
        }
        counts
    }
}

/// Field by field, as the counts were written before they were keyed by reason (logs).
impl std::fmt::Debug for SweepCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("SweepCounts");
        s.field("examined", &self.examined);
        for (name, count) in self.named() {
            s.field(name, &count);
        }
        s.finish()
    }
}

/// `examined`, then [`SweepCounts::named`], as the fields of a JSON object.
impl Serialize for SweepCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(COUNTED.len() + 2))?;
        map.serialize_entry("examined", &self.examined)?;
        for (name, count) in self.named() {
            map.serialize_entry(name, &count)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::lifecycle::{AccountState, Transition};

    fn transition(reason: TransitionReason) -> Transition {
        Transition {
            from: AccountState::Valid,
            to: AccountState::Grace,
            effective_at: Utc.timestamp_opt(0, 0).unwrap(),
            reason,
        }
    }

    #[test]
    fn every_boundary_transition_is_counted_under_its_own_name() {
        let mut counts = SweepCounts::default();
        let swept = Swept {
            transitions: [
                TransitionReason::ValidityExpired,
                TransitionReason::GraceExpired,
                TransitionReason::GraceExpired,
                TransitionReason::LockExpired,
                TransitionReason::Recharged,
            ]
            .map(transition)
            .to_vec(),
            notice: None,
        };
        counts.tally(&swept);
        let named: Vec<_> = counts.named().collect();
        assert_eq!(
            named,
            [
                ("to_grace", 1),
                ("to_locked", 2),
                ("to_recycled_from_locked", 1),
                ("to_recycled_unactivated", 0),
                ("expiring_notified", 0),
            ]
        );
        assert_eq!(counts.examined, 1);
        assert_eq!(counts.transitions(TransitionReason::Recharged), 0);
        assert_eq!(SweepCounts::from(&counts.to_run_counts()), counts);
        assert_eq!(
            serde_json::to_string(&counts).unwrap(),
            r#"{"examined":1,"to_grace":1,"to_locked":2,"to_recycled_from_locked":1,"to_recycled_unactivated":0,"expiring_notified":0}"#
        );
    }
}
