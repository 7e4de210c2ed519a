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

impl ValueDeltas {
    /// Folds in the rows that count: activations and recharges; any other row adds nothing.
    pub fn add(&mut self, history: &[HistoryRecord]) {
        for entry in history {
            let activated = entry.kind == HistoryKind::Activated;
            let recharge = is_recharge(entry.kind, entry.amount);
            if !activated && !recharge {
                continue;
            }
            let key = (entry.msisdn.as_str().to_owned(), entry.generation);
            let delta = self.rows.entry(key).or_default();
            if activated {
                delta.activated_at = earliest(delta.activated_at, entry.at);
            }
            if recharge {
                delta.recharge_total += entry.amount;
                delta.recharge_count += 1;
                delta.last_recharge_at = Some(match delta.last_recharge_at {
                    Some(last) if last >= entry.at => last,
                    _ => entry.at,
                });
            }
        }
    }

    /// Adds everything `other` holds (a mutation whose savepoint was released joins its group).
    pub fn merge(&mut self, other: ValueDeltas) {
        for ((msisdn, generation), theirs) in other.rows {
            let ours = self.rows.entry((msisdn, generation)).or_default();
            if let Some(at) = theirs.activated_at {
                ours.activated_at = earliest(ours.activated_at, at);
            }
            ours.recharge_total += theirs.recharge_total;
            ours.recharge_count += theirs.recharge_count;
            ours.last_recharge_at = ours.last_recharge_at.max(theirs.last_recharge_at);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// (MSISDN, generation, delta), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, &ValueDelta)> {
        self.rows
            .iter()
            .map(|((msisdn, generation), delta)| (msisdn.as_str(), *generation, delta))
    }
}

fn earliest(current: Option<DateTime<Utc>>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(current.map_or(at, |c| c.min(at)))
}
