//! Provisioning, the sale lock and activation (spec section 1).

use super::*;

// ---------------------------------------------------------------------------------------------
// Provisioning and activation
// ---------------------------------------------------------------------------------------------

/// The instant of local wall-clock `hour`:`min` on `date`, checked to be `utc_instant`.
#[track_caller]
fn local_at(
    rules: &Rules,
    date: &str,
    (hour, min): (u32, u32),
    utc_instant: &str,
) -> DateTime<Utc> {
    let instant = at_hms(rules, date, hour, min, 0);
    assert_eq!(instant, utc(utc_instant), "{date} {hour:02}:{min:02} local");
    instant
}

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
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
    let now = local_at(&rules, "2026-03-01", (0, 30), "2026-02-28T16:30:00Z");
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
    let now = local_at(&rules, "2026-02-28", (23, 30), "2026-03-01T04:30:00Z");
    let activated = ok(&account, &Command::Activate, now, &rules).account;
    assert_eq!(activated.valid_until, Some(add_days(d("2026-02-28"), 180)));
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
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let expired_card = card(&rules, "2024-01-01", 0);
    let err = refused(&expired_card, &Command::Activate, now, &rules);
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
