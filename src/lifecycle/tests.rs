//! The operator's rules as tests (spec sections 1, 2, 4 and 5).
//!
//! The first part has one example per rule, each able to fail if that rule broke. The second part
//! runs random command sequences with random clock jumps against a model written from the spec
//! (a day-by-day walk of the calendar and the spec's formulas), checking the invariants after
//! every step.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;

use super::rules::add_days;
use super::*;
use AccountState::{Grace, Locked, Recycled, Unactivated, Valid};
use ServiceType::{Data, SmsIn, SmsOut, VoiceIn, VoiceOut};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn d(date: &str) -> NaiveDate {
    date.parse().expect("a YYYY-MM-DD date")
}

fn utc(instant: &str) -> DateTime<Utc> {
    instant.parse().expect("an RFC 3339 instant")
}

fn shanghai() -> Rules {
    Rules::default()
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

fn recharge(amount: i64) -> Command {
    Command::Recharge {
        amount,
        channel: RechargeChannel::Bank,
        validity_days: 0,
    }
}

/// A recharge card bought via 10011 with its own printed validity.
fn recharge_card(amount: i64, validity_days: u32) -> Command {
    Command::Recharge {
        amount,
        channel: RechargeChannel::Card10011,
        validity_days,
    }
}

fn charge(amount: i64) -> Command {
    Command::Charge { amount }
}

fn unlock(recharge_amount: i64) -> Command {
    Command::Unlock(Unlock {
        operator_id: "op-7".into(),
        branch_id: "hall.01".into(),
        recharge_amount,
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

// ---------------------------------------------------------------------------------------------
// The calendar of the operator's time zone
// ---------------------------------------------------------------------------------------------

#[test]
fn local_midnight_in_shanghai_is_16_utc_the_day_before() {
    let rules = shanghai();
    assert_eq!(at(&rules, "2026-03-01", 0), utc("2026-02-28T16:00:00Z"));
    assert_eq!(
        rules.local_date(utc("2026-02-28T16:00:00Z")),
        d("2026-03-01")
    );
    assert_eq!(
        rules.local_date(utc("2026-02-28T15:59:59Z")),
        d("2026-02-28")
    );
    assert_eq!(
        rules.start_of_day(d("2026-03-01")),
        utc("2026-02-28T16:00:00Z")
    );
    assert_eq!(
        rules.end_of_day(d("2026-02-28")),
        utc("2026-02-28T16:00:00Z")
    );
}

#[test]
fn an_instant_at_16_utc_already_counts_as_the_next_local_day() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    // 2026-06-30T16:00Z is 2026-07-01 00:00 in Shanghai: the validity has ended.
    assert_eq!(
        account.effective_state(utc("2026-06-30T15:59:59Z"), &rules),
        Valid
    );
    assert_eq!(
        account.effective_state(utc("2026-06-30T16:00:00Z"), &rules),
        Grace
    );
}

// ---------------------------------------------------------------------------------------------
// Provisioning and activation
// ---------------------------------------------------------------------------------------------

#[test]
fn provisioning_creates_an_unactivated_card_with_a_540_day_life() {
    let rules = shanghai();
    // 00:30 local on 2026-03-01 is still 2026-02-28 in UTC: the local date counts.
    let now = at_hms(&rules, "2026-03-01", 0, 30, 0);
    let account = provision_at(&rules, now, &params(2000, false, 0));
    assert_eq!(account.state, Unactivated);
    assert_eq!(account.generation, 1);
    assert_eq!(account.balance, 0);
    assert_eq!(account.preset_balance, 2000);
    assert!(!account.sold);
    assert_eq!(account.initial_validity_days, 180);
    assert_eq!(account.provisioned_at, now);
    assert_eq!(account.updated_at, now);
    assert_eq!(account.card_expiry, Some(d("2027-08-23")));
    assert_eq!(account.activated_at, None);
    assert_eq!(account.valid_until, None);
    assert_eq!(account.grace_until, None);
    assert_eq!(account.lock_until, None);
    assert_eq!(account.recycled_at, None);
}

#[test]
fn a_recycled_msisdn_is_provisioned_as_the_next_generation() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let p = params(0, true, 0);
    let second = provision(msisdn(), "acct-2".into(), Some(1), &p, now, &rules).unwrap();
    assert_eq!(second.generation, 2);
    let err = provision(msisdn(), "acct-3".into(), Some(u32::MAX), &p, now, &rules).unwrap_err();
    assert_invalid(&err, ErrorReason::InvalidArgument);
}

#[test]
fn activation_starts_validity_on_the_local_activation_date() {
    let rules = shanghai();
    let account = card(&rules, "2026-02-20", 500);
    // 00:30 local on 2026-03-01 (2026-02-28T16:30Z): the validity counts from 2026-03-01.
    let now = at_hms(&rules, "2026-03-01", 0, 30, 0);
    assert_eq!(now, utc("2026-02-28T16:30:00Z"));
    let applied = ok(&account, &Command::Activate, now, &rules);
    let activated = &applied.account;
    assert_eq!(activated.state, Valid);
    assert_eq!(activated.activated_at, Some(now));
    assert_dates(activated, "2026-08-28", "2026-11-26", "2026-12-26");
    assert_eq!(activated.card_expiry, None, "card_expiry is cleared");
    assert_eq!(activated.preset_balance, 500);
    assert_eq!(activated.updated_at, now);
    assert_eq!(
        applied.transitions,
        vec![transition(
            Unactivated,
            Valid,
            now,
            TransitionReason::Activated
        )]
    );
    assert_eq!(change_kind(&applied), HistoryKind::Activated);
    assert_eq!(applied.outcome, Outcome::None);
}

#[test]
fn activation_uses_the_validity_provisioned_on_the_card() {
    let rules = shanghai();
    let account = provision_at(&rules, at(&rules, "2026-02-01", 9), &params(0, true, 30));
    assert_eq!(account.initial_validity_days, 30);
    let activated = ok(
        &account,
        &Command::Activate,
        at(&rules, "2026-03-01", 10),
        &rules,
    )
    .account;
    assert_dates(&activated, "2026-03-31", "2026-06-29", "2026-07-29");
}

#[test]
fn activation_in_new_york_uses_the_new_york_date() {
    let rules = new_york();
    let account = card(&rules, "2026-02-20", 0);
    // 23:30 on 2026-02-28 in New York is already 2026-03-01 in UTC.
    let now = at_hms(&rules, "2026-02-28", 23, 30, 0);
    assert_eq!(now, utc("2026-03-01T04:30:00Z"));
    let activated = ok(&account, &Command::Activate, now, &rules).account;
    assert_eq!(activated.valid_until, Some(add_days(d("2026-02-28"), 180)));
}

// ---------------------------------------------------------------------------------------------
// State boundaries (spec section 2)
// ---------------------------------------------------------------------------------------------

#[test]
fn account_is_valid_through_the_last_second_of_valid_until() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    assert_eq!(
        account.effective_state(at(&rules, "2026-06-30", 0), &rules),
        Valid
    );
    assert_eq!(
        account.effective_state(last_second(&rules, "2026-06-30"), &rules),
        Valid
    );
    assert_eq!(
        account.effective_state(at(&rules, "2026-07-01", 0), &rules),
        Grace
    );
}

#[test]
fn grace_runs_from_the_day_after_valid_until_through_grace_until() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    assert_eq!(
        account.grace_until,
        Some(d("2026-09-28")),
        "valid_until + 90"
    );
    assert_eq!(
        account.effective_state(at(&rules, "2026-07-01", 0), &rules),
        Grace
    );
    assert_eq!(
        account.effective_state(last_second(&rules, "2026-09-28"), &rules),
        Grace
    );
    assert_eq!(
        account.effective_state(at(&rules, "2026-09-29", 0), &rules),
        Locked
    );
}

#[test]
fn locked_runs_from_the_day_after_grace_until_through_lock_until() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    assert_eq!(
        account.lock_until,
        Some(d("2026-10-28")),
        "valid_until + 120"
    );
    assert_eq!(
        account.effective_state(at(&rules, "2026-09-29", 0), &rules),
        Locked
    );
    assert_eq!(
        account.effective_state(last_second(&rules, "2026-10-28"), &rules),
        Locked
    );
    assert_eq!(
        account.effective_state(at(&rules, "2026-10-29", 0), &rules),
        Recycled
    );
    assert_eq!(
        account.effective_state(at(&rules, "2030-01-01", 0), &rules),
        Recycled
    );
}

#[test]
fn an_unactivated_card_is_recycled_the_day_after_its_540_day_life() {
    let rules = shanghai();
    let account = card(&rules, "2026-03-01", 0);
    assert_eq!(account.card_expiry, Some(d("2027-08-23")), "P + 540");
    assert_eq!(
        account.effective_state(last_second(&rules, "2027-08-23"), &rules),
        Unactivated
    );
    assert_eq!(
        account.effective_state(at(&rules, "2027-08-24", 0), &rules),
        Recycled
    );
    assert_eq!(
        account.effective_state(utc("2027-08-23T16:00:00Z"), &rules),
        Recycled,
        "16:00 UTC is already the next local day"
    );
}

#[test]
fn new_york_boundaries_follow_local_midnight_across_dst() {
    let rules = new_york();
    // Spring forward on 2026-03-08: 2026-03-08 00:00 is still EST (UTC-5), 03-09 00:00 is EDT.
    let before_dst = valid_account(&rules, "2026-03-07", 100, 0);
    assert_eq!(
        before_dst.state_ends_at(&rules),
        Some(utc("2026-03-08T05:00:00Z"))
    );
    assert_eq!(
        before_dst.effective_state(utc("2026-03-08T04:59:59Z"), &rules),
        Valid
    );
    assert_eq!(
        before_dst.effective_state(utc("2026-03-08T05:00:00Z"), &rules),
        Grace
    );

    let on_dst = valid_account(&rules, "2026-03-08", 100, 0);
    assert_eq!(
        on_dst.state_ends_at(&rules),
        Some(utc("2026-03-09T04:00:00Z"))
    );
    assert_eq!(
        on_dst.effective_state(utc("2026-03-09T03:59:59Z"), &rules),
        Valid
    );
    assert_eq!(
        on_dst.effective_state(utc("2026-03-09T04:00:00Z"), &rules),
        Grace
    );
    let transitions = on_dst.pending_transitions(utc("2026-03-09T04:00:00Z"), &rules);
    assert_eq!(
        transitions,
        vec![transition(
            Valid,
            Grace,
            utc("2026-03-09T04:00:00Z"),
            TransitionReason::ValidityExpired
        )]
    );

    // Fall back on 2026-11-01: that day is 25 hours long.
    let fall = valid_account(&rules, "2026-10-31", 100, 0);
    assert_eq!(
        fall.state_ends_at(&rules),
        Some(utc("2026-11-01T04:00:00Z"))
    );
    let fall = valid_account(&rules, "2026-11-01", 100, 0);
    assert_eq!(
        fall.state_ends_at(&rules),
        Some(utc("2026-11-02T05:00:00Z"))
    );
    assert_eq!(
        fall.effective_state(utc("2026-11-02T04:59:59Z"), &rules),
        Valid
    );
    assert_eq!(
        fall.effective_state(utc("2026-11-02T05:00:00Z"), &rules),
        Grace
    );
}

