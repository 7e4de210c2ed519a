//! The sweep of one account: the VALIDITY_EXPIRING notice and the next deadline.

use chrono::Duration;
use proptest::prelude::*;

use super::*;

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
    let first = account.sweep(at(&rules, "2026-06-25", 1), &rules);
    assert!(first.notice.is_some(), "the notice of the first period");
    let recharged = ok(
        &account,
        &Command::Recharge {
            amount: fen(1000),
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
    let second = account.sweep(at(&rules, "2026-07-23", 0), &rules);
    assert!(second.notice.is_some(), "the notice of the new period");
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

/// Sweeps at random increasing instants: the notice goes out exactly once when some sweep
/// falls while the account is VALID at or after its due instant, never before it; every sweep
/// leaves the next deadline after its as_of, so a second sweep does nothing. How many cases had
/// a sweep in that window is counted: the "exactly once" branch must be exercised, not skipped.
#[test]
fn the_expiring_notice_goes_out_once_and_sweeps_are_idempotent() {
    const CASES: u32 = 512;
    let config = super::budget::config(CASES);
    let cases = config.cases;
    let swept_in_window_cases = std::sync::atomic::AtomicU32::new(0);
    let lives = (
        0u32..60,
        0u32..20,
        prop::collection::vec(0i64..(10 * 86_400), 1..30),
    );
    proptest::test_runner::TestRunner::new(config)
        .run(&lives, |(validity_offset, expiring_days, steps)| {
            let rules = Rules {
                expiring_days,
                ..shanghai()
            };
            let valid_until = add_days(d("2026-06-01"), validity_offset);
            let mut account = valid_account(&rules, &valid_until.to_string(), 100, 0);
            let due = account
                .pending_notice(&rules)
                .expect("a VALID account has a notice")
                .due_at;
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
                swept_in_window_cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                prop_assert_eq!(notices, 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let in_window = swept_in_window_cases.into_inner();
    println!("{in_window} of {cases} cases swept inside the notice window");
    assert!(
        in_window * 10 >= cases,
        "only {in_window} of {cases} cases swept inside the notice window: the check that the \
         notice goes out is hardly exercised"
    );
}
