//! An account's stored facts and what follows from them at an instant: the effective state,
//! the boundaries crossed since the last write, and the next deadline.

use chrono::{DateTime, NaiveDate, Utc};

use super::rules::{Rules, add_days};
use super::types::{AccountState, Msisdn};

/// The stored facts of one life (generation) of an MSISDN.
///
/// `state` is the state as of the last write (materialised); the effective state at any instant
/// follows from the dates and is computed by [`Account::effective_state`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub msisdn: Msisdn,
    pub account_id: String,
    pub generation: u32,
    pub state: AccountState,
    /// Cash balance in minor units (fen).
    pub balance: i64,
    /// The card's printed credit; only charging consumes it.
    pub preset_balance: i64,
    pub sold: bool,
    /// Validity granted by activation.
    pub initial_validity_days: u32,
    pub provisioned_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub valid_until: Option<NaiveDate>,
    pub grace_until: Option<NaiveDate>,
    pub lock_until: Option<NaiveDate>,
    /// Last local day of an unactivated card's life; `None` once activated.
    pub card_expiry: Option<NaiveDate>,
    pub recycled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The `valid_until` the last VALIDITY_EXPIRING notice was sent for: the notice goes out
    /// once per validity period, and a recharge that moves `valid_until` makes a new one due.
    pub expiring_notified_for: Option<NaiveDate>,
}

/// A VALIDITY_EXPIRING notice: the validity ending on `valid_until` ends within
/// `Rules::expiring_days`; due from `due_at` (00:00 local of `valid_until − expiring_days`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringNotice {
    pub valid_until: NaiveDate,
    pub due_at: DateTime<Utc>,
}

/// What one sweep of one account does: the boundaries crossed and the notice sent, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub transitions: Vec<Transition>,
    pub notice: Option<ExpiringNotice>,
}

/// Why a state changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransitionReason {
    /// VALID → GRACE: the validity period ended without a recharge.
    ValidityExpired,
    /// GRACE → LOCKED: the recharge period ended without a recharge.
    GraceExpired,
    /// LOCKED → RECYCLED.
    LockExpired,
    /// UNACTIVATED → RECYCLED: the card reached the end of its life unactivated.
    UnactivatedExpired,
    /// UNACTIVATED → VALID.
    Activated,
    /// GRACE → VALID.
    Recharged,
    /// LOCKED → GRACE or VALID.
    Unlocked,
}

impl TransitionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::ValidityExpired => "VALIDITY_EXPIRED",
            TransitionReason::GraceExpired => "GRACE_EXPIRED",
            TransitionReason::LockExpired => "LOCK_EXPIRED",
            TransitionReason::UnactivatedExpired => "UNACTIVATED_EXPIRED",
            TransitionReason::Activated => "ACTIVATED",
            TransitionReason::Recharged => "RECHARGED",
            TransitionReason::Unlocked => "UNLOCKED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::ValidityExpired,
            Self::GraceExpired,
            Self::LockExpired,
            Self::UnactivatedExpired,
            Self::Activated,
            Self::Recharged,
            Self::Unlocked,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One state change, at the instant it took effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: AccountState,
    pub to: AccountState,
    /// For a boundary crossing: the boundary instant (local midnight), not when it was noticed.
    pub effective_at: DateTime<Utc>,
    pub reason: TransitionReason,
}

impl Account {
    /// The last local day of the current state, or `None` for RECYCLED (it never ends).
    fn last_day_of(&self, state: AccountState) -> Option<NaiveDate> {
        match state {
            AccountState::Unactivated => self.card_expiry,
            AccountState::Valid => self.valid_until,
            AccountState::Grace => self.grace_until,
            AccountState::Locked => self.lock_until,
            AccountState::Recycled => None,
        }
    }

    /// The state on local date `day`, from the dates alone.
    pub fn state_on(&self, day: NaiveDate) -> AccountState {
        if self.state == AccountState::Recycled {
            return AccountState::Recycled;
        }
        if self.activated_at.is_none() {
            return match self.card_expiry {
                Some(expiry) if day > expiry => AccountState::Recycled,
                _ => AccountState::Unactivated,
            };
        }
        let through = |d: Option<NaiveDate>| d.is_some_and(|d| day <= d);
        if through(self.valid_until) {
            AccountState::Valid
        } else if through(self.grace_until) {
            AccountState::Grace
        } else if through(self.lock_until) {
            AccountState::Locked
        } else {
            AccountState::Recycled
        }
    }