#[test]
fn a_new_york_grace_boundary_in_summer_is_at_04_utc() {
    let rules = new_york();
    // valid_until 2026-04-01 → grace_until 2026-06-30, locked from 2026-07-01 00:00 EDT.
    let account = valid_account(&rules, "2026-04-01", 100, 0);
    assert_eq!(account.grace_until, Some(d("2026-06-30")));
    let locked = account.pending_transitions(utc("2026-07-01T04:00:00Z"), &rules);
    assert_eq!(locked.len(), 2);
    assert_eq!(locked[1].to, Locked);
    assert_eq!(locked[1].effective_at, utc("2026-07-01T04:00:00Z"));
    assert_eq!(
        account
            .pending_transitions(utc("2026-07-01T03:59:59Z"), &rules)
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Boundary transitions: pending_transitions, catch_up, next_deadline
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sweep_200_days_late_crosses_three_boundaries_at_their_own_instants() {
    let rules = shanghai();
    let mut account = valid_account(&rules, "2026-06-30", 100, 0);
    let now = at(&rules, "2027-01-16", 12); // valid_until + 200
    let expected = vec![
        transition(
            Valid,
            Grace,
            at(&rules, "2026-07-01", 0),
            TransitionReason::ValidityExpired,
        ),
        transition(
            Grace,
            Locked,
            at(&rules, "2026-09-29", 0),
            TransitionReason::GraceExpired,
        ),
        transition(
            Locked,
            Recycled,
            at(&rules, "2026-10-29", 0),
            TransitionReason::LockExpired,
        ),
    ];
    assert_eq!(account.pending_transitions(now, &rules), expected);
    assert_eq!(account.state, Valid, "pending_transitions only reads");

    let before = account.clone();
    assert_eq!(account.catch_up(now, &rules), expected);
    assert_eq!(account.state, Recycled);
    assert_eq!(account.recycled_at, Some(at(&rules, "2026-10-29", 0)));
    assert_eq!(
        Account {
            state: before.state,
            recycled_at: None,
            ..account.clone()
        },
        before,
        "catch_up changes only the state and recycled_at"
    );
    assert!(
        account.catch_up(now, &rules).is_empty(),
        "a second sweep changes nothing"
    );
    assert_eq!(account.recycled_at, Some(at(&rules, "2026-10-29", 0)));
}

#[test]
fn a_sweep_stops_at_the_state_due_now() {
    let rules = shanghai();
    let mut account = valid_account(&rules, "2026-06-30", 100, 0);
    assert!(
        account
            .pending_transitions(last_second(&rules, "2026-06-30"), &rules)
            .is_empty()
    );
    let in_grace = account.catch_up(at(&rules, "2026-08-01", 3), &rules);
    assert_eq!(in_grace.len(), 1);
    assert_eq!(account.state, Grace);
    assert_eq!(account.recycled_at, None);
    let locked = account.catch_up(at(&rules, "2026-10-28", 23), &rules);
    assert_eq!(
        locked,
        vec![transition(
            Grace,
            Locked,
            at(&rules, "2026-09-29", 0),
            TransitionReason::GraceExpired
        )]
    );
    assert_eq!(account.state, Locked);
}

#[test]
fn an_unactivated_card_past_its_life_expires_with_unactivated_expired() {
    let rules = shanghai();
    let mut account = card(&rules, "2026-03-01", 1000);
    let now = at(&rules, "2028-01-01", 0);
    let expected = vec![transition(
        Unactivated,
        Recycled,
        at(&rules, "2027-08-24", 0),
        TransitionReason::UnactivatedExpired,
    )];
    assert_eq!(account.catch_up(now, &rules), expected);
    assert_eq!(account.state, Recycled);
    assert_eq!(account.recycled_at, Some(at(&rules, "2027-08-24", 0)));
}

#[test]
fn state_ends_at_the_end_of_the_current_states_last_day() {
    let rules = shanghai();
    let unactivated = card(&rules, "2026-03-01", 0);
    assert_eq!(
        unactivated.state_ends_at(&rules),
        Some(at(&rules, "2027-08-24", 0))
    );

    let mut account = valid_account(&rules, "2026-06-30", 100, 0);
    assert_eq!(
        account.state_ends_at(&rules),
        Some(utc("2026-06-30T16:00:00Z"))
    );
    account.catch_up(at(&rules, "2026-07-01", 0), &rules);
    assert_eq!(
        account.state_ends_at(&rules),
        Some(at(&rules, "2026-09-29", 0))
    );
    account.catch_up(at(&rules, "2026-09-29", 0), &rules);
    assert_eq!(
        account.state_ends_at(&rules),
        Some(at(&rules, "2026-10-29", 0))
    );
    account.catch_up(at(&rules, "2026-10-29", 0), &rules);
    assert_eq!(account.state_ends_at(&rules), None, "RECYCLED never ends");
}

#[test]
fn transition_reasons_have_their_wire_names() {
    let names = [
        (TransitionReason::ValidityExpired, "VALIDITY_EXPIRED"),
        (TransitionReason::GraceExpired, "GRACE_EXPIRED"),
        (TransitionReason::LockExpired, "LOCK_EXPIRED"),
        (TransitionReason::UnactivatedExpired, "UNACTIVATED_EXPIRED"),
        (TransitionReason::Activated, "ACTIVATED"),
        (TransitionReason::Recharged, "RECHARGED"),
        (TransitionReason::Unlocked, "UNLOCKED"),
    ];
    for (reason, name) in names {
        assert_eq!(reason.as_str(), name);
        assert_eq!(TransitionReason::parse(name), Some(reason));
    }
    assert_eq!(TransitionReason::parse("SWEPT"), None);
}

// ---------------------------------------------------------------------------------------------
// Recharge
// ---------------------------------------------------------------------------------------------

#[test]
fn recharge_while_valid_with_credit_adds_days_to_the_remaining_validity() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    let now = at(&rules, "2026-03-01", 10);
    let applied = ok(&account, &recharge(5000), now, &rules);
    assert_dates(&applied.account, "2026-12-27", "2027-03-27", "2027-04-26");
    assert_eq!(applied.account.state, Valid);
    assert_eq!(applied.account.balance, 5100);
    assert_eq!(applied.account.updated_at, now);
    assert!(applied.transitions.is_empty(), "VALID stays VALID");
    assert_eq!(change_kind(&applied), HistoryKind::Recharge);
    assert_eq!(applied.change.as_ref().unwrap().amount, 5000);
    assert_eq!(
        recharge_outcome(&applied),
        &RechargeOutcome {
            valid_until_before: Some(d("2026-06-30")),
            valid_until_after: Some(d("2026-12-27")),
            days_granted: 180,
            capped: false,
            balance_before: 100,
            balance_after: 5100,
        }
    );
}

#[test]
fn preset_credit_alone_carries_the_remaining_validity_over() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 0, 1);
    let applied = ok(
        &account,
        &recharge(1000),
        at(&rules, "2026-03-01", 10),
        &rules,
    );
    assert_eq!(
        applied.account.valid_until,
        Some(d("2026-07-30")),
        "06-30 + 30"
    );
    assert_eq!(
        applied.account.preset_balance, 1,
        "the preset bucket is untouched"
    );
}

#[test]
fn recharge_without_credit_counts_the_days_from_today() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-03-10", 0, 0);
    let applied = ok(
        &account,
        &recharge(1000),
        at(&rules, "2026-03-01", 10),
        &rules,
    );
    // max(2026-03-10, 2026-03-01 + 30): the old remainder is not carried over.
    assert_dates(&applied.account, "2026-03-31", "2026-06-29", "2026-07-29");
    let outcome = recharge_outcome(&applied);
    assert_eq!(outcome.days_granted, 30);
    assert!(!outcome.capped);
}

#[test]
fn recharge_without_credit_never_shortens_validity() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 0, 0);
    let applied = ok(
        &account,
        &recharge(1000),
        at(&rules, "2026-03-01", 10),
        &rules,
    );
    assert_eq!(applied.account.valid_until, Some(d("2026-06-30")));
    assert_eq!(applied.account.grace_until, Some(d("2026-09-28")));
    assert_eq!(applied.account.balance, 1000);
    let outcome = recharge_outcome(&applied);
    assert_eq!(outcome.valid_until_after, Some(d("2026-06-30")));
    assert_eq!(outcome.days_granted, 30);
    assert!(!outcome.capped);
}

#[test]
fn recharge_in_grace_restarts_validity_from_today() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = account_swept_at(&rules, "2026-01-31", 250, now);
    assert_eq!(account.state, Grace);
    let applied = ok(&account, &recharge(3000), now, &rules);
    assert_eq!(applied.account.state, Valid);
    assert_dates(&applied.account, "2026-05-30", "2026-08-28", "2026-09-27");
    assert_eq!(
        applied.account.balance, 3250,
        "the old balance is kept and added to"
    );
    assert_eq!(
        applied.transitions,
        vec![transition(Grace, Valid, now, TransitionReason::Recharged)]
    );
    let change = applied.change.as_ref().unwrap();
    assert_eq!((change.from, change.to), (Grace, Valid));
    let outcome = recharge_outcome(&applied);
    assert_eq!(outcome.valid_until_before, Some(d("2026-01-31")));
    assert_eq!(outcome.days_granted, 90);
    assert_eq!((outcome.balance_before, outcome.balance_after), (250, 3250));
}

