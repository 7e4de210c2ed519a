//! What history rows add to the aggregate tables, kept in the same transaction as the rows:
//! - `generation_values` (migration 0008): per account generation, the first activation instant
//!   and the recharges' sum, number and latest instant (cohorts, churn warnings);
//! - `history_totals` (migration 0009): per quarter hour of UTC and [`total_code`], how many
//!   rows moved an MSISDN between states or recharged it, and their amounts (stage composition
//!   per day, flows, the dashboard's recharges of today).
//!
//! - `grace_ends` (migration 0009): per quarter hour of UTC in which stays in GRACE entered
//!   from VALID began, how many have ended and how (the win-back cohort), with each account
//!   generation's open stay marked in `generation_values.grace_entered_at` until it ends.
//!
//! The store folds the rows of a whole group commit (or one sweep batch) into one
//! [`ValueDeltas`] and writes it as one multi-row upsert per table in the same transaction,
//! instead of one statement per row.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{GraceEnd, is_recharge};
use crate::lifecycle::{AccountState, HistoryKind, HistoryRecord};

/// The length of a `history_totals` slot: a quarter hour. Every local midnight of every time
/// zone in use falls on a quarter hour of UTC (offsets are whole quarter hours), so a report's
/// periods, which start and end at local midnights, take whole slots.
pub const TOTAL_SLOT_SECS: i64 = 900;

/// The start (Unix seconds) of the slot holding `at`.
pub fn total_slot(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(TOTAL_SLOT_SECS) * TOTAL_SLOT_SECS
}

/// Whether `at` starts a slot: a read bounded by such instants takes whole slots.
pub fn starts_slot(at: DateTime<Utc>) -> bool {
    at.timestamp_subsec_nanos() == 0 && at.timestamp().rem_euclid(TOTAL_SLOT_SECS) == 0
}

/// The `history_totals` code of a row that counts there, `None` for the others: a row that
/// moves an MSISDN (a provisioning, or a row whose states differ) or a RECHARGE row, as one
/// number: channel·100000 + kind·10000 + (generation > 1)·1000 + (amount > 0)·100 + from·10 +
/// to (a missing state or channel is 0). The reads regroup it: the moves by `code % 100000`
/// (`AnalyticsStore::moves`), the recharges by channel and states.
pub fn total_code(entry: &HistoryRecord) -> Option<i64> {
    let state = |s: Option<AccountState>| s.map_or(0, |s| s as i64);
    let moves = entry.kind == HistoryKind::Provisioned
        || matches!((entry.from_state, entry.to_state), (Some(from), Some(to)) if from != to);
    (moves || entry.kind == HistoryKind::Recharge).then(|| {
        entry.channel.map_or(0, |c| c as i64) * 100_000
            + entry.kind as i64 * 10_000
            + i64::from(entry.generation > 1) * 1_000
            + i64::from(entry.amount > 0) * 100
            + state(entry.from_state) * 10
            + state(entry.to_state)
    })
}

/// What some history rows add to one generation's row of `generation_values`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueDelta {
    /// The earliest activation among the rows (the stored one, if any, wins).
    pub activated_at: Option<DateTime<Utc>>,
    pub recharge_total: i64,
    pub recharge_count: i64,
    pub last_recharge_at: Option<DateTime<Utc>>,
    /// The earliest row to LOCKED or RECYCLED among the rows (the stored one, if earlier, wins).
    pub first_out_at: Option<DateTime<Utc>>,
    /// A row took the generation out of LOCKED to VALID or GRACE (an unlock).
    pub unlocked: bool,
}

/// The `grace_ends.ended` of a stay: 1 won back (the row that left GRACE was a RECHARGE), 2
/// ended another way (on to LOCKED).
pub fn grace_end_code(end: GraceEnd) -> i64 {
    match end {
        GraceEnd::WonBack => 1,
        GraceEnd::Locked => 2,
        GraceEnd::Open => 0,
    }
}

