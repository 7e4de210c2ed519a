//! Stage composition and flows per period, counted from history rows (docs/analytics.md).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::periods::Period;
use crate::lifecycle::{AccountState, HistoryKind, RechargeChannel, Rules};

/// Accounts per state, indexed by `AccountState as usize - 1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageCounts(pub [i64; 5]);

impl StageCounts {
    pub fn get(&self, state: AccountState) -> i64 {
        self.0[state as usize - 1]
    }

    pub fn add(&mut self, state: AccountState, n: i64) {
        self.0[state as usize - 1] += n;
    }

    /// Carries out one move: the MSISDN leaves `from` (if it was counted anywhere) for `to`.
    pub fn apply(&mut self, moved: StateMove, n: i64) {
        if let Some(from) = moved.from {
            self.add(from, -n);
        }
        self.add(moved.to, n);
    }

    pub fn total(&self) -> i64 {
        self.0.iter().sum()
    }
}

/// How a history row moves an MSISDN between states for the composition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMove {
    /// `None`: the MSISDN was not counted before (its first provisioning).
    pub from: Option<AccountState>,
    pub to: AccountState,
}

/// The move a row of `kind` on `generation` from `from` to `to` makes, if any: a provisioning
/// adds the MSISDN as UNACTIVATED (a re-provisioning takes it out of RECYCLED, where its earlier
/// generation ended); any other row moves it only when its states differ.
pub fn state_move(
    kind: HistoryKind,
    generation: u32,
    from: Option<AccountState>,
    to: Option<AccountState>,
) -> Option<StateMove> {
    match (kind, from, to) {
        (HistoryKind::Provisioned, _, _) => Some(StateMove {
            from: (generation > 1).then_some(AccountState::Recycled),
            to: AccountState::Unactivated,
        }),
        (_, Some(from), Some(to)) if from != to => Some(StateMove {
            from: Some(from),
            to,
        }),
        _ => None,
    }
}

/// The composition at the end of each of `days` (ascending): `start` is the composition before
/// the first day's end minus the moves in `moves` (which hold every move from then on, in any
/// order, each with how many MSISDNs made it); a move counts from the day that contains its
/// instant.
pub fn daily_composition(
    start: StageCounts,
    moves: &[(DateTime<Utc>, StateMove, i64)],
    days: &[NaiveDate],
    rules: &Rules,
) -> Vec<StageCounts> {
    let mut sorted: Vec<_> = moves.to_vec();
    sorted.sort_by_key(|(at, _, _)| *at);
    let mut counts = start;
    let mut next = sorted.iter().peekable();
    days.iter()
        .map(|day| {
            let end = rules.end_of_day(*day);
            while let Some((_, moved, n)) = next.next_if(|(at, _, _)| *at < end) {
                counts.apply(*moved, *n);
            }
            counts
        })
        .collect()
}

/// Whether a history row of `kind` with `amount` is a recharge: a RECHARGE row, or an UNLOCK
/// row that carried one (amount > 0).
pub fn is_recharge(kind: HistoryKind, amount: i64) -> bool {
    kind == HistoryKind::Recharge || (kind == HistoryKind::Unlock && amount > 0)
}

/// History rows of one kind, generation (1, or 2 for any later one), states and pricing
/// (amount > 0 or not) counted together in one period, as the database sums them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroup {
    /// An instant of the period (its start).
    pub at: DateTime<Utc>,
    pub kind: HistoryKind,
    pub generation: u32,
    pub from: Option<AccountState>,
    pub to: Option<AccountState>,
    /// How many rows.
    pub rows: i64,
    /// The sum of their amounts (fen).
    pub amount: i64,
}

/// Recharges of one channel and states in one period: RECHARGE rows, or UNLOCK rows that
/// carried one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recharge {
    /// An instant of the period (its start).
    pub at: DateTime<Utc>,
    /// How many recharges.
    pub count: i64,
    /// Their sum (fen).
    pub amount: i64,
    /// `None` when the request's channel is not known (no idempotency record).
    pub channel: Option<RechargeChannel>,
    pub from: Option<AccountState>,
    pub to: Option<AccountState>,
}

impl Recharge {
    /// GRACE → VALID recharges: win-backs.
    pub fn wins_back(&self) -> bool {
        self.from == Some(AccountState::Grace) && self.to == Some(AccountState::Valid)
    }

    /// The recharges UNLOCK rows carried (at the business hall), if they carried any.
    pub fn of_unlock(rows: &RowGroup) -> Option<Self> {
        (rows.kind == HistoryKind::Unlock && is_recharge(rows.kind, rows.amount)).then_some(Self {
            at: rows.at,
            count: rows.rows,
            amount: rows.amount,
            channel: Some(RechargeChannel::BusinessHall),
            from: rows.from,
            to: rows.to,
        })
    }
}