#[test]
fn recharge_on_a_day_due_in_grace_acts_as_grace_without_a_sweep() {
    let rules = shanghai();
    // Stored as VALID with credit: as a VALID recharge it would give 2026-01-31 + 90.
    let account = valid_account(&rules, "2026-01-31", 250, 0);
    assert_eq!(account.state, Valid);
    let now = at(&rules, "2026-03-01", 10);
    let applied = ok(&account, &recharge(3000), now, &rules);
    assert_eq!(
        applied.account.valid_until,
        Some(d("2026-05-30")),
        "today + 90"
    );
    assert_eq!(applied.account.state, Valid);
    assert_eq!(
        applied.transitions,
        vec![
            transition(
                Valid,
                Grace,
                utc("2026-01-31T16:00:00Z"),
                TransitionReason::ValidityExpired
            ),
            transition(Grace, Valid, now, TransitionReason::Recharged),
        ]
    );
    let change = applied.change.as_ref().unwrap();
    assert_eq!((change.from, change.to), (Grace, Valid));
}

#[test]
fn recharge_is_capped_at_540_days_from_today() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2027-06-01", 100, 0);
    let applied = ok(&account, &recharge(30000), now, &rules);
    assert_eq!(
        applied.account.valid_until,
        Some(d("2027-08-23")),
        "today + 540"
    );
    assert_eq!(applied.account.grace_until, Some(d("2027-11-21")));
    let outcome = recharge_outcome(&applied);
    assert!(outcome.capped);
    assert_eq!(
        outcome.days_granted, 540,
        "the tariff's days, before the cap"
    );
}

#[test]
fn a_recharge_that_lands_exactly_on_the_cap_is_not_capped() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2027-07-14", 100, 0); // cap − 40
    let exact = ok(&account, &recharge_card(100, 40), now, &rules);
    assert_eq!(exact.account.valid_until, Some(d("2027-08-23")));
    assert!(!recharge_outcome(&exact).capped);
    let one_more = ok(&account, &recharge_card(100, 41), now, &rules);
    assert_eq!(one_more.account.valid_until, Some(d("2027-08-23")));
    let outcome = recharge_outcome(&one_more);
    assert!(outcome.capped);
    assert_eq!(outcome.days_granted, 41);
}

#[test]
fn the_cap_also_applies_in_grace_and_without_credit() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let in_grace = account_swept_at(&rules, "2026-01-31", 0, now);
    let applied = ok(&in_grace, &recharge_card(100, 600), now, &rules);
    assert_eq!(applied.account.valid_until, Some(d("2027-08-23")));
    assert!(recharge_outcome(&applied).capped);
    assert_eq!(recharge_outcome(&applied).days_granted, 600);

    let no_credit = valid_account(&rules, "2026-03-10", 0, 0);
    let applied = ok(&no_credit, &recharge_card(100, 600), now, &rules);
    assert_eq!(applied.account.valid_until, Some(d("2027-08-23")));
    assert!(recharge_outcome(&applied).capped);
}

#[test]
fn a_printed_card_validity_overrides_the_tariff() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = account_swept_at(&rules, "2026-01-31", 0, now);
    // 100 fen buys 7 days by the tariff; the card says 60.
    let applied = ok(&account, &recharge_card(100, 60), now, &rules);
    assert_eq!(applied.account.valid_until, Some(d("2026-04-30")));
    assert_eq!(recharge_outcome(&applied).days_granted, 60);
    let by_tariff = ok(&account, &recharge_card(100, 0), now, &rules);
    assert_eq!(by_tariff.account.valid_until, Some(d("2026-03-08")));
    assert_eq!(recharge_outcome(&by_tariff).days_granted, 7);
}

#[test]
fn recharge_of_an_unactivated_card_changes_the_balance_only() {
    let rules = shanghai();
    let account = card(&rules, "2026-02-01", 300);
    let now = at(&rules, "2026-03-01", 10);
    let applied = ok(&account, &recharge(5000), now, &rules);
    let after = &applied.account;
    assert_eq!(after.state, Unactivated);
    assert_eq!(after.balance, 5000);
    assert_eq!(after.preset_balance, 300);
    assert_eq!(after.valid_until, None);
    assert_eq!(after.grace_until, None);
    assert_eq!(after.lock_until, None);
    assert_eq!(after.card_expiry, account.card_expiry);
    assert_eq!(after.activated_at, None);
    assert!(applied.transitions.is_empty());
    assert_eq!(change_kind(&applied), HistoryKind::Recharge);
    assert_eq!(
        recharge_outcome(&applied),
        &RechargeOutcome {
            valid_until_before: None,
            valid_until_after: None,
            days_granted: 0,
            capped: false,
            balance_before: 0,
            balance_after: 5000,
        }
    );
}

#[test]
fn a_locked_account_takes_no_recharge_not_even_a_card_via_10011() {
    let rules = shanghai();
    let now = at(&rules, "2026-10-08", 10);
    let account = account_swept_at(&rules, "2026-06-30", 100, now);
    assert_eq!(account.state, Locked);
    for command in [
        recharge(5000),
        recharge_card(5000, 0),
        recharge_card(5000, 30),
    ] {
        let err = refused(&account, &command, now, &rules);
        assert_precondition(&err, ErrorReason::AccountLocked);
    }
    // Due LOCKED but not yet swept: refused all the same.
    let unswept = valid_account(&rules, "2026-06-30", 100, 0);
    let err = refused(&unswept, &recharge(5000), now, &rules);
    assert_precondition(&err, ErrorReason::AccountLocked);
}

#[test]
fn a_recycled_account_takes_no_recharge() {
    let rules = shanghai();
    let now = at(&rules, "2027-01-16", 10);
    let unswept = valid_account(&rules, "2026-06-30", 100, 0);
    let swept = account_swept_at(&rules, "2026-06-30", 100, now);
    for account in [&unswept, &swept] {
        let err = refused(account, &recharge(5000), now, &rules);
        assert_precondition(&err, ErrorReason::AccountRecycled);
    }
    let expired_card = card(&rules, "2024-01-01", 0);
    let err = refused(&expired_card, &recharge(5000), now, &rules);
    assert_precondition(&err, ErrorReason::AccountRecycled);
}

// ---------------------------------------------------------------------------------------------
// Tariff (spec section 4)
// ---------------------------------------------------------------------------------------------

/// The default tariff of spec section 4, written out independently of `Tariff::default`.
fn spec_tariff_days(amount: i64) -> u32 {
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

#[test]
fn the_tariff_grants_the_days_of_the_highest_tier_reached_at_each_edge() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let in_grace = account_swept_at(&rules, "2026-01-31", 0, now);
    let edges = [
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
        (1_000_000, 540),
    ];
    for (amount, days) in edges {
        assert_eq!(spec_tariff_days(amount), days);
        let applied = ok(&in_grace, &recharge(amount), now, &rules);
        assert_eq!(
            applied.account.valid_until,
            Some(add_days(d("2026-03-01"), days)),
            "a recharge of {amount}"
        );
        assert_eq!(recharge_outcome(&applied).days_granted, days, "{amount}");
    }
}

#[test]
fn the_tariff_is_configuration() {
    let tariff = Tariff::new(vec![
        TariffTier {
            min_amount: 500,
            days: 10,
        },
        TariffTier {
            min_amount: 2000,
            days: 45,
        },
    ])
    .unwrap();
    let rules = Rules {
        tariff,
        ..shanghai()
    };
    let now = at(&rules, "2026-03-01", 10);
    let in_grace = account_swept_at(&rules, "2026-01-31", 0, now);
    let applied = ok(&in_grace, &recharge(2000), now, &rules);
    assert_eq!(applied.account.valid_until, Some(d("2026-04-15")));
    let applied = ok(&in_grace, &recharge(1999), now, &rules);
    assert_eq!(applied.account.valid_until, Some(d("2026-03-11")));
}

// ---------------------------------------------------------------------------------------------
// Charge
// ---------------------------------------------------------------------------------------------

#[test]
fn charge_takes_the_preset_bucket_first_then_cash() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 1000, 300);
    let applied = ok(&account, &charge(500), now, &rules);
    assert_eq!(applied.account.preset_balance, 0);
    assert_eq!(applied.account.balance, 800);
    assert_eq!(
        charge_outcome(&applied),
        &ChargeOutcome {
            charged_preset: 300,
            charged_balance: 200,
        }
    );
    assert_eq!(change_kind(&applied), HistoryKind::Charge);
    assert_eq!(
        applied.account.valid_until, account.valid_until,
        "charging keeps dates"
    );

    let small = ok(&account, &charge(100), now, &rules);
    assert_eq!(
        (small.account.preset_balance, small.account.balance),
        (200, 1000)
    );
    assert_eq!(charge_outcome(&small).charged_balance, 0);
}

#[test]
fn a_charge_beyond_the_credit_is_refused_and_debits_nothing() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 100, 300);
    let err = refused(&account, &charge(401), now, &rules);
    assert_precondition(&err, ErrorReason::InsufficientBalance);
    let all = ok(&account, &charge(400), now, &rules);
    assert_eq!((all.account.preset_balance, all.account.balance), (0, 0));
    let err = refused(&all.account, &charge(1), now, &rules);
    assert_precondition(&err, ErrorReason::InsufficientBalance);
}

#[test]
fn only_a_valid_account_is_charged() {
    let rules = shanghai();
    let unactivated = card(&rules, "2026-02-01", 1000);
    let now = at(&rules, "2026-03-01", 10);
    assert_precondition(
        &refused(&unactivated, &charge(1), now, &rules),
        ErrorReason::NotActivated,
    );
    let cases = [
        ("2026-08-01", Grace, ErrorReason::AccountInGrace),
        ("2026-10-08", Locked, ErrorReason::AccountLocked),
        ("2027-01-01", Recycled, ErrorReason::AccountRecycled),
    ];
    for (date, state, reason) in cases {
        let now = at(&rules, date, 10);
        // Stored as VALID with plenty of credit: the effective state decides.
        let account = valid_account(&rules, "2026-06-30", 1_000_000, 1000);
        assert_eq!(account.effective_state(now, &rules), state);
        assert_precondition(&refused(&account, &charge(1), now, &rules), reason);
    }
}

// ---------------------------------------------------------------------------------------------
// Unlock
// ---------------------------------------------------------------------------------------------

