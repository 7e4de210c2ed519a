//! What history rows add to `generation_values` (migration 0008): per account generation, the
//! first activation instant and the recharges' sum, number and latest instant. The store folds
//! the rows of a whole group commit (or one sweep batch) into one [`ValueDeltas`] and writes it
//! as one multi-row upsert in the same transaction, instead of one statement per row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::is_recharge;
use crate::lifecycle::{HistoryKind, HistoryRecord};

/// What some history rows add to one generation's row of `generation_values`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueDelta {
    /// The earliest activation among the rows (the stored one, if any, wins).
    pub activated_at: Option<DateTime<Utc>>,
    pub recharge_total: i64,
    pub recharge_count: i64,
    pub last_recharge_at: Option<DateTime<Utc>>,
}

/// The deltas of many history rows, one per (MSISDN, generation), in key order: a multi-row
/// upsert may not touch one row twice (PostgreSQL refuses it), and a fixed order keeps two
/// writers' lock orders the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueDeltas {
    rows: BTreeMap<(String, u32), ValueDelta>,
}

impl ValueDelta {
    /// What one history row adds: an activation its instant, a recharge its amount and instant;
    /// `None` for a row that adds nothing.
    fn of(entry: &HistoryRecord) -> Option<Self> {
        let activated = entry.kind == HistoryKind::Activated;
        let recharge = is_recharge(entry.kind, entry.amount);
        (activated || recharge).then(|| Self {
            activated_at: activated.then_some(entry.at),
            recharge_total: if recharge { entry.amount } else { 0 },
            recharge_count: i64::from(recharge),
            last_recharge_at: recharge.then_some(entry.at),
        })
    }

    /// Adds `other`: the earlier activation, the sums, the later recharge.
    fn absorb(&mut self, other: &ValueDelta) {
        self.activated_at = match (self.activated_at, other.activated_at) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        self.recharge_total += other.recharge_total;
        self.recharge_count += other.recharge_count;
        self.last_recharge_at = self.last_recharge_at.max(other.last_recharge_at);
    }
}

impl ValueDeltas {
    /// Folds in the rows that count: activations and recharges; any other row adds nothing.
    pub fn add(&mut self, history: &[HistoryRecord]) {
        for entry in history {
            if let Some(delta) = ValueDelta::of(entry) {
                let key = (entry.msisdn.as_str().to_owned(), entry.generation);
                self.rows.entry(key).or_default().absorb(&delta);
            }
        }
    }

    /// Adds everything `other` holds (a mutation whose savepoint was released joins its group).
    pub fn merge(&mut self, other: ValueDeltas) {
        for (key, theirs) in other.rows {
            self.rows.entry(key).or_default().absorb(&theirs);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// (MSISDN, generation, delta), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, &ValueDelta)> {
        self.rows
            .iter()
            .map(|((msisdn, generation), delta)| (msisdn.as_str(), *generation, delta))
    }
}