/// How one stay in GRACE entered from VALID ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraceEnd {
    /// A recharge returned the account to VALID.
    WonBack,
    /// It went on to LOCKED.
    Locked,
    /// Not yet ended.
    Open,
}

/// VALID → GRACE rows of one period whose stays in GRACE ended the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraceEntry {
    /// An instant of the period (its start).
    pub at: DateTime<Utc>,
    pub end: GraceEnd,
    /// How many rows.
    pub count: i64,
}

/// The flows of one period (docs/analytics.md, "What counts").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodFlows {
    pub activations: i64,
    pub valid_to_grace: i64,
    pub win_backs: i64,
    pub grace_to_locked: i64,
    pub unlocks_to_valid: i64,
    pub unlocks_to_grace: i64,
    pub recycled_lock_expired: i64,
    pub recycled_unactivated_expired: i64,
    pub reprovisioned: i64,
    /// Count and amount (fen) per channel, by `RechargeChannel as i32`; 0: channel unknown.
    pub recharges: BTreeMap<i32, (i64, i64)>,
    /// The win-back cohort of the period: stays in GRACE that started in it, and how they ended.
    pub entered_grace: i64,
    pub won_back: i64,
    pub still_in_grace: i64,
}

impl PeriodFlows {
    /// `won_back ÷ entered_grace`, 0 when nobody entered GRACE in the period.
    pub fn win_back_rate(&self) -> f64 {
        if self.entered_grace == 0 {
            0.0
        } else {
            self.won_back as f64 / self.entered_grace as f64
        }
    }

    fn count_rows(&mut self, row: &RowGroup) {
        use AccountState::{Grace, Locked, Recycled, Unactivated, Valid};
        let counter = match (row.kind, row.from, row.to) {
            (HistoryKind::Activated, _, _) => &mut self.activations,
            (HistoryKind::Provisioned, _, _) if row.generation > 1 => &mut self.reprovisioned,
            (HistoryKind::StateChanged, Some(Valid), Some(Grace)) => &mut self.valid_to_grace,
            (HistoryKind::StateChanged, Some(Grace), Some(Locked)) => &mut self.grace_to_locked,
            (HistoryKind::StateChanged, Some(Locked), Some(Recycled)) => {
                &mut self.recycled_lock_expired
            }
            (HistoryKind::StateChanged, Some(Unactivated), Some(Recycled)) => {
                &mut self.recycled_unactivated_expired
            }
            (HistoryKind::Unlock, _, Some(Valid)) => &mut self.unlocks_to_valid,
            (HistoryKind::Unlock, _, Some(Grace)) => &mut self.unlocks_to_grace,
            _ => return,
        };
        *counter += row.rows;
    }

    fn count_recharge(&mut self, recharge: &Recharge) {
        let channel = recharge.channel.map_or(0, |c| c as i32);
        let entry = self.recharges.entry(channel).or_default();
        entry.0 += recharge.count;
        entry.1 += recharge.amount;
        if recharge.wins_back() {
            self.win_backs += recharge.count;
        }
    }

    fn count_entries(&mut self, entry: &GraceEntry) {
        self.entered_grace += entry.count;
        match entry.end {
            GraceEnd::WonBack => self.won_back += entry.count,
            GraceEnd::Open => self.still_in_grace += entry.count,
            GraceEnd::Locked => {}
        }
    }
}

/// The flows of each of `periods` (ascending, contiguous) from the rows that move an MSISDN
/// (PROVISIONED rows and rows whose states differ), the RECHARGE rows and the GRACE entries of
/// their span, each counted per period; rows outside the periods are ignored.
pub fn tally_flows(
    periods: &[Period],
    moves: &[RowGroup],
    recharges: &[Recharge],
    grace_entries: &[GraceEntry],
    rules: &Rules,
) -> Vec<PeriodFlows> {
    let mut flows = vec![PeriodFlows::default(); periods.len()];
    let slot = |at: DateTime<Utc>| {
        let day = rules.local_date(at);
        periods
            .binary_search_by(|p| {
                if p.last < day {
                    std::cmp::Ordering::Less
                } else if p.first > day {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .ok()
    };
    for rows in moves {
        if let Some(i) = slot(rows.at) {
            flows[i].count_rows(rows);
            if let Some(recharge) = Recharge::of_unlock(rows) {
                flows[i].count_recharge(&recharge);
            }
        }
    }
    for recharge in recharges {
        if let Some(i) = slot(recharge.at) {
            flows[i].count_recharge(recharge);
        }
    }
    for entry in grace_entries {
        if let Some(i) = slot(entry.at) {
            flows[i].count_entries(entry);
        }
    }
    flows
}