#[test]
fn unlock_is_for_locked_accounts_only() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let unactivated = card(&rules, "2026-02-01", 0);
    let valid = valid_account(&rules, "2026-06-30", 100, 0);
    let grace = account_swept_at(&rules, "2026-01-31", 100, now);
    for account in [&unactivated, &valid, &grace] {
        for command in [unlock(0), unlock(5000)] {
            let err = refused(account, &command, now, &rules);
            assert_precondition(&err, ErrorReason::AccountNotLocked);
        }
    }
    let recycled_at = at(&rules, "2027-01-16", 10);
    let err = refused(&valid, &unlock(0), recycled_at, &rules);
    assert_precondition(&err, ErrorReason::AccountRecycled);
}

#[test]
fn unlock_without_recharge_grants_a_fresh_grace_period() {
    let rules = shanghai();
    let now = at(&rules, "2026-10-08", 10); // valid_until + 100: LOCKED
    let account = account_swept_at(&rules, "2026-06-30", 100, now);
    assert_eq!(account.state, Locked);
    let applied = ok(&account, &unlock(0), now, &rules);
    let after = &applied.account;
    assert_eq!(after.state, Grace);
    assert_eq!(
        after.valid_until,
        Some(d("2026-06-30")),
        "validity is not restored"
    );
    assert_eq!(after.grace_until, Some(d("2027-01-06")), "today + 90");
    assert_eq!(after.lock_until, Some(d("2027-02-05")), "grace_until + 30");
    assert_eq!(after.balance, 100);
    assert_eq!(after.updated_at, now);
    assert_eq!(
        applied.transitions,
        vec![transition(Locked, Grace, now, TransitionReason::Unlocked)]
    );
    assert_eq!(change_kind(&applied), HistoryKind::Unlock);
    assert_eq!(applied.change.as_ref().unwrap().amount, 0);
    assert_eq!(applied.outcome, Outcome::None);
    // The new periods take effect at their own boundaries.
    assert_eq!(
        after.effective_state(last_second(&rules, "2027-01-06"), &rules),
        Grace
    );
    assert_eq!(
        after.effective_state(at(&rules, "2027-01-07", 0), &rules),
        Locked
    );
    assert_eq!(
        after.effective_state(last_second(&rules, "2027-02-05"), &rules),
        Locked
    );
    assert_eq!(
        after.effective_state(at(&rules, "2027-02-06", 0), &rules),
        Recycled
    );
    assert_eq!(
        after.pending_transitions(at(&rules, "2027-02-06", 0), &rules),
        vec![
            transition(
                Grace,
                Locked,
                at(&rules, "2027-01-07", 0),
                TransitionReason::GraceExpired
            ),
            transition(
                Locked,
                Recycled,
                at(&rules, "2027-02-06", 0),
                TransitionReason::LockExpired
            ),
        ]
    );
}

#[test]
fn the_grace_an_unlock_grants_is_its_own_setting() {
    let rules = Rules {
        unlock_grace_days: 60,
        ..shanghai()
    };
    let now = at(&rules, "2026-10-08", 10);
    let account = account_swept_at(&rules, "2026-06-30", 100, now);
    let after = ok(&account, &unlock(0), now, &rules).account;
    assert_eq!(
        after.grace_until,
        Some(d("2026-12-07")),
        "today + 60, not + 90"
    );
    assert_eq!(after.lock_until, Some(d("2027-01-06")), "grace_until + 30");
}

#[test]
fn unlock_with_recharge_acts_as_a_recharge_from_grace() {
    let rules = shanghai();
    let now = at(&rules, "2026-10-08", 10);
    // Not swept: stored VALID, due LOCKED.
    let account = valid_account(&rules, "2026-06-30", 500, 0);
    let applied = ok(&account, &unlock(5000), now, &rules);
    let after = &applied.account;
    assert_eq!(after.state, Valid);
    assert_dates(after, "2027-04-06", "2027-07-05", "2027-08-04");
    assert_eq!(after.balance, 5500);
    assert_eq!(
        applied.transitions,
        vec![
            transition(
                Valid,
                Grace,
                at(&rules, "2026-07-01", 0),
                TransitionReason::ValidityExpired
            ),
            transition(
                Grace,
                Locked,
                at(&rules, "2026-09-29", 0),
                TransitionReason::GraceExpired
            ),
            transition(Locked, Valid, now, TransitionReason::Unlocked),
        ]
    );
    let change = applied.change.as_ref().unwrap();
    assert_eq!(
        (change.kind, change.from, change.to, change.amount),
        (HistoryKind::Unlock, Locked, Valid, 5000)
    );
    let outcome = recharge_outcome(&applied);
    assert_eq!(outcome.valid_until_before, Some(d("2026-06-30")));
    assert_eq!(outcome.valid_until_after, Some(d("2027-04-06")));
    assert_eq!(outcome.days_granted, 180);
    assert_eq!((outcome.balance_before, outcome.balance_after), (500, 5500));
}

#[test]
fn unlock_needs_an_operator_and_a_branch() {
    let rules = shanghai();
    let now = at(&rules, "2026-10-08", 10);
    let account = account_swept_at(&rules, "2026-06-30", 100, now);
    let with = |operator_id: &str, branch_id: &str, recharge_amount: i64| {
        Command::Unlock(Unlock {
            operator_id: operator_id.into(),
            branch_id: branch_id.into(),
            recharge_amount,
        })
    };
    let too_long = "x".repeat(65);
    for command in [
        with("", "hall.01", 0),
        with("op-7", "", 0),
        with("op 7", "hall.01", 0),
        with("op-7", "hall/01", 0),
        with(&too_long, "hall.01", 0),
    ] {
        let err = refused(&account, &command, now, &rules);
        assert_invalid(&err, ErrorReason::InvalidArgument);
    }
    let err = refused(&account, &with("op-7", "hall.01", -1), now, &rules);
    assert_invalid(&err, ErrorReason::InvalidAmount);
    ok(&account, &with(&"x".repeat(64), "B_2.x-y", 0), now, &rules);
}

// ---------------------------------------------------------------------------------------------
// Sale lock, activation races, the preset bucket
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unsold_card_cannot_be_activated() {
    let rules = shanghai();
    let account = provision_at(&rules, at(&rules, "2026-02-01", 9), &params(5000, false, 0));
    let err = refused(
        &account,
        &Command::Activate,
        at(&rules, "2026-03-01", 10),
        &rules,
    );
    assert_precondition(&err, ErrorReason::SaleLocked);
}

#[test]
fn mark_sold_lifts_the_sale_lock() {
    let rules = shanghai();
    let account = provision_at(&rules, at(&rules, "2026-02-01", 9), &params(5000, false, 0));
    let now = at(&rules, "2026-03-01", 10);
    let sold = ok(&account, &Command::MarkSold, now, &rules);
    assert!(sold.account.sold);
    assert_eq!(sold.account.state, Unactivated);
    assert_eq!(sold.account.updated_at, now);
    assert!(sold.transitions.is_empty());
    assert_eq!(change_kind(&sold), HistoryKind::Sold);
    let again = ok(&sold.account, &Command::MarkSold, now, &rules);
    assert_eq!(again.change, None, "selling twice records nothing");
    assert_eq!(again.account, sold.account);
    let activated = ok(&sold.account, &Command::Activate, now, &rules);
    assert_eq!(activated.account.state, Valid);
}

#[test]
fn activate_of_an_activated_account_returns_it_unchanged() {
    let rules = shanghai();
    let cases = [
        ("2026-03-01", Valid),
        ("2026-08-01", Grace),
        ("2026-10-08", Locked),
    ];
    for (date, state) in cases {
        let now = at(&rules, date, 10);
        let account = account_swept_at(&rules, "2026-06-30", 100, now);
        assert_eq!(account.state, state);
        let applied = ok(&account, &Command::Activate, now, &rules);
        assert_eq!(applied.account, account, "{state}");
        assert_eq!(applied.change, None);
        assert_eq!(applied.outcome, Outcome::None);
        assert!(applied.transitions.is_empty());
    }
}

#[test]
fn activate_of_a_recycled_account_is_refused() {
    let rules = shanghai();
    let expired_card = card(&rules, "2024-01-01", 0);
    let err = refused(
        &expired_card,
        &Command::Activate,
        at(&rules, "2026-03-01", 10),
        &rules,
    );
    assert_precondition(&err, ErrorReason::AccountRecycled);
}

#[test]
fn the_preset_balance_is_consumed_only_by_charging() {
    let rules = shanghai();
    let mut account = provision_at(&rules, at(&rules, "2026-01-01", 9), &params(700, false, 0));
    let script = [
        ("2026-01-02", Command::MarkSold),
        ("2026-01-03", recharge(1000)),
        ("2026-01-04", Command::Activate),
        ("2026-01-05", recharge_card(30000, 100)),
        ("2026-12-01", recharge(100)), // in GRACE
        ("2026-12-02", Command::Activate),
    ];
    for (date, command) in script {
        account = ok(&account, &command, at(&rules, date, 10), &rules).account;
        assert_eq!(account.preset_balance, 700, "after {command:?}");
    }
    let charged = ok(&account, &charge(200), at(&rules, "2026-12-03", 10), &rules).account;
    assert_eq!(charged.preset_balance, 500);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[test]
fn amounts_must_be_positive() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    for amount in [0, -1, i64::MIN] {
        for command in [recharge(amount), recharge_card(amount, 30), charge(amount)] {
            let err = refused(&account, &command, now, &rules);
            assert_invalid(&err, ErrorReason::InvalidAmount);
        }
    }
    // Validation comes before the state: even a recycled number answers INVALID_AMOUNT.
    let recycled = at(&rules, "2027-01-16", 10);
    assert_invalid(
        &refused(&account, &recharge(0), recycled, &rules),
        ErrorReason::InvalidAmount,
    );
}

#[test]
fn a_recharge_that_would_overflow_the_balance_is_refused() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", i64::MAX - 10, 0);
    let err = refused(&account, &recharge(11), now, &rules);
    assert_invalid(&err, ErrorReason::AmountOverflow);
    let full = ok(&account, &recharge(10), now, &rules);
    assert_eq!(full.account.balance, i64::MAX);

    let mut unactivated = card(&rules, "2026-02-01", 0);
    unactivated.balance = i64::MAX;
    assert_invalid(
        &refused(&unactivated, &recharge(1), now, &rules),
        ErrorReason::AmountOverflow,
    );

    let locked_at = at(&rules, "2026-10-08", 10);
    let locked = account_swept_at(&rules, "2026-06-30", i64::MAX, locked_at);
    assert_invalid(
        &refused(&locked, &unlock(1), locked_at, &rules),
        ErrorReason::AmountOverflow,
    );
}

