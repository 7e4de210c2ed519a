//! The calendar of the operator's time zone and the state boundaries (spec section 2): where each
//! state ends, the transitions a late sweep materialises, and periods set by configuration.

use super::*;

// ---------------------------------------------------------------------------------------------
// The calendar of the operator's time zone
// ---------------------------------------------------------------------------------------------

#[test]
fn local_midnight_in_shanghai_is_16_utc_the_day_before() {
    let rules = shanghai();
    let midnight = utc("2026-02-28T16:00:00Z");
    assert_eq!(at(&rules, "2026-03-01", 0), midnight);
    assert_eq!(rules.start_of_day(d("2026-03-01")), midnight);
    assert_eq!(rules.end_of_day(d("2026-02-28")), midnight);
    assert_eq!(rules.local_date(midnight), d("2026-03-01"));
    let second_before = utc("2026-02-28T15:59:59Z");
    assert_eq!(rules.local_date(second_before), d("2026-02-28"));
}

#[test]
fn an_instant_at_16_utc_already_counts_as_the_next_local_day() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    // 2026-06-30T16:00Z is 2026-07-01 00:00 in Shanghai: the validity has ended.
    assert_states(
        &account,
        &rules,
        &[
            (utc("2026-06-30T15:59:59Z"), Valid),
            (utc("2026-06-30T16:00:00Z"), Grace),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// State boundaries (spec section 2)
// ---------------------------------------------------------------------------------------------

/// VALID through `valid_until`, GRACE from the day after through `grace_until` (valid_until +
/// 90), LOCKED from the day after through `lock_until` (valid_until + 120): each state to the
/// last second of its date, the next one from the local midnight after.
#[test]
fn each_state_runs_through_the_last_second_of_its_date_and_the_next_starts_at_midnight() {
    let rules = shanghai();
    let account = valid_account(&rules, "2026-06-30", 100, 0);
    // (state, its date as stored, a first day of it, its last day, the state after, its first day)
    #[rustfmt::skip]
    let periods = [
        (Valid, account.valid_until, "2026-06-30", "2026-06-30", Grace, "2026-07-01"),
        (Grace, account.grace_until, "2026-07-01", "2026-09-28", Locked, "2026-09-29"),
        (Locked, account.lock_until, "2026-09-29", "2026-10-28", Recycled, "2026-10-29"),
    ];
    for (state, stored, first, last, next, next_first) in periods {
        assert_eq!(stored, Some(d(last)), "the last day of {state:?}");
        let expected = [
            (at(&rules, first, 0), state),
            (last_second(&rules, last), state),
            (at(&rules, next_first, 0), next),
        ];
        assert_states(&account, &rules, &expected);
    }
    assert_states(&account, &rules, &[(at(&rules, "2030-01-01", 0), Recycled)]);
}

#[test]
fn an_unactivated_card_is_recycled_the_day_after_its_540_day_life() {
    let rules = shanghai();
    let account = card(&rules, "2026-03-01", 0);
    assert_eq!(account.card_expiry, Some(d("2027-08-23")), "P + 540");
    assert_states(
        &account,
        &rules,
        &[
            (last_second(&rules, "2027-08-23"), Unactivated),
            (at(&rules, "2027-08-24", 0), Recycled),
        ],
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
    // (valid_until, the end of its last day, the last second of VALID): spring forward on
    // 2026-03-08 (00:00 is still EST, UTC-5; 03-09 00:00 is EDT), fall back on 2026-11-01 (that
    // day is 25 hours long).
    let cases = [
        (
            "2026-03-07",
            "2026-03-08T05:00:00Z",
            Some("2026-03-08T04:59:59Z"),
        ),
        (
            "2026-03-08",
            "2026-03-09T04:00:00Z",
            Some("2026-03-09T03:59:59Z"),
        ),
        ("2026-10-31", "2026-11-01T04:00:00Z", None),
        (
            "2026-11-01",
            "2026-11-02T05:00:00Z",
            Some("2026-11-02T04:59:59Z"),
        ),
    ];
    for (valid_until, ends_at, last_valid_second) in cases {
        let account = valid_account(&rules, valid_until, 100, 0);
        assert_eq!(
            account.state_ends_at(&rules),
            Some(utc(ends_at)),
            "{valid_until}"
        );
        if let Some(last_valid_second) = last_valid_second {
            assert_states(
                &account,
                &rules,
                &[(utc(last_valid_second), Valid), (utc(ends_at), Grace)],
            );
        }
    }

    let on_dst = valid_account(&rules, "2026-03-08", 100, 0);
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
    let expected = boundaries(&rules, Valid, &["2026-07-01", "2026-09-29", "2026-10-29"]);
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
    assert_eq!(locked, boundaries(&rules, Grace, &["2026-09-29"]));
    assert_eq!(account.state, Locked);
}

#[test]
fn an_unactivated_card_past_its_life_expires_with_unactivated_expired() {
    let rules = shanghai();
    let mut account = card(&rules, "2026-03-01", 1000);
    let now = at(&rules, "2028-01-01", 0);
    let expected = boundaries(&rules, Unactivated, &["2027-08-24"]);
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
        boundaries(&rules, Valid, &["2026-04-01", "2026-04-11", "2026-04-16"])
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