    /// The effective state at `now`: a pure function of the facts and the instant.
    pub fn effective_state(&self, now: DateTime<Utc>, rules: &Rules) -> AccountState {
        self.state_on(rules.local_date(now))
    }

    /// The instant the materialised state ends, or `None` when it never does (RECYCLED).
    pub fn state_ends_at(&self, rules: &Rules) -> Option<DateTime<Utc>> {
        self.last_day_of(self.state).map(|d| rules.end_of_day(d))
    }

    /// The VALIDITY_EXPIRING notice not sent yet for the current validity period, if the
    /// materialised state is VALID.
    pub fn pending_notice(&self, rules: &Rules) -> Option<ExpiringNotice> {
        if self.state != AccountState::Valid {
            return None;
        }
        let valid_until = self.valid_until?;
        if self.expiring_notified_for == Some(valid_until) {
            return None;
        }
        let first_day = valid_until
            .checked_sub_days(chrono::Days::new(u64::from(rules.expiring_days)))
            .unwrap_or(NaiveDate::MIN);
        Some(ExpiringNotice {
            valid_until,
            due_at: rules.start_of_day(first_day),
        })
    }

    /// The instant the sweep next has work for this account: the earlier of the end of the
    /// materialised state and the pending VALIDITY_EXPIRING notice; `None` for RECYCLED.
    pub fn next_deadline(&self, rules: &Rules) -> Option<DateTime<Utc>> {
        let ends = self.state_ends_at(rules);
        match self.pending_notice(rules) {
            Some(notice) => Some(ends.map_or(notice.due_at, |e| e.min(notice.due_at))),
            None => ends,
        }
    }

    /// The sweep of this account as of `as_of`: materialises every boundary crossed, then sends
    /// the VALIDITY_EXPIRING notice when the account is (still) VALID and the notice is due.
    /// A notice for a validity that already ended is not sent: the STATE_CHANGED to GRACE says
    /// more. Running it again at the same `as_of` does nothing.
    pub fn sweep(&mut self, as_of: DateTime<Utc>, rules: &Rules) -> Swept {
        let transitions = self.catch_up(as_of, rules);
        let notice = self
            .pending_notice(rules)
            .filter(|notice| notice.due_at <= as_of);
        if let Some(notice) = &notice {
            self.expiring_notified_for = Some(notice.valid_until);
        }
        Swept {
            transitions,
            notice,
        }
    }

    /// The boundaries crossed between the materialised state and the effective state at `now`,
    /// in order, each at its own boundary instant.
    pub fn pending_transitions(&self, now: DateTime<Utc>, rules: &Rules) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let today = rules.local_date(now);
        let mut state = self.state;
        while let Some(last_day) = self.last_day_of(state) {
            if today <= last_day {
                break;
            }
            let to = self.state_on(add_days(last_day, 1));
            let reason = match state {
                AccountState::Unactivated => TransitionReason::UnactivatedExpired,
                AccountState::Valid => TransitionReason::ValidityExpired,
                AccountState::Grace => TransitionReason::GraceExpired,
                _ => TransitionReason::LockExpired,
            };
            // Dates are ordered (valid ≤ grace ≤ lock), so each step moves forward.
            debug_assert!(to > state, "{state} → {to} is not forward");
            transitions.push(Transition {
                from: state,
                to,
                effective_at: rules.end_of_day(last_day),
                reason,
            });
            state = to;
        }
        transitions
    }

    /// Materialises every boundary crossed by `now`; returns the transitions applied.
    pub fn catch_up(&mut self, now: DateTime<Utc>, rules: &Rules) -> Vec<Transition> {
        let transitions = self.pending_transitions(now, rules);
        if let Some(last) = transitions.last() {
            self.state = last.to;
            if last.to == AccountState::Recycled {
                self.recycled_at = Some(last.effective_at);
            }
        }
        transitions
    }

    /// Sets the validity to `valid_until` and derives the grace and lock ends from it.
    pub(crate) fn set_validity(&mut self, valid_until: NaiveDate, rules: &Rules) {
        let grace_until = add_days(valid_until, rules.grace_days);
        self.valid_until = Some(valid_until);
        self.grace_until = Some(grace_until);
        self.lock_until = Some(add_days(grace_until, rules.lock_days));
    }

    /// Cash plus preset credit, the "balance" the recharge and barring rules look at.
    pub fn total_balance(&self) -> i64 {
        self.balance.saturating_add(self.preset_balance)
    }
}