#[test]
fn a_printed_validity_beyond_100_years_is_invalid() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    assert_invalid(
        &refused(&account, &recharge_card(100, 36_501), now, &rules),
        ErrorReason::InvalidArgument,
    );
    ok(&account, &recharge_card(100, 36_500), now, &rules);
}

#[test]
fn provisioning_rejects_a_negative_preset() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let err = provision(
        msisdn(),
        "a".into(),
        None,
        &params(-1, true, 0),
        now,
        &rules,
    )
    .unwrap_err();
    assert_invalid(&err, ErrorReason::InvalidAmount);
    assert!(provision(msisdn(), "a".into(), None, &params(0, true, 0), now, &rules).is_ok());
}

#[test]
fn provisioning_rejects_an_initial_validity_beyond_the_cap() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    for days in [541, 36_500, 36_501, u32::MAX] {
        let err = provision(
            msisdn(),
            "a".into(),
            None,
            &params(0, true, days),
            now,
            &rules,
        )
        .unwrap_err();
        assert_invalid(&err, ErrorReason::InvalidArgument);
    }
    let longest = provision_at(&rules, now, &params(0, true, 540));
    assert_eq!(longest.initial_validity_days, 540);
    let default = provision_at(&rules, now, &params(0, true, 0));
    assert_eq!(default.initial_validity_days, 180);
    let short = short_periods();
    let err = provision(
        msisdn(),
        "a".into(),
        None,
        &params(0, true, 101),
        now,
        &short,
    )
    .unwrap_err();
    assert_invalid(&err, ErrorReason::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Authorize (spec section 5)
// ---------------------------------------------------------------------------------------------

const OUTGOING: [ServiceType; 3] = [VoiceOut, SmsOut, Data];
const INCOMING: [ServiceType; 2] = [VoiceIn, SmsIn];
const EMERGENCY: [&str; 5] = ["110", "112", "119", "120", "122"];
const ORDINARY: &str = "8613900139000";

/// Checks `authorize` for `services` × `destinations`: all allowed, or all denied with `reason`.
fn assert_auth(
    account: Option<&Account>,
    now: DateTime<Utc>,
    services: &[ServiceType],
    destinations: &[&str],
    allowed: bool,
    reason: &str,
) {
    let rules = shanghai();
    for service in services {
        for destination in destinations {
            let auth = authorize(account, *service, destination, now, &rules);
            let expected_reason = if allowed { "" } else { reason };
            assert_eq!(
                (auth.allowed, auth.reason),
                (allowed, expected_reason),
                "{service:?} to {destination} in {:?}",
                auth.state
            );
        }
    }
}

fn all_numbers() -> Vec<&'static str> {
    let mut all = EMERGENCY.to_vec();
    all.extend(["10010", "10011", ORDINARY, "+8613900139000", "cmnet"]);
    all
}

#[test]
fn authorize_unactivated_sold_card_reaches_special_numbers_only() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = card(&rules, "2026-02-01", 5000);
    let special: Vec<&str> = EMERGENCY.iter().copied().chain(["10010", "+110"]).collect();
    assert_auth(Some(&account), now, &OUTGOING, &special, true, "");
    assert_auth(
        Some(&account),
        now,
        &OUTGOING,
        &["10011", ORDINARY],
        false,
        "NOT_ACTIVATED",
    );
    assert_auth(
        Some(&account),
        now,
        &INCOMING,
        &all_numbers(),
        false,
        "NOT_ACTIVATED",
    );
    let auth = authorize(Some(&account), VoiceOut, "110", now, &rules);
    assert_eq!(auth.state, Some(Unactivated));
}

#[test]
fn authorize_unsold_card_is_denied_everything() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = provision_at(&rules, at(&rules, "2026-02-01", 9), &params(5000, false, 0));
    let every_service = [OUTGOING.as_slice(), INCOMING.as_slice()].concat();
    assert_auth(
        Some(&account),
        now,
        &every_service,
        &all_numbers(),
        false,
        "SALE_LOCKED",
    );
}

#[test]
fn authorize_valid_with_credit_allows_everything() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let every_service = [OUTGOING.as_slice(), INCOMING.as_slice()].concat();
    for (balance, preset) in [(1, 0), (0, 1), (5000, 300)] {
        let account = valid_account(&rules, "2026-06-30", balance, preset);
        assert_auth(
            Some(&account),
            now,
            &every_service,
            &all_numbers(),
            true,
            "",
        );
        let auth = authorize(Some(&account), Data, "cmnet", now, &rules);
        assert_eq!(auth.state, Some(Valid));
    }
}

#[test]
fn authorize_valid_without_credit_reaches_special_numbers_and_10011_only() {
    let rules = shanghai();
    let now = at(&rules, "2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 0, 0);
    let allowed: Vec<&str> = EMERGENCY
        .iter()
        .copied()
        .chain(["10010", "10011"])
        .collect();
    assert_auth(Some(&account), now, &OUTGOING, &allowed, true, "");
    assert_auth(
        Some(&account),
        now,
        &OUTGOING,
        &[ORDINARY, "cmnet"],
        false,
        "INSUFFICIENT_BALANCE",
    );
    assert_auth(Some(&account), now, &INCOMING, &all_numbers(), true, "");
}

#[test]
fn authorize_grace_is_one_way_barred() {
    let rules = shanghai();
    let now = at(&rules, "2026-08-01", 10);
    // Stored VALID with credit, due GRACE: the effective state decides.
    let account = valid_account(&rules, "2026-06-30", 5000, 0);
    let allowed: Vec<&str> = EMERGENCY
        .iter()
        .copied()
        .chain(["10010", "10011"])
        .collect();
    assert_auth(Some(&account), now, &OUTGOING, &allowed, true, "");
    assert_auth(
        Some(&account),
        now,
        &OUTGOING,
        &[ORDINARY, "cmnet"],
        false,
        "ONE_WAY_BARRED",
    );
    assert_auth(Some(&account), now, &INCOMING, &all_numbers(), true, "");
    let auth = authorize(Some(&account), VoiceOut, ORDINARY, now, &rules);
    assert_eq!(auth.state, Some(Grace));
}

#[test]
fn authorize_locked_is_two_way_barred_except_emergency_and_10010() {
    let rules = shanghai();
    let now = at(&rules, "2026-10-08", 10);
    let account = valid_account(&rules, "2026-06-30", 5000, 0);
    let allowed: Vec<&str> = EMERGENCY.iter().copied().chain(["10010"]).collect();
    assert_auth(Some(&account), now, &OUTGOING, &allowed, true, "");
    assert_auth(
        Some(&account),
        now,
        &OUTGOING,
        &["10011", ORDINARY],
        false,
        "TWO_WAY_BARRED",
    );
    assert_auth(
        Some(&account),
        now,
        &INCOMING,
        &all_numbers(),
        false,
        "TWO_WAY_BARRED",
    );
    let auth = authorize(Some(&account), VoiceOut, "10010", now, &rules);
    assert_eq!(auth.state, Some(Locked));
}

#[test]
fn authorize_recycled_and_unknown_numbers_are_denied_everything() {
    let rules = shanghai();
    let now = at(&rules, "2027-01-16", 10);
    let every_service = [OUTGOING.as_slice(), INCOMING.as_slice()].concat();
    let recycled = valid_account(&rules, "2026-06-30", 5000, 0);
    assert_auth(
        Some(&recycled),
        now,
        &every_service,
        &all_numbers(),
        false,
        "ACCOUNT_RECYCLED",
    );
    assert_eq!(
        authorize(Some(&recycled), VoiceOut, "110", now, &rules).state,
        Some(Recycled)
    );
    let expired_card = card(&rules, "2024-01-01", 5000);
    assert_auth(
        Some(&expired_card),
        now,
        &every_service,
        &all_numbers(),
        false,
        "ACCOUNT_RECYCLED",
    );
    assert_auth(
        None,
        now,
        &every_service,
        &all_numbers(),
        false,
        "NOT_FOUND",
    );
    assert_eq!(authorize(None, VoiceIn, "110", now, &rules).state, None);
}

#[test]
fn the_special_numbers_are_configuration() {
    let rules = Rules {
        special_numbers: vec!["999".into()],
        recharge_hotline: "1888".into(),
        ..shanghai()
    };
    let now = at(&rules, "2026-08-01", 10);
    let grace = valid_account(&rules, "2026-06-30", 0, 0);
    for (destination, allowed) in [
        ("999", true),
        ("1888", true),
        ("110", false),
        ("10010", false),
    ] {
        let auth = authorize(Some(&grace), VoiceOut, destination, now, &rules);
        assert_eq!(auth.allowed, allowed, "{destination}");
    }
}

// ---------------------------------------------------------------------------------------------
// Periods are configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn periods_are_configuration() {
    let rules = short_periods();
    let provisioned = card(&rules, "2026-03-01", 0);
    assert_eq!(provisioned.card_expiry, Some(d("2026-04-30")), "P + 60");
    assert_eq!(
        provisioned.effective_state(at(&rules, "2026-05-01", 0), &rules),
        Recycled
    );

    let activated = ok(
        &provisioned,
        &Command::Activate,
        at(&rules, "2026-03-01", 12),
        &rules,
    );
    let account = activated.account;
    assert_dates(&account, "2026-03-31", "2026-04-10", "2026-04-15");
    assert_eq!(
        account.pending_transitions(at(&rules, "2026-04-16", 0), &rules),
        vec![
            transition(
                Valid,
                Grace,
                at(&rules, "2026-04-01", 0),
                TransitionReason::ValidityExpired
            ),
            transition(
                Grace,
                Locked,
                at(&rules, "2026-04-11", 0),
                TransitionReason::GraceExpired
            ),
            transition(
                Locked,
                Recycled,
                at(&rules, "2026-04-16", 0),
                TransitionReason::LockExpired
            ),
        ]
    );

    // A 540-day recharge in GRACE is capped at today + 100.
    let recharged = ok(
        &account,
        &recharge(30000),
        at(&rules, "2026-04-01", 10),
        &rules,
    );
    assert_dates(&recharged.account, "2026-07-10", "2026-07-20", "2026-07-25");
    assert!(recharge_outcome(&recharged).capped);
    assert_eq!(recharge_outcome(&recharged).days_granted, 540);

    // Unlock without recharge: GRACE for 10 days, then 5 locked.
    let unlocked = ok(&account, &unlock(0), at(&rules, "2026-04-12", 10), &rules);
    assert_eq!(unlocked.account.grace_until, Some(d("2026-04-22")));
    assert_eq!(unlocked.account.lock_until, Some(d("2026-04-27")));
}