/// How the first row of an account generation that leaves GRACE after a stay's entry ends that
/// stay (docs/analytics.md, "win-back").
fn grace_end(exit: HistoryKind) -> GraceEnd {
    if exit == HistoryKind::Recharge {
        GraceEnd::WonBack
    } else {
        GraceEnd::Locked
    }
}

/// A VALID → GRACE row: the entry of a stay the win-back cohort counts.
fn enters_grace(entry: &HistoryRecord) -> bool {
    entry.kind == HistoryKind::StateChanged
        && entry.from_state == Some(AccountState::Valid)
        && entry.to_state == Some(AccountState::Grace)
}

/// What some history rows did to one account generation's stays in GRACE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GraceTrack {
    /// The kind of a row that left GRACE before any entry among the rows: the stay it ends, if
    /// any, is the one marked in the database (`generation_values.grace_entered_at`).
    first_exit: Option<HistoryKind>,
    /// The mark after the rows (`Some(None)`: no open stay); `None` while the rows left it as
    /// stored.
    mark: Option<Option<DateTime<Utc>>>,
}

/// The deltas of many history rows, one per (MSISDN, generation), in key order: a multi-row
/// upsert may not touch one row twice (PostgreSQL refuses it), and a fixed order keeps two
/// writers' lock orders the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueDeltas {
    rows: BTreeMap<(String, u32), ValueDelta>,
    /// (slot, code) → (rows, amount), for `history_totals`; in key order for the same reason.
    totals: BTreeMap<(i64, i64), (i64, i64)>,
    grace: BTreeMap<(String, u32), GraceTrack>,
    /// (slot of the entry, `grace_end_code`) → stays ended, for `grace_ends`.
    grace_ends: BTreeMap<(i64, i64), i64>,
}

impl ValueDelta {
    /// What one history row adds: an activation its instant, a recharge its amount and instant,
    /// a first row to LOCKED or RECYCLED its instant, an unlock the mark; `None` for a row that
    /// adds nothing (then the generation's row is not written at all).
    fn of(entry: &HistoryRecord) -> Option<Self> {
        use AccountState::{Locked, Recycled, Unactivated};
        let activated = entry.kind == HistoryKind::Activated;
        let recharge = is_recharge(entry.kind, entry.amount);
        // The first row out: to LOCKED, or to RECYCLED from anywhere but LOCKED (a generation
        // recycled from LOCKED went out when it was locked) and UNACTIVATED (never activated).
        let out = match (entry.from_state, entry.to_state) {
            (Some(Unactivated | Locked), Some(Recycled)) => false,
            (Some(_), Some(Locked | Recycled)) => true,
            _ => false,
        };
        let unlocked = entry.from_state == Some(Locked)
            && entry
                .to_state
                .is_some_and(|s| !matches!(s, Locked | Recycled));
        (activated || recharge || out || unlocked).then(|| Self {
            activated_at: activated.then_some(entry.at),
            recharge_total: if recharge { entry.amount } else { 0 },
            recharge_count: i64::from(recharge),
            last_recharge_at: recharge.then_some(entry.at),
            first_out_at: out.then_some(entry.at),
            unlocked,
        })
    }

    /// Adds `other`: the earlier activation, the sums, the later recharge.
    fn absorb(&mut self, other: &ValueDelta) {
        self.activated_at = match (self.activated_at, other.activated_at) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        self.recharge_total = self.recharge_total.saturating_add(other.recharge_total);
        self.recharge_count += other.recharge_count;
        self.last_recharge_at = self.last_recharge_at.max(other.last_recharge_at);
        self.first_out_at = match (self.first_out_at, other.first_out_at) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        self.unlocked |= other.unlocked;
    }
}

