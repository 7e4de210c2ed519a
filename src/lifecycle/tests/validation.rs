//! Validation of amounts, printed validity and provisioning parameters: INVALID_ARGUMENT and
//! INVALID_AMOUNT come before the state of the account.

use super::*;

#[test]
fn amounts_must_be_positive() {
    // An amount is parsed before any command exists (so before any account is looked at):
    // a command cannot hold another, whatever the account's state.
    for amount in [0, -1, i64::MIN] {
        for field in ["amount", "recharge_amount"] {
            let err = Amount::parse(field, amount).expect_err("not positive");
            assert_invalid(&err, ErrorReason::InvalidAmount);
            assert!(err.to_string().contains(field), "{err}");
        }
    }
    assert_eq!(Amount::parse("amount", 1).ok().map(Amount::fen), Some(1));
    let most = Amount::parse("amount", i64::MAX).ok().map(Amount::fen);
    assert_eq!(most, Some(i64::MAX));
}

#[test]
fn a_recharge_that_would_overflow_the_balance_is_refused() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", i64::MAX - 10, 0);
    let full = ok(&account, &recharge(10), now, &rules);
    assert_eq!(full.account.balance, i64::MAX);

    let mut unactivated = card(&rules, "2026-02-01", 0);
    unactivated.balance = i64::MAX;
    let locked_at = at(&rules, "2026-10-08", 10);
    let locked = account_swept_at(&rules, "2026-06-30", i64::MAX, locked_at);
    // A recharge, one of an unactivated card, and one carried by an unlock.
    for (account, command, now) in [
        (&account, recharge(11), now),
        (&unactivated, recharge(1), now),
        (&locked, unlock(1), locked_at),
    ] {
        let err = refused(account, &command, now, &rules);
        assert_invalid(&err, ErrorReason::AmountOverflow);
    }
}

#[test]
fn a_printed_validity_beyond_100_years_is_invalid() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    assert_invalid(
        &refused(&account, &recharge_card(100, 36_501), now, &rules),
        ErrorReason::InvalidArgument,
    );
    ok(&account, &recharge_card(100, 36_500), now, &rules);
}

/// Provisions with `params`, which must be refused; returns the error.
fn provisioning_refused(
    params: &ProvisionParams,
    now: DateTime<Utc>,
    rules: &Rules,
) -> DomainError {
    match provision(msisdn(), "a".into(), None, params, now, rules) {
        Ok(account) => panic!("{params:?} was provisioned: {account:?}"),
        Err(err) => err,
    }
}

#[test]
fn provisioning_rejects_a_negative_preset() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let err = provisioning_refused(&params(-1, true, 0), now, &rules);
    assert_invalid(&err, ErrorReason::InvalidAmount);
    assert!(provision(msisdn(), "a".into(), None, &params(0, true, 0), now, &rules).is_ok());
}

#[test]
fn provisioning_rejects_an_initial_validity_beyond_the_cap() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    for days in [541, 36_500, 36_501, u32::MAX] {
        let err = provisioning_refused(&params(0, true, days), now, &rules);
        assert_invalid(&err, ErrorReason::InvalidArgument);
    }
    let longest = provision_at(&rules, now, &params(0, true, 540));
    assert_eq!(longest.initial_validity_days, 540);
    let default = provision_at(&rules, now, &params(0, true, 0));
    assert_eq!(default.initial_validity_days, 180);
    let err = provisioning_refused(&params(0, true, 101), now, &short_periods());
    assert_invalid(&err, ErrorReason::InvalidArgument);
}

#[test]
fn provisioning_parameters_are_checked_without_an_account() {
    let (rules, _) = shanghai_at("2026-03-01", 10);
    let err = params(-1, true, 0).validate(&rules).unwrap_err();
    assert_invalid(&err, ErrorReason::InvalidAmount);
    let beyond_the_cap = params(0, true, rules.max_validity_days + 1);
    let err = beyond_the_cap.validate(&rules).unwrap_err();
    assert_invalid(&err, ErrorReason::InvalidArgument);
    assert!(params(0, true, 0).validate(&rules).is_ok());
    assert!(
        params(0, false, rules.max_validity_days)
            .validate(&rules)
            .is_ok()
    );
}