// ---------------------------------------------------------------------------------------------
// Property tests: random command sequences and clock jumps against the spec's model
// ---------------------------------------------------------------------------------------------

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

/// The spec's calendar walked one local day at a time: starting from the state materialised at
/// the last write, on each following day every state whose last day has passed gives way to its
/// successor (UNACTIVATED → RECYCLED, VALID → GRACE → LOCKED → RECYCLED), at 00:00 local.
fn walk_days(
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
        loop {
            let (last_day, next, reason) = match state {
                Unactivated => (
                    account.card_expiry,
                    Recycled,
                    TransitionReason::UnactivatedExpired,
                ),
                Valid => (
                    account.valid_until,
                    Grace,
                    TransitionReason::ValidityExpired,
                ),
                Grace => (account.grace_until, Locked, TransitionReason::GraceExpired),
                Locked => (account.lock_until, Recycled, TransitionReason::LockExpired),
                Recycled => break,
            };
            let last_day = last_day.expect("a live state has a last day");
            if day <= last_day {
                break;
            }
            transitions.push(transition(state, next, model_midnight(rules, day), reason));
            state = next;
        }
    }
    (state, transitions)
}

#[derive(Clone, Copy, Debug)]
enum RulesKind {
    Shanghai,
    NewYork,
    /// grace 10 / lock 5 / cap 100, so sequences cross many boundaries.
    Short,
    /// An unlock grants more grace (200 days) than the validity does (90), so a recharge after an
    /// unlock can bring grace_until earlier: the documented exception to "dates never go back".
    LongUnlockGrace,
}

