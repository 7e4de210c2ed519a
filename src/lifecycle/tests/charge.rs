//! Charging: the preset bucket first, and only a VALID account.

use super::*;

#[test]
fn charge_takes_the_preset_bucket_first_then_cash() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
