//! Recharge and the tariff (spec sections 1 and 4).

use super::model::spec_tariff_days;
use super::*;

// ---------------------------------------------------------------------------------------------
// Recharge
// ---------------------------------------------------------------------------------------------

/// The validity a recharge left ends on `date` (`why`: how that follows).
#[track_caller]
fn assert_valid_until(applied: &Applied, date: &str, why: &str) {
    assert_eq!(applied.account.valid_until, Some(d(date)), "{why}");
}

/// A recharge of `amount` at 10:00 on 2026-03-01 (Shanghai) of an account VALID through
/// `valid_until` with `balance` cash and `preset` credit.
fn recharged_on_march_1st(valid_until: &str, balance: i64, preset: i64, amount: i64) -> Applied {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = valid_account(&rules, valid_until, balance, preset);
    ok(&account, &recharge(amount), now, &rules)
}

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
fn a_recharge_history_row_carries_its_channel_and_no_other_row_does() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    let origin = Origin {
        actor: "billing",
        request_id: Some("r-1"),
        now,
    };
    let mut ids = || "id".to_owned();
    for channel in RechargeChannel::ALL {
        let command = Command::Recharge {
            amount: fen(1000),
            channel,
            validity_days: 0,
        };
        let applied = ok(&account, &command, now, &rules);
        let effects = Effects::of_command(&applied, origin, &mut ids);
        let channels: Vec<_> = effects.history.iter().map(|h| h.channel).collect();
        assert_eq!(channels, [Some(channel)], "{channel:?}");
    }
    let charged = ok(&account, &charge(50), now, &rules);
    let effects = Effects::of_command(&charged, origin, &mut ids);
    assert_eq!(effects.history[0].channel, None);
    // The sweep's boundary rows carry none either.
    let expired = ok(
        &account,
        &recharge(1000),
        at(&rules, "2026-07-05", 10),
        &rules,
    );
    let effects = Effects::of_command(&expired, origin, &mut ids);
    assert!(
        effects.history.len() > 1,
        "boundary rows before the recharge"
    );
    let (last, boundaries) = effects.history.split_last().unwrap();
    assert!(boundaries.iter().all(|h| h.channel.is_none()));
    assert_eq!(last.channel, Some(RechargeChannel::Bank));
}

#[test]
fn preset_credit_alone_carries_the_remaining_validity_over() {
    let applied = recharged_on_march_1st("2026-06-30", 0, 1, 1000);
    assert_valid_until(&applied, "2026-07-30", "06-30 + 30");
    assert_eq!(
        applied.account.preset_balance, 1,
        "the preset bucket is untouched"
    );
}

#[test]
fn recharge_without_credit_counts_the_days_from_today() {
    let applied = recharged_on_march_1st("2026-03-10", 0, 0, 1000);
    // max(2026-03-10, 2026-03-01 + 30): the old remainder is not carried over.
    assert_dates(&applied.account, "2026-03-31", "2026-06-29", "2026-07-29");
    let outcome = recharge_outcome(&applied);
    assert_eq!(outcome.days_granted, 30);
    assert!(!outcome.capped);
}

#[test]
fn recharge_without_credit_never_shortens_validity() {
    let applied = recharged_on_march_1st("2026-06-30", 0, 0, 1000);
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
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
    assert_valid_until(&applied, "2026-05-30", "today + 90");
    assert_eq!(applied.account.state, Valid);
    assert_eq!(
        applied.transitions,
        [
            // 2026-02-01 00:00 in Shanghai is 2026-01-31T16:00Z.
            boundaries(&rules, Valid, &["2026-02-01"]),
            vec![transition(Grace, Valid, now, TransitionReason::Recharged)],
        ]
        .concat()
    );
    let change = applied.change.as_ref().unwrap();
    assert_eq!((change.from, change.to), (Grace, Valid));
}

#[test]
fn recharge_is_capped_at_540_days_from_today() {
    let applied = recharged_on_march_1st("2027-06-01", 100, 0, 30000);
    assert_valid_until(&applied, "2027-08-23", "today + 540");
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
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let in_grace = account_swept_at(&rules, "2026-01-31", 0, now);
    let no_credit = valid_account(&rules, "2026-03-10", 0, 0);
    for account in [&in_grace, &no_credit] {
        let applied = ok(account, &recharge_card(100, 600), now, &rules);
        assert_eq!(applied.account.valid_until, Some(d("2027-08-23")));
        assert!(recharge_outcome(&applied).capped);
        assert_eq!(recharge_outcome(&applied).days_granted, 600);
    }
}

#[test]
fn a_printed_card_validity_overrides_the_tariff() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
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
    let (rules, now) = shanghai_at("2026-10-08", 10);
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
    let (rules, now) = shanghai_at("2027-01-16", 10);
    let unswept = valid_account(&rules, "2026-06-30", 100, 0);
    let swept = account_swept_at(&rules, "2026-06-30", 100, now);
    let expired_card = card(&rules, "2024-01-01", 0);
    for account in [&unswept, &swept, &expired_card] {
        let err = refused(account, &recharge(5000), now, &rules);
        assert_precondition(&err, ErrorReason::AccountRecycled);
    }
}

// ---------------------------------------------------------------------------------------------
// Tariff (spec section 4)
// ---------------------------------------------------------------------------------------------

#[test]
fn the_tariff_grants_the_days_of_the_highest_tier_reached_at_each_edge() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let in_grace = account_swept_at(&rules, "2026-01-31", 0, now);
    for (amount, days) in TARIFF_EDGES.into_iter().chain([(1_000_000, 540)]) {
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