impl RulesKind {
    fn rules(self) -> Rules {
        match self {
            RulesKind::Shanghai => shanghai(),
            RulesKind::NewYork => new_york(),
            RulesKind::Short => short_periods(),
            RulesKind::LongUnlockGrace => Rules {
                unlock_grace_days: 200,
                ..new_york()
            },
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// The sweep: materialises the boundaries crossed (`catch_up`).
    Sweep,
    MarkSold,
    Activate,
    Recharge {
        amount: i64,
        channel: RechargeChannel,
        validity_days: u32,
    },
    Charge {
        amount: i64,
    },
    Unlock {
        operator_id: &'static str,
        recharge_amount: i64,
    },
}

impl Op {
    fn command(&self) -> Option<Command> {
        Some(match self {
            Op::Sweep => return None,
            Op::MarkSold => Command::MarkSold,
            Op::Activate => Command::Activate,
            Op::Recharge {
                amount,
                channel,
                validity_days,
            } => Command::Recharge {
                amount: *amount,
                channel: *channel,
                validity_days: *validity_days,
            },
            Op::Charge { amount } => Command::Charge { amount: *amount },
            Op::Unlock {
                operator_id,
                recharge_amount,
            } => Command::Unlock(Unlock {
                operator_id: (*operator_id).into(),
                branch_id: "hall.01".into(),
                recharge_amount: *recharge_amount,
            }),
        })
    }
}

/// How far the clock moves before a step.
#[derive(Clone, Copy, Debug)]
enum Jump {
    /// A plain jump of whole days.
    Days(u32),
    /// To the last day of the current effective state, shifted by `shift` days (−1 ..= 1), so that
    /// sequences hit the boundary days themselves; at most 400 days, never backwards.
    NearBoundary { shift: i64 },
}

#[derive(Clone, Debug)]
struct Step {
    jump: Jump,
    /// Added to the jump, so commands land at any time of day.
    seconds: u32,
    op: Op,
}

#[derive(Clone, Debug)]
struct Scenario {
    rules: RulesKind,
    start_day: u32,
    start_second: u32,
    preset: i64,
    sold: bool,
    initial_validity_days: u32,
    steps: Vec<Step>,
}

fn amount_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => 1i64..=40_000,
        1 => (i64::MAX / 2)..=i64::MAX,
        1 => -100i64..=0,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let channel = prop_oneof![
        Just(RechargeChannel::Card10011),
        Just(RechargeChannel::Bank),
        Just(RechargeChannel::BusinessHall),
        Just(RechargeChannel::Online),
    ];
    let validity_days = prop_oneof![
        3 => Just(0u32),
        3 => 0u32..=600,
        1 => Just(36_501u32),
    ];
    let unlock_amount = prop_oneof![
        3 => Just(0i64),
        3 => 1i64..=40_000,
        1 => amount_strategy(),
    ];
    let operator = prop_oneof![8 => Just("op-7"), 1 => Just("")];
    prop_oneof![
        1 => Just(Op::Sweep),
        1 => Just(Op::MarkSold),
        2 => Just(Op::Activate),
        5 => (amount_strategy(), channel, validity_days).prop_map(
            |(amount, channel, validity_days)| Op::Recharge {
                amount,
                channel,
                validity_days,
            }
        ),
        4 => prop_oneof![4 => 1i64..=20_000, 1 => amount_strategy()]
            .prop_map(|amount| Op::Charge { amount }),
        4 => (operator, unlock_amount).prop_map(|(operator_id, recharge_amount)| Op::Unlock {
            operator_id,
            recharge_amount,
        }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let jump = prop_oneof![
        6 => (0u32..=2).prop_map(Jump::Days),
        3 => (0u32..=45).prop_map(Jump::Days),
        1 => (0u32..=400).prop_map(Jump::Days),
        6 => (-1i64..=1).prop_map(|shift| Jump::NearBoundary { shift }),
    ];
    (jump, 0u32..86_400, op_strategy()).prop_map(|(jump, seconds, op)| Step { jump, seconds, op })
}

fn scenario_strategy() -> impl Strategy<Value = Scenario> {
    let rules = prop_oneof![
        Just(RulesKind::Shanghai),
        Just(RulesKind::NewYork),
        Just(RulesKind::Short),
        Just(RulesKind::LongUnlockGrace),
    ];
    let preset = prop_oneof![Just(0i64), 0i64..=20_000];
    (
        rules,
        0u32..=1500,
        0u32..86_400,
        preset,
        prop_oneof![3 => Just(true), 1 => Just(false)],
        prop_oneof![Just(0u32), 1u32..=540],
        prop_oneof![3 => Just(true), 1 => Just(false)],
        prop::collection::vec(step_strategy(), 1..50),
    )
        .prop_map(
            |(
                rules,
                start_day,
                start_second,
                preset,
                sold,
                initial_validity_days,
                activate,
                steps,
            )| {
                // Most lives start with the first call, so that the later states are reached.
                let first_call = Step {
                    jump: Jump::Days(0),
                    seconds: 3600,
                    op: Op::Activate,
                };
                let steps = if activate {
                    std::iter::once(first_call).chain(steps).collect()
                } else {
                    steps
                };
                Scenario {
                    rules,
                    start_day,
                    start_second,
                    preset,
                    sold,
                    initial_validity_days,
                    steps,
                }
            },
        )
}

/// The refusal the spec prescribes for `command` on an account in `state` (the effective state
/// by the model), or `None` when the command must be applied.
fn expected_refusal(
    account: &Account,
    state: AccountState,
    command: &Command,
) -> Option<ErrorReason> {
    use ErrorReason as R;
    // Request validation comes first, whatever the account.
    match command {
        Command::Recharge {
            amount,
            validity_days,
            ..
        } => {
            if *amount <= 0 {
                return Some(R::InvalidAmount);
            }
            if *validity_days > 36_500 {
                return Some(R::InvalidArgument);
            }
        }
        Command::Charge { amount } if *amount <= 0 => return Some(R::InvalidAmount),
        Command::Unlock(unlock) => {
            if unlock.operator_id.is_empty() || unlock.branch_id.is_empty() {
                return Some(R::InvalidArgument);
            }
            if unlock.recharge_amount < 0 {
                return Some(R::InvalidAmount);
            }
        }
        _ => {}
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
            _ if overflows(*amount) => Some(R::AmountOverflow),
            _ => None,
        },
        Command::Charge { amount } => match state {
            Unactivated => Some(R::NotActivated),
            Grace => Some(R::AccountInGrace),
            Locked => Some(R::AccountLocked),
            _ => {
                let credit = i128::from(account.balance) + i128::from(account.preset_balance);
                (credit < i128::from(*amount)).then_some(R::InsufficientBalance)
            }
        },
        Command::Unlock(unlock) => {
            if state != Locked {
                Some(R::AccountNotLocked)
            } else if unlock.recharge_amount > 0 && overflows(unlock.recharge_amount) {
                Some(R::AmountOverflow)
            } else {
                None
            }
        }
    }
}

/// The validity the spec prescribes for a recharge of `days` on an account in `state`, and
/// whether the cap cut it.
fn expected_validity(
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

/// One account's life under a scenario, with the sums the balance must conserve.
struct Life {
    rules: Rules,
    account: Account,
    /// When the account was last written (its state is materialised as of then).
    last_write: DateTime<Utc>,
    now: DateTime<Utc>,
    initial_preset: i128,
    recharged: i128,
    charged: i128,
    /// grace_until/lock_until were set by an unlock without recharge (not derived from
    /// valid_until) and no recharge has happened since.
    grace_from_unlock: bool,
    /// Every transition so far, in order (sweeps, commands' catch-ups and commands' own).
    history: Vec<Transition>,
}

impl Life {
    fn start(scenario: &Scenario) -> Self {
        let rules = scenario.rules.rules();
        let now = utc("2024-01-01T00:00:00Z")
            + Duration::days(i64::from(scenario.start_day))
            + Duration::seconds(i64::from(scenario.start_second));
        let initial_validity_days = scenario.initial_validity_days % (rules.max_validity_days + 1);
        let account = provision_at(
            &rules,
            now,
            &params(scenario.preset, scenario.sold, initial_validity_days),
        );
        assert_eq!(
            account.card_expiry,
            Some(add_days(rules.local_date(now), rules.card_life_days))
        );
        Self {
            rules,
            account,
            last_write: now,
            now,
            initial_preset: i128::from(scenario.preset),
            recharged: 0,
            charged: 0,
            grace_from_unlock: false,
            history: Vec::new(),
        }
    }

    fn advance(&mut self, days: u32, seconds: u32) {
        self.now += Duration::days(i64::from(days)) + Duration::seconds(i64::from(seconds));
    }

    /// Checks the account's view of the clock against the day-by-day walk; returns the walk.
    fn check_calendar(&self) -> (AccountState, Vec<Transition>) {
        let (rules, account, now) = (&self.rules, &self.account, self.now);
        let (state, walked) = walk_days(account, self.last_write, now, rules);
        assert_eq!(
            account.effective_state(now, rules),
            state,
            "effective state at {now}"
        );
        assert_eq!(
            account.pending_transitions(now, rules),
            walked,
            "pending transitions at {now}"
        );
        for t in &walked {
            assert!(t.to > t.from, "{} → {} moves backwards", t.from, t.to);
            let just_before = t.effective_at - Duration::seconds(1);
            assert_eq!(account.effective_state(just_before, rules), t.from);
            assert_eq!(account.effective_state(t.effective_at, rules), t.to);
        }
        (state, walked)
    }

    fn sweep(&mut self, state: AccountState, walked: Vec<Transition>) {
        let before = self.account.clone();
        let mut swept = before.clone();
        let transitions = swept.catch_up(self.now, &self.rules);
        assert_eq!(transitions, walked);
        assert_eq!(swept.state, state);
        if before.state != Recycled && state == Recycled {
            assert_eq!(swept.recycled_at, walked.last().map(|t| t.effective_at));
        } else {
            assert_eq!(swept.recycled_at, before.recycled_at);
        }
        let unchanged = Account {
            state: before.state,
            recycled_at: before.recycled_at,
            ..swept.clone()
        };
        assert_eq!(
            unchanged, before,
            "a sweep changes only the state and recycled_at"
        );
        self.history.extend(transitions);
        self.account = swept;
        self.last_write = self.now;
    }

    fn jump(&mut self, jump: Jump, seconds: u32) {
        let days = match jump {
            Jump::Days(days) => days,
            Jump::NearBoundary { shift } => {
                let (rules, account) = (&self.rules, &self.account);
                let last_day = match account.effective_state(self.now, rules) {
                    Unactivated => account.card_expiry,
                    Valid => account.valid_until,
                    Grace => account.grace_until,
                    Locked => account.lock_until,
                    Recycled => None,
                };
                last_day.map_or(1, |last_day| {
                    let days = (last_day - rules.local_date(self.now)).num_days() + shift;
                    u32::try_from(days.clamp(0, 400)).expect("clamped")
                })
            }
        };
        self.advance(days, seconds);
    }

    fn step(&mut self, step: &Step) {
        self.jump(step.jump, step.seconds);
        let (state, walked) = self.check_calendar();
        let Some(command) = step.op.command() else {
            self.sweep(state, walked);
            return;
        };
        let before = self.account.clone();
        let expected = expected_refusal(&before, state, &command);
        match (apply(&before, &command, self.now, &self.rules), expected) {
            (Err(err), Some(reason)) => {
                assert_eq!(err.reason(), reason, "{command:?} in {state}: {err}");
                let precondition = matches!(err, DomainError::FailedPrecondition { .. });
                let invalid = matches!(
                    reason,
                    ErrorReason::InvalidAmount
                        | ErrorReason::InvalidArgument
                        | ErrorReason::AmountOverflow
                );
                assert_eq!(precondition, !invalid, "error kind of {err:?}");
                assert_eq!(self.account, before, "a refusal changed the account");
            }
            (Ok(applied), None) => {
                self.check_applied(&before, state, &walked, &command, &applied);
                self.history.extend(applied.transitions.iter().cloned());
                self.account = applied.account;
                self.last_write = self.now;
            }
            (Err(err), None) => panic!("{command:?} in {state} refused: {err}"),
            (Ok(applied), Some(reason)) => panic!(
                "{command:?} in {state} applied, the spec says {}: {applied:?}",
                reason.as_str()
            ),
        }
        self.check_account();
    }

    fn check_applied(
        &mut self,
        before: &Account,
        state: AccountState,
        walked: &[Transition],
        command: &Command,
        applied: &Applied,
    ) {
        let (rules, now) = (&self.rules, self.now);
        let today = rules.local_date(now);
        let after = &applied.account;
        let grace_from_unlock_before = self.grace_from_unlock;

        // The boundaries crossed come first, then the command's own change if it made one.
        assert!(applied.transitions.starts_with(walked), "{applied:?}");
        let own = &applied.transitions[walked.len()..];
        assert!(own.len() <= 1);
        if let Some(t) = own.first() {
            assert_eq!((t.from, t.to, t.effective_at), (state, after.state, now));
        } else {
            assert_eq!(after.state, state, "a state change without a transition");
        }
        assert_eq!(
            after.effective_state(now, rules),
            after.state,
            "materialised"
        );
        if let Some(change) = &applied.change {
            assert_eq!((change.from, change.to), (state, after.state));
            assert_eq!(after.updated_at, now);
        }

        // What never changes within one life.
        assert_eq!(after.msisdn, before.msisdn);
        assert_eq!(after.account_id, before.account_id);
        assert_eq!(after.generation, before.generation);
        assert_eq!(after.initial_validity_days, before.initial_validity_days);
        assert_eq!(after.provisioned_at, before.provisioned_at);
        assert_eq!(after.recycled_at, None);
        if before.activated_at.is_some() {
            assert_eq!(after.activated_at, before.activated_at);
        }

        match command {
            Command::MarkSold => {
                assert!(after.sold);
                assert_eq!(applied.change.is_some(), !before.sold);
                assert_eq!(
                    Account {
                        sold: before.sold,
                        state: before.state,
                        updated_at: before.updated_at,
                        ..after.clone()
                    },
                    *before
                );
            }
            Command::Activate => {
                if state == Unactivated {
                    assert_eq!(after.state, Valid);
                    assert_eq!(after.activated_at, Some(now));
                    assert_eq!(after.card_expiry, None);
                    let valid_until = add_days(today, before.initial_validity_days);
                    assert_eq!(after.valid_until, Some(valid_until));
                    self.grace_from_unlock = false;
                } else {
                    assert_eq!(applied.change, None);
                    assert_eq!(
                        Account {
                            state: before.state,
                            ..after.clone()
                        },
                        *before
                    );
                }
            }
            Command::Recharge {
                amount,
                validity_days,
                ..
            } => {
                assert_eq!(after.balance, before.balance + amount);
                assert_eq!(after.preset_balance, before.preset_balance);
                self.recharged += i128::from(*amount);
                let outcome = recharge_outcome(applied);
                assert_eq!(outcome.balance_before, before.balance);
                assert_eq!(outcome.balance_after, after.balance);
                assert_eq!(outcome.valid_until_before, before.valid_until);
                assert_eq!(outcome.valid_until_after, after.valid_until);
                if state == Unactivated {
                    assert_eq!(after.state, Unactivated);
                    assert_eq!(outcome.days_granted, 0);
                    assert!(!outcome.capped);
                    assert_eq!(after.valid_until, None);
                    assert_eq!(after.card_expiry, before.card_expiry);
                } else {
                    let days = match validity_days {
                        0 => spec_tariff_days(*amount),
                        days => *days,
                    };
                    let (valid_until, capped) =
                        expected_validity(before, state, days, today, rules);
                    assert_eq!(after.state, Valid);
                    assert_eq!(after.valid_until, Some(valid_until), "{state} {outcome:?}");
                    assert_eq!(outcome.days_granted, days);
                    assert_eq!(outcome.capped, capped);
                    self.grace_from_unlock = false;
                }
            }
            Command::Charge { amount } => {
                let outcome = charge_outcome(applied);
                assert_eq!(outcome.charged_preset, before.preset_balance.min(*amount));
                assert_eq!(outcome.charged_preset + outcome.charged_balance, *amount);
                assert_eq!(
                    after.preset_balance,
                    before.preset_balance - outcome.charged_preset
                );
                assert_eq!(after.balance, before.balance - outcome.charged_balance);
                self.charged += i128::from(*amount);
                let dates = |a: &Account| (a.valid_until, a.grace_until, a.lock_until);
                assert_eq!(dates(after), dates(before), "charging keeps the dates");
            }
            Command::Unlock(unlock) => {
                assert_eq!(state, Locked);
                assert_eq!(after.preset_balance, before.preset_balance);
                if unlock.recharge_amount == 0 {
                    assert_eq!(after.state, Grace);
                    assert_eq!(after.balance, before.balance);
                    assert_eq!(after.valid_until, before.valid_until);
                    assert_eq!(
                        after.grace_until,
                        Some(add_days(today, rules.unlock_grace_days))
                    );
                    self.grace_from_unlock = true;
                } else {
                    let days = spec_tariff_days(unlock.recharge_amount);
                    let (valid_until, capped) =
                        expected_validity(before, Grace, days, today, rules);
                    assert_eq!(after.state, Valid);
                    assert_eq!(after.valid_until, Some(valid_until));
                    assert_eq!(after.balance, before.balance + unlock.recharge_amount);
                    let outcome = recharge_outcome(applied);
                    assert_eq!(outcome.capped, capped);
                    assert_eq!(outcome.days_granted, days);
                    self.recharged += i128::from(unlock.recharge_amount);
                    self.grace_from_unlock = false;
                }
            }
        }

        // Dates never move backwards within one life: valid_until never decreases (and once set
        // by activation is never cleared); card_expiry is only ever cleared, by activation;
        // grace_until and lock_until never decrease either, except on the first recharge after
        // an unlock without recharge: the unlock set them from its own day, and the recharge
        // derives them from the new valid_until again (valid_until + grace_days), which is
        // earlier when unlock_grace_days > grace_days + the days recharged.
        assert!(
            after.valid_until >= before.valid_until,
            "valid_until went back"
        );
        let recharge_after_unlock = grace_from_unlock_before
            && matches!(command, Command::Recharge { .. })
            && state == Grace;
        if recharge_after_unlock {
            let valid_until = after.valid_until.expect("a recharged validity");
            assert_eq!(
                after.grace_until,
                Some(add_days(valid_until, rules.grace_days))
            );
        } else {
            assert!(
                after.grace_until >= before.grace_until,
                "grace_until went back"
            );
            assert!(
                after.lock_until >= before.lock_until,
                "lock_until went back"
            );
        }
        if before.activated_at.is_some() || after.activated_at.is_none() {
            assert_eq!(after.card_expiry, before.card_expiry, "card_expiry changed");
        }
        // After a successful recharge (and in fact after every command) the validity never
        // reaches past today + max_validity_days.
        if let Some(valid_until) = after.valid_until {
            assert!(
                valid_until <= add_days(today, rules.max_validity_days),
                "beyond the cap"
            );
        }
    }

    /// Invariants that hold after every step.
    fn check_account(&self) {
        let (account, rules) = (&self.account, &self.rules);
        // Balance conservation and no negative bucket.
        assert!(account.balance >= 0, "negative cash balance");
        assert!(account.preset_balance >= 0, "negative preset balance");
        assert!(i128::from(account.preset_balance) <= self.initial_preset);
        assert_eq!(
            i128::from(account.balance) + i128::from(account.preset_balance),
            self.initial_preset + self.recharged - self.charged,
            "balance conservation"
        );
        // The dates are tied together as the spec says.
        match account.activated_at {
            None => {
                assert!(account.card_expiry.is_some());
                assert_eq!(account.valid_until, None);
                assert_eq!(account.grace_until, None);
                assert_eq!(account.lock_until, None);
            }
            Some(_) => {
                assert_eq!(account.card_expiry, None);
                let (valid, grace, lock) = (
                    account.valid_until.expect("valid_until"),
                    account.grace_until.expect("grace_until"),
                    account.lock_until.expect("lock_until"),
                );
                assert_eq!(lock, add_days(grace, rules.lock_days));
                if self.grace_from_unlock {
                    assert!(grace > valid);
                } else {
                    assert_eq!(grace, add_days(valid, rules.grace_days));
                }
            }
        }
        // Transitions so far only moved forward between commands and were in time order.
        for pair in self.history.windows(2) {
            assert!(pair[0].effective_at <= pair[1].effective_at, "{pair:?}");
            assert_eq!(pair[0].to, pair[1].from, "{pair:?}");
        }
    }
}

fn run(scenario: &Scenario) -> Life {
    let mut life = Life::start(scenario);
    for step in &scenario.steps {
        life.step(step);
    }
    life
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        ..ProptestConfig::default()
    })]