impl ValueDeltas {
    /// Folds in the rows that count: activations and recharges for `generation_values`, moves
    /// and recharges for `history_totals`; any other row adds nothing.
    pub fn add(&mut self, history: &[HistoryRecord]) {
        for entry in history {
            if let Some(delta) = ValueDelta::of(entry) {
                let key = (entry.msisdn.as_str().to_owned(), entry.generation);
                self.rows.entry(key).or_default().absorb(&delta);
            }
            if let Some(code) = total_code(entry) {
                self.add_total((total_slot(entry.at), code), (1, entry.amount));
            }
            let key = || (entry.msisdn.as_str().to_owned(), entry.generation);
            if enters_grace(entry) {
                self.grace.entry(key()).or_default().mark = Some(Some(entry.at));
            } else if entry.from_state == Some(AccountState::Grace) {
                let track = *self.grace.entry(key()).or_default();
                self.leave_grace(key(), track, entry.kind);
            }
        }
    }

    /// A row of `kind` left GRACE after the rows folded so far (`track`, for its generation):
    /// it ends the stay they marked, or the stored one (resolved before the write), or none.
    fn leave_grace(&mut self, key: (String, u32), mut track: GraceTrack, kind: HistoryKind) {
        match track.mark {
            Some(Some(entered)) => self.end_stay(entered, grace_end(kind)),
            Some(None) => {}
            None => track.first_exit = Some(kind),
        }
        track.mark = Some(None);
        self.grace.insert(key, track);
    }

    fn end_stay(&mut self, entered: DateTime<Utc>, end: GraceEnd) {
        *self
            .grace_ends
            .entry((total_slot(entered), grace_end_code(end)))
            .or_default() += 1;
    }

    /// The account generations whose first row leaving GRACE may end a stay entered before
    /// these rows: the store reads their marks and passes them to [`Self::resolve_stays`].
    pub fn stays_to_resolve(&self) -> impl Iterator<Item = (&str, u32)> {
        self.grace
            .iter()
            .filter(|(_, track)| track.first_exit.is_some())
            .map(|((msisdn, generation), _)| (msisdn.as_str(), *generation))
    }

    /// Ends the stored open stays (`marks`: the `grace_entered_at` of the generations of
    /// [`Self::stays_to_resolve`], read in the same transaction) that these rows left.
    pub fn resolve_stays(&mut self, marks: &[(String, u32, Option<DateTime<Utc>>)]) {
        for (msisdn, generation, entered) in marks {
            let key = (msisdn.clone(), *generation);
            let exit = self.grace.get_mut(&key).and_then(|t| t.first_exit.take());
            if let (Some(exit), Some(entered)) = (exit, entered) {
                self.end_stay(*entered, grace_end(exit));
            }
        }
        for track in self.grace.values_mut() {
            track.first_exit = None;
        }
    }

    /// (MSISDN, generation, mark) to write to `generation_values.grace_entered_at`: the open
    /// stay's entry, or `None` when the rows ended it; in key order.
    pub fn grace_marks(&self) -> impl Iterator<Item = (&str, u32, Option<DateTime<Utc>>)> {
        self.grace
            .iter()
            .filter_map(|((msisdn, generation), track)| {
                track.mark.map(|mark| (msisdn.as_str(), *generation, mark))
            })
    }

    /// (slot of the entries, `grace_end_code`, stays) for `grace_ends`, in key order.
    pub fn grace_ends(&self) -> impl Iterator<Item = (i64, i64, i64)> + '_ {
        self.grace_ends
            .iter()
            .map(|((slot, end), stays)| (*slot, *end, *stays))
    }

    fn add_total(&mut self, key: (i64, i64), (rows, amount): (i64, i64)) {
        let total = self.totals.entry(key).or_default();
        total.0 += rows;
        total.1 = total.1.saturating_add(amount);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.totals.is_empty()
            && self.grace.is_empty()
            && self.grace_ends.is_empty()
    }

    /// (MSISDN, generation, delta), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, &ValueDelta)> {
        self.rows
            .iter()
            .map(|((msisdn, generation), delta)| (msisdn.as_str(), *generation, delta))
    }

    /// (slot, code, rows, amount) for `history_totals`, in key order.
    pub fn totals(&self) -> impl Iterator<Item = (i64, i64, i64, i64)> + '_ {
        self.totals
            .iter()
            .map(|((slot, code), (rows, amount))| (*slot, *code, *rows, *amount))
    }
}
