//! The operator's rules as tests (spec sections 1, 2, 4 and 5), one file per topic.
//!
//! Examples, one per rule, each able to fail if that rule broke: `boundaries` (the calendar of
//! the operator's zone, where each state ends, late sweeps, periods set by configuration),
//! `activation` (provisioning, the sale lock), `recharge` (and the tariff), `charge`, `unlock`,
//! `validation`, `authorize` and `expiring_notice` (the sweep of one account).
//!
//! Properties: random command sequences with random clock jumps (`scenarios`) run against a model
//! written from the spec (`model`: a day-by-day walk of the calendar and the spec's formulas),
//! checking the invariants after every step (`properties`).
//!
//! The fixtures the files share are here.

mod activation;
mod authorize;
mod boundaries;
// The property budget and seed of the integration suites (`OCS_FUZZ_CASES`, a fixed seed under
// CI, printed), shared as one file.
#[path = "../../../tests/common/budget.rs"]
mod budget;
mod charge;
mod expiring_notice;
mod model;
mod properties;
mod recharge;
mod scenarios;
mod unlock;
mod validation;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use super::rules::add_days;
use super::*;
use AccountState::{Grace, Locked, Recycled, Unactivated, Valid};
use ServiceType::{Data, SmsIn, SmsOut, VoiceIn, VoiceOut};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The default tariff (spec section 4) at the edges of its tiers: (amount, days granted).
pub(super) const TARIFF_EDGES: [(i64, u32); 11] = [
    (1, 7),
    (999, 7),
    (1000, 30),
    (2999, 30),
    (3000, 90),
    (4999, 90),
    (5000, 180),
    (9999, 180),
    (10000, 365),
    (29999, 365),
    (30000, 540),
];

fn d(date: &str) -> NaiveDate {
    date.parse().expect("a YYYY-MM-DD date")
}

fn utc(instant: &str) -> DateTime<Utc> {
    instant.parse().expect("an RFC 3339 instant")
}

fn shanghai() -> Rules {
    Rules::default()
}

/// The default rules (Asia/Shanghai) and the instant `hour`:00 local on `date`.
fn shanghai_at(date: &str, hour: u32) -> (Rules, DateTime<Utc>) {
    let rules = shanghai();
    let now = at(&rules, date, hour);
    (rules, now)
}

fn new_york() -> Rules {
    Rules {
        timezone: chrono_tz::America::New_York,
        ..Rules::default()
    }
}

/// Periods changed by configuration: 30 days validity, 10 grace, 5 locked, cap 100, card life 60.
fn short_periods() -> Rules {
    let rules = Rules {
        initial_validity_days: 30,
        grace_days: 10,
        lock_days: 5,
        max_validity_days: 100,
        card_life_days: 60,
        unlock_grace_days: 10,
        ..Rules::default()
    };
    rules.validate().expect("the short periods are valid rules");
    rules
}

/// The UTC instant of local wall-clock time `date` `hour`:00 in the operator's zone.
fn at(rules: &Rules, date: &str, hour: u32) -> DateTime<Utc> {
    at_hms(rules, date, hour, 0, 0)
}

fn at_hms(rules: &Rules, date: &str, hour: u32, min: u32, sec: u32) -> DateTime<Utc> {
    let local = d(date)
        .and_hms_opt(hour, min, sec)
        .expect("a wall-clock time");
    rules
        .timezone
        .from_local_datetime(&local)
        .single()
        .expect("an unambiguous local time")
        .with_timezone(&Utc)
}

/// The last second of local day `date`.
fn last_second(rules: &Rules, date: &str) -> DateTime<Utc> {
    at_hms(rules, date, 23, 59, 59)
}

fn msisdn() -> Msisdn {
    Msisdn::parse("+8613800138000").expect("a valid msisdn")
}

fn params(preset_balance: i64, sold: bool, initial_validity_days: u32) -> ProvisionParams {
    ProvisionParams {
        preset_balance,
        sold,
        initial_validity_days,
    }
}

fn provision_at(rules: &Rules, now: DateTime<Utc>, params: &ProvisionParams) -> Account {
    provision(msisdn(), "acct-1".into(), None, params, now, rules)
        .unwrap_or_else(|e| panic!("provisioning refused: {e}"))
}

/// A sold card with `preset` credit, provisioned at 10:00 local on `date`.
fn card(rules: &Rules, date: &str, preset: i64) -> Account {
    provision_at(rules, at(rules, date, 10), &params(preset, true, 0))
}

/// An activated account VALID through `valid_until` with `balance` cash and `preset` credit.
fn valid_account(rules: &Rules, valid_until: &str, balance: i64, preset: i64) -> Account {
    let activated = ok(
        &card(rules, "2026-01-01", preset),
        &Command::Activate,
        at(rules, "2026-01-01", 11),
        rules,
    );
    let mut account = activated.account;
    account.set_validity(d(valid_until), rules);
    account.balance = balance;
    account
}