    /// Every step of a random life agrees with the spec's model: refusals exactly where the spec
    /// refuses (and nothing changed), the spec's dates and balances where it applies, the calendar
    /// walked day by day, balance conservation and dates that never go back.
    #[test]
    fn random_lives_follow_the_operators_rules(scenario in scenario_strategy()) {
        run(&scenario);
    }

    /// Once RECYCLED, a number stays RECYCLED and every well-formed command is refused with
    /// ACCOUNT_RECYCLED, leaving the account as it was.
    #[test]
    fn recycled_is_terminal(
        scenario in scenario_strategy(),
        sweep_first in any::<bool>(),
        later in prop::collection::vec((0u32..=3000, 0u32..86_400), 1..4),
    ) {
        let mut life = run(&scenario);
        // Longer than any validity + grace + lock (or card life) the rules under test allow.
        life.advance(2000, 0);
        let (state, walked) = life.check_calendar();
        prop_assert_eq!(state, Recycled);
        if sweep_first {
            life.sweep(state, walked);
            prop_assert!(life.account.recycled_at.is_some());
        }
        let commands = [
            Command::MarkSold,
            Command::Activate,
            recharge(5000),
            recharge_card(100, 30),
            charge(1),
            unlock(0),
            unlock(5000),
        ];
        for (days, seconds) in later {
            life.advance(days, seconds);
            prop_assert_eq!(life.account.effective_state(life.now, &life.rules), Recycled);
            for command in &commands {
                let err = refused(&life.account, command, life.now, &life.rules);
                assert_precondition(&err, ErrorReason::AccountRecycled);
            }
            let auth = authorize(Some(&life.account), VoiceOut, "110", life.now, &life.rules);
            prop_assert!(!auth.allowed);
            prop_assert_eq!(auth.reason, "ACCOUNT_RECYCLED");
        }
        let mut swept = life.account.clone();
        swept.catch_up(life.now, &life.rules);
        prop_assert!(swept.catch_up(life.now, &life.rules).is_empty());
    }

    /// The effective state at any instant is the state the calendar gives for that local day,
    /// and it only moves forward as time passes (for an account left alone).
    #[test]
    fn left_alone_an_account_only_moves_forward(
        scenario in scenario_strategy(),
        probes in prop::collection::vec((0u32..=200, 0u32..86_400), 1..12),
    ) {
        let life = run(&scenario);
        let (rules, account) = (&life.rules, &life.account);
        let mut now = life.now;
        let mut previous = account.effective_state(now, rules);
        for (days, seconds) in probes {
            now += Duration::days(i64::from(days)) + Duration::seconds(i64::from(seconds));
            let state = account.effective_state(now, rules);
            prop_assert!(state >= previous, "{} after {}", state, previous);
            let (walked_state, walked) = walk_days(account, life.last_write, now, rules);
            prop_assert_eq!(state, walked_state);
            prop_assert_eq!(account.pending_transitions(now, rules), walked);
            previous = state;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sweep of one account: VALIDITY_EXPIRING and the next deadline
// ---------------------------------------------------------------------------------------------

#[test]
fn validity_expiring_is_due_at_local_midnight_expiring_days_before_valid_until() {
    let rules = shanghai();
    let mut account = valid_account(&rules, "2026-06-30", 100, 0);
    let due = at(&rules, "2026-06-23", 0);
    assert_eq!(
        account.pending_notice(&rules),
        Some(ExpiringNotice {
            valid_until: d("2026-06-30"),
            due_at: due,
        })
    );
    assert_eq!(
        account.next_deadline(&rules),
        Some(due),
        "the notice comes before the end of validity"
    );

    let early = account.sweep(due - Duration::seconds(1), &rules);
    assert_eq!(early, Swept::default(), "not due one second before");

    let swept = account.sweep(due, &rules);
    assert!(swept.transitions.is_empty());
    assert_eq!(swept.notice.map(|n| n.due_at), Some(due));
    assert_eq!(account.expiring_notified_for, Some(d("2026-06-30")));
    assert_eq!(account.next_deadline(&rules), account.state_ends_at(&rules));
    assert_eq!(
        account.sweep(due, &rules),
        Swept::default(),
        "sent once: a second sweep sends nothing"
    );
    assert_eq!(
        account.sweep(last_second(&rules, "2026-06-30"), &rules),
        Swept::default()
    );
}

#[test]
fn a_recharge_that_moves_valid_until_makes_a_new_notice_due() {
    let rules = shanghai();
    let mut account = valid_account(&rules, "2026-06-30", 100, 0);
    assert!(
        account
            .sweep(at(&rules, "2026-06-25", 1), &rules)
            .notice
            .is_some()
    );
    let recharged = ok(
        &account,
        &Command::Recharge {
            amount: 1000,
            channel: RechargeChannel::Online,
            validity_days: 0,
        },
        at(&rules, "2026-06-26", 9),
        &rules,
    );
    let mut account = recharged.account;
    assert_eq!(account.valid_until, Some(d("2026-07-30")));
    let notice = account
        .pending_notice(&rules)
        .expect("a new period, a new notice");
    assert_eq!(notice.due_at, at(&rules, "2026-07-23", 0));
    assert_eq!(account.next_deadline(&rules), Some(notice.due_at));
    assert!(
        account
            .sweep(at(&rules, "2026-07-23", 0), &rules)
            .notice
            .is_some()
    );
}

#[test]
fn a_late_sweep_past_the_validity_sends_no_expiring_notice() {
    let rules = shanghai();
    let mut account = valid_account(&rules, "2026-06-30", 100, 0);
    let swept = account.sweep(at(&rules, "2026-07-02", 0), &rules);
    assert_eq!(swept.transitions.len(), 1);
    assert_eq!(swept.notice, None, "GRACE already: STATE_CHANGED says it");
    assert_eq!(account.pending_notice(&rules), None);
    assert_eq!(
        account.next_deadline(&rules),
        Some(at(&rules, "2026-09-29", 0))
    );
}

#[test]
fn unactivated_and_later_states_have_no_notice() {
    let rules = shanghai();
    let unactivated = card(&rules, "2026-03-01", 0);
    assert_eq!(unactivated.pending_notice(&rules), None);
    assert_eq!(
        unactivated.next_deadline(&rules),
        unactivated.state_ends_at(&rules)
    );
    let grace = account_swept_at(&rules, "2026-06-30", 0, at(&rules, "2026-07-05", 0));
    assert_eq!(grace.state, Grace);
    assert_eq!(grace.pending_notice(&rules), None);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    /// Sweeps at random increasing instants: the notice goes out exactly once when some sweep
    /// falls while the account is VALID at or after its due instant, never before it; every
    /// sweep leaves the next deadline after its as_of, so a second sweep does nothing.
    #[test]
    fn the_expiring_notice_goes_out_once_and_sweeps_are_idempotent(
        validity_offset in 0u32..60,
        expiring_days in 0u32..20,
        steps in prop::collection::vec(0i64..(10 * 86_400), 1..30),
    ) {
        let rules = Rules { expiring_days, ..shanghai() };
        let valid_until = add_days(d("2026-06-01"), validity_offset);
        let mut account = valid_account(&rules, &valid_until.to_string(), 100, 0);
        let due = account.pending_notice(&rules).expect("a VALID account has a notice").due_at;
        let validity_ends = rules.end_of_day(valid_until);
        let mut now = at(&rules, "2026-05-20", 0);
        let mut notices = 0;
        let mut swept_in_window = false;
        for step in steps {
            now += Duration::seconds(step);
            let before = account.clone();
            let swept = account.sweep(now, &rules);
            if let Some(notice) = &swept.notice {
                prop_assert!(notice.due_at <= now, "sent before it was due");
                prop_assert_eq!(notice.valid_until, valid_until);
                notices += 1;
            }
            if due <= now && now < validity_ends && before.state == Valid {
                swept_in_window = true;
            }
            prop_assert_eq!(swept.transitions, before.pending_transitions(now, &rules));
            if let Some(next) = account.next_deadline(&rules) {
                prop_assert!(next > now, "next deadline {} not after as_of {}", next, now);
            }
            let again = account.clone();
            prop_assert_eq!(account.sweep(now, &rules), Swept::default());
            prop_assert_eq!(&account, &again, "a second sweep changes nothing");
        }
        prop_assert!(notices <= 1, "sent {} times", notices);
        if swept_in_window {
            prop_assert_eq!(notices, 1);
        }
    }
}
