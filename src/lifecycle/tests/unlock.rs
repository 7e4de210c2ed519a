//! Unlock at the business hall: a LOCKED account back to GRACE, or to VALID with a recharge.

use super::*;

#[test]
fn unlock_is_for_locked_accounts_only() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
    let (rules, now) = shanghai_at("2026-10-08", 10); // valid_until + 100: LOCKED
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
    assert_states(
        after,
        &rules,
        &[
            (last_second(&rules, "2027-01-06"), Grace),
            (at(&rules, "2027-01-07", 0), Locked),
            (last_second(&rules, "2027-02-05"), Locked),
            (at(&rules, "2027-02-06", 0), Recycled),
        ],
    );
    assert_eq!(
        after.pending_transitions(at(&rules, "2027-02-06", 0), &rules),
        boundaries(&rules, Grace, &["2027-01-07", "2027-02-06"])
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
    let (rules, now) = shanghai_at("2026-10-08", 10);
    // Not swept: stored VALID, due LOCKED.
    let account = valid_account(&rules, "2026-06-30", 500, 0);
    let applied = ok(&account, &unlock(5000), now, &rules);
    let after = &applied.account;
    assert_eq!(after.state, Valid);
    assert_dates(after, "2027-04-06", "2027-07-05", "2027-08-04");
    assert_eq!(after.balance, 5500);
    assert_eq!(
        applied.transitions,
        [
            boundaries(&rules, Valid, &["2026-07-01", "2026-09-29"]),
            vec![transition(Locked, Valid, now, TransitionReason::Unlocked)],
        ]
        .concat()
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
    let (rules, now) = shanghai_at("2026-10-08", 10);
    let account = account_swept_at(&rules, "2026-06-30", 100, now);
    let with = |operator_id: &str, branch_id: &str, recharge_amount: Option<Amount>| {
        Command::Unlock(Unlock {
            operator_id: operator_id.into(),
            branch_id: branch_id.into(),
            recharge_amount,
        })
    };
    let too_long = "x".repeat(65);
    for command in [
        with("", "hall.01", None),
        with("op-7", "", None),
        with("op 7", "hall.01", None),
        with("op-7", "hall/01", None),
        with(&too_long, "hall.01", None),
    ] {
        let err = refused(&account, &command, now, &rules);
        assert_invalid(&err, ErrorReason::InvalidArgument);
    }
    // A negative recharge cannot make an unlock: the amount is refused as it is parsed.
    let err = Amount::parse("recharge_amount", -1).expect_err("negative");
    assert_invalid(&err, ErrorReason::InvalidAmount);
    ok(
        &account,
        &with(&"x".repeat(64), "B_2.x-y", None),
        now,
        &rules,
    );
}