/// `valid_account`, materialised (as a sweep would) in the state it has at `now`.
fn account_swept_at(rules: &Rules, valid_until: &str, balance: i64, now: DateTime<Utc>) -> Account {
    let mut account = valid_account(rules, valid_until, balance, 0);
    account.catch_up(now, rules);
    account
}

fn ok(account: &Account, command: &Command, now: DateTime<Utc>, rules: &Rules) -> Applied {
    apply(account, command, now, rules).unwrap_or_else(|e| panic!("{command:?} refused: {e}"))
}

/// Applies a command that must be refused; checks the input is untouched and returns the error.
fn refused(account: &Account, command: &Command, now: DateTime<Utc>, rules: &Rules) -> DomainError {
    let before = account.clone();
    let err = match apply(account, command, now, rules) {
        Ok(applied) => panic!("{command:?} was applied: {applied:?}"),
        Err(err) => err,
    };
    assert_eq!(account, &before, "a refusal changed the account");
    err
}

fn assert_precondition(err: &DomainError, reason: ErrorReason) {
    assert!(
        matches!(err, DomainError::FailedPrecondition { reason: r, .. } if *r == reason),
        "expected FAILED_PRECONDITION {}, got {err:?}",
        reason.as_str()
    );
}

fn assert_invalid(err: &DomainError, reason: ErrorReason) {
    assert!(
        matches!(err, DomainError::InvalidArgument { reason: r, .. } if *r == reason),
        "expected INVALID_ARGUMENT {}, got {err:?}",
        reason.as_str()
    );
}

/// A positive amount of fen (the API refuses any other before a command exists).
fn fen(amount: i64) -> Amount {
    Amount::parse("amount", amount).expect("a positive amount")
}

fn recharge(amount: i64) -> Command {
    Command::Recharge {
        amount: fen(amount),
        channel: RechargeChannel::Bank,
        validity_days: 0,
    }
}

/// A recharge card bought via 10011 with its own printed validity.
fn recharge_card(amount: i64, validity_days: u32) -> Command {
    Command::Recharge {
        amount: fen(amount),
        channel: RechargeChannel::Card10011,
        validity_days,
    }
}

fn charge(amount: i64) -> Command {
    Command::Charge {
        amount: fen(amount),
    }
}

/// An unlock at a business hall; `recharge_amount` 0: without a recharge.
fn unlock(recharge_amount: i64) -> Command {
    Command::Unlock(Unlock {
        operator_id: "op-7".into(),
        branch_id: "hall.01".into(),
        recharge_amount: (recharge_amount != 0).then(|| fen(recharge_amount)),
    })
}

fn recharge_outcome(applied: &Applied) -> &RechargeOutcome {
    match &applied.outcome {
        Outcome::Recharge(outcome) => outcome,
        other => panic!("expected a recharge outcome, got {other:?}"),
    }
}

fn charge_outcome(applied: &Applied) -> &ChargeOutcome {
    match &applied.outcome {
        Outcome::Charge(outcome) => outcome,
        other => panic!("expected a charge outcome, got {other:?}"),
    }
}

fn change_kind(applied: &Applied) -> HistoryKind {
    applied.change.as_ref().expect("a history entry").kind
}

fn assert_dates(account: &Account, valid: &str, grace: &str, lock: &str) {
    assert_eq!(account.valid_until, Some(d(valid)), "valid_until");
    assert_eq!(account.grace_until, Some(d(grace)), "grace_until");
    assert_eq!(account.lock_until, Some(d(lock)), "lock_until");
}

/// Asserts the effective state of `account` at each instant of `expected`.
#[track_caller]
fn assert_states(account: &Account, rules: &Rules, expected: &[(DateTime<Utc>, AccountState)]) {
    for &(instant, state) in expected {
        assert_eq!(
            account.effective_state(instant, rules),
            state,
            "effective state at {instant}"
        );
    }
}

/// The boundary transitions a sweep records from `from`, one at 00:00 local of each of `days`
/// (the days the following states begin).
fn boundaries(rules: &Rules, from: AccountState, days: &[&str]) -> Vec<Transition> {
    let mut state = from;
    days.iter()
        .map(|day| {
            let (next, reason) = model::successor(state).expect("a state that ends");
            let crossed = transition(state, next, at(rules, day, 0), reason);
            state = next;
            crossed
        })
        .collect()
}

fn transition(
    from: AccountState,
    to: AccountState,
    effective_at: DateTime<Utc>,
    reason: TransitionReason,
) -> Transition {
    Transition {
        from,
        to,
        effective_at,
        reason,
    }
}
