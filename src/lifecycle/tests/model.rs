//! The spec's model, written independently of the code under test: the tariff table, the calendar
//! walked one local day at a time, and the refusal and validity the spec prescribes for a
//! command. The property tests (`properties.rs`) hold the code to it.

use super::*;

/// The default tariff of spec section 4, written out independently of `Tariff::default`.
pub(super) fn spec_tariff_days(amount: i64) -> u32 {
    match amount {
        a if a >= 30000 => 540,
        a if a >= 10000 => 365,
        a if a >= 5000 => 180,
        a if a >= 3000 => 90,
        a if a >= 1000 => 30,
        a if a >= 1 => 7,
        _ => 0,
    }
}

/// 00:00 local on `day`, computed directly from the zone (the zones under test have a midnight
/// every day).
fn model_midnight(rules: &Rules, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight");
    rules
        .timezone
        .from_local_datetime(&midnight)
        .single()
        .expect("midnight exists and is unambiguous")
        .with_timezone(&Utc)
}

/// The state that follows `state` once its last day has passed, and the reason recorded
/// (UNACTIVATED → RECYCLED; VALID → GRACE → LOCKED → RECYCLED); `None` for RECYCLED.
pub(super) fn successor(state: AccountState) -> Option<(AccountState, TransitionReason)> {
    match state {
        Unactivated => Some((Recycled, TransitionReason::UnactivatedExpired)),
        Valid => Some((Grace, TransitionReason::ValidityExpired)),
        Grace => Some((Locked, TransitionReason::GraceExpired)),
        Locked => Some((Recycled, TransitionReason::LockExpired)),
        Recycled => None,
    }
}

/// The last day of `state` on `account` (`None` for RECYCLED, which never ends).
pub(super) fn last_day(account: &Account, state: AccountState) -> Option<NaiveDate> {
    match state {
        Unactivated => account.card_expiry,
        Valid => account.valid_until,
        Grace => account.grace_until,
        Locked => account.lock_until,
        Recycled => None,
    }
}

/// The spec's calendar walked one local day at a time: starting from the state materialised at
/// the last write, on each following day every state whose last day has passed gives way to its
/// successor (UNACTIVATED → RECYCLED, VALID → GRACE → LOCKED → RECYCLED), at 00:00 local.
pub(super) fn walk_days(
    account: &Account,
    last_write: DateTime<Utc>,
    now: DateTime<Utc>,
    rules: &Rules,
) -> (AccountState, Vec<Transition>) {
    let mut state = account.state;
    let mut transitions = Vec::new();
    let mut day = rules.local_date(last_write);
    let today = rules.local_date(now);
    while day < today && state != Recycled {
        day = day.succ_opt().expect("a representable date");
        while let Some((next, reason)) = successor(state) {
            let last_day = last_day(account, state).expect("a live state has a last day");
            if day <= last_day {
                break;
            }
            transitions.push(transition(state, next, model_midnight(rules, day), reason));
            state = next;
        }
    }
    (state, transitions)
}

/// The refusal the spec prescribes for `command` on an account in `state` (the effective state
/// by the model), or `None` when the command must be applied.
pub(super) fn expected_refusal(
    account: &Account,
    state: AccountState,
    command: &Command,
) -> Option<ErrorReason> {
    use ErrorReason as R;
    // Request validation comes first, whatever the account.
    // (Amounts are positive by their type: the API refuses the others first.)
    let invalid = match command {
        Command::Recharge { validity_days, .. } => *validity_days > 36_500,
        Command::Unlock(unlock) => unlock.operator_id.is_empty() || unlock.branch_id.is_empty(),
        _ => false,
    };
    if invalid {
        return Some(R::InvalidArgument);
    }
    if state == Recycled {
        return Some(R::AccountRecycled);
    }
    let overflows = |amount: i64| account.balance.checked_add(amount).is_none();
    match command {
        Command::MarkSold => None,
        Command::Activate => (state == Unactivated && !account.sold).then_some(R::SaleLocked),
        Command::Recharge { amount, .. } => match state {
            Locked => Some(R::AccountLocked),
            _ if overflows(amount.fen()) => Some(R::AmountOverflow),
            _ => None,
        },
        Command::Charge { amount } => match state {
            Unactivated => Some(R::NotActivated),
            Grace => Some(R::AccountInGrace),
            Locked => Some(R::AccountLocked),
            _ => {
                let credit = i128::from(account.balance) + i128::from(account.preset_balance);
                (credit < i128::from(amount.fen())).then_some(R::InsufficientBalance)
            }
        },
        Command::Unlock(unlock) => {
            if state != Locked {
                Some(R::AccountNotLocked)
            } else if unlock.recharge_amount.is_some_and(|a| overflows(a.fen())) {
                Some(R::AmountOverflow)
            } else {
                None
            }
        }
    }
}

/// The validity the spec prescribes for a recharge of `days` on an account in `state`, and
/// whether the cap cut it.
pub(super) fn expected_validity(
    account: &Account,
    state: AccountState,
    days: u32,
    today: NaiveDate,
    rules: &Rules,
) -> (NaiveDate, bool) {
    let from_today = add_days(today, days);
    let wanted = match (state, account.valid_until) {
        (Valid, Some(old)) if account.total_balance() > 0 => add_days(old, days),
        (Valid, Some(old)) => old.max(from_today),
        _ => from_today,
    };
    let cap = add_days(today, rules.max_validity_days);
    (wanted.min(cap), wanted > cap)
}
